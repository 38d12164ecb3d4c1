"""scripts/results_report.py on predictions whose AUROCs are known: table, intervals, targets, figures."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
LABELS = [0, 1, 0, 0, 1, 0, 1, 0, 0, 1]


def _pair(order: str) -> list[list[float]]:
    """Test labels with scores that rank them perfectly ('right'), backwards ('wrong') or not at all ('flat')."""
    probs = {"right": [0.1 + 0.8 * y for y in LABELS], "wrong": [0.9 - 0.8 * y for y in LABELS],
             "flat": [0.5] * len(LABELS)}[order]
    return [list(map(float, LABELS)), probs]


def _doc(orders: dict[str, str]) -> dict[str, Any]:
    sites = ("small-site", "big-site")
    info = {"labelled": 40, "positive": 16, "train": 22, "val": 8, "test": len(LABELS), "test_pos": sum(LABELS)}
    return {
        "preset": "small", "minutes": 1.0, "command": "python scripts/results.py --preset small", "ct_max_mm": 1.5,
        "config": {"patients": [40, 400], "seeds": [0, 1], "data_seeds": [0], "rounds": 6, "epochs": 1},
        "other_strategy": {"name": "fedyogi", "overrides": "federation.strategy=fedyogi",
                           "validation_auroc": {"fedprox": 0.7, "fedyogi": 0.8}, "data_seed": 0, "seed": 0},
        "data": {"0": {"sites": {s: info for s in sites}, "truth": {s: _pair("right") for s in sites},
                       "runs": {str(seed): {"predictions": {a: {s: _pair(o) for s in sites} for a, o in orders.items()}}
                                for seed in (0, 1)}}},
    }


@pytest.fixture(scope="module")
def report():  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import results_report
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    return results_report


def test_known_aurocs_give_the_table_the_intervals_and_the_target_verdicts(report, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    doc = _doc({"local": "wrong", "fedavg": "right", "other": "flat", "pooled": "right"})
    rows = report.table(doc)
    assert rows["fedavg"]["small-site"].estimate == pytest.approx(1.0)
    assert rows["local"]["big-site"].estimate == pytest.approx(0.0)
    assert rows["other"][report.ALL_COL].estimate == pytest.approx(0.5)
    # A perfect ranking stays perfect in every bootstrap replicate that holds both classes.
    assert (rows["pooled"][report.MEAN_COL].low, rows["pooled"][report.MEAN_COL].high) == pytest.approx((1.0, 1.0))
    assert rows["ceiling"]["brier"].estimate == pytest.approx(0.01)  # (0.1 - y)^2 for every patient

    json_dir, md, img = tmp_path / "json", tmp_path / "results.md", tmp_path / "img"
    json_dir.mkdir()
    (json_dir / "small.json").write_text(json.dumps(doc), encoding="utf-8")
    report.render(json_dir, md, img)
    text = md.read_text(encoding="utf-8")
    assert "6 rounds x 1 local epochs (6 epochs for every approach" in text
    assert "- pooled within 0.05 of the ceiling: 1.000 vs 1.000: met." in text
    assert "- FedAvg >= pooled - 0.02: 1.000 vs 1.000: met." in text
    # right - wrong = 1 - 0 on every resampled draw: the paired interval is the point.
    assert ("- FedAvg >= local-only + 0.05 with the paired interval above 0: all sites 1.000 [1.000, 1.000]: met; "
            "small-site 1.000 [1.000, 1.000]: met; big-site 1.000 [1.000, 1.000]: met.") in text
    assert "| other strategy: fedyogi - pooled | mean of sites | -0.500 [-0.500, -0.500] |" in text
    assert "| FedAvg + site intercept |" not in text  # results written before the intercept: no such row
    assert ("chosen by federated validation AUROC (data seed 0, test fold 0, training seed 0) among: fedprox 0.700, "
            "fedyogi 0.800") in text
    for png in ("results-small.png", "calibration-small.png"):
        assert (img / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_intercept_rows_are_compared_only_with_intercept_rows(report, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    doc = _doc({"local": "wrong", "fedavg": "flat", "other": "flat", "pooled": "right", "local+b": "wrong",
                "fedavg+b": "right", "other+b": "flat", "pooled+b": "right", "prevalence": "flat"})
    rows = report.table(doc)
    assert rows["fedavg+b"][report.ALL_COL].estimate == pytest.approx(1.0)
    json_dir, md = tmp_path / "json", tmp_path / "results.md"
    json_dir.mkdir()
    (json_dir / "small.json").write_text(json.dumps(doc), encoding="utf-8")
    report.render(json_dir, md, tmp_path / "img")
    text = md.read_text(encoding="utf-8")
    assert "| FedAvg + site intercept | 1.000" in text
    assert "| FedAvg + site intercept - pooled + site intercept | all (pooled scores) | 0.000 [0.000, 0.000] |" in text
    assert "| FedAvg + site intercept - local-only + site intercept | all (pooled scores) | 1.000" in text
    assert "| pooled + site intercept - prevalence only (site's training rate) | all (pooled scores) |" in text
    diff_rows = [ln for ln in text.splitlines() if ln.startswith("| ") and " - " in ln.split("|")[1]]
    assert diff_rows
    for line in diff_rows:  # every stated difference: both sides with the intercept or neither
        a, b = line.split("|")[1].split(" - ")
        if "prevalence" not in b:
            assert ("site intercept" in a) == ("site intercept" in b), line
    # The rule itself: a comparison of unlike rows is refused, not rendered.
    for a, b in (("fedavg+b", "pooled"), ("fedavg", "pooled+b"), ("linear-fedavg", "pooled"), ("fedavg", "prevalence")):
        with pytest.raises(ValueError):
            report.paired_difference(doc, a, b, ["small-site"])
    for a, b, _ in report.COMPARISONS:
        report.like_for_like(a, b)
