"""Load generator: replay the project's workloads against any OpenAI-compatible endpoint.

``python -m elis.experiments.loadgen endpoints='[{name: fcfs, base_url: http://127.0.0.1:8001/v1},
{name: isrtf, base_url: http://127.0.0.1:8002/v1}]' repetitions=3`` (config: ``conf/loadgen.yaml``).

What is sent: the workload ``run_experiment.py`` builds for the same config (dataset
``split`` prompts, Gamma | Poisson | trace arrivals from ``conf/workload``, same seed → same
requests and arrival times; ``elis.experiments.run.build_table``). Request ``i`` is sent at
``arrival_time_s[i] × time_scale`` wall seconds after the run starts (open loop, as vLLM's
``benchmark_serving``; ``max_concurrency`` optionally caps requests in flight, the wait for a
slot counting in JCT) as one streaming ``POST /v1/chat/completions`` (``api=chat``: one user
turn; the dataset's answers were generated with the chat template) or ``/v1/completions``
(``api=completions``: raw prompt text), with ``stream_options.include_usage`` so the token
counts come from the server's ``usage`` record.

What is measured, per request, on the client's clock (seconds from the run's start):
``first_token_time_s`` = first SSE chunk carrying text; ``finish_time_s`` = the chunk with
``finish_reason``; JCT (vLLM: e2el) = finish − arrival; TTFT = first token − arrival;
TPOT = (finish − first token) / (tokens − 1), tokens = ``usage.completion_tokens`` (column
``num_output_tokens_source`` = 'usage') or, when the server sends no usage, the number of
text chunks ('chunks'); ``max_wait_s`` = the longest gap between arrival, the text chunks and
the finish (a stall, e.g. a preemption, as the client sees it). Not observable from the client
and written as NaN / None: ``queuing_delay_s``, ``executed_time_s``, ``num_preemptions``
(read the gateway's Prometheus counters instead: with ``scrape_metrics`` their change over
the run is saved as ``server_metrics_delta``, and ``num_preemptions`` is taken from a counter
named ``…num_preemptions_total`` when the server has one, as the ELIS gateway does, and
``server_queuing_delay_mean_s`` from a ``…request_queue_time_seconds`` histogram). ``true_num_output_tokens`` is the length this
engine generated (the run's truth; length buckets use it); the dataset answer's length is
kept as ``reference_num_output_tokens``.

Every request ends FINISHED or FAILED with a reason (HTTP status and body, error chunk,
stream cut without ``finish_reason``, ``request_timeout_s``, or ``max_duration_s`` reached
before it was sent or while in flight): a run is bounded and stops by itself.

Variants and drift: each endpoint is a variant (e.g. two gateways, ``sched=fcfs`` and
``sched=isrtf``, in front of the same engines). ``repetitions`` runs of each are interleaved
(``order``: 'abba' = A B B A A B …, cancelling a linear drift of the machine's speed; 'abab';
'blocked' = all of A first) on the identical workload. Run folder (same names as
``run_experiment.py``; ``elis.experiments.report`` reads it)::

    config.yaml  workload.parquet  comparison.{md,csv}  spread.{md,csv}
    variants/<name>/{requests.parquet, metrics.json, variant.json}    all repetitions pooled
    variants/<name>/reps/<k>/{requests.parquet, metrics.json}         one repetition

``spread.md``: per variant and headline metric the mean over repetitions with a 95 %
Student-t interval, and the paired difference to the first variant (same repetition index)
with its interval and whether 0 lies inside it (then the difference is not a result).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

APIS = ("chat", "completions")
ORDERS = ("abba", "abab", "blocked")
SPREAD_METRICS: tuple[str, ...] = (
    "jct_mean_s", "jct_p50_s", "jct_p99_s", "ttft_mean_s", "ttft_p99_s", "tpot_mean_s",
    "max_wait_s", "request_throughput_rps", "output_throughput_tok_s",
)
# client-side records: RequestRecorder's scalar columns + the loadgen's own
COLUMNS: tuple[str, ...] = (
    "request_id", "worker_id", "status", "finish_reason", "fail_reason", "generator",
    "arrival_time_s", "send_time_s", "first_token_time_s", "finish_time_s", "jct_s",
    "queuing_delay_s", "executed_time_s", "max_wait_s", "ttft_s", "tpot_s", "num_prompt_tokens",
    "num_output_tokens", "true_num_output_tokens", "max_tokens", "num_preemptions",
    "num_recomputed_tokens", "first_predicted_tokens", "reference_num_output_tokens",
    "num_chunks", "num_output_tokens_source", "output_text", "output_token_ids", "prompt",
)


@dataclass(slots=True, frozen=True)
class Endpoint:
    """One variant: an OpenAI-compatible server at ``base_url`` (ending in ``/v1``).

    ``model`` None → the first id of ``GET /v1/models``. ``policy``/``mode`` only label the
    variant in reports (what the gateway behind the URL runs); they change nothing sent.
    """

    name: str
    base_url: str
    model: str | None = None
    policy: str | None = None
    mode: str | None = None


@dataclass(slots=True, frozen=True)
class LoadRequest:
    """One request of the workload (times in workload seconds, before ``time_scale``)."""

    request_id: str
    arrival_time_s: float
    prompt: str
    num_prompt_tokens: int
    reference_num_output_tokens: int
    generator: str | None = None
    seed: int | None = None


@dataclass(slots=True)
class ReplayOptions:
    """How requests are sent (see the module docstring). ``sampling``: temperature, top_p."""

    api: str = "chat"
    max_tokens: int = 256
    sampling: dict = field(default_factory=dict)
    stop: list[str] | None = None
    time_scale: float = 1.0
    max_concurrency: int | None = None
    request_timeout_s: float = 600.0
    max_duration_s: float = 3600.0
    include_usage: bool = True
    return_token_ids: bool = False

    def __post_init__(self) -> None:
        if self.api not in APIS:
            raise ValueError(f"api={self.api!r} is not one of {list(APIS)}")
        for name in ("max_tokens",):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        for name in ("time_scale", "request_timeout_s", "max_duration_s"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
        if self.max_concurrency is not None and (not isinstance(self.max_concurrency, int)
                                                 or self.max_concurrency < 1):
            raise ValueError(f"max_concurrency must be null or an int >= 1, got {self.max_concurrency!r}")


# ---------------------------------------------------------------------- one request
def request_body(api: str, model: str, req: LoadRequest, opts: ReplayOptions) -> dict:
    """The JSON body of one streaming request (OpenAI API: completions or chat)."""
    body: dict = {"model": model, "max_tokens": int(opts.max_tokens), "stream": True}
    if api == "chat":
        body["messages"] = [{"role": "user", "content": req.prompt}]
    else:
        body["prompt"] = req.prompt
    for k in ("temperature", "top_p"):
        if opts.sampling.get(k) is not None:
            body[k] = float(opts.sampling[k])
    if req.seed is not None:
        body["seed"] = int(req.seed)
    if opts.stop:
        body["stop"] = list(opts.stop)
    if opts.include_usage:
        body["stream_options"] = {"include_usage": True}
    if opts.return_token_ids:
        body["return_token_ids"] = True
    return body


def _chunk_text(api: str, choice: dict) -> str:
    if api == "chat":
        return (choice.get("delta") or {}).get("content") or ""
    return choice.get("text") or ""


class _Stream:
    """Accumulates one SSE response (times in run seconds)."""

    __slots__ = ("api", "times", "parts", "ids", "finish_reason", "finish_s", "usage", "error")

    def __init__(self, api: str) -> None:
        self.api = api
        self.times: list[float] = []  # arrival of each text chunk
        self.finish_s: float | None = None  # arrival of the chunk carrying finish_reason
        self.parts: list[str] = []
        self.ids: list[int] = []  # choices[].token_ids (vLLM's / the ELIS gateway's return_token_ids)
        self.finish_reason: str | None = None
        self.usage: dict | None = None
        self.error: str | None = None

    def feed(self, line: str, now_s: float) -> bool:
        """Consume one SSE line; True at ``data: [DONE]``."""
        if not line.startswith("data:"):
            return False
        data = line[5:].strip()
        if data == "[DONE]":
            return True
        try:
            obj = json.loads(data)
        except json.JSONDecodeError:
            self.error = f"unparsable SSE data: {data[:200]!r}"
            return True
        if obj.get("error"):
            self.error = f"error chunk: {json.dumps(obj['error'])[:300]}"
            return True
        for ch in obj.get("choices") or []:
            piece = _chunk_text(self.api, ch)
            if piece:
                self.times.append(now_s)
                self.parts.append(piece)
            self.ids.extend(int(t) for t in ch.get("token_ids") or [])
            if ch.get("finish_reason") and self.finish_reason is None:
                self.finish_reason = str(ch["finish_reason"])
                self.finish_s = now_s
        if obj.get("usage"):
            self.usage = obj["usage"]
        return False


def _row(req: LoadRequest, arrival_s: float, opts: ReplayOptions) -> dict:
    nan = math.nan
    row = {c: nan for c in COLUMNS}
    row.update(request_id=req.request_id, worker_id=-1, status="FAILED", finish_reason=None,
               fail_reason=None, generator=req.generator, arrival_time_s=arrival_s,
               num_prompt_tokens=int(req.num_prompt_tokens), num_output_tokens=0,
               true_num_output_tokens=-1, max_tokens=int(opts.max_tokens),
               reference_num_output_tokens=int(req.reference_num_output_tokens), num_chunks=0,
               num_output_tokens_source=None, output_text="", output_token_ids=[], prompt=req.prompt)
    return row


def _finish_row(row: dict, s: _Stream, finish_s: float) -> dict:
    """Fill the timing and count columns from a complete stream."""
    text_times = s.times
    n = int(s.usage["completion_tokens"]) if s.usage and "completion_tokens" in s.usage else len(s.parts)
    arrival = row["arrival_time_s"]
    first = text_times[0] if text_times else math.nan
    marks = [arrival, *text_times, finish_s]
    row.update(
        status="FINISHED", finish_reason=s.finish_reason, finish_time_s=finish_s,
        first_token_time_s=first, jct_s=finish_s - arrival,
        ttft_s=first - arrival if text_times else math.nan,
        tpot_s=(finish_s - first) / (n - 1) if n >= 2 and text_times else math.nan,
        max_wait_s=float(np.max(np.diff(marks))), num_output_tokens=n, true_num_output_tokens=n,
        num_chunks=len(s.parts), output_text="".join(s.parts), output_token_ids=list(s.ids),
        num_output_tokens_source="usage" if s.usage and "completion_tokens" in s.usage else "chunks",
    )
    if s.usage and s.usage.get("prompt_tokens") is not None:
        row["num_prompt_tokens"] = int(s.usage["prompt_tokens"])
    return row


async def stream_one(client, url: str, body: dict, req: LoadRequest, opts: ReplayOptions,
                     t0: float, deadline_s: float, slots: asyncio.Semaphore | None) -> dict:
    """Send ``req`` at its arrival time and read its stream; return its record (a dict).

    Never raises for a server-side fault: HTTP errors, error chunks, cut streams and timeouts
    become ``status='FAILED'`` with ``fail_reason``.
    """
    arrival = float(req.arrival_time_s) * opts.time_scale
    row = _row(req, arrival, opts)
    if arrival >= deadline_s:
        row["fail_reason"] = f"not sent: max_duration_s={opts.max_duration_s:g} reached before its arrival"
        return row
    await asyncio.sleep(max(t0 + arrival - time.perf_counter(), 0.0))
    s = _Stream(opts.api)
    budget = min(opts.request_timeout_s, deadline_s - (time.perf_counter() - t0))
    try:
        async with asyncio.timeout(max(budget, 0.0)):
            if slots is not None:
                await slots.acquire()
            try:
                row["send_time_s"] = time.perf_counter() - t0
                async with client.stream("POST", url, json=body) as resp:
                    if resp.status_code != 200:
                        text = (await resp.aread()).decode("utf-8", "replace")
                        row["fail_reason"] = f"HTTP {resp.status_code}: {text[:500]}"
                        return row
                    async for line in resp.aiter_lines():
                        if s.feed(line, time.perf_counter() - t0):
                            break
            finally:
                if slots is not None:
                    slots.release()
    except TimeoutError:
        which = ("request_timeout_s" if opts.request_timeout_s <= deadline_s - arrival else "max_duration_s")
        row["fail_reason"] = f"timed out: {which}={getattr(opts, which):g} reached in flight"
        return row
    except Exception as e:  # connection refused/reset, protocol errors: this request fails alone
        row["fail_reason"] = f"{type(e).__name__}: {e}"[:500]
        return row
    if s.error:
        row["fail_reason"] = s.error
        return row
    if s.finish_reason is None:
        row["fail_reason"] = "stream ended without a finish_reason"
        return row
    return _finish_row(row, s, s.finish_s)


# ---------------------------------------------------------------------- one run
async def _resolve_model(client, ep: Endpoint) -> str:
    if ep.model:
        return ep.model
    import httpx

    try:
        r = await client.get(f"{ep.base_url}/models")
    except httpx.TransportError as e:
        raise ValueError(f"endpoints[{ep.name}].base_url={ep.base_url!r} is not reachable "
                         f"({type(e).__name__}: {e})") from e
    if r.status_code != 200:
        raise ValueError(f"endpoints[{ep.name}]: GET {ep.base_url}/models answered HTTP {r.status_code}; "
                         "is base_url an OpenAI-compatible server (ending in /v1)?")
    data = r.json().get("data") or []
    if not data:
        raise ValueError(f"endpoints[{ep.name}].model is null and {ep.base_url}/models lists no model")
    return str(data[0]["id"])


async def scrape_counters(client, base_url: str) -> dict[str, float] | None:
    """Prometheus samples of ``<server>/metrics`` (``base_url`` minus ``/v1``) as ``{name{labels}: value}``;
    None when the server has no such page."""
    from prometheus_client.parser import text_string_to_metric_families

    root = base_url[: -len("/v1")] if base_url.rstrip("/").endswith("/v1") else base_url
    try:
        r = await client.get(f"{root.rstrip('/')}/metrics")
    except Exception as e:
        log.info("no /metrics at %s (%s)", root, type(e).__name__)
        return None
    if r.status_code != 200:
        return None
    out = {}
    for fam in text_string_to_metric_families(r.text):
        for smp in fam.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(smp.labels.items()))
            out[f"{smp.name}{{{labels}}}" if labels else smp.name] = float(smp.value)
    return out


async def replay(ep: Endpoint, requests: list[LoadRequest], opts: ReplayOptions, *,
                 warmup_requests: int = 0, scrape_metrics: bool = False) -> tuple[pd.DataFrame, dict]:
    """Send every request of ``requests`` to ``ep`` on its arrival schedule; wait for all.

    Returns ``(records, info)``: one row per request (``COLUMNS``) and a dict with
    ``model``, ``wall_s``, ``send_lag_max_s`` (how late the generator sent its latest request:
    large values mean the client, not the server, limited the load) and, with
    ``scrape_metrics``, ``server_metrics_delta`` (counters' change over the run).

    Raises:
        ValueError / httpx errors: the endpoint is unreachable or a warm-up request fails
            (a run against a dead endpoint stops at once instead of recording N failures).
    """
    import httpx

    limits = httpx.Limits(max_connections=opts.max_concurrency or max(len(requests), 1),
                          max_keepalive_connections=opts.max_concurrency or max(len(requests), 1))
    async with httpx.AsyncClient(timeout=httpx.Timeout(None, connect=30.0), limits=limits) as client:
        model = await _resolve_model(client, ep)
        path = "/chat/completions" if opts.api == "chat" else "/completions"
        url = f"{ep.base_url.rstrip('/')}{path}"
        for w in range(min(warmup_requests, len(requests))):
            body = request_body(opts.api, model, requests[w], opts) | {"max_tokens": 8}
            async with client.stream("POST", url, json=body) as resp:
                if resp.status_code != 200:
                    raise ValueError(f"endpoints[{ep.name}] warm-up request failed: HTTP {resp.status_code} "
                                     f"{(await resp.aread()).decode('utf-8', 'replace')[:300]}")
                async for _ in resp.aiter_lines():
                    pass
        before = await scrape_counters(client, ep.base_url) if scrape_metrics else None
        slots = asyncio.Semaphore(opts.max_concurrency) if opts.max_concurrency else None
        t0 = time.perf_counter()
        deadline = float(opts.max_duration_s)
        rows = await asyncio.gather(*(
            stream_one(client, url, request_body(opts.api, model, r, opts), r, opts, t0, deadline, slots)
            for r in requests
        ))
        wall = time.perf_counter() - t0
        after = await scrape_counters(client, ep.base_url) if scrape_metrics else None
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    lag = (df["send_time_s"] - df["arrival_time_s"]).dropna()
    info: dict = {"model": model, "wall_s": wall, "send_lag_max_s": float(lag.max()) if len(lag) else None}
    if before is not None and after is not None:
        info["server_metrics_delta"] = {k: after[k] - before.get(k, 0.0) for k in after
                                        if k.split("{")[0].endswith(("_total", "_count", "_sum"))}
    return df, info


def server_count(delta: dict | None, suffix: str) -> int | None:
    """Sum of the scraped counter changes whose name ends with ``suffix`` (e.g. the ELIS
    gateway's ``elis:num_preemptions_total``); None when the server exposes none."""
    if not delta:
        return None
    vals = [v for k, v in delta.items() if k.split("{")[0].endswith(suffix)]
    return int(round(sum(vals))) if vals else None


def server_mean(delta: dict | None, histogram: str) -> float | None:
    """``sum / count`` of a scraped histogram's change (e.g. ``…request_queue_time_seconds``, which
    the ELIS gateway and vLLM both export); None when absent or empty."""
    if not delta:
        return None
    tot = {suf: sum(v for k, v in delta.items() if k.split("{")[0].endswith(f"{histogram}{suf}"))
           for suf in ("_sum", "_count")}
    return tot["_sum"] / tot["_count"] if tot["_count"] else None


def summarize_replay(records: pd.DataFrame) -> dict:
    """``elis.serving.metrics.summarize`` of client records, with the client-invisible counts as None.

    Length buckets: terciles of the generated lengths of FINISHED requests.
    """
    from elis.serving.metrics import length_bucket_edges, summarize

    fin = records[records["status"] == "FINISHED"]
    m = summarize(records, bucket_edges=length_bucket_edges(fin["num_output_tokens"].to_numpy()))
    m["num_preemptions"] = None
    m["num_recomputed_tokens"] = None
    m["num_output_tokens_from_usage"] = int((fin["num_output_tokens_source"] == "usage").sum())
    reasons = records.loc[records["status"] == "FAILED", "fail_reason"].astype(str)
    m["fail_reasons"] = {k[:120]: int(v) for k, v in reasons.str.slice(0, 120).value_counts().items()}
    return m


# ---------------------------------------------------------------------- variants and spread
def run_order(names: list[str], repetitions: int, order: str = "abba") -> list[tuple[int, str]]:
    """``[(repetition, variant)]`` in the order they run.

    'abab': A B A B …; 'abba': even repetitions forward, odd ones reversed (A B B A A B …),
    so a linear drift of the machine's speed adds the same amount to every variant over each
    pair of repetitions; 'blocked': every repetition of A, then of B (drift not cancelled).

    Raises:
        ValueError: unknown ``order`` (lists valid ones), ``repetitions`` < 1 or duplicate names.
    """
    if order not in ORDERS:
        raise ValueError(f"order={order!r} is not one of {list(ORDERS)}")
    if isinstance(repetitions, bool) or not isinstance(repetitions, int) or repetitions < 1:
        raise ValueError(f"repetitions must be an int >= 1, got {repetitions!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"endpoints have duplicate names: {names}")
    if order == "blocked":
        return [(r, n) for n in names for r in range(repetitions)]
    return [(r, n) for r in range(repetitions)
            for n in (names if order == "abab" or r % 2 == 0 else names[::-1])]


def mean_interval(values, confidence: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)``: Student-t interval of the mean; ``low = high = mean`` for one value.

    NaN/None values are dropped; all dropped → (nan, nan, nan).
    """
    from scipy import stats

    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    if x.size == 0:
        return (math.nan, math.nan, math.nan)
    m = float(x.mean())
    if x.size == 1:
        return (m, m, m)
    half = float(stats.t.ppf(0.5 + confidence / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return (m, m - half, m + half)


def spread_frame(per_rep: dict[str, list[dict]], metrics: tuple[str, ...] = SPREAD_METRICS) -> pd.DataFrame:
    """One row per (variant, metric): mean and 95 % interval over repetitions, and the paired
    difference to the first variant (repetitions matched by index) with its interval and
    ``inside_spread`` = the interval contains 0 (None with fewer than 2 pairs)."""
    names = list(per_rep)
    base = per_rep[names[0]]
    rows = []
    for name in names:
        for m in metrics:
            vals = [r.get(m) for r in per_rep[name]]
            mean, lo, hi = mean_interval(vals)
            row = {"variant": name, "metric": m, "num_repetitions": len(vals), "mean": mean, "ci95_low": lo,
                   "ci95_high": hi}
            if name != names[0]:
                diffs = [a.get(m) - b.get(m) for a, b in zip(per_rep[name], base)
                         if a.get(m) is not None and b.get(m) is not None]
                dm, dlo, dhi = mean_interval(diffs)
                row.update(diff_vs=names[0], diff_mean=dm, diff_ci95_low=dlo, diff_ci95_high=dhi,
                           inside_spread=(bool(dlo <= 0 <= dhi) if len(diffs) >= 2 else None))
            rows.append(row)
    return pd.DataFrame(rows)


def spread_markdown(df: pd.DataFrame) -> str:
    """The spread table as Markdown (values to 3 decimals)."""
    f = lambda v: "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.3f}"  # noqa: E731
    lines = ["| variant | metric | reps | mean [95% CI] | diff vs base [95% CI] | 0 inside? |",
             "|---|---|---|---|---|---|"]
    for _, r in df.iterrows():
        diff = (f"{f(r['diff_mean'])} [{f(r['diff_ci95_low'])}, {f(r['diff_ci95_high'])}]"
                if isinstance(r.get("diff_vs"), str) else "(base)")
        inside = r.get("inside_spread")
        inside_s = "n/a" if inside is None or (isinstance(inside, float) and math.isnan(inside)) else (
            "yes: not a result" if inside else "no")
        lines.append(f"| {r['variant']} | {r['metric']} | {r['num_repetitions']} | "
                     f"{f(r['mean'])} [{f(r['ci95_low'])}, {f(r['ci95_high'])}] | {diff} | {inside_s} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- entry
def build_requests(cfg) -> tuple[list[LoadRequest], pd.DataFrame]:
    """The workload of ``run_experiment.py`` for ``cfg`` as ``LoadRequest``s (+ workload.parquet rows).

    Raises:
        ValueError: the workload has no prompt text (``workload.use_trace_lengths=true``).
    """
    from elis.experiments.run import build_table
    from elis.rng import make_rng

    table, wl = build_table(cfg)
    if table.prompts is None:
        raise ValueError("workload.use_trace_lengths=true gives token counts without prompt text; the load "
                         "generator sends text: set workload.use_trace_lengths=false (trace arrivals, dataset prompts)")
    seed = cfg.get("sampling", {}).get("seed")
    out = []
    for i, rid in enumerate(wl["request_id"]):
        out.append(LoadRequest(
            request_id=str(rid), arrival_time_s=float(wl["arrival_time_s"].iloc[i]), prompt=table.prompts[i],
            num_prompt_tokens=int(wl["num_prompt_tokens"].iloc[i]),
            reference_num_output_tokens=int(wl["num_output_tokens"].iloc[i]),
            generator=table.generators[i] if table.generators else None,
            seed=None if seed is None else int(make_rng(int(seed), f"loadgen/sampling/{rid}").integers(0, 2**31 - 1)),
        ))
    return out, wl


def parse_endpoints(raw) -> list[Endpoint]:
    """``cfg.endpoints`` (a list of dicts) → ``Endpoint``s. Raises ValueError naming the bad entry."""
    eps = []
    valid = {"name", "base_url", "model", "policy", "mode"}
    for i, e in enumerate(raw or []):
        e = dict(e)
        unknown = sorted(set(e) - valid)
        if unknown or not e.get("name") or not e.get("base_url"):
            raise ValueError(f"endpoints[{i}]={e!r}: needs name and base_url; valid keys: {sorted(valid)}")
        if not str(e["base_url"]).startswith(("http://", "https://")):
            raise ValueError(f"endpoints[{i}].base_url={e['base_url']!r} must start with http:// or https://")
        eps.append(Endpoint(**{**e, "base_url": str(e["base_url"]).rstrip("/")}))
    if not eps:
        raise ValueError("endpoints is empty: give at least one {name, base_url}")
    return eps


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _write(d: Path, records: pd.DataFrame, metrics: dict) -> None:
    d.mkdir(parents=True, exist_ok=True)
    records.to_parquet(d / "requests.parquet", index=False)
    (d / "metrics.json").write_text(json.dumps(metrics, indent=2, default=_json_default))


def run(cfg) -> dict:
    """Replay ``cfg``'s workload on every endpoint, ``cfg.repetitions`` times, interleaved.

    Returns ``{variant_name: pooled metrics}`` plus ``output_dir`` and ``spread`` (records of
    ``spread_frame``). See the module docstring for the run folder.
    """
    from omegaconf import OmegaConf

    from elis.experiments.report import write_comparison

    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    endpoints = parse_endpoints(OmegaConf.to_container(cfg.endpoints, resolve=True))
    sampling = OmegaConf.to_container(cfg.sampling, resolve=True) if cfg.get("sampling") else {}
    opts = ReplayOptions(
        api=cfg.api, max_tokens=int(cfg.max_tokens), sampling=sampling,
        stop=list(cfg.stop) if cfg.get("stop") else None, time_scale=float(cfg.time_scale),
        max_concurrency=cfg.get("max_concurrency"), request_timeout_s=float(cfg.request_timeout_s),
        max_duration_s=float(cfg.max_duration_s), include_usage=bool(cfg.include_usage),
        return_token_ids=bool(cfg.get("return_token_ids", False)),
    )
    requests, wl = build_requests(cfg)
    wl.to_parquet(out_dir / "workload.parquet", index=False)
    by_name = {e.name: e for e in endpoints}
    per_rep: dict[str, list[dict]] = {e.name: [] for e in endpoints}
    records: dict[str, list[pd.DataFrame]] = {e.name: [] for e in endpoints}
    warmed: set[str] = set()
    plan = run_order(list(by_name), int(cfg.repetitions), str(cfg.order))
    for k, (rep, name) in enumerate(plan):
        ep = by_name[name]
        log.info("run %d/%d: %s (repetition %d) → %s", k + 1, len(plan), name, rep, ep.base_url)
        df, info = asyncio.run(replay(ep, requests, opts, scrape_metrics=bool(cfg.scrape_metrics),
                                      warmup_requests=0 if name in warmed else int(cfg.warmup_requests)))
        warmed.add(name)
        m = summarize_replay(df) | info | {"repetition": rep, "run_index": k}
        m["num_preemptions"] = server_count(info.get("server_metrics_delta"), "num_preemptions_total")
        m["server_queuing_delay_mean_s"] = server_mean(info.get("server_metrics_delta"), "request_queue_time_seconds")
        _write(out_dir / "variants" / name / "reps" / str(rep), df, m)
        per_rep[name].append(m)
        records[name].append(df.assign(repetition=rep))
        log.info("%s rep %d: jct_mean_s=%s ttft_mean_s=%s finished %d/%d", name, rep, m.get("jct_mean_s"),
                 m.get("ttft_mean_s"), m["num_finished"], m["num_requests"])
    spread = spread_frame(per_rep)
    spread.to_csv(out_dir / "spread.csv", index=False)
    (out_dir / "spread.md").write_text(spread_markdown(spread))
    results: dict = {"output_dir": str(out_dir), "spread": spread.to_dict("records")}
    for name, ep in by_name.items():
        pooled = pd.concat(records[name], ignore_index=True)
        m = summarize_replay(pooled)
        m["num_repetitions"] = len(per_rep[name])
        counts = [r["num_preemptions"] for r in per_rep[name]]
        m["num_preemptions"] = None if any(c is None for c in counts) else int(sum(counts))
        m["repetitions"] = {s: [r.get(s) for r in per_rep[name]] for s in SPREAD_METRICS}
        m["variant"] = {"policy": ep.policy, "mode": ep.mode, "base_url": ep.base_url}
        vdir = out_dir / "variants" / name
        _write(vdir, pooled, m)
        (vdir / "variant.json").write_text(json.dumps(
            {"name": name, "policy": ep.policy or name, "mode": ep.mode or "windowed", "base_url": ep.base_url}))
        results[name] = m
    write_comparison(out_dir)
    return results


def _task(cfg) -> None:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per HTTP request otherwise
    res = run(cfg)
    print(f"run directory: {res.pop('output_dir')}")
    res.pop("spread")
    for name, m in res.items():
        print(f"{name:20s} finished {m['num_finished']}/{m['num_requests']} jct_mean_s={m['jct_mean_s']} "
              f"ttft_mean_s={m['ttft_mean_s']} tpot_mean_s={m['tpot_mean_s']}")
    print(Path(cfg.paths.output_dir, "spread.md").read_text())


def main() -> None:
    """Hydra entry: ``python -m elis.experiments.loadgen [overrides]`` (``conf/loadgen.yaml``);
    strict keys and one-line user errors as the other entry points (``elis.cli``)."""
    import hydra

    from elis.cli import precheck, prepare_environment, run_entry
    from elis.config import CONFIG_DIR, register_resolvers

    prepare_environment()
    register_resolvers()
    precheck("loadgen")

    @hydra.main(config_path=str(CONFIG_DIR), config_name="loadgen", version_base="1.3")
    def _main(cfg) -> None:
        run_entry(_task, cfg, "loadgen")

    _main()


if __name__ == "__main__":
    main()
