"""Tokens of the text query syntax, and errors that point at a column with a caret."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from cohort.spec.errors import SpecPathError

TokenKind = Literal["ident", "number", "string", "date", "op", "punct", "eof"]

# Bare words may contain inner hyphens so values such as self-expanding need no quotes.
WORD_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:-[A-Za-z0-9_]+)*")
_NUMBER_RE = re.compile(r"-?(?:\d+\.\d+|\d+)(?:[eE][+-]?\d+)?")
_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}(?:T\d{2}:\d{2}(?::\d{2})?)?(?![\w-])")
_OPS = (":=", "!=", "<=", ">=", "..", "=", "<", ">")
_PUNCT = "[]{}(),;:.%"
COMPARE_OPS = ("=", "!=", "<", "<=", ">", ">=")
WORD_OPS = ("in", "contains", "exists")
STATEMENTS = ("cohort", "label", "subset", "histogram", "categories", "name", "description")
# Bare words read as booleans, as YAML reads them.
BOOLEAN_WORDS = {"true": True, "false": False, "yes": True, "no": False}
# Every word with a meaning somewhere in the grammar; the formatter backquotes names equal to one.
KEYWORDS = frozenset({
    *STATEMENTS, *WORD_OPS, "within", "days", "day", "before", "after", "of", "by", "as", "and", "or",
    "not", "all", "any", "true", "false", "yes", "no", "positive", "negative", "bins", "for",
})
_ESCAPES = {"n": "\n", "t": "\t", '"': '"', "\\": "\\"}


@dataclass(frozen=True)
class Token:
    """One token: its kind, its text (strings unescaped) and where it starts in the query."""

    kind: TokenKind
    text: str
    pos: int
    quoted: bool = False  # ident written in backquotes: never a keyword

    def __str__(self) -> str:
        if self.kind == "eof":
            return "end of query"
        return repr(self.text) if self.kind != "string" else f'"{self.text}"'


def caret(source: str, pos: int, message: str) -> str:
    """``message`` prefixed with the line and column of ``pos``, and that line with a caret under it."""
    line_start = source.rfind("\n", 0, pos) + 1
    line_end = source.find("\n", pos)
    line = source[line_start: line_end if line_end >= 0 else len(source)]
    col = pos - line_start + 1
    where = f"line {source.count(chr(10), 0, pos) + 1}, column {col}" if "\n" in source else f"column {col}"
    return f"{where}: {message}\n  {line}\n  {' ' * (col - 1)}^"


class TextSpecError(SpecPathError):
    """A syntax error in a text query; the message shows the line with a caret under the column."""

    def __init__(self, source: str, pos: int, message: str) -> None:
        self.source, self.pos = source, pos
        self.line = source.count("\n", 0, pos) + 1
        self.column = pos - (source.rfind("\n", 0, pos) + 1) + 1
        super().__init__("", caret(source, pos, message))


def tokenize(source: str) -> list[Token]:
    """Split a text query into tokens; ``#`` starts a comment to the end of the line."""
    tokens: list[Token] = []
    i, n = 0, len(source)
    while i < n:
        ch = source[i]
        if ch.isspace():
            i += 1
            continue
        if ch == "#":
            end = source.find("\n", i)
            i = n if end < 0 else end
            continue
        if ch == '"':
            text, i2 = _string(source, i)
            tokens.append(Token("string", text, i))
            i = i2
            continue
        if ch == "`":
            end = source.find("`", i + 1)
            if end < 0:
                raise TextSpecError(source, i, "unterminated `name`: add the closing backquote")
            tokens.append(Token("ident", source[i + 1:end], i, quoted=True))
            i = end + 1
            continue
        m = _DATE_RE.match(source, i)
        if m:
            tokens.append(Token("date", m.group(), i))
            i = m.end()
            continue
        m = _NUMBER_RE.match(source, i)  # no subtraction in the grammar: '-' before a digit is a sign
        if m:
            tokens.append(Token("number", m.group(), i))
            i = m.end()
            continue
        m = WORD_RE.match(source, i)
        if m:
            tokens.append(Token("ident", m.group(), i))
            i = m.end()
            continue
        for typo, fix in (("=<", "<="), ("=>", ">="), ("==", "=")):
            if source.startswith(typo, i):
                raise TextSpecError(source, i, f"unknown operator {typo!r}; did you mean {fix!r}?")
        op = next((o for o in _OPS if source.startswith(o, i)), None)
        if op is not None:
            tokens.append(Token("op", op, i))
            i += len(op)
            continue
        if ch in _PUNCT:
            tokens.append(Token("punct", ch, i))
            i += 1
            continue
        hint = " (did you mean '=', '!=', '<=' or '>='?)" if ch in "!=<>" else ""
        raise TextSpecError(source, i, f"unexpected character {ch!r}{hint}")
    tokens.append(Token("eof", "", n))
    return tokens


def _string(source: str, start: int) -> tuple[str, int]:
    out: list[str] = []
    i = start + 1
    while i < len(source):
        ch = source[i]
        if ch == '"':
            return "".join(out), i + 1
        if ch == "\\" and i + 1 < len(source):
            nxt = source[i + 1]
            if nxt == "u":
                digits = source[i + 2:i + 6]
                if len(digits) != 4 or any(c not in "0123456789abcdefABCDEF" for c in digits):
                    raise TextSpecError(source, i, "\\u needs four hex digits, e.g. \\u00e4")
                out.append(chr(int(digits, 16)))
                i += 6
                continue
            if nxt not in _ESCAPES:
                raise TextSpecError(source, i, f"unknown escape \\{nxt}; use \\\" \\\\ \\n \\t or \\uXXXX")
            out.append(_ESCAPES[nxt])
            i += 2
            continue
        out.append(ch)
        i += 1
    raise TextSpecError(source, start, 'unterminated string: add the closing "')


def quote(text: str) -> str:
    """``text`` as a double-quoted string token that ``tokenize`` reads back unchanged."""
    out = []
    for ch in text:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 32 or ch == "\x7f":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'
