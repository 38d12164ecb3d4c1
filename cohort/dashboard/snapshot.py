"""One published index version as the dashboard serves it: connections, chart tables, result caches."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cohort.dashboard.charts import ChartIndex
from cohort.index.catalog import store_catalog
from cohort.index.publish import IndexVersion, SnapshotIndex, index_version
from cohort.results import CohortCounts

CACHE_SIZE = 64
MAX_LANES = 4  # requests computed at once per index version (more wait for a free connection pair)


def _trim(cache: OrderedDict[str, Any]) -> None:
    while len(cache) > CACHE_SIZE:
        cache.popitem(last=False)


class Lane:
    """A connection pair of one snapshot for one request at a time: counts and charts side by side."""

    def __init__(self, snap: Snapshot) -> None:
        assert snap.index is not None
        self.index = snap.index.cursor()
        self.charts = snap.chart_index.on(snap.index.cursor().con) if snap.chart_index is not None else None
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dashboard-charts")

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        if self.charts is not None:
            self.charts.con.close()
        self.index.close()


class Snapshot:
    """One published version of the store's index as the dashboard serves it.

    Everything a response reads comes from one snapshot (counts, charts, catalog), so a response is
    all old or all new data. Results are cached per spec (counts) and per cohort (charts): a
    snapshot never changes. Requests run on up to ``MAX_LANES`` connection pairs at once.
    """

    def __init__(self, store: Path, *, caching: bool = True) -> None:
        self.version: IndexVersion | None = index_version(store)
        self.index: SnapshotIndex | None = None
        self.present: list[tuple[str, str | None]] = []
        self.chart_index: ChartIndex | None = None
        self.patients = 0
        self._counts: OrderedDict[str, CohortCounts] = OrderedDict()
        self._charts_cache: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._lanes: list[Lane] = []
        self._free: list[Lane] = []
        self._lane_cond = threading.Condition()
        self.caching = caching
        self.users = 0  # requests using this snapshot now (Dashboard counts them)
        self.retired = False
        if self.version is None:
            self.catalog = store_catalog(store)
            return
        self.index = SnapshotIndex.open(store)
        self.version = index_version(store) if self.index.version != self.version.number else self.version
        self.catalog = store_catalog(store)  # the one catalog of this store, as every entry point reads it
        con = self.index.con
        self.present = [(k, t) for k, t in con.execute(
            "SELECT DISTINCT kind, template FROM entities ORDER BY kind, template NULLS FIRST").fetchall()]
        row = con.execute("SELECT count(DISTINCT patient_id) FROM entities").fetchone()
        self.patients = int(row[0]) if row else 0
        if self.present:
            self.chart_index = ChartIndex.build(self.index.cursor().con, self.catalog)

    @property
    def token(self) -> str | None:
        """The index version this snapshot serves (changes with every published ingest or reindex)."""
        return self.version.token if self.version is not None else None

    @contextmanager
    def lane(self) -> Iterator[Lane]:
        """A free connection pair (a new one while fewer than MAX_LANES exist, else wait for one)."""
        with self._lane_cond:
            while not self._free and len(self._lanes) >= MAX_LANES:
                self._lane_cond.wait()
            if self._free:
                lane = self._free.pop()
            else:
                lane = Lane(self)
                self._lanes.append(lane)
        try:
            yield lane
        finally:
            with self._lane_cond:
                self._free.append(lane)
                self._lane_cond.notify()

    def cached(self, cache: OrderedDict[str, Any], key: str, compute: Any) -> Any:
        """``cache[key]``, computed by ``compute()`` outside the lock when missing (always, without caching)."""
        if not self.caching:
            return compute()
        with self._cache_lock:
            if key in cache:
                cache.move_to_end(key)
                return cache[key]
        value = compute()
        with self._cache_lock:
            cache[key] = value
            _trim(cache)
        return value

    def clear_cache(self) -> None:
        with self._cache_lock:
            self._counts.clear()
            self._charts_cache.clear()

    def close(self) -> None:
        for lane in self._lanes:
            lane.close()
        self._lanes, self._free = [], []
        if self.chart_index is not None:
            self.chart_index.con.close()
        if self.index is not None:
            self.index.close()
