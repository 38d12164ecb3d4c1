"""A site's privacy ledger (``STORE/privacy_ledger.sqlite``): DP budget per coordinator, cached answers,
and the sets of sites it has been summed with.

* **Budget.** Each differentially private answer spends the policy's ``dp_epsilon`` from the account of
  the coordinator that asked (the account is the site's own setting, never a name the request claims);
  once ``dp_budget`` would be exceeded the site refuses and says so.
* **Cache.** A repeated identical query (same account, spec hash and minimum cell) gets the stored
  noisy answer and spends nothing, so the noise cannot be averaged away by asking again.
* **Secure sets.** For each spec a site has been securely summed for, the sets of co-contributors; a
  new sum of the same spec whose set differs from an earlier one by fewer than ``min_sites`` sites
  would let the two totals be differenced, so the site refuses to unmask it.

SQLite in one transaction per spend (``BEGIN IMMEDIATE``): two ClientApp processes answering at once
cannot both spend the last of a budget.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cohort.errors import DisclosureError
from cohort.release.store_db import site_db

LEDGER_FILE = "privacy_ledger.sqlite"
BUDGET_POLICY_KEY = "disclosure.dp_budget"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS dp_answers (
    account TEXT NOT NULL, query_key TEXT NOT NULL, epsilon REAL NOT NULL, released TEXT NOT NULL,
    run_id TEXT NOT NULL, time TEXT NOT NULL, PRIMARY KEY (account, query_key));
CREATE TABLE IF NOT EXISTS secure_sets (
    account TEXT NOT NULL, spec_key TEXT NOT NULL, members TEXT NOT NULL, time TEXT NOT NULL);
"""


class BudgetExhaustedError(DisclosureError):
    """The coordinator's privacy budget at this site would be exceeded by another answer."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class PrivacyLedger:
    """The ledger of one site store."""

    def __init__(self, store: Path) -> None:
        self.path = Path(store) / LEDGER_FILE

    def _db(self, write: bool = False) -> AbstractContextManager[sqlite3.Connection]:
        return site_db(self.path, _SCHEMA, write=write, timeout=30)

    def spent(self, account: str) -> float:
        """Epsilon spent so far by ``account``."""
        with self._db() as con:
            (value,) = con.execute("SELECT COALESCE(SUM(epsilon), 0) FROM dp_answers WHERE account = ?",
                                   (account,)).fetchone()
        return float(value)

    def cached(self, account: str, query_key: str) -> dict[str, Any] | None:
        """The stored answer to an identical earlier query, or None."""
        with self._db() as con:
            row = con.execute("SELECT released FROM dp_answers WHERE account = ? AND query_key = ?",
                              (account, query_key)).fetchone()
        return json.loads(row[0]) if row else None

    def check_budget(self, account: str, epsilon: float, budget: float) -> None:
        """Raise BudgetExhaustedError when one more answer of ``epsilon`` would exceed ``budget``."""
        spent = self.spent(account)
        if spent + epsilon > budget + 1e-9:
            raise BudgetExhaustedError(_exhausted(account, spent, epsilon, budget))

    def spend(self, account: str, query_key: str, epsilon: float, budget: float, released: dict[str, Any],
              run_id: str) -> tuple[dict[str, Any], bool, float]:
        """Store ``released`` and spend ``epsilon``, atomically.

        Returns (the answer to send, whether it is new, epsilon spent after). When another process
        answered the same query meanwhile, its answer is returned and nothing more is spent.
        """
        with self._db(write=True) as con:
            row = con.execute("SELECT released FROM dp_answers WHERE account = ? AND query_key = ?",
                              (account, query_key)).fetchone()
            (spent,) = con.execute("SELECT COALESCE(SUM(epsilon), 0) FROM dp_answers WHERE account = ?",
                                   (account,)).fetchone()
            if row:
                return json.loads(row[0]), False, float(spent)
            if spent + epsilon > budget + 1e-9:
                raise BudgetExhaustedError(_exhausted(account, float(spent), epsilon, budget))
            con.execute("INSERT INTO dp_answers VALUES (?, ?, ?, ?, ?, ?)",
                        (account, query_key, epsilon, json.dumps(released, sort_keys=True), run_id, _now()))
        return released, True, float(spent) + epsilon

    def secure_sets(self, account: str, spec_key: str) -> list[frozenset[str]]:
        """Sets of sites this site has been securely summed with for ``spec_key``."""
        with self._db() as con:
            rows = con.execute("SELECT members FROM secure_sets WHERE account = ? AND spec_key = ?",
                               (account, spec_key)).fetchall()
        return [frozenset(json.loads(r[0])) for r in rows]

    def record_secure_set(self, account: str, spec_key: str, members: frozenset[str]) -> None:
        with self._db(write=True) as con:
            con.execute("INSERT INTO secure_sets VALUES (?, ?, ?, ?)",
                        (account, spec_key, json.dumps(sorted(members)), _now()))


def _exhausted(account: str, spent: float, epsilon: float, budget: float) -> str:
    return (f"query refused: the privacy budget of coordinator {account!r} at this site is exhausted "
            f"(spent epsilon {spent:g} of {budget:g}, {BUDGET_POLICY_KEY}; this answer would cost {epsilon:g}); "
            "repeat an earlier query to get its cached answer")


def differencing_risk(previous: list[frozenset[str]], members: frozenset[str], min_sites: int) -> frozenset[str] | None:
    """An earlier set whose symmetric difference with ``members`` is 1 .. min_sites-1 sites, or None."""
    for earlier in previous:
        if 0 < len(earlier ^ members) < min_sites:
            return earlier
    return None
