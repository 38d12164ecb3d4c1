"""The agreed final model at a site: stored with the site's own intercept; only a status goes back.

After the last round the coordinator sends every training site the model it kept (the round with the
best federated validation AUROC) in a ``query.final_model`` message, with the settings and the
normalisation statistics it was trained with. The site stores the weights under
``<store>/models/<digest>/`` with ``model.json`` (what is needed to score a patient of this site: the
cohort spec, subset, training settings, statistics and, when ``federation.site_calibration`` is
``intercept``, the site's intercept from :mod:`fl_client.calibration` fitted on its training split).
It answers with its status and the digest of the weights it stored, which the coordinator checks
against its own: the intercept, like every prediction, never leaves the site.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cohort.errors import CohortError, ConfigError
from cohort.protocol import STATUS_ANSWERED, STATUS_ERROR
from cohort.release.disclosure import audit
from cohort.siteconfig import SiteConfig

SITE_CALIBRATIONS = ("intercept", "none")
MODEL_FILE, CARD_FILE = "model.npz", "model.json"


def model_digest(weights: list[np.ndarray]) -> str:
    """SHA-256 over every array's dtype, shape and bytes, in order (the same on both ends of a message)."""
    h = hashlib.sha256()
    for w in weights:
        a = np.ascontiguousarray(w)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def check_site_calibration(value: str) -> str:
    if value not in SITE_CALIBRATIONS:
        raise ConfigError(f"federation.site_calibration={value!r} is not one of {list(SITE_CALIBRATIONS)}; "
                          "'intercept' fits each site's own intercept on its training split, 'none' stores the "
                          "model as it is")
    return value


@dataclass(frozen=True)
class FinalModelAnswer:
    """What leaves the site: status, the digest of the stored weights, a reason when it failed."""

    site_id: str
    status: str
    digest: str | None = None
    reason: str | None = None


def site_model_dir(site: SiteConfig, digest: str) -> Path:
    return site.store_path() / "models" / digest[:16]


def store_final_model(site: SiteConfig, spec_json: dict[str, Any], subset: str, training_json: str,
                      weights: list[np.ndarray], norm_stats_json: str | None, calibration: str,
                      requester: str) -> FinalModelAnswer:
    """Store ``weights`` at the site (with its intercept when ``calibration`` is 'intercept'); audited."""
    log_path = site.store_path() / "audit.jsonl"
    digest = model_digest(weights)
    try:
        card = _card(site, spec_json, subset, training_json, weights, norm_stats_json,
                     check_site_calibration(calibration), requester)
    except (CohortError, OSError, ValueError) as exc:
        audit(log_path, spec_json=spec_json, requester=requester, decision=STATUS_ERROR, reason=f"final model: {exc}")
        return FinalModelAnswer(site.site_id, STATUS_ERROR, digest, str(exc))
    out = site_model_dir(site, digest)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / MODEL_FILE, *weights)
    (out / CARD_FILE).write_text(json.dumps({"digest": digest, **card}, indent=2), encoding="utf-8")
    audit(log_path, spec_json=spec_json, requester=requester, decision=STATUS_ANSWERED,
          released={"final_model": {"digest": digest}}, reason=f"final model stored in {out}")
    return FinalModelAnswer(site.site_id, STATUS_ANSWERED, digest)


def _card(site: SiteConfig, spec_json: dict[str, Any], subset: str, training_json: str, weights: list[np.ndarray],
          norm_stats_json: str | None, calibration: str, requester: str) -> dict[str, Any]:
    # request_id names the training run (the coordinator's final-model request) in prediction SRs.
    card: dict[str, Any] = {"site_id": site.site_id, "stored": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                            "request_id": requester,
                            "spec": spec_json, "subset": subset, "training": json.loads(training_json),
                            "norm_stats": json.loads(norm_stats_json) if norm_stats_json else "site",
                            "site_calibration": calibration, "site_intercept": None}
    if calibration == "intercept":
        from fl_client.calibration import fit_site_intercept
        from fl_client.data import load_datalist
        from fl_client.local import TrainingSettings, export_dir, training_split_predictions
        from fl_client.normalization import NormStats

        stats = NormStats.from_json(norm_stats_json) if norm_stats_json else None
        probs, labels = training_split_predictions(site, spec_json, subset, TrainingSettings.from_json(training_json),
                                                   weights, stats)
        card["site_intercept"] = fit_site_intercept(probs, labels)
        card["intercept_fitted_on"] = {"split": "training", "patients": int(labels.size)}
        card["training_cohort_hash"] = load_datalist(export_dir(site, spec_json, subset)).cohort_hash
    return card
