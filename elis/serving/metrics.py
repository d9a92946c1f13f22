"""Per-request records, the run summary (``metrics.json``) and end-of-run invariants.

Definitions (times in seconds on the run's clock):
- JCT = finish − arrival (vLLM's benchmark calls it e2el).
- queuing delay = JCT − time spent executing (the sum of every waiting interval: in the
  buffer, preempted, and the scheduling/predictor overhead before its windows).
- TTFT = first token ever emitted − arrival (the first token is emitted at the end of the
  request's first decode step; NaN for 0-token responses).
- Decode steps (``num_decode_steps``): output tokens, plus ONE for the EOS step when the
  request finished by EOS ('eos'): the engine spends a decode step choosing EOS, the request
  holds its slot through it and ends at its end (``finish_time_s``), but the EOS token is
  not an output token (``num_output_tokens`` excludes it, like the dataset labels). A
  'length' finish has no EOS step. Every backend follows this (issue 11 item 10): the HF and
  vLLM workers drop the EOS id from the tokens but keep its step's time as the finish time,
  and the simulated worker charges the EOS step (``elis.serving.workers.sim``).
- TPOT = (finish − first token) / (num_decode_steps − 1): numerator and denominator over the
  same steps (every step after the first one's token, EOS included). NaN when undefined:
  no content token (0-token answers) or a single step (1 token finished by 'length').
  Undefined values are counted: ``num_ttft_undefined``, ``num_tpot_undefined`` (finished
  requests only).
- Failed requests carry NO completion metrics: ``jct_s``, ``queuing_delay_s``, ``ttft_s``,
  ``tpot_s``, ``max_wait_s`` are NaN (raw times such as ``first_token_time_s`` and the tokens
  produced before failing stay); they are counted in ``num_failed`` and grouped by reason in
  ``fail_reasons`` (digits replaced by ``N``, so one kind of failure is one entry).
- max wait = the longest single waiting interval (arrival → first window, or between windows).
Summary names follow vLLM's benchmark style with units: ``jct_mean_s``, ``ttft_p99_s``,
``request_throughput_rps``, ``output_throughput_tok_s``. Percentiles: numpy's linear method.
A run where nothing finished has ``num_finished = 0`` and None for every latency statistic.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

import numpy as np
import pandas as pd

from elis.serving.request import Request, RequestStatus

PERCENTILES: tuple[int, ...] = (50, 90, 99)
LATENCY_METRICS: tuple[str, ...] = ("jct", "queuing_delay", "ttft", "tpot")
BUCKETS: tuple[str, ...] = ("short", "medium", "long")


class InvariantError(RuntimeError):
    """A run broke an invariant (lost, duplicated or wrongly finished requests)."""


class RequestRecorder:
    """Collects one row per terminal request in preallocated columns (one numpy array each).

    Memory: ~200 bytes per recorded request (19 numeric columns × 8 bytes + 5 object
    pointers; the id/status/reason strings are shared or owned by the workload) plus, with
    ``record_intervals``, the per-request lists. Columns grow by doubling; the DataFrame is
    built once by ``to_frame``.

    Args:
        record_intervals: keep the list columns ``window_start_s``/``window_end_s`` and the
            per-step prediction lists (off for very large benchmark runs).
        capacity: rows preallocated (e.g. the number of requests of the run); grows as needed.

    Note: an empty recorder has ``len() == 0`` and is therefore falsy — pass it around with
    ``is None`` checks, never ``recorder or RequestRecorder()``.
    """

    SCALARS = (
        "request_id", "worker_id", "status", "finish_reason", "fail_reason", "generator",
        "arrival_time_s", "first_token_time_s", "finish_time_s", "jct_s", "queuing_delay_s",
        "executed_time_s", "max_wait_s", "ttft_s", "tpot_s", "num_prompt_tokens",
        "num_output_tokens", "num_decode_steps", "true_num_output_tokens", "max_tokens", "num_preemptions",
        "num_recomputed_tokens", "first_predicted_tokens", "fail_time_s",
    )
    INT_COLUMNS = frozenset({
        "worker_id", "num_prompt_tokens", "num_output_tokens", "num_decode_steps", "true_num_output_tokens", "max_tokens",
        "num_preemptions", "num_recomputed_tokens",
    })
    OBJECT_COLUMNS = frozenset({"request_id", "status", "finish_reason", "fail_reason", "generator"})
    LISTS = (
        "window_start_s", "window_end_s", "prediction_num_generated_tokens",
        "predicted_remaining_tokens", "true_remaining_tokens",
    )

    def __init__(self, record_intervals: bool = True, capacity: int = 1024) -> None:
        self.record_intervals = record_intervals
        self._n = 0
        cap = max(int(capacity), 1)
        self._cols: dict[str, np.ndarray] = {c: np.empty(cap, dtype=self._dtype(c)) for c in self.SCALARS}
        self._lists: dict[str, list] = {c: [] for c in self.LISTS} if record_intervals else {}

    @classmethod
    def _dtype(cls, name: str):
        if name in cls.OBJECT_COLUMNS:
            return object
        return np.int64 if name in cls.INT_COLUMNS else np.float64

    def __len__(self) -> int:
        return self._n

    def _grow(self) -> None:
        for c, arr in self._cols.items():
            bigger = np.empty(2 * len(arr), dtype=arr.dtype)
            bigger[: self._n] = arr[: self._n]
            self._cols[c] = bigger

    def add_row(self, values: tuple, lists: tuple | None = None) -> None:
        """Append one row: ``values`` in ``SCALARS`` order, ``lists`` in ``LISTS`` order.

        ``lists`` is required (and only read) when ``record_intervals`` is on.
        """
        i = self._n
        cols = self._cols
        if i == len(cols["request_id"]):
            self._grow()
            cols = self._cols
        for k, v in zip(self.SCALARS, values):
            cols[k][i] = v
        if self.record_intervals:
            if lists is None:
                raise ValueError("RequestRecorder(record_intervals=True).add_row needs the list columns")
            for k, v in zip(self.LISTS, lists):
                self._lists[k].append(v)
        self._n = i + 1

    def add(self, r: Request) -> None:
        """Record a FINISHED or FAILED request."""
        finished = r.status is RequestStatus.FINISHED
        iv = r.run_intervals
        executed = sum(e - s for s, e in iv)
        jct = r.finish_time_s - r.arrival_time_s if finished else math.nan
        gaps = [iv[0][0] - r.arrival_time_s] if iv else []
        gaps += [iv[i][0] - iv[i - 1][1] for i in range(1, len(iv))]
        n = r.num_generated_tokens
        steps = decode_steps(n, r.finish_reason if finished else None)
        first = r.first_token_time_s
        ttft = first - r.arrival_time_s if finished and first is not None else math.nan
        tpot = (r.finish_time_s - first) / (steps - 1) if finished and first is not None and steps >= 2 else math.nan
        values = (
            r.request_id, r.worker_id if r.worker_id is not None else -1, r.status.name,
            r.finish_reason if finished else None, r.fail_reason, r.generator, r.arrival_time_s,
            first if first is not None else math.nan,
            r.finish_time_s if finished else math.nan, jct,
            jct - executed if finished else math.nan, executed,
            max(gaps, default=0.0) if finished else math.nan, ttft, tpot,
            r.num_prompt_tokens, n, steps,
            r.true_num_output_tokens if r.true_num_output_tokens is not None else -1,
            r.max_tokens, r.num_preemptions, r.num_recomputed_tokens,
            r.first_predicted_tokens if r.first_predicted_tokens is not None else math.nan,
            r.fail_time_s if not finished and r.fail_time_s is not None else math.nan,
        )
        lists = None
        if self.record_intervals:
            target = r.target_num_output_tokens
            lists = (
                [s for s, _ in iv], [e for _, e in iv], [g for g, _ in r.predictions],
                [p for _, p in r.predictions],
                [target - g for g, _ in r.predictions] if target is not None else [],
            )
        self.add_row(values, lists)

    def add_all(self, requests: Iterable[Request]) -> None:
        for r in requests:
            self.add(r)

    def to_frame(self) -> pd.DataFrame:
        """The records as a DataFrame (NaN marks 'not applicable': TTFT of a 0-token answer, ...)."""
        n = self._n
        data: dict = {c: self._cols[c][:n] for c in self.SCALARS}
        data.update(self._lists)
        # No copy: the frame's columns view the recorder's arrays (rows < n are never rewritten),
        # so a 1M-request run does not hold its records twice.
        return pd.DataFrame(data, copy=False)


def decode_steps(num_output_tokens: int, finish_reason: str | None) -> int:
    """Decode steps a request took: its output tokens, plus one EOS step if it finished by 'eos'."""
    return num_output_tokens + (1 if finish_reason == "eos" else 0)


def fail_reason_kind(reason: str | None) -> str:
    """A failure reason with its free numbers replaced by ``N`` (one entry per kind of failure);
    settings written ``key=value`` keep their value (``kv_capacity_tokens=20000``)."""
    return re.sub(r"(?<![=\w.])\d+(?:\.\d+)?", "N", str(reason or "unknown"))


def length_bucket_edges(true_num_output_tokens: np.ndarray) -> tuple[float, float]:
    """Tercile edges of the workload's true lengths: short ≤ e1 < medium ≤ e2 < long."""
    x = np.asarray(true_num_output_tokens, dtype=np.float64)
    if x.size == 0:
        return (0.0, 0.0)
    e1, e2 = np.percentile(x, [100 / 3, 200 / 3])
    return float(e1), float(e2)


def _stats(prefix: str, values: np.ndarray) -> dict[str, float | None]:
    v = values[np.isfinite(values)]
    out: dict[str, float | None] = {f"{prefix}_mean_s": float(v.mean()) if v.size else None}
    for p in PERCENTILES:
        out[f"{prefix}_p{p}_s"] = float(np.percentile(v, p)) if v.size else None
    return out


def summarize(records: pd.DataFrame, bucket_edges: tuple[float, float] | None = None) -> dict:
    """The run summary (see module docstring for names and definitions)."""
    fin = records[records["status"] == RequestStatus.FINISHED.name]
    out: dict = {
        "num_requests": int(len(records)),
        "num_finished": int(len(fin)),
        "num_failed": int((records["status"] == RequestStatus.FAILED.name).sum()),
    }
    failed = records[records["status"] == RequestStatus.FAILED.name]  # counted, never in latencies
    kinds = failed["fail_reason"].map(fail_reason_kind).value_counts()
    out["fail_reasons"] = {str(k): int(v) for k, v in sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0]))}
    out["num_ttft_undefined"] = int(np.isnan(fin["ttft_s"].to_numpy(dtype=np.float64)).sum())
    out["num_tpot_undefined"] = int(np.isnan(fin["tpot_s"].to_numpy(dtype=np.float64)).sum())
    if len(fin):
        t0 = float(records["arrival_time_s"].min())
        t1 = float(fin["finish_time_s"].max())
        duration = max(t1 - t0, 1e-12)
        out["duration_s"] = t1 - t0
        out["request_throughput_rps"] = len(fin) / duration
        out["output_throughput_tok_s"] = float(fin["num_output_tokens"].sum()) / duration
    for m in LATENCY_METRICS:
        out.update(_stats(m, fin[f"{m}_s"].to_numpy(dtype=np.float64)))
    out["max_wait_s"] = float(fin["max_wait_s"].max()) if len(fin) else None
    out.update(prediction_summary(fin))
    out["num_preemptions"] = int(records["num_preemptions"].sum())
    out["num_recomputed_tokens"] = int(records["num_recomputed_tokens"].sum())
    if bucket_edges is None:
        bucket_edges = length_bucket_edges(records["true_num_output_tokens"].to_numpy())
    out["length_bucket_edges_tokens"] = list(bucket_edges)
    bucket = assign_buckets(fin["true_num_output_tokens"].to_numpy(), bucket_edges)
    for name in BUCKETS:
        sel = fin[bucket == name]
        out[f"jct_mean_s_{name}"] = float(sel["jct_s"].mean()) if len(sel) else None
        out[f"jct_p99_s_{name}"] = float(np.percentile(sel["jct_s"], 99)) if len(sel) else None
        out[f"num_requests_{name}"] = int(len(sel))
    return out


def prediction_summary(fin: pd.DataFrame) -> dict:
    """Mean predicted vs generated tokens of finished requests (issue 9 item 5).

    ``predicted_first_mean_tokens`` (mean step-0 prediction of the whole response) beside
    ``num_output_tokens_mean`` (mean generated); when the per-step lists were recorded, also the
    mean over EVERY prediction made of the predicted and the true remaining tokens
    (``predicted_remaining_mean_tokens`` vs ``true_remaining_mean_tokens``). None when the run
    made no predictions (a policy that needs none).
    """
    first = fin["first_predicted_tokens"].to_numpy(dtype=np.float64) if len(fin) else np.zeros(0)
    first = first[np.isfinite(first)]
    out: dict = {
        "num_output_tokens_mean": float(fin["num_output_tokens"].mean()) if len(fin) else None,
        "predicted_first_mean_tokens": float(first.mean()) if first.size else None,
        "predicted_remaining_mean_tokens": None,
        "true_remaining_mean_tokens": None,
    }
    if "predicted_remaining_tokens" in fin and len(fin):
        pred = [x for lst in fin["predicted_remaining_tokens"] for x in lst]
        true = [x for lst in fin["true_remaining_tokens"] for x in lst]
        if pred and len(pred) == len(true):
            out["predicted_remaining_mean_tokens"] = float(np.mean(pred))
            out["true_remaining_mean_tokens"] = float(np.mean(true))
    return out


def assign_buckets(true_num_output_tokens: np.ndarray, edges: tuple[float, float]) -> np.ndarray:
    """'short' | 'medium' | 'long' per request (see ``length_bucket_edges``)."""
    x = np.asarray(true_num_output_tokens, dtype=np.float64)
    return np.where(x <= edges[0], "short", np.where(x <= edges[1], "medium", "long"))


def check_invariants(records: pd.DataFrame, expected_request_ids: Iterable[str] | int) -> None:
    """Fail loudly unless every request finished exactly once or failed with a reason.

    Checks: no request lost or duplicated; terminal status only; FAILED has a reason;
    FINISHED generated exactly min(true length, max_tokens) tokens (when the truth is known)
    and has finish ≥ arrival, queuing delay ≥ 0 and TTFT ≤ JCT.

    Raises:
        InvariantError: listing every violation (first 10 examples each).
    """
    problems: list[str] = []
    ids = records["request_id"]
    dup = [] if ids.is_unique else ids[ids.duplicated()].tolist()
    if dup:
        problems.append(f"{len(dup)} duplicated request ids, e.g. {dup[:10]}")
    if isinstance(expected_request_ids, int):
        if len(records) != expected_request_ids:
            problems.append(f"{len(records)} records for {expected_request_ids} requests (lost or extra)")
    else:
        expected = set(expected_request_ids)
        got = set(ids)
        lost, extra = sorted(expected - got), sorted(got - expected)
        if lost:
            problems.append(f"{len(lost)} requests lost, e.g. {lost[:10]}")
        if extra:
            problems.append(f"{len(extra)} unknown requests recorded, e.g. {extra[:10]}")
    # Column-wise boolean masks (no filtered copies of the frame: a 1M-row run checks in place).
    def some_ids(mask: np.ndarray) -> list:
        return ids[mask].head(10).tolist()

    status = records["status"]
    fin = (status == RequestStatus.FINISHED.name).to_numpy(dtype=bool)
    failed = (status == RequestStatus.FAILED.name).to_numpy(dtype=bool)
    bad = ~(fin | failed)
    if bad.any():
        problems.append(f"{int(bad.sum())} requests not terminal, e.g. {some_ids(bad)}")
    reason = records["fail_reason"]
    no_reason = failed & (reason.isna() | (reason == "")).to_numpy(dtype=bool)
    if no_reason.any():
        problems.append(f"{int(no_reason.sum())} failed requests without a reason, e.g. {some_ids(no_reason)}")
    true = records["true_num_output_tokens"].to_numpy()
    target = np.minimum(true, records["max_tokens"].to_numpy())
    wrong = fin & (true >= 0) & (records["num_output_tokens"].to_numpy() != target)
    if wrong.any():
        ex = records.loc[wrong, ["request_id", "num_output_tokens", "true_num_output_tokens", "max_tokens"]].head(10)
        problems.append(f"{int(wrong.sum())} requests generated the wrong number of tokens:\n{ex.to_string()}")
    eps = 1e-9

    def col(name: str) -> np.ndarray:
        return records[name].to_numpy(dtype=np.float64)

    jct = col("jct_s")
    for name, mask in (
        ("finish < arrival", col("finish_time_s") < col("arrival_time_s") - eps),
        ("queuing delay < 0", col("queuing_delay_s") < -eps),
        ("ttft > jct", col("ttft_s") > jct + eps),
        ("non-finite jct", ~np.isfinite(jct)),
    ):
        mask = mask & fin
        if mask.any():
            problems.append(f"{int(mask.sum())} requests with {name}, e.g. {some_ids(mask)}")
    if problems:
        raise InvariantError("run invariants violated:\n- " + "\n- ".join(problems))
