"""Masks of the secure sum: integer vectors modulo 2**32 expanded from a 32-byte seed.

Also the noise the sites add to the cells of a sum that not every contributor released exactly
(:func:`polya_shares`: shares of a discrete Laplace).

Flower's SecAgg+ (``flwr.common.secure_aggregation.secaggplus_utils.pseudo_rand_gen``) folds its seed
to 32 bits for NumPy's ``RandomState``; a mask with 32 bits of entropy over a short vector of small
counts can be searched exhaustively. So masks here are ChaCha20 key streams (``cryptography``), keyed
by the 32-byte seed (a site's private mask seed, or a pairwise ECDH key from Flower's
``generate_shared_key``) and read as little-endian uint32. Everything else of the protocol (key
agreement, share encryption, Shamir sharing) is Flower's.
"""

from __future__ import annotations

import base64
import math

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

MOD_RANGE = 2**32  # counts are summed modulo this (exact while the true sum is below it)
_NONCE = bytes(16)  # every seed expands to exactly one mask: a fixed nonce is safe


def seed_bytes(seed: bytes) -> bytes:
    """32 key bytes from a raw 32-byte seed or a base64 (Fernet-style) shared key."""
    if len(seed) == 32:
        return seed
    raw = base64.urlsafe_b64decode(seed)
    if len(raw) != 32:
        raise ValueError(f"a mask seed must be 32 bytes, got {len(raw)}")
    return raw


def mask(seed: bytes, size: int) -> np.ndarray:
    """The mask of ``size`` cells for ``seed``: uniform integers in [0, 2**32), as int64."""
    stream = Cipher(algorithms.ChaCha20(seed_bytes(seed), _NONCE), mode=None).encryptor().update(bytes(4 * size))
    return np.frombuffer(stream, dtype="<u4").astype(np.int64)


def add_mod(a: np.ndarray, b: np.ndarray, sign: int = 1) -> np.ndarray:
    """``(a + sign * b) mod 2**32`` on int64 vectors."""
    return np.mod(a + sign * b, MOD_RANGE)


def polya_shares(rng: np.random.Generator, scale: float, parts: int, size: int) -> np.ndarray:
    """One of ``parts`` shares of discrete Laplace noise (P(k) ~ exp(-|k| / scale)) per cell: the
    difference of two negative binomials NB(1/parts, p); ``parts`` such shares add up to the two-sided
    geometric (Goryczka and Xiong's distributed discrete Laplace)."""
    p = 1.0 - math.exp(-1.0 / scale)
    return (rng.negative_binomial(1.0 / parts, p, size) - rng.negative_binomial(1.0 / parts, p, size)).astype(
        np.int64)


def noise_sd(scale: float, parts: float) -> float:
    """Standard deviation of the sum of ``parts`` full-noise equivalents (NB variance r(1-p)/p^2, twice)."""
    p = 1.0 - math.exp(-1.0 / scale)
    return math.sqrt(2 * parts * (1 - p) / p ** 2)
