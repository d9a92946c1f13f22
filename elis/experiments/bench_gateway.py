"""Gateway benchmarks: per-window overhead against the backend alone, and the dispatch rate.

Both print figures (never asserted in tests) and take URLs, so they measure whatever runs there:

``python -m elis.experiments.bench_gateway overhead --direct URL --gateway URL [--windows 4]``
    One request at a time (no queueing), ``--num`` requests per run, runs interleaved
    A B B A … (``--reps``). Each request asks ``max_tokens = windows × W``; the backend alone
    serves it in one call, the gateway in ``windows`` calls of W tokens (each a new HTTP
    request to the backend, its prompt = prompt + tokens so far). Per request the service time
    is ``finish − send`` on the client; overhead per window =
    ``(mean service via gateway − mean service direct) / windows``, mean and 95 % interval over
    repetitions (paired by repetition index).

``python -m elis.experiments.bench_gateway dispatch --gateway URL [--num 200] [--windows 4]``
    ``--num`` requests sent at once (``--concurrency`` caps those in flight) to a gateway whose
    backend answers at once (``elis.experiments.instant_backend``): windows per second =
    Σ ceil(tokens / W) / wall time of the run, i.e. what the gateway's own loop (scheduling,
    HTTP to the backend, streaming to clients) sustains.

Both use ``api=completions`` with a text prompt of ``--prompt-chars`` characters (the instant
backend answers ``min(max_tokens, chars)`` tokens to a text prompt, so keep it ≥ windows × W).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time

import numpy as np

from elis.experiments.loadgen import Endpoint, LoadRequest, ReplayOptions, mean_interval, replay, run_order

log = logging.getLogger(__name__)


def _requests(num: int, prompt: str, arrival_gap_s: float = 0.0) -> list[LoadRequest]:
    return [LoadRequest(request_id=f"b{i:05d}", arrival_time_s=i * arrival_gap_s, prompt=prompt,
                        num_prompt_tokens=0, reference_num_output_tokens=0, seed=0) for i in range(num)]


def _service_times(df) -> np.ndarray:
    fin = df[df["status"] == "FINISHED"]
    return (fin["finish_time_s"] - fin["send_time_s"]).to_numpy(dtype=np.float64)


def overhead(direct_url: str, gateway_url: str, *, window_tokens: int = 50, windows: int = 4, num: int = 20,
             reps: int = 3, prompt_chars: int = 2000, temperature: float = 0.0) -> dict:
    """Per-window overhead of the gateway vs the backend alone (see the module docstring).

    Returns a dict with per-run mean service times, the per-window overhead in ms
    (mean, 95 % interval over repetitions) and the failures seen.
    """
    opts = ReplayOptions(api="completions", max_tokens=windows * window_tokens, max_concurrency=1,
                         sampling={"temperature": temperature}, request_timeout_s=600.0, max_duration_s=3600.0)
    prompt = ("Tell me a long story about a lighthouse keeper. " * (prompt_chars // 48 + 1))[:prompt_chars]
    eps = {"direct": Endpoint("direct", direct_url.rstrip("/")), "gateway": Endpoint("gateway", gateway_url.rstrip("/"))}
    runs: dict[str, list[dict]] = {"direct": [], "gateway": []}
    warmed: set[str] = set()
    for rep, name in run_order(list(eps), reps, "abba"):
        df, info = asyncio.run(replay(eps[name], _requests(num, prompt), opts,
                                      warmup_requests=0 if name in warmed else 1))
        warmed.add(name)
        st = _service_times(df)
        runs[name].append({"repetition": rep, "service_mean_s": float(st.mean()) if st.size else math.nan,
                           "num_finished": int(st.size),
                           "tokens_mean": float(df["num_output_tokens"].mean()),
                           "num_failed": int((df["status"] == "FAILED").sum())})
        log.info("%s rep %d: service mean %.4f s (%d finished)", name, rep, runs[name][-1]["service_mean_s"], st.size)
    per_rep = [(g["service_mean_s"] - d["service_mean_s"]) / windows * 1e3
               for d, g in zip(sorted(runs["direct"], key=lambda r: r["repetition"]),
                               sorted(runs["gateway"], key=lambda r: r["repetition"]))]
    m, lo, hi = mean_interval(per_rep)
    return {"window_tokens": window_tokens, "windows": windows, "num_requests": num, "repetitions": reps,
            "runs": runs, "overhead_ms_per_window": per_rep,
            "overhead_ms_per_window_mean": m, "overhead_ms_per_window_ci95": [lo, hi]}


def dispatch(gateway_url: str, *, window_tokens: int = 50, windows: int = 4, num: int = 200,
             concurrency: int | None = None, reps: int = 3, prompt_chars: int = 2000) -> dict:
    """Windows per second the gateway sustains in front of an instant backend."""
    opts = ReplayOptions(api="completions", max_tokens=windows * window_tokens, max_concurrency=concurrency,
                         sampling={"temperature": 0.0}, request_timeout_s=600.0, max_duration_s=3600.0)
    prompt = ("x " * prompt_chars)[:prompt_chars]
    ep = Endpoint("gateway", gateway_url.rstrip("/"))
    rows = []
    for rep in range(reps):
        t0 = time.perf_counter()
        df, info = asyncio.run(replay(ep, _requests(num, prompt), opts, warmup_requests=1 if rep == 0 else 0))
        fin = df[df["status"] == "FINISHED"]
        wall = float(fin["finish_time_s"].max()) if len(fin) else math.nan
        nwin = int(np.ceil(fin["num_output_tokens"].to_numpy() / window_tokens).sum())
        rows.append({"repetition": rep, "wall_s": wall, "num_finished": int(len(fin)), "num_windows": nwin,
                     "windows_per_s": nwin / wall if wall > 0 else math.nan,
                     "requests_per_s": len(fin) / wall if wall > 0 else math.nan,
                     "tokens_per_s": float(fin["num_output_tokens"].sum()) / wall if wall > 0 else math.nan,
                     "num_failed": int((df["status"] == "FAILED").sum()), "client_s": time.perf_counter() - t0})
        log.info("dispatch rep %d: %.1f windows/s (%d windows, %.2f s)", rep, rows[-1]["windows_per_s"], nwin, wall)
    m, lo, hi = mean_interval([r["windows_per_s"] for r in rows])
    return {"window_tokens": window_tokens, "windows": windows, "num_requests": num, "concurrency": concurrency,
            "runs": rows, "windows_per_s_mean": m, "windows_per_s_ci95": [lo, hi]}


def main(argv: list[str] | None = None) -> int:
    """CLI (see the module docstring); prints the result as JSON."""
    import argparse

    ap = argparse.ArgumentParser(description="ELIS gateway benchmarks")
    sub = ap.add_subparsers(dest="cmd", required=True)
    o = sub.add_parser("overhead")
    o.add_argument("--direct", required=True)
    o.add_argument("--gateway", required=True)
    d = sub.add_parser("dispatch")
    d.add_argument("--gateway", required=True)
    d.add_argument("--concurrency", type=int, default=None)
    for p in (o, d):
        p.add_argument("--window-tokens", type=int, default=50)
        p.add_argument("--windows", type=int, default=4)
        p.add_argument("--num", type=int, default=20)
        p.add_argument("--reps", type=int, default=3)
        p.add_argument("--prompt-chars", type=int, default=2000)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per HTTP request otherwise
    common = dict(window_tokens=a.window_tokens, windows=a.windows, num=a.num, reps=a.reps, prompt_chars=a.prompt_chars)
    res = (overhead(a.direct, a.gateway, **common) if a.cmd == "overhead"
           else dispatch(a.gateway, concurrency=a.concurrency, **common))
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
