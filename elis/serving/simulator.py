"""Discrete-event simulation of a cluster of simulated workers (SimPy-style event heap).

Events live in a heap keyed ``(time_s, seq)`` with ``seq`` from ``itertools.count()``, so
same-time events run in the order they were scheduled (FIFO) and runs are deterministic.
Arrivals are read from the (sorted) ``RequestTable`` by a cursor instead of being pushed up
front; at equal times arrivals go before heap events, and an idle worker starts through a
same-time ``kick`` event, so every request that arrives at ``t`` (or is freed by a window
ending at ``t``) is in the buffer when the worker decides at ``t``. Requests are created at arrival and dropped after
being recorded, so memory grows with ACTIVE requests plus one record row per finished one.

Per arrival: the load balancer picks a worker (sticky); when it needs the step-0 prediction
(least_predicted_tokens) the frontend predicts first and the request reaches the worker's
buffer after the charged predictor latency; its load counts on the chosen worker from the
moment it is assigned (``Scheduler.assign``), so the balancer's next choice at the same
instant already sees it (issue 11 item 3). A request the worker rejects (it can never fit
in the KV capacity) is recorded FAILED at once. At the end of the run every scheduler must
be idle with its load counters at zero (``Scheduler.check_idle``). Per worker: ``Scheduler.schedule`` → the window
starts after ``overhead_s`` → ``SimWorker.execute`` gives each item's tokens and stop time →
at the window's end ``Scheduler.update``. In continuous mode, an arrival at a worker with a
free slot cuts the running segment at the first decode-step boundary at or after the arrival
(at least one step), so the slot is refilled at the next decode step, as in vLLM.

This is the GENERAL path (the per-window ``WindowBatch``/``WindowResult`` protocol real
workers use). ``elis.serving.fastsim.FastSimulator`` applies the same rules on flat state,
with identical records, ~5-10x faster; ``elis.experiments.run.simulate`` picks it when the
configuration is supported (``worker.sim_path``).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from elis.serving.cost_model import CostModel
from elis.serving.load_balancer import LoadBalancer
from elis.serving.metrics import RequestRecorder, check_invariants
from elis.serving.prediction import PredictionService
from elis.serving.ranking import ranking_counters
from elis.serving.request import Request, RequestStatus
from elis.serving.scheduler import Scheduler, SchedulerOutput
from elis.serving.workers.base import WindowResult
from elis.serving.workers.sim import SimWorker

log = logging.getLogger(__name__)

_WINDOW_END, _ENQUEUE, _KICK = 0, 1, 2


@dataclass(slots=True)
class RequestTable:
    """A columnar workload: request ``i`` arrives at ``arrival_time_s[i]`` (non-decreasing).

    Attributes:
        arrival_time_s: float64 (N,), seconds, finite, non-decreasing.
        num_prompt_tokens: int (N,), >= 0.
        num_output_tokens: int (N,), >= 0: the TRUE response lengths.
        max_tokens: cap per request (>= 1).
        prompts / responses / generators: optional per-request strings (N,) (text is needed
            only by predictors that read it); request_ids: optional unique ids (default
            ``req-{i:07d}``).

    Raises:
        ValueError: naming the field for a wrong length, unsorted/non-finite arrivals or
            negative token counts.
    """

    arrival_time_s: np.ndarray
    num_prompt_tokens: np.ndarray
    num_output_tokens: np.ndarray
    max_tokens: int
    prompts: Sequence[str] | None = None
    responses: Sequence[str] | None = None
    generators: Sequence[str] | None = None
    request_ids: Sequence[str] | None = None

    def __post_init__(self) -> None:
        self.arrival_time_s = np.asarray(self.arrival_time_s, dtype=np.float64)
        n = len(self.arrival_time_s)
        self.num_prompt_tokens = np.asarray(self.num_prompt_tokens, dtype=np.int64)
        self.num_output_tokens = np.asarray(self.num_output_tokens, dtype=np.int64)
        for name in ("num_prompt_tokens", "num_output_tokens", "prompts", "responses", "generators", "request_ids"):
            v = getattr(self, name)
            if v is not None and len(v) != n:
                raise ValueError(f"workload.{name} has {len(v)} entries, arrival_time_s has {n}")
        if n and not np.all(np.isfinite(self.arrival_time_s)):
            raise ValueError("workload.arrival_time_s has non-finite values")
        if n > 1 and np.any(np.diff(self.arrival_time_s) < 0):
            raise ValueError("workload.arrival_time_s must be non-decreasing (sort the workload)")
        for name in ("num_prompt_tokens", "num_output_tokens"):
            arr = getattr(self, name)
            if n and arr.min() < 0:
                i = int(np.argmin(arr))
                raise ValueError(f"workload.{name}[{i}]={int(arr[i])} is negative")
        if self.max_tokens is None or not self.max_tokens >= 1:
            raise ValueError(f"max_tokens must be an integer >= 1, got {self.max_tokens!r}")
        if self.request_ids is not None and len(set(self.request_ids)) != n:
            raise ValueError("workload.request_ids are not unique")

    def __len__(self) -> int:
        return len(self.arrival_time_s)

    def request_id(self, i: int) -> str:
        return self.request_ids[i] if self.request_ids is not None else f"req-{i:07d}"

    def make_request(self, i: int) -> Request:
        """The ``Request`` for row ``i``."""
        return Request(
            request_id=self.request_id(i),
            arrival_seq=i,
            prompt=self.prompts[i] if self.prompts is not None else "",
            arrival_time_s=float(self.arrival_time_s[i]),
            num_prompt_tokens=int(self.num_prompt_tokens[i]),
            max_tokens=self.max_tokens,
            generator=self.generators[i] if self.generators is not None else None,
            true_response=self.responses[i] if self.responses is not None else None,
            true_num_output_tokens=int(self.num_output_tokens[i]),
        )


@dataclass(slots=True)
class SimResult:
    """A finished simulation: per-request records and counters (``wall_s`` is wall time)."""

    records: pd.DataFrame
    counters: dict = field(default_factory=dict)


class Simulator:
    """Runs a ``RequestTable`` through per-worker schedulers and simulated workers.

    Args:
        table: the workload.
        schedulers: one ``Scheduler`` per worker (index = worker id).
        cost_model: timing of the simulated workers.
        load_balancer: assigns arrivals to workers.
        prediction: predictions for the frontend's step-0 call when the balancer needs it
            (the schedulers hold their own reference for their calls).
        recorder: receives every terminal request.
        reveal_text: workers reveal the true response's text window by window.

    Raises:
        ValueError: a balancer that needs predictions without a prediction service.
    """

    def __init__(
        self,
        table: RequestTable,
        schedulers: list[Scheduler],
        cost_model: CostModel,
        load_balancer: LoadBalancer,
        prediction: PredictionService | None = None,
        recorder: RequestRecorder | None = None,
        reveal_text: bool = False,
    ) -> None:
        if load_balancer.needs_prediction and prediction is None:
            raise ValueError(f"{type(load_balancer).__name__} needs predictions; got prediction=None")
        self.table = table
        self.schedulers = schedulers
        self.cost_model = cost_model
        self.lb = load_balancer
        self.prediction = prediction
        self.recorder = recorder if recorder is not None else RequestRecorder()
        self.active: dict[str, Request] = {}
        self.workers = [SimWorker(i, cost_model, self.active.__getitem__, reveal_text) for i in range(len(schedulers))]
        n = len(schedulers)
        self._out: list[SchedulerOutput | None] = [None] * n
        self._res: list[list[WindowResult]] = [[] for _ in range(n)]
        self._start: list[float] = [0.0] * n
        self._version = [0] * n
        self._heap: list[tuple] = []
        self._seq = itertools.count()
        self.num_events = 0
        self.frontend_predictor_s = 0.0
        self.peak_active = 0
        self.trace: list[tuple[str, str, float]] | None = None  # (event, request/worker, time) when enabled

    # ------------------------------------------------------------------ loop
    def run(self) -> SimResult:
        """Simulate until every request is terminal; check invariants; return records.

        Raises:
            InvariantError: if any request is lost, duplicated or wrongly finished, or a worker
                is not idle with zero load counters at the end.
        """
        wall0 = time.perf_counter()
        table, heap = self.table, self._heap
        arrivals = table.arrival_time_s
        n, i = len(table), 0
        while i < n or heap:
            if heap and (i >= n or heap[0][0] < arrivals[i]):
                t, _, kind, w, payload = heapq.heappop(heap)
                self.num_events += 1
                if kind == _WINDOW_END:
                    if payload == self._version[w]:
                        self._on_window_end(w, t)
                elif kind == _KICK:
                    if self._out[w] is None:
                        self._start_window(w, t)
                else:
                    self._enqueue(payload, w, t)
            else:
                self._on_arrival(table.make_request(i), float(arrivals[i]))
                self.num_events += 1
                i += 1
        wall_s = time.perf_counter() - wall0
        for s in self.schedulers:
            s.check_idle()
        df = self.recorder.to_frame()
        check_invariants(df, n if table.request_ids is None else list(table.request_ids))
        return SimResult(records=df, counters=self._counters(wall_s))

    def _push(self, t: float, kind: int, w: int, payload) -> None:
        heapq.heappush(self._heap, (t, next(self._seq), kind, w, payload))

    def _on_arrival(self, r: Request, now: float) -> None:
        self.active[r.request_id] = r
        if len(self.active) > self.peak_active:
            self.peak_active = len(self.active)
        delay = 0.0
        if self.lb.needs_prediction:
            preds, delay = self.prediction.predict([r])  # type: ignore[union-attr]
            r.record_prediction(float(preds[0]))
            self.frontend_predictor_s += delay
        w = self.lb.select(r, self.schedulers)
        if self.trace is not None:
            self.trace.append(("arrive", r.request_id, now))
        if delay > 0:
            self.schedulers[w].assign(r)  # its load counts from now, not after the latency
            self._push(now + delay, _ENQUEUE, w, r)
        else:
            self._enqueue(r, w, now)

    def _enqueue(self, r: Request, w: int, now: float) -> None:
        s = self.schedulers[w]
        if r.status.is_terminal:  # aborted while in transit
            return
        if not s.add_request(r, now):
            if self.trace is not None:
                self.trace.append(("reject", r.request_id, now))
            self._finalize(r)
            return
        if self._out[w] is None:
            # Deferred to an event at the same time, so that every request arriving at `now`
            # is in the buffer before the idle worker decides.
            self._push(now, _KICK, w, None)
        elif s.mode == "continuous" and s.num_free_slots > 0:
            self._cut_segment(w, now)

    def _start_window(self, w: int, now: float) -> None:
        s = self.schedulers[w]
        if not s.has_work:
            return
        out = s.schedule(now)
        for r in out.failed:
            self._finalize(r)
        if out.is_empty:
            return
        start = now + out.overhead_s
        res = self.workers[w].execute(out.batch, start)
        self._out[w], self._res[w], self._start[w] = out, res, start
        self._version[w] += 1
        end = max(x.end_s for x in res)
        if self.trace is not None:
            for r in out.preempted:
                self.trace.append(("preempt", r.request_id, now))
            for r in out.scheduled:
                self.trace.append(("run", r.request_id, start))
        self._push(end, _WINDOW_END, w, self._version[w])

    def _cut_segment(self, w: int, now: float) -> None:
        """Continuous mode: end the running segment at the first step boundary >= now."""
        out = self._out[w]
        batch = out.batch  # type: ignore[union-attr]
        planned = self.workers[w].segment_steps(batch)
        t0 = self._start[w] + self.cost_model.prefill_time_s(batch.num_prefill_tokens)
        ctx = sum(it.num_context_tokens for it in batch.items)
        m = max(self.cost_model.steps_within_s(len(batch.items), ctx, now - t0), 1)
        if m >= planned:
            return
        batch.max_steps = m
        self._res[w] = self.workers[w].execute(batch, self._start[w])
        self._version[w] += 1
        self._push(max(x.end_s for x in self._res[w]), _WINDOW_END, w, self._version[w])

    def _on_window_end(self, w: int, now: float) -> None:
        out, res = self._out[w], self._res[w]
        self._out[w] = None
        finished = self.schedulers[w].update(out, res, now)  # type: ignore[arg-type]
        for r in finished:
            if self.trace is not None:
                self.trace.append(("finish", r.request_id, now))
            self._finalize(r)
        self._start_window(w, now)

    def _finalize(self, r: Request) -> None:
        if r.status not in (RequestStatus.FINISHED, RequestStatus.FAILED):
            raise RuntimeError(f"request {r.request_id!r} finalised with status {r.status.name}")
        self.recorder.add(r)
        del self.active[r.request_id]

    def _counters(self, wall_s: float) -> dict:
        s = self.schedulers
        return {
            "wall_s": wall_s,
            "num_events": self.num_events,
            "peak_active_requests": self.peak_active,
            "num_decisions": sum(x.num_decisions for x in s),
            "num_predictions": sum(x.num_predictions for x in s),
            "num_kv_drops": sum(x.num_kv_drops for x in s),
            "predictor_overhead_s": sum(x.predictor_latency_total_s for x in s) + self.frontend_predictor_s,
            "scheduling_overhead_s": sum(x.scheduling_overhead_total_s for x in s),
            **ranking_counters(s),
            "sim_path": "general",
        }
