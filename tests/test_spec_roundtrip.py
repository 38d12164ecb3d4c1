"""Round trips: spec -> text -> spec and spec -> YAML -> spec give the same spec."""

from __future__ import annotations

import yaml
from hypothesis import HealthCheck, given, settings

from cohort.index.catalog import field_catalog
from cohort.spec import parse_spec, parse_text, spec_to_text, spec_to_yaml
from cohort.spec.model import CohortSpec
from tests.oracle_strategies import random_spec_strategy, spec_shapes

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(spec_shapes())
def test_text_round_trip_of_any_shape(spec: CohortSpec) -> None:
    text = spec_to_text(spec)
    assert parse_text(text, catalog=None, validate=False) == spec, text


@FAST
@given(spec_shapes())
def test_one_line_text_round_trip(spec: CohortSpec) -> None:
    assert parse_text(spec_to_text(spec, separator="; "), catalog=None, validate=False) == spec


@FAST
@given(spec_shapes())
def test_yaml_round_trip_of_any_shape(spec: CohortSpec) -> None:
    assert parse_spec(yaml.safe_load(spec_to_yaml(spec)), catalog=None, validate=False) == spec


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_spec_strategy(field_catalog()))
def test_valid_random_specs_survive_both_forms_and_validation(spec: CohortSpec) -> None:
    assert parse_text(spec_to_text(spec), catalog=field_catalog()) == spec
    assert parse_spec(yaml.safe_load(spec_to_yaml(spec)), catalog=field_catalog()) == spec
