"""The site's ClientApp, built so that every handler is registered through the release gate.

``GatedClientApp.register(message_type, channel)`` is the only way a handler reaches Flower's
``ClientApp``. Per message the gate (``cohort.release.gate``) resolves the site, checks the spec the
message carries, admits run-bound messages (training, evaluation, moments, final model) only for the
spec this site answered in the run's negotiation, catches every failure into a reply that names the
reason (no traceback leaves the site), and, for training and evaluation replies, writes the metric
record itself: ``num-examples`` derived from the count already released, metrics only where the counts
behind them meet the minimum cell. ``registered_channels`` lists what is registered, so a test can
send an attack through every message type, including ones added later.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from cohort.errors import CohortError, DisclosureError
from cohort.protocol import (
    ANSWER_RECORD,
    CONFIG_RECORD,
    KEY_REASON,
    KEY_REQUEST_ID,
    KEY_SITE_ID,
    KEY_SPEC_JSON,
    KEY_STATUS,
    KEY_SUBSET,
    METRICS_RECORD,
    NUM_EXAMPLES,
    SECAGG_RECORD,
    STATUS_ERROR,
    STATUS_REFUSED,
)
from cohort.release.gate import Admission, ReleaseGate, account_of, checked_spec
from cohort.siteconfig import SiteConfig
from cohort.spec.privacy import IdentifyingRequestError
from fl_client.site_runtime import resolve_site_config

# Channels: how the gate treats a message type.
NEGOTIATION = "negotiation"  # counts under the policy and the differencing ledger
SECURE_TOTAL = "secure-total"  # a stage of the secure sum: the spec checked, the protocol guards the rest
RUN_BOUND = "run-bound"  # training, evaluation, moments, final model: admitted for the negotiated spec only
CHANNELS = (NEGOTIATION, SECURE_TOTAL, RUN_BOUND)

# Error code of a run-bound refusal in a Flower error reply (train / evaluate replies carry no status).
REFUSED_CODE = 403
FAILED_CODE = 500


@dataclass
class Request:
    """One message as a handler sees it: the site, its gate, the config record, the admission."""

    msg: Message
    context: Context
    site: SiteConfig
    gate: ReleaseGate
    config: dict[str, Any]
    spec_json: Any = None
    admission: Admission | None = None


@dataclass
class SplitMetrics:
    """What a training or evaluation handler computed; the gate decides what of it is sent."""

    values: dict[str, float | None]
    samples: int
    positives: int
    negatives: int
    fraction: float  # the split's share of the agreed subset (num-examples is derived from it)


@dataclass
class HandlerResult:
    """A handler's outcome: records for the reply, and metrics for the gate to release."""

    records: dict[str, Any] = field(default_factory=dict)
    metrics: SplitMetrics | None = None


Handler = Callable[[Request], HandlerResult]


class GatedClientApp:
    """A Flower ClientApp whose handlers can only be registered through the gate."""

    def __init__(self, consortium: Path | None = None) -> None:
        self.app = ClientApp()
        self.consortium = consortium
        self.registered_channels: dict[str, str] = {}

    def register(self, message_type: str, channel: str) -> Callable[[Handler], Handler]:
        """Decorator: ``message_type`` is "train", "evaluate" or "query.<action>"."""
        if channel not in CHANNELS:
            raise ValueError(f"unknown channel {channel!r}; one of {CHANNELS}")
        category, _, action = message_type.partition(".")
        decorate = {"train": self.app.train, "evaluate": self.app.evaluate, "query": self.app.query}[category]

        def decorator(fn: Handler) -> Handler:
            def flower_handler(msg: Message, context: Context) -> Message:
                return self._handle(fn, channel, msg, context)

            (decorate(action) if action else decorate())(flower_handler)
            self.registered_channels[f"{category}.{action or 'default'}"] = channel
            return fn

        return decorator

    # ------------------------------------------------------------------------------------------------
    def _handle(self, fn: Handler, channel: str, msg: Message, context: Context) -> Message:
        kind = msg.metadata.message_type
        try:
            site = resolve_site_config(dict(context.node_config), dict(context.run_config), self.consortium)
        except CohortError as exc:
            return Message(error=Error(FAILED_CODE, f"{kind}: this node has no usable site: {exc}"), reply_to=msg)
        gate = ReleaseGate(site, account_of(context.node_config), str(context.run_id))
        record = SECAGG_RECORD if channel == SECURE_TOTAL else CONFIG_RECORD
        config = dict(msg.content[record]) if record in msg.content else {}
        req = Request(msg, context, site, gate, config)
        requester = str(config.get(KEY_REQUEST_ID, ""))
        try:
            if KEY_SPEC_JSON in config:
                req.spec_json = json.loads(str(config[KEY_SPEC_JSON]))
            if channel == RUN_BOUND:
                req.admission = gate.admit(kind, req.spec_json, str(config.get(KEY_SUBSET, "")))
            elif channel == SECURE_TOTAL and req.spec_json is not None:
                checked_spec(site, req.spec_json)
            result = fn(req)
        except (DisclosureError, IdentifyingRequestError) as exc:
            gate.audit(req.spec_json, requester, STATUS_REFUSED, reason=f"{kind}: {exc}")
            return self._refusal(msg, site, channel, STATUS_REFUSED, str(exc))
        except (CohortError, OSError, ValueError, KeyError, TypeError) as exc:
            gate.audit(req.spec_json, requester, STATUS_ERROR, reason=f"{kind}: {type(exc).__name__}: {exc}")
            return self._refusal(msg, site, channel, STATUS_ERROR, f"{type(exc).__name__}: {exc}")
        records = dict(result.records)
        if result.metrics is not None:
            records[METRICS_RECORD] = self._metrics(gate, req, result.metrics)
        elif METRICS_RECORD in records:
            raise RuntimeError(f"{kind}: a handler's metrics must go through the gate (SplitMetrics)")
        return Message(RecordDict(records), reply_to=msg)

    @staticmethod
    def _metrics(gate: ReleaseGate, req: Request, m: SplitMetrics) -> MetricRecord:
        assert req.admission is not None  # metrics come from run-bound handlers only
        sent, withheld = gate.metrics(req.admission, m.values, samples=m.samples, positives=m.positives,
                                      negatives=m.negatives)
        sent[NUM_EXAMPLES] = gate.examples(req.admission, m.fraction)
        if withheld:
            gate.audit(req.spec_json, str(req.config.get(KEY_REQUEST_ID, "")), "withheld",
                       reason=f"{req.msg.metadata.message_type}: metrics {sorted(withheld)} withheld: their "
                              f"counts are below the minimum cell {req.admission.min_cell}")
        return MetricRecord({k: (int(v) if k == NUM_EXAMPLES else float(v)) for k, v in sent.items()})

    @staticmethod
    def _refusal(msg: Message, site: SiteConfig, channel: str, status: str, reason: str) -> Message:
        """A refused or failed message: a status answer for query channels, an error reply otherwise."""
        kind = msg.metadata.message_type
        if kind.startswith("query.") and channel != SECURE_TOTAL:
            rec = ConfigRecord({KEY_SITE_ID: site.site_id, KEY_STATUS: status, KEY_REASON: reason})
            return Message(RecordDict({ANSWER_RECORD: rec}), reply_to=msg)
        code = REFUSED_CODE if status == STATUS_REFUSED else FAILED_CODE
        return Message(error=Error(code, f"site {site.site_id} {status} {kind}: {reason}"), reply_to=msg)
