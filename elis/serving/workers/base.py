"""The worker seam: what the scheduler asks an engine to run, and what comes back.

A ``Scheduler.schedule(now_s)`` produces a ``WindowBatch``; a worker executes it and returns
one ``WindowResult`` per item; ``Scheduler.update(output, results, now_s)`` consumes them.
The contract is clock-agnostic (simulated or wall clock), in the vLLM v1 two-phase style.

Execution semantics a worker must honour:
- Before decoding, each item with ``num_prefill_tokens > 0`` has its context prefilled:
  the prompt for a new request, prompt + ``output_token_ids`` for a resumed request whose
  KV cache was dropped (recompute). Items with ``num_prefill_tokens == 0`` continue from a
  resident KV cache (real workers may still recompute; they must not change the tokens).
- Then decode steps: each step emits one token for every item still active. An item stops
  after ``max_new_tokens`` tokens ('length' if that reaches the request's ``max_tokens``,
  otherwise it merely reached its window boundary and is NOT finished) or when it emits EOS
  ('eos', finished). A max_tokens cap reached exactly at the boundary is finished 'length'.
- EOS (every backend, ``elis.serving.metrics``): the EOS step is a decode step of the window
  (it uses one unit of ``max_new_tokens``) but the EOS token is NOT reported as a token
  (``num_new_tokens``/``new_token_ids`` exclude it); ``end_s`` is the end of the EOS step. A
  window may therefore report 0 tokens, finished 'eos' (content ended at the last boundary).
- ``stop_on_first=False`` (windowed mode, the paper): the batch runs until every item has
  stopped; slots of items that stopped early stay idle until the window ends.
- ``stop_on_first=True`` (continuous mode): the worker returns after the first decode step
  at which ANY item stops; every item reports the tokens it generated so far (all equal).
- ``max_steps`` (continuous only, optional): return after at most this many decode steps.

Time convention (TTFT): the first token of a request is emitted at the END of its first
decode step in the window (prefill is charged before the first step, not counted as a step).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

FINISH_REASONS: tuple[str, ...] = ("eos", "length", "stop", "abort")


class WorkerDied(RuntimeError):
    """A worker stopped mid-window (crash, unreachable server, injected fault): the runner
    marks it dead and requeues its requests. Any OTHER exception from ``execute`` is a batch
    error: the worker stays alive and only that window's requests fail (with the error)."""


@dataclass(slots=True)
class WindowItem:
    """One request's share of a window.

    Attributes:
        request_id: the request.
        prompt: prompt text (real workers tokenise it if ``prompt_token_ids`` is None).
        prompt_token_ids: prompt token ids, or None.
        output_token_ids: tokens already generated (resume continues after them; never
            re-encode text).
        max_new_tokens: at most this many tokens in this window (>= 0; 0 only for a request
            that must just be prefilled, never produced by the scheduler).
        num_prefill_tokens: tokens to prefill before decoding (0 = KV resident).
        num_context_tokens: prompt + already generated tokens (decode cost input).
        max_tokens: the request's total cap; reaching it → finished 'length'.
        sampling: the request's ``SamplingOptions`` (None: the worker's defaults).
    """

    request_id: str
    prompt: str
    prompt_token_ids: list[int] | None
    output_token_ids: list[int]
    max_new_tokens: int
    num_prefill_tokens: int
    num_context_tokens: int
    max_tokens: int
    sampling: object | None = None


@dataclass(slots=True)
class WindowBatch:
    """What one worker runs next: items plus the stopping rule (see module docstring)."""

    worker_id: int
    items: list[WindowItem]
    stop_on_first: bool = False
    max_steps: int | None = None

    @property
    def num_prefill_tokens(self) -> int:
        return sum(it.num_prefill_tokens for it in self.items)


@dataclass(slots=True)
class WindowResult:
    """What one item produced in one window.

    Attributes:
        request_id: the request.
        num_new_tokens: tokens generated in this window (>= 0).
        new_token_ids: their ids (real workers; the simulator may leave this empty).
        new_text: their decoded text (the simulator reveals the true response's text).
        finished: True if the request is done (EOS or max_tokens).
        finish_reason: 'eos' | 'length' when finished, else None.
        start_s: when the window (incl. prefill) started, on the run's clock.
        end_s: when this item's last token of the window was emitted (its own stop time).
        first_token_time_s: when its first token of this window was emitted, or None if it
            produced no token.
        token_times_s: per-token emission times when the worker measures them, else None.
        error: set when the backend cannot run THIS request (bad input, context too long):
            the scheduler fails it alone with this reason and the worker keeps serving.
    """

    request_id: str
    num_new_tokens: int
    new_token_ids: list[int] = field(default_factory=list)
    new_text: str = ""
    finished: bool = False
    finish_reason: str | None = None
    start_s: float = 0.0
    end_s: float = 0.0
    first_token_time_s: float | None = None
    token_times_s: list[float] | None = None
    error: str | None = None


@runtime_checkable
class Worker(Protocol):
    """One engine instance. ``execute`` runs a batch starting at ``start_s`` (run clock).

    Returns one ``WindowResult`` per item, in the batch's item order. A simulated worker
    computes times with a ``CostModel``; a real one measures them.
    """

    worker_id: int

    def execute(self, batch: WindowBatch, start_s: float) -> list[WindowResult]: ...
