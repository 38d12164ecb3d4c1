"""Which cohort specs a site answered in which run, and what it released for them.

Training, evaluation, moments and final-model messages are accepted only for a spec the site already
answered in the same run's negotiation (``cohort.release.gate``): the gate records every answered
negotiation here and looks it up for every later message of the run. Kept per coordinator account
(the site's own setting) and Flower run id, in ``STORE/release/runs.sqlite``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cohort.release.store_db import site_db

RUNS_FILE = Path("release") / "runs.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS negotiated (
    account TEXT NOT NULL, run_id TEXT NOT NULL, spec_hash TEXT NOT NULL, released TEXT NOT NULL,
    time TEXT NOT NULL, PRIMARY KEY (account, run_id, spec_hash));
"""


class RunRegistry:
    """The negotiated specs of one site store."""

    def __init__(self, store: Path) -> None:
        self.path = Path(store) / RUNS_FILE

    def record(self, account: str, run_id: str, spec_hash: str, released: dict[str, Any]) -> None:
        """The site answered ``spec_hash`` in ``run_id`` with ``released`` (a later answer replaces it)."""
        with site_db(self.path, _SCHEMA, write=True) as con:
            con.execute("INSERT OR REPLACE INTO negotiated VALUES (?, ?, ?, ?, ?)",
                        (account, run_id, spec_hash, json.dumps(released, sort_keys=True),
                         datetime.now(UTC).isoformat(timespec="seconds")))

    def released(self, account: str, run_id: str, spec_hash: str) -> dict[str, Any] | None:
        """What the site released for ``spec_hash`` in ``run_id``, or None when it never answered it."""
        with site_db(self.path, _SCHEMA) as con:
            row = con.execute("SELECT released FROM negotiated WHERE account = ? AND run_id = ? AND spec_hash = ?",
                              (account, run_id, spec_hash)).fetchone()
        return json.loads(row[0]) if row else None

    def latest(self, account: str, spec_hash: str) -> dict[str, Any] | None:
        """What the site last released to ``account`` for ``spec_hash`` in any run, or None."""
        if not self.path.exists():
            return None
        with site_db(self.path, _SCHEMA) as con:
            row = con.execute("SELECT released FROM negotiated WHERE account = ? AND spec_hash = ? "
                              "ORDER BY time DESC, rowid DESC LIMIT 1", (account, spec_hash)).fetchone()
        return json.loads(row[0]) if row else None
