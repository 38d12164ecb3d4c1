"""Secure totals against a hostile coordinator: every attack of issue 18, as crafted coordinator messages
delivered to the real ClientApp (``LocalGrid``), and dropout at every stage.

Attacks: the threshold swap (one site told "3 sites, threshold 2", then given four), made-up
participants (keys the coordinator generated, under real or invented site ids), relabelled participants
and a changed layout to difference the same sites' counts, the raw sum minus the sites' exact plain
answers, and a DP site's exact counts. Each test fails against the protocol before issue 18.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.supercore.primitives.asymmetric import generate_key_pairs, public_key_to_bytes

import fl_server.secure_counts as coordinator
from cohort.protocol import (
    KEY_CIPHERTEXTS,
    KEY_DESTINATIONS,
    KEY_DP,
    KEY_DP_LIST,
    KEY_EPSILON,
    KEY_EPSILON_LIST,
    KEY_EXACT_CELLS,
    KEY_EXACT_LIST,
    KEY_LAYOUT_JSON,
    KEY_MIN_CELL,
    KEY_MIN_CELL_LIST,
    KEY_MIN_SITES,
    KEY_MIN_SITES_LIST,
    KEY_MOD_RANGE,
    KEY_NODE_IDS,
    KEY_PK1,
    KEY_PK1_LIST,
    KEY_PK2,
    KEY_PK2_LIST,
    KEY_REQUEST_ID,
    KEY_SAMPLE_NUM,
    KEY_SIGNATURE,
    KEY_SIGNATURES,
    KEY_SITE_IDS,
    KEY_SPEC_JSON,
    KEY_STATUS,
    KEY_THRESHOLD,
    SECAGG_COLLECT_ACTION,
    SECAGG_RECORD,
    SECAGG_SETUP_ACTION,
    SECAGG_SHARE_KEYS_ACTION,
    SECAGG_UNMASK_ACTION,
    STATUS_JOINED,
    STATUS_REFUSED,
)
from cohort.release.consortium import BinSlot, CountLayout, DistributionLayout, known_cells, site_vector
from cohort.release.secret import SECRET_FILE
from cohort.results import LABEL_KEYS
from cohort.secure_masks import MOD_RANGE
from cohort.spec.load import parse_spec
from fl_server.config import compose_config
from fl_server.secure_counts import SecureSettings, _Protocol, secure_totals
from tests.federation_sites import (  # noqa: F401  (coordinator_identity: an autouse fixture)
    Consortium,
    LocalGrid,
    build_consortium,
    coordinator_identity,
)
from tests.test_secure_aggregation import four_sites, plain_answers, true_counts

AGREED = ("labelled",)  # the subset the coordinator's agreement sums (fl_server.secure_counts.agree_with_totals)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Consortium:
    return build_consortium(tmp_path_factory)


@pytest.fixture(scope="module")
def spec_json() -> dict[str, Any]:
    return parse_spec(compose_config()["cohort"], catalog=None).to_dict()


def pin_secrets(c: Consortium) -> None:
    """Fixed release secrets, so the sites' noise (keyed by them) is the same on every test run."""
    for i in range(c.n_sites):
        path = c.site(i).store_path() / SECRET_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(bytes([i + 1]) * 32)


@pytest.fixture()
def sites4(shared: Consortium, tmp_path: Path) -> Consortium:
    c = four_sites(shared, tmp_path / "sites", min_cell_size=1)
    pin_secrets(c)
    return c


# ----------------------------------------------------------------------------- a hostile coordinator


def send(grid: LocalGrid, node: int, action: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """One crafted secure-aggregation message to ``node`` through the real ClientApp; its reply record."""
    msg = Message(content=RecordDict({SECAGG_RECORD: ConfigRecord(cfg)}), dst_node_id=node,
                  message_type=f"query.{action}")
    (reply,) = grid.send_and_receive([msg])
    if reply.has_error():
        return {KEY_STATUS: "error", "reason": reply.error.reason}
    return dict(reply.content[SECAGG_RECORD])


def setup_cfg(spec_json: dict[str, Any], layout: CountLayout, sites: list[str], n: int, threshold: int,
              request: str = "attack") -> dict[str, Any]:
    return {KEY_REQUEST_ID: request, KEY_SPEC_JSON: json.dumps(spec_json), KEY_LAYOUT_JSON: layout.to_json(),
            KEY_SAMPLE_NUM: n, KEY_THRESHOLD: threshold, KEY_MOD_RANGE: MOD_RANGE, KEY_MIN_SITES: 3,
            KEY_SITE_IDS: sites}


def share_keys_cfg(entries: list[tuple[int, dict[str, Any]]], request: str = "attack") -> dict[str, Any]:
    """The share-keys message from (node, setup reply) pairs; missing fields (older sites) default empty."""
    return {KEY_REQUEST_ID: request, KEY_NODE_IDS: [n for n, _ in entries],
            KEY_SITE_IDS: [str(r["site-id"]) for _, r in entries],
            KEY_PK1_LIST: [bytes(r[KEY_PK1]) for _, r in entries], KEY_PK2_LIST: [bytes(r[KEY_PK2]) for _, r in entries],
            KEY_SIGNATURES: [bytes(r.get(KEY_SIGNATURE, b"")) for _, r in entries],
            KEY_EXACT_LIST: [str(r.get(KEY_EXACT_CELLS, "")) for _, r in entries],
            KEY_EPSILON_LIST: [float(r.get(KEY_EPSILON, 1.0)) for _, r in entries],
            KEY_MIN_CELL_LIST: [int(r.get(KEY_MIN_CELL, 1)) for _, r in entries],
            KEY_MIN_SITES_LIST: [int(r.get(KEY_MIN_SITES, 3)) for _, r in entries],
            KEY_DP_LIST: [int(r.get(KEY_DP, 0)) for _, r in entries]}


def forged_entry(site_id: str, exact: str) -> dict[str, Any]:
    """A participant the coordinator made up: its own key pairs, signed (if at all) with its own key."""
    _, pk1 = generate_key_pairs()
    _, pk2 = generate_key_pairs()
    rogue = Ed25519PrivateKey.generate()
    return {"site-id": site_id, KEY_PK1: public_key_to_bytes(pk1), KEY_PK2: public_key_to_bytes(pk2),
            KEY_SIGNATURE: rogue.sign(b"whatever"), KEY_EXACT_CELLS: exact, KEY_STATUS: STATUS_JOINED}


def refused_without_shares(reply: dict[str, Any]) -> bool:
    return reply[KEY_STATUS] != STATUS_JOINED and not reply.get(KEY_CIPHERTEXTS) and not reply.get(KEY_DESTINATIONS)


# ---------------------------------------------------------------------------------------- the attacks


def test_threshold_swap_is_refused_at_share_keys(sites4: Consortium, spec_json: dict[str, Any]) -> None:
    """Setup tells the victim "3 sites, threshold 2"; share-keys gives it the real four-site list (whose
    other members were set up with threshold 3). Its secrets would be 2-of-4 shared."""
    grid = LocalGrid(sites4)
    answers = plain_answers(grid, spec_json)
    layout = CountLayout.from_released([a.released for a in answers], AGREED)
    ids = [sites4.site(i).site_id for i in range(4)]
    nodes = [grid.node_of(i) for i in range(4)]
    victim = send(grid, nodes[0], SECAGG_SETUP_ACTION, setup_cfg(spec_json, layout, ids[:3], 3, 2))
    assert victim[KEY_STATUS] == STATUS_JOINED  # a three-site sum with threshold 2 is legitimate by itself
    others = [send(grid, n, SECAGG_SETUP_ACTION, setup_cfg(spec_json, layout, ids, 4, 3)) for n in nodes[1:]]
    assert all(r[KEY_STATUS] == STATUS_JOINED for r in others)
    cfg = share_keys_cfg(list(zip(nodes, [victim, *others], strict=True)))
    reply = send(grid, nodes[0], SECAGG_SHARE_KEYS_ACTION, cfg)
    assert refused_without_shares(reply), reply
    assert "setup announced 3" in reply["reason"]
    # Even told "4 sites, threshold 2" consistently, the victim refuses at setup and at share-keys.
    low = send(grid, nodes[0], SECAGG_SETUP_ACTION, setup_cfg(spec_json, layout, ids, 4, 2, "again"))
    assert low[KEY_STATUS] == STATUS_REFUSED and "above half" in low["reason"]


def test_a_restated_threshold_that_differs_from_setup_is_refused(sites4: Consortium,
                                                                 spec_json: dict[str, Any]) -> None:
    grid = LocalGrid(sites4)
    answers = plain_answers(grid, spec_json)
    layout = CountLayout.from_released([a.released for a in answers], AGREED)
    ids = [sites4.site(i).site_id for i in range(4)]
    nodes = [grid.node_of(i) for i in range(4)]
    replies = [send(grid, n, SECAGG_SETUP_ACTION, setup_cfg(spec_json, layout, ids, 4, 3)) for n in nodes]
    cfg = {**share_keys_cfg(list(zip(nodes, replies, strict=True))), KEY_THRESHOLD: 2}
    reply = send(grid, nodes[0], SECAGG_SHARE_KEYS_ACTION, cfg)
    assert refused_without_shares(reply) and "threshold 2 differs" in reply["reason"]


@pytest.mark.parametrize("names", ["invented", "real"])
def test_made_up_participants_get_no_shares(sites4: Consortium, spec_json: dict[str, Any], names: str) -> None:
    """Share-keys lists the victim and two entries whose keys the coordinator generated, under invented
    site ids (refused at setup: not on the roster) or under real members' ids (refused at share-keys:
    their signatures do not verify)."""
    grid = LocalGrid(sites4)
    answers = plain_answers(grid, spec_json)
    layout = CountLayout.from_released([a.released for a in answers], AGREED)
    victim_node = grid.node_of(0)
    fake_ids = ["rogue-1", "rogue-2"] if names == "invented" else [sites4.site(1).site_id, sites4.site(2).site_id]
    ids = [sites4.site(0).site_id, *fake_ids]
    victim = send(grid, victim_node, SECAGG_SETUP_ACTION, setup_cfg(spec_json, layout, ids, 3, 2))
    if names == "invented":
        assert victim[KEY_STATUS] == STATUS_REFUSED and "not on this site's consortium roster" in victim["reason"]
        # Pretend it had joined anyway: share-keys is refused too (it is not at that stage).
        victim = {**victim, "site-id": ids[0], KEY_PK1: b"\x01" * 33, KEY_PK2: b"\x02" * 33}
    else:
        assert victim[KEY_STATUS] == STATUS_JOINED
    exact = str(victim.get(KEY_EXACT_CELLS, "1" * layout.size))
    entries = [(victim_node, victim), (111, forged_entry(fake_ids[0], exact)), (222, forged_entry(fake_ids[1], exact))]
    reply = send(grid, victim_node, SECAGG_SHARE_KEYS_ACTION, share_keys_cfg(entries))
    assert refused_without_shares(reply), reply
    if names == "real":
        assert "not signed by its roster identity" in reply["reason"]


class RelabellingGrid(LocalGrid):
    """A coordinator that renames participants in every secure-aggregation message it sends."""

    def __init__(self, c: Consortium, names: dict[str, str]) -> None:
        super().__init__(c)
        self.names = names

    def send_and_receive(self, messages, *, timeout=None):  # type: ignore[no-untyped-def]
        out = []
        for m in messages:
            if m.metadata.message_type.startswith("query.secagg") and SECAGG_RECORD in m.content:
                rec = dict(m.content[SECAGG_RECORD])
                if KEY_SITE_IDS in rec:
                    rec[KEY_SITE_IDS] = [self.names.get(str(s), str(s)) for s in rec[KEY_SITE_IDS]]
                m = Message(content=RecordDict({SECAGG_RECORD: ConfigRecord(rec)}),
                            dst_node_id=m.metadata.dst_node_id, message_type=m.metadata.message_type)
            out.append(m)
        return super().send_and_receive(out, timeout=timeout)


def test_relabelled_participants_cannot_difference_a_site(sites4: Consortium, spec_json: dict[str, Any]) -> None:
    """A sum over {A,B,C,D}, then over {B,C,D} renamed {X,Y,Z} (a set that looks unrelated): their
    difference would be A's exact vector."""
    grid = LocalGrid(sites4)
    answers = plain_answers(grid, spec_json)
    first = secure_totals(grid, answers, spec_json, SecureSettings(min_sites=3))
    assert first.released
    names = {sites4.site(i).site_id: f"renamed-{i}" for i in range(1, 4)}
    hostile = RelabellingGrid(sites4, names)
    hostile.contexts = grid.contexts  # the same site nodes (their state and stores)
    second = secure_totals(hostile, answers[1:], spec_json, SecureSettings(min_sites=3))
    assert not second.released and second.patients is None and not second.labels


def test_a_changed_layout_cannot_difference_a_site(sites4: Consortium, spec_json: dict[str, Any]) -> None:
    """A sum over {A,B,C,D}, then over {B,C,D} with one empty distribution block added to the layout
    (before issue 18 the differencing guard hashed the layout text)."""
    grid = LocalGrid(sites4)
    answers = plain_answers(grid, spec_json)
    layout = CountLayout.from_released([a.released for a in answers], AGREED)
    sites = {a.node_id: a for a in answers}
    first = _Protocol(grid, sites, spec_json, layout, SecureSettings(min_sites=3)).run()
    assert first.released
    padded = CountLayout(layout.subsets, (DistributionLayout("qrs_duration", "cohort", "histogram",
                                                             (BinSlot("0-1", 0.0, 1.0),)),))
    rest = {n: a for n, a in sites.items() if a.site_id != sites4.site(0).site_id}
    second = _Protocol(grid, rest, spec_json, padded, SecureSettings(min_sites=3)).run()
    assert not second.released and second.patients is None
    unmasks = [dict(r.content[SECAGG_RECORD]) for r in grid.replies
               if r.metadata.message_type == f"query.{SECAGG_UNMASK_ACTION}"][-3:]
    assert all(r[KEY_STATUS] == STATUS_REFUSED and "same patients were summed before" in r["reason"]
               for r in unmasks)


class RawSum:
    """What a coordinator that changed its own code holds: the unmasked sum before any release rule."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.vectors: list[list[int]] = []
        real = coordinator.decode

        def spy(total, layout):  # type: ignore[no-untyped-def]
            self.vectors.append([int(v) for v in total])
            return real(total, layout)

        monkeypatch.setattr(coordinator, "decode", spy)


def _label_cells(layout: CountLayout) -> dict[str, int]:
    """Vector index of each label cell of the agreed subset, and of its count."""
    base = 2 + (1 + len(LABEL_KEYS)) * layout.subsets.index(AGREED[0])
    return {"count": base, **{k: base + 1 + j for j, k in enumerate(LABEL_KEYS)}}


def test_raw_sum_minus_plain_answers_does_not_give_a_hidden_cell(shared: Consortium, tmp_path: Path,
                                                                  spec_json: dict[str, Any],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Site A hides its labelled positives (and negatives: secondary suppression); B, C and D release
    theirs exactly. The raw sum minus B's, C's and D's released cells was A's exact cell; now every cell
    not every site released exactly carries the sites' noise."""
    c = four_sites(shared, tmp_path / "sites", min_cell_size=1)
    c.set_policy(0, min_cell_size=5, secure_epsilon=0.5)
    pin_secrets(c)
    grid = LocalGrid(c)
    answers = plain_answers(grid, spec_json)
    by_site = {a.site_id: a for a in answers}
    a_id = c.site(0).site_id
    layout = CountLayout.from_released([a.released for a in answers], AGREED)
    cells = _label_cells(layout)
    assert by_site[a_id].released.labels["labelled"]["positive"] is None  # A hides it
    assert not known_cells(by_site[a_id].released, layout)[cells["positive"]]
    others = [a for a in answers if a.site_id != a_id]
    assert all(known_cells(a.released, layout)[cells["positive"]] for a in others)  # B, C, D: known
    raw = RawSum(monkeypatch)
    totals = secure_totals(grid, answers, spec_json, SecureSettings(min_sites=3, subsets=AGREED))
    assert totals.released and len(raw.vectors) == 1
    truth = true_counts(c, spec_json)
    recovered, exact = recover_site_zero(c, truth, layout, raw.vectors[0])
    hidden = [cells["positive"], cells["negative"]]
    assert [recovered[j] for j in hidden] != [exact[j] for j in hidden], "A's exact cells follow from the raw sum"
    # What is released instead: noise on the label cells, public cells exact, the totals numbers.
    assert totals.noise and {f"label/labelled/{k}" for k in LABEL_KEYS} <= set(totals.noise["cells"])
    assert "subset/labelled" not in totals.noise["cells"]
    assert totals.subsets["labelled"] == sum(t.subsets["labelled"].patients for t in truth)
    for k in ("positive", "negative"):
        got, want = totals.labels["labelled"][k], sum(getattr(t.subsets["labelled"], k) for t in truth)
        assert got is None or abs(got - want) <= 8 * totals.noise["sd"] + 1


def recover_site_zero(c: Consortium, truth: list[Any], layout: CountLayout,
                      raw: list[int]) -> tuple[list[int], list[int]]:
    """The raw sum minus the other sites' exact vectors (what a coordinator knowing them computes), and
    site 0's exact vector."""
    vectors = [site_vector(t, layout, c.site(i).disclosure) for i, t in enumerate(truth)]
    total = [v - MOD_RANGE if v >= MOD_RANGE // 2 else v for v in raw]
    recovered = [total[j] - sum(v[j] for v in vectors[1:]) for j in range(layout.size)]
    return recovered, vectors[0]


def test_a_dp_site_never_contributes_exact_counts(shared: Consortium, tmp_path: Path, spec_json: dict[str, Any],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A answers with DP; B, C and D release every cell exactly. The raw sum minus their cells was A's
    exact vector; now A adds its own noise (its dp_epsilon) and spends its budget once."""
    from cohort.release.ledger import PrivacyLedger

    c = four_sites(shared, tmp_path / "sites", min_cell_size=1)
    c.set_policy(0, dp_epsilon=1.0, dp_budget=10.0)
    pin_secrets(c)
    grid = LocalGrid(c)
    answers = plain_answers(grid, spec_json)
    a_id = c.site(0).site_id
    spent = PrivacyLedger(c.site(0).store_path()).spent("default")
    raw = RawSum(monkeypatch)
    totals = secure_totals(grid, answers, spec_json, SecureSettings(min_sites=3, subsets=AGREED))
    assert totals.released, totals.reason
    layout = CountLayout.from_released([a.released for a in answers], AGREED)
    recovered, exact = recover_site_zero(c, true_counts(c, spec_json), layout, raw.vectors[0])
    assert recovered != exact, f"{a_id}'s exact counts follow from the raw sum"
    assert totals.noise and "subset/labelled" in totals.noise["cells"]  # no cell is public with a DP site in the sum
    assert PrivacyLedger(c.site(0).store_path()).spent("default") == spent + 1.0
    again = secure_totals(grid, answers, spec_json, SecureSettings(min_sites=3, subsets=AGREED))
    assert again.labels == totals.labels  # the same noise: nothing to average, nothing more spent
    assert PrivacyLedger(c.site(0).store_path()).spent("default") == spent + 1.0


# ------------------------------------------------------------------------------------------- dropout


@pytest.mark.parametrize("stage", [SECAGG_SETUP_ACTION, SECAGG_SHARE_KEYS_ACTION, SECAGG_COLLECT_ACTION,
                                   SECAGG_UNMASK_ACTION])
def test_dropout_at_every_stage_is_survived_and_reported_once(sites4: Consortium, spec_json: dict[str, Any],
                                                              stage: str) -> None:
    grid = LocalGrid(sites4)
    answers = plain_answers(grid, spec_json)
    grid.drop[f"query.{stage}"] = {grid.node_of(1)}
    totals = secure_totals(grid, answers, spec_json, SecureSettings(min_sites=3, timeout=5))
    assert totals.released, totals.reason
    gone = sites4.site(1).site_id
    places = [gone in totals.contributors, gone in totals.dropped, gone in totals.declined]
    assert places.count(True) == 1, (stage, totals.contributors, totals.dropped, totals.declined)
    if stage == SECAGG_SETUP_ACTION:
        assert gone in totals.declined and len(totals.contributors) == 3
    elif stage == SECAGG_UNMASK_ACTION:  # its counts arrived: it contributed, it just sent no shares
        assert gone in totals.contributors and any(gone in n and "no unmasking shares" in n for n in totals.notes)
    else:
        assert totals.dropped == [gone] and len(totals.contributors) == 3
        assert sum(gone in n for n in totals.notes) == 1
    truth = true_counts(sites4, spec_json)
    covered = [t for i, t in enumerate(truth) if sites4.site(i).site_id in totals.contributors]
    assert totals.subsets["labelled"] == sum(t.subsets["labelled"].patients for t in covered)


def test_collect_and_unmask_cannot_widen_the_participant_list(sites4: Consortium,
                                                              spec_json: dict[str, Any]) -> None:
    """After keys are shared, a message naming other participants, sources or active sites is refused."""
    grid = LocalGrid(sites4)
    answers = plain_answers(grid, spec_json)
    grid.drop[f"query.{SECAGG_COLLECT_ACTION}"] = set(grid.contexts)  # stop after share-keys
    secure_totals(grid, answers, spec_json, SecureSettings(min_sites=3, timeout=5))
    grid.drop.clear()
    node = grid.node_of(0)
    from fl_client.secure_counts import SECAGG_STATE

    state = dict(grid.contexts[node].state.config_records[SECAGG_STATE])
    nodes = [int(v) for v in state["nodes"]]
    reply = send(grid, node, SECAGG_COLLECT_ACTION, {KEY_REQUEST_ID: state["request-id"],
                                                     KEY_NODE_IDS: [*nodes, 999], "sources": [], "ciphertexts": []})
    assert reply[KEY_STATUS] == STATUS_REFUSED and "participant list differs" in reply["reason"]


# ------------------------------------------------------------------- the coordinator's reports show it


def test_reports_show_the_consortium_positives_of_the_agreed_subset(shared: Consortium, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo's situation on the tiny consortium: every site has fewer labelled positives than its
    minimum cell (and hides them), together they have more. report.json, report.html, label_balance.png
    and the run page show the consortium positives as a number with the contributing sites, and the
    agreement's min_positives_total reads it (here set out of reach, so the run stops before training)."""
    import matplotlib.axes

    from fl_server.federation import RunSettings, run_federation
    from fl_server.serve import summarize_run

    c = four_sites(shared, tmp_path / "sites", min_cell_size=4, secure_epsilon=2.0)
    pin_secrets(c)
    truth = true_counts(c, parse_spec(compose_config()["cohort"], catalog=None).to_dict())
    positives = [t.subsets["labelled"].positive for t in truth]
    assert max(positives) < 4 <= sum(positives)
    texts: list[str] = []
    real_annotate = matplotlib.axes.Axes.annotate

    def annotate(self, text, *args, **kwargs):  # type: ignore[no-untyped-def]
        texts.append(str(text))
        return real_annotate(self, text, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "annotate", annotate)
    out = tmp_path / "run"
    settings = RunSettings(overrides="agreement.min_cases=5 agreement.min_positives_total=1000 "
                                     "disclosure.requested_min_cell_size=4", out_dir=str(out), expected_sites=4,
                           wait_s=5)
    run_federation(LocalGrid(c), settings)
    report = json.loads((out / "report.json").read_text())
    totals = report["consortium_totals"]
    assert all(s["counts"]["labels"]["labelled"]["positive"] is None for s in report["sites"])
    assert totals["status"] == "released" and len(totals["contributors"]) == 4
    pos, neg = totals["labels"]["labelled"]["positive"], totals["labels"]["labelled"]["negative"]
    assert isinstance(pos, int) and isinstance(neg, int)
    sd = totals["noise"]["sd"]
    assert abs(pos - sum(positives)) <= 8 * sd + 1
    assert abs(neg - sum(t.subsets["labelled"].negative for t in truth)) <= 8 * sd + 1
    assert totals["subsets"] == {"labelled": sum(t.subsets["labelled"].patients for t in truth)}  # public: exact
    rule = report["agreement"]["consortium_rule"]
    assert f"consortium total of {pos} positives in 'labelled'" in rule and "min_positives_total" in rule
    html = (out / "report.html").read_text()
    assert f"<td>{pos} ±{sd:.1f}</td>" in html and all(s in html for s in totals["contributors"])
    assert (out / "label_balance.png").stat().st_size > 0
    assert f"{pos} ±{sd:.1f}" in texts  # the consortium panel of label_balance.png
    page = summarize_run(report)["secure_totals"]
    assert page["labels"]["positive"] == pos and page["contributors"] == totals["contributors"]
    assert page["noise"]["sd"] == sd
