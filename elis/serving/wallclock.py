"""Wall-clock runner: the simulator's schedulers, balancer and records, on real workers.

``run_variant(cfg, sched, table, prediction, cost_model, out_dir)`` is what
``elis.experiments.run`` calls when ``worker.kind`` is not ``sim``. It serves the same
``RequestTable`` with the same ``Scheduler`` / load balancer / ``RequestRecorder`` code as
``elis.serving.simulator``, but time is ``time.perf_counter()`` since the run started:

* the same ``WallClockRunner`` also serves open-ended traffic: the HTTP gateway
  (``elis.serving.gateway``) drives it through ``submit`` / ``cancel`` / ``step`` instead of a
  table (one request path for experiments and serving);
* arrivals are admitted when the clock passes ``arrival_time_s × worker.time_scale``;
* each worker runs its windows in its own executor (a thread for ``cluster=local``, a Ray
  actor for ``cluster=ray``, see ``elis.serving.workers.ray_worker``), so workers run
  concurrently while the driver admits arrivals and makes decisions;
* the predictor is called live between windows (``Scheduler.schedule``), on the text the
  real model generated; its measured latency is recorded (``predictor_wall_s``) and, being
  real time, delays the window that follows (no simulated charge);
* continuous mode: a running segment cannot be cut from outside, so decode segments are
  bounded by ``worker.continuous_max_steps`` decode steps, after which the scheduler
  decides again (an arrival waits at most that many steps for a free slot);
* per-request errors: a ``WindowResult.error`` (the worker could not run that item: empty
  prompt without BOS, context too long, HTTP 4xx) fails that request alone; a window that
  raises anything but a worker death fails that window's requests, the worker stays alive;
* faults: a worker whose window raises (a killed Ray actor: ``RayActorError``) is marked
  dead; the requests of that window and of its buffer return to live workers with the
  tokens confirmed by earlier windows (the failed window's tokens are discarded), and the
  fault is reported in ``metrics.json`` (``faults``). Nothing is lost or duplicated: the
  records pass ``check_invariants``, and every live worker ends idle with its load counters
  at zero (``Scheduler.check_idle``; the dead worker is ``drain``-ed, the survivors count each
  adopted request's outstanding prediction once, issue 11 item 4);
* a request that can never fit in ``kv_capacity_tokens`` is rejected at arrival (FAILED
  with a reason) and never blocks the queue.

Outputs are the simulator's: ``requests.parquet`` and ``metrics.json`` (same summary keys,
plus ``wall_s``, worker statistics and faults), so one report compares sim and real runs.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from elis.serving.metrics import RequestRecorder, check_invariants, summarize
from elis.serving.ranking import ranking_counters
from elis.serving.request import Request, RequestStatus

from elis.serving.workers.base import WorkerDied  # noqa: F401  (re-exported: the runner's fault kind)

log = logging.getLogger(__name__)

_DEATH_TYPES = ("WorkerDied", "RayActorError", "ActorDiedError", "ActorUnavailableError")


def is_worker_death(exc: BaseException) -> bool:
    """Whether ``exc`` from a window means the worker is gone (vs. an error of that batch)."""
    return any(c.__name__ in _DEATH_TYPES for c in type(exc).__mro__)


@dataclass(slots=True)
class Fault:
    worker_id: int
    time_s: float
    error: str
    requeued_request_ids: list[str] = field(default_factory=list)


class LocalWorkerHandle:
    """Runs an in-process worker (e.g. ``HFWorker``) on its own thread.

    ``kill()`` makes the window in flight (and any later one) fail with ``WorkerDied``
    after it returns, which is how a crash is injected without Ray.
    """

    def __init__(self, worker: Any) -> None:
        self.worker = worker
        self.worker_id = worker.worker_id
        self._pool = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"worker{self.worker_id}")
        self._killed = False

    def submit(self, batch, start_s: float) -> cf.Future:
        return self._pool.submit(self._run, batch, start_s)

    def _run(self, batch, start_s: float):
        res = self.worker.execute(batch, start_s)
        if self._killed:
            raise WorkerDied(f"worker {self.worker_id} was killed mid-window")
        return res

    def kill(self) -> None:
        self._killed = True

    def cancel(self, request_id: str, reason: str = "aborted") -> None:
        """Abort ``request_id``'s item of the window in flight (the worker's ``cancel``)."""
        cancel = getattr(self.worker, "cancel", None)
        if cancel is not None:
            cancel(request_id, reason)

    @property
    def max_context_tokens(self) -> int | None:
        return getattr(self.worker, "max_context_tokens", None)

    def set_sampling_streams(self, streams: dict[str, str]) -> None:
        self.worker.sampling_streams = dict(streams)

    def set_token_listener(self, fn) -> bool:
        """Stream ``(request_id, token_id)`` as the worker generates (False: not supported)."""
        if not hasattr(self.worker, "token_listener"):
            return False
        self.worker.token_listener = fn
        return True

    def stats(self) -> dict:
        st = getattr(self.worker, "stats", None)
        if st is None:
            return {}
        return {k: getattr(st, k) for k in st.__slots__}

    def reset(self) -> None:
        eng = getattr(self.worker, "engine", None)
        if eng is not None:
            eng._kv.clear()
        self._killed = False

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class WallClockRunner:
    """Serve requests on ``handles`` in real time (see the module docstring).

    Two ways to drive it (one request path, no second scheduler):

    * ``run()``: replay ``table`` (arrivals at ``arrival_time_s × time_scale``) until every
      request is terminal; returns (records, counters). ``run_experiment.py`` uses this.
    * ``start_clock()`` then, from ONE thread, ``submit(request)`` / ``cancel(request_id)`` /
      ``step(timeout_s)`` repeatedly: an open-ended server (``elis.serving.gateway``). ``wake()``
      may be called from any thread to make a waiting ``step`` return early.

    Args:
        table: the workload (``elis.serving.simulator.RequestTable``) or None (served by ``submit``).
        schedulers: one ``Scheduler`` per worker (index = worker id).
        handles: one handle per worker: ``submit(batch, start_s) -> Future``, ``kill()``, and
            optionally ``cancel(request_id, reason)`` (abort that item's in-flight window).
        load_balancer: assigns arrivals to live workers.
        prediction: the live ``PredictionService`` (or None).
        prompt_token_ids: per request row, the chat-templated prompt ids.
        time_scale: arrival times are multiplied by it.
        continuous_max_steps: decode steps per segment in continuous mode.
        kill_worker: ``(worker_id, after_num_windows)``: kill that worker while its window
            number ``after_num_windows`` (1-based) runs (fault injection), or None.
        recorder: per-request records (None with ``keep_records=False``: nothing kept).
        listener: optional ``on_progress(request, result) -> bool`` called after each window
            for each request in it (True: end it now with finish_reason 'stop'), and
            ``on_terminal(request)`` once when it is finished or failed.

    Lifecycle rules: a request is terminal exactly once (finished | failed with a reason);
    ``cancel`` fails a queued or running request at once (a running one's in-flight window
    item is also aborted on the worker); of a finished or unknown request changes nothing.
    """

    def __init__(self, table, schedulers, handles, load_balancer, prediction=None,
                 prompt_token_ids: list[list[int]] | None = None, time_scale: float = 1.0,
                 continuous_max_steps: int = 8, kill_worker: tuple[int, int] | None = None,
                 recorder: RequestRecorder | None = None, listener: Any = None,
                 keep_records: bool = True) -> None:
        if load_balancer.needs_prediction and prediction is None:
            raise ValueError(f"{type(load_balancer).__name__} needs predictions; got prediction=None")
        if not time_scale > 0:
            raise ValueError(f"worker.time_scale must be > 0, got {time_scale!r}")
        if len(handles) != len(schedulers):
            raise ValueError(f"{len(handles)} worker handles for {len(schedulers)} schedulers")
        self.table = table
        self.schedulers = schedulers
        self.handles = handles
        self.lb = load_balancer
        self.prediction = prediction
        self.prompt_token_ids = prompt_token_ids
        self.time_scale = float(time_scale)
        self.continuous_max_steps = int(continuous_max_steps)
        self.kill_worker = tuple(kill_worker) if kill_worker else None
        self.recorder = recorder if recorder is not None else (RequestRecorder() if keep_records else None)
        self.listener = listener
        self.alive = [True] * len(schedulers)
        self.faults: list[Fault] = []
        self.active: dict[str, Request] = {}
        self._inflight: dict[cf.Future, tuple[int, Any]] = {}
        self._inflight_ids: dict[str, int] = {}  # request id → worker whose window holds it
        self._num_windows = [0] * len(schedulers)
        self._wake: cf.Future = cf.Future()
        self.schedule_wall_s = 0.0
        self.frontend_predictor_wall_s = 0.0
        self.num_cancelled = 0
        self.num_batch_errors = 0
        self.num_finished = 0
        self.num_failed = 0
        self._t0 = 0.0

    def now(self) -> float:
        return time.perf_counter() - self._t0

    def start_clock(self) -> None:
        self._t0 = time.perf_counter()

    # ------------------------------------------------------------------ loop
    def run(self) -> tuple[Any, dict]:
        """Serve every request of ``table``; returns (records DataFrame, counters)."""
        table = self.table
        n = len(table)
        arrivals = table.arrival_time_s * self.time_scale
        i = 0
        self.start_clock()
        while i < n or self._inflight or self.has_work:
            t = self.now()
            while i < n and arrivals[i] <= t:
                self._on_arrival(i, float(arrivals[i]))
                i += 1
            timeout = max(float(arrivals[i]) - self.now(), 0.0) if i < n else None
            if not self.step(timeout) and i >= n and not self._inflight and not self.has_work:
                break
            self._log_progress(i, n)
        wall_s = self.now()
        df = self.recorder.to_frame()
        # The real model decides each length, so the simulator's "generated exactly the true
        # length" check does not apply (the dataset length stays in the records); every other
        # invariant (none lost or duplicated, terminal, times ordered) does.
        check_invariants(df.assign(true_num_output_tokens=-1),
                         n if table.request_ids is None else list(table.request_ids))
        for s in self.schedulers:
            s.check_idle()
        return df, self._counters(wall_s)

    PROGRESS_EVERY_S = 30.0

    def _log_progress(self, arrived: int, n: int) -> None:
        """A plain progress line every ``PROGRESS_EVERY_S`` wall seconds (long real runs)."""
        now = self.now()
        if now - getattr(self, "_last_progress_s", 0.0) < self.PROGRESS_EVERY_S:
            return
        self._last_progress_s = now
        log.info("wall-clock run: %.0f s, %d/%d arrived, %d done, %d in flight",
                 now, arrived, n, arrived - len(self.active), len(self.active))

    @property
    def has_work(self) -> bool:
        """Whether a live worker's scheduler still holds requests."""
        return any(s.has_work for s, a in zip(self.schedulers, self.alive) if a)

    def step(self, timeout_s: float | None) -> bool:
        """Start windows on idle workers, then wait up to ``timeout_s`` (None: until a window
        ends or ``wake()``) and apply the windows that ended. Returns False when there was
        nothing to do or wait for (no window in flight, no queued work)."""
        for w, s in enumerate(self.schedulers):
            if self.alive[w] and not self._busy(w) and s.has_work:
                self._start_window(w)
        if not self._inflight:
            if self.has_work:
                return True  # a decision produced no batch (e.g. all failed); decide again
            if timeout_s:
                self._wait([], timeout_s)
            return False
        done = self._wait(list(self._inflight), timeout_s)
        for fut in sorted(done, key=lambda f: self._inflight[f][0]):
            self._on_window_end(fut)
        return True

    def _wait(self, futures: list, timeout_s: float | None) -> set:
        done, _ = cf.wait(futures + [self._wake], timeout=timeout_s, return_when=cf.FIRST_COMPLETED)
        done.discard(self._wake)
        return done

    def arm_wake(self) -> None:
        """Re-arm ``wake`` after it fired. Call it on the loop thread BEFORE reading the commands
        whose arrival calls ``wake``, so no wake-up between the two is lost."""
        if self._wake.done():
            self._wake = cf.Future()

    def wake(self) -> None:
        """Make a waiting ``step`` return (thread-safe)."""
        w = self._wake
        if not w.done():
            try:
                w.set_result(None)
            except cf.InvalidStateError:
                pass

    def _busy(self, w: int) -> bool:
        return any(v[0] == w for v in self._inflight.values())

    def _live(self) -> list[int]:
        return [w for w, a in enumerate(self.alive) if a]

    def _on_arrival(self, i: int, arrival_s: float) -> None:
        r = self.table.make_request(i)
        r.arrival_time_s = arrival_s
        if self.prompt_token_ids is not None:
            r.prompt_token_ids = list(self.prompt_token_ids[i])
            r.num_prompt_tokens = len(r.prompt_token_ids)
        self.submit(r)

    def submit(self, r: Request) -> None:
        """Admit ``r`` now: load balancer → that worker's scheduler (buffer).

        Raises:
            ValueError: a duplicate live request id.
        """
        if r.request_id in self.active:
            raise ValueError(f"request_id {r.request_id!r} is already being served")
        self.active[r.request_id] = r
        if self.lb.needs_prediction:
            t = time.perf_counter()
            preds, _ = self.prediction.predict([r])
            self.frontend_predictor_wall_s += time.perf_counter() - t
            r.record_prediction(float(preds[0]))
        live = self._live()
        w = live[self.lb.select(r, [self.schedulers[j] for j in live])]
        if not self.schedulers[w].add_request(r, self.now()):
            self._finalize(r)  # can never fit: rejected at once with its reason

    def cancel(self, request_id: str, reason: str = "aborted by the client") -> str:
        """Cancel a request at once (``Scheduler.abort_request``: FAILED with ``reason``, its
        slot free for the next decision). Returns 'running' when its window was in flight (the
        worker is told to abort that item: in-process at the next decode step, remote by
        closing its HTTP request; the window's result for it is discarded), 'queued' when it
        was waiting, 'done' when it was already finished, failed or unknown (nothing changes)."""
        r = self.active.get(request_id)
        if r is None or r.status.is_terminal:
            return "done"
        w = self._inflight_ids.get(request_id)
        if w is not None:
            cancel = getattr(self.handles[w], "cancel", None)
            if cancel is not None:
                cancel(request_id, reason)
        if r.worker_id is not None and self.alive[r.worker_id]:
            self.schedulers[r.worker_id].abort_request(r, reason, self.now())
        else:  # not yet (or no longer) on a live worker's queues
            r.status, r.fail_reason, r.fail_time_s = RequestStatus.FAILED, reason, self.now()
        self.num_cancelled += 1
        self._finalize(r)
        return "running" if w is not None else "queued"

    def _start_window(self, w: int) -> None:
        s = self.schedulers[w]
        t = time.perf_counter()
        out = s.schedule(self.now())
        self.schedule_wall_s += time.perf_counter() - t
        for r in out.failed:
            self._finalize(r)
        if out.is_empty:
            return
        if s.mode == "continuous":
            cap = self.continuous_max_steps
            out.batch.max_steps = cap if out.batch.max_steps is None else min(cap, out.batch.max_steps)
        fut = self.handles[w].submit(out.batch, self.now())
        self._inflight[fut] = (w, out)
        for r in out.scheduled:
            self._inflight_ids[r.request_id] = w
        self._num_windows[w] += 1
        if self.kill_worker and self.kill_worker == (w, self._num_windows[w]):
            log.warning("fault injection: killing worker %d during its window %d", w, self._num_windows[w])
            self.handles[w].kill()

    def _on_window_end(self, fut: cf.Future) -> None:
        w, out = self._inflight.pop(fut)
        for r in out.scheduled:
            self._inflight_ids.pop(r.request_id, None)
        try:
            results = fut.result()
        except Exception as exc:
            if is_worker_death(exc):  # Ray raises RayActorError, threads and servers WorkerDied
                self._on_fault(w, out, exc)
            else:  # the worker is alive; this batch's requests fail with the error
                self._on_batch_error(w, out, exc)
            return
        s = self.schedulers[w]
        now = self.now()
        ended = s.update(out, results, now)
        for r in ended:
            self._finalize(r)
        by_id = {res.request_id: res for res in results}
        for r in out.scheduled:
            if self.listener is not None and r.status is not RequestStatus.FAILED:
                if self.listener.on_progress(r, by_id.get(r.request_id)):
                    if r.status.is_terminal:
                        r.finish_reason = "stop"
                    elif s.finish_request(r, "stop", now):
                        self._finalize(r)

    def _finalize(self, r: Request) -> None:
        if not r.status.is_terminal:
            raise RuntimeError(f"request {r.request_id!r} finalised with status {r.status.name}")
        if r.request_id not in self.active:
            return
        del self.active[r.request_id]
        if r.status is RequestStatus.FINISHED:
            self.num_finished += 1
        else:
            self.num_failed += 1
        if self.recorder is not None:
            self.recorder.add(r)
        if self.listener is not None:
            self.listener.on_terminal(r)

    # ------------------------------------------------------------------ faults
    def _on_batch_error(self, w: int, out, exc: Exception) -> None:
        """A window raised without killing its worker (an engine error on some input): the
        requests of that window fail with the error; the worker keeps serving the others.
        (Real workers check each item first, ``WindowResult.error``, so this is the net.)"""
        reason = f"worker {w} failed a window of {len(out.scheduled)} request(s): {type(exc).__name__}: {exc}"[:500]
        self.num_batch_errors += 1
        log.error("%s", reason)
        s = self.schedulers[w]
        for r in out.scheduled:
            if s.abort_request(r, reason, self.now()):
                self._finalize(r)

    def _on_fault(self, w: int, out, exc: Exception) -> None:
        now = self.now()
        self.alive[w] = False
        s = self.schedulers[w]
        drained = s.drain()  # the dead worker's queues and load counters, emptied
        orphans = [r for r in out.scheduled if not r.status.is_terminal]
        orphans += [r for r in drained if not any(r is o for o in orphans)]
        fault = Fault(w, now, f"{type(exc).__name__}: {exc}"[:300], [r.request_id for r in orphans])
        self.faults.append(fault)
        log.error("worker %d failed at %.2f s (%s); requeueing %d requests", w, now, fault.error, len(orphans))
        if not self._live():
            if self.table is None:  # a server fails what it holds and keeps answering
                for r in orphans:
                    s.fail_request(r, f"every worker failed; last fault: {fault.error}")
                    self._finalize(r)
                return
            raise RuntimeError(f"all workers failed; last fault: {fault.error}") from exc
        rollback = getattr(self.listener, "on_rollback", None)
        for r in sorted(orphans, key=lambda r: (r.arrival_time_s, r.arrival_seq)):
            if rollback is not None:
                rollback(r)
            self._requeue(r, now)

    def _requeue(self, r: Request, now: float) -> None:
        """Give ``r`` (tokens confirmed so far) to a live worker as a resumed request
        (``Scheduler.adopt_request``: KV absent, so the new worker re-prefills prompt +
        confirmed tokens, counted in ``num_recomputed_tokens``)."""
        live = self._live()
        w = live[self.lb.select(r, [self.schedulers[j] for j in live])]
        if not self.schedulers[w].adopt_request(r, now):
            self._finalize(r)

    def _counters(self, wall_s: float) -> dict:
        s = self.schedulers
        return {
            "wall_s": wall_s,
            "num_decisions": sum(x.num_decisions for x in s),
            "num_predictions": sum(x.num_predictions for x in s),
            "num_preemptions": sum(x.num_preemptions for x in s),
            "num_windows": int(sum(self._num_windows)),
            "schedule_wall_s": self.schedule_wall_s,
            "frontend_predictor_wall_s": self.frontend_predictor_wall_s,
            "num_worker_faults": len(self.faults),
            **ranking_counters(s),
            "num_batch_errors": self.num_batch_errors,
            "num_cancelled": self.num_cancelled,
            "faults": [
                {"worker_id": f.worker_id, "time_s": f.time_s, "error": f.error,
                 "num_requeued": len(f.requeued_request_ids), "requeued_request_ids": f.requeued_request_ids}
                for f in self.faults
            ],
            "workers": {h.worker_id: h.stats() for h in self.handles},
        }


def sampling_streams_of(out_dir: Path, table, replay: bool) -> dict[str, str]:
    """``request_id → '<generator>/<prompt_id>'`` from the run's ``workload.parquet``, so the
    HF worker's seeded sampling replays the answers ``elis.data.generate`` wrote (the oracle
    then knows the real lengths). Empty when ``replay`` is False or the file lacks ids."""
    import pandas as pd

    if not replay:
        return {}
    for d in (out_dir, out_dir.parent, out_dir.parent.parent):
        p = d / "workload.parquet"
        if p.is_file():
            wl = pd.read_parquet(p, columns=["request_id", "sample_id"])
            out = {}
            for rid, sid in zip(wl["request_id"], wl["sample_id"]):
                parts = str(sid).split("/")
                if len(parts) >= 3:  # '<source>/<prompt_id>/<generator>'
                    out[rid] = f"{parts[-1]}/{'/'.join(parts[1:-1])}"
            return out
    return {}


def run_variant(cfg, sched: dict, table, prediction, cost_model, out_dir: Path) -> dict:
    """One scheduling variant on real workers; writes requests.parquet and metrics.json."""
    from elis.serving.runtime import build_runtime, json_default
    from elis.serving.prediction import predictor_stats
    from elis.serving.workers.hf import encode_prompt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rt = build_runtime(cfg, sched, prediction, cost_model)
    handles, tok, live, schedulers, lb = rt.handles, rt.tokenizer, rt.prediction, rt.schedulers, rt.load_balancer
    streams = sampling_streams_of(out_dir, table, bool(cfg.worker.get("replay_generation_streams", True)))
    for h in handles:
        h.set_sampling_streams(streams)
    prompts = table.prompts or [""] * len(table)
    prompt_ids = [encode_prompt(tok, p) for p in prompts]
    fault = cfg.get("cluster", {}).get("kill_worker") if cfg.get("cluster") else None
    runner = WallClockRunner(
        table, schedulers, handles, lb, live, prompt_ids,
        time_scale=float(cfg.worker.get("time_scale", 1.0)),
        continuous_max_steps=int(cfg.worker.get("continuous_max_steps", 8)),
        kill_worker=(int(fault.worker_id), int(fault.after_windows)) if fault else None,
        recorder=RequestRecorder(record_intervals=bool(cfg.record_intervals)),
    )
    records, counters = runner.run()
    records.to_parquet(out_dir / "requests.parquet", index=False)
    metrics = summarize(records)
    metrics.update(counters)
    if live is not None:
        lat = live.predictor.latency
        metrics["predictor_wall_s"] = lat.total_ms / 1e3
        metrics["predictor_mean_ms_per_call"] = lat.mean_ms_per_call
        metrics.update(predictor_stats(live.predictor))  # e.g. embedding.num_truncated
    metrics["num_replayed_streams"] = len(streams)
    true = records["true_num_output_tokens"].to_numpy()
    got = records["num_output_tokens"].to_numpy()
    metrics["num_length_matches_dataset"] = int(np.sum(true == got))
    metrics["variant"] = sched
    metrics["worker_kind"] = cfg.worker.kind
    metrics["num_max_tokens_capped"] = sum(s.num_max_tokens_capped for s in schedulers)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=json_default))
    log.info("%s/%s on %s: jct_mean_s=%.3f p99=%.3f (%d requests, %.1f s wall, %d faults)",
             sched["policy"], sched.get("mode"), cfg.worker.kind, metrics["jct_mean_s"] or float("nan"),
             metrics["jct_p99_s"] or float("nan"), len(table), counters["wall_s"], len(runner.faults))
    return metrics
