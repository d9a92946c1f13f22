"""Scheduling policies: the ORDER in which waiting requests are served, and nothing else.

Ordering rule (stated once, used everywhere): a request ``r`` goes before ``s`` iff

    (tier(r), key(r), r.arrival_time_s, r.request_id) < (tier(s), key(s), s.arrival_time_s, s.request_id)

— lower key first, ties broken by earlier arrival, then by request id (string order). The
tuple is computed ONCE when the request enters the buffer (``sort_key``), never inside a
comparator. ``tier`` is 0 for a request promoted by ``promote_after_s`` and 1 otherwise
(promotion is applied by the scheduler's buffer, see below).

Keys (``key_tokens``; lower = served first):
    fcfs         arrival_time_s (seconds).
    sjf          the FIRST prediction of the response length, never updated (static SJF).
    isrtf        the LATEST predicted remaining tokens, re-predicted every window (the ELIS
                 paper, arXiv 2505.09142, §4: iterative shortest-remaining-time-first).
    srtf_oracle  the TRUE remaining tokens (simulation only): the upper bound of the family.
Predicted keys are clipped to ``[0, max_tokens − generated]`` (a request cannot produce more;
sjf's static key to ``[0, max_tokens]``).

Aging (optional, ``aging_tokens_per_s = α > 0``): the effective key at time ``t`` is
``key − α·(t − arrival_time_s)``. The shift ``α·t`` is the same for every request compared at
one decision, so the ORDER equals that of ``key + α·arrival_time_s``, a constant while the
request waits: that is what ``sort_key`` stores (exact, clock-free). Bound: keys lie in
``[0, K]`` with ``K = max_tokens``, so a request arriving at ``a`` is ordered ahead of every
request arriving after ``a + K/α``; its wait is therefore bounded by the service of the
finitely many requests that arrived before ``a + K/α`` (no starvation under finite load).
For fcfs aging changes nothing (the key is already the arrival time).

Promotion (optional, ``promote_after_s = P``): a request that has waited ``P`` seconds
continuously in the buffer is promoted to tier 0 and served before all tier-1 requests, in
order of its enqueue time: once promoted, it is selected at the first decision at which
fewer than ``max_batch_size`` promoted requests precede it.
"""

from __future__ import annotations

from dataclasses import dataclass

from elis.serving.request import Request

POLICY_NAMES: tuple[str, ...] = ("fcfs", "sjf", "isrtf", "srtf_oracle")


@dataclass(slots=True)
class SchedulingPolicy:
    """One of ``POLICY_NAMES`` with optional aging and promotion.

    Args:
        name: 'fcfs' | 'sjf' | 'isrtf' | 'srtf_oracle'.
        aging_tokens_per_s: α >= 0, key units per second of waiting (0 = off).
        promote_after_s: promote after this continuous wait (seconds), or None (off).

    Raises:
        ValueError: unknown name (lists valid ones), negative α, non-positive promote_after_s.
    """

    name: str
    aging_tokens_per_s: float = 0.0
    promote_after_s: float | None = None

    def __post_init__(self) -> None:
        if self.name not in POLICY_NAMES:
            raise ValueError(f"sched.policy={self.name!r} is not one of {list(POLICY_NAMES)}")
        if not self.aging_tokens_per_s >= 0:
            raise ValueError(f"sched.aging_tokens_per_s must be >= 0, got {self.aging_tokens_per_s!r}")
        if self.promote_after_s is not None and not self.promote_after_s > 0:
            raise ValueError(f"sched.promote_after_s must be > 0 or null, got {self.promote_after_s!r}")

    @property
    def uses_predictions(self) -> bool:
        """Whether keys need the length predictor (sjf, isrtf)."""
        return self.name in ("sjf", "isrtf")

    @property
    def repredicts(self) -> bool:
        """Whether keys change at window boundaries (isrtf re-predicts; srtf_oracle's truth shrinks)."""
        return self.name in ("isrtf", "srtf_oracle")

    def key_tokens(self, request: Request) -> float:
        """The policy's raw key for ``request`` (see module docstring), without aging.

        Raises:
            ValueError: a prediction-based key without a prediction, or srtf_oracle without
                the true length.
        """
        name = self.name
        if name == "fcfs":
            return request.arrival_time_s
        cap = request.max_tokens - request.num_generated_tokens
        if name == "srtf_oracle":
            rem = request.true_remaining_tokens
            if rem is None:
                raise ValueError(
                    f"srtf_oracle needs the true length; request {request.request_id!r} has "
                    "true_num_output_tokens=None (use it only in simulation)"
                )
            return float(rem)
        value = request.first_predicted_tokens if name == "sjf" else request.predicted_remaining_tokens
        if value is None:
            raise ValueError(f"{name}: request {request.request_id!r} has no prediction yet")
        if name == "sjf":  # the first prediction is of the whole response: never updated
            return float(min(max(value, 0.0), request.max_tokens))
        return float(min(max(value, 0.0), cap))

    def sort_key(self, request: Request) -> tuple[float, float, str]:
        """``(key + α·arrival_time_s, arrival_time_s, request_id)``: the order while waiting."""
        k = self.key_tokens(request)
        if self.aging_tokens_per_s and self.name != "fcfs":
            k += self.aging_tokens_per_s * request.arrival_time_s
        return (k, request.arrival_time_s, request.request_id)

    def effective_key(self, request: Request, now_s: float) -> float:
        """``key − α·(now − arrival)``: the documented aged key at ``now_s`` (for reports/tests)."""
        k = self.key_tokens(request)
        if self.aging_tokens_per_s and self.name != "fcfs":
            k -= self.aging_tokens_per_s * (now_s - request.arrival_time_s)
        return k
