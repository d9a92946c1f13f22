"""Per-worker scheduler: admission, batch selection, preemption and KV accounting.

Two-phase, clock-agnostic contract (vLLM v1 style)::

    out = scheduler.schedule(now_s)          # which requests run next, what to prefill
    results = worker.execute(out.batch, now_s + out.overhead_s)
    finished = scheduler.update(out, results, now_s_at_end)

Ordering comes only from the ``SchedulingPolicy``; this class decides everything else.

Modes (one class, ``mode=``):
- ``windowed`` (the ELIS paper): called only when the worker is idle. All unfinished
  requests of the last window are back at a window boundary and compete with the buffer;
  the best ``max_batch_size`` run one window of up to ``window_tokens`` tokens each
  (``stop_on_first=False``).
- ``continuous`` (vLLM-style; beyond the paper for ISRTF): called whenever a decode segment
  ends (some item finished or reached its window boundary) or a request arrives while a
  slot is free. Requests in the middle of a window keep their slot; only requests AT their
  window boundary (every ``window_tokens`` of their own tokens) can be displaced, and only by
  a waiting request whose key is lower by more than ``preemption_margin`` (so requests do
  not ping-pong). Free slots are refilled by the policy key. Policies whose keys never change
  (fcfs, sjf) without preemption run without boundaries (one segment to the end).

Preemption and KV (``kv_capacity_tokens``, None = unlimited): a request not re-selected at
a boundary is preempted (``num_preemptions += 1``) and keeps its KV cache while capacity
allows. Admitting a batch reserves ``context + max_new_tokens`` per running request; when
that does not fit, cached KV of waiting requests is dropped worst-key first; a dropped
request is re-prefilled (prompt + generated tokens, added to ``num_recomputed_tokens``)
when it resumes. A request that cannot fit even on an empty worker FAILS with a reason.

Predictions: requests flagged ``needs_prediction`` (on arrival, and for ``isrtf`` at each
window boundary) are predicted in ONE batched call at the start of ``schedule``; the
predictor's charged latency and ``scheduling_overhead_s`` are returned in ``overhead_s``
(the window starts that much later).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from elis.serving.buffer import PriorityBuffer
from elis.serving.policy import SchedulingPolicy
from elis.serving.request import Request, RequestStatus
from elis.serving.workers.base import WindowBatch, WindowItem, WindowResult

log = logging.getLogger(__name__)

MODES: tuple[str, ...] = ("windowed", "continuous")


class PredictionSource(Protocol):
    """What the scheduler asks for predicted remaining tokens (see ``elis.serving.prediction``)."""

    def predict(self, requests: list[Request]) -> tuple[np.ndarray, float]:
        """Predicted remaining tokens, shape (len(requests),), and the seconds to charge."""
        ...


@dataclass(slots=True)
class SchedulerOutput:
    """One scheduling decision.

    Attributes:
        batch: the ``WindowBatch`` for the worker (items in the order of ``scheduled``).
        scheduled: the requests in the batch.
        preempted: requests that were at a boundary and were not re-selected.
        failed: requests failed at this decision (e.g. KV capacity), with ``fail_reason``.
        overhead_s: scheduling overhead + predictor latency to charge before the window.
        predictor_latency_s: the predictor part of ``overhead_s``.
        num_recomputed_tokens: tokens re-prefilled because their KV had been dropped.
    """

    now_s: float
    batch: WindowBatch
    scheduled: list[Request] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)
    failed: list[Request] = field(default_factory=list)
    overhead_s: float = 0.0
    predictor_latency_s: float = 0.0
    num_recomputed_tokens: int = 0

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


class Scheduler:
    """The scheduler of one worker (see module docstring).

    Args:
        worker_id: the worker it schedules.
        policy: the ordering.
        max_batch_size: slots (the paper uses 4).
        window_tokens: W, tokens per window (the paper uses 50).
        mode: 'windowed' | 'continuous'.
        preemption: whether requests at a boundary can be displaced.
        preemption_margin: in key units; a waiting request displaces an at-boundary running
            one only if its key is lower by more than this.
        kv_capacity_tokens: KV cache capacity (tokens) or None (unlimited).
        max_context_tokens: the model's context length (prompt + output tokens) or None. A
            request whose prompt alone fills it FAILS at admission (reported by the next
            ``schedule`` in ``failed``); otherwise its ``max_tokens`` is capped at
            ``max_context_tokens - num_prompt_tokens`` (it then finishes 'length' when the
            context is full), counted in ``num_max_tokens_capped``.
        predictor: source of predictions (required if the policy uses predictions).
        scheduling_overhead_s: charged per decision that starts a non-empty batch.

    Raises:
        ValueError: invalid mode/sizes, or a prediction policy without a predictor.
    """

    def __init__(
        self,
        worker_id: int,
        policy: SchedulingPolicy,
        *,
        max_batch_size: int = 4,
        window_tokens: int = 50,
        mode: str = "windowed",
        preemption: bool = True,
        preemption_margin: float = 0.0,
        kv_capacity_tokens: int | None = None,
        predictor: PredictionSource | None = None,
        scheduling_overhead_s: float = 0.0,
        max_context_tokens: int | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"sched.mode={mode!r} is not one of {list(MODES)}")
        if not max_batch_size >= 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size!r}")
        if not window_tokens >= 1:
            raise ValueError(f"window_tokens must be >= 1, got {window_tokens!r}")
        if kv_capacity_tokens is not None and not kv_capacity_tokens >= 1:
            raise ValueError(f"kv_capacity_tokens must be >= 1 or null, got {kv_capacity_tokens!r}")
        if max_context_tokens is not None and not max_context_tokens >= 1:
            raise ValueError(f"max_context_tokens must be >= 1 or null, got {max_context_tokens!r}")
        if policy.uses_predictions and predictor is None:
            raise ValueError(f"policy {policy.name!r} needs a predictor; got predictor=None")
        self.worker_id = worker_id
        self.policy = policy
        self.max_batch_size = max_batch_size
        self.window_tokens = window_tokens
        self.mode = mode
        self.preemption = preemption
        self.preemption_margin = float(preemption_margin)
        self.kv_capacity_tokens = kv_capacity_tokens
        self.predictor = predictor
        self.scheduling_overhead_s = scheduling_overhead_s
        self.max_context_tokens = max_context_tokens
        self._rejected: list[Request] = []  # failed at admission, reported by the next schedule()
        self.num_max_tokens_capped = 0
        self.buffer = PriorityBuffer(policy.promote_after_s)
        self.running: list[Request] = []
        self._pending: list[Request] = []  # arrived, waiting for their first prediction
        self._cached_waiting: dict[str, Request] = {}  # preempted, KV still resident
        self._cached_waiting_tokens = 0
        self.uses_boundaries = mode == "windowed" or policy.repredicts or preemption
        # counters
        self.num_decisions = 0
        self.num_preemptions = 0
        self.num_recomputed_tokens = 0
        self.num_kv_drops = 0
        self.num_predictions = 0
        self.predictor_latency_total_s = 0.0
        self.scheduling_overhead_total_s = 0.0
        # Σ over unfinished requests of (latest prediction − tokens generated since), for the LB
        self.predicted_outstanding_tokens = 0.0

    # ------------------------------------------------------------------ queries
    @property
    def num_outstanding(self) -> int:
        """Requests assigned here and not yet finished (waiting, pending or running)."""
        return len(self.buffer) + len(self._pending) + len(self.running)

    @property
    def num_free_slots(self) -> int:
        return self.max_batch_size - len(self.running)

    @property
    def has_work(self) -> bool:
        return bool(self.running or self._pending or len(self.buffer) or self._rejected)

    def wants_to_admit(self) -> bool:
        """Continuous mode: whether a free slot could take a waiting request now."""
        return self.num_free_slots > 0 and bool(self._pending or len(self.buffer))

    # ------------------------------------------------------------------ admission
    def add_request(self, request: Request, now_s: float) -> None:
        """Accept a newly arrived request (status WAITING) into this worker's buffer."""
        if request.status is not RequestStatus.WAITING or request.has_started:
            raise ValueError(f"request {request.request_id!r} is not new (status={request.status.name})")
        request.worker_id = self.worker_id
        if not self._admit_context(request):
            return
        if request.predicted_remaining_tokens is not None:
            request.needs_prediction = False
            self._set_load(request, request.predicted_remaining_tokens)
        if self.policy.uses_predictions and request.needs_prediction:
            self._pending.append(request)
        else:
            request.sort_key = self.policy.sort_key(request)
            self.buffer.push(request, now_s)

    def _admit_context(self, r: Request) -> bool:
        """Apply the context-length rule (see ``max_context_tokens``); False if ``r`` failed."""
        cap = self.max_context_tokens
        if cap is None:
            return True
        if r.num_prompt_tokens >= cap:
            self._fail(r, f"prompt has {r.num_prompt_tokens} tokens; the model's context length is "
                          f"max_context_tokens={cap} (prompt + output)")
            self._rejected.append(r)
            return False
        if r.num_prompt_tokens + r.max_tokens > cap:
            r.max_tokens = cap - r.num_prompt_tokens
            self.num_max_tokens_capped += 1
        return True

    # ------------------------------------------------------------------ phase 1
    def schedule(self, now_s: float) -> SchedulerOutput:
        """Decide the next batch at ``now_s`` (see module docstring for the rules)."""
        self.num_decisions += 1
        pred_latency = self._predict_pending(now_s)
        contenders, continuing = self._split_running()
        out = SchedulerOutput(now_s=now_s, batch=WindowBatch(self.worker_id, []))
        selected, preempted = self._select(contenders, continuing, now_s, out)
        for r in preempted:
            self._preempt(r, now_s)
        out.preempted = preempted
        self.running = continuing + selected
        if self._rejected:
            out.failed = self._rejected + out.failed
            self._rejected = []
        if preempted and self.kv_capacity_tokens is not None:
            self._fits(sum(r.num_context_tokens + self._max_new(r) for r in self.running), None)
        items = [self._make_item(r, r in selected and r not in contenders, out) for r in self.running]
        out.batch = WindowBatch(self.worker_id, items, stop_on_first=self.mode == "continuous")
        out.scheduled = list(self.running)
        out.predictor_latency_s = pred_latency
        if out.scheduled:
            out.overhead_s = pred_latency + self.scheduling_overhead_s
            self.scheduling_overhead_total_s += self.scheduling_overhead_s
        else:
            out.overhead_s = pred_latency
        return out

    def _predict_pending(self, now_s: float) -> float:
        """One batched predictor call for new and at-boundary requests; returns charged seconds."""
        if not self.policy.uses_predictions:
            self._pending.clear()
            return 0.0
        todo = self._pending + [r for r in self.running if r.needs_prediction]
        if not todo:
            return 0.0
        preds, latency_s = self.predictor.predict(todo)  # type: ignore[union-attr]
        for r, p in zip(todo, preds, strict=True):
            self._set_prediction(r, float(p))
        for r in self._pending:
            r.sort_key = self.policy.sort_key(r)
            self.buffer.push(r, now_s)
        self._pending = []
        self.num_predictions += len(todo)
        self.predictor_latency_total_s += latency_s
        return latency_s

    def _set_prediction(self, r: Request, predicted: float) -> None:
        self._set_load(r, predicted)
        r.record_prediction(predicted)

    def _set_load(self, r: Request, tokens: float) -> None:
        """Set ``r``'s share of ``predicted_outstanding_tokens`` (0 when finished/failed)."""
        self.predicted_outstanding_tokens += tokens - r.load_tokens
        r.load_tokens = tokens

    def _split_running(self) -> tuple[list[Request], list[Request]]:
        if not self.preemption:
            return [], list(self.running)
        contenders = [r for r in self.running if r.at_boundary]
        continuing = [r for r in self.running if not r.at_boundary]
        return contenders, continuing

    def _select(
        self, contenders: list[Request], continuing: list[Request], now_s: float, out: SchedulerOutput
    ) -> tuple[list[Request], list[Request]]:
        """Fill free slots from at-boundary contenders (with margin) and the buffer."""
        policy, margin = self.policy, self.preemption_margin
        ranked = sorted(contenders, key=lambda r: _with_margin(policy.sort_key(r), margin))
        free = self.max_batch_size - len(continuing)
        reserved = sum(r.num_context_tokens + self._max_new(r) for r in continuing)
        selected: list[Request] = []
        i = 0
        while len(selected) < free:
            top = self.buffer.peek(now_s)
            c = ranked[i] if i < len(ranked) else None
            if c is None and top is None:
                break
            take_contender = c is not None and (
                top is None or (1, _with_margin(policy.sort_key(c), margin)) <= (top[0], top[1].sort_key)
            )
            r = c if take_contender else top[1]  # type: ignore[index]
            need = r.num_context_tokens + self._max_new(r)
            if not self._fits(reserved + need, r):
                if not continuing and not selected:  # cannot fit even on an empty worker
                    if take_contender:
                        i += 1
                        self.running.remove(r)
                    else:
                        self.buffer.remove(r)
                        self._uncache(r)
                    self._fail(r, f"needs {need} KV tokens > kv_capacity_tokens={self.kv_capacity_tokens}")
                    out.failed.append(r)
                    continue
                break
            if take_contender:
                i += 1
            else:
                self.buffer.remove(r)
                self._uncache(r)
            reserved += need
            selected.append(r)
        preempted = ranked[i:]
        return selected, preempted

    def _fits(self, reserved_tokens: int, r: Request | None) -> bool:
        """Whether ``reserved_tokens`` fit, dropping cached KV of waiting requests (worst first)."""
        cap = self.kv_capacity_tokens
        if cap is None:
            return True
        if reserved_tokens > cap:
            return False
        while reserved_tokens + self._cached_waiting_tokens > cap:
            victim = max(
                (v for v in self._cached_waiting.values() if v is not r), key=lambda v: v.sort_key, default=None
            )
            if victim is None:
                break
            self._uncache(victim)
            victim.kv_cached = False
            self.num_kv_drops += 1
        return True

    def _uncache(self, r: Request) -> None:
        if self._cached_waiting.pop(r.request_id, None) is not None:
            self._cached_waiting_tokens -= r.num_context_tokens

    def _preempt(self, r: Request, now_s: float) -> None:
        r.num_preemptions += 1
        self.num_preemptions += 1
        r.status = RequestStatus.WAITING
        r.sort_key = self.policy.sort_key(r)
        self.buffer.push(r, now_s)
        if r.kv_cached:
            self._cached_waiting[r.request_id] = r
            self._cached_waiting_tokens += r.num_context_tokens

    def _max_new(self, r: Request) -> int:
        cap = r.max_tokens - r.num_generated_tokens
        if not self.uses_boundaries:
            return cap
        return min(self.window_tokens - r.num_generated_tokens % self.window_tokens, cap)

    def _make_item(self, r: Request, newly_admitted: bool, out: SchedulerOutput) -> WindowItem:
        prefill = 0
        if newly_admitted:
            if not r.has_started:
                prefill = r.num_prompt_tokens
                r.has_started = True
            elif not r.kv_cached:
                prefill = r.num_context_tokens
                r.num_recomputed_tokens += prefill
                self.num_recomputed_tokens += prefill
                out.num_recomputed_tokens += prefill
        r.status = RequestStatus.RUNNING
        r.kv_cached = True
        return WindowItem(
            request_id=r.request_id,
            prompt=r.prompt,
            prompt_token_ids=r.prompt_token_ids,
            output_token_ids=r.output_token_ids,
            max_new_tokens=self._max_new(r),
            num_prefill_tokens=prefill,
            num_context_tokens=r.num_context_tokens,
            max_tokens=r.max_tokens,
            sampling=r.sampling,
        )

    # ------------------------------------------------------------------ phase 2
    def update(self, output: SchedulerOutput, results: list[WindowResult], now_s: float) -> list[Request]:
        """Apply a worker's results; returns the requests that finished (or FAILED: a result
        with ``error`` fails its request alone, with that reason).

        Raises:
            RuntimeError: results that do not match the batch (ids, counts, token overflow).
        """
        if len(results) != len(output.scheduled):
            raise RuntimeError(
                f"worker {self.worker_id}: {len(results)} results for {len(output.scheduled)} scheduled requests"
            )
        finished: list[Request] = []
        still: list[Request] = []
        for r, item, res in zip(output.scheduled, output.batch.items, results):
            if res.request_id != r.request_id:
                raise RuntimeError(f"worker {self.worker_id}: result for {res.request_id!r}, expected {r.request_id!r}")
            if res.error is not None:  # this request cannot run on the backend; the others go on
                r.add_run_interval(res.start_s, res.end_s)
                self._fail(r, res.error)
                finished.append(r)
                continue
            n = res.num_new_tokens
            if not 0 <= n <= item.max_new_tokens:
                raise RuntimeError(
                    f"request {r.request_id!r}: worker returned num_new_tokens={n}, allowed 0..{item.max_new_tokens}"
                )
            if n:
                r.output_token_ids.extend(res.new_token_ids)
                r.partial_response += res.new_text
                r.num_generated_tokens += n
                if r.load_tokens:
                    self._set_load(r, max(r.load_tokens - n, 0.0))
                if r.first_token_time_s is None:
                    r.first_token_time_s = res.first_token_time_s
            r.add_run_interval(res.start_s, res.end_s)
            if res.finished or r.num_generated_tokens >= r.max_tokens:
                self._finish(r, res.end_s, res.finish_reason if res.finished else "length")
                finished.append(r)
                continue
            if self.mode == "windowed" and n < item.max_new_tokens:
                raise RuntimeError(
                    f"request {r.request_id!r}: windowed worker stopped after {n} < {item.max_new_tokens} "
                    "tokens without finishing"
                )
            r.at_boundary = n == item.max_new_tokens and self.uses_boundaries
            if r.at_boundary and self.policy.name == "isrtf":
                r.needs_prediction = True
            still.append(r)
        self.running = still
        return finished

    def _finish(self, r: Request, t: float, reason: str | None) -> None:
        r.status = RequestStatus.FINISHED
        r.finish_time_s = t
        r.finish_reason = reason or "eos"
        r.kv_cached = False
        self._set_load(r, 0.0)

    def _fail(self, r: Request, reason: str) -> None:
        r.status = RequestStatus.FAILED
        r.fail_reason = reason
        r.kv_cached = False
        self._set_load(r, 0.0)
        log.warning("worker %d: request %s failed: %s", self.worker_id, r.request_id, reason)

    def fail_request(self, r: Request, reason: str) -> None:
        """Fail ``r`` from outside (e.g. a worker error), removing it from every queue."""
        if r.in_buffer:
            self.buffer.remove(r)
        self._uncache(r)
        if r in self.running:
            self.running.remove(r)
        if r in self._pending:
            self._pending.remove(r)
        self._fail(r, reason)

    def abort_request(self, r: Request, reason: str = "aborted") -> bool:
        """Cancel ``r`` safely from outside (client disconnect, stop string); True if it was live.

        Waiting / pending / rejected: removed from every queue and FAILED with ``reason``.
        Running (at a window boundary, i.e. not inside a window in flight): its slot is freed
        at once. Already FINISHED or FAILED: nothing changes (a finished request stays
        finished). The caller must not abort a request whose window is in flight on a worker
        (the wall-clock runner defers that to the window's end, after cancelling it there).
        """
        if r.status.is_terminal:
            return False
        if r in self._rejected:
            self._rejected.remove(r)
        self.fail_request(r, reason)
        return True

    def finish_request(self, r: Request, reason: str, now_s: float) -> bool:
        """End a running/waiting ``r`` as FINISHED with ``reason`` (e.g. 'stop': a stop string
        was generated), freeing its slot; False (no change) when it is already terminal."""
        if r.status.is_terminal:
            return False
        if r.in_buffer:
            self.buffer.remove(r)
        self._uncache(r)
        if r in self.running:
            self.running.remove(r)
        if r in self._pending:
            self._pending.remove(r)
        self._finish(r, now_s, reason)
        return True


def _with_margin(sort_key: tuple, margin: float) -> tuple:
    """An incumbent's sort key, improved by ``margin`` key units."""
    if not margin:
        return sort_key
    return (sort_key[0] - margin,) + tuple(sort_key[1:])
