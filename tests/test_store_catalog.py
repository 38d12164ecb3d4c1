"""One field catalog per store: a field a store's own template config defines works at every entry point.

A template config in ``STORE/templates`` adds a text field (the ECG device's name, a TID 1004 item of
every ECG report). ``cohort query``, the dashboard API, a site's answer to a coordinator, the
training export and ``fl-client predict --spec`` all read it; the coordinator knows it from
``federation.template_configs``; and to a coordinator it is free text, refused in comparisons like the
built-in free-text fields.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from cohort.cli import _register, app
from cohort.dashboard.api import Dashboard
from cohort.errors import SpecError
from cohort.index.catalog import STORE_TEMPLATE_DIR, store_catalog
from cohort.ingest.run import ingest_folder
from cohort.protocol import STATUS_ANSWERED, STATUS_REFUSED
from cohort.release.gate import ReleaseGate
from cohort.siteconfig import SiteConfig
from cohort.spec.model import CohortSpec
from cohort.spec.privacy import free_text_fields
from cohort.synth.model import generate_site
from cohort.synth.profiles import PROFILES
from cohort.synth.writers.ecg import prepare_export
from cohort.synth.writers.scpecg import render_scpecg
from fl_client.local import export_dir
from fl_client.predict import PredictReport
from fl_server.config import compose_config
from fl_server.federation import coordinator_spec

FIELD = "ecg_device_name"
TEMPLATE = f"""key: ecg_report
fields:
  {FIELD}:
    path: ["121013 DCM"]
    type: text
    description: name of the ECG device that measured (Device Observer Name)
"""
SPEC = {"name": "devices", "objects": {"ecg": {"kind": "SR", "template": "ecg_report",
                                               "where": [{"field": FIELD, "op": "exists"}]}},
        "cohort": "ecg"}
runner = CliRunner()
_register()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> SiteConfig:
    """A store of three SCP-ECG patients (waveform + report each) with a template config of its own."""
    root = tmp_path_factory.mktemp("catalog")
    profile = PROFILES[3]
    for k, patient in enumerate(p for p in generate_site(5, profile.site_id, 12, profile.mix, profile.pacs_prefix,
                                                         profile.case_prefix) if p.ecg):
        if k == 3:
            break
        export = replace(prepare_export(patient, profile, language="de"), patient_id=f"PACS-{k}")
        (root / "raw").mkdir(exist_ok=True)
        (root / "raw" / f"ecg{k}.scp").write_bytes(render_scpecg(export))
    config = SiteConfig(site_id="catalog-site", store=str(root / "store"), pseudonym_key="k" * 32)
    (root / "store" / STORE_TEMPLATE_DIR).mkdir(parents=True)
    (root / "store" / STORE_TEMPLATE_DIR / "device.yaml").write_text(TEMPLATE)
    report = ingest_folder(root / "raw", root / "store", config)
    assert report.converted == 3, report.quarantine
    return config


def test_the_store_catalog_has_the_field_and_treats_it_as_free_text(site: SiteConfig) -> None:
    catalog = store_catalog(site.store_path())
    assert catalog[FIELD].value_type == "text"
    assert FIELD in free_text_fields(catalog)


def test_cohort_query_reads_the_stores_field(site: SiteConfig) -> None:
    text = f'ecg := SR:ecg_report[{FIELD} contains "custo"]; cohort ecg'
    res = runner.invoke(app, ["query", "--store", str(site.store_path()), "--text", text, "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["patients"] == 3  # every report names the custo med CP300


def test_cohort_fields_lists_the_stores_field(site: SiteConfig) -> None:
    res = runner.invoke(app, ["fields", "--store", str(site.store_path()), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)[FIELD]["type"] == "text"


def test_the_dashboard_api_reads_the_stores_field(site: SiteConfig) -> None:
    dash = Dashboard(site.store_path(), configs_dir=site.store_path() / "specs")
    try:
        start = dash.query({"state": dash.initial_state().model_dump(mode="json")})
        got = dash.query({"state": start["state"], "action": {
            "type": "add", "kind": "SR", "template": "ecg_report",
            "filters": [{"field": FIELD, "op": "contains", "value": "CP300"}]}})
        assert got["counts"]["patients"] == 3
    finally:
        dash.close()


def test_a_site_answers_a_coordinator_query_on_the_stores_field(site: SiteConfig) -> None:
    answer = ReleaseGate(site).answer_counts({"spec": SPEC, "requester": "coordinator"})
    assert answer.status == STATUS_ANSWERED, answer.reason


def test_a_store_template_text_field_is_refused_to_a_coordinator_as_free_text(site: SiteConfig) -> None:
    probe = json.loads(json.dumps(SPEC))
    probe["objects"]["ecg"]["where"] = [{"field": FIELD, "op": "contains", "value": "Mustermann"}]
    answer = ReleaseGate(site).answer_counts({"spec": probe, "requester": "coordinator"})
    assert answer.status == STATUS_REFUSED
    assert f"free-text field {FIELD!r}" in str(answer.reason)
    assert "Mustermann" not in str(answer.reason)


def test_the_training_export_reads_the_stores_field(site: SiteConfig) -> None:
    out = export_dir(site, SPEC, "ECG")
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["patients"]) == 3  # unlabelled (the spec has no label), but all three selected
    assert manifest["spec"]["objects"]["ecg"]["where"][0]["field"] == FIELD


def test_fl_client_predict_checks_its_spec_against_the_stores_catalog(site: SiteConfig, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """``fl-client predict --spec``: the store's own field is accepted and reaches the scoring; an unknown
    field is refused before any model is read, naming its path and the store's field as the suggestion."""
    import fl_client.predict
    from fl_client.cli import app as client_cli

    got: list[CohortSpec] = []

    def scored(store: Path, *, spec: CohortSpec, **_: Any) -> PredictReport:  # no model needed: keeps it fast
        got.append(spec)
        return PredictReport("0" * 64, spec.name, None)

    monkeypatch.setattr(fl_client.predict, "predict_cohort", scored)
    spec_file = tmp_path / "devices.yaml"
    spec_file.write_text(yaml.safe_dump(SPEC))
    args = ["predict", "--store", str(site.store_path()), "--spec", str(spec_file), "--json"]
    res = runner.invoke(client_cli, args)
    assert res.exit_code == 0, res.output
    assert [s.objects["ecg"].where[0].field for s in got] == [FIELD]  # parsed, then handed to predict_cohort

    typo = json.loads(json.dumps(SPEC))
    typo["objects"]["ecg"]["where"][0]["field"] = "ecg_device_nme"
    spec_file.write_text(yaml.safe_dump(typo))
    res = runner.invoke(client_cli, args)
    assert isinstance(res.exception, SpecError), res.output
    msg = str(res.exception)
    assert "objects.ecg.where[0].field" in msg and "unknown field 'ecg_device_nme'" in msg
    assert f"did you mean {FIELD!r}" in msg  # suggested from the store's own template config
    assert len(got) == 1  # refused before predict_cohort


def test_the_coordinator_checks_the_field_against_the_consortiums_template_configs(site: SiteConfig) -> None:
    cfg = compose_config("pacemaker_tavi")
    cfg["cohort"] = SPEC
    with pytest.raises(SpecError, match=FIELD):
        coordinator_spec(cfg)  # not a built-in field, and no shared configs named
    cfg["federation"]["template_configs"] = [str(site.store_path() / STORE_TEMPLATE_DIR)]
    assert coordinator_spec(cfg).objects["ecg"].where[0].field == FIELD
