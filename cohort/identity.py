"""Site identity keys and the consortium roster: who may take part in a secure total.

Each site holds an **identity key** (Ed25519, ``identity_key:`` in its ``site.yaml``, a PEM file next to
it, readable by the site only) and the consortium's **roster** (``roster:`` in ``site.yaml``: a YAML file
listing every member's site id and identity public key, distributed with the site configuration). In a
secure total (``fl_client.secure_counts``) a site signs its public keys for that one sum with its identity
key, and shares its secrets only with participants that are on its roster, appear once, and whose
signature verifies: the coordinator relays keys but cannot invent, duplicate or rename a participant.

``cohort synth`` writes a key per synthetic site and the consortium's ``roster.yaml``, one copy per site
(:func:`write_synthetic_identity`, :func:`write_roster`); :func:`enroll_site` adds one more site to every
roster (a new member, or a test's copy of a site under another id).
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

import yaml
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from cohort.errors import ConfigError
from cohort.siteconfig import SiteConfig

IDENTITY_FILE = "identity.key"
ROSTER_FILE = "roster.yaml"
KEY_PREFIX = "ed25519:"


def _relative(site: SiteConfig, value: str) -> Path:
    p = Path(value)
    if not p.is_absolute() and site.source_file:
        p = Path(site.source_file).parent / p
    return p


def public_key_text(key: Ed25519PublicKey) -> str:
    """``ed25519:`` and the 32 raw key bytes in base64 (the roster's form)."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return KEY_PREFIX + base64.b64encode(raw).decode()


def parse_public_key(text: str) -> Ed25519PublicKey:
    raw = base64.b64decode(str(text).strip().removeprefix(KEY_PREFIX), validate=True)
    if len(raw) != 32:
        raise ValueError(f"an Ed25519 public key is 32 bytes, got {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def load_identity(site: SiteConfig) -> Ed25519PrivateKey:
    """The site's identity key (``identity_key`` in site.yaml), or ConfigError naming the setting."""
    if not site.identity_key:
        raise ConfigError(f"site {site.site_id} has no identity key: set identity_key (an Ed25519 PEM file) "
                          "in its site.yaml; secure totals need it")
    path = _relative(site, site.identity_key)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"site {site.site_id}: identity_key {path} unreadable: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"site {site.site_id}: identity_key {path} is not an Ed25519 private key")
    return key


def load_roster(site: SiteConfig) -> dict[str, Ed25519PublicKey]:
    """Site id -> identity public key, from the roster file named in site.yaml (``roster``)."""
    if not site.roster:
        raise ConfigError(f"site {site.site_id} has no consortium roster: set roster (a YAML file of site ids "
                          "and identity public keys) in its site.yaml; secure totals need it")
    path = _relative(site, site.roster)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"site {site.site_id}: roster {path} unreadable: {exc}") from None
    entries = data.get("sites") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ConfigError(f"roster {path}: expected 'sites:' with a list of {{site_id, identity_key}}")
    out: dict[str, Ed25519PublicKey] = {}
    for i, e in enumerate(entries):
        try:
            sid, key = str(e["site_id"]), parse_public_key(str(e["identity_key"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"roster {path}: entry {i} is not {{site_id, identity_key: ed25519:BASE64}}: "
                              f"{exc}") from None
        if sid in out:
            raise ConfigError(f"roster {path}: site {sid!r} is listed twice")
        out[sid] = key
    return out


def sign(key: Ed25519PrivateKey, message: bytes) -> bytes:
    return key.sign(message)


def verify(key: Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
    try:
        key.verify(signature, message)
    except InvalidSignature:
        return False
    return True


def _write_private(path: Path, key: Ed25519PrivateKey) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    os.replace(tmp, path)


def write_synthetic_identity(folder: Path, seed: int, site_id: str) -> Ed25519PublicKey:
    """A synthetic site's identity key in ``folder/identity.key``, derived from the seed (reproducible;
    a real site generates its own with :func:`write_identity`)."""
    raw = hashlib.sha256(f"fedcohort-synth-identity-{seed}-{site_id}".encode()).digest()
    key = Ed25519PrivateKey.from_private_bytes(raw)
    _write_private(folder / IDENTITY_FILE, key)
    return key.public_key()


def write_identity(path: Path) -> Ed25519PublicKey:
    """A fresh random identity key at ``path`` (mode 0600); returns its public key for the roster."""
    key = Ed25519PrivateKey.generate()
    _write_private(path, key)
    return key.public_key()


def write_roster(path: Path, members: dict[str, Ed25519PublicKey]) -> None:
    """The roster file: every member's site id and identity public key."""
    entries = [{"site_id": sid, "identity_key": public_key_text(k)} for sid, k in sorted(members.items())]
    path.write_text("# The consortium roster: sites that may take part in secure totals (site id and\n"
                    "# Ed25519 identity public key). Every site keeps a copy and refuses others.\n"
                    + yaml.safe_dump({"sites": entries}, sort_keys=False), encoding="utf-8")


def enroll_site(site_yaml: Path, site_id: str) -> None:
    """Give the site of ``site_yaml`` a fresh identity key and its own roster copy, and add it to every
    roster of the consortium folder written by ``cohort synth`` (``roster.yaml`` at the top and in each
    site's folder), replacing any entry of that id: a new member that every site accepts."""
    data = yaml.safe_load(site_yaml.read_text(encoding="utf-8"))
    data["identity_key"], data["roster"] = IDENTITY_FILE, ROSTER_FILE
    site_yaml.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    public = write_identity(site_yaml.parent / IDENTITY_FILE)
    root = site_yaml.parent.parent
    rosters = {root / ROSTER_FILE, site_yaml.parent / ROSTER_FILE, *root.glob(f"*/{ROSTER_FILE}")}
    members: dict[str, Ed25519PublicKey] = {}
    for path in sorted(p for p in rosters if p.exists()):
        for e in (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("sites", []):
            members.setdefault(str(e["site_id"]), parse_public_key(str(e["identity_key"])))
    members[site_id] = public
    for path in rosters:
        write_roster(path, members)
