"""Predictions for the scheduler: a ``LengthPredictor`` plus how its latency is charged.

``PredictionService.predict(requests) -> (predicted_remaining, charged_s)`` builds one
``PredictionQuery`` per request from its prompt and the text generated so far and calls the
predictor once (batched). In simulation the inputs are known before the run (prefixes of the
TRUE responses at every window boundary k·W), so ``precompute(requests)`` can evaluate the
predictor on all of them in ONE batched pass (the learned predictor's cached, batched path)
and ``predict`` then only looks results up — outputs are identical, only faster.

Text reveal (simulation): the dataset stores token COUNTS, not token ids, so the text after
``g`` of ``L`` tokens is approximated by the first ``round(len(text)·g/L)`` characters
(``reveal_prefix``). Token and character positions agree on average; at k·W = 50 tokens the
cut can fall a few characters off a token boundary, which the predictor's training inputs
(decode of the first k·W token ids) do not have.

Latency charged to simulated time: ``cost_model`` (deterministic: ``predictor_base_s +
predictor_per_query_s·n`` from the profile) or ``measured`` (the predictor's own measured mean
seconds per query × n; realistic, but the run is then not bit-reproducible).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np

from elis.predictor.base import LengthPredictor, PredictionQuery
from elis.serving.cost_model import CostModel
from elis.serving.request import Request

log = logging.getLogger(__name__)

LATENCY_SOURCES: tuple[str, ...] = ("cost_model", "measured", "zero")
# Reference predictors that never read the partial text (elis.predictor.simple).
TEXT_FREE_PREDICTORS: frozenset[str] = frozenset({"oracle", "noisy_oracle", "constant", "prompt_length"})


def reveal_prefix(text: str, num_tokens: int, total_tokens: int) -> str:
    """The first ``num_tokens`` of a ``total_tokens``-token ``text``, by character proportion.

    Returns ``text`` when ``num_tokens >= total_tokens`` and '' when ``num_tokens <= 0``.
    """
    if num_tokens <= 0 or not text:
        return ""
    if num_tokens >= total_tokens:
        return text
    return text[: round(len(text) * num_tokens / total_tokens)]


def _true_remaining(r: Request) -> float:
    t = r.target_num_output_tokens
    if t is None:
        raise ValueError(
            f"oracle needs the true length; request_id={r.request_id!r} has None (simulation only)"
        )
    return float(max(t - r.num_generated_tokens, 0))


def predictor_reads_text(predictor: LengthPredictor) -> bool:
    """Whether the predictor reads ``partial_response`` (``uses_text`` attribute, else by name)."""
    flag = getattr(predictor, "uses_text", None)
    if flag is not None:
        return bool(flag)
    return predictor.name not in TEXT_FREE_PREDICTORS


def predictor_stats(predictor: LengthPredictor | None) -> dict:
    """What the predictor reports about its own work, for ``metrics.json`` (``{}`` if nothing).

    A predictor with a text encoder returns ``{"embedding": {num_texts, num_tokens,
    num_truncated, seconds, ..., cache_hits, cache_computed, cache_key}}`` from its ``stats()``
    method (the same block ``train.py`` writes), so every run that predicts records how many
    encoder inputs were truncated.
    """
    fn = getattr(predictor, "stats", None)
    return dict(fn()) if callable(fn) else {}


class PredictionService:
    """Batched predictions for requests, with simulated-latency accounting.

    Args:
        predictor: any ``LengthPredictor``.
        cost_model: supplies ``predictor_latency_s`` when ``latency_source='cost_model'``.
        latency_source: 'cost_model' | 'measured' | 'zero'.
        window_tokens: W (the steps ``precompute`` covers are multiples of it).

    Raises:
        ValueError: unknown ``latency_source``; 'cost_model' without a cost model.
    """

    def __init__(
        self,
        predictor: LengthPredictor,
        cost_model: CostModel | None = None,
        latency_source: str = "cost_model",
        window_tokens: int = 50,
    ) -> None:
        if latency_source not in LATENCY_SOURCES:
            raise ValueError(f"predictor_latency={latency_source!r} is not one of {list(LATENCY_SOURCES)}")
        if latency_source == "cost_model" and cost_model is None:
            raise ValueError("predictor_latency='cost_model' needs a cost model")
        self.predictor = predictor
        self.cost_model = cost_model
        self.latency_source = latency_source
        self.window_tokens = window_tokens
        self.reads_text = predictor_reads_text(predictor)
        # The exact oracle needs no query objects: same numbers, computed directly (simulation speed).
        from elis.predictor.simple import OraclePredictor

        self._exact_oracle = type(predictor) is OraclePredictor
        self._table: dict[tuple[str, int], float] = {}
        self.num_calls = 0
        self.num_queries = 0
        self.num_table_hits = 0
        self.precompute_wall_s = 0.0

    # ------------------------------------------------------------------ queries
    def query_for(self, r: Request, num_generated_tokens: int | None = None) -> PredictionQuery:
        """The predictor's input for ``r`` after ``num_generated_tokens`` (default: now)."""
        g = r.num_generated_tokens if num_generated_tokens is None else num_generated_tokens
        if not self.reads_text:
            partial = ""
        elif num_generated_tokens is None:
            partial = r.partial_response
        else:
            partial = reveal_prefix(r.true_response or "", g, r.true_num_output_tokens or 0)
        return PredictionQuery(
            prompt=r.prompt,
            partial_response=partial,
            num_generated_tokens=g,
            request_id=r.request_id,
            generator=r.generator,
            num_output_tokens=r.target_num_output_tokens,
            num_prompt_tokens=r.num_prompt_tokens,
        )

    def precompute(self, requests: Iterable[Request]) -> int:
        """Predict every window boundary ``g = k·W <= target length`` of every request in one call
        (``g = target`` when the answer is a multiple of W: its EOS step runs in one more window).

        Returns the number of (request, step) queries evaluated.
        """
        import time

        keys: list[tuple[str, int]] = []
        queries: list[PredictionQuery] = []
        w = self.window_tokens
        for r in requests:
            target = r.target_num_output_tokens
            if target is None:
                raise ValueError(f"precompute needs the true length; request {r.request_id!r} has None")
            for g in range(0, target + 1, w):  # g = target: an EOS-only window still decides
                keys.append((r.request_id, g))
                queries.append(self.query_for(r, g))
        start = time.perf_counter()
        preds = self.predictor.predict_remaining(queries)
        self.precompute_wall_s = time.perf_counter() - start
        self._table.update(zip(keys, (float(p) for p in preds)))
        log.info("precomputed %d predictions in %.2f s", len(keys), self.precompute_wall_s)
        return len(keys)

    # ------------------------------------------------------------------ serving
    def predict(self, requests: list[Request]) -> tuple[np.ndarray, float]:
        """Predicted remaining tokens (float64, shape (N,)) and the seconds to charge."""
        n = len(requests)
        if self._exact_oracle:
            self.num_calls += 1
            self.num_queries += n
            out = np.array([_true_remaining(r) for r in requests], dtype=np.float64)
            return out, self.latency_s(n)
        out = np.empty(n, dtype=np.float64)
        missing: list[int] = []
        for i, r in enumerate(requests):
            v = self._table.get((r.request_id, r.num_generated_tokens))
            if v is None:
                missing.append(i)
            else:
                out[i] = v
        self.num_table_hits += n - len(missing)
        if missing:
            preds = self.predictor.predict_remaining([self.query_for(requests[i]) for i in missing])
            out[missing] = preds
        self.num_calls += 1
        self.num_queries += n
        return out, self.latency_s(n)

    def predict_quantiles(self, requests: list[Request], levels) -> np.ndarray:
        """The predictor's quantiles of the remaining tokens, float64 (N, len(levels)).

        Not charged separately (see ``elis.serving.scheduler``); not cached by ``precompute``.

        Raises:
            NotImplementedError: the predictor gives no predictive distribution (naming it).
        """
        fn = getattr(self.predictor, "predict_quantiles", None)
        if fn is None:
            raise NotImplementedError(f"predictor {self.predictor.name!r} does not implement predict_quantiles")
        return fn([self.query_for(r) for r in requests], levels)

    def observe_finished(self, r: Request) -> None:
        """Tell the predictor an answer finished (its length now known), when it learns online.

        Only answers that ended on their own are passed (``finish_reason != 'length'``: a
        ``max_tokens`` cut says the length is at least that much, not what it is). Predictors
        without ``observe_finished(prompt, generator, num_output_tokens)`` ignore it.
        """
        observe = getattr(self.predictor, "observe_finished", None)
        if observe is None or r.finish_reason == "length":
            return
        observe(r.prompt, r.generator, int(r.num_generated_tokens))

    def latency_s(self, num_queries: int) -> float:
        """Seconds charged for one call on ``num_queries`` queries."""
        if self.latency_source == "zero" or num_queries == 0:
            return 0.0
        if self.latency_source == "cost_model":
            return self.cost_model.predictor_latency_s(num_queries)  # type: ignore[union-attr]
        lat = self.predictor.latency
        per_query_s = lat.total_ms / 1e3 / lat.num_queries if lat.num_queries else 0.0
        return per_query_s * num_queries
