"""Spec -> text query: the reverse of ``cohort.spec.text.parse_text``, so a dashboard can show both.

``parse_text(spec_to_text(spec)) == spec`` for every spec the text syntax can express; the few
shapes it cannot (a predicate whose value does not fit its operator) raise SpecError.
"""

from __future__ import annotations

from cohort.errors import SpecError
from cohort.spec.lexer import KEYWORDS, WORD_RE, quote
from cohort.spec.model import (
    And,
    CohortSpec,
    DistributionRequest,
    Expr,
    Label,
    Not,
    ObjectCondition,
    Or,
    Predicate,
    Scalar,
    Within,
)


def ident(name: str) -> str:
    """A name as written in a query: bare when it is a plain word, else in backquotes."""
    if WORD_RE.fullmatch(name) and name not in KEYWORDS:
        return name
    if "`" in name or not name:
        raise SpecError(f"the name {name!r} cannot be written in the text syntax; rename it")
    return f"`{name}`"


def _name_or_string(name: str) -> str:
    return name if WORD_RE.fullmatch(name) and name not in KEYWORDS else quote(name)


def _field(name: str) -> str:
    # Dotted field names read back joined, so each part may stay bare.
    parts = name.split(".")
    if all(WORD_RE.fullmatch(p) and p not in KEYWORDS for p in parts):
        return name
    return ident(name)


def value_text(value: Scalar) -> str:
    """A scalar as a token: true/false, a number that keeps int or float, a word or a string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        text = repr(value)
        if text in ("inf", "-inf", "nan"):
            raise SpecError(f"{value!r} cannot be written in a query")
        return text
    return value if WORD_RE.fullmatch(value) and value not in KEYWORDS else quote(value)


def _unit(unit: str | None) -> str:
    if unit is None:
        return ""
    return " " + (unit if unit == "%" or (WORD_RE.fullmatch(unit) and unit not in KEYWORDS) else quote(unit))


def _predicate(p: Predicate) -> str:
    f = _field(p.field)
    if p.op == "exists":
        if not (p.value is None or isinstance(p.value, bool)) or p.unit is not None:
            raise SpecError(f"{p.field}: 'exists' takes no value, or true / false")
        return f"{f} exists" + ("" if p.value is None else " true" if p.value else " false")
    if p.op == "in":
        if not isinstance(p.value, list) or not p.value:
            raise SpecError(f"{p.field}: 'in' needs a non-empty list to be written as text")
        return f"{f} in ({', '.join(value_text(v) for v in p.value)}){_unit(p.unit)}"
    if p.value is None or isinstance(p.value, list):
        raise SpecError(f"{p.field}: {p.op!r} needs one value to be written as text")
    if p.op == "contains":
        return f"{f} contains {value_text(p.value)}"
    unit = _unit(p.unit) if isinstance(p.value, int | float) and not isinstance(p.value, bool) else ""
    if p.unit is not None and not unit:
        raise SpecError(f"{p.field}: a unit on a non-numeric value cannot be written as text")
    return f"{f} {p.op} {value_text(p.value)}{unit}"


def _conditions(where: list[Predicate]) -> str:
    # Runs of predicates of one group become {...} blocks; block k without 'as' is named gk.
    runs: list[tuple[str | None, list[Predicate]]] = []
    for p in where:
        if runs and p.group is not None and runs[-1][0] == p.group:
            runs[-1][1].append(p)
        else:
            runs.append((p.group, [p]))
    blocks = [g for g, _ in runs if g is not None]
    parts, block = [], 0
    for group, preds in runs:
        if group is None:
            parts.append(_predicate(preds[0]))
            continue
        block += 1
        inner = "{" + ", ".join(_predicate(p) for p in preds) + "}"
        if group != f"g{block}" or blocks.count(group) > 1:
            inner += f" as {_name_or_string(group)}"
        parts.append(inner)
    return "[" + ", ".join(parts) + "]"


def _window(w: Within) -> str:
    lo, hi = w.min_days, w.max_days
    ref = ident(w.of) + (f".{_field(w.date_field)}" if w.date_field else "")
    if lo is None and hi == 0:
        text = f"before {ref}"
    elif lo == 0 and hi is None:
        text = f"after {ref}"
    elif lo is not None and hi == 0 and lo < 0:
        text = f"within {-lo} days before {ref}"
    elif lo == 0 and hi is not None and hi > 0:
        text = f"within {hi} days after {ref}"
    elif lo is not None and hi is not None and hi > 0 and lo == -hi:
        text = f"within {hi} days of {ref}"
    else:
        text = f"within {'' if lo is None else lo}..{'' if hi is None else hi} days of {ref}"
    return text + (f" by {_field(w.own_date_field)}" if w.own_date_field else "")


def _object(name: str, obj: ObjectCondition) -> str:
    text = f"{ident(name)} := {obj.kind}"
    if obj.template is not None:
        text += f":{ident(obj.template)}"
    if obj.where:
        text += _conditions(obj.where)
    if obj.within is not None:
        text += " " + _window(obj.within)
    return text


def expr_text(expr: Expr) -> str:
    """A patient-level expression with the fewest parentheses that parse back to the same tree."""
    if isinstance(expr, str):
        return ident(expr)
    if isinstance(expr, Not):
        inner = expr.not_
        return "not " + (f"({expr_text(inner)})" if isinstance(inner, And | Or) else expr_text(inner))
    items = expr.all if isinstance(expr, And) else expr.any
    word = "all" if isinstance(expr, And) else "any"
    if len(items) < 2:
        return f"{word}({', '.join(expr_text(e) for e in items)})"
    # A nested node of the same operator keeps its own parentheses, so the tree is not flattened;
    # AND inside OR needs none because AND binds tighter.
    wrap = (And, Or) if isinstance(expr, And) else (Or,)
    texts = [f"({expr_text(e)})" if isinstance(e, wrap) else expr_text(e) for e in items]
    return f" {'and' if isinstance(expr, And) else 'or'} ".join(texts)


def _values(values: list[Scalar]) -> str:
    return ", ".join(value_text(v) for v in values) if values else "()"


def _label(label: Label) -> str:
    return (f"label {ident(label.object)}.{_field(label.field)} positive {_values(label.positive)} "
            f"negative {_values(label.negative)}" + (" allow post-index" if label.allow_post_index else ""))


def _edge(b: float) -> str:
    return str(int(b)) if b.is_integer() and abs(b) < 1e15 else value_text(b)


def _distribution(d: DistributionRequest) -> str:
    head = "histogram" if d.bins is not None else "categories"
    text = f"{head} {ident(d.object)}.{_field(d.field)}"
    if d.unit is not None:
        text += f" in{_unit(d.unit)}"
    if d.bins is not None:
        if not d.bins:
            raise SpecError(f"{d.object}.{d.field}: a histogram without bin edges cannot be written")
        text += " bins " + ", ".join(_edge(b) for b in d.bins)
    if d.subset is not None:
        text += f" for {_name_or_string(d.subset)}"
    return text


def spec_to_text(spec: CohortSpec, *, separator: str = ";\n") -> str:
    """The text query of ``spec``: one statement per line by default."""
    parts: list[str] = []
    if spec.name != "cohort":
        parts.append(f"name {_name_or_string(spec.name)}")
    if spec.description:
        parts.append(f"description {quote(spec.description)}")
    parts += [_object(n, o) for n, o in spec.objects.items()]
    parts.append(f"cohort {expr_text(spec.cohort)}")
    if spec.label is not None:
        parts.append(_label(spec.label))
    parts += [f"subset {_name_or_string(n)} = {expr_text(e)}" for n, e in spec.subsets.items()]
    parts += [_distribution(d) for d in spec.distributions]
    return separator.join(parts)
