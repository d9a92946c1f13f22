"""Fast simulation path: the ``Simulator``'s rules on flat per-worker state (issue 12 item 1).

Same results as ``elis.serving.simulator.Simulator`` (the general path), per request, bit for
bit — proved by ``tests/serving/test_fastsim_equivalence.py``, which runs both paths on the
same workloads (windowed and continuous; fcfs, sjf, isrtf, srtf_oracle; preemption on/off,
margins, aging; several workers and every balancer) and compares every record and counter.

What differs is only the mechanics:
- no per-window object protocol: no ``WindowBatch``/``WindowItem``/``WindowResult`` (kept for
  real workers) and no ``Request`` objects: each active request is one small slotted record
  (``_Req``) dropped at finish; each worker is flat state (running list, buffer heap, load
  counters, the current window's planned tokens and end times computed inline);
- keys are computed once per boundary (at push for waiting requests, once per contender);
- the exact and the noisy oracle are evaluated inline (same formulas as
  ``elis.predictor.simple``; the noisy oracle's per-request key is hashed once per request);
- records go straight into the columnar ``RequestRecorder`` at finish.

Event order, tie-breaks and float arithmetic are those of the general path (same event heap
``(time, seq)``, same KICK/ENQUEUE/WINDOW_END events, same order of every floating-point
accumulation), so ``num_events`` and every counter agree as well.

Supported (``unsupported_reason`` returns None): the policies ``fcfs``, ``sjf``, ``isrtf``,
``srtf_oracle`` of ``SchedulingPolicy`` (aging included, promotion not), both modes, any
preemption setting and margin, unlimited KV (``kv_capacity_tokens=None``), the four load
balancers of ``elis.serving.load_balancer``, any predictor behind a ``PredictionService``
(the two oracles inline, any other through the service with a light query object).
Anything else runs on the general path; ``elis.experiments.run.simulate`` logs which and why.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import operator
import time

import numpy as np

from elis.serving.cost_model import CostModel
from elis.serving.load_balancer import LeastPredictedTokens, LeastRequests, LoadBalancer, PowerOfTwo, RoundRobin
from elis.serving.metrics import InvariantError, RequestRecorder, check_invariants, fail_reason_kind
from elis.serving.prediction import PredictionService, reveal_prefix
from elis.serving.ranking import RankingTracker, ranking_counters
from elis.serving.scheduler import Scheduler
from elis.serving.simulator import RequestTable, SimResult

log = logging.getLogger(__name__)

_WINDOW_END, _ENQUEUE, _KICK = 0, 1, 2
FAST_POLICIES: tuple[str, ...] = ("fcfs", "sjf", "isrtf", "srtf_oracle")
_FAST_BALANCERS = (RoundRobin, LeastRequests, LeastPredictedTokens, PowerOfTwo)
_NAN = math.nan
_first = operator.itemgetter(0)
_CHUNK = 4096  # workload rows read (and noise factors drawn, in one numpy call) at a time


def unsupported_reason(
    schedulers: list[Scheduler], load_balancer: LoadBalancer, prediction: PredictionService | None
) -> str | None:
    """Why the fast path cannot run this configuration, or None when it can."""
    from elis.serving.policy import policy_class

    if not schedulers:
        return "no workers"
    s0 = schedulers[0]
    for s in schedulers:
        if type(s) is not Scheduler:
            return f"scheduler class {type(s).__name__}"
        if s.policy.name not in FAST_POLICIES:
            return f"sched.policy={s.policy.name!r} (fast path: {list(FAST_POLICIES)})"
        if type(s.policy) is not policy_class(s.policy.name):  # a subclass may change the keys
            return f"policy class {type(s.policy).__name__}"
        if s.policy.promote_after_s is not None:
            return "sched.promote_after_s (promotion tiers)"
        if s.kv_capacity_tokens is not None:
            return "worker.kv_capacity_tokens (KV capacity limits)"
        if s.has_work or s.num_decisions:
            return "schedulers already used"
        same = (
            s.policy == s0.policy and s.mode == s0.mode and s.max_batch_size == s0.max_batch_size
            and s.window_tokens == s0.window_tokens and s.preemption == s0.preemption
            and s.preemption_margin == s0.preemption_margin and s.predictor is s0.predictor
            and s.scheduling_overhead_s == s0.scheduling_overhead_s
            and s.max_context_tokens == s0.max_context_tokens
        )
        if not same:
            return "workers with different scheduler settings"
    if type(load_balancer) not in _FAST_BALANCERS:
        return f"load balancer {type(load_balancer).__name__}"
    needs = s0.policy.uses_predictions or load_balancer.needs_prediction
    svc = s0.predictor if s0.policy.uses_predictions else prediction
    if needs and not isinstance(svc, PredictionService):
        return f"a prediction source of class {type(svc).__name__} (fast path: PredictionService)"
    if s0.policy.uses_predictions and load_balancer.needs_prediction and s0.predictor is not prediction:
        return "the frontend and the schedulers use different prediction services"
    return None


class _Req:
    """One active request's state (fields named as on ``Request`` where they mean the same)."""

    __slots__ = (
        "i", "true_len", "max_tokens", "request_id", "arrival_time_s", "num_prompt_tokens", "target", "num_generated_tokens",
        "first_predicted_tokens", "predicted_remaining_tokens", "load", "needs_prediction", "at_boundary",
        "started", "first_tok", "exec_s", "iv_start", "iv_end", "max_gap", "num_preemptions", "worker",
        "nkey", "mult", "moff", "mcount", "preds", "iv", "max_new", "assigned",
    )

    def __init__(self, i: int, rid: str, arrival: float, prompt: int, true_len: int, max_tokens: int) -> None:
        self.i = i
        self.true_len = true_len
        self.max_tokens = max_tokens
        target = true_len if true_len < max_tokens else max_tokens
        self.request_id = rid
        self.arrival_time_s = arrival
        self.num_prompt_tokens = prompt
        self.target = target
        self.num_generated_tokens = 0
        self.first_predicted_tokens = None
        self.predicted_remaining_tokens = None
        self.load = 0.0
        self.needs_prediction = True
        self.at_boundary = True
        self.started = False
        self.first_tok = None
        self.exec_s = 0.0
        self.iv_start = 0.0
        self.iv_end = None
        self.max_gap = None
        self.num_preemptions = 0
        self.worker = -1
        self.nkey = 0
        self.mult = None
        self.moff = 0
        self.mcount = 0
        self.preds = None
        self.iv = None
        self.max_new = 0
        self.assigned = False


class _Query:
    """What ``PredictionService.predict`` reads from a request (generic predictors only)."""

    __slots__ = ("request_id", "prompt", "partial_response", "num_generated_tokens", "generator",
                 "target_num_output_tokens", "num_prompt_tokens", "true_response", "true_num_output_tokens")

    def __init__(self, r: _Req, table: RequestTable, reveal_text: bool) -> None:
        i = r.i
        self.request_id = r.request_id
        self.prompt = table.prompts[i] if table.prompts is not None else ""
        self.num_generated_tokens = r.num_generated_tokens
        self.generator = table.generators[i] if table.generators is not None else None
        self.target_num_output_tokens = r.target
        self.num_prompt_tokens = r.num_prompt_tokens
        self.true_response = table.responses[i] if table.responses is not None else None
        self.true_num_output_tokens = int(table.num_output_tokens[i])
        self.partial_response = (
            reveal_prefix(self.true_response or "", r.num_generated_tokens, self.true_num_output_tokens)
            if reveal_text else ""
        )


class _Worker:
    """Flat state of one worker; ``num_outstanding``/``predicted_outstanding_tokens`` feed the balancer."""

    __slots__ = (
        "wid", "running", "buffer", "pending", "num_outstanding", "predicted_outstanding_tokens", "busy",
        "version", "start", "prefill_total", "steps", "max_steps", "fins", "peak_load", "n_tok", "ends", "firsts", "num_decisions", "num_predictions",
        "predictor_latency_total_s", "scheduling_overhead_total_s", "num_preemptions", "ranking",
    )

    def __init__(self, wid: int) -> None:
        self.wid = wid
        self.running: list[_Req] = []
        self.buffer: list[tuple] = []  # heap of (sort_key, request); sort keys are unique
        self.ranking = RankingTracker()
        self.pending: list[_Req] = []
        self.num_outstanding = 0
        self.predicted_outstanding_tokens = 0.0
        self.busy = False
        self.version = 0
        self.start = 0.0
        self.prefill_total = 0
        self.steps: list[int] = []
        self.max_steps: int | None = None
        self.fins: list[bool] = []
        self.peak_load = 0.0
        self.n_tok: list[int] = []
        self.ends: list[float] = []
        self.firsts: list = []
        self.num_decisions = 0
        self.num_predictions = 0
        self.predictor_latency_total_s = 0.0
        self.scheduling_overhead_total_s = 0.0
        self.num_preemptions = 0


class FastSimulator:
    """Drop-in for ``Simulator`` (same arguments, same ``SimResult``) on supported configurations.

    Raises:
        ValueError: an unsupported configuration (the reason from ``unsupported_reason``), or
            a balancer that needs predictions without a prediction service.
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
        reason = unsupported_reason(schedulers, load_balancer, prediction)
        if reason is not None:
            raise ValueError(f"the fast simulation path does not support {reason}")
        self.table = table
        self.cost_model = cost_model
        self.lb = load_balancer
        self.prediction = prediction
        self.recorder = recorder if recorder is not None else RequestRecorder(capacity=len(table))
        self.reveal_text = reveal_text
        s0 = schedulers[0]
        self.policy = s0.policy
        self.service: PredictionService | None = s0.predictor if s0.policy.uses_predictions else prediction
        self.mode = s0.mode
        self.B = s0.max_batch_size
        self.W = s0.window_tokens
        self.preemption = s0.preemption
        self.margin = s0.preemption_margin
        self.sched_overhead_s = s0.scheduling_overhead_s
        self.max_context_tokens = s0.max_context_tokens
        # PredictionService.observe_finished: online predictors (gbdt) learn from finished answers
        self._observe = getattr(getattr(s0.predictor, "predictor", None), "observe_finished", None)
        self.num_max_tokens_capped = 0
        self._failure_kinds_logged: set[str] = set()
        self.uses_boundaries = s0.uses_boundaries
        self.workers = [_Worker(s.worker_id) for s in schedulers]
        self._heap: list[tuple] = []
        self._seq = itertools.count()
        self.num_events = 0
        self.frontend_predictor_s = 0.0
        self.num_active = 0
        self.peak_active = 0
        self._lb_attr = {LeastPredictedTokens: "predicted_outstanding_tokens", LeastRequests: "num_outstanding"}.get(
            type(load_balancer)
        )
        self._noise: tuple[int, float] | None = None  # (seed, sigma) when the noisy oracle runs inline
        self._predict = self._predict_fn()
        self._keyf = self._key_fn()
        self.uses_predictions = s0.policy.uses_predictions

    # ------------------------------------------------------------------ predictions
    def _predict_fn(self):
        """``f(list[_Req]) -> (list[float], charged_s)``: the service's numbers, computed cheaply."""
        from elis.predictor.simple import NoisyOraclePredictor, OraclePredictor, noise_multipliers

        svc = self.service
        if svc is None:
            return None
        kind = type(svc.predictor)
        inline = svc.latency_source != "measured" and not svc._table
        if inline and kind is OraclePredictor:
            def oracle(rs: list[_Req]):
                svc.num_calls += 1
                svc.num_queries += len(rs)
                return [float(max(r.target - r.num_generated_tokens, 0)) for r in rs], svc.latency_s(len(rs))
            return oracle
        if inline and kind is NoisyOraclePredictor:
            sigma, W = svc.predictor.sigma, self.W

            def noisy(rs: list[_Req]):
                svc.num_calls += 1
                svc.num_queries += len(rs)
                out = []
                for r in rs:
                    g = r.num_generated_tokens
                    q, m = divmod(g, W)
                    if m == 0 and q < r.mcount:
                        mult = r.mult[r.moff + q]
                    else:  # not a window boundary: evaluate this pair alone (same function)
                        mult = float(noise_multipliers([r.nkey], [g], sigma)[0])
                    out.append(float(max(r.target - g, 0)) * mult)
                return out, svc.latency_s(len(rs))
            self._noise = (svc.predictor.seed, sigma)
            return noisy
        table, reveal = self.table, self.reveal_text

        def generic(rs: list[_Req]):
            preds, lat = svc.predict([_Query(r, table, reveal) for r in rs])  # type: ignore[arg-type]
            return [float(p) for p in preds], lat
        return generic

    def _noise_block(self, i0: int, i1: int) -> tuple:
        """Noise factors of requests ``i0..i1-1`` at every window boundary, in one numpy call.

        Returns ``(keys, factors, offsets, counts)``: request ``i``'s factor at step ``k``
        (``k·W`` tokens generated) is ``factors[offsets[i − i0] + k]`` for ``k < counts[i − i0]``.
        """
        from elis.predictor.simple import noise_key, noise_multipliers

        seed, sigma = self._noise  # type: ignore[misc]
        t = self.table
        ids = [t.request_id(i) for i in range(i0, i1)]
        keys = [noise_key(seed, rid) for rid in ids]
        targets = np.minimum(t.num_output_tokens[i0:i1], t.max_tokens)
        counts = np.maximum(-(-targets // self.W), 1)
        offsets = np.concatenate(([0], np.cumsum(counts)[:-1]))
        steps = np.arange(int(counts.sum())) - np.repeat(offsets, counts)
        factors = noise_multipliers(np.repeat(np.array(keys, dtype=np.uint64), counts), steps * self.W, sigma)
        return keys, factors.tolist(), offsets.tolist(), counts.tolist()

    def _record_prediction(self, r: _Req, p: float) -> None:
        if r.preds is not None:
            r.preds.append((r.num_generated_tokens, p))
        if r.first_predicted_tokens is None:
            r.first_predicted_tokens = p
        r.predicted_remaining_tokens = p
        r.needs_prediction = False

    # ------------------------------------------------------------------ keys
    def _key_fn(self):
        """``r -> SchedulingPolicy.sort_key(r)`` specialised to the policy (same arithmetic)."""
        pol = self.policy
        name, alpha = pol.name, pol.aging_tokens_per_s
        if name == "fcfs":
            return lambda r: (r.arrival_time_s, r.arrival_time_s, r.i)
        if name == "srtf_oracle":
            def raw(r):
                return float(r.target - r.num_generated_tokens)
        elif name == "isrtf":
            def raw(r):
                return float(min(max(r.predicted_remaining_tokens, 0.0), r.max_tokens - r.num_generated_tokens))
        else:  # sjf: the first prediction, never updated
            def raw(r):
                return float(min(max(r.first_predicted_tokens, 0.0), r.max_tokens))
        if alpha:
            return lambda r: (raw(r) + alpha * r.arrival_time_s, r.arrival_time_s, r.i)
        if name == "isrtf":  # the hot case, without the extra call
            return lambda r: (
                float(min(max(r.predicted_remaining_tokens, 0.0), r.max_tokens - r.num_generated_tokens)),
                r.arrival_time_s, r.i,
            )
        return lambda r: (raw(r), r.arrival_time_s, r.i)

    # ------------------------------------------------------------------ loop
    def run(self) -> SimResult:
        """Simulate until every request is terminal; check invariants; return records.

        Raises:
            InvariantError: if any request is lost, duplicated or wrongly finished.
        """
        wall0 = time.perf_counter()
        table, heap = self.table, self._heap
        ids = table.request_ids
        max_tokens = table.max_tokens
        record_lists = self.recorder.record_intervals
        noisy = self._noise is not None
        n, i = len(table), 0
        # The workload is read in chunks (python lists of _CHUNK rows), never all at once.
        c0 = c1 = 0
        arrivals: list[float] = []
        t_next = float(table.arrival_time_s[0]) if n else math.inf
        pop = heapq.heappop
        workers = self.workers
        while i < n or heap:
            if heap and heap[0][0] < t_next:  # at equal times arrivals go first
                t, _, kind, w, payload = pop(heap)
                self.num_events += 1
                if kind == _WINDOW_END:
                    if payload == workers[w].version:
                        self._on_window_end(workers[w], t)
                elif kind == _KICK:
                    if not workers[w].busy:
                        self._start_window(workers[w], t)
                else:
                    self._enqueue(payload, workers[w], t)
                continue
            if i >= c1:
                c0, c1 = i, min(i + _CHUNK, n)
                arrivals = table.arrival_time_s[c0:c1].tolist()
                prompts = table.num_prompt_tokens[c0:c1].tolist()
                outputs = table.num_output_tokens[c0:c1].tolist()
                if noisy:
                    keys, factors, offsets, counts = self._noise_block(c0, c1)
            j = i - c0
            rid = ids[i] if ids is not None else f"req-{i:07d}"
            now = arrivals[j]
            r = _Req(i, rid, now, prompts[j], outputs[j], max_tokens)
            if record_lists:
                r.preds, r.iv = [], []
            if noisy:
                r.nkey, r.mult, r.moff, r.mcount = keys[j], factors, offsets[j], counts[j]
            i += 1
            t_next = (arrivals[j + 1] if i < c1 else float(table.arrival_time_s[i])) if i < n else math.inf
            self._on_arrival(r, now)
            self.num_events += 1
        wall_s = time.perf_counter() - wall0
        for wk in self.workers:  # Scheduler.check_idle
            tol = 1e-6 * max(1.0, wk.peak_load)
            if wk.running or wk.pending or wk.buffer or wk.num_outstanding or abs(wk.predicted_outstanding_tokens) > tol:
                raise InvariantError(
                    f"worker {wk.wid} not idle at the end of the run: running={len(wk.running)}, "
                    f"pending={len(wk.pending)}, waiting={len(wk.buffer)}, outstanding={wk.num_outstanding}, "
                    f"predicted_outstanding_tokens={wk.predicted_outstanding_tokens!r}"
                )
        df = self.recorder.to_frame()
        check_invariants(df, n if ids is None else list(ids))
        return SimResult(records=df, counters=self._counters(wall_s))

    def _push(self, t: float, kind: int, w: int, payload) -> None:
        heapq.heappush(self._heap, (t, next(self._seq), kind, w, payload))

    def _on_arrival(self, r: _Req, now: float) -> None:
        self.num_active += 1
        if self.num_active > self.peak_active:
            self.peak_active = self.num_active
        delay = 0.0
        if self.lb.needs_prediction:
            preds, delay = self._predict([r])
            self._record_prediction(r, preds[0])
            self.frontend_predictor_s += delay
        w = self._select_worker(r)
        if delay > 0:  # Scheduler.assign: its load counts from now, not after the latency
            wk = self.workers[w]
            r.worker = w
            r.assigned = True
            wk.num_outstanding += 1
            if r.predicted_remaining_tokens is not None:
                self._set_load(wk, r, r.predicted_remaining_tokens)
            self._push(now + delay, _ENQUEUE, w, r)
        else:
            self._enqueue(r, self.workers[w], now)

    def _select_worker(self, r: _Req) -> int:
        """``LoadBalancer.select`` (least-load scans inline: same rotation, same ties)."""
        lb, ws = self.lb, self.workers
        attr = self._lb_attr
        if attr is None:
            return lb.select(r, ws)  # type: ignore[arg-type]
        n = len(ws)
        start = lb._next
        if attr == "predicted_outstanding_tokens":
            loads = [wk.predicted_outstanding_tokens for wk in ws]
        else:
            loads = [wk.num_outstanding for wk in ws]
        rot = loads[start:] + loads[:start]
        best = (start + rot.index(min(rot))) % n
        lb._next = (best + 1) % n
        return best

    def _set_load(self, wk: _Worker, r: _Req, tokens: float) -> None:
        wk.predicted_outstanding_tokens += tokens - r.load
        r.load = tokens
        if wk.predicted_outstanding_tokens > wk.peak_load:
            wk.peak_load = wk.predicted_outstanding_tokens

    def _enqueue(self, r: _Req, wk: _Worker, now: float) -> None:
        if not r.assigned:
            r.worker = wk.wid
            wk.num_outstanding += 1
        if r.predicted_remaining_tokens is not None:
            r.needs_prediction = False
            self._set_load(wk, r, r.predicted_remaining_tokens)
        cap = self.max_context_tokens
        if cap is not None:  # Scheduler._context_rejection
            if r.num_prompt_tokens >= cap:
                self._reject(wk, r, now, f"prompt has {r.num_prompt_tokens} tokens; the model's context length "
                             f"is max_context_tokens={cap} (prompt + output)")
                return
            if r.num_prompt_tokens + r.max_tokens > cap:
                r.max_tokens = cap - r.num_prompt_tokens
                r.target = r.true_len if r.true_len < r.max_tokens else r.max_tokens
                self.num_max_tokens_capped += 1
        if self.policy.uses_predictions and r.needs_prediction:
            wk.pending.append(r)
        else:
            heapq.heappush(wk.buffer, (self._keyf(r), r))
        if not wk.busy:
            self._push(now, _KICK, wk.wid, None)
        elif self.mode == "continuous" and len(wk.running) < self.B:
            self._cut_segment(wk, now)

    def _reject(self, wk: _Worker, r: _Req, now: float, reason: str) -> None:
        """``Scheduler._fail`` at admission + the simulator's record of a rejected request."""
        self._set_load(wk, r, 0.0)
        wk.num_outstanding -= 1
        self.num_active -= 1
        kind = fail_reason_kind(reason)
        level = logging.DEBUG if kind in self._failure_kinds_logged else logging.WARNING
        self._failure_kinds_logged.add(kind)
        log.log(level, "worker %d: request %s failed: %s", wk.wid, r.request_id, reason)
        i = r.i
        gen = self.table.generators
        target = r.true_len if r.true_len < r.max_tokens else r.max_tokens
        values = (
            r.request_id, r.worker, "FAILED", None, reason, gen[i] if gen is not None else None, r.arrival_time_s,
            _NAN, _NAN, _NAN, _NAN, 0, _NAN, _NAN, _NAN, r.num_prompt_tokens, 0, 0, r.true_len, r.max_tokens,
            0, 0, r.first_predicted_tokens if r.first_predicted_tokens is not None else _NAN, now,
        )
        lists = None
        if r.iv is not None:
            preds = r.preds or []
            lists = ([], [], [g for g, _ in preds], [p for _, p in preds], [target - g for g, _ in preds])
        self.recorder.add_row(values, lists)

    # ------------------------------------------------------------------ one decision
    def _start_window(self, wk: _Worker, now: float) -> None:
        """``Scheduler.schedule`` (predict, split, select, preempt, items) and the window's times.

        One function on purpose: this runs once per window and is the simulator's hot loop.
        """
        running = wk.running
        if not (running or wk.pending or wk.buffer):
            return
        wk.num_decisions += 1
        keyf, buf, push = self._keyf, wk.buffer, heapq.heappush
        # --- one batched prediction for new and at-boundary requests (Scheduler._predict_pending)
        pred_latency = 0.0
        if self.uses_predictions:
            todo = [r for r in running if r.needs_prediction]
            if wk.pending:
                todo = wk.pending + todo
            if todo:
                preds, pred_latency = self._predict(todo)  # type: ignore[misc]
                pot = wk.predicted_outstanding_tokens
                for r, p in zip(todo, preds):
                    pot += p - r.load
                    r.load = p
                    if r.preds is not None:
                        r.preds.append((r.num_generated_tokens, p))
                    if r.first_predicted_tokens is None:
                        r.first_predicted_tokens = p
                    r.predicted_remaining_tokens = p
                    r.needs_prediction = False
                wk.predicted_outstanding_tokens = pot
                if pot > wk.peak_load:  # only the scale of check_idle's tolerance
                    wk.peak_load = pot
                for r in wk.pending:
                    push(buf, (keyf(r), r))
                wk.pending = []
                wk.num_predictions += len(todo)
                wk.predictor_latency_total_s += pred_latency
        else:
            wk.pending.clear()
        # --- contenders (at a boundary) against the buffer (Scheduler._split_running/_select)
        if self.preemption:
            continuing = [r for r in running if not r.at_boundary]
            keyed = [(keyf(r), r) for r in running if r.at_boundary]
            if len(keyed) > 1:
                keyed.sort(key=_first)
        else:
            continuing, keyed = running, []
        if self.uses_predictions and wk.ranking.admits(len(buf) + len(keyed)):  # Scheduler._observe_ranking
            group = [r for _, r in buf if r.predicted_remaining_tokens is not None]
            group += [r for _, r in keyed if r.predicted_remaining_tokens is not None]
            if len(group) >= 2:
                wk.ranking.observe([r.predicted_remaining_tokens for r in group],
                                   [r.target - r.num_generated_tokens for r in group])
        # Scheduler._incumbent_keeps: a challenger displaces an at-boundary request only if
        # its key is lower by MORE than the margin (keys without tie-breakers).
        margin = self.margin
        free = self.B - len(continuing)
        selected: list[_Req] = []
        from_buffer: list[_Req] = []
        i, nc = 0, len(keyed)
        while len(selected) < free:
            if i < nc:
                if not buf or not buf[0][0][0] < keyed[i][0][0] - margin:
                    selected.append(keyed[i][1])
                    i += 1
                    continue
            elif not buf:
                break
            r = heapq.heappop(buf)[1]
            selected.append(r)
            from_buffer.append(r)
        while i < nc:  # preempted: back to the buffer with their key
            r = keyed[i][1]
            r.num_preemptions += 1
            wk.num_preemptions += 1
            push(buf, (keyf(r), r))
            i += 1
        batch = continuing + selected if continuing else selected
        wk.running = batch
        if not batch:
            return
        # --- items: max_new and prefill (the prompt at the first admission; KV is never dropped here)
        W = self.W
        if self.uses_boundaries:
            for r in batch:
                g = r.num_generated_tokens
                cap = r.max_tokens - g
                w_left = W - g % W
                r.max_new = w_left if w_left < cap else cap
        else:
            for r in batch:
                r.max_new = r.max_tokens - r.num_generated_tokens
        prefill_total = 0
        for r in from_buffer:
            if not r.started:
                r.started = True
                prefill_total += r.num_prompt_tokens
        wk.scheduling_overhead_total_s += self.sched_overhead_s
        start = now + (pred_latency + self.sched_overhead_s)
        self._execute(wk, start, prefill_total, None)
        wk.busy = True
        wk.version += 1
        heapq.heappush(self._heap, (max(wk.ends), next(self._seq), _WINDOW_END, wk.wid, wk.version))

    # ------------------------------------------------------------------ the window (SimWorker)
    def _execute(self, wk: _Worker, start: float, prefill_total: int, max_steps: int | None) -> None:
        """``SimWorker.execute`` on ``wk.running`` from ``start``: tokens, finishes, stop and first times.

        Plans (``SimWorker.plan``): a request that ends by EOS (target < max_tokens) with
        ``rem`` tokens left in a window of budget ``m`` makes ``rem`` tokens in ``rem + 1``
        steps and finishes if ``rem + 1 <= m``, else ``m`` tokens in ``m`` steps; a 'length'
        request makes ``min(m, rem)`` tokens in as many steps and finishes when that is ``rem``.
        """
        cm = self.cost_model
        batch = wk.running
        toks, steps, fins = [], [], []
        for r in batch:
            rem = r.target - r.num_generated_tokens
            m = r.max_new
            if r.target < r.max_tokens:  # ends by EOS: one more step after its last token
                if rem + 1 <= m:
                    toks.append(rem)
                    steps.append(rem + 1)
                    fins.append(True)
                else:
                    toks.append(m)
                    steps.append(m)
                    fins.append(False)
            else:
                n = m if m < rem else rem
                toks.append(n)
                steps.append(n)
                fins.append(n == rem)
        t0 = start + cm.prefill_time_s(prefill_total)
        wk.start = start
        wk.prefill_total = prefill_total
        wk.steps = steps
        wk.max_steps = max_steps
        b = len(batch)
        if self.mode == "continuous":
            st = min(steps)
            if max_steps is not None:
                st = min(st, max_steps)
            ctx = sum(r.num_prompt_tokens + r.num_generated_tokens for r in batch)
            end = t0 + cm.decode_time_s(b, ctx, st)
            first = t0 + cm.decode_step_time_s(b, ctx) if st else None
            wk.n_tok = [x if x < st else st for x in toks]
            wk.fins = [f and st >= x for f, x in zip(fins, steps)]
            wk.ends, wk.firsts = [end] * b, [first] * b
            return
        wk.n_tok, wk.fins = toks, fins
        lo = min(steps)
        if lo > 0 and lo == max(steps):  # every item decodes the same steps: one segment
            ctx = sum([r.num_prompt_tokens + r.num_generated_tokens for r in batch])
            wk.ends = [t0 + cm.decode_time_s(b, ctx, lo)] * b
            wk.firsts = [t0 + cm.decode_step_time_s(b, ctx)] * b
            return
        ends = [t0] * b
        firsts: list = [None] * b
        order = sorted(range(b), key=steps.__getitem__)
        active = [j for j in order if steps[j] > 0]
        nb = len(active)
        ctxs = [r.num_prompt_tokens + r.num_generated_tokens for r in batch]
        ctx = sum(ctxs[j] for j in active)
        if nb:
            first = t0 + cm.decode_step_time_s(nb, ctx)
            for j in active:
                firsts[j] = first
        t, done, k, na = t0, 0, 0, nb
        while k < na:
            target = steps[active[k]]
            t += cm.decode_time_s(nb, ctx + done * nb, target - done)
            done = target
            while k < na and steps[active[k]] == target:
                j = active[k]
                ends[j] = t
                ctx -= ctxs[j]
                nb -= 1
                k += 1
        wk.ends, wk.firsts = ends, firsts

    def _cut_segment(self, wk: _Worker, now: float) -> None:
        """Continuous mode: end the running segment at the first step boundary >= now."""
        planned = min(wk.steps, default=0)
        if wk.max_steps is not None:
            planned = min(planned, wk.max_steps)
        cm = self.cost_model
        t0 = wk.start + cm.prefill_time_s(wk.prefill_total)
        ctx = sum(r.num_prompt_tokens + r.num_generated_tokens for r in wk.running)
        m = max(cm.steps_within_s(len(wk.running), ctx, now - t0), 1)
        if m >= planned:
            return
        self._execute(wk, wk.start, wk.prefill_total, m)
        wk.version += 1
        self._push(max(wk.ends), _WINDOW_END, wk.wid, wk.version)

    # ------------------------------------------------------------------ window end (Scheduler.update)
    def _on_window_end(self, wk: _Worker, now: float) -> None:
        wk.busy = False
        start, windowed = wk.start, self.mode == "windowed"
        uses_b, isrtf = self.uses_boundaries, self.policy.name == "isrtf"
        still: list[_Req] = []
        done: list[_Req] = []
        for r, n, fin, end, first in zip(wk.running, wk.n_tok, wk.fins, wk.ends, wk.firsts):
            if n:
                r.num_generated_tokens += n
                load = r.load
                if load:
                    left = load - n
                    if left < 0.0:
                        left = 0.0
                    wk.predicted_outstanding_tokens += left - load
                    r.load = left
                if r.first_tok is None:
                    r.first_tok = first
            # Request.add_run_interval, with the executed time and the longest gap kept running
            if r.iv_end is not None and r.iv_end == start:
                r.iv_end = end
                if r.iv is not None:
                    r.iv[-1][1] = end
            else:
                if r.iv_end is None:
                    gap = start - r.arrival_time_s
                else:
                    r.exec_s += r.iv_end - r.iv_start
                    gap = start - r.iv_end
                if r.max_gap is None or gap > r.max_gap:
                    r.max_gap = gap
                r.iv_start, r.iv_end = start, end
                if r.iv is not None:
                    r.iv.append([start, end])
            g = r.num_generated_tokens
            if fin or g >= r.max_tokens:
                wk.predicted_outstanding_tokens += 0.0 - r.load
                r.load = 0.0
                wk.num_outstanding -= 1
                reason = "length" if g >= r.max_tokens else "eos"
                if self._observe is not None and reason != "length":
                    self._observe_finished(r)
                self._record(r, end, reason)
                done.append(r)
                continue
            if windowed and n < r.max_new:
                raise RuntimeError(
                    f"request {r.request_id!r}: windowed worker stopped after {n} < {r.max_new} tokens without finishing"
                )
            r.at_boundary = n == r.max_new and uses_b
            if r.at_boundary and isrtf:
                r.needs_prediction = True
            still.append(r)
        wk.running = still
        self.num_active -= len(done)
        self._start_window(wk, now)

    def _observe_finished(self, r: _Req) -> None:
        t = self.table
        prompt = t.prompts[r.i] if t.prompts is not None else ""
        self._observe(prompt, t.generators[r.i] if t.generators is not None else None, int(r.num_generated_tokens))

    def _record(self, r: _Req, finish: float, reason: str) -> None:
        """One FINISHED row, with ``RequestRecorder.add``'s formulas."""
        table = self.table
        executed = r.exec_s + (r.iv_end - r.iv_start)  # type: ignore[operator]
        arr = r.arrival_time_s
        jct = finish - arr
        n = r.num_generated_tokens
        first = r.first_tok
        ttft = first - arr if first is not None else _NAN
        i = r.i
        steps = n + 1 if reason == "eos" else n  # metrics.decode_steps: the EOS step counts
        tpot = (finish - first) / (steps - 1) if first is not None and steps >= 2 else _NAN
        values = (
            r.request_id, r.worker, "FINISHED", reason, None,
            table.generators[i] if table.generators is not None else None, arr,
            first if first is not None else _NAN, finish, jct, jct - executed, executed,
            r.max_gap if r.max_gap is not None else 0.0, ttft, tpot, r.num_prompt_tokens, n, steps,
            r.true_len, r.max_tokens, r.num_preemptions, 0,
            r.first_predicted_tokens if r.first_predicted_tokens is not None else _NAN, _NAN,
        )
        lists = None
        if r.iv is not None:
            preds = r.preds or []
            lists = (
                [s for s, _ in r.iv], [e for _, e in r.iv], [g for g, _ in preds], [p for _, p in preds],
                [r.target - g for g, _ in preds],
            )
        self.recorder.add_row(values, lists)

    def _counters(self, wall_s: float) -> dict:
        ws = self.workers
        return {
            "wall_s": wall_s,
            "num_events": self.num_events,
            "peak_active_requests": self.peak_active,
            "num_decisions": sum(x.num_decisions for x in ws),
            "num_predictions": sum(x.num_predictions for x in ws),
            "num_kv_drops": 0,
            "predictor_overhead_s": sum(x.predictor_latency_total_s for x in ws) + self.frontend_predictor_s,
            "scheduling_overhead_s": sum(x.scheduling_overhead_total_s for x in ws),
            **ranking_counters(ws),
            "sim_path": "fast",
        }
