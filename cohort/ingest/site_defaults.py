"""The site config of an ingest without ``site.yaml``: defaults, and a pseudonym key kept in the store.

A folder of DICOM files (or of any export recognised by content alone) needs no column mapping, so
``cohort ingest DIR --store STORE`` works without a site.yaml. Patients are then known by the PACS
id their objects carry, and the store still never holds that id: the pseudonyms are keyed with a
secret generated on the first such ingest and written, with the site id, to
``STORE/.ingest/site.yaml`` (readable by its owner only). Later runs read it back, so the same
patient keeps the same pseudonym; the file is also a starting point for a real site.yaml.

Keys are never mixed in one store: a store filled with a site.yaml's key refuses an ingest without
one, and a site.yaml whose key differs from the one a store was filled with is refused too.
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from cohort.errors import ConfigError
from cohort.siteconfig import SiteConfig, load_site_config

GENERATED_CONFIG = Path(".ingest") / "site.yaml"  # relative to the store root
_JOURNAL = Path(".ingest") / "journal.jsonl"
_GENERIC_FOLDER_NAMES = frozenset({"raw", "export", "exports", "dicom", "in", "input", "inputs", "data", "store"})
_NOT_IN_SITE_ID = re.compile(r"[^a-z0-9._-]+")
_KEY_BYTES = 32


def site_id_from_folder(folder: Path) -> str:
    """A site id from a folder name: lower case, other characters as '-'; a generic name ("raw")
    gives its parent's name, as in the ``SITE/raw`` layout ``cohort synth`` writes."""
    folder = Path(folder).resolve()
    name = folder.parent.name if folder.name.lower() in _GENERIC_FOLDER_NAMES else folder.name
    return _NOT_IN_SITE_ID.sub("-", name.lower()).strip("-.")


def generated_config_path(store_dir: Path) -> Path:
    """Where an ingest without site.yaml keeps the site id and pseudonym key of ``store_dir``."""
    return Path(store_dir) / GENERATED_CONFIG


def default_site_config(store_dir: Path, *, site_id: str | None = None, raw_dir: Path | None = None) -> SiteConfig:
    """The site config for an ingest into ``store_dir`` without site.yaml (created on first use).

    The site id is ``site_id`` if given, else the one the store was first ingested with, else taken
    from the folder name of ``raw_dir`` (or of the store).
    """
    store_dir = Path(store_dir)
    generated = generated_config_path(store_dir)
    if generated.exists():
        cfg = load_site_config(generated)
        if site_id is not None and site_id != cfg.site_id:
            raise ConfigError(f"{store_dir} was ingested as site {cfg.site_id!r} (see {generated}); pass "
                              f"--site-id {cfg.site_id} or use another --store for site {site_id!r}")
        return cfg
    journal = store_dir / _JOURNAL
    if journal.exists() and journal.stat().st_size > 0:
        raise ConfigError(f"{store_dir} was filled using a site.yaml (its pseudonym key is not in the store); "
                          "pass that file with --site-config, so patients keep their pseudonyms")
    chosen = site_id if site_id is not None else site_id_from_folder(raw_dir if raw_dir is not None else store_dir)
    if not chosen or _NOT_IN_SITE_ID.search(chosen):
        raise ConfigError(f"site id {chosen!r} is not usable: pass --site-id with lower-case letters, digits, "
                          "'.', '_' or '-' (e.g. --site-id uk-nord)")
    cfg = SiteConfig(site_id=chosen, store=str(store_dir.resolve()), pseudonym_key=secrets.token_urlsafe(_KEY_BYTES))
    _write_private(generated, "# Written by `cohort ingest` without a site.yaml. pseudonym_key is secret: keep\n"
                              "# it (back it up with the store), never share it; copy it into a site.yaml later.\n"
                   + cfg.to_yaml())
    return load_site_config(generated)


def check_store_key(site: SiteConfig, store_dir: Path) -> None:
    """Refuse a site.yaml whose pseudonym key differs from the one ``store_dir`` was filled with."""
    generated = generated_config_path(store_dir)
    if not generated.exists() or (site.source_file and Path(site.source_file) == generated.resolve()):
        return
    stored = load_site_config(generated)
    if stored.pseudonym_key != site.pseudonym_key or stored.site_id != site.site_id:
        raise ConfigError(f"{store_dir} was filled without a site.yaml, as site {stored.site_id!r} with the "
                          f"pseudonym key in {generated}; copy site_id and pseudonym_key from there into "
                          f"{site.source_file or 'the site config'}, or use another --store")


@dataclass(frozen=True)
class IngestSite:
    """The site config an ingest uses, its store, and whether the config came from defaults."""

    site: SiteConfig
    store_dir: Path
    defaults: bool  # no site.yaml: defaults, with the key in STORE/.ingest/site.yaml


def resolve_ingest_site(raw_dir: Path | None, *, store: Path | None, site_config: Path | None,
                        site_id: str | None) -> IngestSite:
    """Which site config and store an ingest uses.

    ``site_config`` if given, else ``RAW_DIR/../site.yaml`` if it exists, else defaults (which need
    ``store``). A site.yaml's store is used unless ``store`` overrides it.
    """
    candidate = site_config or (Path(raw_dir).parent / "site.yaml" if raw_dir is not None else None)
    if site_config is not None or (candidate is not None and candidate.exists()):
        assert candidate is not None
        site = load_site_config(candidate)
        if site_id is not None and site_id != site.site_id:
            raise ConfigError(f"--site-id {site_id} contradicts site_id {site.site_id!r} in {candidate}; drop "
                              "--site-id or correct the site config")
        store_dir = Path(store) if store is not None else site.store_path()
        check_store_key(site, store_dir)
        return IngestSite(site, store_dir, defaults=False)
    if store is None:
        where = f"no site config at {candidate}" if candidate is not None else "no site config given"
        raise ConfigError(f"{where}: pass --store STORE to ingest with defaults (DICOM and other exports "
                          "recognised by content), or --site-config PATH/site.yaml")
    return IngestSite(default_site_config(Path(store), site_id=site_id, raw_dir=raw_dir), Path(store), defaults=True)


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` readable by the owner only, atomically (a crash leaves no half key file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)
