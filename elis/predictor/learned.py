"""The learned predictor the scheduler calls: frozen encoder + cache + trained MLP head.

``LearnedPredictor.from_checkpoint(ckpt_path)`` rebuilds everything from a checkpoint written
by ``train.py`` (the encoder settings and generator vocabulary are in its hyperparameters).
Queries are embedded through the ``EmbeddingCache`` (one batched, length-sorted pass over the
texts it has not seen), so serving simulations can call ``predict_remaining`` once on all
(request, step) queries up front, and repeated texts cost a hash lookup.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from elis.predictor.base import PredictionQuery, TimedPredictor

log = logging.getLogger(__name__)


class LearnedPredictor(TimedPredictor):
    """Predicted remaining tokens from (prompt, partial response[, generator]).

    Args:
        module: a trained ``LengthRegressor`` (eval mode is set here).
        cache: an ``EmbeddingCache`` wrapping the module's encoder.
        name: label in logs/results (default ``learned``).
        batch_size: rows per head forward pass.
    """

    def __init__(self, module, cache, name: str = "learned", batch_size: int = 4096) -> None:
        super().__init__()
        self.module = module.eval()
        self.cache = cache
        self.name = name
        self.batch_size = int(batch_size)
        gens = list(module.hparams.get("generators") or [])
        self._gen_index = {g: i for i, g in enumerate(gens)}

    @classmethod
    def from_checkpoint(
        cls,
        ckpt_path: str,
        cache_dir: str | None = None,
        device: str = "cpu",
        name: str = "learned",
        train_command: str = "python train.py predictor=<encoder config> data=<dataset>",
        encoder_overrides: dict | None = None,
    ) -> LearnedPredictor:
        """Load ``ckpt_path`` (a ``.ckpt`` file, or a folder holding ``best.ckpt``).

        Raises:
            FileNotFoundError: naming the path and the ``train_command`` that creates it.
        """
        import torch

        from elis.predictor.cache import EmbeddingCache
        from elis.predictor.encoder import TextEncoder
        from elis.predictor.module import LengthRegressor

        path = Path(ckpt_path)
        if path.is_dir():
            path = path / "best.ckpt"
        if not path.is_file():
            raise FileNotFoundError(
                f"predictor checkpoint {str(path)!r} does not exist; create it with: {train_command}"
            )
        module = LengthRegressor.load_from_checkpoint(str(path), map_location=torch.device(device))
        enc_kwargs = dict(module.hparams.encoder or {})
        enc_kwargs.update(encoder_overrides or {})
        enc_kwargs["device"] = device
        encoder = TextEncoder(**enc_kwargs)
        log.info("learned predictor from %s (encoder %s)", path, encoder.cache_key)
        return cls(module, EmbeddingCache(encoder, cache_dir), name=name)

    def stats(self) -> dict:
        """``{"embedding": encoder counters (num_truncated, ...) + cache hits/computed/key}``."""
        return {"embedding": self.cache.stats()}

    def _predict(self, queries: Sequence[PredictionQuery]) -> np.ndarray:
        import torch

        emb = self.cache.embed([q.prompt for q in queries], [q.partial_response for q in queries])
        gen_idx = np.array([self._gen_index.get(q.generator or "", 0) for q in queries])
        ngen = np.array([q.num_generated_tokens for q in queries], dtype=np.float32)
        out = np.empty(len(queries), dtype=np.float64)
        with torch.inference_mode():
            for s in range(0, len(queries), self.batch_size):
                sl = slice(s, s + self.batch_size)
                batch = {
                    "emb": torch.from_numpy(emb[sl]).to(self.module.device),
                    "generator_idx": torch.from_numpy(gen_idx[sl]).to(self.module.device),
                    "num_generated_tokens": torch.from_numpy(ngen[sl]).to(self.module.device),
                }
                out[sl] = self.module.predict_tokens(batch).double().cpu().numpy()
        return out
