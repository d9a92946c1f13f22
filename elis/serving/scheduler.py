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
  (``stop_on_first=False``). A running request is displaced only by the incumbent rule below.
- ``continuous`` (vLLM-style; beyond the paper for ISRTF): called whenever a decode segment
  ends (some item finished or reached its window boundary) or a request arrives while a
  slot is free. Requests in the middle of a window keep their slot; only requests AT their
  window boundary (every ``window_tokens`` of their own tokens) can be displaced, and only by
  a waiting request whose key is lower by more than ``preemption_margin`` (so requests do
  not ping-pong). Free slots are refilled by the policy key.

Incumbent rule (both modes, ``_incumbent_keeps``): a request at its boundary keeps its slot
unless a waiting challenger is promoted (tier 0) or has ``key < incumbent_key −
preemption_margin`` (strictly). Keys are compared WITHOUT the arrival/id tie-breakers: with
the default margin 0 an equal key never preempts (issue 11 item 1), whoever arrived first. Policies whose keys never change
  (fcfs, sjf) without preemption run without boundaries (one segment to the end).

Preemption and KV (``kv_capacity_tokens``, None = unlimited): a request not re-selected at
a boundary is preempted (``num_preemptions += 1``) and keeps its KV cache while capacity
allows. Admitting a batch reserves ``context + max_new_tokens`` per running request; when
that does not fit, cached KV of waiting requests is dropped worst-key first; a dropped
request is re-prefilled (prompt + generated tokens, added to ``num_recomputed_tokens``)
when it resumes.

Admission and KV (issue 11 item 2):
- A request whose next reservation cannot fit even on an EMPTY worker (``context +
  max_new_tokens > kv_capacity_tokens``) can never run: it FAILS at once with a reason, at
  ``add_request`` (arrival) or, for one that outgrew the capacity, at its next boundary.
  It never blocks the queue. (The reservation never shrinks as a request grows, so "does not
  fit alone now" means "never fits".)
- A request that fits alone but not next to the running ones keeps its place: selection
  stops there (strict policy order, no backfilling past it, as vLLM's waiting queue). Why:
  skipping it would let a stream of smaller requests starve a large one indefinitely; the
  reservations of running requests end at their next boundary, so it starts then.

Life-cycle API for drivers (simulator, wall-clock runner, gateway):
- ``assign(r)`` when the balancer picks this worker: ``r`` counts in ``num_outstanding`` and
  ``predicted_outstanding_tokens`` from that moment (issue 11 item 3), even while the
  frontend's prediction latency delays ``add_request``.
- ``add_request(r, now_s) -> bool``: into the buffer; False = rejected (FAILED, reason set).
- ``abort_request(r, reason, now_s) -> bool``: safe external cancel in any state (in
  transit, pending, waiting, running: its slot and KV are freed at once and ``update``
  discards its in-flight result; already terminal: no-op, False).
- ``adopt_request(r, now_s)``: take over a started request from a dead worker (KV absent).
- ``drain()``: remove and return every request (a dead worker), counters back to zero.
- ``check_idle()``: end-of-run invariant: nothing outstanding, load and KV counters zero.

Predictions: requests flagged ``needs_prediction`` (on arrival, and at each window boundary
for a policy that ``uses_predictions`` and ``repredicts``) are predicted in ONE batched call at the start of ``schedule``; the
predictor's charged latency and ``scheduling_overhead_s`` are returned in ``overhead_s``
(the window starts that much later). A policy with ``quantile_levels`` (gittins) also gets
the predictor's quantiles of the remaining tokens for the same requests (no extra latency is
charged: the distribution comes from the same model call in a real predictor). At every
decision the predicted and true remaining tokens of the competing requests (buffer + running
at a boundary) feed ``ranking`` (mean Kendall τ among co-waiting requests), when known.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from elis.serving.buffer import PriorityBuffer
from elis.serving.metrics import InvariantError, fail_reason_kind
from elis.serving.policy import SchedulingPolicy
from elis.serving.ranking import RankingTracker
from elis.serving.request import Request, RequestStatus
from elis.serving.workers.base import WindowBatch, WindowItem, WindowResult

log = logging.getLogger(__name__)

MODES: tuple[str, ...] = ("windowed", "continuous")


class PredictionSource(Protocol):
    """What the scheduler asks for predicted remaining tokens (see ``elis.serving.prediction``)."""

    def predict(self, requests: list[Request]) -> tuple[np.ndarray, float]:
        """Predicted remaining tokens, shape (len(requests),), and the seconds to charge."""
        ...

    def predict_quantiles(self, requests: list[Request], levels) -> np.ndarray:
        """Quantiles of the remaining tokens at ``levels``, shape (len(requests), len(levels))."""
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
            request whose prompt alone fills it is rejected by ``add_request`` (FAILED with
            the limit in ``fail_reason``, like a request that can never fit the KV); otherwise its ``max_tokens`` is capped at
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
        policy.validate_predictor(predictor)
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
        self.num_max_tokens_capped = 0
        self.buffer = PriorityBuffer(policy.promote_after_s, policy.promote_by)
        self.running: list[Request] = []
        self._pending: list[Request] = []  # arrived, waiting for their first prediction
        self._in_transit: dict[str, Request] = {}  # assigned by the balancer, not yet added
        self._cached_waiting: dict[str, Request] = {}  # preempted, KV still resident
        self._cached_waiting_tokens = 0
        self.uses_boundaries = mode == "windowed" or policy.repredicts or preemption
        self._arrival_seq = itertools.count()  # for requests submitted without an arrival_seq
        self.ranking = RankingTracker()
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
        self._peak_load_tokens = 0.0  # scale of the float tolerance in check_idle
        self._failure_kinds_logged: set[str] = set()

    # ------------------------------------------------------------------ queries
    @property
    def num_outstanding(self) -> int:
        """Requests assigned here and not yet terminal (in transit, pending, waiting, running)."""
        return len(self.buffer) + len(self._pending) + len(self.running) + len(self._in_transit)

    @property
    def num_free_slots(self) -> int:
        return self.max_batch_size - len(self.running)

    @property
    def has_work(self) -> bool:
        return bool(self.running or self._pending or len(self.buffer))

    def wants_to_admit(self) -> bool:
        """Continuous mode: whether a free slot could take a waiting request now."""
        return self.num_free_slots > 0 and bool(self._pending or len(self.buffer))

    # ------------------------------------------------------------------ admission
    def assign(self, request: Request) -> None:
        """Count a new ``request`` here from the moment the balancer picks this worker.

        Its load (``predicted_remaining_tokens`` if already predicted) and its place in
        ``num_outstanding`` count at once; ``add_request`` follows (after the frontend's
        prediction latency in the simulator).

        Raises:
            ValueError: a request that is not new, or already assigned.
        """
        self._check_new(request)
        if request.request_id in self._in_transit:
            raise ValueError(f"request {request.request_id!r} is already assigned to worker {self.worker_id}")
        request.worker_id = self.worker_id
        self._in_transit[request.request_id] = request
        if request.predicted_remaining_tokens is not None:
            self._set_load(request, request.predicted_remaining_tokens)

    def add_request(self, request: Request, now_s: float) -> bool:
        """Accept a new request (status WAITING) into this worker's buffer.

        Returns:
            True if queued; False if rejected because it can never fit in the KV capacity
            (the request is then FAILED with ``fail_reason``; the caller records it).

        Raises:
            ValueError: a request that is not new, or assigned to another worker.
        """
        if self._in_transit.pop(request.request_id, None) is not request:
            self._check_new(request)
            request.worker_id = self.worker_id
        if request.predicted_remaining_tokens is not None:
            request.needs_prediction = False
            self._set_load(request, request.predicted_remaining_tokens)
        return self._queue(request, now_s)

    def adopt_request(self, request: Request, now_s: float) -> bool:
        """Take over an unfinished request from a dead worker (tokens confirmed so far, KV absent).

        Its load here is its latest prediction minus the tokens generated since (its share on
        the dead worker went with that worker's ``drain``). Returns ``add_request``'s bool.
        """
        if request.status.is_terminal:
            raise ValueError(f"request {request.request_id!r} is {request.status.name}; cannot adopt it")
        request.worker_id = self.worker_id
        request.status = RequestStatus.WAITING
        request.kv_cached = False
        request.at_boundary = True
        request.in_buffer = False
        request.load_tokens = 0.0
        if request.predicted_remaining_tokens is not None:
            self._set_load(request, _outstanding_prediction(request))
        elif self.policy.uses_predictions:
            request.needs_prediction = True
        return self._queue(request, now_s)

    def _check_new(self, request: Request) -> None:
        if request.status is not RequestStatus.WAITING or request.has_started:
            raise ValueError(f"request {request.request_id!r} is not new (status={request.status.name})")
        if request.worker_id is not None and request.worker_id != self.worker_id:
            raise ValueError(f"request {request.request_id!r} is assigned to worker {request.worker_id}, "
                             f"not {self.worker_id}")

    def _queue(self, request: Request, now_s: float) -> bool:
        reason = self._context_rejection(request) or self._never_fits(request)
        if reason is not None:
            self._fail(request, reason, now_s)
            return False
        if request.arrival_seq < 0:  # submitted without a sequence: number it here (tie rule)
            request.arrival_seq = next(self._arrival_seq)
        wants_quantiles = self.policy.quantile_levels is not None and request.predicted_quantiles is None
        if self.policy.uses_predictions and (request.needs_prediction or wants_quantiles):
            self._pending.append(request)
        else:
            request.sort_key = self.policy.sort_key(request)
            self.buffer.push(request, now_s)
        return True

    def _never_fits(self, r: Request) -> str | None:
        """The fail reason if ``r``'s next reservation exceeds the KV capacity of an EMPTY worker."""
        cap = self.kv_capacity_tokens
        if cap is None:
            return None
        need = r.num_context_tokens + self._max_new(r)
        if need <= cap:
            return None
        return (f"needs {need} KV tokens (prompt {r.num_prompt_tokens} + generated {r.num_generated_tokens} "
                f"+ next window {self._max_new(r)}) > kv_capacity_tokens={cap}: it can never fit")

    def abort_request(self, request: Request, reason: str, now_s: float | None = None) -> bool:
        """Cancel ``request`` safely from outside (client disconnect, worker error).

        In transit, pending or waiting: removed from the queue. Running: removed from
        ``running`` at once (its slot and KV reservation are free for the next decision) and
        ``update`` discards the in-flight window's result for it. Already FINISHED or FAILED:
        nothing changes. The caller records the request (it is FAILED with ``reason``).

        Returns:
            True if it was aborted now, False if it was already terminal.

        Raises:
            ValueError: ``request`` belongs to another worker, or an empty ``reason``.
        """
        if request.status.is_terminal:
            return False
        if not reason:
            raise ValueError(f"abort_request({request.request_id!r}): reason must be a non-empty string")
        if request.worker_id is not None and request.worker_id != self.worker_id:
            raise ValueError(f"request {request.request_id!r} is on worker {request.worker_id}, not {self.worker_id}")
        self._in_transit.pop(request.request_id, None)
        if request.in_buffer:
            self.buffer.remove(request)
        self._uncache(request)
        if request in self.running:
            self.running.remove(request)
        if request in self._pending:
            self._pending.remove(request)
        self._fail(request, reason, now_s)
        return True

    def drain(self) -> list[Request]:
        """Remove and return every non-terminal request (a dead worker); counters to zero."""
        out = list(self._in_transit.values()) + list(self._pending) + self.buffer.requests() + list(self.running)
        for r in self.buffer.requests():
            self.buffer.remove(r)
        self._in_transit, self._pending, self.running = {}, [], []
        self._cached_waiting, self._cached_waiting_tokens = {}, 0
        for r in out:
            r.load_tokens = 0.0
        self.predicted_outstanding_tokens = 0.0
        return out

    def check_idle(self) -> None:
        """End-of-run invariant (issue 11 item 4): no request left here, every counter at zero.

        Raises:
            InvariantError: naming each non-zero counter.
        """
        problems = []
        for name, v in (("running", len(self.running)), ("pending", len(self._pending)),
                        ("waiting", len(self.buffer)), ("in_transit", len(self._in_transit)),
                        ("cached_waiting_tokens", self._cached_waiting_tokens)):
            if v:
                problems.append(f"{name}={v}")
        tol = 1e-6 * max(1.0, self._peak_load_tokens)
        if abs(self.predicted_outstanding_tokens) > tol:
            problems.append(f"predicted_outstanding_tokens={self.predicted_outstanding_tokens!r}")
        if problems:
            raise InvariantError(f"worker {self.worker_id} not idle at the end of the run: " + ", ".join(problems))

    def _context_rejection(self, r: Request) -> str | None:
        """The context-length rule (see ``max_context_tokens``): the fail reason when the prompt
        alone fills the context; otherwise caps ``r.max_tokens`` at the context left."""
        cap = self.max_context_tokens
        if cap is None:
            return None
        if r.num_prompt_tokens >= cap:
            return (f"prompt has {r.num_prompt_tokens} tokens; the model's context length is "
                    f"max_context_tokens={cap} (prompt + output)")
        if r.num_prompt_tokens + r.max_tokens > cap:
            r.max_tokens = cap - r.num_prompt_tokens
            self.num_max_tokens_capped += 1
        return None

    # ------------------------------------------------------------------ phase 1
    def schedule(self, now_s: float) -> SchedulerOutput:
        """Decide the next batch at ``now_s`` (see module docstring for the rules)."""
        self.num_decisions += 1
        pred_latency = self._predict_pending(now_s)
        contenders, continuing = self._split_running()
        if self.policy.uses_predictions:
            self._observe_ranking(contenders)
        out = SchedulerOutput(now_s=now_s, batch=WindowBatch(self.worker_id, []))
        selected, preempted = self._select(contenders, continuing, now_s, out)
        for r in preempted:
            self._preempt(r, now_s)
        out.preempted = preempted
        self.running = continuing + selected
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
        point = [r for r in todo if r.needs_prediction]  # pending ones may hold the frontend's
        latency_s = 0.0
        if point:
            preds, latency_s = self.predictor.predict(point)  # type: ignore[union-attr]
            for r, p in zip(point, preds, strict=True):
                self._set_prediction(r, float(p))
        if self.policy.quantile_levels is not None:
            qs = self.predictor.predict_quantiles(todo, self.policy.quantile_levels)  # type: ignore[union-attr]
            for r, q in zip(todo, qs, strict=True):
                r.predicted_quantiles = q
        for r in self._pending:
            r.sort_key = self.policy.sort_key(r)
            self.buffer.push(r, now_s)
        self._pending = []
        self.num_predictions += len(point)
        self.predictor_latency_total_s += latency_s
        return latency_s

    def _observe_ranking(self, contenders: list[Request]) -> None:
        """τ between predicted and true remaining tokens of the requests competing now."""
        if not self.ranking.admits(len(self.buffer) + len(contenders)):
            return
        group = [r for r in self.buffer.requests() if r.predicted_remaining_tokens is not None] + [
            r for r in contenders if r.predicted_remaining_tokens is not None
        ]
        if len(group) < 2 or group[0].true_num_output_tokens is None:
            return
        if any(r.true_num_output_tokens is None for r in group):
            return
        self.ranking.observe([r.predicted_remaining_tokens for r in group], [r.true_remaining_tokens for r in group])

    def _set_prediction(self, r: Request, predicted: float) -> None:
        self._set_load(r, predicted)
        r.record_prediction(predicted)

    def _set_load(self, r: Request, tokens: float) -> None:
        """Set ``r``'s share of ``predicted_outstanding_tokens`` (0 when finished/failed)."""
        self.predicted_outstanding_tokens += tokens - r.load_tokens
        r.load_tokens = tokens
        if self.predicted_outstanding_tokens > self._peak_load_tokens:
            self._peak_load_tokens = self.predicted_outstanding_tokens

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
        ranked = sorted(contenders, key=lambda r: self._contender_rank(r, now_s))
        free = self.max_batch_size - len(continuing)
        reserved = sum(r.num_context_tokens + self._max_new(r) for r in continuing)
        selected: list[Request] = []
        i = 0
        while len(selected) < free:
            top = self.buffer.peek(now_s)
            c = ranked[i] if i < len(ranked) else None
            if c is None and top is None:
                break
            take_contender = c is not None and (top is None or self._incumbent_keeps(c, top, now_s))
            r = c if take_contender else top[1]  # type: ignore[index]
            need = r.num_context_tokens + self._max_new(r)
            never = self._never_fits(r)
            if never is not None:  # outgrew the capacity: fail it, keep filling (no blocking)
                if take_contender:
                    i += 1
                    self.running.remove(r)
                else:
                    self.buffer.remove(r)
                    self._uncache(r)
                self._fail(r, never, now_s)
                out.failed.append(r)
                continue
            if not self._fits(reserved + need, r):
                break  # fits alone but not now: strict order, no backfilling (module docstring)
            if take_contender:
                i += 1
            else:
                self.buffer.remove(r)
                self._uncache(r)
            reserved += need
            selected.append(r)
        preempted = ranked[i:]
        return selected, preempted

    def _contender_rank(self, r: Request, now_s: float) -> tuple:
        """Order of at-boundary contenders: promoted-by-age ones first, oldest first (tier 0)."""
        if self.buffer.is_promoted(r, now_s):
            return (0, r.arrival_time_s, r.arrival_seq)
        return (1, self.policy.sort_key(r))

    def _incumbent_keeps(self, incumbent: Request, top: tuple[int, Request], now_s: float = 0.0) -> bool:
        """Whether the at-boundary ``incumbent`` keeps its slot against the buffer's best.

        The challenger displaces it only if promoted (tier 0) or if its key is lower by MORE
        than ``preemption_margin``: ``challenger_key < incumbent_key − margin``. Equal keys
        (margin 0) keep the incumbent, whatever the arrival order, so equal-key requests do
        not ping-pong (and pay no pointless preemption/re-prefill).
        """
        tier, challenger = top
        if self.buffer.is_promoted(incumbent, now_s):  # promote_by='age': FCFS among the old
            return tier == 1 or (incumbent.arrival_time_s, incumbent.arrival_seq) <= (
                challenger.arrival_time_s, challenger.arrival_seq)
        if tier == 0:
            return False
        return not challenger.sort_key[0] < self.policy.sort_key(incumbent)[0] - self.preemption_margin

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
            if r.status.is_terminal:  # aborted during the window: its result is discarded
                continue
            if res.error is not None:  # this request cannot run on the backend; the others go on
                r.add_run_interval(res.start_s, res.end_s)
                self._fail(r, res.error, now_s)
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
            if r.at_boundary and self.policy.uses_predictions and self.policy.repredicts:
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
        observe = getattr(self.predictor, "observe_finished", None)
        if observe is not None:  # online generator statistics (predictor=gbdt)
            observe(r)

    def _fail(self, r: Request, reason: str, now_s: float | None = None) -> None:
        r.status = RequestStatus.FAILED
        r.fail_reason = reason
        r.fail_time_s = now_s
        r.kv_cached = False
        self._set_load(r, 0.0)
        kind = fail_reason_kind(reason)  # warn once per kind of failure; the summary counts them all
        level = logging.DEBUG if kind in self._failure_kinds_logged else logging.WARNING
        self._failure_kinds_logged.add(kind)
        log.log(level, "worker %d: request %s failed: %s", self.worker_id, r.request_id, reason)

    def fail_request(self, r: Request, reason: str, now_s: float | None = None) -> None:
        """Fail ``r`` from outside; same as ``abort_request`` (kept for callers of the old name)."""
        self.abort_request(r, reason, now_s)

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


def _outstanding_prediction(r: Request) -> float:
    """Latest predicted remaining tokens minus the tokens generated since that prediction (>= 0)."""
    if r.predictions:
        g0, p = r.predictions[-1]
        return max(p - (r.num_generated_tokens - g0), 0.0)
    return max(float(r.predicted_remaining_tokens or 0.0), 0.0)
