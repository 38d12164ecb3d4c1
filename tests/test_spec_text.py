"""The text query syntax: precedence, groups, windows, values, and errors with a caret."""

from __future__ import annotations

import pytest

from cohort.errors import SpecError
from cohort.index.catalog import field_catalog
from cohort.spec import IdentifyingRequestError, TextSpecError, parse_text, spec_to_text
from cohort.spec.model import And, Not, Or, Predicate, Within

MISSION = ("ct := CT[slice_thickness <= 1 mm]; ecg := SR:ecg_report[qrs_duration >= 120 ms, ecg_finding = LBBB] "
           "within 90 days before tavi; tavi := SR:procedures[tavi_date exists]; cohort ct and ecg and tavi; "
           "label tavi.pacemaker_after_tavi positive yes negative no; subset labelled = ct and ecg; "
           "histogram ecg.qrs_duration bins 80,100,120,140,160")
# The spec layer checks fields only against a catalog its caller passes: these tests pass the built-in one.
CATALOG = field_catalog()


def test_brief_example_compiles() -> None:
    spec = parse_text(MISSION, catalog=CATALOG)
    assert spec.objects["ecg"].where == [
        Predicate(field="qrs_duration", op=">=", value=120, unit="ms"),
        Predicate(field="ecg_finding", op="=", value="LBBB")]
    assert spec.objects["ecg"].within == Within(of="tavi", min_days=-90, max_days=0)
    assert spec.cohort == And(all=["ct", "ecg", "tavi"])
    assert spec.label is not None and spec.label.positive == [True] and spec.label.negative == [False]
    assert spec.distributions[0].bins == [80.0, 100.0, 120.0, 140.0, 160.0]


@pytest.mark.parametrize("expr, tree", [
    ("a or b and c", Or(any=["a", And(all=["b", "c"])])),
    ("not a and b", And(all=[Not(not_="a"), "b"])),
    ("(a or b) and c", And(all=[Or(any=["a", "b"]), "c"])),
    ("a and (b and c)", And(all=["a", And(all=["b", "c"])])),
    ("not not a", Not(not_=Not(not_="a"))),
    ("all(a)", And(all=["a"])),
    ("any(a, b or c)", Or(any=["a", Or(any=["b", "c"])])),
], ids=["and-binds-tighter", "not-binds-tightest", "parens", "nested-kept", "double-not", "all-one", "any-fn"])
def test_precedence(expr: str, tree: object) -> None:
    spec = parse_text(f"a := CT; b := CT; c := CT; cohort {expr}", catalog=None, validate=False)
    assert spec.cohort == tree
    assert parse_text(spec_to_text(spec), catalog=None, validate=False).cohort == tree


def test_groups_get_names_and_keep_them() -> None:
    spec = parse_text("s := SEG[{segment_type = LV, algorithm_type = MANUAL}, {segment_type = RV} as right, "
                      "segment_count >= 2]; cohort s", catalog=CATALOG)
    assert [p.group for p in spec.objects["s"].where] == ["g1", "g1", "right", None]
    assert "{segment_type = RV} as right" in spec_to_text(spec)


@pytest.mark.parametrize("window, bounds", [
    ("within 30 days after t", (0, 30)), ("within 7 days of t", (-7, 7)), ("before t", (None, 0)),
    ("after t", (0, None)), ("within -90..-10 days of t", (-90, -10)), ("within ..5 days of t", (None, 5)),
], ids=["after", "of", "before-open", "after-open", "range", "open-range"])
def test_windows(window: str, bounds: tuple[int | None, int | None]) -> None:
    spec = parse_text(f"e := ECG {window}; t := CT; cohort e", catalog=None, validate=False)
    w = spec.objects["e"].within
    assert w is not None and (w.min_days, w.max_days) == bounds


def test_window_fields() -> None:
    spec = parse_text("e := SR:ecg_report within 90 days before t.tavi_date by ecg_datetime; "
                      "t := SR:procedures; cohort e", catalog=CATALOG)
    assert spec.objects["e"].within == Within(of="t", min_days=-90, max_days=0, date_field="tavi_date",
                                              own_date_field="ecg_datetime")


def test_values_keep_their_types() -> None:
    spec = parse_text('x := CT[a = 1, b = 1.0, c = "1", d = yes, e = self-expanding, f in (1, "two", false), '
                      'g contains "Bv \\"36\\"", h >= 2020-01-01, i exists]; cohort x',
                      catalog=None, validate=False)
    values = [p.value for p in spec.objects["x"].where]
    assert values == [1, 1.0, "1", True, "self-expanding", [1, "two", False], 'Bv "36"', "2020-01-01", None]
    assert [type(v) for v in values[:4]] == [int, float, str, bool]


@pytest.mark.parametrize("query, column, words", [
    ("ct := CT[slice_thickness =< 1 mm]; cohort ct", 26, "did you mean '<='"),
    ("ct := Ct; cohort ct", 7, "did you mean 'CT'"),
    ("ct := CT; cohort ct and ecgg", 25, "unknown object 'ecgg'"),
    ("ct := CT; cohort ct; label ct.x positive yes negativ no", 46, "did you mean 'negative'"),
    ("e := SR:ecg_report[qrs_duraton >= 3]; cohort e", 20, "did you mean 'qrs_duration'"),
    ("e := SR:ecg_report[ecg_finding >= 3]; cohort e", 32, "'>=' does not apply to 'ecg_finding'"),
    ("e := SR:ecg_report[qrs_duration >= 0.12 kg]; cohort e", 41, "does not convert"),
    ("e := CT[qrs_duration > 1]; cohort e", 9, "belongs to SR:ecg_report"),
    ("e := SR:ecg_reprt; cohort e", 9, "did you mean 'ecg_report'"),
    ('e := CT[a = "open', 13, "unterminated string"),
    ("e := CT[a contain 1]; cohort e", 11, "did you mean 'contains'"),
    ("e := CT", 8, "missing 'cohort"),
], ids=["op-typo", "kind-case", "object", "keyword", "field", "op-vs-type", "unit", "wrong-kind", "template",
        "string", "word-op", "no-cohort"])
def test_errors_point_at_the_column(query: str, column: int, words: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_text(query, catalog=CATALOG)
    message = str(info.value)
    assert words in message
    assert f"column {column}:" in message
    caret_line = message.splitlines()[-1]
    assert caret_line.index("^") - 2 == column - 1  # two spaces of indent, then the caret


def test_syntax_errors_are_text_spec_errors() -> None:
    with pytest.raises(TextSpecError) as info:
        parse_text("a := CT[x = ]; cohort a", catalog=CATALOG)
    assert (info.value.pos, info.value.column) == (12, 13)


def test_identifying_distribution_is_refused_with_the_list() -> None:
    with pytest.raises(IdentifyingRequestError) as info:
        parse_text("ct := CT; cohort ct; categories ct.patient_name", catalog=CATALOG)
    assert "patient_id" in str(info.value) and "birth_date" in str(info.value)
    assert info.value.path == "distributions[0].field"


def test_formatter_refuses_what_text_cannot_say() -> None:
    from cohort.spec.model import CohortSpec, ObjectCondition
    spec = CohortSpec(objects={"a": ObjectCondition(kind="CT", where=[Predicate(field="x", op="=")])}, cohort="a")
    with pytest.raises(SpecError, match="needs one value"):
        spec_to_text(spec)
