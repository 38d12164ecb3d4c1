"""Names of the federation protocol: message actions, record keys, reply statuses. One place for each.

Flower-free on purpose: both the ServerApp (fl_server) and the ClientApp (fl_client) import these.
"""

from __future__ import annotations

from typing import Final

# Message actions (Flower message types are "<kind>.<action>").
QUERY_ACTION: Final = "cohort"

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

# Keys of a client's query reply (ConfigRecord "answer").
ANSWER_RECORD: Final = "answer"
KEY_SITE_ID: Final = "site-id"
KEY_STATUS: Final = "status"
KEY_RELEASED_JSON: Final = "released-json"
KEY_REASON: Final = "reason"

STATUS_ANSWERED: Final = "answered"
STATUS_REFUSED: Final = "refused"
STATUS_ERROR: Final = "error"

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
