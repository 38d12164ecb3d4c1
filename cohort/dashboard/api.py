"""The dashboard's operations, independent of HTTP: fields, query, load, save, export.

Every method takes and returns plain JSON-able data; problems a person can fix raise ``ApiError``
with a readable message (the server turns it into a JSON error, the page shows it).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import pydantic
import yaml

from cohort.dashboard.charts import KIND_TITLES, ChartIndex
from cohort.dashboard.snapshot import Lane, Snapshot
from cohort.dashboard.state import Action, DashboardState, apply_action, spec_to_state, state_to_spec
from cohort.dashboard.web import HttpError
from cohort.errors import CohortError
from cohort.index.compile_duck import compile_spec, evaluate
from cohort.index.publish import SnapshotIndex, index_version
from cohort.results import CohortCounts
from cohort.spec.load import load_spec, parse_spec, spec_to_yaml
from cohort.spec.model import CohortSpec, Label
from cohort.spec.render import spec_to_text
from cohort.spec.text import parse_text

SAVE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
EXPORTS_DIR = "exports"
# The mission's outcome; the starting page shows its balance when the store's templates define it.
DEFAULT_LABEL_TEMPLATE, DEFAULT_LABEL_FIELD = "procedures", "pacemaker_after_tavi"
log = logging.getLogger(__name__)


class ApiError(HttpError):
    """A request the dashboard cannot serve; ``status`` is the HTTP status to answer with."""


def _parse_model(model: type[pydantic.BaseModel], data: Any, what: str) -> Any:
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ApiError(f"invalid {what}: {where}: {first['msg']}") from None


WATCH_INTERVAL_S = 1.0  # how often the server looks for a newly published index version


class Dashboard:
    """One store's dashboard: the snapshot of its current index version, and every page operation.

    Several users can query at once. When an ingest or reindex publishes a new index version
    (``cohort.index.publish``), ``poll`` (the server calls it every second) opens it next to the
    old one, then swaps: requests already running finish on the old snapshot, new ones get the new
    one, and the page (which sees the version change) offers to refresh its counts.
    """

    def __init__(self, store: str | Path, *, configs_dir: str | Path | None = None, caching: bool = True) -> None:
        """``caching=False`` computes every answer afresh (benchmarks of concurrent users)."""
        self.store = Path(store)
        self.caching = caching
        if not self.store.is_dir():
            raise ApiError(f"store folder {self.store} does not exist; pass --store with the folder "
                           "'cohort ingest' wrote")
        self.configs_dir = Path(configs_dir) if configs_dir is not None else Path.cwd() / "configs" / "cohort"
        self.lock = threading.Lock()  # exports one at a time
        self._swap = threading.Lock()
        self._loading = threading.Lock()
        self._snapshot = Snapshot(self.store, caching=caching)
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self.load_error: str | None = None

    # --- the served snapshot ------------------------------------------------------------------------
    @property
    def snapshot(self) -> Snapshot:
        """The snapshot new requests use."""
        return self._snapshot

    @property
    def index(self) -> SnapshotIndex | None:
        """The current snapshot's index (tests and benchmarks read it; requests use their own cursors)."""
        return self._snapshot.index

    @property
    def catalog(self) -> dict[str, Any]:
        return self._snapshot.catalog

    @property
    def present(self) -> list[tuple[str, str | None]]:
        return self._snapshot.present

    @property
    def patients(self) -> int:
        return self._snapshot.patients

    @property
    def chart_index(self) -> ChartIndex | None:
        return self._snapshot.chart_index

    @property
    def charts(self) -> list[Any]:
        """The store's chart definitions (empty without an index)."""
        return self.chart_index.charts if self.chart_index is not None else []

    @contextmanager
    def _use(self) -> Iterator[Snapshot]:
        with self._swap:
            snap = self._snapshot
            snap.users += 1
        try:
            yield snap
        finally:
            with self._swap:
                snap.users -= 1
                done = snap.retired and snap.users == 0
            if done:
                snap.close()

    def poll(self) -> bool:
        """Serve the store's newest published index if it changed; True when it swapped."""
        current = index_version(self.store)
        if current == self._snapshot.version or not self._loading.acquire(blocking=False):
            return False
        try:
            if current == self._snapshot.version:
                return False
            try:
                fresh = Snapshot(self.store, caching=self.caching)
            except (CohortError, duckdb.Error) as err:  # e.g. an index of an older version being upgraded
                self.load_error = f"cannot open the new index yet: {err}"
                log.warning("dashboard: %s", self.load_error)
                return False
            self.load_error = None
            with self._swap:
                old, self._snapshot = self._snapshot, fresh
                old.retired = True
                idle = old.users == 0
            if idle:
                old.close()
            log.info("dashboard: serving index version %s (%d patients)", fresh.token, fresh.patients)
            return True
        finally:
            self._loading.release()

    def watch(self, interval_s: float = WATCH_INTERVAL_S) -> None:
        """Poll for new index versions in a background thread until ``close``."""
        def loop() -> None:
            while not self._stop.wait(interval_s):
                try:
                    self.poll()
                except Exception:  # noqa: BLE001 - keep serving the old version; the log says why
                    log.exception("dashboard: checking for a new index failed")

        if self._watcher is None:
            self._watcher = threading.Thread(target=loop, name="dashboard-index-watch", daemon=True)
            self._watcher.start()

    def version(self) -> dict[str, Any]:
        """The index version served now (the page compares it with the one its counts came from)."""
        snap = self._snapshot
        v = snap.version
        return {"version": snap.token, "number": v.number if v else None, "published": v.published if v else None,
                "patients": snap.patients, "loading": self._loading.locked(), "error": self.load_error}

    def clear_cache(self) -> None:
        """Forget cached counts and charts (benchmarks measure uncached updates)."""
        self._snapshot.clear_cache()

    def close(self) -> None:
        """Stop watching and close the index connections."""
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        with self._swap:
            snap = self._snapshot
            snap.retired = True
            idle = snap.users == 0
        if idle:
            snap.close()

    # --- reading ------------------------------------------------------------------------------------
    def _require_index(self, snap: Snapshot) -> SnapshotIndex:
        if snap.index is None or not snap.present:
            raise ApiError(f"the store {self.store} has no indexed objects yet; run "
                           f"'cohort ingest RAW_DIR --store {self.store}': the page picks the new index up "
                           "when it is done", 409)
        return snap.index

    def fields(self) -> dict[str, Any]:
        """The catalog grouped by object kind (and SR template), with which fields have charts."""
        with self._use() as snap:
            charted = {(c.kind, c.template, c.field): c
                       for c in (snap.chart_index.charts if snap.chart_index is not None else [])}
            groups = []
            for kind, template in snap.present:
                fields = []
                for name, info in sorted(snap.catalog.items()):
                    if not info.available_for(kind, template):
                        continue
                    chart = charted.get((kind, template or "", name))
                    fields.append({"name": name, "value_type": info.value_type, "unit": info.unit or "",
                                   "description": info.description, "operators": list(info.operators),
                                   "aliases": sorted({a for a, _ in info.aliases}),
                                   "chart": chart.type if chart else None})
                title = f"SR: {template}" if template else KIND_TITLES.get(kind, kind)
                groups.append({"kind": kind, "template": template, "title": title, "fields": fields})
            return {"store": str(self.store), "patients": snap.patients, "objects": groups,
                    "index_version": snap.token,
                    "message": None if snap.present else
                    f"the store {self.store} has no indexed objects; run 'cohort ingest' first"}

    def initial_state(self) -> DashboardState:
        """The starting page: no filter, and the mission's label when the store can express it."""
        return self._initial_state(self._snapshot)

    @staticmethod
    def _initial_state(snap: Snapshot) -> DashboardState:
        info = snap.catalog.get(DEFAULT_LABEL_FIELD)
        if info is None or not info.available_for("SR", DEFAULT_LABEL_TEMPLATE) or \
                ("SR", DEFAULT_LABEL_TEMPLATE) not in snap.present:
            return DashboardState()
        outcome = {"kind": "SR", "template": DEFAULT_LABEL_TEMPLATE,
                   "where": [{"field": DEFAULT_LABEL_FIELD, "op": "exists"}]}
        return DashboardState.model_validate({
            "objects": {"outcome": outcome},
            "label": Label(object="outcome", field=DEFAULT_LABEL_FIELD, positive=[True], negative=[False]),
            "subsets": {"labelled": "outcome"}})

    def initial(self) -> dict[str, Any]:
        """The starting page with its counts and charts (one snapshot for both)."""
        with self._use() as snap:
            return self._result(snap, self._initial_state(snap))

    # --- the update -----------------------------------------------------------------------------------
    def query(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Counts, charts, spec (YAML and text) for ``payload``: ``{state, action?}`` or ``{spec}``."""
        with self._use() as snap:
            if "spec" in payload and payload["spec"] is not None:
                return self._result(snap, spec_to_state(self._spec_from_dict(snap, payload["spec"])))
            state = _parse_model(DashboardState, payload.get("state") or {}, "dashboard state")
            if payload.get("action"):
                action = _parse_model(Action, payload["action"], "action")
                try:
                    state = apply_action(state, action)
                except CohortError as err:
                    raise ApiError(str(err)) from None
            return self._result(snap, state)

    @staticmethod
    def _spec_from_dict(snap: Snapshot, data: Any) -> CohortSpec:
        if not isinstance(data, Mapping):
            raise ApiError("'spec' must be a cohort spec object (objects, cohort, ...)")
        try:
            return parse_spec(data, catalog=snap.catalog)
        except CohortError as err:
            raise ApiError(str(err)) from None

    def result_for_spec(self, spec: CohortSpec) -> dict[str, Any]:
        """Load ``spec`` into the page: its state, counts and charts."""
        with self._use() as snap:
            return self._result(snap, spec_to_state(spec))

    def _result(self, snap: Snapshot, state: DashboardState) -> dict[str, Any]:
        self._require_index(snap)
        try:
            spec, notices = state_to_spec(state, snap.present, catalog=snap.catalog)
        except CohortError as err:
            raise ApiError(str(err)) from None
        t0 = time.perf_counter()
        timings: dict[str, float] = {}

        def timed(name: str, fn: Any, *args: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args)
            finally:
                timings[name] = round((time.perf_counter() - start) * 1000, 1)

        with snap.lane() as lane:
            try:
                # Counts and charts on the lane's two connections at once: DuckDB runs them side by side.
                charts_job = lane.pool.submit(timed, "charts_ms", self._charts, snap, lane, spec, state)
                counts = timed("counts_ms", self._evaluate, snap, lane, spec)
                charts = charts_job.result()
            except CohortError as err:
                raise ApiError(str(err)) from None
        elapsed = (time.perf_counter() - t0) * 1000
        # The state is given back as the spec reads: what was pruned is gone from the page too.
        return {"state": spec_to_state(spec).model_dump(mode="json"),
                "spec": spec.to_dict(), "yaml": spec_to_yaml(spec), "text": spec_to_text(spec),
                "counts": counts.to_json(), "notices": notices, "elapsed_ms": round(elapsed, 1),
                "timings": timings, "index_version": snap.token, "patients_indexed": snap.patients, **charts}

    @staticmethod
    def _evaluate(snap: Snapshot, lane: Lane, spec: CohortSpec) -> CohortCounts:
        key = json.dumps(spec.to_dict(), sort_keys=True)
        counts: CohortCounts = snap.cached(snap._counts, key, lambda: evaluate(lane.index, spec))
        return counts

    @staticmethod
    def _charts(snap: Snapshot, lane: Lane, spec: CohortSpec, state: DashboardState) -> dict[str, Any]:
        """Chart bars for the cohort of ``spec``; charts do not depend on label, subsets or name."""
        charts = lane.charts
        assert charts is not None
        matched_groups: dict[tuple[str, str], str] = {}
        for group in state.groups:
            key = (group.kind, group.template or "")
            if not group.negated and key not in matched_groups:
                matched_groups[key] = group.id
        cohort_part = spec.model_copy(update={"name": "cohort", "description": "", "label": None, "subsets": {},
                                              "distributions": []})
        cache_key = json.dumps([cohort_part.to_dict(), sorted(matched_groups.items())], sort_keys=True)

        def compute() -> dict[str, Any]:
            query = compile_spec(cohort_part, lane.index, prefix=f"_dash{uuid.uuid4().hex[:8]}_")
            matched = {k: query.objects[name] for k, name in matched_groups.items() if name in query.objects}
            return charts.compute(query, matched, snap.catalog)

        result: dict[str, Any] = snap.cached(snap._charts_cache, cache_key, compute)
        return result

    # --- loading specs --------------------------------------------------------------------------------
    def load_source(self, source: str) -> dict[str, Any]:
        """A text query or a YAML spec typed on the page (YAML when it is a mapping with spec keys)."""
        if not source or not source.strip():
            raise ApiError("type a text query (e.g. 'ecg := SR:ecg_report[qrs_duration >= 120 ms]; cohort ecg') "
                           "or paste a YAML spec")
        try:
            data = yaml.safe_load(source)
        except yaml.YAMLError:
            data = None
        with self._use() as snap:
            try:
                if isinstance(data, Mapping) and ({"objects", "cohort"} & set(data)):
                    if "defaults" in data:
                        raise ApiError("this YAML uses Hydra 'defaults'; save it under configs/cohort and open "
                                       "it from the list of saved specs, which composes it")
                    spec = parse_spec(data, catalog=snap.catalog)
                else:
                    spec = parse_text(source, catalog=snap.catalog)
            except ApiError:
                raise
            except CohortError as err:
                raise ApiError(str(err)) from None
            return self._result(snap, spec_to_state(spec))

    def saved_specs(self) -> list[str]:
        """Names of the spec files in the configs folder."""
        if not self.configs_dir.is_dir():
            return []
        return sorted(p.stem for p in self.configs_dir.glob("*.yaml"))

    def load_saved(self, name: str) -> dict[str, Any]:
        """A spec file of the configs folder, composed with Hydra like ``cohort query --spec`` does."""
        if not SAVE_NAME_RE.match(name or ""):
            raise ApiError(f"invalid spec name {name!r}")
        path = self.configs_dir / f"{name}.yaml"
        if not path.is_file():
            raise ApiError(f"no spec {name!r} in {self.configs_dir}; saved specs: "
                           f"{', '.join(self.saved_specs()) or 'none'}", 404)
        with self._use() as snap:
            try:
                spec = load_spec(path, catalog=snap.catalog, search_paths=(self.configs_dir,))
            except CohortError as err:
                raise ApiError(str(err)) from None
            return self._result(snap, spec_to_state(spec))

    def spec_of(self, payload: Mapping[str, Any]) -> CohortSpec:
        """The spec of ``{state}`` (what the page shows)."""
        state = _parse_model(DashboardState, payload.get("state") or {}, "dashboard state")
        with self._use() as snap:
            self._require_index(snap)
            try:
                return state_to_spec(state, snap.present, catalog=snap.catalog)[0]
            except CohortError as err:
                raise ApiError(str(err)) from None

    # --- writing --------------------------------------------------------------------------------------
    def save(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Write the page's spec to ``configs/cohort/<name>.yaml`` (refuses to overwrite unless asked)."""
        name = str(payload.get("name") or "")
        if not SAVE_NAME_RE.match(name):
            raise ApiError(f"invalid name {name!r}: use 1-64 letters, digits, '_' or '-', starting with a "
                           "letter or digit (it becomes the file name)")
        spec = self.spec_of(payload)
        spec = spec.model_copy(update={"name": name})
        path = self.configs_dir / f"{name}.yaml"
        if path.exists() and not payload.get("overwrite"):
            raise ApiError(f"{path} exists; choose another name or confirm overwriting it", 409)
        self.configs_dir.mkdir(parents=True, exist_ok=True)
        text = f"# Saved by 'cohort serve' from {self.store} on {datetime.now():%Y-%m-%d %H:%M}.\n" + spec_to_yaml(spec)
        tmp = path.with_suffix(".yaml.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
        return {"path": str(path), "name": name}

    def export(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Run the cohort export of the page's spec into ``STORE/exports/<name>-<time>``."""
        from cohort.export import export_cohort

        name = str(payload.get("name") or "dashboard")
        if not SAVE_NAME_RE.match(name):
            raise ApiError(f"invalid export name {name!r}: use letters, digits, '_' or '-'")
        subset = payload.get("subset") or None
        spec = self.spec_of(payload)
        out = self.store / EXPORTS_DIR / f"{name}-{datetime.now():%Y%m%d-%H%M%S}"
        with self.lock:
            try:
                result = export_cohort(self.store, spec, out, subset=subset)
            except CohortError as err:
                raise ApiError(str(err)) from None
        return {"out": str(result.out), "cohort_hash": result.cohort_hash, "patients": result.patients,
                "with_ct": result.with_ct, "with_ecg": result.with_ecg,
                "datalist": str(result.out / "datalist.json")}
