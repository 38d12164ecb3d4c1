"""Disclosure control: thresholds, secondary suppression, rounding, refusals. Tries to break it."""

from __future__ import annotations

import pytest

from cohort.errors import DisclosureError
from cohort.release.disclosure import IDENTIFYING_FIELDS, audit, effective_min_cell, release
from cohort.results import Bin, CohortCounts, Distribution, SubsetCounts
from cohort.siteconfig import DisclosurePolicy


def _counts(**subsets: tuple[int, int, int, int]) -> CohortCounts:
    return CohortCounts(patients=max(v[0] for v in subsets.values()),
                        subsets={k: SubsetCounts(*v) for k, v in subsets.items()})


def test_small_cells_and_zero_are_suppressed_alike():
    counts = _counts(CT=(40, 0, 36, 4), ECG=(9, 1, 8, 0))
    out = release(counts, DisclosurePolicy(min_cell_size=10))
    assert out.subsets == {"CT": 40, "ECG": None}
    # positive 0 and unknown 4 are both below 10: both suppressed, indistinguishable; their sum
    # (40 - 36 = 4) would still tell a small count, so negative is suppressed too.
    assert out.labels["CT"] == {"positive": None, "negative": None, "unknown": None}
    assert out.labels["ECG"] == {"positive": None, "negative": None, "unknown": None}


def test_secondary_suppression_blocks_recovery_by_subtraction():
    counts = _counts(CT=(60, 5, 40, 15))  # only positive is small
    out = release(counts, DisclosurePolicy(min_cell_size=10))
    lab = out.labels["CT"]
    assert lab["positive"] is None
    # With one suppressed cell, 60 - 40 - 15 would reveal 5: a second cell must be suppressed.
    assert sum(v is None for v in lab.values()) >= 2


@pytest.mark.parametrize(("cells", "hidden"), [
    ((70, 7, 63, 0), {"positive", "negative", "unknown"}),  # positive 7 + empty unknown: 7 would show
    ((70, 12, 55, 3), {"positive", "unknown"}),  # 12 + 3 = 15 >= 10: two cells are enough
    ((70, 4, 30, 36), {"positive", "negative"}),  # the next smallest is hidden, reaching 34
], ids=["small-plus-empty", "enough-together", "next-smallest"])
def test_suppressed_cells_never_sum_to_a_small_count(cells: tuple[int, int, int, int], hidden: set[str]) -> None:
    out = release(_counts(S=cells), DisclosurePolicy(min_cell_size=10))
    lab = out.labels["S"]
    assert {k for k, v in lab.items() if v is None} == hidden
    # What the coordinator can compute: released total minus released cells.
    raw = dict(zip(("positive", "negative", "unknown"), cells[1:], strict=True))
    assert out.subsets["S"] - sum(v for v in lab.values() if v is not None) == sum(raw[k] for k in hidden) >= 10


def test_every_released_cell_meets_the_threshold():
    import itertools

    for total, pos, unk in itertools.product([0, 3, 9, 10, 11, 25], [0, 1, 9, 10, 12], [0, 2, 10]):
        neg = max(0, total - pos - unk)
        out = release(_counts(S=(pos + neg + unk, pos, neg, unk)), DisclosurePolicy(min_cell_size=10))
        released = [v for v in [out.patients, *out.subsets.values(), *out.labels["S"].values()] if v is not None]
        assert all(v >= 10 for v in released)


def test_server_cannot_lower_the_minimum_cell_but_can_raise_it():
    policy = DisclosurePolicy(min_cell_size=10)
    assert effective_min_cell(policy, 3)[0] == 10
    assert effective_min_cell(policy, 3)[1] is not None
    assert effective_min_cell(policy, 20) == (20, None)
    out = release(_counts(CT=(12, 0, 12, 0)), policy, requested_min_cell=1)
    assert out.min_cell_size == 10 and out.notes
    assert release(_counts(CT=(12, 0, 12, 0)), policy, requested_min_cell=15).subsets["CT"] is None


def test_rounding_rounds_up_to_a_multiple():
    out = release(_counts(CT=(41, 0, 41, 0)), DisclosurePolicy(min_cell_size=10, rounding=5))
    assert out.subsets["CT"] == 45


def test_noise_comes_from_the_cell_source_and_never_goes_below_the_minimum():
    import numpy as np

    policy = DisclosurePolicy(min_cell_size=10, noise_scale=50.0, rounding=1)
    def source(key):  # one generator per cell, as the gate derives it from the cell's patient set
        return np.random.default_rng(abs(hash(key)) % 2**32)
    a = release(_counts(CT=(50, 10, 40, 0)), policy, noise=source)
    b = release(_counts(CT=(50, 10, 40, 0)), policy, noise=source)
    assert a.subsets == b.subsets and a.labels == b.labels
    assert all(v is None or v >= 10 for v in [a.subsets["CT"], *a.labels["CT"].values()])
    # Without a source every call draws fresh noise (never a fixed seed shared by all questions).
    draws = {release(_counts(CT=(50, 10, 40, 0)), policy).subsets["CT"] for _ in range(8)}
    assert len(draws) > 1


@pytest.mark.parametrize("field", ["patient_id", "PatientID", "birth_date", "patient_name", "sop_uid"])
def test_identifying_fields_refuse_the_whole_query(field: str):
    counts = _counts(CT=(40, 5, 35, 0))
    counts.distributions.append(Distribution(field=field, kind="categories", subset="CT",
                                             bins=[Bin("x", 40)]))
    with pytest.raises(DisclosureError, match="identifying"):
        release(counts, DisclosurePolicy())


def test_identifying_field_in_the_spec_refuses_even_without_distribution():
    with pytest.raises(DisclosureError):
        release(_counts(CT=(40, 5, 35, 0)), DisclosurePolicy(), spec_fields=["qrs_duration", "patient_id"])


def test_histogram_bin_cap_and_allowlist_refuse_per_distribution():
    counts = _counts(CT=(100, 10, 90, 0))
    counts.distributions = [
        Distribution("qrs_duration", "histogram", "CT", [Bin(str(i), 4) for i in range(30)]),
        Distribution("prosthesis_type", "categories", "CT", [Bin("SE", 60), Bin("BE", 40)]),
        Distribution("lvef", "categories", "CT", [Bin("a", 95), Bin("b", 5)]),
    ]
    out = release(counts, DisclosurePolicy(histogram_bin_cap=20, allowed_fields=["qrs_duration", "lvef"]))
    assert out.distributions[0].refused and "20" in out.distributions[0].refused
    assert out.distributions[1].refused and "allowlist" in out.distributions[1].refused
    # lvef: bin "b" (5) suppressed, and "a" too, else 100 - 95 reveals it.
    assert [b["count"] for b in out.distributions[2].bins] == [None, None]


def test_identifying_field_set_covers_the_dicom_identifiers():
    assert {"patient_id", "birth_date", "patient_name"} <= IDENTIFYING_FIELDS


def test_audit_log_appends_one_line_per_query(tmp_path):
    log = tmp_path / "audit.jsonl"
    audit(log, spec_json={"a": 1}, requester="run-1", decision="answered", released={"patients": 10})
    audit(log, spec_json={"a": 1}, requester="run-2", decision="refused", reason="identifying field")
    lines = log.read_text().splitlines()
    assert len(lines) == 2 and '"refused"' in lines[1]


def test_nested_totals_never_differ_by_less_than_the_minimum_cell():
    counts = CohortCounts(patients=15, subsets={"CT": SubsetCounts(14, 0, 14, 0), "ECG": SubsetCounts(15, 0, 15, 0),
                                                "CT+ECG": SubsetCounts(12, 0, 12, 0)})
    out = release(counts, DisclosurePolicy(min_cell_size=10))
    released = [v for v in [out.patients, *out.subsets.values()] if v is not None]
    assert all(not (0 < abs(a - b) < 10) for a in released for b in released)
    # 15 vs 14 and 14 vs 12 are too close: the broader totals go, the refined subset stays.
    assert out.patients is None and out.subsets["ECG"] is None and out.subsets["CT"] is None
    assert out.subsets["CT+ECG"] == 12
    # A suppressed total's label cells must not add up to it.
    assert any(v is None for v in out.labels["CT"].values())


def test_far_apart_nested_totals_are_both_released():
    counts = CohortCounts(patients=40, subsets={"CT": SubsetCounts(25, 5, 20, 0)})
    out = release(counts, DisclosurePolicy(min_cell_size=10))
    assert out.patients == 40 and out.subsets["CT"] == 25


# ------------------------------------------------------------------------- differential privacy


def _dp_counts() -> CohortCounts:
    return CohortCounts(patients=200, subsets={"CT": SubsetCounts(180, 30, 140, 10), "ECG": SubsetCounts(150, 3, 140, 7)},
                        distributions=[Distribution("qrs_duration", "histogram", "cohort", [Bin("60-80", 50)])])


def test_dp_release_adds_discrete_laplace_noise_of_the_stated_scale() -> None:
    import numpy as np

    from cohort.release.disclosure import dp_sensitivity, release_dp

    policy = DisclosurePolicy(min_cell_size=5, dp_epsilon=2.0)
    counts = _dp_counts()
    assert dp_sensitivity(counts) == 5  # cohort + (count + one label cell) per subset
    rng = np.random.default_rng(0)
    draws = [release_dp(counts, policy, noise=lambda key: rng) for _ in range(400)]
    noise = np.array([d.subsets["CT"] - 180 for d in draws])
    assert all(float(v).is_integer() for v in noise)
    # Discrete Laplace with scale b = 5 / 2: mean 0, mean |noise| close to b.
    assert abs(noise.mean()) < 0.6 and 1.8 < np.abs(noise).mean() < 3.2
    assert len(set(noise.tolist())) > 5
    d = draws[0]
    assert d.dp == {"mechanism": "laplace", "epsilon": 2.0, "sensitivity": 5, "scale": 2.5} and d.noise
    assert d.distributions[0].refused and "dp_epsilon" in d.distributions[0].refused and not d.distributions[0].bins


def test_dp_release_still_suppresses_cells_below_the_minimum() -> None:
    import numpy as np

    from cohort.release.disclosure import release_dp

    policy = DisclosurePolicy(min_cell_size=10, dp_epsilon=1.0)
    rng = np.random.default_rng(1)
    for _ in range(50):
        out = release_dp(_dp_counts(), policy, noise=lambda key: rng)
        cells = [out.patients, *out.subsets.values(), *(v for lab in out.labels.values() for v in lab.values())]
        assert all(v is None or v >= 10 for v in cells)


def test_dp_release_needs_an_epsilon_and_refuses_identifying_fields() -> None:
    from cohort.release.disclosure import release_dp

    with pytest.raises(DisclosureError, match="dp_epsilon"):
        release_dp(_dp_counts(), DisclosurePolicy())
    with pytest.raises(DisclosureError, match="identifying"):
        release_dp(_dp_counts(), DisclosurePolicy(dp_epsilon=1.0), spec_fields=["PatientID"])
