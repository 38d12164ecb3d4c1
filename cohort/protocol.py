"""Names of the federation protocol: message actions, record keys, reply statuses. One place for each.

Flower-free on purpose: both the ServerApp (fl_server) and the ClientApp (fl_client) import these.
"""

from __future__ import annotations

from typing import Final

# Message actions (Flower message types are "<kind>.<action>").
QUERY_ACTION: Final = "cohort"
MOMENTS_ACTION: Final = "moments"  # normalisation moments of the training split, before round 1
FINAL_MODEL_ACTION: Final = "final_model"  # the kept model to every training site, after the last round

# ConfigRecord keys sent by the server.
CONFIG_RECORD: Final = "config"
ARRAYS_RECORD: Final = "arrays"
METRICS_RECORD: Final = "metrics"
KEY_SPEC_JSON: Final = "spec-json"
KEY_REQUEST_ID: Final = "request-id"
KEY_REQUESTED_MIN_CELL: Final = "requested-min-cell"
KEY_SUBSET: Final = "subset"
KEY_TRAINING_JSON: Final = "training-json"  # resolved model + training settings
KEY_SERVER_ROUND: Final = "server-round"
KEY_NORM_STATS_JSON: Final = "norm-stats-json"  # consortium-wide means/stds (training, evaluation)
KEY_PROXIMAL_MU: Final = "proximal-mu"  # set by Flower's FedProx in the train config
KEY_SITE_CALIBRATION: Final = "site-calibration"  # final model: "intercept" or "none" (federation.site_calibration)

# Keys of a client's moments reply (ConfigRecord "answer", with site-id, status, reason).
KEY_MOMENTS_JSON: Final = "moments-json"
# Key of a client's final-model reply: the digest of the weights it stored (fl_client.final_model).
KEY_MODEL_DIGEST: Final = "model-digest"

# Keys of a client's query reply (ConfigRecord "answer").
ANSWER_RECORD: Final = "answer"
KEY_SITE_ID: Final = "site-id"
KEY_STATUS: Final = "status"
KEY_RELEASED_JSON: Final = "released-json"
KEY_REASON: Final = "reason"

STATUS_ANSWERED: Final = "answered"
STATUS_REFUSED: Final = "refused"
STATUS_ERROR: Final = "error"

# Secure aggregation of count vectors (SecAgg+ over query messages, one action per stage).
SECAGG_SETUP_ACTION: Final = "secagg_setup"
SECAGG_SHARE_KEYS_ACTION: Final = "secagg_share_keys"
SECAGG_COLLECT_ACTION: Final = "secagg_collect"
SECAGG_UNMASK_ACTION: Final = "secagg_unmask"
SECAGG_ACTIONS: Final = (SECAGG_SETUP_ACTION, SECAGG_SHARE_KEYS_ACTION, SECAGG_COLLECT_ACTION, SECAGG_UNMASK_ACTION)
SECAGG_RECORD: Final = "secagg"  # ConfigRecord of every secure-aggregation message and reply
KEY_LAYOUT_JSON: Final = "layout-json"  # the count vector's cells, fixed by the coordinator
KEY_SAMPLE_NUM: Final = "sample-num"  # sites asked to take part
KEY_THRESHOLD: Final = "threshold"  # Shamir shares needed to rebuild a secret
KEY_MOD_RANGE: Final = "mod-range"  # modulus of the masked integer vectors
KEY_MIN_SITES: Final = "min-sites"
KEY_MIN_CELL: Final = "min-cell"
KEY_PK1: Final = "pk1"  # public key for pairwise masks
KEY_PK2: Final = "pk2"  # public key for encrypting shares
KEY_NODE_IDS: Final = "node-ids"
KEY_SITE_IDS: Final = "site-ids"
KEY_PK1_LIST: Final = "pk1-list"
KEY_PK2_LIST: Final = "pk2-list"
KEY_DESTINATIONS: Final = "destinations"
KEY_SOURCES: Final = "sources"
KEY_CIPHERTEXTS: Final = "ciphertexts"
KEY_MASKED_VECTOR: Final = "masked-vector"
KEY_ACTIVE_NODES: Final = "active-nodes"
KEY_DEAD_NODES: Final = "dead-nodes"
KEY_SHARE_OWNERS: Final = "share-owners"
KEY_SHARES: Final = "shares"
KEY_SIGNATURE: Final = "signature"  # a site's Ed25519 signature over its keys for this one sum (setup reply)
KEY_SIGNATURES: Final = "signatures"  # every participant's signature, in list order (share keys)
KEY_EXACT_CELLS: Final = "exact-cells"  # "0"/"1" per layout cell: released exactly in the plain answer
KEY_EXACT_LIST: Final = "exact-list"
KEY_EPSILON: Final = "epsilon"  # the site's noise epsilon for the sum's non-public cells
KEY_EPSILON_LIST: Final = "epsilon-list"
KEY_MIN_CELL_LIST: Final = "min-cell-list"
KEY_MIN_SITES_LIST: Final = "min-sites-list"
KEY_DP: Final = "dp"  # 1 when the site answers with differential privacy (full local noise)
KEY_DP_LIST: Final = "dp-list"
STATUS_JOINED: Final = "joined"  # a site's setup reply when it takes part

# Node config key naming the coordinator a site's SuperNode serves: the site's privacy budget account.
NODE_COORDINATOR_ID: Final = "coordinator-id"

# Metric names in train / evaluate replies. Flower weights FedAvg by NUM_EXAMPLES (samples).
NUM_EXAMPLES: Final = "num-examples"
METRIC_LOSS: Final = "loss"
METRIC_AUROC: Final = "auroc"
METRIC_BALANCED_ACCURACY: Final = "balanced-accuracy"
METRIC_SENSITIVITY: Final = "sensitivity"
METRIC_SPECIFICITY: Final = "specificity"

# Flower settings every process of ours runs with unless the operator chose otherwise: never `uv sync`
# app dependencies at run time (installs pin them; it would pull CUDA torch), no update checks, no
# telemetry.
FLOWER_ENV_DEFAULTS = {
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
}
