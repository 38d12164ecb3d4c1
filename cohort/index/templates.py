"""Template extraction configs: which SR content items become which indexed fields.

One YAML file per SR template lives in ``cohort/templates/``; a site adds fields or whole templates
by dropping YAML files into ``STORE/templates/`` (or a folder named in ``COHORT_TEMPLATE_DIRS``)
and running ``cohort reindex``. The format is documented in ``docs/templates.md``.

A concept path is the list of concept names from the document root (excluded) down to the content
item (included), each written ``"CODE SCHEME"``. In a config path, ``*`` matches one concept and
``**`` any number (zero included) of concepts.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Literal, get_args

import yaml

from cohort.errors import ConfigError
from cohort.spec import units

ValueType = Literal["numeric", "coded", "text", "date", "boolean", "geometric"]
VALUE_TYPES: tuple[str, ...] = get_args(ValueType)
PACKAGE_TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "templates"
TEMPLATE_DIRS_ENV = "COHORT_TEMPLATE_DIRS"

# SR value types each field value type reads; anything else under a matching path is ignored.
SR_VALUE_TYPES: dict[str, frozenset[str]] = {
    "numeric": frozenset({"NUM"}),
    "coded": frozenset({"CODE"}),
    "text": frozenset({"TEXT"}),
    "date": frozenset({"DATE", "DATETIME"}),
    "boolean": frozenset({"CODE", "NUM", "TEXT"}),
    "geometric": frozenset({"SCOORD", "SCOORD3D"}),
}


def code_key(value: str, scheme: str) -> str:
    """The ``"CODE SCHEME"`` form used in concept paths and configs."""
    return f"{value} {scheme}"


@dataclass(frozen=True)
class TemplateField:
    """One indexed field of a template: where it sits in the tree and how to read its value."""

    name: str
    path: tuple[str, ...]
    value_type: ValueType
    unit: str | None = None
    description: str = ""
    values: dict[str, str] = field(default_factory=dict)  # alias -> "CODE SCHEME" for coded fields
    # Concept ("CODE SCHEME") of the ancestor-or-self item that forms this field's predicate group;
    # None: the nearest enclosing CONTAINER.
    group: str | None = None

    def matches(self, concept_path: Sequence[str]) -> bool:
        """True when ``concept_path`` fits this field's path pattern."""
        return _match(self.path, tuple(concept_path))


@dataclass(frozen=True, eq=False)  # identity equality: hashable, for the per-path cache
class TemplateConfig:
    """An SR template: its key (used in specs), the document titles that identify it, its fields."""

    key: str
    title: str
    document_titles: tuple[str, ...]
    fields: dict[str, TemplateField]
    sources: tuple[str, ...] = ()  # config files it was read from
    # "CODE SCHEME" concepts of which one must name some content item of the SR, for templates that
    # share a document title with another one (e.g. TID 1500 landmarks vs derived measurements).
    content_concepts: tuple[str, ...] = ()

    def fields_for_path(self, concept_path: tuple[str, ...]) -> list[TemplateField]:
        """Fields whose path pattern matches ``concept_path`` (cached per template and path)."""
        return list(_fields_for_path(self, concept_path))


@lru_cache(maxsize=65536)
def _fields_for_path(template: TemplateConfig, concept_path: tuple[str, ...]) -> tuple[TemplateField, ...]:
    return tuple(f for f in template.fields.values() if f.matches(concept_path))


def _match(pattern: tuple[str, ...], path: tuple[str, ...]) -> bool:
    if not pattern:
        return not path
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return any(_match(rest, path[i:]) for i in range(len(path) + 1))
    if not path:
        return False
    return (head == "*" or head == path[0]) and _match(rest, path[1:])


def template_dirs(extra: Iterable[str | Path] = ()) -> list[Path]:
    """The package's config folder, then folders from ``COHORT_TEMPLATE_DIRS``, then ``extra``."""
    dirs = [PACKAGE_TEMPLATE_DIR]
    env = os.environ.get(TEMPLATE_DIRS_ENV, "")
    dirs += [Path(p) for p in env.split(os.pathsep) if p]
    dirs += [Path(p) for p in extra]
    out: list[Path] = []
    for d in dirs:
        if d.resolve() not in [o.resolve() for o in out]:
            out.append(d)
    return out


def load_templates(extra_dirs: Iterable[str | Path] = ()) -> dict[str, TemplateConfig]:
    """All template configs, keyed by template key; files with the same key add fields to it."""
    dirs = tuple(str(d) for d in template_dirs(extra_dirs))
    return dict(_load_cached(dirs, _mtimes(dirs)))


def _mtimes(dirs: tuple[str, ...]) -> tuple[tuple[str, float], ...]:
    # Part of the cache key, so editing a config is seen without restarting the process.
    out = []
    for d in dirs:
        for p in sorted(Path(d).glob("*.yaml")) if Path(d).is_dir() else []:
            out.append((str(p), p.stat().st_mtime))
    return tuple(out)


@lru_cache(maxsize=16)
def _load_cached(dirs: tuple[str, ...], mtimes: tuple[tuple[str, float], ...]) -> dict[str, TemplateConfig]:
    merged: dict[str, dict] = {}
    for path_str, _ in mtimes:
        path = Path(path_str)
        raw = _read_yaml(path)
        key = raw["key"]
        entry = merged.setdefault(key, {"title": "", "titles": [], "fields": {}, "sources": [], "concepts": []})
        entry["title"] = entry["title"] or str(raw.get("title", key))
        entry["titles"] += [t for t in _titles(raw, path) if t not in entry["titles"]]
        entry["concepts"] += [c for c in _titles(raw, path, "content_concepts") if c not in entry["concepts"]]
        entry["sources"].append(str(path))
        for name, fdef in (raw.get("fields") or {}).items():
            if name in entry["fields"]:
                raise ConfigError(
                    f"{path}: field {name!r} of template {key!r} is already defined in "
                    f"{entry['sources'][0]}; give the new field another name"
                )
            entry["fields"][name] = _field(name, fdef, path)
    templates = {
        key: TemplateConfig(key, e["title"], tuple(e["titles"]), e["fields"], tuple(e["sources"]),
                            tuple(e["concepts"]))
        for key, e in merged.items()
    }
    _check_titles_unique(templates)
    return templates


def _read_yaml(path: Path) -> dict:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("key"), str):
        raise ConfigError(f"{path}: a template config needs a top-level mapping with 'key: <template key>'")
    unknown = set(raw) - {"key", "title", "document_titles", "content_concepts", "fields", "description"}
    if unknown:
        raise ConfigError(f"{path}: unknown top-level setting(s) {sorted(unknown)}; "
                          "valid: key, title, description, document_titles, content_concepts, fields")
    return raw


def _titles(raw: dict, path: Path, setting: str = "document_titles") -> list[str]:
    titles = raw.get(setting) or []
    if not isinstance(titles, list) or not all(isinstance(t, str) and len(t.split()) == 2 for t in titles):
        raise ConfigError(f"{path}: {setting} must be a list of 'CODE SCHEME' strings, "
                          "e.g. ['11524-6 LN']")
    return list(titles)


def _field(name: str, fdef: object, path: Path) -> TemplateField:
    where = f"{path}: field {name!r}"
    if not isinstance(fdef, dict):
        raise ConfigError(f"{where}: expected a mapping with path, type, unit, description")
    unknown = set(fdef) - {"path", "type", "unit", "description", "values", "group"}
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {sorted(unknown)}; valid: path, type, unit, "
                          "description, values, group")
    vtype = fdef.get("type")
    if vtype not in VALUE_TYPES:
        close = difflib.get_close_matches(str(vtype), VALUE_TYPES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{where}: type {vtype!r} is not one of {', '.join(VALUE_TYPES)}{hint}")
    cpath = fdef.get("path")
    if not isinstance(cpath, list) or not cpath or not all(isinstance(p, str) for p in cpath):
        raise ConfigError(f"{where}: path must be a non-empty list of 'CODE SCHEME', '*' or '**'")
    for step in cpath:
        if step not in ("*", "**") and len(step.split()) != 2:
            raise ConfigError(f"{where}: path step {step!r} must be 'CODE SCHEME' (e.g. '122144 DCM'), "
                              "'*' or '**'")
    unit = fdef.get("unit")
    if vtype == "numeric":
        if not unit:
            raise ConfigError(f"{where}: numeric fields need a unit (UCUM, e.g. ms, mm, kg, 1)")
        if units.dimension(str(unit)) is None:
            close = difflib.get_close_matches(str(unit), units.known_units(), n=3)
            hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(units.known_units())}"
            raise ConfigError(f"{where}: unit {unit!r} is not known; {hint}")
    elif unit:
        raise ConfigError(f"{where}: only numeric fields take a unit")
    values = fdef.get("values") or {}
    if values and (vtype != "coded" or not isinstance(values, dict)):
        raise ConfigError(f"{where}: 'values' (alias: 'CODE SCHEME') is only for coded fields")
    for alias, code in values.items():
        if not isinstance(code, str) or len(code.split()) != 2:
            raise ConfigError(f"{where}: value alias {alias!r} must map to 'CODE SCHEME', got {code!r}")
    group = fdef.get("group")
    if group is not None and (not isinstance(group, str) or len(group.split()) != 2):
        raise ConfigError(f"{where}: group must be the 'CODE SCHEME' of an ancestor concept, got {group!r}")
    return TemplateField(name, tuple(cpath), vtype, str(unit) if unit else None,
                         str(fdef.get("description", "")), {str(k): str(v) for k, v in values.items()},
                         group)


def _check_titles_unique(templates: dict[str, TemplateConfig]) -> None:
    """A document title identifies one template, except that templates with ``content_concepts`` may
    share it with each other (with distinct concepts) and with one template without them (the default)."""
    owner: dict[str, str] = {}
    concept_owner: dict[tuple[str, str], str] = {}
    for key, t in templates.items():
        for title in t.document_titles:
            if t.content_concepts:
                for c in t.content_concepts:
                    if concept_owner.get((title, c), key) != key:
                        raise ConfigError(f"document title {title!r} with content concept {c!r} identifies both "
                                          f"templates {concept_owner[(title, c)]!r} and {key!r} "
                                          f"({', '.join(t.sources)}); keep it in one")
                    concept_owner[(title, c)] = key
                continue
            if owner.get(title, key) != key:
                raise ConfigError(f"document title {title!r} identifies both templates {owner[title]!r} "
                                  f"and {key!r} ({', '.join(t.sources)}); keep it in one")
            owner[title] = key


def needs_content_concepts(templates: dict[str, TemplateConfig], value: str, scheme: str) -> bool:
    """True when a template with ``content_concepts`` claims this document title (the tree decides)."""
    title = code_key(value, scheme)
    return any(t.content_concepts and title in t.document_titles for t in templates.values())


def template_for_title(templates: dict[str, TemplateConfig], value: str, scheme: str,
                       concepts: Collection[str] = ()) -> str | None:
    """The key of the template whose document title is (value, scheme), None if no config names it.

    ``concepts`` are the concept names ("CODE SCHEME") of the SR's content items: a template with
    ``content_concepts`` applies only when one of them is among these, and wins over one without.
    """
    title = code_key(value, scheme)
    default = None
    for key, t in templates.items():
        if title not in t.document_titles:
            continue
        if not t.content_concepts:
            default = default or key
        elif any(c in concepts for c in t.content_concepts):
            return key
    return default
