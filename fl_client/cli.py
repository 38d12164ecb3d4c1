"""The ``fl-client`` command line: run a site's Flower SuperNode next to its store.

``fl-client start`` checks that the site is ready (config valid, store ingested and indexed, an app
release pinned in ``site.yaml``), starts the site's task runner (fl_client.pinned_runner: it checks each
run's app bundle against the pin and runs the *installed* ClientApp), then replaces itself with
``flower-supernode --isolation process`` (exec, so the container's signals reach the SuperNode; the
runner exits with it) with the node config ``site-config='<absolute path of site.yaml>'``. The
SuperNode connects *out* to the coordinator's SuperLink; the site opens no inbound port (the
SuperNode's runtime API, which the runner calls, listens on 127.0.0.1 only).

``fl-client app-hash FAB_OR_FOLDER`` prints the pin of a release (fl_client.app_release).
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from cohort.cli.entry import run_app
from cohort.errors import ConfigError
from cohort.protocol import FLOWER_ENV_DEFAULTS
from cohort.siteconfig import SiteConfig, load_site_config
from fl_client.app_release import ReleasePin, load_pin
from fl_client.site_runtime import NODE_SITE_CONFIG

INDEX_FILE = "index.duckdb"  # cohort.index.duck.INDEX_FILE, not imported to keep startup light
SUPERNODE = "flower-supernode"
DEFAULT_RUNTIME_PORT = 9094  # Flower's default for the SuperNode's local runtime API


_ADDRESS = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-_]+):(\d{1,5})$")

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Site: run the federated client (a Flower SuperNode) next to the site store.")


@app.callback()
def _group() -> None:
    """Site commands (a group even while it has one command)."""


def toml_string(value: str) -> str:
    """``value`` as a TOML string that Flower's ``key=value`` parser accepts (no quote of its kind inside)."""
    if "'" not in value and "\n" not in value:
        return f"'{value}'"
    if '"' not in value and "\\" not in value and "\n" not in value:
        return f'"{value}"'
    raise ConfigError(f"{value!r} contains both kinds of quotes (or a newline); Flower's node config cannot "
                      "carry it: rename the path")


def check_address(address: str, what: str = "--superlink") -> str:
    """``HOST:PORT`` (IPv4, IPv6 in brackets, or a name), without a URL prefix."""
    m = _ADDRESS.match(address)
    if not m or not 0 < int(m.group(2)) < 65536:
        raise ConfigError(f"{what} {address!r} is not HOST:PORT (e.g. superlink.example.org:9093, "
                          "127.0.0.1:9093, [::1]:9093; no https:// prefix)")
    return address


def check_site_ready(site_config: Path) -> SiteConfig:
    """The site's config, once its store and index exist; otherwise a ConfigError saying what to run."""
    site = load_site_config(site_config)
    store = site.store_path()
    how = f"cohort ingest RAW_DIR --store {store} --site-config {site_config}"
    if not store.is_dir():
        raise ConfigError(f"site {site.site_id!r}: store {store} does not exist (set 'store' in {site_config}, "
                          f"or ingest the site's exports first: {how})")
    if not (store / INDEX_FILE).is_file():
        raise ConfigError(f"site {site.site_id!r}: store {store} has no index ({INDEX_FILE}); the node could "
                          f"answer no query. Ingest first ({how}) or rebuild it: cohort reindex --store {store}")
    return site


@dataclass(frozen=True)
class SuperNodeSettings:
    """How this site's SuperNode connects: where, with which CA and node key, on which local port."""

    site_config: Path
    superlink: str
    root_certificates: Path | None = None
    auth_key: Path | None = None
    insecure: bool = False
    runtime_port: int = DEFAULT_RUNTIME_PORT
    max_retries: int | None = None

    def validate(self) -> None:
        check_address(self.superlink)
        if self.insecure and self.root_certificates is not None:
            raise ConfigError("--insecure and --root-certificates exclude each other: TLS is either on or off")
        if not self.insecure and self.root_certificates is None:
            raise ConfigError("TLS is on by default: pass --root-certificates CA.crt (the consortium CA the "
                              "coordinator gave you), or --insecure for a local demo without TLS")
        for flag, path in (("--root-certificates", self.root_certificates), ("--auth-key", self.auth_key)):
            if path is not None and not path.is_file():
                raise ConfigError(f"{flag} {path}: file not found")
        if self.auth_key is not None and self.auth_key.suffix == ".pub":
            raise ConfigError(f"--auth-key {self.auth_key} is a public key: pass the private key (same name "
                              "without .pub); the .pub file goes to the coordinator for registration")


def supernode_command(settings: SuperNodeSettings, executable: str = SUPERNODE,
                      runner_secret: Path | None = None) -> list[str]:
    """The ``flower-supernode`` command line for ``settings`` (validated).

    With ``runner_secret`` (the pinned path) the SuperNode starts no ClientApp process itself
    (``--isolation process``): the site's runner claims the tasks, authenticated with that secret.
    """
    settings.validate()
    node_config = f"{NODE_SITE_CONFIG}={toml_string(str(settings.site_config.resolve()))}"
    cmd = [executable, "--superlink", settings.superlink, "--node-config", node_config,
           "--host", "127.0.0.1", "--port", str(settings.runtime_port)]
    if runner_secret is not None:
        cmd += ["--isolation", "process", "--superexec-auth-secret-file", str(runner_secret)]
    if settings.insecure:
        cmd.append("--insecure")
    else:
        cmd += ["--root-certificates", str(settings.root_certificates.resolve())]  # type: ignore[union-attr]
    if settings.auth_key is not None:
        cmd += ["--auth-supernode-private-key", str(settings.auth_key.resolve())]
    if settings.max_retries is not None:
        cmd += ["--max-retries", str(settings.max_retries)]
    return cmd


def runner_command(settings: SuperNodeSettings, parent_pid: int, runner_secret: Path) -> list[str]:
    """The site's task runner next to the SuperNode (fl_client.pinned_runner serve)."""
    return [sys.executable, "-P", "-m", "fl_client.pinned_runner", "serve",
            "--runtime-api-address", f"127.0.0.1:{settings.runtime_port}",
            "--site-config", str(settings.site_config.resolve()), "--parent-pid", str(parent_pid),
            "--auth-secret-file", str(runner_secret)]


def check_pin(site: SiteConfig, allow_unpinned: bool) -> ReleasePin | None:
    """The site's app release pin; without one a ConfigError (unless ``allow_unpinned``) saying how to add it."""
    pin = load_pin(site)
    if pin is None and not allow_unpinned:
        raise ConfigError(
            f"site {site.site_id!r}: {site.source_file} pins no app release, so the node would run whatever app "
            "bundle (FAB) the coordinator submits. Add the consortium's release to site.yaml:\n"
            "  app_release:\n    sha256: [<digest>]      # fl-client app-hash RELEASE.fab  (or the release's "
            "folder)\n    signers: [<key.pub>]     # and/or the release signers' Ed25519 public keys\n"
            "or pass --allow-unpinned to run unpinned bundles (Flower's default; development only). "
            "See docs/deployment.md, 'Pinned app release'.")
    return pin


def _runner_secret() -> Path:
    """A fresh SuperExec auth secret in a private folder (the runner removes both once the SuperNode read it)."""
    folder = Path(tempfile.mkdtemp(prefix="fedcohort-runner-"))
    secret = folder / "superexec-secret"
    fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(secrets.token_bytes(32))
    return secret


def flower_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for Flower processes: quiet defaults, and this interpreter's scripts on PATH
    (the SuperNode starts ``flwr-clientapp`` by name, also when the venv is not activated)."""
    env = dict(os.environ if base is None else base)
    for key, value in FLOWER_ENV_DEFAULTS.items():
        env.setdefault(key, value)
    bindir = str(Path(sys.executable).parent)
    if bindir not in env.get("PATH", "").split(os.pathsep):
        env["PATH"] = os.pathsep.join(p for p in (bindir, env.get("PATH", "")) if p)
    return env


def _find_supernode(env: dict[str, str]) -> str:
    found = shutil.which(SUPERNODE, path=env.get("PATH"))
    if found is None:
        raise ConfigError(f"{SUPERNODE} not found on PATH; install the project (pip install fedcohort) in the "
                          "environment that runs fl-client")
    return found


@app.command()
def start(
    site_config: Annotated[Path, typer.Option(help="the site's site.yaml (store path, site id, disclosure policy)")],
    superlink: Annotated[str, typer.Option(help="the coordinator's SuperLink as HOST:PORT")],
    root_certificates: Annotated[Path | None, typer.Option(
        help="consortium CA certificate (PEM) that signed the SuperLink's certificate")] = None,
    auth_key: Annotated[Path | None, typer.Option(
        help="this site's node private key (ECDSA P-384, from ssh-keygen); its .pub must be registered")] = None,
    insecure: Annotated[bool, typer.Option(help="no TLS: only for local demos on loopback")] = False,
    runtime_port: Annotated[int, typer.Option(
        help="local port (127.0.0.1) of the SuperNode's runtime API; distinct per node on one host")]
        = DEFAULT_RUNTIME_PORT,
    max_retries: Annotated[int | None, typer.Option(
        help="give up after this many failed connection attempts (default: retry forever)")] = None,
    allow_unpinned: Annotated[bool, typer.Option(
        help="start without an app_release pin in site.yaml: the node then runs whatever app bundle the "
             "coordinator submits (Flower's own ClientApp processes; development and benchmarks only)")] = False,
    dry_run: Annotated[bool, typer.Option(help="print the runner and SuperNode commands and exit")] = False,
) -> None:
    """Check the site is ready and pinned, then run its Flower SuperNode connected to the coordinator."""
    site = check_site_ready(site_config)
    pin = check_pin(site, allow_unpinned)
    settings = SuperNodeSettings(site_config, superlink, root_certificates, auth_key, insecure, runtime_port,
                                 max_retries)
    env = flower_environment()
    settings.validate()
    executable = SUPERNODE if dry_run else _find_supernode(env)
    secret = (Path(tempfile.gettempdir()) / "fedcohort-runner-XXXX" / "superexec-secret" if dry_run
              else _runner_secret()) if pin is not None else None
    cmd = supernode_command(settings, executable=executable, runner_secret=secret)
    runner = runner_command(settings, os.getpid(), secret) if secret is not None else None
    if dry_run:
        if runner is not None:
            typer.echo(shlex.join(runner) + " &")
        typer.echo(shlex.join(cmd))
        return
    tls = "without TLS (--insecure)" if insecure else f"TLS with CA {root_certificates}"
    auth = f"node key {auth_key}" if auth_key else "no node key (the SuperLink must not require one)"
    typer.echo(f"site {site.site_id!r}: store {site.store_path()}; connecting out to {superlink}, {tls}, {auth}",
               err=True)
    if pin is None:
        typer.secho(f"site {site.site_id!r}: NO APP RELEASE PINNED (--allow-unpinned): ClientApp code comes from "
                    "whatever app bundle the coordinator submits", fg=typer.colors.YELLOW, err=True)
    else:
        typer.echo(f"site {site.site_id!r}: answering only runs of {pin.expected()}, with the installed ClientApp",
                   err=True)
    sys.stdout.flush()
    sys.stderr.flush()
    if runner is not None:  # it watches this pid, which stays the SuperNode's after the exec
        subprocess.Popen(runner, env=env)
    os.execve(cmd[0], cmd, env)


@app.command("app-hash")
def app_hash(
    path: Annotated[Path, typer.Argument(help="a FAB file (flwr build) or a Flower app folder (what flwr run builds)")],
    site_config: Annotated[Path | None, typer.Option(
        help="also say whether this site's app_release accepts it")] = None,
    signature: Annotated[str, typer.Option(
        help="with --site-config: a release signature (base64, or a file holding it) to check too")] = "",
) -> None:
    """Print the pin of an app release: the SHA-256 of its FAB's bytes (what site.yaml app_release lists)."""
    from fl_client.app_release import fab_bytes, fab_sha256, signature_text

    data = fab_bytes(path)
    digest = fab_sha256(data)
    typer.echo(digest)
    typer.echo(f"# {path}: {len(data)} bytes; in site.yaml:\n# app_release:\n#   sha256: [{digest}]", err=True)
    if site_config is not None:
        pin = load_pin(load_site_config(site_config))
        if pin is None:
            raise ConfigError(f"{site_config}: no app_release section; every run would be refused by a pinned node")
        verdict = pin.check(data, signature_text(signature) if signature else "")
        typer.echo(("accepted: " if verdict.accepted else "refused: ") + verdict.reason, err=True)
        if not verdict.accepted:
            raise typer.Exit(1)


@app.command()
def predict(
    store: Annotated[Path, typer.Option(help="the site store; the final model is under STORE/models/")],
    model: Annotated[str | None, typer.Option(
        help="digest (or its first characters) of the stored model; default: the most recently stored")] = None,
    spec: Annotated[Path | None, typer.Option(
        help="cohort spec (YAML) whose patients to score; default: the model's own spec, whole cohort")] = None,
    subset: Annotated[str | None, typer.Option(help="score only this subset of the spec")] = None,
    push_dicomweb: Annotated[str | None, typer.Option(
        help="the site's own PACS (DICOMweb base URL): send the prediction SRs there by STOW-RS")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the run's report as JSON, no progress bars")] = False,
) -> None:
    """Score the cohort with the site's stored model and store one prediction SR per patient (local only)."""
    import json

    from cohort.cli.progress import progress_callback
    from cohort.index.catalog import store_catalog
    from cohort.spec.load import load_spec
    from fl_client.predict import predict_cohort

    cohort_spec = load_spec(spec, catalog=store_catalog(store)) if spec is not None else None
    with progress_callback(not json_out) as progress:
        report = predict_cohort(store, digest=model, spec=cohort_spec, subset=subset, push_dicomweb=push_dicomweb,
                                progress=progress)
    if json_out:
        typer.echo(json.dumps(report.to_json(), indent=1))
        return
    typer.echo(f"model {report.model[:16]} on {report.spec} ({report.subset or 'whole cohort'}): "
               f"{report.patients} patients, {len(report.predictions)} scored, {len(report.written)} new SRs, "
               f"{len(report.existing)} already stored, {len(report.skipped)} skipped")
    for patient, reason in report.skipped[:20]:
        typer.echo(f"  skipped {patient}: {reason}")
    if report.pushed is not None:
        from cohort.ingest.dicomweb import summary

        for line in summary(report.pushed):
            typer.echo(line)
    typer.echo(" ".join(f"{k} {v:.2f} s" for k, v in report.seconds.items()))
    if report.pushed is not None and report.pushed.failed:
        raise typer.Exit(1)


def main() -> None:
    """Console entry point."""
    run_app(app)
