"""The SQLite files a site's release state lives in (``STORE/release/*.sqlite``, ``STORE/privacy_ledger.sqlite``).

One way to open them: the schema created on every open, and, for writes, one ``BEGIN IMMEDIATE``
transaction, so two ClientApp processes answering at once serialise (a check and the record it
depends on cannot interleave), committed when the block ends and rolled back on any error.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def site_db(path: Path, schema: str, *, write: bool = False, timeout: float = 60) -> Iterator[sqlite3.Connection]:
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path, timeout=timeout, isolation_level=None)
    try:
        con.executescript(schema)
        if write:
            con.execute("BEGIN IMMEDIATE")
        yield con
        if write:
            con.execute("COMMIT")
    except BaseException:
        if con.in_transaction:
            con.execute("ROLLBACK")
        raise
    finally:
        con.close()
