"""YAML specs: Hydra composition, the shipped configs, errors with paths and suggestions, privacy."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cohort.errors import SpecError
from cohort.index.catalog import field_catalog
from cohort.spec import (
    IDENTIFYING_FIELDS,
    IdentifyingRequestError,
    load_spec,
    parse_spec,
    parse_text,
    privacy_violations,
    spec_to_text,
    spec_to_yaml,
    validate_spec,
)
from cohort.spec.model import Or

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "cohort"
# The spec layer checks fields only against a catalog its caller passes: these tests pass the built-in one.
CATALOG = field_catalog()


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_specs_load_validate_and_round_trip(path: Path) -> None:
    spec = load_spec(path, catalog=CATALOG)
    assert parse_text(spec_to_text(spec), catalog=CATALOG) == spec
    assert parse_spec(yaml.safe_load(spec_to_yaml(spec)), catalog=CATALOG) == spec


def test_mission_spec_composes_shared_objects() -> None:
    spec = load_spec(CONFIGS / "pacemaker_tavi.yaml", catalog=CATALOG)
    ct, ecg = spec.objects["ct"], spec.objects["ecg"]
    assert (ct.kind, ct.where[0].field, ct.where[0].unit) == ("CT", "slice_thickness", "mm")  # from objects/
    assert ct.within is not None and ct.within.max_days == 0  # added by the spec itself
    assert ecg.within is not None and (ecg.within.min_days, ecg.within.own_date_field) == (-90, "ecg_datetime")
    assert spec.label is not None and spec.label.field == "pacemaker_after_tavi"
    assert {"CT", "ECG", "CT+ECG", "labelled"} <= set(spec.subsets)


def test_hydra_overrides_reach_nested_values() -> None:
    spec = load_spec(CONFIGS / "pacemaker_tavi.yaml", catalog=CATALOG,
                     overrides=["objects.ecg.within.min_days=-30", "objects.ct.where.0.value=1.5"])
    assert spec.objects["ecg"].within.min_days == -30  # type: ignore[union-attr]
    assert spec.objects["ct"].where[0].value == 1.5


def test_spec_outside_the_tree_uses_project_objects(tmp_path: Path) -> None:
    f = tmp_path / "mine.yaml"
    f.write_text("defaults:\n  - objects@objects.e: ecg_report\n  - _self_\ncohort: {any: [e]}\n")
    assert load_spec(f, catalog=CATALOG).cohort == Or(any=["e"])


def _spec(**changes: object) -> dict:
    base: dict = {"objects": {"ecg": {"kind": "SR", "template": "ecg_report",
                                      "where": [{"field": "qrs_duration", "op": ">=", "value": 120, "unit": "ms"},
                                                {"field": "ecg_finding", "op": "=", "value": "LBBB"}]}},
                  "cohort": "ecg"}
    base.update(changes)
    return base


@pytest.mark.parametrize("mutate, path, words", [
    (lambda s: s["objects"]["ecg"]["where"][1].update(op="=>"), "objects.ecg.where[1].op", "did you mean '>='"),
    (lambda s: s["objects"]["ecg"].update(kind="Sr"), "objects.ecg.kind", "did you mean 'SR'"),
    (lambda s: s["objects"]["ecg"].update(wher=[]), "objects.ecg.wher", "did you mean 'where'"),
    (lambda s: s.update(cohort={"al": ["ecg"]}), "cohort.al", "did you mean 'all'"),
    (lambda s: s.update(cohort={"all": ["ecg", "ekg"]}), "cohort.all[1]", "did you mean 'ecg'"),
    (lambda s: s.update(label={"object": "ecg", "field": "ecg_finding", "positive": [True], "negative": []}),
     "label.positive[0]", "YAML reads bare yes/no"),
    (lambda s: s["objects"]["ecg"].update(within={"of": "tavi"}), "objects.ecg.within.of", "unknown object"),
    (lambda s: s.update(distributions=[{"object": "ecg", "field": "qrs_duration"}]), "distributions[0].bins",
     "give bin edges"),
    (lambda s: s.update(distributions=[{"object": "ecg", "field": "qrs_duration", "bins": [1, 1]}]),
     "distributions[0].bins", "increase strictly"),
    (lambda s: s.update(subsets={"x": "ecg"}, distributions=[
        {"object": "ecg", "field": "ecg_finding", "subset": "ECGG"}]), "distributions[0].subset", "did you mean 'ECG'"),
    (lambda s: s["objects"]["ecg"].pop("template"), "objects.ecg.template", "needs a template"),
    (lambda s: s["objects"]["ecg"]["where"][0].update(op="in"), "objects.ecg.where[0].value", "list"),
], ids=["op", "kind", "key", "expr-key", "expr-name", "yaml-bool", "within", "numeric-categories", "bins",
        "subset", "sr-template", "in-scalar"])
def test_errors_name_the_path_and_suggest(mutate, path: str, words: str) -> None:  # type: ignore[no-untyped-def]
    data = _spec()
    mutate(data)
    with pytest.raises(SpecError) as info:
        parse_spec(data, catalog=CATALOG)
    assert getattr(info.value, "path", None) == path
    assert words in str(info.value)


def test_identifying_requests_are_expressible_then_refused() -> None:
    data = _spec(distributions=[{"object": "ecg", "field": "patient_id"}])
    data["objects"]["ecg"]["where"].append({"field": "patient_name", "op": "contains", "value": "Müller"})
    raw = parse_spec(data, catalog=None, validate=False)  # a site can read it ...
    assert [v.path for v in privacy_violations(raw)] == ["objects.ecg.where[2].field", "distributions[0].field"]
    with pytest.raises(IdentifyingRequestError) as info:  # ... and validation refuses it
        parse_spec(data, catalog=CATALOG)
    assert all(f in str(info.value) for f in ("patient_id", "patient_name", "birth_date"))
    assert {"patient_id", "patient_name", "birth_date", "sop_uid"} <= IDENTIFYING_FIELDS


def test_units_are_checked_against_the_field() -> None:
    data = _spec()
    data["objects"]["ecg"]["where"][0]["unit"] = "mm"
    with pytest.raises(SpecError, match="does not convert"):
        parse_spec(data, catalog=CATALOG)
    data["objects"]["ecg"]["where"][0].update(unit="s", value=0.12)
    assert parse_spec(data, catalog=CATALOG).objects["ecg"].where[0].unit == "s"


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "nope.yaml", catalog=None)
    bad = tmp_path / "bad.yaml"
    bad.write_text("objects: [\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(bad, catalog=None)


@pytest.mark.parametrize("mutate, path, words", [
    (lambda s: s["objects"]["ecg"]["where"][0].update(field="qrs_duraton"), "objects.ecg.where[0].field",
     "did you mean 'qrs_duration'"),
    (lambda s: s["objects"]["ecg"]["where"][0].update(unit="mm"), "objects.ecg.where[0].unit", "does not convert"),
    (lambda s: s["objects"]["ecg"]["where"][1].update(op=">="), "objects.ecg.where[1].op", "does not apply"),
    (lambda s: s["objects"]["ecg"].update(template="ecg_reprt"), "objects.ecg.template", "did you mean 'ecg_report'"),
    (lambda s: s["objects"].update(ct={"kind": "CT", "where": [{"field": "qrs_duration", "op": "exists"}]}),
     "objects.ct.where[0].field", "belongs to SR:ecg_report"),
], ids=["unknown-field", "unit", "op-vs-type", "template", "wrong-kind"])
def test_without_a_catalog_fields_are_not_checked(mutate, path: str, words: str) -> None:  # type: ignore[no-untyped-def]
    """catalog=None checks the structure only: what needs the catalog is refused only when one is passed."""
    data = _spec()
    mutate(data)
    spec = parse_spec(data, catalog=None)  # no catalog: no field is looked up
    assert validate_spec(spec, None) is spec
    with pytest.raises(SpecError) as info:
        parse_spec(data, catalog=CATALOG)
    assert getattr(info.value, "path", None) == path and words in str(info.value)
    with pytest.raises(SpecError):
        validate_spec(spec, CATALOG)


@pytest.mark.parametrize("mutate, path", [
    (lambda s: s.update(cohort={"all": ["ecg", "ekg"]}), "cohort.all[1]"),
    (lambda s: s["objects"]["ecg"].update(within={"of": "tavi"}), "objects.ecg.within.of"),
    (lambda s: s["objects"]["ecg"].pop("template"), "objects.ecg.template"),
    (lambda s: s.update(distributions=[{"object": "ecg", "field": "qrs_duration", "bins": [1, 1]}]),
     "distributions[0].bins"),
    (lambda s: s["objects"]["ecg"]["where"].append({"field": "patient_name", "op": "contains", "value": "X"}),
     "objects.ecg.where[2].field"),
], ids=["object", "within", "sr-template", "bins", "identifying"])
def test_without_a_catalog_the_structure_is_still_checked(mutate, path: str) -> None:  # type: ignore[no-untyped-def]
    data = _spec()
    mutate(data)
    with pytest.raises(SpecError) as info:
        parse_spec(data, catalog=None)
    assert getattr(info.value, "path", None) == path


def test_validate_spec_takes_its_catalog_explicitly() -> None:
    """No default and no fallback to the index's catalog (issue 22: one catalog per store, passed explicitly)."""
    params = inspect.signature(validate_spec).parameters
    assert list(params) == ["spec", "catalog"]
    assert params["catalog"].default is inspect.Parameter.empty


@pytest.mark.parametrize("name", ["parse_spec", "load_spec", "parse_text", "state_to_spec"])
def test_entry_points_take_their_catalog_explicitly(name: str) -> None:
    """As validate_spec: no default, so a caller that leaves the catalog out fails instead of silently
    skipping the field checks; catalog=None (structure only) has to be written out at the call site."""
    from cohort.dashboard.state import state_to_spec

    fn = {"parse_spec": parse_spec, "load_spec": load_spec, "parse_text": parse_text,
          "state_to_spec": state_to_spec}[name]
    params = inspect.signature(fn).parameters
    assert params["catalog"].default is inspect.Parameter.empty
    assert params["catalog"].kind is inspect.Parameter.KEYWORD_ONLY  # as every caller passes it
    positional = [p for p in params.values() if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    with pytest.raises(TypeError, match="required keyword-only argument: 'catalog'"):
        fn(*[None] * len(positional))


def test_the_spec_layer_never_imports_the_index() -> None:
    """Parsing and validating without a catalog (text, YAML, dict) loads no module of cohort.index."""
    code = f"""
import sys
from cohort.spec import load_spec, parse_spec, parse_text, validate_spec
spec = load_spec({str(CONFIGS / "pacemaker_tavi.yaml")!r}, catalog=None)
assert validate_spec(spec, None) is spec
assert parse_spec(spec.to_dict(), catalog=None) == spec
# an unknown field: not looked up
text = parse_text("e := SR:ecg_report[qrs_duraton >= 3]; cohort e", catalog=None)
assert text.objects["e"].where[0].field == "qrs_duraton"
loaded = sorted(m for m in sys.modules if m == "cohort.index" or m.startswith("cohort.index."))
assert loaded == [], loaded
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=CONFIGS.parents[1])
    assert res.returncode == 0, res.stderr
