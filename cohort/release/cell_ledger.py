"""The differencing ledger: who stood behind every cell a site released to a coordinator.

Two released counts whose patient sets differ by a few patients give those few away by subtraction
(a time window one day wider, a histogram edge moved by one, a subset that drops one criterion). The
site cannot know which of its answers a coordinator will subtract, but it can remember what it
released: per coordinator account, each released cell's patient set, as the keyed digests of
:mod:`cohort.release.secret` (never an identifier; the ledger never leaves the site). A new cell whose
set differs from an already released cell's set by 1 to ``min_cell - 1`` patients (symmetric
difference) is withheld. An identical set is released again (its value is the same one, noise
included, see ``cohort.release.secret.keyed_rng``).

Cost and limits: a check compares a new cell only with stored cells whose sizes are within
``min_cell - 1`` of its own (no set closer than that can differ by fewer patients), so it grows with
the number of released cells of similar size. It guards pairs of cells; a combination of three or more
released cells (A - B - C) can still isolate a small group. Such many-query attacks are bounded by the
differential-privacy mode (``disclosure.dp_epsilon``), not by this ledger.

SQLite (``STORE/release/cells.sqlite``); check and record run in one ``BEGIN IMMEDIATE`` transaction,
so two ClientApp processes answering at once cannot both release a differencing pair.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from cohort.release.secret import set_digest
from cohort.release.store_db import site_db

LEDGER_FILE = Path("release") / "cells.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS released_cells (
    account TEXT NOT NULL, set_digest TEXT NOT NULL, size INTEGER NOT NULL, members BLOB NOT NULL,
    first_released TEXT NOT NULL, PRIMARY KEY (account, set_digest));
CREATE INDEX IF NOT EXISTS released_cells_size ON released_cells (account, size);
"""


def symmetric_difference(a: np.ndarray, b: np.ndarray) -> int:
    """Patients in exactly one of two sorted, unique digest arrays."""
    both = np.intersect1d(a, b, assume_unique=True).size
    return int(a.size + b.size - 2 * both)


@dataclass
class LedgerCheck:
    """One answer's check against the ledger (inside the ledger's transaction)."""

    con: sqlite3.Connection
    account: str
    secret: bytes
    min_cell: int
    accepted: list[np.ndarray] = field(default_factory=list)  # sets accepted earlier in this answer
    reasons: dict[Any, str] = field(default_factory=dict)

    def conflict(self, members: np.ndarray) -> str | None:
        """Why a cell of these members may not be released, or None."""
        n, m = int(members.size), self.min_cell
        for other in self.accepted:
            if abs(other.size - n) < m and 0 < symmetric_difference(members, other) < m:
                return "it differs by fewer than the minimum cell from another cell of this answer"
        rows = self.con.execute("SELECT members, first_released FROM released_cells WHERE account = ? AND "
                                "size BETWEEN ? AND ?", (self.account, n - m + 1, n + m - 1))
        for blob, when in rows:
            if 0 < symmetric_difference(members, np.frombuffer(blob, dtype=np.uint64)) < m:
                return f"it differs by fewer than the minimum cell from a cell released on {when}"
        return None

    def check(self, cells: Mapping[Any, np.ndarray]) -> set[Any]:
        """Keys of ``cells`` (to be released, in order) that must be withheld; the rest are accepted."""
        self.accepted = []
        blocked = set()
        for key, members in cells.items():
            why = self.conflict(members)
            if why is None:
                self.accepted.append(members)
            else:
                blocked.add(key)
                self.reasons[key] = why
        return blocked

    def record(self, cells: Mapping[Any, np.ndarray]) -> None:
        now = datetime.now(UTC).isoformat(timespec="seconds")
        self.con.executemany(
            "INSERT OR IGNORE INTO released_cells VALUES (?, ?, ?, ?, ?)",
            [(self.account, set_digest(self.secret, m), int(m.size), m.astype(np.uint64).tobytes(), now)
             for m in cells.values()])


class CellLedger:
    """The differencing ledger of one site store."""

    def __init__(self, store: Path, secret: bytes) -> None:
        self.path = Path(store) / LEDGER_FILE
        self.secret = secret

    @contextmanager
    def answer(self, account: str, min_cell: int) -> Iterator[LedgerCheck]:
        """Check and record one answer atomically (the transaction commits when the block ends)."""
        with site_db(self.path, _SCHEMA, write=True) as con:
            yield LedgerCheck(con, account, self.secret, min_cell)

    def released_cells(self, account: str) -> int:
        if not self.path.exists():
            return 0
        with site_db(self.path, _SCHEMA) as con:
            (n,) = con.execute("SELECT count(*) FROM released_cells WHERE account = ?", (account,)).fetchone()
        return int(n)
