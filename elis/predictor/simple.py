"""Reference predictors that need no training: bounds and baselines for scheduling.

- ``OraclePredictor``: the true remaining tokens (simulation only): SRTF-oracle's key.
- ``NoisyOraclePredictor``: true remaining × log-normal noise exp(σ·z), z ~ N(0, 1), to
  measure how much predictor accuracy scheduling needs; its ``predict_quantiles`` is the
  log-normal around its point prediction (the oracle's is a point mass). The noise of a query depends only on
  (seed, request_id, num_generated_tokens), never on batch composition or call order.
- ``ConstantPredictor``: one value for everything (turns SJF/ISRTF into FCFS-with-ties).
- ``PromptLengthPredictor``: ``intercept + slope * prompt tokens`` (a linear baseline; fit
  the coefficients offline with ``elis.predictor.baselines`` or pass them).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from elis.predictor.base import PredictionQuery, TimedPredictor
from elis.rng import make_rng


def _true_remaining(q: PredictionQuery, who: str) -> float:
    if q.num_output_tokens is None:
        raise ValueError(
            f"{who} needs PredictionQuery.num_output_tokens (the true length); "
            f"request_id={q.request_id!r} has None. Oracles work only in simulation/evaluation."
        )
    return float(max(q.num_output_tokens - q.num_generated_tokens, 0))


class OraclePredictor(TimedPredictor):
    """True remaining tokens ``num_output_tokens - num_generated_tokens``.

    Raises:
        ValueError: if a query lacks ``num_output_tokens``.
    """

    name = "oracle"
    provides_quantiles = True

    def _predict(self, queries: Sequence[PredictionQuery]) -> np.ndarray:
        return np.array([_true_remaining(q, self.name) for q in queries])

    def _predict_quantiles(self, queries: Sequence[PredictionQuery], levels: np.ndarray) -> np.ndarray:
        # a point mass at the truth: every quantile is the true remaining length
        return np.repeat(self._predict(queries)[:, None], levels.size, axis=1)


class NoisyOraclePredictor(TimedPredictor):
    """True remaining × exp(sigma · z), z ~ N(0, 1) drawn per (request, step).

    Args:
        sigma: log-normal noise scale (0 = oracle); must be finite and >= 0.
        seed: experiment seed.

    Raises:
        ValueError: for a negative/non-finite sigma, or a query without the true length.
    """

    name = "noisy_oracle"
    provides_quantiles = True

    def __init__(self, sigma: float = 0.5, seed: int = 0) -> None:
        super().__init__()
        if not np.isfinite(sigma) or sigma < 0:
            raise ValueError(f"noisy_oracle.sigma must be finite and >= 0, got {sigma!r}")
        self.sigma = float(sigma)
        self.seed = int(seed)

    def _predict(self, queries: Sequence[PredictionQuery]) -> np.ndarray:
        out = np.empty(len(queries))
        for i, q in enumerate(queries):
            key = f"noisy_oracle/{q.request_id or q.prompt}/{q.num_generated_tokens}"
            z = make_rng(self.seed, key).standard_normal()
            out[i] = _true_remaining(q, self.name) * float(np.exp(self.sigma * z))
        return out


    def _predict_quantiles(self, queries: Sequence[PredictionQuery], levels: np.ndarray) -> np.ndarray:
        """Quantiles consistent with the noise: given the noisy point ``p = R·exp(σz)`` (the
        same draw ``_predict`` makes for that query), ``log R = log p − σz`` with z ~ N(0, 1),
        so the quantile at level ℓ is ``p·exp(σ·Φ⁻¹(ℓ))``; the median is ``p`` itself."""
        from scipy.special import ndtri

        p = self._predict(queries)
        return p[:, None] * np.exp(self.sigma * ndtri(levels))[None, :]


class ConstantPredictor(TimedPredictor):
    """Always ``value`` tokens (finite, >= 0)."""

    name = "constant"

    def __init__(self, value: float = 256.0) -> None:
        super().__init__()
        if not np.isfinite(value) or value < 0:
            raise ValueError(f"constant.value must be finite and >= 0, got {value!r}")
        self.value = float(value)

    def _predict(self, queries: Sequence[PredictionQuery]) -> np.ndarray:
        return np.full(len(queries), self.value)


class PromptLengthPredictor(TimedPredictor):
    """``max(intercept + slope * prompt_tokens - generated, 0)``.

    Prompt tokens come from ``query.num_prompt_tokens`` or, when absent, are estimated as
    ``len(prompt) / chars_per_token``.
    """

    name = "prompt_length"

    def __init__(
        self, intercept: float = 250.0, slope: float = 0.0, chars_per_token: float = 4.0
    ) -> None:
        super().__init__()
        for field_name, v in (("intercept", intercept), ("slope", slope)):
            if not np.isfinite(v):
                raise ValueError(f"prompt_length.{field_name} must be finite, got {v!r}")
        if not chars_per_token > 0:
            raise ValueError(f"prompt_length.chars_per_token must be > 0, got {chars_per_token!r}")
        self.intercept, self.slope, self.chars_per_token = intercept, slope, chars_per_token

    def _predict(self, queries: Sequence[PredictionQuery]) -> np.ndarray:
        n_prompt = np.array(
            [
                q.num_prompt_tokens if q.num_prompt_tokens is not None
                else len(q.prompt) / self.chars_per_token
                for q in queries
            ],
            dtype=np.float64,
        )
        generated = np.array([q.num_generated_tokens for q in queries], dtype=np.float64)
        return self.intercept + self.slope * n_prompt - generated
