"""``cohort synth``, ``cohort ingest`` and ``cohort validate``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cohort.cli import app
from cohort.cli.progress import console, progress_callback
from cohort.errors import ConfigError


@app.command()
def synth(
    out: Annotated[Path, typer.Option(help="output folder; one sub-folder per site")],
    sites: Annotated[int, typer.Option(min=1, help="number of sites")] = 4,
    patients: Annotated[str, typer.Option(help="patients per site, or a comma list, one per site")] = "120",
    seed: Annotated[int, typer.Option(help="seed of the generative model")] = 0,
    quiet: Annotated[bool, typer.Option(help="no progress bars")] = False,
) -> None:
    """Write synthetic heterogeneous site exports, site.yaml and truth.csv per site."""
    from cohort.synth.site import synthesize_consortium

    counts: int | list[int] = [int(x) for x in patients.split(",")] if "," in patients else int(patients)
    with progress_callback(not quiet) as cb:
        written = synthesize_consortium(out, sites, counts, seed, cb)
    table = Table(title=f"synthetic consortium in {out}")
    for col in ("site", "patients", "files", "label prevalence", "site config"):
        table.add_column(col)
    for s in written:
        table.add_row(s.site_id, str(s.patients), str(s.files), f"{s.prevalence:.1%}", str(s.site_config))
    console.print(table)


@app.command()
def ingest(
    raw_dir: Annotated[Path | None, typer.Argument(
        help="folder with the site's raw exports (optional with --from-dicomweb)")] = None,
    store: Annotated[Path | None, typer.Option(help="store folder (default: the site config's store)")] = None,
    site_config: Annotated[Path | None, typer.Option(
        help="site.yaml (default: RAW_DIR/../site.yaml; without one, defaults and --store)")] = None,
    site_id: Annotated[str | None, typer.Option(
        help="site id when there is no site.yaml (default: the folder's name)")] = None,
    report: Annotated[Path | None, typer.Option(help="write the ingest report JSON here")] = None,
    quiet: Annotated[bool, typer.Option(help="no progress bars")] = False,
    from_dicomweb: Annotated[str | None, typer.Option(
        help="pull new objects from this DICOMweb PACS (e.g. http://pacs:8042/dicom-web) first")] = None,
    push_dicomweb: Annotated[str | None, typer.Option(
        help="afterwards, STOW-RS the derived objects (not pulled from this PACS) to this DICOMweb URL")] = None,
) -> None:
    """Convert every input to DICOM in the store, index it, and report what became of each input."""
    from cohort.ingest import dicomweb
    from cohort.ingest.run import ingest_folder
    from cohort.ingest.site_defaults import generated_config_path, resolve_ingest_site
    from cohort.store import Store

    if raw_dir is None and not from_dicomweb:
        raise ConfigError("give RAW_DIR (the folder with the site's exports), or --from-dicomweb URL to pull "
                          "from the PACS")
    resolved = resolve_ingest_site(raw_dir, store=store, site_config=site_config, site_id=site_id)
    site, store_dir = resolved.site, resolved.store_dir
    if resolved.defaults:
        console.print(f"no site.yaml: ingesting as site {site.site_id!r} with defaults (patients by their PACS "
                      f"id, pseudonymised with the key kept in {generated_config_path(store_dir)}: keep that "
                      "file secret and back it up with the store)", markup=False, highlight=False)
    if raw_dir is None:
        raw_dir = dicomweb.pull_dir_for(store_dir)
        raw_dir.mkdir(parents=True, exist_ok=True)
    pulled: dicomweb.PullReport | None = None
    pushed: dicomweb.PushReport | None = None
    with progress_callback(not quiet) as cb:
        if from_dicomweb:
            pulled = dicomweb.pull_from_dicomweb(from_dicomweb, raw_dir,
                                                 dicomweb.state_path_for(store_dir, from_dicomweb), progress=cb)
        result = ingest_folder(raw_dir, store_dir, site, progress=cb)
        if push_dicomweb:
            pushed = dicomweb.push_to_dicomweb(push_dicomweb, Store(store_dir), None,
                                               dicomweb.state_path_for(store_dir, push_dicomweb), progress=cb)
    for line in [*(dicomweb.summary(pulled) if pulled else []), *(dicomweb.summary(pushed) if pushed else [])]:
        console.print(line, markup=False, highlight=False)
    if report:
        result.write(report)
        if pulled or pushed:
            dicomweb.write_sidecar(report, pulled, pushed)
    table = Table(title=f"ingest {raw_dir} -> {store_dir}")
    table.add_column("what")
    table.add_column("count", justify="right")
    for key in ("inputs", "converted", "duplicates", "quarantined", "objects_written", "patients"):
        table.add_row(key, str(getattr(result, key)))
    for name, n in sorted(result.objects_by_sop_class.items()):
        table.add_row(f"  {name}", str(n))
    table.add_row("warnings", str(len(result.warnings)))
    console.print(table)
    _print_first("quarantined", [f"{q.input}: {q.reason}" for q in result.quarantine])
    _print_first("warning", [f"{w.input}{f' ({w.sop_uid})' if w.sop_uid else ''}: {w.message}"
                             for w in result.warnings])


def _print_first(label: str, lines: list[str], limit: int = 20) -> None:
    """The first ``limit`` lines, each marked with ``label``; the report has the rest."""
    for line in lines[:limit]:
        console.print(f"[yellow]{label}[/] ", end="")
        console.print(line, markup=False, highlight=False)
    if len(lines) > limit:
        console.print(f"... and {len(lines) - limit} more {label} lines (see the report)")


@app.command()
def validate(
    store: Annotated[Path, typer.Option(help="store folder")],
    json_out: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Run dciodvfy on every stored object and DicomSRValidator + dsrdump on every SR."""
    from cohort.ingest.validation import validate_store

    with progress_callback(not json_out) as cb:
        summary = validate_store(Path(store), progress=cb)
    if json_out:
        print(json.dumps(summary.to_json(), indent=2))
    else:
        console.print(summary.table())
    if summary.errors:
        raise typer.Exit(1)
