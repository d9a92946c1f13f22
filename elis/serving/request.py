"""A request being served, and its life-cycle status.

Life (CONVENTIONS §2): WAITING → RUNNING → (PREEMPTED → WAITING …) → FINISHED | FAILED.
A ``Request`` is a mutable record owned by one ``Scheduler`` (one worker); the scheduler is
the only writer of its scheduling fields, the frontend sets ``worker_id`` once (sticky load
balancing), and workers only *read* it through ``WindowItem`` (``elis.serving.workers.base``).

Token/time conventions (units in names): times are seconds on the run's clock (simulated or
wall), token counts are integers under the served model's tokenizer. ``num_generated_tokens``
counts output tokens generated so far; step ``k = num_generated_tokens // window_tokens``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


@dataclass(slots=True, frozen=True)
class SamplingOptions:
    """Per-request decoding options (OpenAI request fields); None → the worker's default.

    ``position_offset`` (the gateway's ``elis_position_offset`` extension): the output-token
    index of the first token this request generates. A remote worker resuming window k of a
    request sends the tokens generated so far as the END of the prompt, with
    ``position_offset = len(tokens generated so far)``; a seeded draw for output position ``i``
    then uses the same stream whichever call or backend serves it (see
    ``elis.serving.workers.hf``: draws are keyed by (seed, position)).

    Raises:
        ValueError: temperature < 0 or not finite, top_p outside (0, 1], position_offset < 0
            (names the field).
    """

    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    position_offset: int = 0

    def __post_init__(self) -> None:
        if not (isinstance(self.position_offset, int) and self.position_offset >= 0):
            raise ValueError(f"position_offset must be an integer >= 0, got {self.position_offset!r}")
        t, p = self.temperature, self.top_p
        if t is not None and not (0.0 <= t < float("inf")):
            raise ValueError(f"temperature must be finite and >= 0, got {t!r}")
        if p is not None and not (0.0 < p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1], got {p!r}")


class RequestStatus(enum.IntEnum):
    """Ordered status (vLLM v1 style): everything ``>= FINISHED`` is terminal."""

    WAITING = 0
    RUNNING = 1
    PREEMPTED = 2
    FINISHED = 3
    FAILED = 4

    @property
    def is_terminal(self) -> bool:
        return self >= RequestStatus.FINISHED


@dataclass(slots=True, eq=False)  # identity equality: `r in running` must not compare fields
class Request:
    """One request, from arrival to finish.

    Identity and inputs:
        request_id: unique string id (names the request; never used to order requests).
        arrival_seq: integer submission sequence (0, 1, 2, … in arrival order), set by the
            driver at submission (``RequestTable.make_request(i)`` gives ``i``; a scheduler
            numbers requests that arrive without one). Ties in every ordering break on it,
            whatever the ids (``r0…r99`` unpadded would sort r0, r1, r10, … as strings).
        prompt: the user prompt text.
        arrival_time_s: when it reached the frontend.
        num_prompt_tokens: prompt length in tokens (prefill cost).
        max_tokens: cap on generated tokens (>= 1); hitting it finishes with reason 'length'.
        prompt_token_ids: the prompt's token ids when a real worker needs them, else None.
        generator: the model that wrote the true response (dataset column), if known.
        true_response: the TRUE response text (simulation only; revealed window by window).
        true_num_output_tokens: the TRUE response length in tokens (simulation/oracles only).
        sampling: per-request decoding options (temperature, top_p, seed) or None (the
            worker's configured defaults); passed to workers in ``WindowItem.sampling``.

    Progress (written by the scheduler from worker results):
        status, worker_id, output_token_ids, partial_response (text generated so far),
        num_generated_tokens, first_token_time_s, finish_time_s, finish_reason
        ('eos' | 'length'), fail_reason (str, only for FAILED), fail_time_s (when it failed,
        if the failing driver knew the time).

    Scheduling bookkeeping:
        predictions: one ``(num_generated_tokens, predicted_remaining_tokens)`` tuple per
            prediction made for this request (step k ↔ num_generated_tokens = k·W).
        first_predicted_tokens / predicted_remaining_tokens: the first and the latest
            prediction (None until predicted); SJF keys on the first, ISRTF on the latest.
        needs_prediction: set when the request reaches a window boundary (or arrives) and a
            policy that re-predicts must ask the predictor before its next decision.
        run_intervals: ``[start_s, end_s]`` pairs during which it was executing (contiguous
            segments merged); queuing delay = JCT − executed time.
        num_preemptions: times it was not re-selected at a window boundary while unfinished.
        num_recomputed_tokens: prompt + generated tokens re-prefilled after its KV was dropped.
        kv_cached: whether its KV cache is resident on the worker.
        load_tokens: its share of the worker's predicted outstanding tokens (latest prediction
            minus tokens generated since; load balancing).
        predicted_quantiles: the latest predictive quantiles of the remaining tokens, float64
            (Q,), at the policy's ``quantile_levels`` (None unless the policy asks for them).
    """

    request_id: str
    prompt: str
    arrival_time_s: float
    num_prompt_tokens: int
    max_tokens: int
    prompt_token_ids: list[int] | None = None
    generator: str | None = None
    true_response: str | None = None
    true_num_output_tokens: int | None = None
    arrival_seq: int = -1
    sampling: SamplingOptions | None = None
    # progress
    status: RequestStatus = RequestStatus.WAITING
    worker_id: int | None = None
    output_token_ids: list[int] = field(default_factory=list)
    partial_response: str = ""
    num_generated_tokens: int = 0
    first_token_time_s: float | None = None
    finish_time_s: float | None = None
    finish_reason: str | None = None
    fail_reason: str | None = None
    fail_time_s: float | None = None
    # scheduling bookkeeping
    predictions: list[tuple[int, float]] = field(default_factory=list)
    first_predicted_tokens: float | None = None
    predicted_remaining_tokens: float | None = None
    needs_prediction: bool = True
    run_intervals: list[list[float]] = field(default_factory=list)
    num_preemptions: int = 0
    num_recomputed_tokens: int = 0
    kv_cached: bool = False
    has_started: bool = False
    at_boundary: bool = True
    enqueue_time_s: float = 0.0
    max_wait_s: float = 0.0
    load_tokens: float = 0.0
    predicted_quantiles: object = None  # np.ndarray (Q,) of remaining tokens, for distribution-aware policies
    sort_key: tuple = ()
    buffer_version: int = 0
    in_buffer: bool = False

    def __post_init__(self) -> None:
        if self.max_tokens is None:
            raise ValueError(
                f"request {self.request_id!r}: max_tokens is None; pass an int >= 1 (the gateway "
                "fills a default bounded by the model's context length, elis.serving.gateway)"
            )
        if not self.max_tokens >= 1:
            raise ValueError(f"request {self.request_id!r}: max_tokens must be >= 1, got {self.max_tokens!r}")
        if not self.num_prompt_tokens >= 0:
            raise ValueError(
                f"request {self.request_id!r}: num_prompt_tokens must be >= 0, got {self.num_prompt_tokens!r}"
            )
        if self.true_num_output_tokens is not None and self.true_num_output_tokens < 0:
            raise ValueError(
                f"request {self.request_id!r}: true_num_output_tokens must be >= 0, "
                f"got {self.true_num_output_tokens!r}"
            )

    # --- derived values -------------------------------------------------------------
    @property
    def target_num_output_tokens(self) -> int | None:
        """Tokens it will generate in total: min(true length, max_tokens); None if unknown."""
        if self.true_num_output_tokens is None:
            return None
        return min(self.true_num_output_tokens, self.max_tokens)

    @property
    def true_remaining_tokens(self) -> int | None:
        """``target_num_output_tokens - num_generated_tokens`` (None when the truth is unknown)."""
        t = self.target_num_output_tokens
        return None if t is None else t - self.num_generated_tokens

    @property
    def num_context_tokens(self) -> int:
        """Prompt + generated tokens: the KV cache size (tokens) it needs to continue."""
        return self.num_prompt_tokens + self.num_generated_tokens

    @property
    def executed_time_s(self) -> float:
        return sum(e - s for s, e in self.run_intervals)

    @property
    def jct_s(self) -> float | None:
        """Job completion time = finish − arrival (None until finished)."""
        return None if self.finish_time_s is None else self.finish_time_s - self.arrival_time_s

    def record_prediction(self, predicted_remaining_tokens: float) -> None:
        """Store a prediction made at the current ``num_generated_tokens``."""
        self.predictions.append((self.num_generated_tokens, predicted_remaining_tokens))
        if self.first_predicted_tokens is None:
            self.first_predicted_tokens = predicted_remaining_tokens
        self.predicted_remaining_tokens = predicted_remaining_tokens
        self.needs_prediction = False

    def add_run_interval(self, start_s: float, end_s: float) -> None:
        """Record execution in ``[start_s, end_s]``; merged with the previous if contiguous."""
        if self.run_intervals and self.run_intervals[-1][1] == start_s:
            self.run_intervals[-1][1] = end_s
        else:
            self.run_intervals.append([start_s, end_s])
