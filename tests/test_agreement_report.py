"""The coordinator's agreement rule and its reports, from released counts only (no Flower, no data)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cohort.protocol import STATUS_ANSWERED, STATUS_ERROR, STATUS_REFUSED
from cohort.release.consortium import ConsortiumTotals
from cohort.release.disclosure import ReleasedCounts
from fl_server.agreement import Agreement, AgreementRule, SiteAnswer, agree, apply_totals
from fl_server.federation import STATUS_TIMEOUT
from fl_server.report import (
    LABEL_BALANCE_PNG,
    METRICS_PNG,
    REPORT_HTML,
    REPORT_JSON,
    RunReport,
    write_reports,
)


def _released(subsets: dict[str, int | None], labels: dict[str, dict[str, int | None]],
              min_cell: int = 10) -> ReleasedCounts:
    return ReleasedCounts(min_cell_size=min_cell, rounding=1, noise=False,
                          patients=max((v for v in subsets.values() if v is not None), default=None),
                          subsets=subsets, labels=labels)


def _answer(site: str, node: int, cases: int | None, pos: int | None, neg: int | None,
            unk: int | None = None, subset: str = "labelled") -> SiteAnswer:
    rel = _released({"CT": cases, subset: cases}, {subset: {"positive": pos, "negative": neg, "unknown": unk}})
    return SiteAnswer(site, node, STATUS_ANSWERED, rel)


def _by_site(agreement: Agreement) -> dict[str, object]:
    return {d.site_id: d for d in agreement.decisions}


# ------------------------------------------------------------------------------------------ agree()


def test_sites_meeting_the_rule_participate_with_their_released_counts() -> None:
    answers = [_answer("b", 2, 80, 12, 68), _answer("a", 1, 40, 10, 30)]
    out = agree(answers, AgreementRule(subset="labelled", min_cases=20, min_positives=5))
    assert [d.site_id for d in out.decisions] == ["a", "b"]  # sorted, whatever the reply order
    assert [d.site_id for d in out.participants] == ["a", "b"]
    a = _by_site(out)["a"]
    assert (a.cases, a.positives, a.negatives, a.node_id) == (40, 10, 30, 1)
    assert a.reason == "meets the rule"
    js = out.to_json()
    assert js["participating_sites"] == ["a", "b"]
    assert js["released_cases_total"] == 120
    assert js["rule"] == {"subset": "labelled", "min_cases": 20, "min_positives": 5, "min_cases_total": 0,
                          "min_positives_total": 0}


def test_too_few_cases_excludes_the_site_with_the_number_in_the_reason() -> None:
    out = agree([_answer("small", 1, 15, None, 15), _answer("big", 2, 90, 14, 76)],
                AgreementRule("labelled", min_cases=20))
    small = _by_site(out)["small"]
    assert not small.participates
    assert "15 cases" in small.reason and "20" in small.reason
    assert [d.site_id for d in out.participants] == ["big"]


def test_a_suppressed_subset_count_never_meets_a_case_threshold() -> None:
    # Suppressed means "below the site's minimum cell", zero included: never enough cases.
    out = agree([_answer("tiny", 1, None, None, None)], AgreementRule("labelled", min_cases=1))
    d = _by_site(out)["tiny"]
    assert not d.participates and "suppressed" in d.reason
    assert d.cases is None


@pytest.mark.parametrize(("pos", "min_pos", "joins"), [
    (None, 0, True),      # a suppressed positive count meets only a threshold of 0
    (None, 1, False),
    (12, 12, True),
    (11, 12, False),
], ids=["suppressed-no-threshold", "suppressed-threshold-1", "exactly-enough", "one-short"])
def test_min_positives(pos: int | None, min_pos: int, joins: bool) -> None:
    out = agree([_answer("s", 1, 60, pos, 40 if pos is not None else None)],
                AgreementRule("labelled", min_cases=20, min_positives=min_pos))
    d = _by_site(out)["s"]
    assert d.participates is joins
    if not joins:
        assert "positive" in d.reason and str(min_pos) in d.reason
        assert ("suppressed" in d.reason) is (pos is None)


@pytest.mark.parametrize("status", [STATUS_ERROR, STATUS_REFUSED, STATUS_TIMEOUT])
def test_errors_refusals_and_timeouts_are_excluded_with_their_reason(status: str) -> None:
    bad = SiteAnswer("broken", 3, status, None, reason="index missing in /store")
    out = agree([bad, _answer("ok", 1, 50, 10, 40)], AgreementRule("labelled", min_cases=20))
    d = _by_site(out)["broken"]
    assert not d.participates
    assert d.reason.startswith(f"{status}:") and "index missing in /store" in d.reason
    assert d.cases is None
    assert [p.site_id for p in out.participants] == ["ok"]


def test_answered_without_the_agreed_subset_is_excluded() -> None:
    out = agree([_answer("s", 1, 50, 10, 40, subset="CT+ECG")], AgreementRule("labelled", min_cases=20))
    d = _by_site(out)["s"]
    assert not d.participates and "'labelled' missing" in d.reason and "CT+ECG" in d.reason


def test_nobody_qualifies_gives_an_empty_agreement() -> None:
    out = agree([_answer("a", 1, 5, None, None), SiteAnswer("b", 2, STATUS_ERROR, reason="x")],
                AgreementRule("labelled", min_cases=20))
    assert out.participants == []
    assert out.to_json()["released_cases_total"] == 0
    assert len(out.decisions) == 2


# ------------------------------------------------------------------------------------ write_reports()


def _report(rounds: bool = True) -> RunReport:
    answers = [_answer("uk-nord", 1, 60, 12, 48), _answer("klinikum-sued", 2, 14, None, 14),
               SiteAnswer("node-3", 3, STATUS_ERROR, reason="store broken")]
    rule = AgreementRule("labelled", min_cases=20)
    report = RunReport(cohort_name="pacemaker_tavi", spec={"name": "pacemaker_tavi"}, answers=answers,
                       agreement=agree(answers, rule), config={"seed": 0})
    if rounds:
        report.rounds = [
            {"round": 1, "train": {"uk-nord": {"loss": 0.7, "num-examples": 45}},
             "evaluate": {"uk-nord": {"auroc": 0.61, "balanced-accuracy": 0.55, "num-examples": 15}},
             "aggregated": {"auroc": 0.61, "balanced-accuracy": 0.55}, "train_loss": 0.7},
            {"round": 2, "train": {"uk-nord": {"loss": 0.6, "num-examples": 45}},
             "evaluate": {"uk-nord": {"auroc": 0.66, "balanced-accuracy": 0.58, "num-examples": 15}},
             "aggregated": {"auroc": 0.66, "balanced-accuracy": 0.58}, "train_loss": 0.6},
        ]
        report.final_weights = "final_model.npz"
    return report


def test_reports_are_written_and_json_holds_sites_agreement_and_rounds(tmp_path: Path) -> None:
    write_reports(_report(), tmp_path)
    for name in (REPORT_JSON, REPORT_HTML, LABEL_BALANCE_PNG, METRICS_PNG):
        assert (tmp_path / name).stat().st_size > 0, name
    for png in (LABEL_BALANCE_PNG, METRICS_PNG):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((tmp_path / REPORT_JSON).read_text())
    sites = {s["site_id"]: s for s in data["sites"]}
    assert sites["uk-nord"]["counts"]["labels"]["labelled"] == {"positive": 12, "negative": 48, "unknown": None}
    assert sites["klinikum-sued"]["counts"]["subsets"]["labelled"] == 14
    assert sites["node-3"] == {"site_id": "node-3", "status": STATUS_ERROR, "reason": "store broken",
                               "counts": None}
    decisions = {d["site_id"]: d for d in data["agreement"]["sites"]}
    assert decisions["uk-nord"]["participates"] and not decisions["klinikum-sued"]["participates"]
    assert "14 cases" in decisions["klinikum-sued"]["reason"]
    assert data["agreement"]["participating_sites"] == ["uk-nord"]
    assert [r["round"] for r in data["rounds"]] == [1, 2]
    assert data["final_weights"] == "final_model.npz"


def test_before_training_only_the_label_balance_is_plotted(tmp_path: Path) -> None:
    write_reports(_report(rounds=False), tmp_path)
    assert (tmp_path / LABEL_BALANCE_PNG).exists() and (tmp_path / REPORT_HTML).exists()
    assert not (tmp_path / METRICS_PNG).exists()
    assert json.loads((tmp_path / REPORT_JSON).read_text())["rounds"] == []


def test_html_is_self_contained_with_embedded_images(tmp_path: Path) -> None:
    write_reports(_report(), tmp_path)
    page = (tmp_path / REPORT_HTML).read_text(encoding="utf-8")
    assert not re.search(r"https?://", page), "report.html must not load external resources"
    # Every src / href points at inline data, never at a file next to the report or a server.
    refs = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page)
    assert refs and all(r.startswith("data:") for r in refs), refs
    assert "<link" not in page and "<script src" not in page
    images = re.findall(r'<img[^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 2  # label balance + metrics
    import base64

    embedded = {base64.b64decode(i) for i in images}
    assert (tmp_path / LABEL_BALANCE_PNG).read_bytes() in embedded
    assert (tmp_path / METRICS_PNG).read_bytes() in embedded
    # Suppressed cells and exclusion reasons are shown to the coordinator.
    assert "suppressed" in page and "14 cases" in page and "store broken" in page


def test_html_escapes_site_supplied_text(tmp_path: Path) -> None:
    report = _report()
    report.answers.append(SiteAnswer("evil", 9, STATUS_ERROR, reason='<script>alert("x")</script>'))
    report.agreement = agree(report.answers, report.agreement.rule)
    write_reports(report, tmp_path)
    page = (tmp_path / REPORT_HTML).read_text(encoding="utf-8")
    assert "<script>" not in page and "&lt;script&gt;" in page


# ------------------------------------------------------------------- consortium totals (secure sums)


def _totals(pos: int | None, cases: int | None = 120, released: bool = True) -> ConsortiumTotals:
    if not released:
        return ConsortiumTotals("refused", reason="2 sites joined, fewer than min_sites=3")
    return ConsortiumTotals("released", contributors=["a", "b", "c"], min_cell_size=10, min_sites=3,
                            patients=150, subsets={"labelled": cases},
                            labels={"labelled": {"positive": pos, "negative": 90, "unknown": None}})


def _three() -> list[SiteAnswer]:
    return [_answer(s, i, 40, None, 33) for i, s in enumerate("abc", start=1)]


@pytest.mark.parametrize(("totals", "min_pos", "trains", "why"), [
    (_totals(24), 20, True, "meet the rule"),
    (_totals(19), 20, False, "19 positives"),
    (_totals(None), 20, False, "suppressed"),
    (_totals(None, released=False), 20, False, "no consortium totals"),
    (None, 20, False, "secure totals are off"),
    (_totals(None), 0, True, None),  # no consortium rule: the per-site rule decides
], ids=["enough", "one-short", "suppressed", "withheld", "off", "no-rule"])
def test_min_positives_total_reads_the_secure_total(totals: ConsortiumTotals | None, min_pos: int, trains: bool,
                                                    why: str | None) -> None:
    rule = AgreementRule("labelled", min_cases=20, min_positives_total=min_pos)
    out = apply_totals(agree(_three(), rule), totals)
    assert bool(out.participants) is trains
    if why:
        assert why in (out.consortium or "")
    if not trains:  # every site's reason says why nobody trains
        assert all(why in d.reason for d in out.decisions)
    assert out.to_json()["consortium_rule"] == out.consortium


def test_min_cases_total_reads_the_secure_total() -> None:
    rule = AgreementRule("labelled", min_cases=20, min_cases_total=150)
    out = apply_totals(agree(_three(), rule), _totals(24, cases=120))
    assert not out.participants and "120 cases" in (out.consortium or "") and "min_cases_total" in out.consortium


def test_reports_show_consortium_totals_with_the_contributing_sites(tmp_path: Path) -> None:
    report = _report(rounds=False)
    report.totals = _totals(24)
    report.totals.notes.append("d dropped out during the protocol; the total covers the other 3 sites")
    write_reports(report, tmp_path)
    data = json.loads((tmp_path / REPORT_JSON).read_text())
    assert data["consortium_totals"]["labels"]["labelled"]["positive"] == 24
    assert data["consortium_totals"]["contributors"] == ["a", "b", "c"]
    page = (tmp_path / REPORT_HTML).read_text(encoding="utf-8")
    assert "Consortium totals (secure aggregation)" in page and "a, b, c" in page and "dropped out" in page
    assert (tmp_path / LABEL_BALANCE_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report.totals = _totals(None, released=False)
    write_reports(report, tmp_path)
    assert "Not released: 2 sites joined" in (tmp_path / REPORT_HTML).read_text(encoding="utf-8")
