"""Arrival processes for serving experiments: Poisson, Gamma, trace replay, Gamma fitting.

All functions return ``arrival_time_s`` arrays in seconds (float64, shape ``(N,)``,
non-decreasing). Randomness comes only from the ``np.random.Generator`` passed in (build it
with ``elis.rng.make_rng(cfg.seed, "arrivals")``), so one seed gives identical arrivals.

Gamma parameterisation (as in Vidur's ``GammaRequestIntervalGenerator`` and vLLM's
``benchmarks/benchmark_serving.py``): inter-arrival gaps ``X ~ Gamma(k, θ)`` with shape
``k = 1 / cv²`` and scale ``θ = cv² / rate``, so ``E[X] = kθ = 1 / rate`` and
``CV[X] = 1 / sqrt(k) = cv``. ``cv = 1`` (k = 1) is the exponential distribution, i.e. a
Poisson process; ``cv > 1`` is burstier, ``cv < 1`` more regular. vLLM's ``--burstiness``
flag is the shape ``k = 1 / cv²`` (its scale is ``1 / (rate · burstiness)``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

# Azure LLM inference trace 2023 (Splitwise, ISCA'24) column names.
AZURE_TIME_COLUMN = "TIMESTAMP"
AZURE_PROMPT_COLUMN = "ContextTokens"
AZURE_OUTPUT_COLUMN = "GeneratedTokens"
# The Azure traces write TIMESTAMP with 7 fractional digits: a resolution of 100 ns.
AZURE_TIMESTAMP_RESOLUTION_S = 1e-7


def _check_count(num_requests: int) -> int:
    if isinstance(num_requests, bool) or not isinstance(num_requests, (int, np.integer)):
        raise ValueError(f"num_requests must be an int, got {num_requests!r}")
    if num_requests < 0:
        raise ValueError(f"num_requests must be >= 0, got {num_requests}")
    return int(num_requests)


def _check_positive(name: str, value: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return v


def _check_start(start_s: float) -> float:
    try:
        v = float(start_s)
    except (TypeError, ValueError):
        raise ValueError(f"start_s must be a finite number, got {start_s!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"start_s must be a finite number, got {start_s!r}")
    return v


def poisson_arrivals(
    num_requests: int, rate_rps: float, rng: np.random.Generator, start_s: float = 0.0
) -> np.ndarray:
    """Arrival times of a Poisson process (exponential gaps with mean ``1 / rate_rps``).

    Args:
        num_requests: N >= 0.
        rate_rps: mean arrival rate in requests per second (> 0, finite).
        rng: the seeded generator to draw from.
        start_s: time origin; the first arrival is at ``start_s + first gap``.

    Returns:
        ``arrival_time_s``, float64 array of shape (N,), non-decreasing.

    Raises:
        ValueError: naming the parameter, for N < 0, rate <= 0 or non-finite values.
    """
    n = _check_count(num_requests)
    rate = _check_positive("rate_rps", rate_rps)
    start = _check_start(start_s)
    gaps = rng.exponential(scale=1.0 / rate, size=n)  # (N,)
    return start + np.cumsum(gaps)


def gamma_arrivals(
    num_requests: int,
    rate_rps: float,
    cv: float,
    rng: np.random.Generator,
    start_s: float = 0.0,
) -> np.ndarray:
    """Arrival times with Gamma inter-arrival gaps of mean ``1 / rate_rps`` and CV ``cv``.

    Shape ``k = 1 / cv²``, scale ``θ = cv² / rate_rps`` (see the module docstring; vLLM's
    ``burstiness`` is ``k``). ``cv = 1`` draws exactly the same distribution as
    ``poisson_arrivals``.

    Args:
        num_requests: N >= 0.
        rate_rps: mean arrival rate in requests per second (> 0, finite).
        cv: coefficient of variation of the gaps (> 0, finite).
        rng: the seeded generator to draw from.
        start_s: time origin; the first arrival is at ``start_s + first gap``.

    Returns:
        ``arrival_time_s``, float64 array of shape (N,), non-decreasing.

    Raises:
        ValueError: naming the parameter, for N < 0, rate <= 0, cv <= 0 or non-finite values.
    """
    n = _check_count(num_requests)
    rate = _check_positive("rate_rps", rate_rps)
    c = _check_positive("cv", cv)
    start = _check_start(start_s)
    shape = 1.0 / (c * c)
    scale = (c * c) / rate
    gaps = rng.gamma(shape=shape, scale=scale, size=n)  # (N,)
    return start + np.cumsum(gaps)


def inter_arrival_times(arrival_time_s: np.ndarray) -> np.ndarray:
    """Gaps between consecutive arrivals, shape (N-1,) for N arrivals (empty for N <= 1).

    Raises:
        ValueError: if the input is not 1-D, holds non-finite values, or decreases.
    """
    t = np.asarray(arrival_time_s, dtype=np.float64)
    if t.ndim != 1:
        raise ValueError(f"arrival_time_s must be 1-D, got shape {t.shape}")
    if not np.all(np.isfinite(t)):
        raise ValueError("arrival_time_s holds non-finite values")
    gaps = np.diff(t)
    if np.any(gaps < 0):
        i = int(np.argmax(gaps < 0))
        raise ValueError(
            f"arrival_time_s must be non-decreasing; index {i + 1} ({t[i + 1]}) < index {i} ({t[i]})"
        )
    return gaps


@dataclass(slots=True, frozen=True)
class GammaFit:
    """A Gamma distribution fitted to inter-arrival gaps (location fixed at 0).

    ``rate_rps = 1 / (shape · scale_s)``, ``cv = 1 / sqrt(shape)``; ``num_zero_gaps`` gaps
    of exactly 0 s were replaced before fitting (see ``fit_gamma``).
    """

    rate_rps: float
    cv: float
    shape: float
    scale_s: float
    num_gaps: int
    num_zero_gaps: int


def fit_gamma(
    inter_arrival_s: np.ndarray, resolution_s: float = AZURE_TIMESTAMP_RESOLUTION_S
) -> GammaFit:
    """Maximum-likelihood Gamma fit of inter-arrival gaps (``scipy.stats.gamma.fit``, floc=0).

    Zero gaps (requests with identical timestamps) have zero density under any Gamma with
    shape < 1 and make the log-likelihood -inf, so each zero gap is replaced by
    ``resolution_s / 2`` (half the timestamp resolution: the expected gap given that two
    arrivals fell in the same tick) and counted in ``num_zero_gaps``.

    Args:
        inter_arrival_s: gaps in seconds, shape (M,), M >= 2, finite and >= 0.
        resolution_s: the timestamps' resolution in seconds (Azure traces: 1e-7).

    Returns:
        ``GammaFit`` with the fitted shape/scale and the implied rate and cv.

    Raises:
        ValueError: for fewer than 2 gaps, negative or non-finite gaps, all gaps zero, or
            ``resolution_s`` <= 0.
    """
    from scipy import stats

    res = _check_positive("resolution_s", resolution_s)
    gaps = np.asarray(inter_arrival_s, dtype=np.float64).ravel()
    if gaps.size < 2:
        raise ValueError(f"inter_arrival_s needs at least 2 gaps to fit, got {gaps.size}")
    if not np.all(np.isfinite(gaps)):
        raise ValueError("inter_arrival_s holds non-finite values")
    if np.any(gaps < 0):
        raise ValueError(f"inter_arrival_s must be >= 0; min is {gaps.min()}")
    zero = gaps == 0
    num_zero = int(zero.sum())
    if num_zero == gaps.size:
        raise ValueError("inter_arrival_s are all zero: no rate can be fitted")
    if num_zero:
        logger.info("fit_gamma: replacing %d zero gaps by %.3g s", num_zero, res / 2)
        gaps = np.where(zero, res / 2, gaps)
    shape, _, scale = stats.gamma.fit(gaps, floc=0)
    return GammaFit(
        rate_rps=float(1.0 / (shape * scale)),
        cv=float(1.0 / math.sqrt(shape)),
        shape=float(shape),
        scale_s=float(scale),
        num_gaps=int(gaps.size),
        num_zero_gaps=num_zero,
    )


@dataclass(slots=True)
class Trace:
    """A replayable arrival trace: one row per request, sorted by ``arrival_time_s``.

    ``requests`` has columns ``arrival_time_s`` (float64, s from the first request),
    ``num_prompt_tokens`` and ``num_output_tokens`` (int64). ``num_reordered_rows`` counts
    rows that were out of time order in the file.
    """

    path: str
    time_scale: float
    requests: pd.DataFrame
    num_reordered_rows: int

    @property
    def arrival_time_s(self) -> np.ndarray:
        return self.requests["arrival_time_s"].to_numpy()

    @property
    def duration_s(self) -> float:
        t = self.arrival_time_s
        return float(t[-1] - t[0]) if t.size else 0.0


def read_trace(path: str | Path, time_scale: float = 1.0, max_rows: int | None = None) -> Trace:
    """Read an Azure-2023-style CSV (``TIMESTAMP,ContextTokens,GeneratedTokens``) as a ``Trace``.

    ``TIMESTAMP`` strings such as ``2023-11-16 18:15:46.6805900`` (7 fractional digits) are
    parsed by pandas as ISO 8601 at nanosecond precision, so no digit is lost.
    Unsorted rows are stable-sorted by time (their number is logged and kept in
    ``num_reordered_rows``); rows with identical timestamps keep their file order (gap 0).
    Offsets are taken from the earliest row, then divided by ``time_scale``
    (``time_scale=2`` replays the trace twice as fast: twice the load).

    Args:
        path: the CSV file.
        time_scale: speed-up factor (> 0).
        max_rows: read only the first ``max_rows`` rows of the file (None: all).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: for missing columns (names them), unparsable timestamps or token
            counts, negative token counts, or a bad ``time_scale``/``max_rows``.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"trace file not found: {p}")
    scale = _check_positive("time_scale", time_scale)
    if max_rows is not None and (isinstance(max_rows, bool) or int(max_rows) < 1):
        raise ValueError(f"max_rows must be None or >= 1, got {max_rows!r}")
    df = pd.read_csv(p, nrows=max_rows)
    wanted = [AZURE_TIME_COLUMN, AZURE_PROMPT_COLUMN, AZURE_OUTPUT_COLUMN]
    missing = [c for c in wanted if c not in df.columns]
    if missing:
        raise ValueError(f"{p}: missing column(s) {missing}; found {list(df.columns)}")
    try:
        ts = pd.to_datetime(df[AZURE_TIME_COLUMN], format="ISO8601")
    except (ValueError, TypeError) as e:
        raise ValueError(f"{p}: column {AZURE_TIME_COLUMN} has an unparsable timestamp: {e}") from e
    if ts.isna().any():
        row = int(np.flatnonzero(ts.isna().to_numpy())[0])
        raise ValueError(f"{p}: column {AZURE_TIME_COLUMN} is empty at data row {row}")
    counts = {}
    for col in (AZURE_PROMPT_COLUMN, AZURE_OUTPUT_COLUMN):
        vals = pd.to_numeric(df[col], errors="coerce")
        bad = vals.isna() | (vals < 0) | (vals != np.floor(vals))
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise ValueError(
                f"{p}: column {col} must hold integers >= 0; data row {row} is {df[col].iloc[row]!r}"
            )
        counts[col] = vals.to_numpy(dtype=np.int64)
    ns = ts.to_numpy().astype("datetime64[ns]").astype(np.int64)  # (N,) nanoseconds
    order = np.argsort(ns, kind="stable")
    num_reordered = int(np.sum(order != np.arange(order.size)))
    if num_reordered:
        logger.warning("%s: %d rows out of time order; stable-sorted by %s", p, num_reordered,
                       AZURE_TIME_COLUMN)
    ns = ns[order]
    offsets_s = (ns - ns[0]).astype(np.float64) / 1e9 / scale if ns.size else ns.astype(np.float64)
    requests = pd.DataFrame(
        {
            "arrival_time_s": offsets_s,
            "num_prompt_tokens": counts[AZURE_PROMPT_COLUMN][order],
            "num_output_tokens": counts[AZURE_OUTPUT_COLUMN][order],
        }
    )
    logger.info("read trace %s: %d requests over %.1f s (time_scale=%g)", p, len(requests),
                float(offsets_s[-1]) if offsets_s.size else 0.0, scale)
    return Trace(path=str(p), time_scale=scale, requests=requests, num_reordered_rows=num_reordered)


def load_trace(path: str | Path, time_scale: float = 1.0, max_rows: int | None = None) -> pd.DataFrame:
    """The requests of ``read_trace(path, time_scale, max_rows)`` as a DataFrame.

    Columns: ``arrival_time_s`` (float64 s, 0 at the first request, non-decreasing),
    ``num_prompt_tokens``, ``num_output_tokens`` (int64). Same errors as ``read_trace``.
    """
    return read_trace(path, time_scale=time_scale, max_rows=max_rows).requests
