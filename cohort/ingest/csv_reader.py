"""Robust reading of the sites' CSV exports (identifier mapping, procedures, registry).

One reader for every table: strict decoding with the configured encoding (a UTF-8 BOM is
tolerated), the configured delimiter, and a header mapped from canonical field names to the site's
local column names. File-level problems (wrong encoding, missing column, empty file) raise
``InputError`` naming the file, the setting and the fix. Row-level problems (a bad date, a decimal
comma where a point is configured, an unknown coded value) raise ``RowError`` from the parse helpers,
which converters turn into a ``RejectedPart`` so one bad row never sinks the file.

Columns present in the file but not mapped in ``site.yaml`` are tolerated and listed in
``Table.unknown_columns`` (exports often carry extra fields such as urgency or comments).
"""

from __future__ import annotations

import csv
import difflib
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

from cohort.errors import CohortError, InputError
from cohort.ingest.base import RejectedPart
from cohort.siteconfig import IdentifierMapping, TableFormat

_COMMON_DELIMITERS = (",", ";", "\t", "|")
_DELIMITER_NAMES = {",": "','", ";": "';'", "\t": "'\\t' (tab)", "|": "'|'"}


class RowError(ValueError, CohortError):
    """A problem confined to one row of a table; the converter rejects that row with this reason."""


@dataclass(frozen=True)
class TableRow:
    """One data row: its line number in the file, its cells by canonical name and its raw text."""

    line: int
    values: dict[str, str]
    text: str

    @property
    def where(self) -> str:
        return f"row {self.line}"


@dataclass
class Table:
    """A decoded table: rows keyed by canonical names, rows rejected while splitting, extra columns."""

    path: Path
    header: list[str]
    rows: list[TableRow] = field(default_factory=list)
    rejected: list[RejectedPart] = field(default_factory=list)
    unknown_columns: list[str] = field(default_factory=list)


def _delimiter_name(delim: str) -> str:
    return _DELIMITER_NAMES.get(delim, repr(delim))


def decode_table_bytes(data: bytes, fmt: TableFormat, *, path: Path, setting: str) -> str:
    """Decode ``data`` strictly with ``fmt.encoding``; errors say which setting to change to what.

    A cp1252 / latin-1 declaration on a file that is valid UTF-8 with non-ASCII bytes is refused too:
    such a file would decode without error into mojibake ("GrÃ¶ÃŸe") and every umlaut header would
    then be reported as missing.
    """
    enc_setting = f"{setting}.format.encoding"
    try:
        codec = "utf-8" if fmt.encoding.lower().replace("_", "-") in ("utf-8", "utf8") else fmt.encoding
        text = data.decode(codec)
    except LookupError:
        raise InputError(f"unknown encoding {fmt.encoding!r}; set {enc_setting} to e.g. utf-8 or cp1252",
                         path=str(path), field=enc_setting) from None
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        byte = data[exc.start: exc.start + 1].hex()
        suggestion = _suggest_encoding(data, fmt.encoding)
        looks, fix = _encoding_advice(data, fmt, setting, suggestion)
        raise InputError(
            f"cannot decode byte 0x{byte} at offset {exc.start} (line {line}) as {fmt.encoding}; "
            f"the file looks like {looks}: {fix} in site.yaml", path=str(path), field=enc_setting) from None
    if codec != "utf-8" and _is_non_ascii_utf8(data):
        _looks, fix = _encoding_advice(data, fmt, setting, "utf-8")
        raise InputError(
            f"the file is UTF-8 (it has multi-byte UTF-8 sequences) but {enc_setting} is {fmt.encoding!r}; "
            f"{fix} in site.yaml", path=str(path), field=enc_setting)
    return text[1:] if text.startswith("\ufeff") else text


def _encoding_advice(data: bytes, fmt: TableFormat, setting: str, encoding: str) -> tuple[str, str]:
    """What the file looks like and the settings to change: the encoding, and the delimiter when the
    header (decoded with ``encoding``) is split by another one than the configured delimiter."""
    fix = f"set {setting}.format.encoding: {encoding}"
    delimiter = _other_delimiter(data.decode(encoding, errors="replace"), fmt.delimiter)
    if delimiter is None:
        return encoding, fix
    name = _delimiter_name(delimiter)
    return (f"{encoding}, delimited by {name}",
            f"{fix} and {setting}.format.delimiter: {name} (it is {_delimiter_name(fmt.delimiter)})")


def _other_delimiter(text: str, configured: str) -> str | None:
    """The common delimiter that splits the first line more often than the configured one, if any."""
    first = next((line for line in text.lstrip("\ufeff").splitlines() if line.strip()), "")
    counts = {d: first.count(d) for d in _COMMON_DELIMITERS if d != configured}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] > first.count(configured) else None


def _is_non_ascii_utf8(data: bytes) -> bool:
    if data.isascii():
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _suggest_encoding(data: bytes, declared: str) -> str:
    if _is_non_ascii_utf8(data):
        return "utf-8"
    return "cp1252" if declared.lower() != "cp1252" else "utf-8"


def _split_records(text: str, delimiter: str) -> list[tuple[int, list[str], str]]:
    """Records as (first line number, fields, raw text); blank lines are skipped."""
    # readlines with newline="" splits at \n, \r and \r\n exactly as the csv module counts lines.
    lines = io.StringIO(text, newline="").readlines()
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    out: list[tuple[int, list[str], str]] = []
    last = 0
    try:
        for fields in reader:
            start, last = last + 1, reader.line_num
            raw = "".join(lines[start - 1: last]).rstrip("\r\n")
            if not fields or all(not f.strip() for f in fields):
                continue
            out.append((start, fields, raw))
    except csv.Error as exc:  # e.g. NUL bytes: the file is not a text table at all
        raise RowError(f"line {reader.line_num}: not a CSV record ({exc})") from None
    return out


def _find_column(header: list[str], wanted: str) -> int | None:
    stripped = [h.strip() for h in header]
    if wanted in stripped:
        return stripped.index(wanted)
    folded = [h.casefold() for h in stripped]
    hits = [i for i, h in enumerate(folded) if h == wanted.casefold()]
    return hits[0] if len(hits) == 1 else None


def read_table(path: Path, fmt: TableFormat, columns: Mapping[str, str], *, setting: str,
               data: bytes | None = None) -> Table:
    """Read a CSV export; ``columns`` maps canonical names to local headers (all must be present).

    ``setting`` is the site.yaml path of this table (e.g. ``registry``), used in messages. Rows whose
    field count differs from the header's are rejected; everything else is left to the caller.
    """
    path = Path(path)
    if data is None:
        data = path.read_bytes()
    text = decode_table_bytes(data, fmt, path=path, setting=setting)
    expected = ", ".join(repr(c) for c in columns.values())
    if not text.strip():
        raise InputError(f"the file is empty; expected a header row with the columns {expected}",
                         path=str(path))
    try:
        records = _split_records(text, fmt.delimiter)
    except RowError as exc:
        raise InputError(f"not a readable CSV table: {exc}", path=str(path)) from None
    header_line, header, _ = records[0]
    header = [h.strip() for h in header]
    index: dict[str, int] = {}
    for canonical, local in columns.items():
        pos = _find_column(header, local)
        if pos is None:
            raise InputError(_missing_column_message(header, local, canonical, fmt, setting, text),
                             path=str(path), field=f"{setting}.columns.{canonical}")
        index[canonical] = pos
    dupes = sorted({h for h in header if h and header.count(h) > 1 and h in columns.values()})
    if dupes:
        raise InputError(f"column(s) {dupes} appear more than once in the header; remove the duplicates",
                         path=str(path), field=setting)
    mapped = set(index.values())
    table = Table(path=path, header=header,
                  unknown_columns=[h for i, h in enumerate(header) if i not in mapped and h])
    for line, fields, raw in records[1:]:
        if len(fields) != len(header):
            table.rejected.append(RejectedPart(
                f"row {line}", f"has {len(fields)} fields but the header has {len(header)}; check quoting "
                f"and {setting}.format.delimiter ({_delimiter_name(fmt.delimiter)})", raw))
            continue
        values = {canonical: fields[pos].strip() for canonical, pos in index.items()}
        table.rows.append(TableRow(line, values, raw))
    if not table.rows and not table.rejected:
        raise InputError(f"the file has a header row (line {header_line}) but no data rows; "
                         "export the table again with its records", path=str(path))
    return table


def _missing_column_message(header: list[str], local: str, canonical: str, fmt: TableFormat, setting: str,
                            text: str) -> str:
    found = ", ".join(repr(h) for h in header)
    msg = f"column {local!r} not found; found columns: {found}"
    close = difflib.get_close_matches(local, header, n=1, cutoff=0.5)
    if close:
        msg += f"; did you mean {close[0]!r}?"
    msg += f" set {setting}.columns.{canonical} in site.yaml"
    if len(header) == 1:
        guess = _other_delimiter(text, fmt.delimiter)
        if guess:
            msg += (f"; the header has a single column: the file seems delimited by {_delimiter_name(guess)} "
                    f"but {setting}.format.delimiter is {_delimiter_name(fmt.delimiter)}")
    return msg


def header_fields(head: bytes, fmt: TableFormat, encoding: str | None = None) -> list[str]:
    """The header row of a file's first bytes, split leniently (for sniffing; never raises).

    When the configured delimiter yields a single field, the common delimiters are tried, so a file
    with the wrong delimiter is still recognised and its converter can say so.
    """
    try:
        text = head.decode(encoding or fmt.encoding, errors="replace")
    except LookupError:
        return []
    text = text.lstrip("\ufeff").lstrip("\r\n")
    first = text.splitlines()[0] if text else ""
    fields = next(csv.reader([first], delimiter=fmt.delimiter), [])
    if len(fields) <= 1:
        for delim in _COMMON_DELIMITERS:
            alt = next(csv.reader([first], delimiter=delim), [])
            if len(alt) > 1:
                fields = alt
                break
    return [f.strip() for f in fields]


def delimited_header(head: bytes) -> tuple[str, list[str]] | None:
    """(delimiter, header fields) when ``head`` reads as a delimited text table, else None.

    A table: text (UTF-8 or cp1252, no NUL bytes, not JSON or XML) with a header line and at least
    one more, the header splitting into two or more fields by one of the common delimiters and the
    next complete lines (up to five) into as many.
    """
    if not head or b"\x00" in head or head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] in (b"{", b"[", b"<"):
        return None
    text = head.decode("utf-8", errors="strict") if _decodes(head, "utf-8") else head.decode("cp1252", "replace")
    lines = [line for line in text.lstrip("\ufeff").splitlines() if line.strip()]
    if len(head) >= 8192 and lines:
        lines = lines[:-1]  # the head may end inside the last line
    if len(lines) < 2:
        return None
    for delimiter in _COMMON_DELIMITERS:
        rows = [next(csv.reader([line], delimiter=delimiter), []) for line in lines[:6]]
        if len(rows[0]) >= 2 and all(len(r) == len(rows[0]) for r in rows[1:]):
            return delimiter, [f.strip() for f in rows[0]]
    return None


def _decodes(data: bytes, encoding: str) -> bool:
    try:
        data.decode(encoding)
    except UnicodeDecodeError as exc:
        return exc.start > len(data) - 4  # only a multi-byte character cut at the end of the head
    return True


def sniff_table(head: bytes, fmt: TableFormat, required_headers: Sequence[str],
                optional_headers: Sequence[str] = (), min_optional_share: float = 0.0) -> bool:
    """True when the header row holds every required column and enough of the optional ones.

    Matching is by content (column names), not by file name. ``min_optional_share`` lets a table with
    a misspelt column still be recognised, so its converter can name the column that is missing.
    """
    # Other encodings too: a file declared with the wrong one must still reach its converter,
    # which then reports the encoding problem instead of "unknown format".
    fields = {f.casefold() for enc in (fmt.encoding, "utf-8", "cp1252") for f in header_fields(head, fmt, enc)}
    if not fields or not all(h.casefold() in fields for h in required_headers):
        return False
    if optional_headers and min_optional_share > 0:
        present = sum(h.casefold() in fields for h in optional_headers)
        return present / len(optional_headers) >= min_optional_share
    return True


# --- cell parsers: each raises RowError with the value, the setting and the fix ---------------------


def parse_number(text: str, fmt: TableFormat, *, column: str, setting: str) -> float:
    """A decimal number written with the configured decimal mark (no thousands separators)."""
    wrong = "," if fmt.decimal == "." else "."
    if wrong in text:
        raise RowError(
            f"column {column!r}: {text!r} uses {wrong!r} as decimal mark but {setting}.format.decimal is "
            f"{fmt.decimal!r}; fix the value or set {setting}.format.decimal: {wrong!r} if the whole export "
            "uses it")
    if not text:
        raise RowError(f"column {column!r}: empty value where a number is required")
    try:
        return float(text.replace(",", "."))
    except ValueError:
        raise RowError(f"column {column!r}: {text!r} is not a number") from None


def parse_date(text: str, fmt: TableFormat, *, column: str, setting: str) -> date:
    """A date in the configured ``date_format``."""
    try:
        return datetime.strptime(text, fmt.date_format).date()
    except ValueError:
        example = date(2021, 3, 24).strftime(fmt.date_format)
        raise RowError(f"column {column!r}: date {text!r} does not match {setting}.format.date_format "
                       f"{fmt.date_format!r} (e.g. {example!r})") from None


def map_value(text: str, value_map: Mapping[str, str] | None, *, column: str, setting: str,
              canonical_field: str) -> str:
    """Translate a local coded value with the site's value map (no map: the value is canonical)."""
    if not value_map:
        return text
    if text in value_map:
        return value_map[text]
    folded = {k.casefold(): v for k, v in value_map.items()}
    if text.casefold() in folded:
        return folded[text.casefold()]
    valid = ", ".join(repr(k) for k in value_map)
    raise RowError(f"column {column!r}: unknown value {text!r}; valid values: {valid} "
                   f"(add it to {setting}.value_maps.{canonical_field} in site.yaml if it is valid)")


# --- identifier mapping ------------------------------------------------------------------------------


@dataclass
class IdMappingTable:
    """The site's PACS id <-> case id links read from its mapping export."""

    case_to_pacs: dict[str, str]
    pacs_to_cases: dict[str, tuple[str, ...]]
    rejected: list[RejectedPart]


def read_id_mapping(path: Path, mapping: IdentifierMapping, *, data: bytes | None = None) -> IdMappingTable:
    """Read and check the identifier mapping; a case id linked to two PACS ids raises InputError.

    Exact duplicate rows are harmless and kept once; a PACS id with several case ids (several
    admissions) is valid. Rows with an empty id are rejected.
    """
    table = read_table(path, mapping.format, {"pacs_id": mapping.pacs_id_column,
                                              "case_id": mapping.case_id_column},
                       setting="identifiers", data=data)
    case_to_pacs: dict[str, str] = {}
    first_line: dict[str, int] = {}
    pacs_to_cases: dict[str, list[str]] = {}
    rejected = list(table.rejected)
    for row in table.rows:
        pacs, case = row.values["pacs_id"], row.values["case_id"]
        if not pacs or not case:
            empty = mapping.pacs_id_column if not pacs else mapping.case_id_column
            rejected.append(RejectedPart(row.where, f"column {empty!r} is empty", row.text))
            continue
        if case in case_to_pacs:
            if case_to_pacs[case] != pacs:
                raise InputError(
                    f"case id {case!r} is linked to two PACS ids ({case_to_pacs[case]!r} on line "
                    f"{first_line[case]}, {pacs!r} on line {row.line}); correct the mapping export",
                    path=str(path), field=mapping.case_id_column)
            continue
        case_to_pacs[case] = pacs
        first_line[case] = row.line
        pacs_to_cases.setdefault(pacs, []).append(case)
    return IdMappingTable(case_to_pacs, {k: tuple(v) for k, v in pacs_to_cases.items()}, rejected)
