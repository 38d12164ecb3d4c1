"""``cohort query``, ``cohort export``, ``cohort reindex`` and ``cohort fields``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cohort.cli import app
from cohort.cli.progress import console, progress_callback
from cohort.errors import SpecError
from cohort.spec.model import CohortSpec


def _spec(store: Path | None, spec: Path | None, text: str | None) -> CohortSpec:
    """The spec, checked against the store's own field catalog (its template configs included); without a
    store (an OpenSearch index queried from elsewhere), against the built-in and installed configs."""
    from cohort.index.catalog import field_catalog, store_catalog
    from cohort.spec.load import load_spec
    from cohort.spec.text import parse_text

    if (spec is None) == (text is None):
        raise SpecError("give exactly one of --spec FILE.yaml or --text \"...\"")
    catalog = store_catalog(store) if store is not None else field_catalog()
    return load_spec(spec, catalog=catalog) if spec is not None else parse_text(str(text), catalog=catalog)


def _fmt(v: object) -> str:
    return "" if v is None else str(v)


@app.command()
def query(
    store: Annotated[Path, typer.Option(help="store folder")],
    spec: Annotated[Path | None, typer.Option(help="cohort spec YAML")] = None,
    text: Annotated[str | None, typer.Option(help="cohort spec as a text query")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Count the cohort locally (unsuppressed: a steward may see their own site's counts)."""
    from cohort.index.compile_duck import evaluate
    from cohort.index.duck import DuckIndex

    the_spec = _spec(store, spec, text)
    with DuckIndex.for_store(store, read_only=True) as index:
        counts = evaluate(index, the_spec)
    if json_out:
        print(json.dumps(counts.to_json(), indent=2))
        return
    table = Table(title=f"cohort {the_spec.name!r}: {counts.patients} patients")
    for col in ("subset", "patients", "positive", "negative", "unknown"):
        table.add_column(col, justify="right" if col != "subset" else "left")
    for name, sc in counts.subsets.items():
        table.add_row(name, str(sc.patients), str(sc.positive), str(sc.negative), str(sc.unknown))
    console.print(table)
    for d in counts.distributions:
        t = Table(title=f"{d.field} ({d.subset}) {d.unit}".strip())
        t.add_column("bin")
        t.add_column("patients", justify="right")
        for b in d.bins:
            t.add_row(b.label, str(b.count))
        console.print(t)


@app.command()
def export(
    store: Annotated[Path, typer.Option(help="store folder")],
    out: Annotated[Path, typer.Option(help="output folder")],
    spec: Annotated[Path | None, typer.Option(help="cohort spec YAML")] = None,
    text: Annotated[str | None, typer.Option(help="cohort spec as a text query")] = None,
    subset: Annotated[str | None, typer.Option(help="export only this subset of the cohort")] = None,
) -> None:
    """Write the MONAI datalist, arrays and manifest (with the cohort hash) for the matching patients."""
    from cohort.export import export_cohort

    selecting = "selecting the cohort's patients"
    with progress_callback(True) as cb:
        cb(selecting, 0, 1)

        def step(description: str, done: int, total: int) -> None:
            cb(selecting, 1, 1)  # the first export step means the selection is done
            cb(description, done, total)

        result = export_cohort(store, _spec(store, spec, text), out, subset=subset, progress=step)
    console.print(f"exported {result.patients} patients ({result.with_ct} with CT, {result.with_ecg} with ECG) "
                  f"to {result.out}; cohort hash {result.cohort_hash}")


@app.command()
def reindex(store: Annotated[Path, typer.Option(help="store folder")],
            derive: Annotated[bool, typer.Option(help="first write the measurement SRs of stored SEGs that lack "
                                                      "one (stores ingested before derivation existed)")] = False,
            ) -> None:
    """Bring the index in line with the store's files (rebuilt from them when lost) and re-extract SR items
    after template extraction configs changed."""
    from cohort.index.publish import reindex as do_reindex
    from cohort.ingest.pipeline import default_workers

    if derive:
        from cohort.index.publish import update_index
        from cohort.ingest.derive import derive_measurements
        from cohort.store import Store

        site_store = Store(store)
        result = derive_measurements(site_store)
        written = [o.path for o in result.objects if o.written]
        if written:
            with update_index(site_store.root) as idx:
                idx.add_files(written)
        for _, reason in result.problems:
            console.print(f"[yellow]{reason}[/]")
        console.print(f"derived {result.written} measurement SRs ({len(result.objects) - result.written} "
                      "already stored)")
    with progress_callback(True) as cb:
        done = do_reindex(store, progress=cb, workers=default_workers())
    for path, reason in done.failed:
        console.print(f"[yellow]{path}: not indexed: {reason}[/]")
    console.print(f"index of {store}: {done.added} stored files added, {done.removed} missing files removed, "
                  f"{done.srs} SRs re-extracted" + (f", {len(done.failed)} files unreadable" if done.failed else ""))


@app.command()
def fields(
    store: Annotated[Path | None, typer.Option(help="store folder (its own template configs; needed for "
                                                    "--unindexed)")] = None,
    unindexed: Annotated[bool, typer.Option(help="list SR concept paths no template config names")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """List the fields a spec may use, or (--unindexed) stored SR content no config indexes yet."""
    from cohort.index.catalog import field_catalog, store_catalog
    from cohort.index.duck import unindexed_items

    if unindexed:
        if store is None:
            raise SpecError("--unindexed needs --store STORE")
        rows = unindexed_items(store)
        if json_out:
            print(json.dumps([r.__dict__ for r in rows], indent=2))
            return
        t = Table(title="SR content present but not indexed (add it to a template config)")
        for col in ("template", "concept path", "value type", "count"):
            t.add_column(col)
        for r in rows:
            t.add_row(_fmt(r.template), r.concept_path, r.value_type, str(r.count))
        console.print(t)
        return
    catalog = store_catalog(store) if store is not None else field_catalog()
    if json_out:
        print(json.dumps({n: {"type": f.value_type, "unit": f.unit, "kinds": f.kinds, "templates": f.templates,
                              "description": f.description} for n, f in catalog.items()}, indent=2))
        return
    t = Table(title="fields a cohort spec may use")
    for col in ("field", "type", "unit", "kinds", "templates", "description"):
        t.add_column(col)
    for n, f in sorted(catalog.items()):
        t.add_row(n, f.value_type, _fmt(f.unit), ",".join(f.kinds), ",".join(f.templates), f.description)
    console.print(t)
