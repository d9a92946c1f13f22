"""Reference predictors that need no training: bounds and baselines for scheduling.

- ``OraclePredictor``: the true remaining tokens (simulation only): SRTF-oracle's key.
- ``NoisyOraclePredictor``: true remaining × log-normal noise exp(σ·z), z ~ N(0, 1), to
  measure how much predictor accuracy scheduling needs; its ``predict_quantiles`` is the
  log-normal around its point prediction (the oracle's is a point mass). The noise of a query depends only on
  (seed, request_id, num_generated_tokens), never on batch composition or call order. It is
  counter-based (``standard_normal_at``): a 64-bit key per (seed, request) from sha256, the
  step's token count as the counter, SplitMix64 (Steele, Lea & Flood, OOPSLA 2014) → two
  uniforms → Box–Muller, vectorised in numpy. No generator object is built per query (that was half the run time
  of a 1M-request simulation); the simulator's fast path computes the key once per request.
- ``ConstantPredictor``: one value for everything (turns SJF/ISRTF into FCFS-with-ties).
- ``PromptLengthPredictor``: ``intercept + slope * prompt tokens`` (a linear baseline; fit
  the coefficients offline with ``elis.predictor.baselines`` or pass them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from elis.predictor.base import PredictionQuery, TimedPredictor
from elis.rng import stream_key

_MASK64 = (1 << 64) - 1
_TWO_PI = 2.0 * math.pi


def _splitmix64(x: int) -> int:
    """SplitMix64's output function of state ``x`` (a 64-bit integer), as a 64-bit integer."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def noise_key(seed: int, request_key: str) -> int:
    """The 64-bit key of one request's noise stream: sha256 of ``"noisy_oracle/{seed}/{request_key}"``."""
    return stream_key(f"noisy_oracle/{int(seed)}/{request_key}")


def _splitmix64_np(x: np.ndarray) -> np.ndarray:
    """``_splitmix64`` elementwise on a uint64 array (wrapping arithmetic, same integers)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def standard_normal_at(keys, counters) -> np.ndarray:
    """z ~ N(0, 1) for each ``(key, counter)`` pair: counter-based, reproducible, order-free.

    Two 53-bit uniforms from SplitMix64 of ``key ⊕ counter·φ`` (u1 in (0, 1], u2 in [0, 1)),
    then Box–Muller ``sqrt(−2 ln u1)·cos(2π u2)``, elementwise in numpy, so a value does not
    depend on the other pairs of the call (the simulator's fast path evaluates many at once;
    ``tests/test_simple_predictors.py`` checks that one big call equals one call per pair).

    Args:
        keys: uint64-convertible, shape (N,) (``noise_key``).
        counters: non-negative ints, shape (N,) (tokens generated so far).

    Returns:
        float64 (N,).
    """
    with np.errstate(over="ignore"):
        k = np.asarray(keys, dtype=np.uint64)
        c = np.asarray(counters, dtype=np.int64).astype(np.uint64) * np.uint64(0xD1B54A32D192ED03)
        a = _splitmix64_np(k ^ c)
        b = _splitmix64_np(a)
    u1 = ((a >> np.uint64(11)) + np.uint64(1)).astype(np.float64) * 1.1102230246251565e-16  # 2**-53
    u2 = (b >> np.uint64(11)).astype(np.float64) * 1.1102230246251565e-16
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(_TWO_PI * u2)


def noise_multipliers(keys, counters, sigma: float) -> np.ndarray:
    """``exp(sigma · z)`` for each pair (the noisy oracle's factor), float64 (N,)."""
    return np.exp(sigma * standard_normal_at(keys, counters))


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

    ``z = standard_normal_at([noise_key(seed, request_id)], [num_generated_tokens])`` (module
    docstring); ``request_id`` falls back to the prompt when a query has none.

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
        rem = np.array([_true_remaining(q, self.name) for q in queries], dtype=np.float64)
        keys = [noise_key(self.seed, q.request_id or q.prompt) for q in queries]
        return rem * noise_multipliers(keys, [q.num_generated_tokens for q in queries], self.sigma)


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
