"""How well a predictor ranks the requests that wait TOGETHER (issue 9 item 5).

A scheduler only ever compares the requests present at one decision, so the quality that
matters is not R² over a test set but the rank agreement, at each decision, between the
predicted and the true remaining tokens of the requests competing there (the buffer plus the
running requests at a window boundary). ``RankingTracker.observe`` computes Kendall's τ-b on
one decision; the run reports the mean over decisions with at least two competing requests
and a defined τ (``kendall_tau_cowaiting_mean``, ``num_ranking_decisions``).

Cost bound: a decision with more than ``MAX_COMPETING`` (256) competing requests is NOT
observed, only counted (``num_ranking_decisions_skipped``): building the two vectors is O(n)
per decision, which made every decision of an overloaded run with 100k waiting requests cost
~190 ms (measured) although the scheduler's own selection stays ~0.2 ms. The size test comes
before any work, and both simulation paths apply it to the same count (buffer + contenders),
so they stay identical. τ is therefore the mean over decisions with at most 256 competitors;
a run whose queues grew beyond that reports how many decisions it left out.

τ-b (Kendall 1945): ``(C − D) / sqrt((n0 − n1)(n0 − n2))`` with ``n0 = n(n−1)/2`` pairs,
``n1``/``n2`` the pairs tied in the first/second variable; undefined (skipped) when either
variable is constant. Computed exactly in O(n²) (a plain loop for the usual small buffers,
numpy above ``SMALL_N``), and by scipy's O(n log n) ``kendalltau`` above ``LARGE_N`` (a long queue
made every decision quadratic); both simulation paths observe the same decisions.
"""

from __future__ import annotations

import math

import numpy as np


MAX_COMPETING = 256  # decisions with more competing requests are counted, not observed (cost bound)
SMALL_N = 32  # below this a plain loop beats numpy's per-call overhead (buffers are small)


def kendall_tau_b(x, y) -> float | None:
    """Kendall's τ-b of two equal-length sequences; None for n < 2 or a constant vector.

    Exact: the numerator and tie counts are integers, so the loop (n <= ``SMALL_N``) and the
    vectorised path give the identical float.
    """
    n = len(x)
    if n < 2:
        return None
    if n <= SMALL_N:
        return _tau_b_loop(x, y)
    if n > LARGE_N:
        return _tau_b_scipy(x, y)
    return _tau_b_numpy(x, y)


LARGE_N = 256  # above this the O(n²) pair matrix dominates a decision (54 ms at n = 1,000; 100k: 80 GB)


def _tau_b_scipy(x, y) -> float | None:
    """τ-b by ``scipy.stats.kendalltau`` (Knight's O(n log n) merge sort), for long queues.

    The same statistic as the pairwise forms up to float rounding (~1e-15; tested); the same
    input always gives the same float, and both simulation paths call this one function.
    """
    from scipy.stats import kendalltau

    tau = kendalltau(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64), variant="b").statistic
    return None if not math.isfinite(tau) else float(tau)


def _tau_b_loop(x, y) -> float | None:
    n = len(x)
    s = tx = ty = 0
    for i in range(n - 1):
        xi, yi = x[i], y[i]
        for j in range(i + 1, n):
            dx = xi - x[j]
            dy = yi - y[j]
            if dx == 0:
                tx += 1
            if dy == 0:
                ty += 1
            if dx and dy:
                s += 1 if (dx > 0) == (dy > 0) else -1
    n0 = n * (n - 1) // 2
    denom = math.sqrt((n0 - tx) * (n0 - ty))
    return None if denom == 0 else s / denom


def _tau_b_numpy(x, y) -> float | None:
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n = x.size
    if n < 2:
        return None
    iu = np.triu_indices(n, 1)
    sx = np.sign(x[:, None] - x[None, :])[iu]
    sy = np.sign(y[:, None] - y[None, :])[iu]
    n0 = sx.size
    tx = n0 - np.count_nonzero(sx)
    ty = n0 - np.count_nonzero(sy)
    denom = math.sqrt((n0 - tx) * (n0 - ty))
    if denom == 0:
        return None
    return int(np.sum(sx * sy)) / denom


class RankingTracker:
    """Accumulates τ-b over scheduling decisions.

    Attributes:
        tau_sum: Σ τ over counted decisions; num_decisions: decisions counted.
    """

    __slots__ = ("tau_sum", "num_decisions", "num_skipped")

    def __init__(self) -> None:
        self.tau_sum = 0.0
        self.num_decisions = 0
        self.num_skipped = 0

    def admits(self, num_competing: int) -> bool:
        """Whether a decision with ``num_competing`` requests is observed (counts it if not)."""
        if num_competing > MAX_COMPETING:
            self.num_skipped += 1
            return False
        return num_competing >= 2

    def observe(self, predicted, true) -> None:
        """Add one decision's competing requests (predicted vs true remaining tokens)."""
        tau = kendall_tau_b(predicted, true)
        if tau is not None:
            self.tau_sum += tau
            self.num_decisions += 1

    @property
    def mean(self) -> float | None:
        """Mean τ over counted decisions (None when none was defined)."""
        return self.tau_sum / self.num_decisions if self.num_decisions else None


def ranking_counters(schedulers) -> dict:
    """``kendall_tau_cowaiting_mean`` (mean over every worker's counted decisions, None if none)
    and ``num_ranking_decisions``, from the schedulers' ``ranking`` trackers."""
    n = sum(s.ranking.num_decisions for s in schedulers)
    total = sum(s.ranking.tau_sum for s in schedulers)
    skipped = sum(s.ranking.num_skipped for s in schedulers)
    return {"kendall_tau_cowaiting_mean": total / n if n else None, "num_ranking_decisions": n,
            "num_ranking_decisions_skipped": skipped}
