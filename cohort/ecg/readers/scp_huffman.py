"""Huffman decoding of SCP-ECG (EN 1064) rhythm data: Section 2 tables, the default table, lead bitstreams.

Section 2 starts with the number of tables; 19999 means "the default table of the standard" and no
table follows. Otherwise each table is a count of code structures, each 9 bytes: bits in the prefix,
bits in the entire code, table mode switch (1: a value of this table, 0: switch to another table),
base value (int16) and base code (uint32, the prefix with its first transmitted bit in bit 0).
A code whose entire length exceeds its prefix is an escape: the following bits hold the value
itself, two's complement, most significant bit first. Bits are taken from each byte most significant
first. Every lead's bitstream starts with the first table and ends after the lead's sample count;
what is left of its last byte is padding.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

from cohort.errors import CohortError

__all__ = ["DEFAULT_TABLE_MARKER", "DEFAULT_TABLE", "HuffmanCode", "HuffmanTable", "HuffmanError",
           "HuffmanUnsupportedError",
           "parse_section2", "decode_lead", "undo_differences"]

DEFAULT_TABLE_MARKER = 19999  # Section 2 "number of tables" that selects the default table
_CODE_STRUCTURE = struct.Struct("<BBBhI")
_MAX_CODE_BITS = 32


class HuffmanError(ValueError, CohortError):
    """Section 2 or a lead's Huffman bitstream is damaged; the reader adds file, section and lead."""


class HuffmanUnsupportedError(HuffmanError):
    """Section 2 is well formed but uses a feature this decoder does not implement."""


@dataclass(frozen=True)
class HuffmanCode:
    """One code structure: the prefix as transmitted ("101"), and the value it stands for."""

    bits: str
    value: int = 0
    extra_bits: int = 0  # escape codes: this many bits after the prefix hold the value (two's complement)


@dataclass(frozen=True)
class HuffmanTable:
    """A prefix-free set of codes, with a lookup from prefix bits to code."""

    codes: tuple[HuffmanCode, ...]
    lookup: dict[str, HuffmanCode] = field(init=False, repr=False, compare=False)
    prefix_lengths: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "lookup", {c.bits: c for c in self.codes})
        object.__setattr__(self, "prefix_lengths", tuple(sorted({len(c.bits) for c in self.codes})))


# EN 1064 default table: 0 -> "0"; +-n (n = 1..8) -> n ones, a zero, then the sign bit (0: +, 1: -);
# nine ones and a zero escape to an 8-bit value, ten ones to a 16-bit value.
DEFAULT_TABLE = HuffmanTable((
    HuffmanCode("0", 0),
    HuffmanCode("100", 1), HuffmanCode("101", -1),
    HuffmanCode("1100", 2), HuffmanCode("1101", -2),
    HuffmanCode("11100", 3), HuffmanCode("11101", -3),
    HuffmanCode("111100", 4), HuffmanCode("111101", -4),
    HuffmanCode("1111100", 5), HuffmanCode("1111101", -5),
    HuffmanCode("11111100", 6), HuffmanCode("11111101", -6),
    HuffmanCode("111111100", 7), HuffmanCode("111111101", -7),
    HuffmanCode("1111111100", 8), HuffmanCode("1111111101", -8),
    HuffmanCode("1111111110", 0, extra_bits=8),
    HuffmanCode("1111111111", 0, extra_bits=16),
))


def parse_section2(body: bytes) -> tuple[HuffmanTable, ...]:
    """The tables of a Section 2 body: (DEFAULT_TABLE,) for 19999, () for 0 (data not Huffman-coded)."""
    if len(body) < 2:
        raise HuffmanError(f"section has {len(body)} bytes, too short for the number of Huffman tables")
    (n_tables,) = struct.unpack_from("<H", body)
    if n_tables == DEFAULT_TABLE_MARKER:
        return (DEFAULT_TABLE,)
    pos, tables = 2, []
    for t in range(1, n_tables + 1):
        if pos + 2 > len(body):
            raise HuffmanError(f"section ends before Huffman table {t} of {n_tables}")
        (n_codes,) = struct.unpack_from("<H", body, pos)
        pos += 2
        if n_codes == 0:
            raise HuffmanError(f"Huffman table {t} has no code structures")
        if pos + n_codes * _CODE_STRUCTURE.size > len(body):
            raise HuffmanError(f"section ends inside Huffman table {t} ({n_codes} code structures of 9 bytes "
                               f"need {n_codes * _CODE_STRUCTURE.size}, {len(body) - pos} remain)")
        codes = [_code(t, k + 1, *_CODE_STRUCTURE.unpack_from(body, pos + k * _CODE_STRUCTURE.size))
                 for k in range(n_codes)]
        pos += n_codes * _CODE_STRUCTURE.size
        tables.append(_checked_table(t, codes))
    return tuple(tables)


def _code(table: int, k: int, prefix_bits: int, total_bits: int, mode: int, base_value: int,
          base_code: int) -> HuffmanCode:
    where = f"Huffman table {table} code structure {k}"
    if mode == 0:
        raise HuffmanUnsupportedError(f"{where} is a table switch code (table mode switch 0), which this reader does "
                           "not support (readers disagree on how switch targets are numbered)")
    if mode != 1:
        raise HuffmanError(f"{where} has table mode switch {mode}; only 0 and 1 are defined")
    if not 1 <= prefix_bits <= _MAX_CODE_BITS or not prefix_bits <= total_bits <= prefix_bits + _MAX_CODE_BITS:
        raise HuffmanError(f"{where} has {prefix_bits} prefix bits and {total_bits} bits in the entire code; "
                           f"needs 1-{_MAX_CODE_BITS} prefix bits and at least as many in the entire code")
    if base_code >> prefix_bits:
        raise HuffmanError(f"{where}: base code 0x{base_code:X} has bits set beyond its {prefix_bits} prefix bits")
    extra = total_bits - prefix_bits
    if extra and base_value:
        raise HuffmanUnsupportedError(f"{where} carries both original bits and a base value ({base_value}); readers "
                           "disagree on whether to add them, so it is not decoded")
    bits = "".join("1" if base_code >> i & 1 else "0" for i in range(prefix_bits))
    return HuffmanCode(bits, base_value, extra)


def _checked_table(table: int, codes: list[HuffmanCode]) -> HuffmanTable:
    ordered = sorted(codes, key=lambda c: c.bits)
    for a, b in zip(ordered, ordered[1:], strict=False):
        if b.bits.startswith(a.bits):
            raise HuffmanError(f"Huffman table {table}: code {a.bits!r} is a prefix of code {b.bits!r}, so the "
                               "table is ambiguous")
    return HuffmanTable(tuple(codes))


def decode_lead(data: bytes, n_samples: int, table: HuffmanTable) -> np.ndarray:
    """Decode ``n_samples`` values (before undoing differences) from one lead's bitstream."""
    return decode_lead_to(data, n_samples, table)[0]


def decode_lead_to(data: bytes, n_samples: int, table: HuffmanTable) -> tuple[np.ndarray, int]:
    """``decode_lead``, plus the number of bits the samples took (the rest is padding or more samples)."""
    lookup, lengths = table.lookup, table.prefix_lengths
    if n_samples > 8 * len(data) // lengths[0]:  # also keeps a hostile sample count from allocating memory
        raise HuffmanError(f"{len(data)} bytes of data cannot hold {n_samples} samples (the shortest code has "
                           f"{lengths[0]} bits); the lead data is truncated")
    bits = "".join(f"{byte:08b}" for byte in data)
    n_bits, pos = len(bits), 0
    out = np.empty(n_samples, dtype=np.int64)
    for k in range(n_samples):
        for length in lengths:
            if pos + length > n_bits:
                raise HuffmanError(_ended(k, n_samples, len(data)))
            code = lookup.get(bits[pos:pos + length])
            if code is not None:
                break
        else:
            raise HuffmanError(f"bits {bits[pos:pos + lengths[-1]]!r} at bit {pos} (sample {k + 1} of {n_samples}) "
                               "are not a code of the Huffman table")
        pos += length
        if code.extra_bits:
            if pos + code.extra_bits > n_bits:
                raise HuffmanError(_ended(k, n_samples, len(data)))
            raw = int(bits[pos:pos + code.extra_bits], 2)
            out[k] = raw - (1 << code.extra_bits) if raw >> (code.extra_bits - 1) else raw
            pos += code.extra_bits
        else:
            out[k] = code.value
    return out, pos


def _ended(k: int, n_samples: int, n_bytes: int) -> str:
    return (f"Huffman bitstream ends inside sample {k + 1} of {n_samples} ({n_bytes} bytes of data); the lead "
            "data is truncated")


def undo_differences(d: np.ndarray, order: int) -> np.ndarray:
    """Samples from first (x[n] = d[n] + x[n-1]) or second (x[n] = d[n] + 2x[n-1] - x[n-2]) differences.

    The first ``order`` values are samples themselves; order 0 returns the values unchanged.
    """
    if order == 0 or len(d) <= order:
        return d
    if order == 1:
        return np.cumsum(d)
    slope = np.cumsum(np.concatenate(([d[1] - d[0]], d[2:])))  # x[n] - x[n-1] for n >= 1
    return np.concatenate(([d[0]], d[0] + np.cumsum(slope)))
