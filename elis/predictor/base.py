"""The interface the scheduler uses to ask "how many tokens are left?".

``LengthPredictor.predict_remaining(queries) -> np.ndarray`` maps a batch of queries (prompt,
partial response, tokens generated so far) to predicted remaining output tokens: float64,
shape ``(N,)``, finite and ``>= 0``. ``predict_remaining([])`` returns an empty array, and a
query's prediction never depends on the other queries in its batch.

Implementations: the learned predictor (``elis.predictor.learned``) and the reference
predictors in ``elis.predictor.simple`` (oracle, noisy oracle, constant, prompt length).
Each records its own latency so the scheduler can charge it (``latency`` attribute).

Predictive distribution (optional): ``predict_quantiles(queries, levels) -> np.ndarray`` gives
quantiles of the remaining tokens at ``levels`` (strictly increasing, in (0, 1)): float64 of
shape ``(N, Q)``, finite, ``>= 0`` and non-decreasing along Q. A predictor that implements it
sets ``provides_quantiles = True`` (distribution-aware policies such as ``sched=gittins``
refuse one without it at construction); ``TimedPredictor``'s default raises
``NotImplementedError`` naming the predictor.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(slots=True, frozen=True)
class PredictionQuery:
    """One request at one scheduling point.

    Attributes:
        prompt: the user prompt text.
        partial_response: the response text generated so far ('' before the first window).
        num_generated_tokens: output tokens generated so far (k*W at a window boundary).
        request_id: the serving request's id (for logs and caches); optional.
        generator: the served model's name, for generator-conditioned predictors; optional.
        num_output_tokens: the TRUE total output tokens, known only in simulation or
            offline evaluation; read by oracle predictors alone, ``None`` when unknown.
        num_prompt_tokens: prompt tokens, when the caller knows them; optional.
    """

    prompt: str
    partial_response: str = ""
    num_generated_tokens: int = 0
    request_id: str | None = None
    generator: str | None = None
    num_output_tokens: int | None = None
    num_prompt_tokens: int | None = None


@dataclass(slots=True)
class LatencyStats:
    """Wall-clock latency of ``predict_remaining`` calls (milliseconds)."""

    num_calls: int = 0
    num_queries: int = 0
    total_ms: float = 0.0
    last_ms: float = 0.0
    per_call_ms: list[float] = field(default_factory=list)

    def record(self, num_queries: int, elapsed_ms: float) -> None:
        self.num_calls += 1
        self.num_queries += num_queries
        self.total_ms += elapsed_ms
        self.last_ms = elapsed_ms
        self.per_call_ms.append(elapsed_ms)

    @property
    def mean_ms_per_call(self) -> float:
        return self.total_ms / self.num_calls if self.num_calls else 0.0


@runtime_checkable
class LengthPredictor(Protocol):
    """Anything that maps queries to predicted remaining output tokens."""

    name: str
    latency: LatencyStats

    def predict_remaining(self, queries: Sequence[PredictionQuery]) -> np.ndarray:
        """Return predicted remaining tokens, float64 of shape (len(queries),), finite, >= 0."""
        ...


class TimedPredictor:
    """Base class: subclasses implement ``_predict``; this one times and validates it."""

    name: str = "predictor"
    provides_quantiles: bool = False

    def __init__(self) -> None:
        self.latency = LatencyStats()

    def predict_remaining(self, queries: Sequence[PredictionQuery]) -> np.ndarray:
        """Predicted remaining tokens, shape (N,), float64, finite and >= 0.

        Raises:
            RuntimeError: if the implementation returns the wrong shape or a non-finite value.
        """
        start = time.perf_counter()
        if len(queries) == 0:
            out = np.zeros(0, dtype=np.float64)
        else:
            out = np.asarray(self._predict(queries), dtype=np.float64).reshape(-1)
            if out.shape != (len(queries),):
                raise RuntimeError(
                    f"{self.name}: predicted shape {out.shape}, expected ({len(queries)},)"
                )
            if not np.all(np.isfinite(out)):
                bad = int(np.sum(~np.isfinite(out)))
                raise RuntimeError(f"{self.name}: {bad} non-finite predictions")
            out = np.clip(out, 0.0, None)
        self.latency.record(len(queries), (time.perf_counter() - start) * 1e3)
        return out

    def _predict(self, queries: Sequence[PredictionQuery]) -> np.ndarray:
        raise NotImplementedError

    def predict_quantiles(self, queries: Sequence[PredictionQuery], levels: Sequence[float]) -> np.ndarray:
        """Quantiles of the remaining tokens: float64 (N, Q), finite, >= 0, non-decreasing in Q.

        Args:
            queries: N queries.
            levels: Q strictly increasing probabilities in (0, 1).

        Raises:
            NotImplementedError: the predictor gives no predictive distribution (naming it).
            ValueError: bad ``levels`` (naming them).
            RuntimeError: an implementation returning the wrong shape, non-finite or
                decreasing quantiles.
        """
        if not self.provides_quantiles:
            raise NotImplementedError(
                f"predictor {self.name!r} ({type(self).__name__}) gives no predictive distribution: "
                "predict_quantiles is not implemented (oracle, noisy_oracle and gbdt implement it)"
            )
        lv = np.asarray(levels, dtype=np.float64).reshape(-1)
        if lv.size == 0 or not (np.all((lv > 0) & (lv < 1)) and np.all(np.diff(lv) > 0)):
            raise ValueError(f"predict_quantiles: levels must be strictly increasing in (0, 1), got {list(levels)}")
        start = time.perf_counter()
        if len(queries) == 0:
            out = np.zeros((0, lv.size), dtype=np.float64)
        else:
            out = np.asarray(self._predict_quantiles(queries, lv), dtype=np.float64)
            if out.shape != (len(queries), lv.size):
                raise RuntimeError(f"{self.name}: quantiles shape {out.shape}, expected ({len(queries)}, {lv.size})")
            if not np.all(np.isfinite(out)):
                raise RuntimeError(f"{self.name}: {int(np.sum(~np.isfinite(out)))} non-finite quantiles")
            if np.any(np.diff(out, axis=1) < 0):
                raise RuntimeError(f"{self.name}: quantiles decrease along the levels")
            out = np.clip(out, 0.0, None)
        self.latency.record(len(queries), (time.perf_counter() - start) * 1e3)
        return out

    def _predict_quantiles(self, queries: Sequence[PredictionQuery], levels: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def supports_quantiles(predictor) -> bool:
    """Whether ``predictor`` gives a predictive distribution: ``provides_quantiles = True``, or a
    ``predict_quantiles`` of its own (not ``TimedPredictor``'s refusing default)."""
    if getattr(predictor, "provides_quantiles", False):
        return True
    fn = getattr(type(predictor), "predict_quantiles", None)
    return fn is not None and fn is not TimedPredictor.predict_quantiles
