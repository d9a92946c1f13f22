"""Simulated time of a window: a documented linear (roofline-shaped) cost model.

Form (every coefficient in seconds; profiles in ``conf/cost_model/`` give each number's source):

    prefill_time_s(n)                = prefill_base_s + prefill_per_token_s * n            (n > 0; 0 if n == 0)
    decode_step_time_s(b, ctx)       = decode_base_s + decode_per_seq_s * b + decode_per_context_token_s * ctx
    predictor_latency_s(q)           = predictor_base_s + predictor_per_query_s * q         (q > 0; 0 if q == 0)
    scheduling_overhead_s            charged once per scheduling decision that starts a window

Why this shape: a decode step of a dense transformer reads all weights once (memory bound →
``decode_base_s`` ≈ weight bytes / HBM bandwidth), does ~2·params FLOPs per sequence
(``decode_per_seq_s``) and reads every context token's K/V (``decode_per_context_token_s`` ≈
KV bytes per token / bandwidth); prefill is compute bound (≈ 2·params FLOPs per token).
``b`` = sequences decoding in that step, ``ctx`` = their total context tokens (prompt +
generated so far). The real-backends issue fits these numbers by least squares
(``elis.serving.calibrate``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(slots=True, frozen=True)
class CostModel:
    """Coefficients of the model above (all finite and >= 0; see ``__post_init__``).

    Raises:
        ValueError: a negative or non-finite coefficient, naming it.
    """

    name: str = "unnamed"
    prefill_base_s: float = 0.0
    prefill_per_token_s: float = 0.0
    decode_base_s: float = 0.0
    decode_per_seq_s: float = 0.0
    decode_per_context_token_s: float = 0.0
    scheduling_overhead_s: float = 0.0
    predictor_base_s: float = 0.0
    predictor_per_query_s: float = 0.0

    def __post_init__(self) -> None:
        for f in (
            "prefill_base_s", "prefill_per_token_s", "decode_base_s", "decode_per_seq_s",
            "decode_per_context_token_s", "scheduling_overhead_s", "predictor_base_s",
            "predictor_per_query_s",
        ):
            v = getattr(self, f)
            if not (isinstance(v, (int, float)) and np.isfinite(v) and v >= 0):
                raise ValueError(f"cost_model.{f} must be a finite number >= 0, got {v!r}")

    def prefill_time_s(self, num_tokens: int) -> float:
        """Seconds to prefill ``num_tokens`` (all items of a window together); 0 for 0 tokens."""
        if num_tokens <= 0:
            return 0.0
        return self.prefill_base_s + self.prefill_per_token_s * num_tokens

    def decode_step_time_s(self, batch_size: int, num_context_tokens: int) -> float:
        """Seconds of one decode step for ``batch_size`` sequences with ``num_context_tokens`` in total."""
        return (
            self.decode_base_s
            + self.decode_per_seq_s * batch_size
            + self.decode_per_context_token_s * num_context_tokens
        )

    def decode_time_s(self, batch_size: int, num_context_tokens: int, num_steps: int) -> float:
        """Seconds of ``num_steps`` consecutive decode steps of a fixed batch.

        Each step adds one token per sequence, so step ``j`` (0-based) sees context
        ``num_context_tokens + j·batch_size``; closed form of the arithmetic series:
        ``n·step(b, ctx) + c·b·n(n−1)/2`` with ``c = decode_per_context_token_s``.
        """
        if num_steps <= 0 or batch_size <= 0:
            return 0.0
        n = num_steps
        return n * self.decode_step_time_s(batch_size, num_context_tokens) + (
            self.decode_per_context_token_s * batch_size * n * (n - 1) / 2.0
        )

    def steps_within_s(self, batch_size: int, num_context_tokens: int, duration_s: float) -> int:
        """Smallest ``n >= 0`` with ``decode_time_s(b, ctx, n) >= duration_s`` (step boundary at/after it)."""
        if duration_s <= 0:
            return 0
        a = self.decode_step_time_s(batch_size, num_context_tokens)
        c = self.decode_per_context_token_s * batch_size / 2.0
        # c·n² + (a − c)·n − d = 0
        if c > 0:
            n = (-(a - c) + np.sqrt((a - c) ** 2 + 4 * c * duration_s)) / (2 * c)
        elif a > 0:
            n = duration_s / a
        else:
            return 0
        n = max(int(np.floor(n)) - 1, 0)
        while self.decode_time_s(batch_size, num_context_tokens, n) < duration_s:
            n += 1
        return n

    def predictor_latency_s(self, num_queries: int) -> float:
        """Simulated seconds charged for one predictor call on ``num_queries`` queries (0 if none)."""
        if num_queries <= 0:
            return 0.0
        return self.predictor_base_s + self.predictor_per_query_s * num_queries


def estimate_capacity_rps(
    cost_model, mean_prompt_tokens: float, mean_output_tokens: float, max_batch_size: int
) -> float:
    """Requests/s one worker sustains with full batches (a rough, documented estimate).

    One request costs a prefill of its prompt plus ``mean_output_tokens`` decode steps and its
    EOS step (``elis.serving.metrics``), shared by ``max_batch_size`` requests, at the mean
    context (prompt + half the output):
    ``capacity = B / (prefill(P) + (L + 1) * step(B, B * (P + L/2)))`` requests per second.
    """
    b = int(max_batch_size)
    ctx = b * (mean_prompt_tokens + mean_output_tokens / 2)
    per_request_s = cost_model.prefill_time_s(int(mean_prompt_tokens)) + (mean_output_tokens + 1) * (
        cost_model.decode_step_time_s(b, int(ctx))
    )
    return b / per_request_s
