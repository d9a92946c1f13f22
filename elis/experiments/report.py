"""Comparison tables: pure functions of saved run directories.

``write_comparison(run_dir)`` re-reads ``run_dir/variants/*/{metrics.json, variant.json}`` and
writes ``comparison.csv`` (one row per variant: every metric, its change vs windowed FCFS and
vs continuous FCFS in percent) and ``comparison.md`` (the headline columns plus the share of
oracle-SRTF's mean-JCT gain that ISRTF captures, per mode:
``(JCT_fcfs − JCT_isrtf) / (JCT_fcfs − JCT_srtf_oracle)``, same mode; undefined → 'n/a').
Every table shows ``num_failed`` (latencies are over finished requests only) and lists the
failure reasons of each variant that had failures (issue 11 item 12).
``summary_line`` / ``no_completion_message`` format the CLI's closing lines.

With ``compare.seeds`` each seed's folder gets its own tables and ``write_seed_comparison``
writes the run's ``comparison.{csv,md}``: mean ± 95% Student-t half-width over seeds
(``mean_ci95``), with the realised offered load next to the requested one.

CLI: ``python -m elis.experiments.report RUN_DIR [RUN_DIR ...]``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

METRICS: tuple[str, ...] = (
    "jct_mean_s", "jct_p50_s", "jct_p90_s", "jct_p99_s", "queuing_delay_mean_s", "queuing_delay_p99_s",
    "ttft_mean_s", "ttft_p99_s", "tpot_mean_s", "request_throughput_rps", "output_throughput_tok_s",
    "max_wait_s", "jct_mean_s_short", "jct_mean_s_medium", "jct_mean_s_long", "num_preemptions",
    "num_recomputed_tokens", "predictor_overhead_s", "scheduling_overhead_s", "num_failed",
    "kendall_tau_cowaiting_mean", "num_ranking_decisions", "num_output_tokens_mean", "predicted_first_mean_tokens",
    "predicted_remaining_mean_tokens", "true_remaining_mean_tokens", "seed", "requested_rate_rps",
    "offered_rate_rps", "offered_load_fraction",
)
# Columns that get "(Δ vs windowed FCFS / Δ vs continuous FCFS)" in comparison.md.
DELTA_METRICS: frozenset[str] = frozenset({
    "jct_mean_s", "jct_p99_s", "queuing_delay_mean_s", "ttft_mean_s", "tpot_mean_s", "jct_mean_s_short",
    "jct_mean_s_long", "request_throughput_rps",
})
HEADLINE: tuple[tuple[str, str], ...] = (
    ("jct_mean_s", "mean JCT (s)"), ("jct_p99_s", "p99 JCT (s)"), ("queuing_delay_mean_s", "mean queuing (s)"),
    ("ttft_mean_s", "mean TTFT (s)"), ("tpot_mean_s", "mean TPOT (s)"),
    ("jct_mean_s_short", "short JCT (s)"), ("jct_mean_s_long", "long JCT (s)"),
    ("request_throughput_rps", "req/s"),
    ("oracle_gain_share", "share of oracle gain"), ("kendall_tau_cowaiting_mean", "τ co-waiting"),
    ("predicted_first_mean_tokens", "pred. tokens (k=0)"), ("num_output_tokens_mean", "gen. tokens"),
    ("num_preemptions", "preemptions"), ("num_failed", "failed"),
)
COUNTS: frozenset[str] = frozenset({"num_preemptions", "num_failed"})  # shown without Δ %


def load_variants(run_dir: str | Path) -> pd.DataFrame:
    """One row per variant under ``run_dir/variants`` (or ``run_dir`` itself for a single run).

    Columns: name, policy, mode, preemption, run_dir, then every metric in ``METRICS``. A
    multi-seed folder (``run_dir/seeds/<seed>/variants``) gives the MEAN over seeds of every
    metric, with ``run_dir`` pointing at the first seed's variant (whose records plots read).

    Raises:
        FileNotFoundError: no ``metrics.json`` found.
    """
    root = Path(run_dir)
    seed_dirs = seed_folders(root)
    if seed_dirs and not (root / "variants").is_dir():
        per_seed = pd.concat([load_variants(d) for d in seed_dirs], ignore_index=True)
        first = per_seed.groupby("name", sort=False).first()
        num = [m for m in METRICS if m in per_seed]
        mean = per_seed.groupby("name", sort=False)[num].agg(lambda x: pd.to_numeric(x, errors="coerce").mean())
        out = first.drop(columns=num).join(mean).reset_index()
        out["num_seeds"] = per_seed.groupby("name", sort=False).size().to_numpy()
        cols = ["name", "policy", "mode", "preemption", "aging_tokens_per_s", "promote_after_s", "promote_by",
                "run_dir"]
        return _ordered(out[[*cols, *num, "num_seeds"]])
    dirs = sorted(p.parent for p in root.glob("variants/*/metrics.json")) or (
        [root] if (root / "metrics.json").exists() else []
    )
    if not dirs:
        raise FileNotFoundError(f"no metrics.json under {root} or {root}/variants/*/")
    rows = []
    for d in dirs:
        m = json.loads((d / "metrics.json").read_text())
        v = json.loads((d / "variant.json").read_text()) if (d / "variant.json").exists() else {}
        sched = m.get("variant", {})
        rows.append(
            {
                "name": v.get("name", d.name),
                "policy": v.get("policy", sched.get("policy")),
                "mode": v.get("mode", sched.get("mode", "windowed")),
                "preemption": v.get("preemption", sched.get("preemption")),
                "aging_tokens_per_s": v.get("aging_tokens_per_s", sched.get("aging_tokens_per_s")),
                "promote_after_s": v.get("promote_after_s", sched.get("promote_after_s")),
                "promote_by": v.get("promote_by", sched.get("promote_by")) or "wait",
                "run_dir": str(d),
                **{k: m.get(k) for k in METRICS},
                "num_finished": m.get("num_finished"),
                "fail_reasons": m.get("fail_reasons") or {},
            }
        )
    return _ordered(pd.DataFrame(rows))


def seed_folders(root: Path) -> list[Path]:
    """``root/seeds/<seed>`` folders, in numeric seed order (empty for a single-seed run)."""
    d = Path(root) / "seeds"
    if not d.is_dir():
        return []
    return sorted((p for p in d.iterdir() if p.is_dir()), key=lambda p: int(p.name))


def _ordered(df: pd.DataFrame) -> pd.DataFrame:
    # windowed before continuous; policies in POLICY_NAMES order; unknown names last
    from elis.serving.policy import POLICY_NAMES

    order = {p: i for i, p in enumerate(POLICY_NAMES)}
    df["_m"] = (df["mode"] != "windowed").astype(int)
    df["_p"] = df["policy"].map(lambda p: order.get(p, len(order)))
    return df.sort_values(["_m", "_p", "name"]).drop(columns=["_m", "_p"]).reset_index(drop=True)


def _pick(df: pd.DataFrame, policy: str, mode: str) -> pd.Series | None:
    sel = df[(df["policy"] == policy) & (df["mode"] == mode)]
    return None if sel.empty else sel.iloc[0]


def comparison_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Add ``<metric>_vs_fcfs_windowed_pct``, ``<metric>_vs_fcfs_continuous_pct`` and
    ``oracle_gain_share`` (``share_of_oracle_gain``, same mode) columns."""
    out = df.copy()
    out["oracle_gain_share"] = [share_of_oracle_gain(df, row["mode"], row["jct_mean_s"]) for _, row in df.iterrows()]
    for base_mode in ("windowed", "continuous"):
        base = _pick(df, "fcfs", base_mode)
        for m in METRICS:
            col = f"{m}_vs_fcfs_{base_mode}_pct"
            if base is None or base[m] in (None, 0) or pd.isna(base[m]):
                out[col] = None
            else:
                out[col] = [
                    None if v is None or pd.isna(v) else 100.0 * (v - base[m]) / base[m] for v in df[m]
                ]
    return out


def oracle_gain_share(df: pd.DataFrame, mode: str, metric: str = "jct_mean_s") -> float | None:
    """``(fcfs − isrtf) / (fcfs − srtf_oracle)`` on ``metric`` within ``mode``; None if undefined."""
    f, i, o = (_pick(df, p, mode) for p in ("fcfs", "isrtf", "srtf_oracle"))
    if f is None or i is None or o is None:
        return None
    if any(x[metric] is None or pd.isna(x[metric]) for x in (f, i, o)):  # e.g. nothing finished
        return None
    gain = f[metric] - o[metric]
    if not gain or pd.isna(gain):
        return None
    return float((f[metric] - i[metric]) / gain)


def share_of_oracle_gain(df: pd.DataFrame, mode: str, value, metric: str = "jct_mean_s") -> float | None:
    """``1 − (value − oracle) / (fcfs − oracle)`` with FCFS and oracle SRTF of ``mode``.

    1 = as good as oracle SRTF, 0 = no better than FCFS, < 0 = worse than FCFS. None when the
    mode has no FCFS or oracle variant, the value is missing, or the gain is zero.
    """
    f, o = _pick(df, "fcfs", mode), _pick(df, "srtf_oracle", mode)
    if f is None or o is None or value is None or pd.isna(value):
        return None
    gain = f[metric] - o[metric]
    if not gain or pd.isna(gain):
        return None
    return float(1.0 - (value - o[metric]) / gain)


def _fmt(v) -> str:
    if v is None or pd.isna(v):
        return "n/a"
    if isinstance(v, float) and not float(v).is_integer() or isinstance(v, float) and abs(v) < 1000:
        return f"{v:,.3f}" if abs(v) < 1000 else f"{v:,.0f}"
    return f"{int(v):,}" if isinstance(v, (int, float)) else str(v)


def _share(v) -> str:
    return "n/a" if v is None or pd.isna(v) else f"{100 * v:.1f}%"


def _count(v) -> str:
    """A count (a float column when another variant lacks it): '3', or 'n/a'."""
    return "n/a" if v is None or pd.isna(v) else f"{int(v):,}"


def _pct(v) -> str:
    return "n/a" if v is None or pd.isna(v) else f"{v:+.1f}%"


def comparison_markdown(df: pd.DataFrame) -> str:
    """Markdown: value (Δ vs windowed FCFS / Δ vs continuous FCFS) per headline metric."""
    comp = comparison_frame(df)
    head = "| variant | " + " | ".join(label for _, label in HEADLINE) + " |"
    lines = [head, "|" + "---|" * (len(HEADLINE) + 1)]
    for _, row in comp.iterrows():
        cells = [
            f"{_fmt(row[m])} ({_pct(row[f'{m}_vs_fcfs_windowed_pct'])} / {_pct(row[f'{m}_vs_fcfs_continuous_pct'])})"
            if m in DELTA_METRICS
            else _count(row[m]) if m in COUNTS
            else (_share(row[m]) if m == "oracle_gain_share" else _fmt(row[m]))
            for m, _ in HEADLINE
        ]
        lines.append(f"| {row['name']} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "Cells: value (change vs windowed FCFS / change vs continuous FCFS); lower is better except req/s. "
        "Latencies are over finished requests; 'failed' requests are not in them. "
        "Share of oracle gain = 1 − (JCT − JCT_srtf_oracle)/(JCT_fcfs − JCT_srtf_oracle), same mode; "
        "τ co-waiting = mean Kendall τ-b between predicted and true remaining tokens of the requests "
        "competing at each decision; pred./gen. tokens = mean step-0 predicted vs generated tokens."
    )
    lines.append(_load_line(df))
    for _, row in comp.iterrows():
        if row.get("num_failed"):
            lines.append(f"- Failures in {row['name']}: {format_fail_reasons(row.get('fail_reasons'))}")
    for mode in ("windowed", "continuous"):
        share = oracle_gain_share(df, mode)
        lines.append(
            f"- Share of oracle-SRTF's mean-JCT gain over FCFS captured by ISRTF ({mode}): "
            + ("n/a" if share is None else f"{100 * share:.1f}%")
        )
    return "\n".join(lines) + "\n"


def _load_line(df: pd.DataFrame) -> str:
    req = df["requested_rate_rps"].dropna() if "requested_rate_rps" in df else pd.Series(dtype=float)
    off = df["offered_rate_rps"].dropna() if "offered_rate_rps" in df else pd.Series(dtype=float)
    frac = df["offered_load_fraction"].dropna() if "offered_load_fraction" in df else pd.Series(dtype=float)
    return (
        "- Offered load: requested "
        + (f"{float(req.iloc[0]):.4g} req/s" if len(req) else "n/a")
        + ", realised "
        + (f"{float(off.mean()):.4g} req/s" if len(off) else "n/a")
        + (f" ({float(frac.mean()):.2f} × estimated capacity)" if len(frac) else "")
    )


def mean_ci95(values) -> tuple[float | None, float | None, int]:
    """Mean and half-width of the 95% Student-t interval over seeds, and the count.

    ``(mean, t_{0.975, n−1} · s / √n, n)`` over the finite values; the half-width is None for
    fewer than 2 values, everything None for none.
    """
    import numpy as np
    from scipy.stats import t as student_t

    x = pd.to_numeric(pd.Series(list(values)), errors="coerce").to_numpy(dtype=float)
    x = x[np.isfinite(x)]
    n = int(x.size)
    if n == 0:
        return None, None, 0
    if n == 1:
        return float(x[0]), None, 1
    return float(x.mean()), float(student_t.ppf(0.975, n - 1) * x.std(ddof=1) / np.sqrt(n)), n


SEED_COLUMNS: tuple[tuple[str, str], ...] = (
    ("jct_mean_s", "mean JCT (s)"), ("jct_mean_s_vs_fcfs_windowed_pct", "Δ vs FCFS-w"),
    ("jct_mean_s_vs_fcfs_continuous_pct", "Δ vs FCFS-c"), ("jct_p99_s", "p99 JCT (s)"),
    ("oracle_gain_share", "share of oracle gain"), ("queuing_delay_mean_s", "mean queuing (s)"),
    ("kendall_tau_cowaiting_mean", "τ co-waiting"), ("predicted_first_mean_tokens", "pred. tokens (k=0)"),
    ("num_output_tokens_mean", "gen. tokens"),
)


def seed_comparison_frame(run_dir: str | Path) -> pd.DataFrame:
    """Per variant: mean, 95% half-width and n over ``run_dir/seeds/*`` of each ``SEED_COLUMNS``
    metric (changes vs FCFS and the share of oracle gain are computed PER SEED, then averaged,
    so the interval is that of the paired difference).

    Raises:
        FileNotFoundError: no seed folders.
    """
    dirs = seed_folders(Path(run_dir))
    if not dirs:
        raise FileNotFoundError(f"no seeds/<seed>/ folders under {run_dir}")
    per_seed = pd.concat([comparison_frame(load_variants(d)) for d in dirs], ignore_index=True)
    rows = []
    for name, g in per_seed.groupby("name", sort=False):
        row = {"name": name, "policy": g["policy"].iloc[0], "mode": g["mode"].iloc[0], "num_seeds": len(g)}
        for m in (*(c for c, _ in SEED_COLUMNS), "requested_rate_rps", "offered_rate_rps", "offered_load_fraction"):
            mean, hw, _ = mean_ci95(g[m]) if m in g else (None, None, 0)
            row[f"{m}_mean"], row[f"{m}_ci95"] = mean, hw
        rows.append(row)
    return _ordered(pd.DataFrame(rows))


def seed_comparison_markdown(frame: pd.DataFrame) -> str:
    """Markdown: mean ± 95% half-width over seeds per ``SEED_COLUMNS`` column."""

    def cell(row, m) -> str:
        mean, hw = row[f"{m}_mean"], row[f"{m}_ci95"]
        if mean is None or pd.isna(mean):
            return "n/a"
        if m == "oracle_gain_share":
            return f"{100 * mean:.1f}%" + ("" if hw is None or pd.isna(hw) else f" ± {100 * hw:.1f}")
        if m.endswith("_pct"):
            return f"{mean:+.1f}%" + ("" if hw is None or pd.isna(hw) else f" ± {hw:.1f}")
        return _fmt(mean) + ("" if hw is None or pd.isna(hw) else f" ± {_fmt(hw)}")

    head = "| variant | " + " | ".join(label for _, label in SEED_COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(SEED_COLUMNS) + 1)]
    for _, row in frame.iterrows():
        lines.append(f"| {row['name']} | " + " | ".join(cell(row, m) for m, _ in SEED_COLUMNS) + " |")
    n = int(frame["num_seeds"].min()) if len(frame) else 0
    req, off = frame["requested_rate_rps_mean"].dropna(), frame["offered_rate_rps_mean"]
    lines += [
        "",
        f"Cells: mean ± half-width of the 95% Student-t interval over {n} seeds (each seed re-draws "
        "arrivals, requests and predictor noise; changes and shares are computed per seed, then averaged). "
        "Share of oracle gain = 1 − (JCT − JCT_srtf_oracle)/(JCT_fcfs − JCT_srtf_oracle), same mode.",
        "- Offered load: requested " + (f"{float(req.iloc[0]):.4g} req/s" if len(req) else "n/a")
        + ", realised " + cell(frame.iloc[0], "offered_rate_rps") + " req/s"
        + (f" ({float(frame['offered_load_fraction_mean'].iloc[0]):.2f} × estimated capacity)"
           if frame["offered_load_fraction_mean"].notna().any() else "") if len(off) else "",
    ]
    return "\n".join(lines) + "\n"


def write_seed_comparison(run_dir: str | Path) -> tuple[Path, Path]:
    """Write the over-seeds ``comparison.csv`` and ``comparison.md`` into ``run_dir``."""
    root = Path(run_dir)
    frame = seed_comparison_frame(root)
    csv_path, md_path = root / "comparison.csv", root / "comparison.md"
    frame.to_csv(csv_path, index=False)
    md_path.write_text(seed_comparison_markdown(frame))
    return md_path, csv_path


def format_fail_reasons(reasons: dict | None) -> str:
    """``{reason kind: count}`` as 'count × reason; …' ('none' when empty)."""
    if not reasons:
        return "none"
    return "; ".join(f"{n} × {k}" for k, n in reasons.items())


def summary_line(name: str, m: dict) -> str:
    """One line per variant for the CLI: headline numbers (n/a when undefined) and failures."""
    line = (f"{name:28s} jct_mean_s={_fmt(m.get('jct_mean_s'))} jct_p99_s={_fmt(m.get('jct_p99_s'))} "
            f"queuing_delay_mean_s={_fmt(m.get('queuing_delay_mean_s'))} preemptions={m.get('num_preemptions')} "
            f"finished={m.get('num_finished')}/{m.get('num_requests')}")
    if m.get("num_failed"):
        line += f" failed={m['num_failed']} ({format_fail_reasons(m.get('fail_reasons'))})"
    return line


def no_completion_message(results: dict) -> str | None:
    """A one-line error when some variant finished no request (its latencies are undefined), else None."""
    empty = [name for name, m in results.items() if isinstance(m, dict) and not m.get("num_finished")]
    if not empty:
        return None
    m = results[empty[0]]
    return (f"no request finished in variant(s) {', '.join(empty)}: {m.get('num_failed', 0)} of "
            f"{m.get('num_requests', 0)} failed ({format_fail_reasons(m.get('fail_reasons'))}); "
            "metrics.json and requests.parquet were written, latency metrics are null")


def write_comparison(run_dir: str | Path) -> tuple[Path, Path]:
    """Write ``comparison.csv`` and ``comparison.md`` into ``run_dir``; return their paths."""
    root = Path(run_dir)
    df = load_variants(root)
    csv_path, md_path = root / "comparison.csv", root / "comparison.md"
    comparison_frame(df).to_csv(csv_path, index=False)
    md_path.write_text(comparison_markdown(df))
    return md_path, csv_path


def main(argv: list[str] | None = None) -> int:
    """Re-read run directories and print/write their comparison tables (exit 2 on a bad folder)."""
    import argparse

    ap = argparse.ArgumentParser(
        prog="python -m elis.experiments.report",
        description="Re-read run folders and (re)write their comparison.md / comparison.csv.",
        epilog="RUN_DIR: a folder with variants/*/metrics.json (a preset=compare run, e.g. "
               "outputs/main/<date>/experiment, or <sweep>/rates/<rate>) or one metrics.json.",
    )
    ap.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folder(s) to report")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    for d in args.run_dirs:
        try:
            md, _ = write_seed_comparison(d) if seed_folders(Path(d)) else write_comparison(d)
        except FileNotFoundError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"## {d}\n\n{md.read_text()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
