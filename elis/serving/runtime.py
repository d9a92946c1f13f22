"""The serving runtime builder: one place that turns config into the objects every driver runs.

One runtime, three drivers (CONVENTIONS §1): the discrete-event simulator
(``elis.experiments.run.simulate``), the wall-clock runner (``elis.serving.wallclock``) and the
HTTP gateway (``elis.serving.gateway``) all get their schedulers, load balancer, worker handles
and prediction service from here, so none of them re-implements scheduling and nothing under
``elis.serving`` imports ``elis.experiments`` (``tests/serving/test_runtime.py`` enforces it).

    build_schedulers(sched, ...)          one ``Scheduler`` per worker from a plain sched dict
    build_prediction_service(cfg, cm)     ``cfg.predictor.runtime`` → ``PredictionService``
    build_worker(worker_cfg, w, shared)   one real worker ('hf' | 'remote')
    build_handles(cfg)                    handles for ``cfg.num_workers`` workers (local | ray)
    build_runtime(cfg, sched, prediction) all of the above as a ``Runtime``

``worker.kind`` values: 'sim' (simulator only), 'hf' (in-process transformers), 'remote'
(OpenAI-compatible servers by URL, ``elis.serving.workers.remote``: the vLLM path is ``vllm serve``
behind it, see ``scripts/vllm_smoke.sh``; the in-process vLLM worker written for vLLM 0.11 was removed).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from elis.serving.cost_model import CostModel
from elis.serving.policy import make_policy
from elis.serving.prediction import PredictionService
from elis.serving.scheduler import Scheduler

if TYPE_CHECKING:
    from elis.serving.simulator import RequestTable

log = logging.getLogger(__name__)

SCHED_KEYS = (
    "policy", "mode", "preemption", "preemption_margin", "aging_tokens_per_s", "promote_after_s", "promote_by",
    "policy_params",
)
REAL_WORKER_KINDS = ("hf", "remote")


def json_default(o):
    """``json.dumps(default=...)`` for numpy scalars (metrics dicts hold them)."""
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, (np.bool_,)):
        return bool(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def build_schedulers(
    sched: dict, num_workers: int, max_batch_size: int, window_tokens: int,
    kv_capacity_tokens: int | None, prediction: PredictionService | None, cost_model: CostModel | None,
    max_context_tokens: int | None = None,
) -> list[Scheduler]:
    """One ``Scheduler`` per worker from a plain ``sched`` dict (keys ``SCHED_KEYS``).

    Raises:
        ValueError: an unknown key in ``sched`` (lists ``SCHED_KEYS``) or a bad value
            (raised by ``make_policy`` / ``Scheduler``, naming the field).
    """
    unknown = sorted(set(sched) - set(SCHED_KEYS))
    if unknown:
        raise ValueError(f"sched has unknown keys {unknown}; valid: {list(SCHED_KEYS)}")
    policy = make_policy(
        sched["policy"],
        aging_tokens_per_s=float(sched.get("aging_tokens_per_s", 0.0) or 0.0),
        promote_after_s=sched.get("promote_after_s"),
        promote_by=sched.get("promote_by") or "wait",
        **dict(sched.get("policy_params") or {}),
    )
    overhead = cost_model.scheduling_overhead_s if cost_model is not None else 0.0
    extra = {"max_context_tokens": max_context_tokens} if max_context_tokens is not None else {}
    return [
        Scheduler(
            w, policy, max_batch_size=max_batch_size, window_tokens=window_tokens,
            mode=sched.get("mode", "windowed"), preemption=bool(sched.get("preemption", True)),
            preemption_margin=float(sched.get("preemption_margin", 0.0) or 0.0),
            kv_capacity_tokens=kv_capacity_tokens, predictor=prediction,
            scheduling_overhead_s=overhead, **extra,
        )
        for w in range(num_workers)
    ]


def build_prediction_service(cfg, cost_model: CostModel | None, latency_source: str | None = None
                             ) -> PredictionService | None:
    """``cfg.predictor.runtime`` instantiated and wrapped (None when ``cfg.predictor`` is null).

    ``latency_source`` overrides ``cfg.predictor_latency`` (real-time drivers use 'measured').
    """
    import hydra.utils

    if cfg.get("predictor") is None:
        return None
    predictor = hydra.utils.instantiate(cfg.predictor.runtime)
    log.info("predictor: %s (%s)", predictor.name, type(predictor).__name__)
    return PredictionService(
        predictor, cost_model, latency_source=latency_source or cfg.get("predictor_latency", "cost_model"),
        window_tokens=int(cfg.window_tokens),
    )


def live_prediction(prediction: PredictionService | None, cost_model: CostModel | None,
                    window_tokens: int) -> PredictionService | None:
    """The same predictor with measured latency (wall-clock drivers: real time is charged)."""
    if prediction is None:
        return None
    return PredictionService(prediction.predictor, cost_model, latency_source="measured",
                             window_tokens=window_tokens)


SIM_PATHS: tuple[str, ...] = ("auto", "fast", "general")


def simulate(
    table: RequestTable, sched: dict, *, num_workers: int, max_batch_size: int, window_tokens: int,
    cost_model: CostModel, load_balancer, prediction: PredictionService | None,
    kv_capacity_tokens: int | None = None, record_intervals: bool = True, reveal_text: bool = False,
    max_context_tokens: int | None = None, path: str = "auto",
):
    """Simulate ``table`` under one scheduling variant; returns a ``SimResult``.

    ``max_context_tokens``: the simulated model's context length (the scheduler's context rule).
    ``path`` (``worker.sim_path``): 'auto' runs ``elis.serving.fastsim.FastSimulator`` when it
    supports the configuration and the general ``Simulator`` otherwise, logging which and why;
    'fast' raises if unsupported; 'general' always runs the general path. Both paths give
    identical records and counters (``tests/serving/test_fastsim_equivalence.py``).

    Raises:
        ValueError: an unknown ``path`` (lists the valid ones); 'fast' on an unsupported configuration.
    """
    if path not in SIM_PATHS:
        raise ValueError(f"worker.sim_path={path!r} is not one of {list(SIM_PATHS)}")
    schedulers = build_schedulers(
        sched, num_workers, max_batch_size, window_tokens, kv_capacity_tokens, prediction, cost_model,
        max_context_tokens,
    )
    from elis.serving.fastsim import FastSimulator, unsupported_reason
    from elis.serving.metrics import RequestRecorder
    from elis.serving.simulator import Simulator

    recorder = RequestRecorder(record_intervals=record_intervals, capacity=len(table))
    reason = "sim_path=general" if path == "general" else unsupported_reason(schedulers, load_balancer, prediction)
    if reason is None:
        log.info("simulation path: fast (elis.serving.fastsim)")
        sim = FastSimulator(table, schedulers, cost_model, load_balancer, prediction, recorder, reveal_text)
    elif path == "fast":
        raise ValueError(f"worker.sim_path='fast' does not support {reason}; use 'auto' or 'general'")
    else:
        log.info("simulation path: general (fast path not used: %s)", reason)
        sim = Simulator(table, schedulers, cost_model, load_balancer, prediction, recorder, reveal_text=reveal_text)
    return sim.run()


# ---------------------------------------------------------------------- workers
def build_worker(worker_cfg, worker_id: int, shared=None):
    """One real worker for ``worker_cfg.kind``; returns ``(worker, shared)``.

    ``shared`` carries what workers of one process share (the HF model and tokenizer).

    Raises:
        ValueError: an unknown ``worker.kind`` (lists the valid ones).
    """
    kind = worker_cfg.get("kind")
    if kind == "remote":
        from elis.serving.workers.remote import build_remote_worker

        return build_remote_worker(worker_cfg, worker_id, shared)
    if kind == "hf":
        from elis.serving.workers.hf import build_hf_worker

        return build_hf_worker(worker_cfg, worker_id, shared)
    raise ValueError(f"worker.kind={kind!r} has no real-time backend; valid: {list(REAL_WORKER_KINDS)}")


def worker_tokenizer(worker) -> Any:
    """The tokenizer a real worker encodes prompts with."""
    eng = getattr(worker, "engine", None)
    if eng is not None and getattr(eng, "tokenizer", None) is not None:
        return eng.tokenizer
    return getattr(worker, "tokenizer", None)


_HANDLES: dict[tuple, list] = {}


def _pool_key(cfg) -> tuple:
    from omegaconf import OmegaConf

    cluster = cfg.get("cluster") or {}
    return (json.dumps(OmegaConf.to_container(cfg.worker, resolve=True), sort_keys=True),
            json.dumps(OmegaConf.to_container(cluster, resolve=True) if cluster else {}, sort_keys=True),
            int(cfg.num_workers))


def build_handles(cfg) -> tuple[list, Any]:
    """Worker handles for ``cfg.worker`` × ``cfg.num_workers`` (reused across the variants
    of one run) and the tokenizer used for prompts.

    Raises:
        ValueError: unknown ``worker.kind`` or ``cluster.kind`` (lists the valid ones).
    """
    from elis.serving.wallclock import LocalWorkerHandle

    key = _pool_key(cfg)
    if key in _HANDLES:
        handles, tok = _HANDLES[key]
        for h in handles:
            h.reset()
        if not any(getattr(h, "dead", False) for h in handles):
            return handles, tok
        del _HANDLES[key]  # an actor died in an earlier variant: start fresh ones
    kind = cfg.worker.kind
    cluster = cfg.get("cluster") or {}
    ckind = cluster.get("kind", "local") if cluster else "local"
    if kind not in REAL_WORKER_KINDS:
        raise ValueError(f"worker.kind={kind!r} has no wall-clock backend; valid: ['sim', 'hf', 'remote']")
    if ckind == "ray":
        from elis.serving.workers.ray_worker import build_ray_handles

        handles, tok = build_ray_handles(cfg)
    elif ckind == "local":
        handles, tok, shared = [], None, None
        for w in range(int(cfg.num_workers)):
            worker, shared = build_worker(cfg.worker, w, shared)
            tok = worker_tokenizer(worker)
            handles.append(LocalWorkerHandle(worker))
    else:
        raise ValueError(f"cluster.kind={ckind!r} is not one of ['local', 'ray']")
    _HANDLES[key] = (handles, tok)
    return handles, tok


def context_limit(handles: list) -> int | None:
    """The smallest ``max_context_tokens`` over the workers (None when none declares one)."""
    limits = [h.max_context_tokens for h in handles if getattr(h, "max_context_tokens", None)]
    return min(limits) if limits else None


# ---------------------------------------------------------------------- runtime
@dataclass(slots=True)
class Runtime:
    """Everything a real-time driver needs (built by ``build_runtime``).

    Attributes:
        schedulers: one per worker (index = worker id).
        load_balancer: assigns arrivals to workers.
        handles: one worker handle per scheduler (``submit(batch, start_s) -> Future``).
        prediction: the live ``PredictionService`` (measured latency) or None.
        tokenizer: the served model's tokenizer (prompt encoding, text decoding) or None.
        max_context_tokens: the served model's context length (prompt + output), or None.
    """

    schedulers: list[Scheduler]
    load_balancer: Any
    handles: list
    prediction: PredictionService | None
    tokenizer: Any
    max_context_tokens: int | None


def build_runtime(cfg, sched: dict, prediction: PredictionService | None,
                  cost_model: CostModel | None) -> Runtime:
    """Handles, schedulers (with the workers' context limit) and balancer for one variant."""
    import hydra.utils

    handles, tok = build_handles(cfg)
    limit = context_limit(handles)
    configured = cfg.worker.get("max_context_tokens")
    if configured is not None:
        limit = int(configured) if limit is None else min(limit, int(configured))
    live = live_prediction(prediction, cost_model, int(cfg.window_tokens))
    schedulers = build_schedulers(sched, int(cfg.num_workers), int(cfg.max_batch_size), int(cfg.window_tokens),
                                  cfg.worker.get("kv_capacity_tokens"), live, cost_model, limit)
    lb = hydra.utils.instantiate(cfg.load_balancer)
    log.info("runtime: %d x %s worker(s), %s/%s, load balancer %s, context %s tokens", len(handles),
             cfg.worker.kind, sched["policy"], sched.get("mode", "windowed"), type(lb).__name__, limit)
    return Runtime(schedulers, lb, handles, live, tok, limit)
