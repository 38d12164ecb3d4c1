"""YAML form of the cohort spec: load (with Hydra composition), parse from a dict, dump.

A spec file may pull shared object definitions from ``objects/*.yaml`` next to it with Hydra
defaults, and refine them below ``_self_``::

    defaults:
      - objects@objects.ct: ct_thin
      - _self_
    objects:
      ct: {within: {of: tavi, min_days: -180, max_days: 0}}
"""

from __future__ import annotations

import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pydantic
import yaml
from omegaconf import OmegaConf

from cohort.errors import SpecError
from cohort.spec.errors import SpecPathError, unknown
from cohort.spec.model import (
    And,
    CohortSpec,
    DistributionRequest,
    Expr,
    Kind,
    Label,
    Not,
    ObjectCondition,
    Op,
    Or,
    Predicate,
    Within,
)
from cohort.spec.validate import validate_spec

PROJECT_COHORT_CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "cohort"
_EXPR_KEYS = ("all", "any", "not")
# Fields whose pydantic errors arrive as one error per union member; reported once, at the field.
_UNION_FIELDS = ("value", "positive", "negative", "bins")


def path_of(loc: Sequence[str | int]) -> str:
    """``("objects", "ecg", "where", 1, "op")`` -> ``"objects.ecg.where[1].op"``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _expr(raw: Any, path: str) -> Expr:
    """A patient-level expression from its YAML form, with errors that name the path."""
    if isinstance(raw, str):
        return raw
    if isinstance(raw, Mapping):
        if len(raw) != 1:
            raise SpecPathError(path, f"an expression is an object name or one of {{all: [...]}}, "
                                      f"{{any: [...]}}, {{not: ...}}; got keys {sorted(map(str, raw))}")
        key, value = next(iter(raw.items()))
        if key == "not":
            return Not(not_=_expr(value, f"{path}.not"))
        if key in ("all", "any"):
            if not isinstance(value, Sequence) or isinstance(value, str):
                raise SpecPathError(f"{path}.{key}", f"'{key}' takes a list of expressions")
            items = [_expr(v, f"{path}.{key}[{i}]") for i, v in enumerate(value)]
            return And(all=items) if key == "all" else Or(any=items)
        raise unknown(f"{path}.{key}", "expression key", str(key), _EXPR_KEYS,
                      hint="'all' = and, 'any' = or")
    if isinstance(raw, Sequence):
        raise SpecPathError(path, "a list is ambiguous here: write {all: [...]} (and) or {any: [...]} (or)")
    raise SpecPathError(path, f"an expression is an object name or all/any/not; got {raw!r}")


def _model_at(loc: Sequence[str | int]) -> type[pydantic.BaseModel] | None:
    """The spec class whose keys live at ``loc`` (used to suggest a key for a misspelt one)."""
    parts = tuple(loc)
    if not parts:
        return CohortSpec
    if parts[0] == "objects" and len(parts) == 2:
        return ObjectCondition
    if parts[0] == "objects" and len(parts) == 4 and parts[2] == "where":
        return Predicate
    if parts[0] == "objects" and len(parts) == 3 and parts[2] == "within":
        return Within
    if parts == ("label",):
        return Label
    if parts[0] == "distributions" and len(parts) == 2:
        return DistributionRequest
    return None


def _translate(err: pydantic.ValidationError) -> SpecPathError:
    """The first pydantic error as a SpecPathError with a path and, where possible, a suggestion."""
    errors = err.errors()
    first = errors[0]
    loc = list(first["loc"])
    for i, part in enumerate(loc):
        if part in _UNION_FIELDS:
            loc = loc[: i + 1]
            break
    path, etype, given = path_of(loc), first["type"], first.get("input")
    more = len({path_of(e["loc"][:len(loc)]) for e in errors}) - 1
    suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more > 0 else ""
    if etype == "literal_error" and loc and loc[-1] in ("kind", "op"):
        choices = typing.get_args(Kind if loc[-1] == "kind" else Op)
        what = "object kind" if loc[-1] == "kind" else "operator"
        e = unknown(path, what, str(given), choices)
        return SpecPathError(path, e.reason + suffix)
    if etype == "extra_forbidden":
        model = _model_at(loc[:-1])
        keys = [f.alias or n for n, f in model.model_fields.items()] if model else []
        e = unknown(path, "key", str(loc[-1]), keys)
        return SpecPathError(path, e.reason + suffix)
    if etype == "missing":
        return SpecPathError(path, f"required key {loc[-1]!r} is missing{suffix}")
    if loc and loc[-1] in _UNION_FIELDS:
        return SpecPathError(path, f"expected a number, text, true/false or a list of them; got {given!r}"
                                   + suffix)
    return SpecPathError(path, f"{first['msg']} (got {given!r}){suffix}")


def parse_spec(data: Mapping[str, Any], *, catalog: Mapping[str, Any] | None,
               validate: bool = True) -> CohortSpec:
    """A CohortSpec from its dict (YAML) form.

    Args:
        data: the spec as plain data (``CohortSpec.to_dict()`` gives it back).
        catalog: the indexed fields to check against (a store's ``store_catalog``, or the built-in
            ``field_catalog()``); None checks the structure only (``validate_spec``). Required, as in
            ``validate_spec``: no default, so no caller skips the field checks by leaving it out.
        validate: False returns the spec after shape checks only (e.g. so a site can inspect and
            refuse an identifying request itself).

    Raises:
        SpecPathError: naming the path of the problem and the valid choices.
    """
    if not isinstance(data, Mapping):
        raise SpecError(f"a cohort spec is a mapping with keys objects, cohort, ...; got {type(data).__name__}")
    raw = dict(data)
    raw.pop("defaults", None)  # a Hydra defaults list left over from a file read without composing
    if "cohort" in raw:
        raw["cohort"] = _expr(raw["cohort"], "cohort")
    if isinstance(raw.get("subsets"), Mapping):
        raw["subsets"] = {k: _expr(v, f"subsets.{k}") for k, v in raw["subsets"].items()}
    try:
        spec = CohortSpec.model_validate(raw)
    except pydantic.ValidationError as err:
        raise _translate(err) from None
    if validate:
        validate_spec(spec, catalog)
    return spec


class _Dumper(yaml.SafeDumper):
    """SafeDumper that double-quotes strings holding YAML 1.1 line breaks other than ``\\n``.

    With ``allow_unicode`` PyYAML writes NEL, LS and PS raw inside single quotes, and reading
    folds them into spaces; double quotes escape them (``\\N``), so they survive a round trip.
    """


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = '"' if any(c in value for c in "\x85\u2028\u2029") else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def spec_to_yaml(spec: CohortSpec) -> str:
    """The YAML text of ``spec`` (defaults left out); ``parse_spec(yaml.safe_load(text)) == spec``."""
    return yaml.dump(spec.to_dict(), Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)


def _compose(path: Path, overrides: Sequence[str], search_paths: Sequence[Path]) -> dict[str, Any]:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    extra = [p for p in search_paths if p.resolve() != path.parent.resolve() and p.is_dir()]
    over = list(overrides)
    if extra:
        over.append("hydra.searchpath=[" + ",".join(f"file://{p.resolve()}" for p in extra) + "]")
    gh = GlobalHydra.instance()
    # A caller (e.g. the server app) may already be inside its own Hydra context: park it, compose
    # this file in a context of its own, and put the caller's back.
    saved = gh.hydra if gh.is_initialized() else None
    gh.clear()
    try:
        with initialize_config_dir(config_dir=str(path.parent.resolve()), version_base=None):
            cfg = compose(config_name=path.stem, overrides=over)
    except Exception as err:  # Hydra's errors name the missing option; keep that, add the file
        raise SpecError(f"{path}: cannot compose the spec: {err}") from err
    finally:
        gh.clear()
        if saved is not None:
            gh.initialize(saved)
    return typing.cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=True))


def load_spec(path: str | Path, *, overrides: Sequence[str] = (), catalog: Mapping[str, Any] | None,
              validate: bool = True, search_paths: Sequence[Path] = (PROJECT_COHORT_CONFIGS,)) -> CohortSpec:
    """Read a YAML spec file; Hydra composes it when it has a ``defaults`` list or overrides are given.

    Args:
        path: the spec file.
        overrides: Hydra overrides, e.g. ``["objects.ecg.within.min_days=-30"]``.
        catalog: see ``parse_spec`` (required; None checks the structure only).
        validate: see ``parse_spec``.
        search_paths: further folders Hydra searches for ``objects/...`` (the project's
            ``configs/cohort`` by default), so a spec outside the tree can use the shared objects.
    """
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"spec file {path} does not exist")
    try:
        conf = OmegaConf.load(path)
    except Exception as err:  # YAML syntax errors carry line and column; pass them on
        raise SpecError(f"{path}: not valid YAML: {err}") from err
    if not OmegaConf.is_dict(conf):
        raise SpecError(f"{path}: a spec file holds a mapping (objects:, cohort:, ...)")
    if "defaults" in conf or overrides:
        data = _compose(path, overrides, search_paths)
    else:
        data = typing.cast(dict[str, Any], OmegaConf.to_container(conf, resolve=True))
    try:
        return parse_spec(data, catalog=catalog, validate=validate)
    except SpecPathError as err:
        raise type(err)(err.path, f"{err.reason} (in {path})") from None
