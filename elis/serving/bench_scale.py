"""``make bench-scale``: the simulator at a million requests (issue 12 item 2).

    python -m elis.serving.bench_scale                          # 1M requests x 50 workers, windowed
    python -m elis.serving.bench_scale --mode continuous
    python -m elis.serving.bench_scale --requests 100000 --predictor oracle --path general

Workload: ``elis.serving.bench.make_table`` (request lengths drawn from the alpaca_eval test
split when ``data/alpaca_eval`` is built, else log-normal; Poisson arrivals at 60% of the
rough capacity of ``--workers`` workers), ISRTF with preemption, batch 4, W = 50, A100 profile
(``conf/cost_model/a100_llama2_13b.yaml``), least-predicted-tokens balancer, no per-request
interval lists (``record_intervals=False``).

``--path``: ``auto`` (the fast path when the configuration is supported, see
``elis.serving.fastsim``), ``general`` (the per-window object protocol of
``elis.serving.simulator``) or ``fast`` (error if unsupported).

The LAST line printed is ``requests=… workers=… wall_s=… cpu_s=… peak_rss_mib=…``: wall and
CPU seconds (``resource.getrusage`` user+system of this process) of the simulation call alone,
and the process's peak resident memory (``ru_maxrss``, which includes building the workload).
Figures are printed; nothing is asserted (the goal on the 2-core development machine is
< 60 s CPU and < 500 MiB for 1M x 50 windowed).
"""

from __future__ import annotations

import argparse
import logging
import resource
import sys
import time

import numpy as np

log = logging.getLogger(__name__)


def _cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def run(requests: int, workers: int, mode: str, predictor: str, path: str, policy: str = "isrtf",
        seed: int = 0) -> dict:
    """Build the workload, simulate it once; return the figures (see module docstring)."""
    from elis.serving import bench

    cm = bench.load_cost_model(bench.A100)
    _, o, source = bench.sample_lengths(min(requests, 10_000), seed)
    rate = 0.6 * workers * bench.capacity_rps(cm, float(np.mean(np.minimum(o, 1024))))
    table = bench.make_table(requests, rate, seed=seed)
    cpu0, wall0 = _cpu_s(), time.perf_counter()
    res = bench.run_sim(table, workers, cm, policy=policy, mode=mode, predictor=predictor, seed=seed, path=path)
    wall_s, cpu_s = time.perf_counter() - wall0, _cpu_s() - cpu0
    return {
        "requests": requests, "workers": workers, "mode": mode, "policy": policy, "predictor": predictor,
        "path": res.counters.get("sim_path", "general"), "lengths": source, "rate_rps": rate,
        "jct_mean_s": float(np.nanmean(res.records["jct_s"].to_numpy(dtype=np.float64))),
        "wall_s": wall_s, "cpu_s": cpu_s,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m elis.serving.bench_scale")
    ap.add_argument("--requests", type=int, default=1_000_000)
    ap.add_argument("--workers", type=int, default=50)
    ap.add_argument("--mode", default="windowed", choices=["windowed", "continuous"])
    ap.add_argument("--policy", default="isrtf")
    ap.add_argument("--predictor", default="noisy_oracle", choices=["noisy_oracle", "oracle"])
    ap.add_argument("--path", default="auto", choices=["auto", "general", "fast"])
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    r = run(a.requests, a.workers, a.mode, a.predictor, a.path, a.policy, a.seed)
    print(f"mode={r['mode']} policy={r['policy']} predictor={r['predictor']} path={r['path']} "
          f"lengths={r['lengths']!r} rate_rps={r['rate_rps']:.2f} jct_mean_s={r['jct_mean_s']:.4f}")
    print(f"requests={r['requests']} workers={r['workers']} wall_s={r['wall_s']:.1f} cpu_s={r['cpu_s']:.1f} "
          f"peak_rss_mib={r['peak_rss_mib']:.0f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
