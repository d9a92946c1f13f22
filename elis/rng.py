"""Seeded random streams: every random choice in ELIS comes from here.

``make_rng(seed, "arrivals")`` and ``make_rng(seed, "noisy_oracle")`` are independent,
reproducible ``np.random.Generator`` streams derived from one experiment seed, so adding a
new random consumer never shifts the numbers another one draws.
"""

from __future__ import annotations

import hashlib

import numpy as np


def stream_key(stream: str) -> int:
    """Stable 64-bit integer for a stream name (sha256; not Python's salted ``hash``)."""
    return int.from_bytes(hashlib.sha256(stream.encode("utf-8")).digest()[:8], "little")


def make_rng(seed: int, stream: str) -> np.random.Generator:
    """Return an independent PCG64 generator for ``(seed, stream)``.

    Args:
        seed: the experiment seed (``cfg.seed``); a non-negative int.
        stream: a name for the consumer, e.g. ``"arrivals"`` or ``"sampling/request-17"``.

    Raises:
        ValueError: if ``seed`` is negative or not an int.
    """
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return np.random.default_rng(np.random.SeedSequence([int(seed), stream_key(stream)]))
