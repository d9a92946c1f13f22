"""On-disk embedding cache: each distinct (encoder setting, text) is embedded once.

Layout: ``<cache_dir>/embeddings/<encoder.cache_key>/shard-<n>.npz``, each shard holding
``keys`` (sha256 hex of the joined text, see ``encoder.join_text``) and ``emb`` (float32,
(n, dim)). The namespace ``cache_key`` encodes model name, pooling, max length, truncation
budget and backend, so a different setting never reads another's vectors. New vectors are
appended as a new shard (no rewrite of old ones); shards are written to a temporary name and
renamed, so an interrupted run leaves no half-written shard.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from elis.predictor.encoder import TextEncoder, join_text

log = logging.getLogger(__name__)


def text_key(prompt: str, partial_response: str) -> str:
    """sha256 hex of the encoder input text (prompt [+ separator + partial response])."""
    return hashlib.sha256(join_text(prompt, partial_response).encode("utf-8")).hexdigest()


class EmbeddingCache:
    """Embeddings of an encoder, cached on disk and in memory.

    Args:
        encoder: the ``TextEncoder`` that computes missing vectors.
        cache_dir: root folder (``paths.cache_dir``); None keeps vectors in memory only.

    Attributes:
        num_hits / num_computed: queries served from the cache / texts embedded now.
    """

    def __init__(self, encoder: TextEncoder, cache_dir: str | Path | None) -> None:
        self.encoder = encoder
        self.dir = Path(cache_dir) / "embeddings" / encoder.cache_key if cache_dir else None
        self._index: dict[str, tuple[int, int]] = {}
        self._rows: list[np.ndarray] = []
        self._num_shards = 0
        self.num_hits = 0
        self.num_computed = 0
        if self.dir is not None and self.dir.is_dir():
            for shard in sorted(self.dir.glob("shard-*.npz")):
                if ".tmp" in shard.name:
                    continue
                with np.load(shard) as z:
                    self._add(list(z["keys"]), z["emb"])
                self._num_shards += 1
            log.info("embedding cache %s: %d vectors", self.dir, len(self._index))

    def __len__(self) -> int:
        return len(self._index)

    def _add(self, keys: list[str], emb: np.ndarray) -> None:
        # Vectors stay in their chunks (no re-concatenation per call): index = (chunk, row).
        chunk = len(self._rows)
        self._rows.append(np.asarray(emb, dtype=np.float32))
        for i, k in enumerate(keys):
            self._index.setdefault(str(k), (chunk, i))

    def embed(
        self, prompts: Sequence[str], responses: Sequence[str], progress: bool = False
    ) -> np.ndarray:
        """Embeddings of the pairs, float32 (N, dim); computes and stores only missing texts.

        Raises:
            ValueError: if prompts and responses differ in length.
        """
        if len(prompts) != len(responses):
            raise ValueError(f"embed: {len(prompts)} prompts but {len(responses)} responses")
        keys = [text_key(p, r) for p, r in zip(prompts, responses)]
        missing: dict[str, int] = {}
        for i, k in enumerate(keys):
            if k not in self._index and k not in missing:
                missing[k] = i
        self.num_hits += len(keys) - len(missing)
        if missing:
            idx = list(missing.values())
            emb = self.encoder.encode(
                [prompts[i] for i in idx], [responses[i] for i in idx], progress=progress
            )
            self.num_computed += len(idx)
            self._add(list(missing), emb)
            self._save(list(missing), emb)
        out = np.empty((len(keys), self.encoder.dim), dtype=np.float32)
        for i, k in enumerate(keys):
            chunk, row = self._index[k]
            out[i] = self._rows[chunk][row]
        return out

    def stats(self) -> dict:
        """The encoder's counters (num_texts, num_tokens, num_truncated, ...) plus
        ``cache_hits``, ``cache_computed`` and ``cache_key``: the ``embedding`` block of
        ``metrics.json``."""
        return {**self.encoder.stats.as_dict(), "cache_hits": self.num_hits,
                "cache_computed": self.num_computed, "cache_key": self.encoder.cache_key}

    def _save(self, keys: list[str], emb: np.ndarray) -> None:
        if self.dir is None:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        while (self.dir / f"shard-{self._num_shards:05d}.npz").exists():
            self._num_shards += 1
        final = self.dir / f"shard-{self._num_shards:05d}.npz"
        tmp = final.with_suffix(".tmp.npz")
        np.savez(tmp, keys=np.array(keys), emb=emb.astype(np.float32))
        os.replace(tmp, final)
        self._num_shards += 1
