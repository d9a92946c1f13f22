"""Load balancers: assign each arriving request to one worker (sticky for its whole life).

All four read a worker's load from its ``Scheduler`` (``num_outstanding`` and
``predicted_outstanding_tokens``). Ties ROTATE: the scan for the minimum starts one past the
previously chosen worker, so identical workers share load evenly (e.g. an idle cluster gets
requests 0, 1, 2, … in turn rather than all on worker 0).

- ``RoundRobin``: worker ``i mod n`` for the i-th request.
- ``LeastRequests``: fewest outstanding requests (waiting + running).
- ``LeastPredictedTokens``: least predicted outstanding tokens (the ELIS paper's greedy
  balancer, arXiv 2505.09142 §4: the sum over a worker's unfinished requests of the latest
  predicted remaining tokens minus the tokens generated since that prediction, floored at 0). Needs the request's step-0 prediction (``needs_prediction``).
- ``PowerOfTwo``: two distinct workers drawn at random (``make_rng(seed, "load_balancer")``),
  the one with fewer outstanding requests wins (Mitzenmacher, IEEE TPDS 2001).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from elis.rng import make_rng
from elis.serving.request import Request


class WorkerLoad(Protocol):
    num_outstanding: int
    predicted_outstanding_tokens: float


class LoadBalancer:
    """Base: ``select(request, loads) -> worker index``; subclasses define ``_load``."""

    needs_prediction: bool = False

    def __init__(self) -> None:
        self._next = 0

    def select(self, request: Request, loads: Sequence[WorkerLoad]) -> int:
        """Index of the worker for ``request``; ties rotate (module docstring).

        Raises:
            ValueError: if ``loads`` is empty.
        """
        n = len(loads)
        if n == 0:
            raise ValueError("load balancer: no workers")
        best, best_load = -1, None
        for j in range(n):
            w = (self._next + j) % n
            load = self._load(loads[w])
            if best_load is None or load < best_load:
                best, best_load = w, load
        self._next = (best + 1) % n
        return best

    def _load(self, load: WorkerLoad) -> float:
        raise NotImplementedError


class RoundRobin(LoadBalancer):
    def select(self, request: Request, loads: Sequence[WorkerLoad]) -> int:
        if not loads:
            raise ValueError("load balancer: no workers")
        w = self._next % len(loads)
        self._next = w + 1
        return w


class LeastRequests(LoadBalancer):
    def _load(self, load: WorkerLoad) -> float:
        return load.num_outstanding


class LeastPredictedTokens(LoadBalancer):
    needs_prediction = True

    def _load(self, load: WorkerLoad) -> float:
        return load.predicted_outstanding_tokens


class PowerOfTwo(LoadBalancer):
    """Two distinct random candidates; fewer outstanding requests wins, ties alternate."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self._rng = make_rng(seed, "load_balancer")
        self._flip = 0

    def select(self, request: Request, loads: Sequence[WorkerLoad]) -> int:
        n = len(loads)
        if n == 0:
            raise ValueError("load balancer: no workers")
        if n == 1:
            return 0
        a, b = (int(x) for x in self._rng.choice(n, size=2, replace=False))
        la, lb = loads[a].num_outstanding, loads[b].num_outstanding
        if la != lb:
            return a if la < lb else b
        self._flip ^= 1
        return (a, b)[self._flip]
