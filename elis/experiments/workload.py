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

Limits (decided here, checked by tests):

- ``cv = 0`` is the limit cv → 0: constant gaps ``1 / rate`` (a deterministic, D/·/· arrival
  process). Any ``0 < cv`` is drawn from the Gamma law.
- ``cv > MAX_GAMMA_CV`` (10, shape < 0.01) is refused: numpy's float64 Gamma sampler then
  returns gaps of exactly 0 (0.06% of draws at cv = 10, 15% at cv = 20, 47% at cv = 31.6,
  all of them at cv = 31623 where every arrival lands at t = 0), and almost all of the mean
  sits in gaps too rare to appear among N draws, so the realised rate is not the one asked.
- ``rate_rps = inf`` is the limit rate → ∞: every request arrives at ``start_s`` (one burst,
  an offline batch). Written ``workload.rate_rps=inf`` on the command line.
- Every draw is checked (``check_mean_gap``): the realised mean gap ``(t_N − start) / N``
  must lie inside the central ``1 − 1e-6`` interval of its exact law (the sum of N Gamma(k, θ)
  gaps is Gamma(N·k, θ)), or the call raises; a realised rate whose relative spread
  ``cv / sqrt(N)`` exceeds 25% is logged as a WARNING with the realised rate.

Traces (``read_trace``): an Azure-2023-style CSV (``TIMESTAMP,ContextTokens,GeneratedTokens``)
or a Mooncake-style JSONL (``timestamp`` in ms, ``input_length``, ``output_length``,
``hash_ids``), plain or gzipped. Timestamps may be ISO 8601 strings or numbers in s, ms, µs or
ns (``time_unit``; ``auto`` detects and logs its decision). Rows are sorted by time before the
first ``max_rows`` are taken.
"""

from __future__ import annotations

import gzip
import json
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
# Mooncake (FAST'25) JSONL trace fields; timestamp is in milliseconds from the trace start.
MOONCAKE_TIME_FIELD = "timestamp"
MOONCAKE_PROMPT_FIELD = "input_length"
MOONCAKE_OUTPUT_FIELD = "output_length"
MOONCAKE_TIME_UNIT = "ms"

#: Largest accepted Gamma cv (shape 1/cv² >= 0.01); see the module docstring.
MAX_GAMMA_CV = 10.0
#: Two-sided tail probability outside which a realised mean gap is refused.
MEAN_GAP_TAIL_PROB = 1e-6
#: Relative spread cv/sqrt(N) of the realised rate above which a warning is logged.
MEAN_GAP_WARN_SPREAD = 0.25

TRACE_FORMATS = {
    "azure_csv": "CSV with columns TIMESTAMP,ContextTokens,GeneratedTokens (.csv, .csv.gz)",
    "mooncake_jsonl": "JSON lines with timestamp (ms),input_length,output_length[,hash_ids] (.jsonl, .jsonl.gz)",
}
TIME_UNITS_NS = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}
TIME_UNITS = ["auto", "iso", *TIME_UNITS_NS]


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


def _check_rate(rate_rps: float) -> float:
    """A rate > 0; ``inf`` is allowed (the burst limit), NaN and values <= 0 are not."""
    try:
        v = float(rate_rps)
    except (TypeError, ValueError):
        raise ValueError(f"rate_rps must be a number > 0 (or inf for one burst), got {rate_rps!r}") from None
    if math.isnan(v) or v <= 0:
        raise ValueError(f"rate_rps must be a number > 0 (or inf for one burst), got {rate_rps!r}")
    return v


def _check_cv(cv: float) -> float:
    try:
        v = float(cv)
    except (TypeError, ValueError):
        raise ValueError(f"cv must be a number in [0, {MAX_GAMMA_CV:g}], got {cv!r}") from None
    if not math.isfinite(v) or v < 0 or v > MAX_GAMMA_CV:
        raise ValueError(
            f"cv must be a number in [0, {MAX_GAMMA_CV:g}], got {cv!r}: beyond cv={MAX_GAMMA_CV:g} "
            f"(Gamma shape 1/cv² < {1 / MAX_GAMMA_CV**2:g}) float64 draws underflow to gaps of exactly "
            "0 and the realised rate is not the one asked (cv=0 gives constant gaps)"
        )
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
        rate_rps: mean arrival rate in requests per second (> 0; ``inf``: all at ``start_s``).
        rng: the seeded generator to draw from.
        start_s: time origin; the first arrival is at ``start_s + first gap``.

    Returns:
        ``arrival_time_s``, float64 array of shape (N,), non-decreasing.

    Raises:
        ValueError: naming the parameter, for N < 0, rate <= 0 or NaN, non-finite start, or a
            realised mean gap outside its exact law (``check_mean_gap``).
    """
    return gamma_arrivals(num_requests, rate_rps, 1.0, rng, start_s)


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
    ``poisson_arrivals``; ``cv = 0`` gives constant gaps ``1 / rate_rps`` (no draw);
    ``rate_rps = inf`` puts every arrival at ``start_s`` (no draw).

    Args:
        num_requests: N >= 0.
        rate_rps: mean arrival rate in requests per second (> 0, or ``inf``).
        cv: coefficient of variation of the gaps, in ``[0, MAX_GAMMA_CV]``.
        rng: the seeded generator to draw from.
        start_s: time origin; the first arrival is at ``start_s + first gap``.

    Returns:
        ``arrival_time_s``, float64 array of shape (N,), non-decreasing.

    Raises:
        ValueError: naming the parameter, for N < 0, rate <= 0 or NaN, cv outside
            ``[0, MAX_GAMMA_CV]``, non-finite start, or a realised mean gap outside its exact
            law (``check_mean_gap``).
    """
    n = _check_count(num_requests)
    rate = _check_rate(rate_rps)
    c = _check_cv(cv)
    start = _check_start(start_s)
    if math.isinf(rate):
        return np.full(n, start, dtype=np.float64)
    if c == 0.0:
        t = start + np.arange(1, n + 1, dtype=np.float64) / rate
    else:
        gaps = rng.gamma(shape=1.0 / (c * c), scale=(c * c) / rate, size=n)  # (N,)
        t = start + np.cumsum(gaps)
    check_mean_gap(t, rate, c, start)
    return t


def check_mean_gap(arrival_time_s: np.ndarray, rate_rps: float, cv: float, start_s: float = 0.0) -> float:
    """Check that the realised mean gap of drawn arrivals matches ``1 / rate_rps``.

    The mean of N Gamma(k, θ) gaps is Gamma(N·k, θ / N) exactly, so ``rate · mean_gap``
    follows Gamma(N·k, 1 / (N·k)); a value outside its central ``1 − MEAN_GAP_TAIL_PROB``
    interval means the draw is not the process asked for (underflowing gaps, lost precision).
    A mean within 1e-9 relative of ``1 / rate`` is always accepted (float rounding); for
    ``cv = 0`` nothing else is; for ``rate = inf``
    every arrival must be at ``start_s``. When the realised rate's relative spread
    ``cv / sqrt(N)`` exceeds ``MEAN_GAP_WARN_SPREAD`` a WARNING gives the realised rate.

    Args:
        arrival_time_s: (N,) arrival times in s, non-decreasing.
        rate_rps: the asked rate (> 0 or inf).
        cv: the asked coefficient of variation of the gaps (>= 0).
        start_s: the time origin the first gap was drawn from.

    Returns:
        The realised mean gap in s (NaN for N = 0).

    Raises:
        ValueError: the realised mean gap (given with 1/rate and the accepted interval).
    """
    from scipy import stats

    t = np.asarray(arrival_time_s, dtype=np.float64)
    n = t.size
    if n == 0:
        return float("nan")
    mean_gap = float((t[-1] - start_s) / n)
    if math.isinf(rate_rps):
        if mean_gap != 0.0:
            raise ValueError(f"rate_rps=inf must put every arrival at start_s; realised mean gap {mean_gap} s")
        return mean_gap
    expected = 1.0 / rate_rps
    ratio = mean_gap / expected
    if cv == 0.0:
        lo = hi = 1.0
        ok = abs(ratio - 1.0) <= 1e-9
    else:
        a = n / (cv * cv)  # N·k
        lo, hi = stats.gamma.ppf([MEAN_GAP_TAIL_PROB / 2, 1 - MEAN_GAP_TAIL_PROB / 2], a, scale=1.0 / a)
        # float64 rounding of the cumulative sum can exceed the law's width at tiny cv
        ok = bool(lo <= ratio <= hi) or abs(ratio - 1.0) <= 1e-9
    if not ok:
        raise ValueError(
            f"realised mean gap {mean_gap:.6g} s of {n} arrivals is {ratio:.4g} × 1/rate_rps "
            f"({expected:.6g} s at rate_rps={rate_rps:g}, cv={cv:g}); accepted range "
            f"[{lo:.4g}, {hi:.4g}] × 1/rate_rps: the draw does not realise the asked rate"
        )
    spread = cv / math.sqrt(n)
    if spread > MEAN_GAP_WARN_SPREAD:
        logger.warning(
            "%d arrivals at cv=%g: the realised rate has a relative spread of %.0f%% (cv/sqrt(N)); "
            "this draw realises %.4g req/s for the %.4g asked. Use more requests for a rate-faithful run.",
            n, cv, 100 * spread, 1.0 / mean_gap if mean_gap > 0 else float("inf"), rate_rps,
        )
    return mean_gap


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

    ``rate_rps = 1 / (shape · scale_s)``, ``cv = 1 / sqrt(shape)``; ``num_zero_gaps`` gaps of
    exactly 0 s (arrivals sharing a timestamp) were spread within ``resolution_s`` before
    fitting (see ``spread_ties``).
    """

    rate_rps: float
    cv: float
    shape: float
    scale_s: float
    num_gaps: int
    num_zero_gaps: int
    resolution_s: float = float("nan")
    method: str = "mle"


def infer_resolution_s(inter_arrival_s: np.ndarray) -> float | None:
    """The coarsest power of ten (1000 s … 1 ns) of which every gap is a whole multiple.

    Returns None when no such grid exists (continuous gaps, e.g. drawn ones). A gap counts as
    a multiple of ``r`` when ``|g / r − round(g / r)| <= 1e-3`` (float offsets from integer
    nanoseconds carry rounding well below that).
    """
    gaps = np.asarray(inter_arrival_s, dtype=np.float64)
    pos = gaps[gaps > 0]
    if pos.size == 0:
        return None
    for e in range(3, -10, -1):
        r = 10.0**e
        q = pos / r
        if np.all(np.abs(q - np.rint(q)) <= 1e-3) and np.all(np.rint(q) >= 1):
            return r
    return None


def spread_ties(inter_arrival_s: np.ndarray, resolution_s: float) -> np.ndarray:
    """Gaps after spreading arrivals that share a timestamp evenly within its resolution.

    ``m`` arrivals in one tick ``[t, t + r)`` are moved to ``t + r·(j + 1)/(m + 1)``,
    ``j = 0 … m−1`` (the expected order statistics of ``m`` uniform arrivals in the tick; a
    lone arrival moves to the tick's centre, as every other lone arrival does, which leaves its
    gaps unchanged). Zero gaps become ``r/(m+1)``; the gaps around a tie shrink by the same
    amount, so the sum of the gaps (hence the mean rate) changes by less than one tick and
    quantisation by rounding instead of flooring gives the same gaps.

    Args:
        inter_arrival_s: (M,) gaps in s, >= 0.
        resolution_s: the timestamps' resolution r in s (> 0).

    Returns:
        (M,) float64 gaps, all > 0 (a tie's neighbours are at least ``r`` away).

    Raises:
        ValueError: ``resolution_s`` <= 0, or coarser than the gaps (a spread gap <= 0).
    """
    r = _check_positive("resolution_s", resolution_s)
    gaps = np.asarray(inter_arrival_s, dtype=np.float64)
    n = gaps.size + 1  # arrivals
    starts = np.concatenate([[True], gaps != 0])  # (n,) arrival i opens a new tick
    group = np.cumsum(starts) - 1  # (n,)
    sizes = np.bincount(group)  # (G,)
    first = np.flatnonzero(starts)  # (G,)
    rank = np.arange(n) - first[group]  # (n,) j within its tick
    offset = r * (rank + 1) / (sizes[group] + 1)  # (n,)
    out = gaps + np.diff(offset)
    if np.any(out <= 0):
        raise ValueError(
            f"resolution_s={resolution_s!r} is coarser than the timestamps: a positive gap of "
            f"{gaps[gaps > 0].min():.3g} s exists; pass the timestamps' real resolution"
        )
    return out


def fit_gamma(
    inter_arrival_s: np.ndarray, resolution_s: float | None = None, method: str = "auto"
) -> GammaFit:
    """Gamma fit of inter-arrival gaps (location 0): maximum likelihood or moments.

    Zero gaps (requests sharing a timestamp) have zero density under any Gamma with shape
    < 1 and make the log-likelihood -inf. They are quantisation, not simultaneity: the
    arrivals of one tick are spread evenly within it (``spread_ties``), which keeps the mean
    gap and gives the gaps of the spread trace. Replacing each zero gap by ``r/2`` instead
    adds r/2 per tie (+11% mean on a whole-second trace); leaving them at a tiny value
    inflates the cv (2.58 for 1.06).

    Methods: ``mle`` (``scipy.stats.gamma.fit``, floc=0; its mean is the sample mean) or
    ``moments`` (shape = 1/cv², scale = mean·cv² from the sample mean and std, so the fitted cv
    is exactly the trace's). ``auto``: ``moments`` when ties were spread (the spread gaps
    are evenly placed, not Gamma draws, and the likelihood of their small values drives the
    MLE cv down: 0.86 for a spread trace of cv 0.99), ``mle`` otherwise. Logged.

    Args:
        inter_arrival_s: gaps in seconds, shape (M,), M >= 2, finite and >= 0.
        resolution_s: the timestamps' resolution in seconds (Azure traces: 1e-7). None:
            inferred (``infer_resolution_s``; logged), else the float64 spacing of the
            largest cumulative time when the gaps are continuous.
        method: ``auto``, ``mle`` or ``moments``.

    Returns:
        ``GammaFit`` with the fitted shape/scale, the implied rate and cv, and the resolution.

    Raises:
        ValueError: for fewer than 2 gaps, negative or non-finite gaps, all gaps zero,
            ``resolution_s`` <= 0 or coarser than the gaps, or an unknown ``method``.
    """
    from scipy import stats

    if method not in ("auto", "mle", "moments"):
        raise ValueError(f"method={method!r} is not one of ['auto', 'mle', 'moments']")
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
    if resolution_s is None:
        res = infer_resolution_s(gaps)
        if res is None:
            res = float(np.spacing(gaps.sum()))
            logger.info("fit_gamma: gaps on no decimal grid; ties spread within float spacing %.3g s", res)
        else:
            logger.info("fit_gamma: timestamp resolution inferred as %g s", res)
    else:
        res = _check_positive("resolution_s", resolution_s)
    if num_zero:
        logger.info("fit_gamma: spreading %d tied arrivals within their %.3g s tick", num_zero, res)
        gaps = spread_ties(gaps, res)
    how = method if method != "auto" else ("moments" if num_zero else "mle")
    if how == "moments":
        mean, sd = float(gaps.mean()), float(gaps.std())
        shape, scale = (mean / sd) ** 2, sd * sd / mean
    else:
        shape, _, scale = stats.gamma.fit(gaps, floc=0)
    logger.info("fit_gamma (%s): mean gap %.4g s, cv %.4g", how, shape * scale, 1 / math.sqrt(shape))
    return GammaFit(
        rate_rps=float(1.0 / (shape * scale)),
        cv=float(1.0 / math.sqrt(shape)),
        shape=float(shape),
        scale_s=float(scale),
        num_gaps=int(gaps.size),
        num_zero_gaps=num_zero,
        resolution_s=float(res),
        method=how,
    )


@dataclass(slots=True)
class Trace:
    """A replayable arrival trace: one row per request, sorted by ``arrival_time_s``.

    ``requests`` has columns ``arrival_time_s`` (float64, s from the earliest request),
    ``num_prompt_tokens`` and ``num_output_tokens`` (int64). ``num_reordered_rows`` counts
    rows that were out of time order in the file; ``format`` and ``time_unit`` are the ones
    used (after detection).
    """

    path: str
    time_scale: float
    requests: pd.DataFrame
    num_reordered_rows: int
    format: str = "azure_csv"
    time_unit: str = "iso"

    @property
    def arrival_time_s(self) -> np.ndarray:
        return self.requests["arrival_time_s"].to_numpy()

    @property
    def duration_s(self) -> float:
        t = self.arrival_time_s
        return float(t[-1] - t[0]) if t.size else 0.0


def detect_trace_format(path: Path) -> str:
    """``azure_csv`` for ``.csv``/``.csv.gz``, ``mooncake_jsonl`` for ``.jsonl``/``.jsonl.gz``.

    Raises:
        ValueError: any other suffix, naming the file and the supported formats.
    """
    name = path.name.lower()
    if name.endswith((".csv", ".csv.gz")):
        return "azure_csv"
    if name.endswith((".jsonl", ".jsonl.gz")):
        return "mooncake_jsonl"
    raise ValueError(f"{path}: unknown trace format (by its suffix); supported: {_formats_text()}")


def _formats_text() -> str:
    return "; ".join(f"{k}: {v}" for k, v in TRACE_FORMATS.items())


def _read_azure_csv(p: Path, time_column: str, fields: tuple[str, str]) -> pd.DataFrame:
    try:
        df = pd.read_csv(p)
    except (ValueError, UnicodeDecodeError, OSError) as e:  # pandas ParserError is a ValueError
        raise ValueError(f"{p}: not a readable CSV ({e}); supported trace formats: {_formats_text()}") from e
    missing = [c for c in (time_column, *fields) if c not in df.columns]
    if missing:
        raise ValueError(
            f"{p}: missing column(s) {missing}; found {list(df.columns)}; supported trace formats: "
            f"{_formats_text()}"
        )
    return df


def _read_mooncake_jsonl(p: Path) -> pd.DataFrame:
    wanted = (MOONCAKE_TIME_FIELD, MOONCAKE_PROMPT_FIELD, MOONCAKE_OUTPUT_FIELD)
    rows: list[tuple] = []
    opener = gzip.open if p.name.lower().endswith(".gz") else open
    try:
        with opener(p, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(
                        f"{p}: line {lineno} is not JSON ({e.msg}); expected mooncake_jsonl: "
                        f"{TRACE_FORMATS['mooncake_jsonl']}"
                    ) from None
                if not isinstance(rec, dict) or any(k not in rec for k in wanted):
                    got = sorted(rec) if isinstance(rec, dict) else type(rec).__name__
                    raise ValueError(
                        f"{p}: line {lineno} lacks field(s) "
                        f"{[k for k in wanted if not isinstance(rec, dict) or k not in rec]} (has {got}); "
                        f"expected mooncake_jsonl: {TRACE_FORMATS['mooncake_jsonl']}"
                    )
                rows.append(tuple(rec[k] for k in wanted))
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise ValueError(f"{p}: unreadable ({e}); supported trace formats: {_formats_text()}") from e
    return pd.DataFrame(rows, columns=list(wanted))


def detect_time_unit(values: pd.Series, where: str) -> str:
    """``iso`` for strings, else the epoch unit implied by the magnitude of the numbers.

    Epoch times since 1973 are >= 1e8 s = 1e11 ms = 1e14 µs = 1e17 ns, and these ranges do not
    overlap before the year 5138, so the largest value decides. Smaller numbers are offsets
    whose unit cannot be told apart: refused.

    Raises:
        ValueError: numeric values below 1e8 (offsets), naming ``where`` and the valid units.
    """
    if not pd.api.types.is_numeric_dtype(values):
        return "iso"
    vmax = float(np.nanmax(np.abs(values.to_numpy(dtype=np.float64)))) if len(values) else 0.0
    for unit, lo in (("ns", 1e17), ("us", 1e14), ("ms", 1e11), ("s", 1e8)):
        if vmax >= lo:
            return unit
    raise ValueError(
        f"{where} holds numbers up to {vmax:g}: offsets whose unit cannot be detected; "
        f"set workload.time_unit to one of {TIME_UNITS[1:]}"
    )


def timestamps_to_offsets_ns(values: pd.Series, time_unit: str, where: str) -> np.ndarray:
    """Timestamps → int64 nanoseconds after the earliest one, shape (N,), in file order.

    ``iso``: ISO 8601 strings (pandas, nanosecond precision). ``s``/``ms``/``us``/``ns``:
    numbers (epoch or offsets); integers are scaled exactly, floats are rounded to the ns
    after subtracting the minimum (no loss from the epoch's magnitude).

    Raises:
        ValueError: an unknown unit (lists the valid ones), unparsable or empty values
            (naming ``where`` and the data row), or strings given a numeric unit.
    """
    if time_unit not in TIME_UNITS_NS and time_unit != "iso":
        raise ValueError(f"time_unit={time_unit!r} is not one of {TIME_UNITS}")
    if len(values) == 0:
        return np.zeros(0, dtype=np.int64)
    if time_unit == "iso":
        try:
            ts = pd.to_datetime(values, format="ISO8601")
        except (ValueError, TypeError) as e:
            raise ValueError(
                f"{where} has a timestamp that is not ISO 8601 ({e}); for numbers set "
                f"workload.time_unit to one of {list(TIME_UNITS_NS)}"
            ) from e
        if ts.isna().any():
            row = int(np.flatnonzero(ts.isna().to_numpy())[0])
            raise ValueError(f"{where} is empty at data row {row}")
        ns = ts.to_numpy().astype("datetime64[ns]").astype(np.int64)
        return ns - ns.min()
    num = pd.to_numeric(values, errors="coerce")
    if num.isna().any() or not np.all(np.isfinite(num.to_numpy(dtype=np.float64))):
        row = int(np.flatnonzero(~np.isfinite(num.to_numpy(dtype=np.float64)))[0])
        raise ValueError(
            f"{where} must hold numbers in time_unit={time_unit!r}; data row {row} is {values.iloc[row]!r}"
        )
    factor = TIME_UNITS_NS[time_unit]
    if pd.api.types.is_integer_dtype(num):
        v = num.to_numpy(dtype=np.int64)
        return (v - v.min()) * factor
    v = num.to_numpy(dtype=np.float64)
    return np.rint((v - v.min()) * factor).astype(np.int64)


def read_trace(
    path: str | Path,
    time_scale: float = 1.0,
    max_rows: int | None = None,
    time_unit: str = "auto",
    format: str = "auto",  # noqa: A002 - the config key's name
) -> Trace:
    """Read an arrival trace (Azure-2023 CSV or Mooncake JSONL) as a ``Trace``.

    ``azure_csv``: ``TIMESTAMP,ContextTokens,GeneratedTokens``; ``TIMESTAMP`` strings such as
    ``2023-11-16 18:15:46.6805900`` (7 fractional digits) are parsed as ISO 8601 at nanosecond
    precision, or numbers in ``time_unit``. ``mooncake_jsonl``: one JSON object per line with
    ``timestamp`` (ms, Mooncake's unit unless ``time_unit`` says otherwise), ``input_length``,
    ``output_length`` (``hash_ids``, the prefix-cache block ids, are not used).
    All rows are stable-sorted by time (their number is logged and kept in
    ``num_reordered_rows``; ties keep file order, gap 0) *before* the first ``max_rows`` are
    taken. Offsets are taken from the earliest row, then divided by ``time_scale``
    (``time_scale=2`` replays the trace twice as fast: twice the load).

    Args:
        path: the trace file (``.csv``, ``.csv.gz``, ``.jsonl``, ``.jsonl.gz``).
        time_scale: speed-up factor (> 0).
        max_rows: keep only the ``max_rows`` earliest requests (None: all).
        time_unit: ``auto`` (ISO strings, else epoch unit by magnitude; mooncake: ms; logged),
            ``iso``, ``s``, ``ms``, ``us`` or ``ns``.
        format: ``auto`` (by suffix), ``azure_csv`` or ``mooncake_jsonl``.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: unknown format or unreadable file (names the file and the supported
            formats), missing columns (names them), unparsable timestamps or token counts,
            negative token counts, or a bad ``time_scale``/``max_rows``/``time_unit``.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"trace file not found: {p}")
    scale = _check_positive("time_scale", time_scale)
    if max_rows is not None and (isinstance(max_rows, bool) or int(max_rows) < 1):
        raise ValueError(f"max_rows must be None or >= 1, got {max_rows!r}")
    if time_unit not in TIME_UNITS:
        raise ValueError(f"time_unit={time_unit!r} is not one of {TIME_UNITS}")
    fmt = detect_trace_format(p) if format == "auto" else format
    if fmt == "azure_csv":
        cols = (AZURE_TIME_COLUMN, AZURE_PROMPT_COLUMN, AZURE_OUTPUT_COLUMN)
        df = _read_azure_csv(p, cols[0], cols[1:])
    elif fmt == "mooncake_jsonl":
        cols = (MOONCAKE_TIME_FIELD, MOONCAKE_PROMPT_FIELD, MOONCAKE_OUTPUT_FIELD)
        df = _read_mooncake_jsonl(p)
    else:
        raise ValueError(f"format={format!r} is not one of {['auto', *TRACE_FORMATS]}")
    where = f"{p}: column {cols[0]}"
    unit = time_unit
    if unit == "auto":
        if fmt == "mooncake_jsonl":
            unit = MOONCAKE_TIME_UNIT
            logger.info("%s: time_unit=ms (the Mooncake format's unit)", p)
        else:
            unit = detect_time_unit(df[cols[0]], where)
            logger.info("%s: time_unit=%s detected from the %s values", p, unit, cols[0])
    ns = timestamps_to_offsets_ns(df[cols[0]], unit, where)  # (N,) file order
    counts = {}
    for col in cols[1:]:
        vals = pd.to_numeric(df[col], errors="coerce")
        bad = vals.isna() | (vals < 0) | (vals != np.floor(vals))
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise ValueError(
                f"{p}: column {col} must hold integers >= 0; data row {row} is {df[col].iloc[row]!r}"
            )
        counts[col] = vals.to_numpy(dtype=np.int64)
    order = np.argsort(ns, kind="stable")
    num_reordered = int(np.sum(order != np.arange(order.size)))
    if num_reordered:
        logger.warning("%s: %d rows out of time order; stable-sorted by %s before taking rows", p,
                       num_reordered, cols[0])
    if max_rows is not None:
        order = order[: int(max_rows)]
    ns = ns[order]
    with np.errstate(over="ignore"):  # checked just below
        offsets_s = (ns - ns[0]).astype(np.float64) / 1e9 / scale if ns.size else ns.astype(np.float64)
    if not np.all(np.isfinite(offsets_s)):
        raise ValueError(f"time_scale={time_scale!r} makes the offsets of {p} overflow float64; use a larger one")
    requests = pd.DataFrame(
        {
            "arrival_time_s": offsets_s,
            "num_prompt_tokens": counts[cols[1]][order],
            "num_output_tokens": counts[cols[2]][order],
        }
    )
    logger.info("read trace %s (%s, time_unit=%s): %d requests over %.1f s (time_scale=%g)", p, fmt,
                unit, len(requests), float(offsets_s[-1]) if offsets_s.size else 0.0, scale)
    return Trace(path=str(p), time_scale=scale, requests=requests, num_reordered_rows=num_reordered,
                 format=fmt, time_unit=unit)


def load_trace(
    path: str | Path,
    time_scale: float = 1.0,
    max_rows: int | None = None,
    time_unit: str = "auto",
    format: str = "auto",  # noqa: A002
) -> pd.DataFrame:
    """The requests of ``read_trace(path, ...)`` as a DataFrame.

    Columns: ``arrival_time_s`` (float64 s, 0 at the earliest request, non-decreasing),
    ``num_prompt_tokens``, ``num_output_tokens`` (int64). Same errors as ``read_trace``.
    """
    return read_trace(path, time_scale=time_scale, max_rows=max_rows, time_unit=time_unit,
                      format=format).requests
