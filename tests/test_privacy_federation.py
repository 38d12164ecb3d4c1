"""Privacy of the federation, attacked from the coordinator's side on real (synthetic) site stores.

* hostile specs and requests are refused (or their extra parts ignored) and every query is audited;
* every released cell in every answer is at least the minimum cell size in force, or suppressed;
* after a full simulated run, nothing the coordinator holds (reports, Flower log, captured reply
  payloads, weights file) and nothing in the sites' audit logs names a patient of any site.
"""

from __future__ import annotations

import copy
import json
import re
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cohort.protocol import (
    ANSWER_RECORD,
    CONFIG_RECORD,
    KEY_REASON,
    KEY_RELEASED_JSON,
    KEY_REQUEST_ID,
    KEY_REQUESTED_MIN_CELL,
    KEY_SITE_ID,
    KEY_SPEC_JSON,
    KEY_STATUS,
    QUERY_ACTION,
    SECAGG_COLLECT_ACTION,
    SECAGG_SETUP_ACTION,
    SECAGG_SHARE_KEYS_ACTION,
    SECAGG_UNMASK_ACTION,
    STATUS_ANSWERED,
    STATUS_REFUSED,
)
from cohort.release.disclosure import ReleasedCounts, release, spec_hash
from cohort.release.gate import answer_query, spec_fields
from cohort.results import ALL_SUBSET
from cohort.siteconfig import DisclosurePolicy
from fl_server.config import compose_config
from tests.federation_sites import (
    Consortium,
    Identity,
    build_consortium,
    copy_consortium,
    identities,
    quiet_flower,
    run_recorded_simulation,
)

SITE_MIN_CELL = 10  # the synthetic sites keep the default policy


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Consortium:
    return build_consortium(tmp_path_factory)


@pytest.fixture(scope="module")
def consortium(shared: Consortium, tmp_path_factory: pytest.TempPathFactory) -> Consortium:
    """A private copy: this module's audit logs start empty."""
    return copy_consortium(shared, tmp_path_factory.mktemp("privacy") / "sites")


@pytest.fixture(scope="module")
def base_spec() -> dict[str, Any]:
    return compose_config()["cohort"]


def _audit(c: Consortium, i: int) -> list[dict[str, Any]]:
    path = c.site(i).store_path() / "audit.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


# ------------------------------------------------------------------------- hostile specs and requests


def _with(mutate):  # type: ignore[no-untyped-def]
    def make(spec: dict[str, Any]) -> dict[str, Any]:
        s = copy.deepcopy(spec)
        mutate(s)
        return s
    return make


HOSTILE_SPECS = {
    "distribution-on-patient_id": _with(lambda s: s["distributions"].append({"object": "ecg", "field": "patient_id"})),
    "distribution-on-PatientID": _with(lambda s: s["distributions"].append({"object": "ecg", "field": "PatientID"})),
    "label-on-birth_date": _with(lambda s: s.update(label={"object": "tavi", "field": "birth_date",
                                                            "positive": ["1950-01-01"], "negative": []})),
    "predicate-on-patient_name": _with(lambda s: s["objects"]["ecg"]["where"].append(
        {"field": "patient_name", "op": "=", "value": "Vogt^Wolfgang"})),
    "predicate-on-case_id": _with(lambda s: s["objects"]["tavi"]["where"].append({"field": "case_id", "op": "exists"})),
    "window-on-patient_birth_date": _with(lambda s: s["objects"]["ecg"]["within"].update(
        date_field="patient_birth_date")),
    "distribution-of-exact-dates": _with(lambda s: s["distributions"].append({"object": "ecg", "field": "ecg_datetime"})),
    "free-text-contains-a-surname": _with(lambda s: s.update(
        objects={**s["objects"], "letter": {"kind": "SR", "template": "free_text",
                                            "where": [{"field": "report_text", "op": "contains", "value": "Vogt"}]}},
        cohort={"all": [s["cohort"], "letter"]})),
    "free-text-label": _with(lambda s: s.update(
        objects={**s["objects"], "letter": {"kind": "SR", "template": "free_text"}},
        label={"object": "letter", "field": "report_text", "positive": ["Vogt"], "negative": []})),
}


@pytest.mark.parametrize("name", list(HOSTILE_SPECS))
def test_identifying_specs_are_refused_and_audited(consortium: Consortium, base_spec: dict[str, Any],
                                                   name: str) -> None:
    spec = HOSTILE_SPECS[name](base_spec)
    site = consortium.site(0)
    before = _audit(consortium, 0)
    answer = answer_query(site, {"spec": spec, "requester": f"test-{name}"})
    assert answer.status == STATUS_REFUSED, answer
    assert answer.released_json is None
    after = _audit(consortium, 0)
    assert len(after) == len(before) + 1
    entry = after[-1]
    assert entry["decision"] == STATUS_REFUSED and entry["released"] is None
    assert entry["spec_hash"] == spec_hash(spec) and entry["requester"] == f"test-{name}"
    assert entry["reason"] == answer.reason and entry["time"]


@pytest.mark.parametrize("extra", [{"rows": True}, {"return": "patient_id"}, {"limit": 10, "fields": ["patient_id"]}],
                         ids=["rows", "return-ids", "row-limit"])
def test_requests_for_rows_are_refused(consortium: Consortium, base_spec: dict[str, Any],
                                       extra: dict[str, Any]) -> None:
    before = len(_audit(consortium, 1))
    answer = answer_query(consortium.site(1), {"spec": base_spec, "requester": "x", **extra})
    assert answer.status == STATUS_REFUSED and answer.released_json is None
    assert all(k in answer.reason for k in extra)
    log = _audit(consortium, 1)
    assert len(log) == before + 1 and log[-1]["decision"] == STATUS_REFUSED


@pytest.mark.parametrize(("requested", "in_force"), [(1, SITE_MIN_CELL), (5, SITE_MIN_CELL), (15, 15)])
def test_a_request_can_raise_but_never_lower_the_minimum_cell(consortium: Consortium, base_spec: dict[str, Any],
                                                              requested: int, in_force: int) -> None:
    answer = answer_query(consortium.site(0), {"spec": base_spec, "requested_min_cell": requested})
    assert answer.status == STATUS_ANSWERED
    released = ReleasedCounts.from_json(json.loads(answer.released_json))
    assert released.min_cell_size == in_force
    assert any("is below this site" in n for n in released.notes) is (requested < SITE_MIN_CELL)
    assert all(v >= in_force for v in _cells(released))
    entry = _audit(consortium, 0)[-1]
    assert entry["decision"] == STATUS_ANSWERED and entry["released"] == released.to_json()


def _client_message(cfg: dict[str, Any]):  # type: ignore[no-untyped-def]
    from flwr.app import ConfigRecord, Message, Metadata, RecordDict

    md = Metadata(run_id=1, message_id="m1", src_node_id=0, dst_node_id=7, reply_to_message_id="", group_id="",
                  created_at=time.time(), ttl=3600, message_type=f"query.{QUERY_ACTION}")
    return Message(content=RecordDict({CONFIG_RECORD: ConfigRecord(cfg)}), metadata=md)


def test_client_app_ignores_extra_message_keys_and_replies_counts_only(consortium: Consortium,
                                                                       base_spec: dict[str, Any]) -> None:
    """Through the real ClientApp: keys beyond the protocol's never reach the engine; the reply holds
    only status, site id and released counts."""
    from flwr.app import Context, RecordDict

    from fl_client.client_app import build_client_app

    app = build_client_app(consortium.consortium_json)
    cfg = {KEY_SPEC_JSON: json.dumps(base_spec), KEY_REQUEST_ID: "r-1", KEY_REQUESTED_MIN_CELL: 1,
           "rows": "all", "return": "patient_id", "export": True}
    ctx = Context(run_id=1, node_id=7, node_config={"partition-id": 2, "num-partitions": 3}, state=RecordDict(),
                  run_config={})
    before = len(_audit(consortium, 2))
    reply = app(_client_message(cfg), ctx)
    assert list(reply.content.keys()) == [ANSWER_RECORD]
    rec = dict(reply.content[ANSWER_RECORD])
    assert set(rec) <= {KEY_SITE_ID, KEY_STATUS, KEY_RELEASED_JSON, KEY_REASON}
    assert rec[KEY_STATUS] == STATUS_ANSWERED and rec[KEY_SITE_ID] == consortium.site(2).site_id
    released = ReleasedCounts.from_json(json.loads(str(rec[KEY_RELEASED_JSON])))
    assert released.min_cell_size == SITE_MIN_CELL  # the message asked for 1
    direct = answer_query(consortium.site(2), {"spec": base_spec, "requested_min_cell": 1})
    assert json.loads(str(rec[KEY_RELEASED_JSON])) == json.loads(direct.released_json)
    log = _audit(consortium, 2)
    assert len(log) == before + 2 and log[-2]["requester"] == "r-1" and log[-2]["decision"] == STATUS_ANSWERED


# ---------------------------------------------------------------------------- released-cell sweep


def _cells(r: ReleasedCounts) -> Iterator[int]:
    values: list[int | None] = [r.patients, *r.subsets.values()]
    values += [v for lab in r.labels.values() for v in lab.values()]
    values += [b["count"] for d in r.distributions for b in d.bins]
    return (v for v in values if v is not None)


def _sweep_specs() -> dict[str, dict[str, Any]]:
    specs = {name: compose_config(name)["cohort"]
             for name in ("pacemaker_tavi", "conduction_disease", "self_expanding", "seg_lv_rv", "landmarks")}
    extra = copy.deepcopy(specs["pacemaker_tavi"])
    extra["distributions"] = [
        {"object": "registry", "field": "age", "bins": [60, 65, 70, 75, 80, 85, 90, 95, 100]},
        {"object": "registry", "field": "sex"},
        {"object": "registry", "field": "nyha_class", "subset": "labelled"},
        {"object": "registry", "field": "access_route", "subset": "CT"},
        {"object": "ecg", "field": "heart_rate", "bins": [40, 60, 80, 100, 120, 160]},
        {"object": "ecg", "field": "ecg_finding", "subset": "CT+ECG"},
        {"object": "registry", "field": "lvef", "bins": [20, 30, 40, 50, 60, 70, 80], "subset": "labelled"},
    ]
    specs["many-distributions"] = extra
    no_label = copy.deepcopy(extra)
    no_label.pop("label")
    specs["no-label"] = no_label
    return specs


POLICIES = {
    "default": DisclosurePolicy(),
    "min5": DisclosurePolicy(min_cell_size=5),
    "min3": DisclosurePolicy(min_cell_size=3),
    "min20": DisclosurePolicy(min_cell_size=20),
    "round5": DisclosurePolicy(min_cell_size=5, rounding=5),
    "noise": DisclosurePolicy(min_cell_size=5, noise_scale=2.0),
    "noise-round10": DisclosurePolicy(min_cell_size=3, noise_scale=1.0, rounding=10),
}


def _check_released(rel: ReleasedCounts, raw: Any, policy: DisclosurePolicy, where: str) -> int:
    """Every released cell >= min cell; exact (or rounded up) where no noise; no lone suppression."""
    exact = policy.noise_scale == 0 and policy.rounding == 1
    for v in _cells(rel):
        assert v >= rel.min_cell_size, f"{where}: released {v} < min cell {rel.min_cell_size}"
        if policy.rounding > 1:
            assert v % policy.rounding == 0, where
    raw_cells = {("subset", k): sc.patients for k, sc in raw.subsets.items()}
    for k, sc in raw.subsets.items():
        for lk in ("positive", "negative", "unknown"):
            raw_cells[("label", k, lk)] = getattr(sc, lk)
    released_cells = {("subset", k): v for k, v in rel.subsets.items()}
    for k, lab in rel.labels.items():
        released_cells.update({("label", k, lk): v for lk, v in lab.items()})
        if rel.subsets[k] is not None:  # secondary suppression: never exactly one suppressed cell
            assert sum(v is None for v in lab.values()) != 1, f"{where}: lone suppressed label in {k}"
            hidden = [lk for lk, v in lab.items() if v is None]  # their sum is total minus the rest
            assert not hidden or sum(getattr(raw.subsets[k], lk) for lk in hidden) >= rel.min_cell_size, \
                f"{where}: suppressed labels of {k} sum to a small count"
    for key, v in released_cells.items():
        if v is None:
            continue
        if exact:
            assert v == raw_cells[key], f"{where}: {key} released {v}, true {raw_cells[key]}"
        elif policy.noise_scale == 0:
            assert v >= raw_cells[key], where
        if raw_cells[key] < rel.min_cell_size:
            pytest.fail(f"{where}: {key} true count {raw_cells[key]} below the minimum was released as {v}")
    for d_rel, d_raw in zip(rel.distributions, raw.distributions, strict=True):
        if d_rel.refused:
            continue
        for b_rel, b_raw in zip(d_rel.bins, d_raw.bins, strict=True):
            if b_rel["count"] is not None:
                assert b_raw.count >= rel.min_cell_size, f"{where}: bin {b_rel['label']} of {d_rel.field}"
                if exact:
                    assert b_rel["count"] == b_raw.count
        total = rel.subsets.get(d_rel.subset, rel.patients if d_rel.subset == ALL_SUBSET else None)
        if total is not None and d_rel.bins:
            assert sum(b["count"] is None for b in d_rel.bins) != 1, f"{where}: lone suppressed bin"
    return sum(1 for _ in _cells(rel))


def test_every_released_cell_meets_the_minimum_across_specs_sites_and_policies(consortium: Consortium) -> None:
    from cohort.index.compile_duck import evaluate
    from cohort.index.duck import DuckIndex
    from cohort.spec.load import parse_spec

    released_total = suppressed_total = 0
    for i in range(consortium.n_sites):
        site = consortium.site(i)
        with DuckIndex.for_store(site.store_path(), read_only=True) as index:
            for spec_name, spec_json in _sweep_specs().items():
                raw = evaluate(index, parse_spec(spec_json, catalog=None))
                # The real path (site policy, audit) ...
                answer = answer_query(site, {"spec": spec_json, "requested_min_cell": 1})
                assert answer.status == STATUS_ANSWERED, (spec_name, answer.reason)
                rel = ReleasedCounts.from_json(json.loads(answer.released_json))
                released_total += _check_released(rel, raw, site.disclosure, f"{site.site_id}/{spec_name}/site")
                # ... and the same counts under other policies a site may choose.
                for pname, policy in POLICIES.items():
                    for draw in (0, 1):  # fresh noise per call
                        rel = release(raw, policy, spec_fields=spec_fields(spec_json))
                        n = _check_released(rel, raw, policy, f"{site.site_id}/{spec_name}/{pname}/{draw}")
                        released_total += n
                        suppressed_total += sum(
                            v is None for lab in rel.labels.values() for v in lab.values())
    # The sweep must exercise both outcomes, or it proves nothing.
    assert released_total > 100 and suppressed_total > 100


def test_nested_subsets_cannot_be_differenced_below_the_minimum(consortium: Consortium,
                                                                base_spec: dict[str, Any]) -> None:
    """Released totals of nested subsets (cohort >= CT >= CT+ECG) must not differ by 1..min_cell-1
    (e.g. cohort 15, CT 14 would reveal one patient without CT)."""
    leaks = []
    for i in range(consortium.n_sites):
        answer = answer_query(consortium.site(i), {"spec": base_spec})
        rel = ReleasedCounts.from_json(json.loads(answer.released_json))
        pairs = [("patients", rel.patients, "CT", rel.subsets["CT"]),
                 ("patients", rel.patients, "ECG", rel.subsets["ECG"]),
                 ("CT", rel.subsets["CT"], "CT+ECG", rel.subsets["CT+ECG"]),
                 ("ECG", rel.subsets["ECG"], "CT+ECG", rel.subsets["CT+ECG"])]
        for big, a, small, b in pairs:
            if a is not None and b is not None and 0 < a - b < rel.min_cell_size:
                leaks.append(f"{consortium.site(i).site_id}: {big} - {small} = {a - b}")
    assert not leaks, "differencing of nested subsets reveals small cells: " + "; ".join(leaks)


# ------------------------------------------------------------------------ full run: identifier scan


def _date_forms(d: Any) -> list[str]:
    return [f"{d:%Y-%m-%d}", f"{d:%d.%m.%Y}", f"{d:%m-%d-%Y}", f"{d:%m/%d/%Y}", f"{d:%d/%m/%Y}"]


def _needles(people: list[Identity]) -> dict[str, re.Pattern[bytes]]:
    """One bytes regex per identifier kind; text forms in UTF-8, Windows-1252 and JSON escapes."""
    def forms(text: str) -> set[bytes]:
        out = {text.encode("utf-8"), json.dumps(text)[1:-1].encode("ascii")}
        try:
            out.add(text.encode("cp1252"))
        except UnicodeEncodeError:
            pass
        return out

    def alternation(texts: set[str]) -> bytes:
        return b"|".join(re.escape(f) for t in sorted(texts) for f in sorted(forms(t)))

    kinds = {
        "pseudonym": {p.pseudonym for p in people},
        "pacs_id": {p.pacs_id for p in people},
        "case_id": {p.case_id for p in people},
        "name": {f"{p.family_name}^{p.given_name}" for p in people} | {f"{p.given_name} {p.family_name}" for p in people}
                | {f"{p.family_name}, {p.given_name}" for p in people},
        "birth_date": {f for p in people for f in _date_forms(p.birth_date)},
    }
    pats = {k: re.compile(rb"(?<![A-Za-z0-9])(?:" + alternation(v) + rb")(?![A-Za-z0-9])") for k, v in kinds.items()}
    # Family names alone, as whole words (they are rare surnames, not words of the reports).
    pats["family_name"] = re.compile(rb"(?<![A-Za-z\xc0-\xff])(?:" + alternation({p.family_name for p in people})
                                     + rb")(?![a-z\xc0-\xff])")
    compact = b"|".join(f"{p.birth_date:%Y%m%d}".encode() for p in people)
    pats["birth_date_compact"] = re.compile(rb"(?<![0-9])(?:" + compact + rb")(?![0-9])")
    return pats


def _scan(blobs: dict[str, bytes], pats: dict[str, re.Pattern[bytes]]) -> dict[str, list[str]]:
    hits: dict[str, list[str]] = {}
    for where, data in blobs.items():
        for kind, pat in pats.items():
            m = pat.search(data)
            if m:
                hits.setdefault(kind, []).append(f"{where}: {m.group(0)!r}")
    return hits


def test_scanner_finds_identifiers_where_they_are(shared: Consortium) -> None:
    """Positive control: the needles are right, so an empty scan below means something."""
    people = identities(shared)
    pats = _needles(people)
    raw = {str(p): p.read_bytes() for s in ("uk-nord", "klinikum-sued", "herzzentrum-west")
           for p in (shared.root / s / "raw").rglob("*") if p.is_file()}
    hits = _scan(raw, pats)
    for kind in ("pacs_id", "case_id", "name", "birth_date_compact", "family_name"):
        assert kind in hits, f"no {kind} found in the raw exports: the scanner is broken"
    store_files = {str(p): p.read_bytes() for p in (shared.site_yaml(0).parent / "store" / "dicom").rglob("*.dcm")}
    assert "pseudonym" in _scan(dict(list(store_files.items())[:20]), pats)


@pytest.mark.slow
def test_no_identifier_leaves_a_site_in_a_full_run(shared: Consortium, tmp_path: Path,
                                                   capfd: pytest.CaptureFixture[str]) -> None:
    from fl_server.federation import RunSettings

    c = copy_consortium(shared, tmp_path / "sites")
    for i in range(c.n_sites):
        c.set_policy(i, min_cell_size=5)  # small sites: let them train, so train/evaluate replies exist
    quiet_flower(tmp_path / "flwr-home")
    out = tmp_path / "run"
    log_file = tmp_path / "flower.log"
    settings = RunSettings(overrides="federation.rounds=1 training.epochs=1 agreement.min_cases=5",
                           out_dir=str(out), expected_sites=c.n_sites, wait_s=60)
    payloads = run_recorded_simulation(c, settings, log_file)
    captured = capfd.readouterr()

    report = json.loads((out / "report.json").read_text())
    assert {s["status"] for s in report["sites"]} == {STATUS_ANSWERED}
    assert report["rounds"] and report["rounds"][0]["train"], "no site trained: the scan would miss training replies"
    types = {p["type"] for p in payloads}
    assert {f"query.{QUERY_ACTION}", "train", "evaluate"} <= types, types
    (tmp_path / "payloads.json").write_text(json.dumps(payloads, default=str))

    blobs: dict[str, bytes] = {}
    for p in out.rglob("*"):
        if p.is_file():
            blobs[str(p)] = p.read_bytes()
            blobs[f"name:{p.relative_to(out)}"] = str(p.relative_to(out)).encode()
    with zipfile.ZipFile(out / "final_model.npz") as npz:
        blobs["npz-members"] = "\n".join(npz.namelist()).encode()
    blobs["payloads"] = (tmp_path / "payloads.json").read_bytes()
    blobs["flower-log"] = log_file.read_bytes()
    blobs["stdout"] = captured.out.encode("utf-8", "replace")
    blobs["stderr"] = captured.err.encode("utf-8", "replace")
    for i in range(c.n_sites):
        blobs[f"audit:{c.site(i).site_id}"] = (c.site(i).store_path() / "audit.jsonl").read_bytes()
    assert len(blobs["flower-log"]) > 0 and b"negotiation" in blobs["flower-log"]
    # The secure totals ran on the same sites: their messages are among the scanned payloads.
    assert report["consortium_totals"]["status"] == "released"
    assert sorted(report["consortium_totals"]["contributors"]) == sorted(c.site(i).site_id for i in range(c.n_sites))
    assert {t for t in types if t.startswith("query.secagg")} == {
        f"query.{a}" for a in (SECAGG_SETUP_ACTION, SECAGG_SHARE_KEYS_ACTION, SECAGG_COLLECT_ACTION,
                               SECAGG_UNMASK_ACTION)}
    assert any(b"released" in blobs[k] for k in blobs if k.startswith("audit:"))

    hits = _scan(blobs, _needles(identities(c)))
    assert not hits, json.dumps(hits, indent=2)
