"""The declarative cohort spec: typed model, YAML and text forms, validation against indexed fields."""

from cohort.spec.errors import SpecPathError
from cohort.spec.lexer import TextSpecError
from cohort.spec.load import load_spec, parse_spec, spec_to_yaml
from cohort.spec.model import (
    And,
    CohortSpec,
    DistributionRequest,
    Label,
    Not,
    ObjectCondition,
    Or,
    Predicate,
    Within,
)
from cohort.spec.privacy import IDENTIFYING_FIELDS, IdentifyingRequestError, check_privacy, privacy_violations
from cohort.spec.render import spec_to_text
from cohort.spec.text import parse_text
from cohort.spec.validate import validate_spec

__all__ = [
    "IDENTIFYING_FIELDS", "And", "CohortSpec", "DistributionRequest", "IdentifyingRequestError", "Label", "Not",
    "ObjectCondition", "Or", "Predicate", "SpecPathError", "TextSpecError", "Within", "check_privacy",
    "load_spec", "parse_spec", "parse_text", "privacy_violations", "spec_to_text", "spec_to_yaml",
    "validate_spec",
]
