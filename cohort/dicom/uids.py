"""Deterministic UIDs for derived objects: the same input always yields the same UIDs.

Idempotent and crash-safe ingest rests on this: re-converting an input rewrites identical objects
instead of adding new ones.
"""

from __future__ import annotations

from pydicom.uid import UID, generate_uid


def derived_uid(*parts: str) -> UID:
    """A UID that depends only on ``parts`` (e.g. site id, input digest, role such as "sr-series")."""
    return generate_uid(entropy_srcs=[str(p) for p in parts])
