"""The text query syntax: a hand-written recursive-descent parser producing a CohortSpec.

Grammar (docs/spec.md has it with examples)::

    query     := stmt (";" stmt)* [";"]
    stmt      := NAME ":=" object | "cohort" expr
               | "label" ref "positive" values "negative" values ["allow" "post-index"]
               | "subset" name "=" expr | "histogram" ref ["in" unit] "bins" NUMBER ("," NUMBER)* ["for" name]
               | "categories" ref ["in" unit] ["for" name] | "name" name | "description" STRING
    object    := KIND [":" TEMPLATE] ["[" [item ("," item)*] "]"] [window]
    item      := predicate | "{" predicate ("," predicate)* "}" ["as" name]
    predicate := field (("=" | "!=" | "<" | "<=" | ">" | ">=") value [unit]
               | "in" "(" value ("," value)* ")" [unit] | "contains" value | "exists" ["true" | "false"])
    window    := ("within" NUMBER ("day" | "days") ("before" | "after" | "of") dateref
               | "within" [NUMBER] ".." [NUMBER] ("day" | "days") "of" dateref
               | "before" dateref | "after" dateref) ["by" field]
    expr      := and_expr ("or" and_expr)* ;  and_expr := not_expr ("and" not_expr)*
    not_expr  := "not" not_expr | NAME | "(" expr ")" | ("all" | "any") "(" [expr ("," expr)*] ")"
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from typing import Any

import pydantic

from cohort.spec.errors import SpecPathError, closest
from cohort.spec.lexer import (
    BOOLEAN_WORDS,
    COMPARE_OPS,
    KEYWORDS,
    STATEMENTS,
    WORD_OPS,
    TextSpecError,
    Token,
    caret,
    tokenize,
)
from cohort.spec.model import (
    And,
    CohortSpec,
    DistributionRequest,
    Expr,
    Kind,
    Label,
    Not,
    ObjectCondition,
    Or,
    Predicate,
    Scalar,
    Within,
)
from cohort.spec.validate import validate_spec

KINDS: tuple[str, ...] = typing.get_args(Kind)
# Position tree of a parsed expression: a name's position, or (position, children).
PosTree = int | tuple[int, list[Any]]


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source
        self.tokens = tokenize(source)
        self.i = 0
        self.positions: dict[str, int] = {}
        self.objects: dict[str, ObjectCondition] = {}
        self.subsets: dict[str, Expr] = {}
        self.distributions: list[DistributionRequest] = []
        self.cohort: Expr | None = None
        self.label: Label | None = None
        self.meta: dict[str, str] = {}

    # --- token helpers ---------------------------------------------------------------------------
    def peek(self, k: int = 0) -> Token:
        return self.tokens[min(self.i + k, len(self.tokens) - 1)]

    def advance(self) -> Token:
        tok = self.peek()
        self.i = min(self.i + 1, len(self.tokens) - 1)
        return tok

    def error(self, message: str, tok: Token | None = None) -> TextSpecError:
        return TextSpecError(self.source, (tok or self.peek()).pos, message)

    def is_word(self, word: str, k: int = 0) -> bool:
        tok = self.peek(k)
        return tok.kind == "ident" and not tok.quoted and tok.text == word

    def is_sym(self, sym: str, k: int = 0) -> bool:
        tok = self.peek(k)
        return tok.kind in ("op", "punct") and tok.text == sym

    def accept_word(self, word: str) -> bool:
        if self.is_word(word):
            self.advance()
            return True
        return False

    def accept_sym(self, sym: str) -> bool:
        if self.is_sym(sym):
            self.advance()
            return True
        return False

    def expect_sym(self, sym: str, context: str) -> Token:
        if not self.is_sym(sym):
            raise self.error(f"expected {sym!r} {context}, found {self.peek()}")
        return self.advance()

    def expect_word(self, *words: str, context: str = "") -> str:
        tok = self.peek()
        if tok.kind == "ident" and not tok.quoted and tok.text in words:
            return self.advance().text
        want = " or ".join(repr(w) for w in words)
        guess = closest(tok.text, words) if tok.kind == "ident" else None
        hint = f" (did you mean {guess!r}?)" if guess and guess != tok.text else ""
        raise self.error(f"expected {want}{' ' + context if context else ''}, found {tok}{hint}")

    def name(self, what: str) -> str:
        tok = self.peek()
        if tok.kind == "ident" or (tok.kind == "string" and what in ("subset", "group", "spec name")):
            return self.advance().text
        raise self.error(f"expected {what}, found {tok}")

    def field(self) -> str:
        parts = [self.name("a field name")]
        while self.is_sym(".") and self.peek(1).kind == "ident":
            self.advance()
            parts.append(self.advance().text)
        return ".".join(parts)

    # --- statements ------------------------------------------------------------------------------
    def parse(self) -> None:
        while self.peek().kind != "eof":
            if self.accept_sym(";"):
                continue
            self.statement()
            if self.peek().kind != "eof":
                self.expect_sym(";", "between statements")

    def statement(self) -> None:
        tok = self.peek()
        if tok.kind == "ident" and self.is_sym(":=", 1):
            self.advance()
            self.advance()
            if tok.text in self.objects:
                raise self.error(f"object {tok.text!r} is defined twice", tok)
            self.positions[f"objects.{tok.text}"] = tok.pos
            self.objects[tok.text] = self.object_def(f"objects.{tok.text}")
            return
        if tok.kind != "ident" or tok.quoted or tok.text not in STATEMENTS:
            guess = closest(tok.text, STATEMENTS) if tok.kind == "ident" else None
            hint = f"; did you mean {guess!r}?" if guess else ""
            raise self.error(f"expected 'NAME := ...' or a statement ({', '.join(STATEMENTS)}), "
                             f"found {tok}{hint}")
        self.advance()
        getattr(self, f"stmt_{tok.text}")(tok)

    def stmt_cohort(self, tok: Token) -> None:
        if self.cohort is not None:
            raise self.error("'cohort' is given twice", tok)
        self.cohort = self.expr_at("cohort")

    def stmt_subset(self, tok: Token) -> None:
        name_tok = self.peek()
        name = self.name("subset")
        if name in self.subsets:
            raise self.error(f"subset {name!r} is defined twice", name_tok)
        self.expect_sym("=", "after the subset name")
        self.positions[f"subsets.{name}"] = name_tok.pos
        self.subsets[name] = self.expr_at(f"subsets.{name}")

    def stmt_label(self, tok: Token) -> None:
        if self.label is not None:
            raise self.error("'label' is given twice", tok)
        self.positions["label"] = tok.pos
        obj, field = self.ref("label")
        self.expect_word("positive", context="after the label field")
        pos_tok = self.peek()
        positive = self.values()
        self.expect_word("negative", context="after the positive values")
        neg_tok = self.peek()
        negative = self.values()
        self.positions["label.positive"], self.positions["label.negative"] = pos_tok.pos, neg_tok.pos
        allow = False
        if self.is_word("allow"):
            self.positions["label.allow_post_index"] = self.advance().pos
            self.expect_word("post-index", context="after 'allow' (inputs dated after the label's index event)")
            allow = True
        self.label = Label(object=obj, field=field, positive=positive, negative=negative, allow_post_index=allow)

    def _distribution(self, tok: Token, histogram: bool) -> None:
        path = f"distributions[{len(self.distributions)}]"
        self.positions[path] = tok.pos
        obj, field = self.ref(path)
        unit = None
        if self.accept_word("in"):
            self.positions[f"{path}.unit"] = self.peek().pos
            unit = self.unit(required=True)
        bins = None
        if histogram:
            self.expect_word("bins", context="after the histogram field")
            self.positions[f"{path}.bins"] = self.peek().pos
            bins = [float(self.number("a bin edge"))]
            while self.accept_sym(","):
                bins.append(float(self.number("a bin edge")))
        subset = None
        if self.accept_word("for"):
            self.positions[f"{path}.subset"] = self.peek().pos
            subset = self.name("subset")
        self.distributions.append(DistributionRequest(object=obj, field=field, subset=subset, bins=bins,
                                                      unit=unit))

    def stmt_histogram(self, tok: Token) -> None:
        self._distribution(tok, histogram=True)

    def stmt_categories(self, tok: Token) -> None:
        self._distribution(tok, histogram=False)

    def stmt_name(self, tok: Token) -> None:
        self.meta["name"] = self.name("spec name")

    def stmt_description(self, tok: Token) -> None:
        if self.peek().kind != "string":
            raise self.error(f'expected a quoted description, found {self.peek()}')
        self.meta["description"] = self.advance().text

    def ref(self, path: str) -> tuple[str, str]:
        """``object.field`` of a label or distribution."""
        obj_tok = self.peek()
        obj = self.name("an object name")
        self.positions[f"{path}.object"] = obj_tok.pos
        self.expect_sym(".", "between object and field (object.field)")
        self.positions[f"{path}.field"] = self.peek().pos
        return obj, self.field()

    # --- objects ---------------------------------------------------------------------------------
    def object_def(self, path: str) -> ObjectCondition:
        kind_tok = self.peek()
        if kind_tok.kind != "ident" or kind_tok.text not in KINDS:
            guess = closest(kind_tok.text, KINDS) if kind_tok.kind == "ident" else None
            hint = f"; did you mean {guess!r}?" if guess else ""
            raise self.error(f"expected an object kind ({', '.join(KINDS)}), found {kind_tok}{hint}")
        self.advance()
        self.positions[f"{path}.kind"] = kind_tok.pos
        template = None
        if self.accept_sym(":"):
            self.positions[f"{path}.template"] = self.peek().pos
            template = self.name("an SR template name")
        where: list[Predicate] = []
        if self.accept_sym("["):
            block = 0
            while not self.is_sym("]"):
                if self.is_sym("{"):
                    block += 1
                    self.group_block(where, path, block)
                else:
                    where.append(self.predicate(f"{path}.where[{len(where)}]", None))
                if not self.accept_sym(","):
                    break
            self.expect_sym("]", "to close the conditions (or ',' between them)")
        within = self.window(f"{path}.within")
        kind = typing.cast(Kind, kind_tok.text)
        return ObjectCondition(kind=kind, template=template, where=where, within=within)

    def group_block(self, where: list[Predicate], path: str, block: int) -> None:
        self.expect_sym("{", "")
        start = len(where)
        while True:
            where.append(self.predicate(f"{path}.where[{len(where)}]", f"g{block}"))
            if not self.accept_sym(","):
                break
        self.expect_sym("}", "to close the group (or ',' between its conditions)")
        if self.accept_word("as"):
            name = self.name("group")
            where[start:] = [p.model_copy(update={"group": name}) for p in where[start:]]

    def predicate(self, path: str, group: str | None) -> Predicate:
        self.positions[path] = self.peek().pos
        self.positions[f"{path}.field"] = self.peek().pos
        field = self.field()
        op_tok = self.peek()
        self.positions[f"{path}.op"] = op_tok.pos
        unit = None
        value: Scalar | list[Scalar] | None = None
        if op_tok.kind == "op" and op_tok.text in COMPARE_OPS:
            self.advance()
            self.positions[f"{path}.value"] = self.peek().pos
            value = self.value()
            if _is_number(value):
                unit = self.unit_at(f"{path}.unit")
        elif self.accept_word("in"):
            self.positions[f"{path}.value"] = self.peek().pos
            self.expect_sym("(", "after 'in' (a list: in (a, b))")
            value = [self.value()]
            while self.accept_sym(","):
                value.append(self.value())
            self.expect_sym(")", "to close the list")
            if any(_is_number(v) for v in value):
                unit = self.unit_at(f"{path}.unit")
        elif self.accept_word("contains"):
            self.positions[f"{path}.value"] = self.peek().pos
            value = self.value()
        elif self.accept_word("exists"):
            exists: bool | None = None
            if self.accept_word("true"):
                exists = True
            elif self.accept_word("false"):
                exists = False
            return Predicate(field=field, op="exists", value=exists, group=group)
        else:
            shown = op_tok.text if op_tok.kind != "eof" else ""
            guess = closest(shown, (*COMPARE_OPS, *WORD_OPS)) if shown else None
            hint = f"; did you mean {guess!r}?" if guess else ""
            raise self.error(f"expected an operator after {field!r} (= != < <= > >= in contains exists), "
                             f"found {op_tok}{hint}")
        op = "exists" if value is None else ("in" if isinstance(value, list) else op_tok.text)
        return Predicate(field=field, op=op, value=value, unit=unit, group=group)  # type: ignore[arg-type]

    def value(self) -> Scalar:
        tok = self.peek()
        if tok.kind == "number":
            self.advance()
            return float(tok.text) if any(c in tok.text for c in ".eE") else int(tok.text)
        if tok.kind in ("string", "date"):
            return self.advance().text
        if tok.kind == "ident":
            self.advance()
            if not tok.quoted and tok.text in BOOLEAN_WORDS:
                return BOOLEAN_WORDS[tok.text]
            return tok.text
        raise self.error(f"expected a value (number, \"text\", word, true/false), found {tok}")

    def values(self) -> list[Scalar]:
        """``v1, v2, ...`` or ``(v1, v2, ...)``; ``()`` is the empty list."""
        if self.accept_sym("("):
            out: list[Scalar] = []
            while not self.is_sym(")"):
                out.append(self.value())
                if not self.accept_sym(","):
                    break
            self.expect_sym(")", "to close the list of values")
            return out
        out = [self.value()]
        while self.accept_sym(","):
            out.append(self.value())
        return out

    def unit(self, *, required: bool = False) -> str | None:
        tok = self.peek()
        if tok.kind in ("ident", "string") or (tok.kind == "punct" and tok.text == "%"):
            return self.advance().text
        if required:
            raise self.error(f"expected a unit, found {tok}")
        return None

    def unit_at(self, path: str) -> str | None:
        pos = self.peek().pos
        unit = self.unit()
        if unit is not None:
            self.positions[path] = pos
        return unit

    def number(self, what: str) -> float | int:
        tok = self.peek()
        if tok.kind != "number":
            raise self.error(f"expected {what} (a number), found {tok}")
        self.advance()
        return float(tok.text) if any(c in tok.text for c in ".eE") else int(tok.text)

    def days(self) -> int:
        tok = self.peek()
        n = self.number("a number of days")
        if not isinstance(n, int):
            raise self.error("days are whole numbers", tok)
        return n

    def window(self, path: str) -> Within | None:
        start = self.peek()
        lo: int | None
        hi: int | None
        if self.accept_word("before"):
            lo, hi = None, 0
        elif self.accept_word("after"):
            lo, hi = 0, None
        elif self.accept_word("within"):
            if self.is_sym("..") or self.is_sym("..", 1):
                lo = None if self.is_sym("..") else self.days()
                self.expect_sym("..", "in the day range")
                hi = self.days() if self.peek().kind == "number" else None
                self.expect_word("days", "day", context="after the range")
                self.expect_word("of", context="(a range is relative: 'within -90..0 days of x')")
            else:
                n_tok = self.peek()
                n = self.days()
                if n < 0:
                    raise self.error("use a positive number with before/after/of, or a range a..b", n_tok)
                self.expect_word("days", "day", context="after the number")
                rel = self.expect_word("before", "after", "of", context="after 'days'")
                lo, hi = {"before": (-n, 0), "after": (0, n), "of": (-n, n)}[rel]
        else:
            return None
        self.positions[path] = start.pos
        self.positions[f"{path}.of"] = self.peek().pos
        of = self.name("an object name")
        date_field = own = None
        if self.accept_sym("."):
            self.positions[f"{path}.date_field"] = self.peek().pos
            date_field = self.field()
        if self.accept_word("by"):
            self.positions[f"{path}.own_date_field"] = self.peek().pos
            own = self.field()
        return Within(of=of, min_days=lo, max_days=hi, date_field=date_field, own_date_field=own)

    # --- expressions -----------------------------------------------------------------------------
    def expr_at(self, path: str) -> Expr:
        expr, tree = self.or_expr()
        self._record(expr, tree, path)
        return expr

    def _record(self, expr: Expr, tree: PosTree, path: str) -> None:
        if isinstance(tree, int):
            self.positions[path] = tree
            return
        pos, children = tree
        self.positions[path] = pos
        if isinstance(expr, And | Or):
            key = "all" if isinstance(expr, And) else "any"
            for i, (e, t) in enumerate(zip(expr.all if isinstance(expr, And) else expr.any, children,
                                           strict=True)):
                self._record(e, t, f"{path}.{key}[{i}]")
        elif isinstance(expr, Not):
            self._record(expr.not_, children[0], f"{path}.not")

    def or_expr(self) -> tuple[Expr, PosTree]:
        pos = self.peek().pos
        items = [self.and_expr()]
        while self.accept_word("or"):
            items.append(self.and_expr())
        if len(items) == 1:
            return items[0]
        return Or(any=[e for e, _ in items]), (pos, [t for _, t in items])

    def and_expr(self) -> tuple[Expr, PosTree]:
        pos = self.peek().pos
        items = [self.not_expr()]
        while self.accept_word("and"):
            items.append(self.not_expr())
        if len(items) == 1:
            return items[0]
        return And(all=[e for e, _ in items]), (pos, [t for _, t in items])

    def not_expr(self) -> tuple[Expr, PosTree]:
        tok = self.peek()
        if self.accept_word("not"):
            inner, tree = self.not_expr()
            return Not(not_=inner), (tok.pos, [tree])
        if self.accept_sym("("):
            inner, tree = self.or_expr()
            self.expect_sym(")", "to close the parenthesis")
            return inner, tree
        if (self.is_word("all") or self.is_word("any")) and self.is_sym("(", 1):
            word = self.advance().text
            self.advance()
            items: list[tuple[Expr, PosTree]] = []
            while not self.is_sym(")"):
                items.append(self.or_expr())
                if not self.accept_sym(","):
                    break
            self.expect_sym(")", f"to close {word}(...)")
            exprs = [e for e, _ in items]
            node: Expr = And(all=exprs) if word == "all" else Or(any=exprs)
            return node, (tok.pos, [t for _, t in items])
        if tok.kind == "ident" and (tok.quoted or tok.text not in KEYWORDS):
            self.advance()
            return tok.text, tok.pos
        raise self.error(f"expected an object name, 'not' or '(', found {tok}")


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _position(positions: Mapping[str, int], path: str) -> int | None:
    """The recorded position of ``path`` or of its nearest enclosing path."""
    while path:
        if path in positions:
            return positions[path]
        cut = max(path.rfind("."), path.rfind("["))
        path = path[:cut] if cut > 0 else ""
    return None


def parse_text(source: str, *, catalog: Mapping[str, Any] | None, validate: bool = True) -> CohortSpec:
    """Compile a text query into a CohortSpec.

    Args:
        source: the text query.
        catalog: the indexed fields to check against (see ``parse_spec``); required, None checks the
            structure only.
        validate: False skips ``validate_spec`` (the spec after shape checks only).

    Raises:
        TextSpecError: a syntax error, with a caret under the column.
        SpecPathError: a semantic error (unknown object, field, unit...); its message also shows
            the query with a caret under the offending token.
    """
    parser = _Parser(source)
    parser.parse()
    if parser.cohort is None:
        raise TextSpecError(source, len(source), "missing 'cohort EXPR' (e.g. 'cohort ct and ecg')")
    try:
        spec = CohortSpec(objects=parser.objects, cohort=parser.cohort, label=parser.label,
                          subsets=parser.subsets, distributions=parser.distributions, **parser.meta)
        if validate:
            validate_spec(spec, catalog)
    except SpecPathError as err:
        pos = _position(parser.positions, err.path)
        if pos is None:
            raise
        raise type(err)(err.path, caret(source, pos, err.reason)) from None
    except pydantic.ValidationError as err:  # should not happen: the parser builds valid shapes
        raise TextSpecError(source, 0, str(err)) from None
    return spec
