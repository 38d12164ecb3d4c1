"""The project's exception hierarchy: one base class, subclasses that refine a builtin too."""

from __future__ import annotations


class CohortError(Exception):
    """Base class of every error this project raises on purpose."""


class ConfigError(ValueError, CohortError):
    """A configuration file or setting is missing or invalid; the message says what to set."""


class InputError(ValueError, CohortError):
    """An input file cannot be converted; the message names the file, the field and the fix.

    The ingest pipeline quarantines the input with this message as its reason.
    """

    def __init__(self, message: str, *, path: str | None = None, field: str | None = None) -> None:
        self.path = path
        self.field = field
        parts = []
        if path:
            parts.append(str(path))
        if field:
            parts.append(f"field {field!r}")
        prefix = ": ".join(parts)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class UnknownPatientError(InputError):
    """An input refers to a patient identifier that the site's identifier mapping does not know."""


class MissingReferenceError(InputError):
    """An input annotates an object (e.g. a CT series) that is not in the store."""


class SpecError(ValueError, CohortError):
    """A cohort spec is invalid; the message names the field and suggests valid ones."""


class DisclosureError(PermissionError, CohortError):
    """A query was refused by the site's disclosure policy."""
