"""The dashboard's operations, independent of HTTP: fields, query, load, save, export.

Every method takes and returns plain JSON-able data; problems a person can fix raise ``ApiError``
with a readable message (the server turns it into a JSON error, the page shows it).
"""

from __future__ import annotations

import functools
import json
import re
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import pydantic
import yaml

from cohort.dashboard.charts import KIND_TITLES, ChartIndex
from cohort.dashboard.state import Action, DashboardState, apply_action, spec_to_state, state_to_spec
from cohort.errors import CohortError
from cohort.index.compile_duck import compile_spec, evaluate
from cohort.index.duck import INDEX_FILE, DuckIndex
from cohort.results import CohortCounts
from cohort.spec.load import load_spec, parse_spec, spec_to_yaml
from cohort.spec.model import CohortSpec, Label
from cohort.spec.render import spec_to_text
from cohort.spec.text import parse_text

SAVE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
EXPORTS_DIR = "exports"
# The mission's outcome; the starting page shows its balance when the store's templates define it.
DEFAULT_LABEL_TEMPLATE, DEFAULT_LABEL_FIELD = "procedures", "pacemaker_after_tavi"


class ApiError(CohortError):
    """A request the dashboard cannot serve; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _parse_model(model: type[pydantic.BaseModel], data: Any, what: str) -> Any:
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ApiError(f"invalid {what}: {where}: {first['msg']}") from None


CACHE_SIZE = 64


class _ServingIndex(DuckIndex):
    """A read-only index whose catalog is read once (template configs cannot change while serving)."""

    @functools.cached_property
    def catalog(self) -> dict[str, Any]:  # type: ignore[override]
        return super().catalog


def _trim(cache: OrderedDict[str, Any]) -> None:
    while len(cache) > CACHE_SIZE:
        cache.popitem(last=False)


class Dashboard:
    """One store's dashboard: a read-only index connection, its catalog and chart definitions.

    DuckDB connections are not safe to share between threads, so requests run one at a time (the
    dashboard is a local, single-user tool; an update takes milliseconds).
    """

    def __init__(self, store: str | Path, *, configs_dir: str | Path | None = None) -> None:
        self.store = Path(store)
        if not self.store.is_dir():
            raise ApiError(f"store folder {self.store} does not exist; pass --store with the folder "
                           "'cohort ingest' wrote")
        self.configs_dir = Path(configs_dir) if configs_dir is not None else Path.cwd() / "configs" / "cohort"
        self.lock = threading.Lock()
        self.index: DuckIndex | None = None
        self.present: list[tuple[str, str | None]] = []
        self.chart_index: ChartIndex | None = None
        self.patients = 0
        # Results per spec (counts) and per cohort (charts): the index is read-only while serving.
        self._counts: OrderedDict[str, CohortCounts] = OrderedDict()
        self._charts_cache: OrderedDict[str, dict[str, Any]] = OrderedDict()
        if (self.store / INDEX_FILE).is_file():
            self.index = _ServingIndex(self.store / INDEX_FILE, read_only=True)
            self.catalog = self.index.catalog
            con = self.index.con
            self.present = [(k, t) for k, t in con.execute(
                "SELECT DISTINCT kind, template FROM entities ORDER BY kind, template NULLS FIRST").fetchall()]
            row = con.execute("SELECT count(DISTINCT patient_id) FROM entities").fetchone()
            self.patients = int(row[0]) if row else 0
            if self.present:  # charts run on a connection of their own, next to evaluate() on the index's
                self.chart_index = ChartIndex.build(con.cursor(), self.catalog)
        else:
            from cohort.index.catalog import field_catalog

            self.catalog = field_catalog()

    @property
    def charts(self) -> list[Any]:
        """The store's chart definitions (empty without an index)."""
        return self.chart_index.charts if self.chart_index is not None else []

    def clear_cache(self) -> None:
        """Forget cached counts and charts (benchmarks measure uncached updates)."""
        self._counts.clear()
        self._charts_cache.clear()

    def close(self) -> None:
        """Close the index connections."""
        if self.chart_index is not None:
            self.chart_index.con.close()
        if self.index is not None:
            self.index.close()

    # --- reading ------------------------------------------------------------------------------------
    def _require_index(self) -> DuckIndex:
        if self.index is None or not self.present:
            raise ApiError(f"the store {self.store} has no indexed objects yet; run "
                           f"'cohort ingest RAW_DIR --store {self.store}' and restart 'cohort serve'", 409)
        return self.index

    def fields(self) -> dict[str, Any]:
        """The catalog grouped by object kind (and SR template), with which fields have charts."""
        charted = {(c.kind, c.template, c.field): c for c in self.charts}
        groups = []
        for kind, template in self.present:
            fields = []
            for name, info in sorted(self.catalog.items()):
                if not info.available_for(kind, template):
                    continue
                chart = charted.get((kind, template or "", name))
                fields.append({"name": name, "value_type": info.value_type, "unit": info.unit or "",
                               "description": info.description, "operators": list(info.operators),
                               "aliases": sorted({a for a, _ in info.aliases}),
                               "chart": chart.type if chart else None})
            title = f"SR: {template}" if template else KIND_TITLES.get(kind, kind)
            groups.append({"kind": kind, "template": template, "title": title, "fields": fields})
        return {"store": str(self.store), "patients": self.patients, "objects": groups,
                "message": None if self.present else
                f"the store {self.store} has no indexed objects; run 'cohort ingest' first"}

    def initial_state(self) -> DashboardState:
        """The starting page: no filter, and the mission's label when the store can express it."""
        info = self.catalog.get(DEFAULT_LABEL_FIELD)
        if info is None or not info.available_for("SR", DEFAULT_LABEL_TEMPLATE) or \
                ("SR", DEFAULT_LABEL_TEMPLATE) not in self.present:
            return DashboardState()
        outcome = {"kind": "SR", "template": DEFAULT_LABEL_TEMPLATE,
                   "where": [{"field": DEFAULT_LABEL_FIELD, "op": "exists"}]}
        return DashboardState.model_validate({
            "objects": {"outcome": outcome},
            "label": Label(object="outcome", field=DEFAULT_LABEL_FIELD, positive=[True], negative=[False]),
            "subsets": {"labelled": "outcome"}})

    # --- the update -----------------------------------------------------------------------------------
    def query(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Counts, charts, spec (YAML and text) for ``payload``: ``{state, action?}`` or ``{spec}``."""
        if "spec" in payload and payload["spec"] is not None:
            spec = self._spec_from_dict(payload["spec"])
            return self.result_for_spec(spec)
        state = _parse_model(DashboardState, payload.get("state") or {}, "dashboard state")
        if payload.get("action"):
            action = _parse_model(Action, payload["action"], "action")
            try:
                state = apply_action(state, action)
            except CohortError as err:
                raise ApiError(str(err)) from None
        return self._result(state)

    def _spec_from_dict(self, data: Any) -> CohortSpec:
        if not isinstance(data, Mapping):
            raise ApiError("'spec' must be a cohort spec object (objects, cohort, ...)")
        try:
            return parse_spec(data, catalog=self.catalog)
        except CohortError as err:
            raise ApiError(str(err)) from None

    def result_for_spec(self, spec: CohortSpec) -> dict[str, Any]:
        """Load ``spec`` into the page: its state, counts and charts."""
        return self._result(spec_to_state(spec))

    def _result(self, state: DashboardState) -> dict[str, Any]:
        index = self._require_index()
        try:
            spec, notices = state_to_spec(state, self.present, catalog=self.catalog)
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

        with self.lock:
            try:
                # Counts and charts on two connections at once: DuckDB runs them side by side.
                with ThreadPoolExecutor(max_workers=1) as pool:
                    charts_job = pool.submit(timed, "charts_ms", self._charts, index, spec, state)
                    counts = timed("counts_ms", self._evaluate, index, spec)
                    charts = charts_job.result()
            except CohortError as err:
                raise ApiError(str(err)) from None
        elapsed = (time.perf_counter() - t0) * 1000
        # The state is given back as the spec reads: what was pruned is gone from the page too.
        return {"state": spec_to_state(spec).model_dump(mode="json"),
                "spec": spec.to_dict(), "yaml": spec_to_yaml(spec), "text": spec_to_text(spec),
                "counts": counts.to_json(), "notices": notices, "elapsed_ms": round(elapsed, 1),
                "timings": timings, **charts}

    def _evaluate(self, index: DuckIndex, spec: CohortSpec) -> CohortCounts:
        key = json.dumps(spec.to_dict(), sort_keys=True)
        if key not in self._counts:
            self._counts[key] = evaluate(index, spec)
            _trim(self._counts)
        self._counts.move_to_end(key)
        return self._counts[key]

    def _charts(self, index: DuckIndex, spec: CohortSpec, state: DashboardState) -> dict[str, Any]:
        """Chart bars for the cohort of ``spec``; charts do not depend on label, subsets or name."""
        assert self.chart_index is not None
        matched_groups: dict[tuple[str, str], str] = {}
        for group in state.groups:
            key = (group.kind, group.template or "")
            if not group.negated and key not in matched_groups:
                matched_groups[key] = group.id
        cohort_part = spec.model_copy(update={"name": "cohort", "description": "", "label": None, "subsets": {},
                                              "distributions": []})
        cache_key = json.dumps([cohort_part.to_dict(), sorted(matched_groups.items())], sort_keys=True)
        if cache_key not in self._charts_cache:
            query = compile_spec(cohort_part, index, prefix=f"_dash{uuid.uuid4().hex[:8]}_")
            matched = {k: query.objects[name] for k, name in matched_groups.items() if name in query.objects}
            self._charts_cache[cache_key] = self.chart_index.compute(query, matched, self.catalog)
            _trim(self._charts_cache)
        self._charts_cache.move_to_end(cache_key)
        return self._charts_cache[cache_key]

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
        try:
            if isinstance(data, Mapping) and ({"objects", "cohort"} & set(data)):
                if "defaults" in data:
                    raise ApiError("this YAML uses Hydra 'defaults'; save it under configs/cohort and open it "
                                   "from the list of saved specs, which composes it")
                spec = parse_spec(data, catalog=self.catalog)
            else:
                spec = parse_text(source, catalog=self.catalog)
        except ApiError:
            raise
        except CohortError as err:
            raise ApiError(str(err)) from None
        return self.result_for_spec(spec)

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
        try:
            spec = load_spec(path, catalog=self.catalog, search_paths=(self.configs_dir,))
        except CohortError as err:
            raise ApiError(str(err)) from None
        return self.result_for_spec(spec)

    def spec_of(self, payload: Mapping[str, Any]) -> CohortSpec:
        """The spec of ``{state}`` (what the page shows)."""
        state = _parse_model(DashboardState, payload.get("state") or {}, "dashboard state")
        self._require_index()
        try:
            return state_to_spec(state, self.present, catalog=self.catalog)[0]
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
