"""Pinned app releases: the digest of an app bundle (FAB), release signatures, and the site's check.

**What is hashed.** The SHA-256 of the FAB's bytes exactly as Flower carries them: the zip that
``flwr build`` writes and ``flwr run`` submits (both call ``flwr.cli.build.build_fab_from_disk``;
Flower writes every entry with a fixed date in sorted order, so the same files give the same bytes).
The SuperLink stores those bytes under the same digest (``Fab.hash_str``) and the SuperNode hands
them unchanged to the process that runs the ClientApp, where the site recomputes the digest from the
bytes (it does not trust ``hash_str``).

**What is signed.** A release signer signs ``SIGNED_PREFIX + <digest hex>`` (ASCII) with Ed25519; the
signature travels as base64 in the run config key ``release-signature`` (the coordinator passes it
with ``fl-server launch --release-signature``). A site lists the signers' public keys in ``site.yaml``
(``app_release.signers``) and accepts a run whose FAB digest is listed (``app_release.sha256``) or
carries a valid signature by one of them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from cohort.errors import ConfigError
from cohort.siteconfig import SiteConfig

SIGNED_PREFIX = b"fedcohort app release v1\nsha256:"
RUN_CONFIG_SIGNATURE = "release-signature"  # run_config key ([tool.flwr.app.config] in pyproject.toml)
_RAW_KEY = re.compile(r"^[A-Za-z0-9+/]{43}=$")
_OPENSSH_KEY = re.compile(r"^(ssh|ecdsa|sk)-[\w@.-]+\s+[A-Za-z0-9+/]+=*(\s|$)")


def fab_sha256(fab: bytes) -> str:
    """The pin of a FAB: SHA-256 (hex) of its bytes."""
    return hashlib.sha256(fab).hexdigest()


def build_fab(app_dir: Path) -> bytes:
    """The FAB ``flwr run APP_DIR`` would submit (Flower's own builder: .gitignore, fab-include)."""
    from flwr.cli.build import build_fab_from_disk

    if not (app_dir / "pyproject.toml").is_file():
        raise ConfigError(f"{app_dir}: no pyproject.toml; pass a .fab file or a Flower app folder")
    return build_fab_from_disk(app_dir)


def fab_bytes(path: Path) -> bytes:
    """A FAB file's bytes, or the FAB built from an app folder."""
    if path.is_dir():
        return build_fab(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such FAB file or app folder")
    return path.read_bytes()


def signed_message(digest: str) -> bytes:
    return SIGNED_PREFIX + digest.lower().encode("ascii")


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """An Ed25519 private key from OpenSSH (``ssh-keygen -t ed25519``) or PEM (PKCS#8) format."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"--key {path}: cannot read ({exc.strerror}); create one with: "
                          f"ssh-keygen -t ed25519 -N '' -f {path}") from None
    key: object
    try:
        if data.lstrip().startswith(b"-----BEGIN OPENSSH PRIVATE KEY"):
            key = serialization.load_ssh_private_key(data, password=None)
        else:
            key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, binascii.Error) as exc:
        raise ConfigError(f"--key {path}: not an unencrypted Ed25519 private key in OpenSSH or PEM format "
                          f"({exc}); create one with: ssh-keygen -t ed25519 -N '' -f KEY") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"--key {path}: a {type(key).__name__}, not an Ed25519 key; release signatures are "
                          "Ed25519 (ssh-keygen -t ed25519)")
    return key


def sign_release(key: Ed25519PrivateKey, digest: str) -> str:
    """A release signature (base64) over a FAB digest."""
    return base64.b64encode(key.sign(signed_message(digest))).decode("ascii")


def public_key_text(key: Ed25519PublicKey) -> str:
    """``ssh-ed25519 AAAA...``: the form a site lists in ``app_release.signers``."""
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode("ascii")


def parse_public_key(text: str) -> Ed25519PublicKey:
    """An Ed25519 public key from ``ssh-ed25519 BASE64 [comment]``, PEM, or 32 raw bytes in base64."""
    text = text.strip()
    if _OPENSSH_KEY.match(text):
        key: object = serialization.load_ssh_public_key(" ".join(text.split()[:2]).encode("ascii"))
    elif text.startswith("-----BEGIN"):
        key = serialization.load_pem_public_key(text.encode("ascii"))
    elif _RAW_KEY.match(text):
        key = Ed25519PublicKey.from_public_bytes(base64.b64decode(text))
    else:
        raise ValueError("expected 'ssh-ed25519 AAAA...', a PEM public key, or 32 bytes in base64")
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"a {type(key).__name__}, not an Ed25519 key")
    return key


def _signatures(value: str) -> list[bytes]:
    out = []
    for part in value.replace(",", " ").split():
        try:
            out.append(base64.b64decode(part, validate=True))
        except binascii.Error:
            continue
    return out


@dataclass(frozen=True)
class Verdict:
    """The site's decision on one FAB: accepted or not, and a reason naming expected and received."""

    accepted: bool
    received: str
    reason: str


@dataclass(frozen=True)
class ReleasePin:
    """The releases a site answers: pinned digests and release signers' public keys."""

    sha256: tuple[str, ...]
    signers: tuple[tuple[str, Ed25519PublicKey], ...]  # (label from site.yaml, key)
    source: str = "site.yaml"

    def expected(self) -> str:
        parts = []
        if self.sha256:
            parts.append("sha256 " + " or ".join(self.sha256))
        if self.signers:
            parts.append(f"a release signature by one of {len(self.signers)} listed signer(s) "
                         f"({', '.join(label for label, _ in self.signers)})")
        return "; or ".join(parts)

    def check(self, fab: bytes, signatures: str = "") -> Verdict:
        """Accept the FAB when its digest is pinned or a listed signer signed it."""
        received = fab_sha256(fab)
        if received in self.sha256:
            return Verdict(True, received, f"app bundle sha256 {received} is pinned in {self.source}")
        sigs = _signatures(signatures)
        for sig in sigs:
            for label, key in self.signers:
                try:
                    key.verify(sig, signed_message(received))
                except InvalidSignature:
                    continue
                return Verdict(True, received, f"app bundle sha256 {received} is signed by listed signer {label}")
        why = ("no release signature came with the run" if not sigs else
               f"{len(sigs)} release signature(s) came with the run, none by a listed signer") if self.signers else ""
        return Verdict(False, received, f"app bundle not pinned: received sha256 {received}, expected "
                                        f"{self.expected()} ({self.source} app_release)" + (f"; {why}" if why else ""))


def load_pin(site: SiteConfig) -> ReleasePin | None:
    """The site's pin from ``site.yaml`` (None when it has none); key errors name the file, field and fix."""
    rel = site.app_release
    if rel is None:
        return None
    source = site.source_file or "site.yaml"
    base = Path(site.source_file).parent if site.source_file else Path.cwd()
    signers = []
    for i, entry in enumerate(rel.signers):
        field = f"app_release.signers[{i}]"
        text = entry.strip()
        inline = text.startswith("-----BEGIN") or bool(_OPENSSH_KEY.match(text) or _RAW_KEY.match(text))
        label = text.split()[2] if _OPENSSH_KEY.match(text) and len(text.split()) > 2 else text[:24]
        if not inline:
            path = Path(text) if Path(text).is_absolute() else base / text
            label = Path(text).name
            try:
                text = path.read_text(encoding="ascii")
            except (OSError, UnicodeDecodeError) as exc:
                why = "not found" if isinstance(exc, FileNotFoundError) else f"unreadable ({exc})"
                raise ConfigError(f"{source}: {field}: key file {path} {why}; put the release signer's public key "
                                  "there (the 'ssh-ed25519 AAAA...' line of its .pub file) or write the key "
                                  "itself in the list instead of a path") from None
        try:
            key = parse_public_key(text)
        except (ValueError, TypeError, binascii.Error) as exc:
            raise ConfigError(f"{source}: {field}: {entry.strip()[:80]!r} is not an Ed25519 public key ({exc}); "
                              "list the signer's 'ssh-ed25519 AAAA...' line (ssh-keygen -t ed25519 makes one), "
                              "a PEM public key, or a path to a file holding one") from None
        signers.append((label, key))
    return ReleasePin(tuple(rel.sha256), tuple(signers), source)


def signature_text(value: str) -> str:
    """A ``--release-signature`` value: a signature file's content, or the base64 text itself."""
    path = Path(value)
    if len(value) < 4096 and path.is_file():
        return " ".join(path.read_text(encoding="ascii").split())
    return " ".join(value.split())

