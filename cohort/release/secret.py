"""The site's release secret and what is derived from it: keyed patient digests and keyed noise.

One random 32-byte key per store (``STORE/release/site.key``, created on first use, readable by the
site's own user only). It never leaves the site. From it:

* ``patient_digests``: a 64-bit keyed hash (HMAC-SHA256) per PatientID, the only form in which the
  differencing ledger keeps who stood behind a released cell. Without the key the digests cannot be
  linked to pseudonyms, and they are never sent anywhere.
* ``keyed_rng``: a random generator seeded by HMAC(key, label and parts). Noise drawn from it is the
  same for the same inputs and independent for different ones, which the coordinator cannot steer
  (it does not know the key).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Hashable, Iterable, Mapping
from pathlib import Path
from typing import TypeVar

import numpy as np

SECRET_FILE = Path("release") / "site.key"
SECRET_BYTES = 32
K = TypeVar("K", bound=Hashable)


def site_secret(store: Path) -> bytes:
    """This store's release key, created (mode 0600, exclusively) the first time it is needed."""
    path = Path(store) / SECRET_FILE
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another ClientApp process created it meanwhile
        return _read(path)
    with os.fdopen(fd, "wb") as fh:
        fh.write(secrets.token_bytes(SECRET_BYTES))
    return _read(path)


def _read(path: Path) -> bytes:
    key = path.read_bytes()
    if len(key) != SECRET_BYTES:
        raise OSError(f"{path} holds {len(key)} bytes, not a {SECRET_BYTES}-byte release key; it was changed "
                      f"outside this software. Restore it from the site's backup (a new key makes earlier "
                      f"ledger entries unlinkable, which weakens the differencing guard)")
    return key


def patient_digest(secret: bytes, patient_id: str) -> int:
    """The 64-bit keyed digest of one PatientID."""
    return int.from_bytes(hmac.new(secret, b"patient\0" + patient_id.encode(), hashlib.sha256).digest()[:8], "big")


def patient_digests(secret: bytes, patient_ids: Iterable[str]) -> np.ndarray:
    """Sorted, unique uint64 keyed digests of ``patient_ids``."""
    return np.unique(np.array([patient_digest(secret, p) for p in patient_ids], dtype=np.uint64))


def cell_digests(secret: bytes, members: Mapping[K, Iterable[str]]) -> dict[K, np.ndarray]:
    """``patient_digests`` of every cell, hashing each patient once (cells share most of their patients)."""
    cells = {k: list(ids) for k, ids in members.items()}
    digest = {p: patient_digest(secret, p) for p in {p for ids in cells.values() for p in ids}}
    return {k: np.unique(np.array([digest[p] for p in ids], dtype=np.uint64)) for k, ids in cells.items()}


def set_digest(secret: bytes, digests: np.ndarray) -> str:
    """A keyed digest of one set of patient digests (the identity of a cell's patient set)."""
    return hmac.new(secret, b"set\0" + np.ascontiguousarray(digests, dtype=">u8").tobytes(),
                    hashlib.sha256).hexdigest()


def keyed_rng(secret: bytes, label: str, *parts: str) -> np.random.Generator:
    """A generator seeded from the key and ``parts``: equal inputs, equal draws; else independent."""
    mac = hmac.new(secret, "\0".join((label, *parts)).encode(), hashlib.sha256).digest()
    return np.random.default_rng(int.from_bytes(mac, "big"))
