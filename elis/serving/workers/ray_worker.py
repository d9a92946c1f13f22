"""Workers as Ray actors (``cluster=ray``): one ``HFWorker`` per actor, driven by the
wall-clock runner (``elis.serving.wallclock``) in the driver, which keeps the frontend
(load balancer + per-worker schedulers). ``ray`` is imported lazily (extra ``[ray]``).

Each window is one actor call ``execute(batch, start_s)``; its ``ObjectRef.future()`` is a
``concurrent.futures.Future``, so the runner treats local threads and actors alike. Token
times are ``start_s`` (driver clock) plus the duration measured inside the actor, so the
actor's clock never has to agree with the driver's. A killed actor makes the future raise
``ray.exceptions.RayActorError``; the runner then requeues that worker's requests on live
workers with their confirmed tokens (see ``elis.serving.wallclock``).

Local: ``python run_experiment.py worker=hf cluster=ray num_workers=2`` starts Ray in-process
(``ray.init()``), one CPU per actor. Existing cluster: ``cluster.address=auto`` (on a head
node) or ``cluster.address=ray://<head>:10001`` (Ray client).

Kubernetes with KubeRay (the ELIS paper deployed on Kubernetes)::

    helm repo add kuberay https://ray-project.github.io/kuberay-helm/
    helm install kuberay-operator kuberay/kuberay-operator
    # a RayCluster whose head and worker pods run an image with this project installed
    # (pip install ".[ray]"), workers sized for one model each (e.g. nvidia.com/gpu: 1):
    kubectl apply -f raycluster.yaml
    kubectl port-forward svc/<cluster>-head-svc 10001:10001 &
    python run_experiment.py worker=hf cluster=ray cluster.address=ray://127.0.0.1:10001 \
        num_workers=4 cluster.num_gpus_per_worker=1 worker.model.device=cuda \
        worker.model.gguf_package=null worker.model.gguf_file=null
    # or submit the driver into the cluster: ray job submit --address http://127.0.0.1:8265 \
    #   --working-dir . -- python run_experiment.py worker=hf cluster=ray cluster.address=auto

(Not tested on Kubernetes here; the local Ray path and the actor-kill fault test are.)
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


class _ActorImpl:
    """The actor's body (wrapped with ``ray.remote`` in ``actor_class``)."""

    def __init__(self, worker_cfg: dict, worker_id: int) -> None:
        from elis.serving.runtime import build_worker

        logging.basicConfig(level=logging.WARNING)
        self.worker, _ = build_worker(worker_cfg, worker_id)

    def execute(self, batch, start_s: float):
        return self.worker.execute(batch, start_s)

    def set_sampling_streams(self, streams: dict[str, str]) -> None:
        self.worker.sampling_streams = dict(streams)

    def cancel(self, request_id: str, reason: str) -> None:
        # runs concurrently with `execute` (the actor has max_concurrency=2)
        cancel = getattr(self.worker, "cancel", None)
        if cancel is not None:
            cancel(request_id, reason)

    def max_context_tokens(self) -> int | None:
        return getattr(self.worker, "max_context_tokens", None)

    def reset(self) -> None:
        eng = getattr(self.worker, "engine", None)
        if eng is not None:
            eng._kv.clear()

    def stats(self) -> dict:
        st = getattr(self.worker, "stats", None)
        return {k: getattr(st, k) for k in st.__slots__} if st is not None else {}

    def pid(self) -> int:
        import os

        return os.getpid()


_ACTOR_CLS = None


def actor_class():
    """``ray.remote(_ActorImpl)`` (created once, lazily)."""
    global _ACTOR_CLS
    if _ACTOR_CLS is None:
        import ray

        _ACTOR_CLS = ray.remote(_ActorImpl)
    return _ACTOR_CLS


class RayWorkerHandle:
    """Driver-side handle of one worker actor (same interface as ``LocalWorkerHandle``)."""

    def __init__(self, actor: Any, worker_id: int) -> None:
        self.actor = actor
        self.worker_id = worker_id
        self.dead = False

    def submit(self, batch, start_s: float):
        return self.actor.execute.remote(batch, start_s).future()

    def kill(self) -> None:
        import ray

        ray.kill(self.actor, no_restart=True)

    def cancel(self, request_id: str, reason: str = "aborted") -> None:
        """Abort ``request_id``'s item of the window the actor runs now (fire and forget)."""
        if not self.dead:
            self.actor.cancel.remote(request_id, reason)

    @property
    def max_context_tokens(self) -> int | None:
        import ray

        if not hasattr(self, "_max_ctx"):
            self._max_ctx = None if self.dead else ray.get(self.actor.max_context_tokens.remote(), timeout=60)
        return self._max_ctx

    def set_sampling_streams(self, streams: dict[str, str]) -> None:
        import ray

        if not self.dead:
            try:
                ray.get(self.actor.set_sampling_streams.remote(streams))
            except ray.exceptions.RayActorError:
                self.dead = True

    def reset(self) -> None:
        import ray

        if not self.dead:
            try:
                ray.get(self.actor.reset.remote())
            except ray.exceptions.RayActorError:
                self.dead = True

    def stats(self) -> dict:
        import ray

        try:
            return ray.get(self.actor.stats.remote(), timeout=30)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            self.dead = True
            return {"dead": True}


def use_process_token() -> bool:
    """Give a new local Ray cluster an in-memory auth token (``RAY_AUTH_TOKEN``, inherited by
    its processes) so Ray does not write one to ``~/.ray/auth_token``, outside the project.
    A token the user configured (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``, the default
    file, or ``RAY_AUTH_MODE``) is left alone. Returns True when it set one."""
    import os
    import uuid
    from pathlib import Path

    configured = ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE")
    if any(k in os.environ for k in configured) or (Path.home() / ".ray" / "auth_token").exists():
        return False
    os.environ["RAY_AUTH_TOKEN"] = uuid.uuid4().hex
    return True


def build_ray_handles(cfg) -> tuple[list[RayWorkerHandle], Any]:
    """Start ``cfg.num_workers`` actors on Ray (``ray.init(address=cluster.address)``).

    The driver loads the model once first: it dequantises/caches it before the actors read
    the cache, and keeps the tokenizer for prompt encoding.
    """
    import ray
    from omegaconf import OmegaConf

    from elis.serving.runtime import build_worker

    cluster = cfg.cluster
    if not ray.is_initialized():
        if not cluster.get("address"):
            use_process_token()
        kw: dict = {"include_dashboard": False, "log_to_driver": False}
        if cluster.get("address"):
            kw["address"] = cluster.address
        else:
            kw["num_cpus"] = max(int(cfg.num_workers) * int(cluster.get("num_cpus_per_worker", 1)), 1)
            kw["object_store_memory"] = 256 * 1024**2
        ray.init(**kw)
        log.info("ray: %s", ray.cluster_resources())
    worker_cfg = OmegaConf.to_container(cfg.worker, resolve=True)
    local, _ = build_worker(worker_cfg, -1)
    tok = local.engine.tokenizer
    del local
    cls = actor_class().options(num_cpus=float(cluster.get("num_cpus_per_worker", 1)),
                                num_gpus=float(cluster.get("num_gpus_per_worker", 0)), max_restarts=0,
                                # a second thread serves `cancel` while `execute` runs
                                max_concurrency=2)
    handles = [RayWorkerHandle(cls.remote(worker_cfg, w), w) for w in range(int(cfg.num_workers))]
    ray.get([h.actor.pid.remote() for h in handles])  # wait until every actor has loaded its model
    return handles, tok
