"""Simulator benchmarks and the paper's scalability experiment (``make bench``).

    python -m elis.serving.bench                    # speed/memory grid + decision overhead
    python -m elis.serving.bench speed --sizes 1000 10000 --workers 1 8 50
    python -m elis.serving.bench overhead --buffer 10 100 1000 10000 100000
    python -m elis.serving.bench scalability --workers 10 20 30 40 50 --profile h100_llama2_13b --seeds 0 1 2

speed: simulated requests per wall-clock second and peak RSS (each size in a fresh
subprocess, ``resource.getrusage`` max RSS), ISRTF windowed, batch 4, W = 50, oracle predictor,
A100 profile, Poisson arrivals at 60% of the estimated capacity, lengths drawn from the
alpaca_eval test split when built (``data/alpaca_eval``) else log-normal (median 200 tokens).
overhead: µs per ``schedule`` + ``update`` decision against the number of waiting requests.
scalability (arXiv 2505.09142 §5.4: ELIS sustains 18.77 req/s on 50 H100 workers): for each
worker count, the highest Poisson rate whose mean queuing delay stays below 0.5 s (bisection).
Every simulation runs through ``elis.experiments.run.simulate`` (the fast path when supported,
``run_sim(path=...)`` to force one); ``elis.serving.bench_scale`` is the 1M-request benchmark.
Figures are printed; nothing here is asserted.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from elis.config import CONFIG_DIR, PROJECT_ROOT
from elis.rng import make_rng

log = logging.getLogger(__name__)

A100 = "a100_llama2_13b"


def load_cost_model(profile: str):
    """The ``CostModel`` of ``conf/cost_model/<profile>.yaml``."""
    import hydra.utils
    from omegaconf import OmegaConf

    return hydra.utils.instantiate(OmegaConf.load(CONFIG_DIR / "cost_model" / f"{profile}.yaml"))


def sample_lengths(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """``(num_prompt_tokens, num_output_tokens, source)`` for ``n`` synthetic requests."""
    rng = make_rng(seed, "bench/lengths")
    pairs = PROJECT_ROOT / "data" / "alpaca_eval" / "pairs"
    if pairs.exists():
        p, o = _test_split_lengths(str(pairs))
        idx = rng.integers(0, len(p), n)
        return p[idx], o[idx], "alpaca_eval test split"
    log.warning(
        "data/alpaca_eval is not built: using SYNTHETIC log-normal request lengths "
        "(build the real ones with `python build_dataset.py data=alpaca_eval`)"
    )
    o = np.clip(rng.lognormal(np.log(200), 0.8, n), 1, None).astype(np.int64)
    p = np.clip(rng.lognormal(np.log(150), 0.7, n), 1, None).astype(np.int64)
    return p, o, "log-normal"


@functools.lru_cache(maxsize=2)
def _test_split_lengths(pairs_dir: str) -> tuple[np.ndarray, np.ndarray]:
    """The test split's (prompt, output) token counts, read once per process (every bisection
    probe draws from them)."""
    import datasets

    test = datasets.load_from_disk(pairs_dir)["test"]
    return np.asarray(test["num_prompt_tokens"]), np.asarray(test["num_output_tokens"])


def make_table(n: int, rate_rps: float, max_tokens: int = 1024, seed: int = 0):
    from elis.serving.simulator import RequestTable

    p, o, _ = sample_lengths(n, seed)
    arrivals = np.cumsum(make_rng(seed, "bench/arrivals").exponential(1.0 / rate_rps, n))
    return RequestTable(arrivals, p, o, max_tokens=max_tokens)


def capacity_rps(cost_model, mean_output_tokens: float, batch: int = 4) -> float:
    """Rough per-worker capacity: ``batch`` requests per (output tokens × decode step at full batch)."""
    step = cost_model.decode_step_time_s(batch, batch * 600)
    return batch / (mean_output_tokens * step)


def run_sim(table, num_workers: int, cost_model, policy: str = "isrtf", mode: str = "windowed",
            predictor: str = "oracle", seed: int = 0, path: str = "auto"):
    """Simulate ``table``; returns the ``SimResult`` (records without interval lists).

    ``path``: 'auto' | 'general' | 'fast' (see ``elis.serving.runtime.simulate``).
    """
    from elis.serving.runtime import simulate
    from elis.predictor.simple import NoisyOraclePredictor, OraclePredictor
    from elis.serving.load_balancer import LeastPredictedTokens
    from elis.serving.prediction import PredictionService

    pred = OraclePredictor() if predictor == "oracle" else NoisyOraclePredictor(0.5, seed)
    service = PredictionService(pred, cost_model, window_tokens=50)
    return simulate(
        table, {"policy": policy, "mode": mode, "preemption": True}, num_workers=num_workers,
        max_batch_size=4, window_tokens=50, cost_model=cost_model, load_balancer=LeastPredictedTokens(),
        prediction=service, record_intervals=False, **({} if path == "auto" else {"path": path}),
    )


# ---------------------------------------------------------------------- speed
def speed_one(n: int, workers: int, mode: str) -> dict:
    """One speed point in THIS process (called in a subprocess by ``speed``)."""
    cm = load_cost_model(A100)
    _, o, source = sample_lengths(min(n, 10_000))
    rate = 0.6 * workers * capacity_rps(cm, float(np.mean(np.minimum(o, 1024))))
    table = make_table(n, rate)
    t0 = time.perf_counter()
    res = run_sim(table, workers, cm, mode=mode)
    wall = time.perf_counter() - t0
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "num_requests": n, "num_workers": workers, "mode": mode, "rate_rps": rate, "wall_s": wall,
        "sim_requests_per_wall_s": n / wall, "peak_rss_mib": rss_mib, "num_events": res.counters["num_events"],
        "peak_active_requests": res.counters["peak_active_requests"], "jct_mean_s": float(res.records["jct_s"].mean()),
        "lengths": source,
    }


def speed(sizes: list[int], workers: list[int], mode: str, timeout_s: float) -> list[dict]:
    """Each (size, workers) point in a fresh subprocess; prints a table row per point."""
    rows = []
    print(f"{'requests':>9} {'workers':>7} {'mode':>10} {'wall_s':>8} {'req/wall-s':>10} {'peak MiB':>9} {'peak active':>11}")
    for n in sizes:
        for w in workers:
            cmd = [sys.executable, "-m", "elis.serving.bench", "_one", str(n), str(w), mode]
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=True)
            except subprocess.TimeoutExpired:
                print(f"{n:>9} {w:>7} {mode:>10}  > {timeout_s:.0f} s (timed out)")
                continue
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"{n:>9} {w:>7} {mode:>10} {row['wall_s']:>8.1f} {row['sim_requests_per_wall_s']:>10.0f} "
                  f"{row['peak_rss_mib']:>9.0f} {row['peak_active_requests']:>11}", flush=True)
    return rows


# ---------------------------------------------------------------------- overhead
def decision_overhead(buffer_lengths: list[int], num_decisions: int = 2000, policy: str = "isrtf") -> list[dict]:
    """µs per ``schedule`` + ``update`` decision with ``L`` waiting requests (batch 4 at a boundary)."""
    from elis.predictor.simple import OraclePredictor
    from elis.serving.policy import SchedulingPolicy
    from elis.serving.prediction import PredictionService
    from elis.serving.request import Request
    from elis.serving.scheduler import Scheduler
    from elis.serving.workers.base import WindowResult

    rows = []
    print(f"{'waiting':>8} {'us/decision':>12}")
    for L in buffer_lengths:
        rng = make_rng(0, f"bench/overhead/{L}")
        lengths = rng.integers(1_000, 100_000, L + 4)
        s = Scheduler(0, SchedulingPolicy(policy), max_batch_size=4, window_tokens=50,
                      predictor=PredictionService(OraclePredictor(), latency_source="zero"))
        for i, k in enumerate(lengths):
            s.add_request(Request(f"r{i}", "", 0.0, 10, 10**6, true_num_output_tokens=int(k)), 0.0)
        t0 = time.perf_counter()
        for d in range(num_decisions):
            out = s.schedule(float(d))
            res = [WindowResult(it.request_id, it.max_new_tokens, start_s=float(d), end_s=d + 1.0)
                   for it in out.batch.items]
            s.update(out, res, d + 1.0)
        us = (time.perf_counter() - t0) / num_decisions * 1e6
        rows.append({"num_waiting": L, "us_per_decision": us})
        print(f"{L:>8} {us:>12.1f}", flush=True)
    return rows


# ---------------------------------------------------------------------- scalability
def max_rate_under_delay(num_workers: int, cost_model, target_s: float = 0.5, requests_per_worker: int = 100,
                         policy: str = "isrtf", mode: str = "windowed", predictor: str = "noisy_oracle",
                         iterations: int = 8, seed: int = 0) -> dict:
    """Highest Poisson rate (req/s) with mean queuing delay < ``target_s`` (bisection on rate).

    Each probe simulates ``requests_per_worker × num_workers`` requests; the bracket starts at
    the rough capacity estimate and doubles/halves until it straddles the target.
    """
    n = requests_per_worker * num_workers
    _, o, lengths = sample_lengths(min(n, 10_000), seed)
    guess = num_workers * capacity_rps(cost_model, float(np.mean(np.minimum(o, 1024))))

    def delay(rate: float) -> float:
        res = run_sim(make_table(n, rate, seed=seed), num_workers, cost_model, policy, mode, predictor, seed)
        return float(res.records["queuing_delay_s"].mean())

    lo, hi = guess / 2, guess
    while delay(lo) >= target_s and lo > 1e-3:
        lo /= 2
    while delay(hi) < target_s:
        lo, hi = hi, hi * 2
    for _ in range(iterations):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if delay(mid) < target_s else (lo, mid)
    return {"num_workers": num_workers, "max_rate_rps": lo, "queuing_delay_mean_s_at_rate": delay(lo),
            "num_requests_per_probe": n, "policy": policy, "mode": mode, "predictor": predictor,
            "lengths": lengths}


def scalability(workers: list[int], profile: str, seeds: list[int] | None = None,
                policies: list[str] | None = None, **kw) -> list[dict]:
    """One row per (workers, policy, seed): ``max_rate_under_delay`` with that seed's lengths,
    arrivals and predictor noise (``seeds`` default [0]; figures average rows over seeds).

    Raises:
        ValueError: an empty or duplicated ``seeds`` list.
    """
    seeds = [0] if seeds is None else [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be a non-empty list of distinct integers, got {seeds}")
    cm = load_cost_model(profile)
    rows = []
    print(f"profile {profile}: highest rate with mean queuing delay < 0.5 s; "
          f"request lengths: {sample_lengths(1)[2]}; seeds {seeds}")
    print(f"{'workers':>7} {'policy':>14} {'seed':>4} {'max req/s':>10} {'delay_s':>8} {'wall_s':>7}")
    for w in workers:
        for policy in policies or ["fcfs", "isrtf"]:
            for seed in seeds:
                t0 = time.perf_counter()
                row = max_rate_under_delay(w, cm, policy=policy, seed=seed, **kw)
                row["seed"] = seed
                row["wall_s"] = time.perf_counter() - t0
                rows.append(row)
                print(f"{w:>7} {policy:>14} {seed:>4} {row['max_rate_rps']:>10.2f} "
                      f"{row['queuing_delay_mean_s_at_rate']:>8.3f} {row['wall_s']:>7.0f}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if hasattr(sys.stdout, "reconfigure"):  # each row appears at once, also when redirected
        sys.stdout.reconfigure(line_buffering=True)
    if args and args[0] == "_one":
        print(json.dumps(speed_one(int(args[1]), int(args[2]), args[3])))
        return 0
    ap = argparse.ArgumentParser(prog="python -m elis.serving.bench")
    ap.add_argument("what", nargs="?", default="all", choices=["all", "speed", "overhead", "scalability"])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    ap.add_argument("--workers", type=int, nargs="+", default=None)
    ap.add_argument("--mode", default="windowed")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--buffer", type=int, nargs="+", default=[10, 100, 1_000, 10_000, 100_000])
    ap.add_argument("--profile", default="h100_llama2_13b")
    ap.add_argument("--requests-per-worker", type=int, default=100)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0],
                    help="scalability: one bisection per seed (lengths, arrivals, predictor noise)")
    ap.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    a = ap.parse_args(args)
    result: dict = {}
    if a.what in ("all", "speed"):
        result["speed"] = speed(a.sizes, a.workers or [1, 8, 50], a.mode, a.timeout)
    if a.what in ("all", "overhead"):
        result["overhead"] = decision_overhead(a.buffer)
    if a.what == "scalability":
        result["scalability"] = scalability(a.workers or [10, 20, 30, 40, 50], a.profile,
                                            seeds=a.seeds, requests_per_worker=a.requests_per_worker)
    if a.out:
        a.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
