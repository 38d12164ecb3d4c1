"""The ``fl-server`` command line: the one-machine demo and launches on a real deployment."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from cohort.cli.entry import run_app
from cohort.errors import CohortError

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Coordinator: run the federated cohort negotiation and FedAvg training.")
console = Console()


@app.callback()
def _group() -> None:
    """Coordinator commands (a group even while it has few commands)."""


def _summary(report_path: Path) -> Table:
    data = json.loads(report_path.read_text(encoding="utf-8"))
    subset = data["agreement"]["rule"]["subset"]
    decisions = {s["site_id"]: s for s in data["agreement"]["sites"]}
    t = Table(title=f"cohort {data['cohort']!r}: released counts in subset {subset!r}")
    for col in ("site", "status", "cases", "positive", "negative", "trains", "why"):
        t.add_column(col)

    def fmt(v: object) -> str:
        return "suppressed" if v is None else str(v)

    for s in data["sites"]:
        d = decisions.get(s["site_id"], {})
        counts = s.get("counts") or {}
        labels = (counts.get("labels") or {}).get(subset, {})
        t.add_row(s["site_id"], s["status"], fmt((counts.get("subsets") or {}).get(subset)),
                  fmt(labels.get("positive")), fmt(labels.get("negative")),
                  "yes" if d.get("participates") else "no", d.get("reason", ""))
    return t


def _rounds(report_path: Path) -> Table:
    data = json.loads(report_path.read_text(encoding="utf-8"))
    t = Table(title="FedAvg rounds (federated evaluation on local validation splits)")
    for col in ("round", "train loss", "AUROC", "balanced accuracy", "sites"):
        t.add_column(col)
    for r in data["rounds"]:
        agg = r.get("aggregated", {})
        t.add_row(str(r["round"]), str(r.get("train_loss")), f"{agg.get('auroc', float('nan')):.3f}",
                  f"{agg.get('balanced-accuracy', float('nan')):.3f}", ", ".join(sorted(r.get("evaluate", {}))))
    return t


def _final(report_path: Path) -> str:
    """The kept round and where the final model went, in one line."""
    training = json.loads(report_path.read_text(encoding="utf-8")).get("training", {})
    auroc = training.get("best_validation_auroc")
    line = f"kept round {training.get('best_round')} (validation AUROC {'n/a' if auroc is None else f'{auroc:.3f}'})"
    sites = training.get("final_model_sites") or {}
    if sites:
        stored = sum(1 for d in sites.values() if d.get("status") == "stored")
        line += (f"; final model stored at {stored} of {len(sites)} sites "
                 f"(site_calibration: {training.get('site_calibration')})")
    return line


@app.command()
def demo(
    sites: Annotated[int, typer.Option(min=2, help="synthetic sites")] = 4,
    patients: Annotated[str, typer.Option(help="patients per site, or a comma list")] = "120",
    rounds: Annotated[int | None, typer.Option(min=1, help="FedAvg rounds (default: federation.rounds)")] = None,
    seed: Annotated[int, typer.Option(help="seed of data and training")] = 0,
    out: Annotated[Path, typer.Option(help="output folder")] = Path("demo-out"),
    overrides: Annotated[str, typer.Option(help="Hydra overrides, e.g. 'agreement.min_cases=10'")] = "",
    view_port: Annotated[int | None, typer.Option(
        min=0, max=65535, help="also serve the run view (fl-server serve) on this port while the demo runs")] = None,
) -> None:
    """Synthesize sites, ingest them, negotiate the cohort and train with FedAvg on the simulation engine."""
    import time

    from cohort.cli.progress import progress_callback
    from fl_server.demo import run_demo

    t0 = time.perf_counter()
    counts: int | list[int] = [int(x) for x in patients.split(",")] if "," in patients else int(patients)
    view = None
    if view_port is not None:
        from fl_server.serve import make_server

        view = make_server(out / "run", port=view_port).start()
        console.print(f"watch the run at [bold]{view.url}[/] (the run view; it stops with the demo)")
    try:
        with progress_callback(True) as cb:
            result = run_demo(out, sites=sites, patients=counts, rounds=rounds, seed=seed, overrides=overrides,
                              progress=cb)
    finally:
        if view is not None:
            view.shutdown()
            view.server_close()
    t = Table(title="ingest per site")
    for col in ("site", "inputs", "converted", "duplicates", "quarantined", "objects", "patients"):
        t.add_column(col)
    for site_id, r in result.ingest_reports.items():
        t.add_row(site_id, str(r.inputs), str(r.converted), str(r.duplicates), str(r.quarantined),
                  str(r.objects_written), str(r.patients))
    console.print(t)
    if not result.report_json.exists():
        raise CohortError(f"the federation wrote no report at {result.report_json}; see the run's log {result.log}")
    console.print(_summary(result.report_json))
    console.print(_rounds(result.report_json))
    console.print(_final(result.report_json))
    console.print(f"reports: {result.report_json.parent}/report.html, label_balance.png, metrics.png "
                  f"(or: fl-server serve --run {result.report_json.parent}); log of Flower and Ray: {result.log}")
    stages = ", ".join(f"{name} {sec:.0f} s" for name, sec in result.stage_seconds.items())
    console.print(f"demo finished in {(time.perf_counter() - t0) / 60:.1f} min ({stages})")


@app.command()
def launch(
    cohort: Annotated[str, typer.Option(help="configs/cohort/<name>.yaml or its name")],
    connection: Annotated[str, typer.Option(
        help="SuperLink address HOST:PORT, or a connection name in $FLWR_HOME/config.toml")],
    overrides: Annotated[str, typer.Option(
        help="Hydra overrides, e.g. 'agreement.min_cases=10 federation.rounds=1'")] = "",
    out: Annotated[Path | None, typer.Option(
        help="report folder on the SuperLink's host (default: ./fl-out/<cohort>)")] = None,
    expected_sites: Annotated[int, typer.Option(
        min=0, help="wait for this many connected sites before negotiating (0: whoever is connected)")] = 0,
    wait_s: Annotated[float, typer.Option(min=0, help="how long to wait for the expected sites")] = 60.0,
    root_certificates: Annotated[Path | None, typer.Option(
        help="consortium CA (PEM) for an address connection; TLS is on by default")] = None,
    insecure: Annotated[bool, typer.Option(help="no TLS (local demos only; address connections)")] = False,
    release_signature: Annotated[str, typer.Option(
        help="release signature(s) of this app's FAB (base64, or the .sig file from fl-server release sign), "
             "for sites that pin release signers")] = "",
    save_fab: Annotated[Path | None, typer.Option(help="also write the submitted app bundle (FAB) here")] = None,
) -> None:
    """Run the federation on a Flower deployment: flwr run with this project's app and the run config."""
    from fl_client.app_release import signature_text
    from fl_server.launch import LaunchError, LaunchSettings
    from fl_server.launch import launch as do_launch

    settings = LaunchSettings(cohort=cohort, connection=connection, overrides=overrides, out_dir=out,
                              expected_sites=expected_sites, wait_s=wait_s,
                              root_certificates=root_certificates, insecure=insecure,
                              release_signature=signature_text(release_signature) if release_signature else "",
                              save_fab=save_fab)
    result = do_launch(settings, echo=lambda line: print(line, flush=True))
    if result.fab_sha256:
        console.print(f"app bundle (FAB) of run {result.run_id}: sha256 {result.fab_sha256}")
    if not result.ok:
        raise LaunchError(f"run {result.run_id or '(not started)'} ended with status {result.status!r} "
                          f"(flwr exit code {result.returncode}); see the log above and the SuperLink's log")
    console.print(f"run {result.run_id}: {result.status}")
    if result.report_json.exists():  # visible here when the SuperLink runs on this host
        console.print(_summary(result.report_json))
        console.print(_rounds(result.report_json))
        console.print(_final(result.report_json))
    console.print(f"reports (on the SuperLink's host): {result.out_dir}/report.json, report.html, "
                  "label_balance.png, metrics.png, final_model.npz")


@app.command()
def serve(
    run: Annotated[Path, typer.Option(help="the run's report folder (where report.json is, e.g. demo-out/run)")],
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port (0: any free port)")] = 8090,
    host: Annotated[str, typer.Option(
        help="address to bind; the default serves this machine only (anything else warns: there is no login)")] =
        "127.0.0.1",
    verbose: Annotated[bool, typer.Option(help="log every request")] = False,
) -> None:
    """Show a run in the browser as it progresses: answers per site, agreement, label balance, rounds, errors."""
    from cohort.dashboard.web import is_loopback
    from cohort.errors import ConfigError
    from fl_server.serve import make_server

    if not is_loopback(host):
        console.print(f"[yellow]warning:[/] binding {host}: anyone who can reach this address reads the run's "
                      "report (released counts, metrics, errors); there is no login")
    try:
        server = make_server(run, host, port, quiet=not verbose)
    except OSError as err:
        raise ConfigError(f"cannot listen on {host}:{port}: {err.strerror}; pick another --port") from None
    console.print(f"run view of {run} at [bold]{server.url}[/]  (Ctrl+C stops it)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        console.print("stopped")
    finally:
        server.server_close()


release = typer.Typer(no_args_is_help=True, add_completion=False,
                      help="App releases: the digest sites pin, and Ed25519 release signatures.")
app.add_typer(release, name="release")


@release.command("hash")
def release_hash(
    path: Annotated[Path, typer.Argument(help="a FAB file, or the app folder flwr run would bundle")] = Path("."),
) -> None:
    """Print the SHA-256 of the app bundle (FAB): the pin a site lists in site.yaml app_release.sha256."""
    from fl_client.app_release import fab_bytes, fab_sha256

    typer.echo(fab_sha256(fab_bytes(path)))


@release.command("sign")
def release_sign(
    path: Annotated[Path, typer.Argument(help="the release's FAB file (or the app folder flwr run would bundle)")],
    key: Annotated[Path, typer.Option(help="the signer's Ed25519 private key (ssh-keygen -t ed25519, or PEM)")],
    out: Annotated[Path | None, typer.Option(help="signature file (default: FAB.sig next to a FAB file)")] = None,
) -> None:
    """Sign a release: an Ed25519 signature over its FAB digest, for sites that list this signer."""
    from fl_client.app_release import fab_bytes, fab_sha256, load_private_key, public_key_text, sign_release

    private = load_private_key(key)
    digest = fab_sha256(fab_bytes(path))
    signature = sign_release(private, digest)
    target = out if out is not None else (path.with_name(path.name + ".sig") if path.is_file() else None)
    if target is not None:
        target.write_text(signature + "\n", encoding="ascii")
    typer.echo(signature)
    typer.echo(f"# sha256 {digest} signed by {public_key_text(private.public_key())}"
               + (f"; written to {target}" if target else "")
               + "\n# sites list the signer in site.yaml app_release.signers; the coordinator passes the signature: "
                 "fl-server launch ... --release-signature " + (str(target) if target else "SIGNATURE"), err=True)


def main() -> None:
    """Console entry point."""
    run_app(app)
