"""Tables of docs/results.md: paired per-seed changes with 95% intervals (re-measurement of 2026-11-30).

    python scripts/results_tables.py b outputs/paper/b_gamma_noisy_oracle rate_rps
    python scripts/results_tables.py b outputs/paper/b_trace_noisy_oracle time_scale
    python scripts/results_tables.py d outputs/paper/d_noisy_oracle

Reads the multi-seed run folders (``.../seeds/<s>/variants/<name>/metrics.json``) written by
``run_experiment.py ... +compare.seeds=[...]``. Every change is computed PER SEED against
windowed FCFS on that seed's identical workload, then averaged; the interval is
``elis.experiments.report.mean_ci95`` (Student t, 95%) of those paired changes. Nothing here
is stored: the tables are pure functions of the run folders.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from elis.experiments.report import load_variants, mean_ci95, seed_folders


def per_seed(run_dir: Path) -> pd.DataFrame:
    """One row per (seed, variant) with every ``report.METRICS`` column and ``seed_dir``."""
    frames = []
    for d in seed_folders(run_dir):
        f = load_variants(d)
        f["seed_dir"] = int(d.name)
        frames.append(f)
    if not frames:
        raise FileNotFoundError(f"no seeds/<seed>/ folders under {run_dir}")
    return pd.concat(frames, ignore_index=True)


def ci(values, pct: bool = False, digits: int = 2) -> str:
    mean, hw, n = mean_ci95(values)
    if mean is None:
        return "n/a"
    if pct:
        return f"{mean:+.1f}% ± {hw:.1f}" if hw is not None else f"{mean:+.1f}%"
    return f"{mean:.{digits}f} ± {hw:.{digits}f}" if hw is not None else f"{mean:.{digits}f}"


def pct(new: pd.Series, base: pd.Series) -> pd.Series:
    return 100.0 * (new.to_numpy(float) / base.to_numpy(float) - 1.0)


def wide(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """seed × variant table of one metric."""
    return df.pivot_table(index="seed_dir", columns="name", values=metric, aggfunc="first")


def table_b(run_dir: Path, label: str) -> str:
    rates = sorted((p for p in (run_dir / "rates").iterdir() if p.is_dir()), key=lambda p: float(p.name))
    lines = [f"| {label} | realised req/s | FCFS-w JCT (s) | ISRTF-w JCT (s) | ΔJCT ISRTF | Δqueuing ISRTF "
             "| ΔJCT SRTF-oracle | ΔJCT FCFS-continuous | ISRTF share of oracle gain | p99 JCT FCFS-w / ISRTF-w (s) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    n = 0
    for r in rates:
        df = per_seed(r)
        j, q, p99 = wide(df, "jct_mean_s"), wide(df, "queuing_delay_mean_s"), wide(df, "jct_p99_s")
        off = wide(df, "offered_rate_rps")["fcfs_windowed"] if label == "rate_rps" else \
            wide(df, "request_throughput_rps")["fcfs_windowed"]
        f, i, o = j["fcfs_windowed"], j["isrtf_windowed"], j["srtf_oracle_windowed"]
        share = 100.0 * (f - i) / (f - o)
        n = len(f)
        lines.append(
            f"| {float(r.name):g} | {ci(off, digits=3)} | {ci(f)} | {ci(i)} | {ci(pct(i, f), True)} "
            f"| {ci(pct(q['isrtf_windowed'], q['fcfs_windowed']), True)} | {ci(pct(o, f), True)} "
            f"| {ci(pct(j['fcfs_continuous'], f), True)} | {ci(share, digits=0)}% "
            f"| {p99['fcfs_windowed'].mean():.1f} / {p99['isrtf_windowed'].mean():.1f} |")
    lines.append("")
    lines.append(f"Cells: mean ± 95% half-width over {n} seeds; Δ per seed vs windowed FCFS on that seed's "
                 "workload. " + ("realised req/s = offered (arrivals / span)." if label == "rate_rps"
                                 else "realised req/s = FCFS-w served throughput."))
    return "\n".join(lines) + "\n"


def table_d(run_dir: Path) -> str:
    df = per_seed(run_dir)
    from elis.experiments.figures import _variant_order

    order = _variant_order(run_dir)  # the preset's order
    names = sorted(dict.fromkeys(df["name"]), key=lambda v: order.get(v, len(order)))
    j = wide(df, "jct_mean_s")
    f = j["fcfs_windowed"]
    lines = ["| variant | mean JCT (s) | ΔJCT vs FCFS-w | short tercile (s) | long tercile (s) | Δ long vs FCFS-w "
             "| max wait (s) | preemptions |", "|---|---|---|---|---|---|---|---|"]
    s, lo, mw, pre = (wide(df, m) for m in ("jct_mean_s_short", "jct_mean_s_long", "max_wait_s", "num_preemptions"))
    for name in names:
        lines.append(
            f"| {name} | {ci(j[name])} | {ci(pct(j[name], f), True) if name != 'fcfs_windowed' else '—'} "
            f"| {ci(s[name])} | {ci(lo[name])} "
            f"| {ci(pct(lo[name], lo['fcfs_windowed']), True) if name != 'fcfs_windowed' else '—'} "
            f"| {ci(mw[name], digits=1)} | {ci(pre[name], digits=0)} |")
    lines.append("")
    lines.append(f"Cells: mean ± 95% half-width over {len(f)} seeds; Δ per seed vs windowed FCFS.")
    if "sjf_windowed" in j and "isrtf_windowed" in j:
        lines.append(f"ISRTF vs SJF (paired per seed): ΔJCT {ci(pct(j['isrtf_windowed'], j['sjf_windowed']), True)}; "
                     f"long tercile {ci(pct(lo['isrtf_windowed'], lo['sjf_windowed']), True)}.")
    if "isrtf_aging20_windowed" in j:
        for v in ("isrtf_aging5_windowed", "isrtf_aging20_windowed", "isrtf_promote60_windowed"):
            if v in j:
                lines.append(f"{v} vs ISRTF (paired): ΔJCT {ci(pct(j[v], j['isrtf_windowed']), True)}; "
                             f"max wait {ci(mw[v], digits=1)} s vs {ci(mw['isrtf_windowed'], digits=1)} s.")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    what, run_dir = argv[0], Path(argv[1])
    print(table_b(run_dir, argv[2] if len(argv) > 2 else "rate_rps") if what == "b" else table_d(run_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
