"""`cohort query`, `cohort fields` and `cohort export` on the command line."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from cohort.cli import _register, app
from cohort.index.catalog import store_catalog
from cohort.index.compile_duck import evaluate
from cohort.index.duck import DuckIndex
from cohort.spec.load import load_spec

MISSION = Path(__file__).resolve().parent.parent / "configs" / "cohort" / "pacemaker_tavi.yaml"
runner = CliRunner()
_register()


def test_query_json_equals_the_engine(ingested_sites):
    store = ingested_sites[0].store
    res = runner.invoke(app, ["query", "--store", str(store), "--spec", str(MISSION), "--json"])
    assert res.exit_code == 0, res.output
    with DuckIndex.for_store(store, read_only=True) as index:
        expected = evaluate(index, load_spec(MISSION, catalog=store_catalog(store))).to_json()
    assert json.loads(res.output) == expected
    assert {"patients", "subsets", "labels", "distributions"} <= set(expected)


def test_query_text_and_yaml_forms_agree(ingested_sites, tmp_path):
    import yaml

    store = ingested_sites[0].store
    text = "ecg := SR:ecg_report[qrs_duration >= 90 ms]; ct := CT; cohort ecg or ct"
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump({
        "objects": {"ecg": {"kind": "SR", "template": "ecg_report",
                            "where": [{"field": "qrs_duration", "op": ">=", "value": 90, "unit": "ms"}]},
                    "ct": {"kind": "CT"}},
        "cohort": {"any": ["ecg", "ct"]}}))
    by_text = runner.invoke(app, ["query", "--store", str(store), "--text", text, "--json"])
    by_yaml = runner.invoke(app, ["query", "--store", str(store), "--spec", str(spec_file), "--json"])
    assert by_text.exit_code == 0 and by_yaml.exit_code == 0, by_text.output + by_yaml.output
    assert json.loads(by_text.output) == json.loads(by_yaml.output)
    assert json.loads(by_text.output)["patients"] > 0  # the store has CTs: an empty answer would be wrong


def test_invalid_text_query_names_the_problem(ingested_sites):
    res = runner.invoke(app, ["query", "--store", str(ingested_sites[0].store), "--text",
                              "ecg := SR:ecg_report[qrs_durtion >= 120 ms]; cohort ecg"])
    assert res.exit_code != 0
    assert "qrs_duration" in str(res.exception) + res.output  # the did-you-mean suggestion


def test_unknown_field_in_a_spec_file_is_refused_by_the_stores_catalog(ingested_sites, tmp_path):
    """``cohort query --spec`` checks the fields against the store's catalog, passed explicitly (issue 22)."""
    import yaml

    spec_file = tmp_path / "typo.yaml"
    spec_file.write_text(yaml.safe_dump({
        "objects": {"ecg": {"kind": "SR", "template": "ecg_report",
                            "where": [{"field": "qrs_durtion", "op": ">=", "value": 120, "unit": "ms"}]}},
        "cohort": "ecg"}))
    res = runner.invoke(app, ["query", "--store", str(ingested_sites[0].store), "--spec", str(spec_file)])
    assert res.exit_code != 0
    message = str(res.exception) + res.output
    assert "unknown field 'qrs_durtion'" in message and "did you mean 'qrs_duration'" in message


def test_fields_lists_catalog_and_unindexed_content(ingested_sites):
    res = runner.invoke(app, ["fields", "--json"])
    assert res.exit_code == 0
    catalog = json.loads(res.output)
    assert catalog["qrs_duration"]["unit"] == "ms"
    res = runner.invoke(app, ["fields", "--store", str(ingested_sites[0].store), "--unindexed", "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)
    assert all({"concept_path", "count"} <= set(r) for r in rows)


def test_export_command_writes_datalist(ingested_sites, tmp_path):
    res = runner.invoke(app, ["export", "--store", str(ingested_sites[1].store), "--spec", str(MISSION),
                              "--out", str(tmp_path / "x")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "x" / "datalist.json").exists() and (tmp_path / "x" / "manifest.json").exists()


def test_identifying_field_in_a_text_query_is_refused_as_identifying(tmp_path):
    # The spec is checked before the store is opened: no index is needed to refuse it.
    res = runner.invoke(app, ["query", "--store", str(tmp_path / "store"), "--text",
                              'p := CT[PatientID = "X"]; cohort p'])
    assert res.exit_code != 0
    message = str(res.exception)
    assert "'PatientID' is an identifying field" in message and "cannot be filtered on" in message
    assert "unknown field" not in message
