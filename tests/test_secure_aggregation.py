"""Secure totals of counts (SecAgg+ over query messages), DP budgets and free-text guards, attacked.

Most tests deliver messages to the real ClientApp in this process (``LocalGrid``: one Flower Context
per node, no Ray), so each protocol run takes well under a second; one slow test runs the same on
Flower's simulation engine with four sites.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from cohort.identity import enroll_site
from cohort.protocol import (
    KEY_MASKED_VECTOR,
    SECAGG_COLLECT_ACTION,
    SECAGG_RECORD,
    SECAGG_UNMASK_ACTION,
    STATUS_ANSWERED,
    STATUS_REFUSED,
)
from cohort.release.consortium import CountLayout, decode, release_totals, site_vector
from cohort.release.disclosure import ReleasedCounts
from cohort.release.gate import answer_query, local_counts
from cohort.results import LABEL_KEYS
from cohort.spec.load import parse_spec
from fl_server.config import compose_config
from fl_server.secure_counts import SecureSettings, secure_totals
from tests.federation_sites import (  # noqa: F401  (coordinator_identity: an autouse fixture)
    Consortium,
    LocalGrid,
    build_consortium,
    coordinator_identity,
    copy_consortium,
)

# ------------------------------------------------------------------------------------------- fixtures


def add_site_copy(c: Consortium, i: int, new_id: str) -> None:
    """A further site: a copy of site ``i``'s store under another site id (its true counts are known)."""
    src = c.site_yaml(i).parent
    dst = c.root / new_id
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("raw", "exports", "audit.jsonl", "*.sqlite"))
    data = yaml.safe_load((dst / "site.yaml").read_text(encoding="utf-8"))
    data["site_id"] = new_id
    (dst / "site.yaml").write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    enroll_site(dst / "site.yaml", new_id)  # its own identity key, on the consortium roster
    meta = json.loads(c.consortium_json.read_text())
    meta["sites"].append({**meta["sites"][i], "site_id": new_id, "site_config": f"{new_id}/site.yaml"})
    c.consortium_json.write_text(json.dumps(meta, indent=2))


def four_sites(shared: Consortium, folder: Path, **policy: object) -> Consortium:
    c = copy_consortium(shared, folder)
    add_site_copy(c, 0, "uk-nord-zwei")
    for i in range(c.n_sites):
        if policy:
            c.set_policy(i, **policy)
    return c


def plain_answers(grid: Any, spec_json: dict[str, Any]) -> list[Any]:
    from fl_server.federation import negotiate

    return negotiate(grid, grid.get_node_ids(), spec_json, None, 60)


def true_counts(c: Consortium, spec_json: dict[str, Any]) -> list[Any]:
    return [local_counts(c.site(i), parse_spec(spec_json, catalog=None)) for i in range(c.n_sites)]


def noisy_cells(totals: Any) -> set[str]:
    """The cells the sites noised (not every contributor released them exactly), as ``kind/name/key``."""
    return set(totals.noise["cells"]) if totals.noise else set()


def _sum_checks(totals: Any, truth: list[Any]) -> int:
    """Every released public total equals the sum of the true counts, every noisy one is within 8 noise
    standard deviations of it; returns how many cells were released."""
    released = 0
    noisy = noisy_cells(totals)
    pairs = [("patients", totals.patients, sum(t.patients for t in truth))]
    for name in totals.subsets:
        pairs.append((f"subset/{name}", totals.subsets[name], sum(t.subsets[name].patients for t in truth)))
        pairs += [(f"label/{name}/{k}", totals.labels[name][k], sum(getattr(t.subsets[name], k) for t in truth))
                  for k in LABEL_KEYS]
    for cell, got, want in pairs:
        if got is None:
            continue
        if cell in noisy:
            assert abs(got - want) <= 8 * totals.noise["sd"] + 1, cell
        else:
            assert got == want, cell
        released += 1
    return released


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Consortium:
    return build_consortium(tmp_path_factory)


@pytest.fixture(scope="module")
def spec_json() -> dict[str, Any]:
    return parse_spec(compose_config()["cohort"], catalog=None).to_dict()


@pytest.fixture()
def open_sites(shared: Consortium, tmp_path: Path) -> Consortium:
    """Four sites with a minimum cell of 1: every cell of a site's answer is released exactly."""
    return four_sites(shared, tmp_path / "sites", min_cell_size=1)


# ----------------------------------------------------------------------------- the secure total


def test_secure_total_equals_the_sum_of_the_sites_true_counts(open_sites: Consortium,
                                                              spec_json: dict[str, Any]) -> None:
    grid = LocalGrid(open_sites)
    answers = plain_answers(grid, spec_json)
    assert {a.status for a in answers} == {STATUS_ANSWERED}
    totals = secure_totals(grid, answers, spec_json, SecureSettings(min_sites=3))
    assert totals.released, totals.reason
    truth = true_counts(open_sites, spec_json)
    assert sorted(totals.contributors) == sorted(open_sites.site(i).site_id for i in range(4))
    assert _sum_checks(totals, truth) >= 10  # every released total is exact; most are released
    labelled = [t.subsets["labelled"] for t in truth]
    assert totals.labels["labelled"]["positive"] == sum(sc.positive for sc in labelled) > 0
    assert totals.labels["labelled"]["negative"] == sum(sc.negative for sc in labelled)
    hist = totals.distributions[0]  # qrs_duration histogram over the cohort
    noisy = noisy_cells(totals)
    released_bins = [(j, b["count"]) for j, b in enumerate(hist.bins)
                     if b["count"] is not None and f"bin/0/{b['label']}" not in noisy]
    assert released_bins
    for j, count in released_bins:
        assert count == sum(t.distributions[0].bins[j].count for t in truth)
    assert not totals.dropped and not totals.declined


def test_no_reply_to_the_coordinator_holds_a_site_vector(open_sites: Consortium, spec_json: dict[str, Any]) -> None:
    grid = LocalGrid(open_sites)
    answers = plain_answers(grid, spec_json)
    grid.replies.clear()
    totals = secure_totals(grid, answers, spec_json, SecureSettings(min_sites=3))
    assert totals.released
    layout = CountLayout.from_released([a.released for a in answers])
    vectors = {open_sites.site(i).site_id: site_vector(t, layout, open_sites.site(i).disclosure)
               for i, t in enumerate(true_counts(open_sites, spec_json))}
    masked = []
    for reply in grid.replies:
        rec = dict(reply.content[SECAGG_RECORD])
        for key, value in rec.items():
            for site, vec in vectors.items():
                assert value != vec, f"{site}'s count vector in reply key {key!r}"
                if isinstance(value, str):
                    assert json.dumps(vec)[1:-1] not in value, f"{site}'s count vector inside reply key {key!r}"
        if KEY_MASKED_VECTOR in rec:
            masked.append([int(v) for v in rec[KEY_MASKED_VECTOR]])
    assert len(masked) == 4
    for m in masked:  # each masked vector differs from every site's vector in (almost) every cell
        for site, vec in vectors.items():
            assert sum(a == b for a, b in zip(m, vec, strict=True)) <= 1, site
    # ... yet the coordinator ends up with their exact sum.
    cell = 2 + (1 + len(LABEL_KEYS)) * layout.subsets.index("labelled") + 1 + LABEL_KEYS.index("negative")
    assert totals.labels["labelled"]["negative"] == sum(v[cell] for v in vectors.values())


def test_two_sites_are_refused_even_when_the_coordinator_asks_for_two(open_sites: Consortium,
                                                                      spec_json: dict[str, Any]) -> None:
    grid = LocalGrid(open_sites)
    answers = plain_answers(grid, spec_json)[:2]
    totals = secure_totals(grid, answers, spec_json, SecureSettings(min_sites=2))
    assert not totals.released and totals.patients is None and not totals.subsets
    assert set(totals.declined) == {a.site_id for a in answers}
    assert all("disclosure.secure_min_sites" in why for why in totals.declined.values())
    # The coordinator's own rule refuses two sites before asking anyone.
    grid.replies.clear()
    totals = secure_totals(grid, answers, spec_json, SecureSettings(min_sites=3))
    assert not totals.released and "fewer than min_sites=3" in (totals.reason or "")
    assert grid.replies == []


def test_a_site_whose_policy_forbids_it_does_not_join(open_sites: Consortium, spec_json: dict[str, Any]) -> None:
    open_sites.set_policy(3, secure_aggregation=False)
    grid = LocalGrid(open_sites)
    answers = plain_answers(grid, spec_json)
    totals = secure_totals(grid, answers, spec_json, SecureSettings(min_sites=3))
    assert totals.released
    outsider = open_sites.site(3).site_id
    assert outsider not in totals.contributors and len(totals.contributors) == 3
    assert "disclosure.secure_aggregation" in totals.declined[outsider]
    truth = true_counts(open_sites, spec_json)[:3]
    assert totals.patients == sum(t.patients for t in truth)


def test_a_site_dropping_out_mid_protocol_is_survived_and_reported(open_sites: Consortium,
                                                                   spec_json: dict[str, Any]) -> None:
    grid = LocalGrid(open_sites)
    answers = plain_answers(grid, spec_json)
    grid.drop[f"query.{SECAGG_COLLECT_ACTION}"] = {grid.node_of(1)}  # keys shared, then silence
    totals = secure_totals(grid, answers, spec_json, SecureSettings(min_sites=3))
    assert totals.released, totals.reason
    gone = open_sites.site(1).site_id
    assert totals.dropped == [gone] and gone not in totals.contributors
    assert any(gone in n and "dropped out" in n for n in totals.notes)
    truth = [t for i, t in enumerate(true_counts(open_sites, spec_json)) if i != 1]
    assert totals.patients == sum(t.patients for t in truth)
    assert totals.labels["labelled"]["positive"] == sum(t.subsets["labelled"].positive for t in truth)


def test_dropping_below_min_sites_releases_nothing(shared: Consortium, tmp_path: Path,
                                                   spec_json: dict[str, Any]) -> None:
    c = copy_consortium(shared, tmp_path / "three")
    for i in range(3):
        c.set_policy(i, min_cell_size=1)
    grid = LocalGrid(c)
    answers = plain_answers(grid, spec_json)
    grid.drop[f"query.{SECAGG_COLLECT_ACTION}"] = {grid.node_of(2)}
    totals = secure_totals(grid, answers, spec_json, SecureSettings(min_sites=3))
    assert not totals.released and totals.patients is None
    assert not [r for r in grid.replies if r.metadata.message_type == f"query.{SECAGG_UNMASK_ACTION}"]


def test_a_site_never_unmasks_a_total_of_fewer_sites_than_its_policy(open_sites: Consortium,
                                                                     spec_json: dict[str, Any]) -> None:
    """A coordinator that skips its own check still gets no shares for a two-site total."""
    from fl_client.secure_counts import unmask

    grid = LocalGrid(open_sites)
    answers = plain_answers(grid, spec_json)
    grid.drop[f"query.{SECAGG_UNMASK_ACTION}"] = set(grid.contexts)  # stop before the real unmask
    secure_totals(grid, answers, spec_json, SecureSettings(min_sites=3))
    node = grid.node_of(0)
    from fl_client.secure_counts import SECAGG_STATE

    state = dict(grid.contexts[node].state.config_records[SECAGG_STATE])
    others = [n for n in grid.contexts if n != node]
    cfg = {"request-id": state["request-id"], "active-nodes": [node, others[0]], "dead-nodes": others[1:]}
    reply = unmask(open_sites.site(0), cfg, state)
    assert reply["status"] == STATUS_REFUSED and "disclosure.secure_min_sites" in reply["reason"]
    assert "shares" not in reply


def test_a_repeat_over_one_site_fewer_is_refused_as_differencing(open_sites: Consortium,
                                                                 spec_json: dict[str, Any]) -> None:
    grid = LocalGrid(open_sites)
    answers = plain_answers(grid, spec_json)
    first = secure_totals(grid, answers, spec_json, SecureSettings(min_sites=3))
    assert first.released
    again = secure_totals(grid, answers, spec_json, SecureSettings(min_sites=3))
    assert again.released and again.patients == first.patients  # the same set: nothing new is learnt
    renamed = {**spec_json, "name": "same question, other name"}
    grid.drop[f"query.{SECAGG_COLLECT_ACTION}"] = {grid.node_of(2)}
    third = secure_totals(grid, answers, renamed, SecureSettings(min_sites=3))
    assert not third.released and third.patients is None
    unmask_replies = [dict(r.content[SECAGG_RECORD]) for r in grid.replies
                      if r.metadata.message_type == f"query.{SECAGG_UNMASK_ACTION}"][-3:]
    assert all(r["status"] == STATUS_REFUSED and "differenced" in r["reason"] for r in unmask_replies)


def test_secure_stages_out_of_order_are_refused(open_sites: Consortium, spec_json: dict[str, Any]) -> None:
    from fl_client.secure_counts import collect

    state: dict[str, Any] = {}
    reply = collect(open_sites.site(0), {"request-id": "x", "sources": [], "ciphertexts": []}, state)
    assert reply["status"] == STATUS_REFUSED and "out of order" in reply["reason"]


def test_setup_refuses_a_low_threshold(open_sites: Consortium, spec_json: dict[str, Any]) -> None:
    from cohort.secure_masks import MOD_RANGE
    from fl_client.secure_counts import setup

    layout = CountLayout(("labelled",))
    cfg = {"request-id": "r", "spec-json": json.dumps(spec_json), "layout-json": layout.to_json(),
           "sample-num": 4, "threshold": 2, "mod-range": MOD_RANGE, "min-sites": 3}
    reply = setup(open_sites.site(0), cfg, {}, 5)
    assert reply["status"] == STATUS_REFUSED and "above half" in reply["reason"]


# ------------------------------------------------------------------------ the release rule of totals


def _rel(pos: int | None, rounding: int = 1) -> ReleasedCounts:
    return ReleasedCounts(min_cell_size=10, rounding=rounding, noise=False, patients=40,
                          subsets={"S": 40}, labels={"S": {"positive": pos, "negative": None, "unknown": None}})


def _summed(pos_sites: list[int]) -> Any:
    from cohort.results import CohortCounts, SubsetCounts
    from cohort.siteconfig import DisclosurePolicy

    layout = CountLayout(("S",))
    vecs = [site_vector(CohortCounts(40, {"S": SubsetCounts(40, p, 40 - p, 0)}), layout, DisclosurePolicy())
            for p in pos_sites]
    return decode([sum(col) for col in zip(*vecs, strict=True)], layout)


@pytest.mark.parametrize(("site_pos", "released", "expected"), [
    ([12, 11, 4], [(12, 1), (11, 1), (None, 1)], None),  # total - 12 - 11 would be the third site's 4
    ([4, 5, 3], [(None, 1), (None, 1), (None, 1)], 12),  # three hidden cells, remainder 12 >= 10
    ([12, 4, 3], [(12, 1), (None, 1), (None, 1)], None),  # remainder 7 from two sites
    ([12, 14, 16], [(12, 1), (14, 1), (16, 1)], 42),  # nothing hidden
    ([12, 14, 4], [(12, 1), (15, 5), (None, 1)], None),  # a rounded release counts as hidden: two sites
], ids=["one-hidden", "all-hidden", "small-remainder", "all-exact", "rounded-is-hidden"])
def test_a_total_never_reveals_one_site_by_subtraction(site_pos: list[int], released: list[tuple[int | None, int]],
                                                       expected: int | None) -> None:
    rels = [_rel(v, r) for v, r in released]
    totals = release_totals(_summed(site_pos), rels, min_cell=10, min_sites=3)
    assert totals.labels["S"]["positive"] == expected
    assert totals.subsets["S"] == (120 if all(r == 1 for _, r in released) else None)


def test_totals_below_min_sites_are_withheld() -> None:
    totals = release_totals(_summed([12, 14]), [_rel(12), _rel(14)], min_cell=10, min_sites=3)
    assert not totals.released and totals.subsets == {} and "min_sites=3" in (totals.reason or "")


# -------------------------------------------------------------------------- DP budget and free text


def _dp_site(c: Consortium, i: int, **extra: object) -> Any:
    c.set_policy(i, min_cell_size=5, dp_epsilon=1.0, dp_budget=2.5, **extra)
    return c.site(i)


def _variant(spec_json: dict[str, Any], k: int) -> dict[str, Any]:
    s = copy.deepcopy(spec_json)
    s["objects"]["ecg"]["within"]["min_days"] = -90 + k  # another question, another spend
    return s


def test_dp_budget_is_spent_per_query_then_refused_and_said_so(open_sites: Consortium,
                                                               spec_json: dict[str, Any]) -> None:
    site = _dp_site(open_sites, 0)
    rels = []
    for k in range(2):
        a = answer_query(site, {"spec": _variant(spec_json, k), "requester": f"r{k}"}, account="coord-a")
        assert a.status == STATUS_ANSWERED, a.reason
        rels.append(ReleasedCounts.from_json(json.loads(a.released_json)))
    assert all(r.dp and r.dp["epsilon"] == 1.0 and r.noise for r in rels)
    refused = answer_query(site, {"spec": _variant(spec_json, 2), "requester": "r2"}, account="coord-a")
    assert refused.status == STATUS_REFUSED and refused.released_json is None
    assert "budget" in refused.reason and "coord-a" in refused.reason and "disclosure.dp_budget" in refused.reason
    # Another coordinator has its own budget at this site.
    assert answer_query(site, {"spec": _variant(spec_json, 2)}, account="coord-b").status == STATUS_ANSWERED
    log = [json.loads(x) for x in (site.store_path() / "audit.jsonl").read_text().splitlines()]
    assert [e["decision"] for e in log[-4:]] == [STATUS_ANSWERED, STATUS_ANSWERED, STATUS_REFUSED, STATUS_ANSWERED]
    assert "spent epsilon 1" in log[-4]["reason"] and "2 of 2.5 used" in log[-3]["reason"]
    assert "exhausted" in log[-2]["reason"]


def test_a_repeated_identical_query_returns_the_same_noisy_answer(open_sites: Consortium,
                                                                  spec_json: dict[str, Any]) -> None:
    from cohort.release.ledger import PrivacyLedger

    site = _dp_site(open_sites, 1)
    first = answer_query(site, {"spec": spec_json}, account="coord")
    spent = PrivacyLedger(site.store_path()).spent("coord")
    repeats = [answer_query(site, {"spec": spec_json, "requester": f"again-{k}"}, account="coord")
               for k in range(5)]
    assert {r.released_json for r in repeats} == {first.released_json}
    assert PrivacyLedger(site.store_path()).spent("coord") == spent == 1.0
    # The answer is noisy (not the exact counts) and never below the minimum cell.
    rel = ReleasedCounts.from_json(json.loads(first.released_json))
    truth = local_counts(site, parse_spec(spec_json, catalog=None))
    cells = [rel.patients, *rel.subsets.values(), *(v for lab in rel.labels.values() for v in lab.values())]
    assert all(v is None or v >= 5 for v in cells)
    exact = [truth.patients, *(sc.patients for sc in truth.subsets.values())]
    assert [rel.patients, *rel.subsets.values()] != exact
    assert all(d.refused and "dp_epsilon" in d.refused for d in rel.distributions)


def test_a_free_text_probe_is_refused_naming_the_policy_key(open_sites: Consortium,
                                                            spec_json: dict[str, Any]) -> None:
    probe = copy.deepcopy(spec_json)
    probe["objects"]["letter"] = {"kind": "SR", "template": "free_text",
                                  "where": [{"field": "report_text", "op": "contains", "value": "Vogt"}]}
    probe["cohort"] = {"all": [probe["cohort"], "letter"]}
    site = open_sites.site(0)
    a = answer_query(site, {"spec": probe, "requester": "probe"})
    assert a.status == STATUS_REFUSED and a.released_json is None
    assert "disclosure.free_text_terms" in a.reason and "report_text" in a.reason
    assert "Vogt" not in a.reason  # the probed value (maybe a name) is not repeated back
    entry = json.loads((site.store_path() / "audit.jsonl").read_text().splitlines()[-1])
    assert entry["decision"] == STATUS_REFUSED and "Vogt" not in json.dumps(entry)
    # exists on free text stays answerable; an allowlisted term is answered.
    probe["objects"]["letter"]["where"] = [{"field": "report_text", "op": "exists"}]
    assert answer_query(site, {"spec": probe}).status == STATUS_ANSWERED
    open_sites.set_policy(0, free_text_terms=["Schrittmacher"])
    probe["objects"]["letter"]["where"] = [{"field": "report_text", "op": "contains", "value": "schrittmacher"}]
    assert answer_query(open_sites.site(0), {"spec": probe}).status == STATUS_ANSWERED


def test_a_free_text_probe_refuses_the_secure_total_too(open_sites: Consortium, spec_json: dict[str, Any]) -> None:
    from cohort.secure_masks import MOD_RANGE
    from fl_client.secure_counts import setup

    probe = copy.deepcopy(spec_json)
    probe["objects"]["letter"] = {"kind": "SR", "template": "free_text",
                                  "where": [{"field": "report_text", "op": "=", "value": "x"}]}
    probe["cohort"] = {"all": [probe["cohort"], "letter"]}
    cfg = {"request-id": "r", "spec-json": json.dumps(probe), "layout-json": CountLayout(("CT",)).to_json(),
           "sample-num": 4, "threshold": 3, "mod-range": MOD_RANGE, "min-sites": 3}
    reply = setup(open_sites.site(0), cfg, {}, 5)
    assert reply["status"] == STATUS_REFUSED and "disclosure.free_text_terms" in reply["reason"]


# ------------------------------------------------------------------ on Flower's simulation engine


class DroppingGrid:
    """Forwards to a Grid, but never delivers ``action`` messages to ``node``: it drops out there."""

    def __init__(self, grid: Any, action: str, node: int) -> None:
        self._grid, self.action, self.node = grid, action, node

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def send_and_receive(self, messages, *, timeout=None):  # type: ignore[no-untyped-def]
        kept = [m for m in messages if not (m.metadata.message_type == self.action and m.metadata.dst_node_id
                                            == self.node)]
        return self._grid.send_and_receive(kept, timeout=timeout)


DP_BUDGET = 5.5
SIM_MIN_CELL = 5  # each tiny site has fewer positives than this, together they have more


@pytest.fixture(scope="module")
def simulated(shared: Consortium, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One simulation, four sites (minimum cell 5; the fourth answers with DP), many questions."""
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from fl_client.client_app import build_client_app
    from fl_server.federation import _wait_for_nodes, negotiate
    from tests.federation_sites import RecordingGrid, quiet_flower

    root = tmp_path_factory.mktemp("secure-sim")
    c = four_sites(shared, root / "sites", min_cell_size=SIM_MIN_CELL)
    c.set_policy(3, dp_epsilon=1.0, dp_budget=DP_BUDGET)
    quiet_flower(root / "flwr-home")
    spec = parse_spec(compose_config()["cohort"], catalog=None).to_dict()
    other = copy.deepcopy(spec)  # other patients at every site (the same ones again over fewer sites is refused)
    other["cohort"] = {"all": ["tavi", "ecg", {"not": "prior_pacemaker"}]}
    probe = copy.deepcopy(spec)
    probe["objects"]["letter"] = {"kind": "SR", "template": "free_text",
                                  "where": [{"field": "report_text", "op": "contains", "value": "Vogt"}]}
    probe["cohort"] = {"all": [probe["cohort"], "letter"]}
    out: dict[str, Any] = {"consortium": c, "spec": spec, "other": other}
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        rec = RecordingGrid(grid)
        nodes = _wait_for_nodes(grid, 4, 60)
        settings = SecureSettings(min_sites=3, timeout=60, subsets=("labelled",))  # as agree_with_totals asks
        out["plain"] = negotiate(rec, nodes, spec, None, 60)
        out["secure"] = secure_totals(rec, out["plain"], spec, settings)
        out["secure_replies"] = list(rec.replies)
        out["plain_other"] = negotiate(rec, nodes, other, None, 60)
        leaver = next(a.node_id for a in out["plain_other"] if a.site_id == c.site(1).site_id)
        out["dropout"] = secure_totals(DroppingGrid(rec, f"query.{SECAGG_COLLECT_ACTION}", leaver),
                                       out["plain_other"], other, settings)
        out["pair"] = secure_totals(rec, out["plain"][:2], spec, SecureSettings(min_sites=2, timeout=60))
        dp_node = [next(a.node_id for a in out["plain"] if a.site_id == c.site(3).site_id)]
        out["dp"] = [negotiate(rec, dp_node, s, None, 60)[0] for s in (spec, _variant(spec, 1), _variant(spec, 2))]
        out["probe"] = negotiate(rec, nodes, probe, None, 60)

    run_simulation(server_app=app, client_app=build_client_app(c.consortium_json), num_supernodes=4,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
    assert "probe" in out, "the ServerApp did not finish"
    return out


@pytest.mark.slow
def test_simulation_secure_total_over_four_sites_one_with_dp(simulated: dict[str, Any]) -> None:
    c, totals = simulated["consortium"], simulated["secure"]
    truth = true_counts(c, simulated["spec"])
    assert totals.released and len(totals.contributors) == 4
    # Every site suppressed its labelled positives (fewer than the minimum cell each) ...
    assert all(t.subsets["labelled"].positive < SIM_MIN_CELL for t in truth)
    assert all(a.released.labels["labelled"]["positive"] is None for a in simulated["plain"] if a.released.dp is None)
    # ... and the DP site never contributes exact counts: it states no exact cell, so every cell of the
    # sum carries noise (its own full noise at its epsilon, the others' shares); released cells are
    # within the stated noise of the true sum.
    assert totals.noise and totals.noise["epsilon"] == 1.0
    assert "label/labelled/positive" in totals.noise["cells"] and "subset/labelled" in totals.noise["cells"]
    assert _sum_checks(totals, truth) >= 1


@pytest.mark.slow
def test_simulation_coordinator_sees_no_site_vector(simulated: dict[str, Any]) -> None:
    c = simulated["consortium"]
    layout = CountLayout.from_released([a.released for a in simulated["plain"]], ("labelled",))
    vectors = [site_vector(t, layout, c.site(i).disclosure) for i, t in enumerate(true_counts(c, simulated["spec"]))]
    masked = [[int(v) for v in dict(r.content[SECAGG_RECORD])[KEY_MASKED_VECTOR]]
              for r in simulated["secure_replies"]
              if r.metadata.message_type == f"query.{SECAGG_COLLECT_ACTION}" and not r.has_error()]
    assert len(masked) == 4
    for m in masked:
        assert all(sum(a == b for a, b in zip(m, v, strict=True)) <= 1 for v in vectors)
    for r in simulated["secure_replies"]:
        if r.metadata.message_type.startswith("query.secagg"):
            values = list(dict(r.content[SECAGG_RECORD]).values())
            assert not any(v == vec for v in values for vec in vectors)


@pytest.mark.slow
def test_simulation_dropout_two_sites_dp_and_probe(simulated: dict[str, Any]) -> None:
    c = simulated["consortium"]
    drop = simulated["dropout"]
    assert drop.released and drop.dropped == [c.site(1).site_id] and len(drop.contributors) == 3
    truth = [t for i, t in enumerate(true_counts(c, simulated["other"])) if i != 1]
    assert _sum_checks(drop, truth) >= 1
    pair = simulated["pair"]
    assert not pair.released and all("secure_min_sites" in why for why in pair.declined.values())
    first, again, _third = simulated["dp"]
    plain_dp = next(a for a in simulated["plain"] if a.site_id == c.site(3).site_id)
    assert first.status == STATUS_ANSWERED and first.released == plain_dp.released  # cached: same noise
    assert first.released.dp["epsilon"] == 1.0
    # plain spec (1), its secure total (2), other cohort (3) and its secure total (4), variant 1 (5):
    # variant 2 would be 6 > 5.5
    assert again.status == STATUS_ANSWERED
    assert simulated["dp"][2].status == STATUS_REFUSED and "budget" in simulated["dp"][2].reason
    assert {a.status for a in simulated["probe"]} == {STATUS_REFUSED}
    assert all("disclosure.free_text_terms" in a.reason for a in simulated["probe"])


def test_a_small_unknown_total_still_hides_the_next_smallest_label() -> None:
    """Secondary suppression stays for a non-empty small cell: 3 sites x 2 unknown = 6 < 10."""
    from cohort.results import CohortCounts, SubsetCounts
    from cohort.siteconfig import DisclosurePolicy

    layout = CountLayout(("S",))
    vecs = [site_vector(CohortCounts(40, {"S": SubsetCounts(40, p, 38 - p, 2)}), layout, DisclosurePolicy())
            for p in (4, 5, 3)]
    summed = decode([sum(col) for col in zip(*vecs, strict=True)], layout)
    totals = release_totals(summed, [_rel(None)] * 3, min_cell=10, min_sites=3)
    assert totals.labels["S"] == {"positive": None, "negative": 102, "unknown": None}


@pytest.mark.parametrize(("sites", "positives"), [
    # Two sites' positives (12, 17) are derivable from their released labelled totals and negatives
    # (unknown is empty by construction); a total of 36 would give the third site's 7.
    ([(60, 12, 48, 0), (66, 17, 49, 0), (74, 7, 67, 0)], None),
    # Every site hides its positives and negatives: the total reveals no site's count.
    ([(60, 4, 56, 0), (66, 5, 61, 0), (74, 7, 67, 0)], 16),
    # All three derivable (each at least the minimum cell): the total adds nothing, it is released.
    ([(60, 12, 48, 0), (66, 17, 49, 0), (74, 10, 64, 0)], 39),
], ids=["two-derivable", "all-hidden", "all-derivable"])
def test_a_total_never_reveals_a_site_through_derivable_cells(sites: list[tuple[int, int, int, int]],
                                                               positives: int | None) -> None:
    from cohort.release.disclosure import release
    from cohort.results import CohortCounts, SubsetCounts
    from cohort.siteconfig import DisclosurePolicy

    layout = CountLayout(("labelled",))
    counts = [CohortCounts(c[0], {"labelled": SubsetCounts(*c)}) for c in sites]
    rels = [release(c, DisclosurePolicy(min_cell_size=10)) for c in counts]
    summed = decode([sum(col) for col in zip(*(site_vector(c, layout, DisclosurePolicy()) for c in counts),
                                             strict=True)], layout)
    totals = release_totals(summed, rels, min_cell=10, min_sites=3)
    assert totals.labels["labelled"]["positive"] == positives
    # Whatever is released, no site's hidden positive count follows from the totals and releases.
    for i, rel in enumerate(rels):
        lab = rel.labels["labelled"]
        if lab["positive"] is None and lab["negative"] is None and totals.labels["labelled"]["positive"] is not None:
            others = [r.subsets["labelled"] - r.labels["labelled"]["negative"] for j, r in enumerate(rels)
                      if j != i and r.labels["labelled"]["negative"] is not None]
            assert len(others) < len(rels) - 1, f"site {i}'s positives follow by subtraction"
