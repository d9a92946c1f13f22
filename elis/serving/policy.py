"""Scheduling policies: the ORDER in which waiting requests are served, and nothing else.

Ordering rule (stated once, used everywhere): a request ``r`` goes before ``s`` iff

    (tier(r), key(r), r.arrival_time_s, r.arrival_seq) < (tier(s), key(s), s.arrival_time_s, s.arrival_seq)

— lower key first, ties broken by earlier arrival, then by the integer submission sequence
``arrival_seq`` (never by the request id's string order: ``r10`` must not overtake ``r2``).
The tuple is computed ONCE when the request enters the buffer (``sort_key``), never inside a
comparator. ``tier`` is 0 for a request promoted by ``promote_after_s`` and 1 otherwise
(promotion is applied by the scheduler's buffer, see below).

One class per policy (a new policy = one subclass here + one ``conf/sched/<name>.yaml``); the
class declares its behaviour, which the scheduler reads and never tests by name:
``uses_predictions`` (needs the length predictor), ``repredicts`` (keys change at window
boundaries, so running requests compete again there), ``quantile_levels`` (needs the
predictor's predictive distribution). ``SchedulingPolicy("isrtf", …)`` or
``make_policy("isrtf", …)`` builds the subclass whose ``name`` matches.

Keys (``key_tokens``; lower = served first):
    fcfs         arrival_time_s (seconds).
    sjf          the FIRST prediction of the response length, never updated (static SJF).
    isrtf        the LATEST predicted remaining tokens, re-predicted every window (the ELIS
                 paper, arXiv 2505.09142, §4: iterative shortest-remaining-time-first).
    srtf_oracle  the TRUE remaining tokens (simulation only): the upper bound of the family.
    las          tokens generated so far (least attained service, foreground-background;
                 Kleinrock 1976 §4.6; Rai, Urvoy-Keller & Biersack, SIGMETRICS 2003). No predictor.
    mlfq         the queue level of FastServe's skip-join multi-level feedback queue (Wu et
                 al., arXiv 2305.05920 §4.1); FCFS within a level. No predictor.
    gittins      the inverse Gittins index of the predicted remaining-length DISTRIBUTION
                 (Gittins 1989; Aalto, Ayesta & Righter, Queueing Syst. 2009; SOAP, Scully
                 et al., SIGMETRICS 2018), re-computed at every boundary.
Predicted keys are clipped to ``[0, max_tokens − generated]`` (a request cannot produce more;
sjf's static key to ``[0, max_tokens]``).

Aging (optional, ``aging_tokens_per_s = α > 0``): the effective key at time ``t`` is
``key − α·(t − arrival_time_s)``. The shift ``α·t`` is the same for every request compared at
one decision, so the ORDER equals that of ``key + α·arrival_time_s``, a constant while the
request waits: that is what ``sort_key`` stores (exact, clock-free). Bound: keys lie in
``[0, K]`` with ``K = max_tokens``, so a request arriving at ``a`` is ordered ahead of every
request arriving after ``a + K/α``; its wait is therefore bounded by the service of the
finitely many requests that arrived before ``a + K/α`` (no starvation under finite load).
For fcfs aging changes nothing (the key is already the arrival time). For mlfq the key is a
level (0..L−1), so α is in levels per second.

Promotion (optional, ``promote_after_s = P``): with ``promote_by='wait'`` (default) a request
that has waited ``P`` seconds continuously in the buffer is promoted to tier 0 and served
before all tier-1 requests, in order of its enqueue time: once promoted, it is selected at the
first decision at which fewer than ``max_batch_size`` promoted requests precede it. With
``promote_by='age'`` a request whose time since ARRIVAL exceeds ``P`` is tier 0, running or
waiting, and tier 0 is served oldest first (FCFS among the old): a running old request keeps
its slot against every younger one. This bounds the tail like FCFS for requests that reach
age ``P`` while the key orders everything younger (the tail setting; trade-off measured in the README, "Tail vs mean").
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from elis.serving.request import Request


class SchedulingPolicy:
    """Base class of every policy: aging, promotion and the tie rule (module docstring).

    ``SchedulingPolicy(name, …)`` called on the base class builds the subclass named ``name``.

    Args:
        name: a policy name (``POLICY_NAMES``); optional when the subclass is called directly.
        aging_tokens_per_s: α >= 0, key units per second of waiting (0 = off).
        promote_after_s: promotion threshold (seconds), or None (off).
        promote_by: 'wait' (continuous time in the buffer) | 'age' (time since arrival).

    Raises:
        ValueError: unknown name (lists valid ones), negative α, non-positive promote_after_s,
            or a subclass-specific parameter out of range (naming it).
    """

    name: ClassVar[str] = ""
    uses_predictions: ClassVar[bool] = False
    repredicts: ClassVar[bool] = False
    quantile_levels: tuple[float, ...] | None = None

    def __new__(cls, name: str | None = None, *args: Any, **kwargs: Any):
        if cls is SchedulingPolicy:
            cls = policy_class(name)  # noqa: PLW0642 (dispatch to the named subclass)
        return object.__new__(cls)

    def __init__(
        self, name: str | None = None, aging_tokens_per_s: float = 0.0, promote_after_s: float | None = None,
        promote_by: str = "wait",
    ) -> None:
        if name is not None and name != self.name:
            raise ValueError(f"sched.policy={name!r} given to {type(self).__name__} (policy {self.name!r})")
        if not aging_tokens_per_s >= 0:
            raise ValueError(f"sched.aging_tokens_per_s must be >= 0, got {aging_tokens_per_s!r}")
        if promote_after_s is not None and not promote_after_s > 0:
            raise ValueError(f"sched.promote_after_s must be > 0 or null, got {promote_after_s!r}")
        if promote_by not in ("wait", "age"):
            raise ValueError(f"sched.promote_by={promote_by!r} is not one of ['wait', 'age']")
        self.aging_tokens_per_s = float(aging_tokens_per_s)
        self.promote_after_s = promote_after_s
        self.promote_by = promote_by

    def __repr__(self) -> str:
        return f"{type(self).__name__}(aging_tokens_per_s={self.aging_tokens_per_s}, promote_after_s={self.promote_after_s})"

    # ------------------------------------------------------------------ contract
    def validate_predictor(self, predictor: Any) -> None:
        """Refuse, at construction, a predictor this policy cannot use (naming it).

        Raises:
            ValueError: a prediction policy without a predictor.
        """
        if self.uses_predictions and predictor is None:
            raise ValueError(f"policy {self.name!r} needs a predictor; got predictor=None")

    def key_tokens(self, request: Request) -> float:
        """The policy's raw key for ``request`` (see module docstring), without aging."""
        raise NotImplementedError

    def sort_key(self, request: Request) -> tuple[float, float, int]:
        """``(key + α·arrival_time_s, arrival_time_s, arrival_seq)``: the order while waiting."""
        k = self.key_tokens(request)
        if self.aging_tokens_per_s:
            k += self.aging_tokens_per_s * request.arrival_time_s
        return (k, request.arrival_time_s, request.arrival_seq)

    def effective_key(self, request: Request, now_s: float) -> float:
        """``key − α·(now − arrival)``: the documented aged key at ``now_s`` (for reports/tests)."""
        k = self.key_tokens(request)
        if self.aging_tokens_per_s:
            k -= self.aging_tokens_per_s * (now_s - request.arrival_time_s)
        return k


def _remaining_cap(request: Request) -> int:
    return request.max_tokens - request.num_generated_tokens


def _prediction(request: Request, value: float | None, who: str) -> float:
    if value is None:
        raise ValueError(f"{who}: request {request.request_id!r} has no prediction yet")
    return float(value)


class FCFS(SchedulingPolicy):
    """First come, first served: key = arrival time (aging cannot change the order)."""

    name = "fcfs"

    def key_tokens(self, request: Request) -> float:
        return request.arrival_time_s

    def sort_key(self, request: Request) -> tuple[float, float, int]:
        return (request.arrival_time_s, request.arrival_time_s, request.arrival_seq)

    def effective_key(self, request: Request, now_s: float) -> float:
        return request.arrival_time_s


class SJF(SchedulingPolicy):
    """Static shortest-job-first: the FIRST predicted length, clipped to [0, max_tokens]."""

    name = "sjf"
    uses_predictions = True

    def key_tokens(self, request: Request) -> float:
        v = _prediction(request, request.first_predicted_tokens, self.name)
        return float(min(max(v, 0.0), request.max_tokens))


class ISRTF(SchedulingPolicy):
    """Iterative SRTF (ELIS): the LATEST predicted remaining tokens, clipped to the cap."""

    name = "isrtf"
    uses_predictions = True
    repredicts = True

    def key_tokens(self, request: Request) -> float:
        v = _prediction(request, request.predicted_remaining_tokens, self.name)
        return float(min(max(v, 0.0), _remaining_cap(request)))


class SRTFOracle(SchedulingPolicy):
    """SRTF on the TRUE remaining tokens (simulation only)."""

    name = "srtf_oracle"
    repredicts = True

    def key_tokens(self, request: Request) -> float:
        rem = request.true_remaining_tokens
        if rem is None:
            raise ValueError(
                f"srtf_oracle needs the true length; request {request.request_id!r} has "
                "true_num_output_tokens=None (use it only in simulation)"
            )
        return float(rem)


class LAS(SchedulingPolicy):
    """Least attained service: key = tokens generated so far, compared at window boundaries.

    Needs no predictor. Optimal for mean response time among blind policies when the size
    distribution has a decreasing hazard rate (Righter & Shanthikumar 1989); with the increasing
    hazard of a bounded length distribution it can be worse than FCFS (a long request that has
    run is overtaken by every newcomer).
    """

    name = "las"
    repredicts = True

    def key_tokens(self, request: Request) -> float:
        return float(request.num_generated_tokens)


class MLFQ(SchedulingPolicy):
    """FastServe's skip-join multi-level feedback queue (Wu et al., arXiv 2305.05920 §4.1).

    Levels ``0..L−1`` (0 = highest priority) with token quanta ``q_i = base · ratio^i``
    (FastServe doubles the quantum per level). Skip-join: a request JOINS at the highest level
    whose quantum covers its first iteration, whose cost in decode-token equivalents is
    ``1 + prompt_token_weight · num_prompt_tokens`` (``prompt_token_weight`` ≈ prefill seconds
    per prompt token / decode-step seconds: about 0.007 on the A100/Llama-2-13B profile).
    It is DEMOTED one level each time it has generated its current level's quantum of tokens
    there (its level is a pure function of prompt length and tokens generated, evaluated at
    window boundaries); the last level never demotes. Within a level, FCFS (the tie rule).
    Starvation: FastServe promotes long-waiting jobs; here use ``promote_after_s``.

    Args:
        num_levels: L >= 1.
        base_quantum_tokens: q_0 > 0 (tokens).
        quantum_ratio: >= 1.
        prompt_token_weight: >= 0 (decode-token equivalents per prompt token).

    Raises:
        ValueError: naming the parameter and its value.
    """

    name = "mlfq"
    repredicts = True

    def __init__(
        self, name: str | None = None, aging_tokens_per_s: float = 0.0, promote_after_s: float | None = None,
        promote_by: str = "wait", *, num_levels: int = 6, base_quantum_tokens: float = 50.0, quantum_ratio: float = 2.0,
        prompt_token_weight: float = 0.007,
    ) -> None:
        super().__init__(name, aging_tokens_per_s, promote_after_s, promote_by)
        for field_name, v, ok, rule in (
            ("num_levels", num_levels, isinstance(num_levels, int) and num_levels >= 1, "an integer >= 1"),
            ("base_quantum_tokens", base_quantum_tokens, base_quantum_tokens > 0, "> 0"),
            ("quantum_ratio", quantum_ratio, quantum_ratio >= 1, ">= 1"),
            ("prompt_token_weight", prompt_token_weight, prompt_token_weight >= 0, ">= 0"),
        ):
            if not ok:
                raise ValueError(f"sched.policy_params.{field_name} must be {rule}, got {v!r}")
        self.quanta_tokens = [float(base_quantum_tokens) * quantum_ratio**i for i in range(num_levels)]
        self.prompt_token_weight = float(prompt_token_weight)

    def initial_level(self, num_prompt_tokens: int) -> int:
        """The highest level whose quantum covers the first iteration (skip-join)."""
        first = 1.0 + self.prompt_token_weight * num_prompt_tokens
        for i, q in enumerate(self.quanta_tokens):
            if q >= first:
                return i
        return len(self.quanta_tokens) - 1

    def level(self, num_prompt_tokens: int, num_generated_tokens: int) -> int:
        """Level after ``num_generated_tokens``: demoted once per quantum used at each level."""
        lvl = self.initial_level(num_prompt_tokens)
        used = num_generated_tokens
        last = len(self.quanta_tokens) - 1
        while lvl < last and used >= self.quanta_tokens[lvl]:
            used -= self.quanta_tokens[lvl]
            lvl += 1
        return lvl

    def key_tokens(self, request: Request) -> float:
        return float(self.level(request.num_prompt_tokens, request.num_generated_tokens))


def quantile_weights(levels: np.ndarray) -> np.ndarray:
    """Probability mass given to each quantile: the midpoints between adjacent levels (and 0, 1).

    For ``levels = (j − 0.5)/Q`` every weight is ``1/Q``. Shape (Q,), sums to 1.
    """
    lv = np.asarray(levels, dtype=np.float64)
    edges = np.concatenate([[0.0], (lv[1:] + lv[:-1]) / 2.0, [1.0]])
    return np.diff(edges)


def gittins_key(quantiles: np.ndarray, weights: np.ndarray) -> float:
    """Inverse Gittins index (tokens) of a remaining length R given as weighted atoms.

    ``R`` takes value ``quantiles[j]`` (sorted ascending) with probability ``weights[j]``. For
    a job of known remaining-size distribution the Gittins index is
    ``G = sup_Δ P(R ≤ Δ) / E[min(R, Δ)]`` (Gittins 1989; Aalto et al. 2009), optimal for mean
    response time in the M/G/1 among non-anticipating policies; the key (lower first) is
    ``1/G = min_k E[min(R, q_k)] / P(R ≤ q_k)`` (the sup is attained at an atom). A point mass
    at ``r`` gives ``r``: with a certain prediction the policy is SRTF.
    """
    q = np.asarray(quantiles, dtype=np.float64)
    w = weights
    p = np.cumsum(w)  # P(R <= q_k)
    e = np.cumsum(w * q) + (1.0 - p) * q  # E[min(R, q_k)]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(p > 0, e / p, np.inf)
    return float(ratio.min())


class Gittins(SchedulingPolicy):
    """Rank by the Gittins index of the predicted remaining-length distribution.

    At each boundary the predictor's quantiles of the remaining tokens (``predict_quantiles``
    at ``quantile_levels``, clipped to ``[0, max_tokens − generated]``) are read as atoms with
    mid-point weights (``quantile_weights``) and the key is ``gittins_key`` — the SOAP
    framework's rank for Gittins (Scully et al., SIGMETRICS 2018) with the attained service
    already conditioned on by the predictor (it predicts the REMAINING length given the
    partial answer). A predictor with a log-location-scale predictive distribution of the
    same shape for every request (e.g. the noisy oracle) gives keys proportional to its
    median, i.e. the ISRTF order; the index differs from ISRTF only when uncertainty differs
    between requests.

    Args:
        quantile_levels: strictly increasing levels in (0, 1); default the 9 mid-points
            (j − 0.5)/9.

    Raises:
        ValueError: bad levels (naming them); at ``validate_predictor``, a predictor without a
            predictive distribution (naming it).
    """

    name = "gittins"
    uses_predictions = True
    repredicts = True

    def __init__(
        self, name: str | None = None, aging_tokens_per_s: float = 0.0, promote_after_s: float | None = None,
        promote_by: str = "wait", *, quantile_levels: list[float] | tuple[float, ...] | None = None,
    ) -> None:
        super().__init__(name, aging_tokens_per_s, promote_after_s, promote_by)
        levels = tuple(float(x) for x in quantile_levels) if quantile_levels else tuple(
            (j - 0.5) / 9 for j in range(1, 10)
        )
        arr = np.asarray(levels)
        if not (np.all((arr > 0) & (arr < 1)) and np.all(np.diff(arr) > 0)):
            raise ValueError(
                f"sched.policy_params.quantile_levels must be strictly increasing in (0, 1), got {list(levels)}"
            )
        self.quantile_levels = levels
        self._weights = quantile_weights(arr)

    def validate_predictor(self, predictor: Any) -> None:
        super().validate_predictor(predictor)
        from elis.predictor.base import supports_quantiles

        inner = getattr(predictor, "predictor", predictor)  # PredictionService wraps the predictor
        if not supports_quantiles(inner):
            raise ValueError(
                f"policy 'gittins' needs a predictive distribution; predictor "
                f"{getattr(inner, 'name', type(inner).__name__)!r} does not implement predict_quantiles "
                "(use predictor=oracle, noisy_oracle or gbdt)"
            )

    def key_tokens(self, request: Request) -> float:
        q = request.predicted_quantiles
        if q is None:
            raise ValueError(f"gittins: request {request.request_id!r} has no predicted quantiles yet")
        q = np.clip(np.asarray(q, dtype=np.float64), 0.0, _remaining_cap(request))
        return gittins_key(q, self._weights)


def _subclasses(cls: type) -> list[type]:
    out = []
    for c in cls.__subclasses__():
        out.append(c)
        out.extend(_subclasses(c))
    return out


def policy_names() -> tuple[str, ...]:
    """Names of every defined policy class (definition order)."""
    return tuple(c.name for c in _subclasses(SchedulingPolicy) if c.name)


def policy_class(name: str | None) -> type[SchedulingPolicy]:
    """The ``SchedulingPolicy`` subclass called ``name``.

    Raises:
        ValueError: unknown name, listing the valid ones.
    """
    for c in _subclasses(SchedulingPolicy):
        if c.name and c.name == name:
            return c
    raise ValueError(f"sched.policy={name!r} is not one of {list(policy_names())}")


def make_policy(name: str, aging_tokens_per_s: float = 0.0, promote_after_s: float | None = None,
                promote_by: str = "wait", **params: Any) -> SchedulingPolicy:
    """Build the policy ``name`` with its ``params`` (``sched.policy_params``).

    Raises:
        ValueError: unknown name or a parameter the policy does not take (naming it).
    """
    cls = policy_class(name)
    try:
        return cls(name, aging_tokens_per_s, promote_after_s, promote_by, **params)
    except TypeError as e:
        raise ValueError(f"sched.policy_params {sorted(params)} not accepted by policy {name!r}: {e}") from None


POLICY_NAMES: tuple[str, ...] = policy_names()
