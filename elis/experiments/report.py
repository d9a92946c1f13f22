"""Comparison tables: pure functions of saved run directories.

``write_comparison(run_dir)`` re-reads ``run_dir/variants/*/{metrics.json, variant.json}`` and
writes ``comparison.csv`` (one row per variant: every metric, its change vs windowed FCFS and
vs continuous FCFS in percent) and ``comparison.md`` (the headline columns plus the share of
oracle-SRTF's mean-JCT gain that ISRTF captures, per mode:
``(JCT_fcfs − JCT_isrtf) / (JCT_fcfs − JCT_srtf_oracle)``, same mode; undefined → 'n/a').
Every table shows ``num_failed`` (latencies are over finished requests only) and lists the
failure reasons of each variant that had failures (issue 11 item 12).
``summary_line`` / ``no_completion_message`` format the CLI's closing lines.

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
)
HEADLINE: tuple[tuple[str, str], ...] = (
    ("jct_mean_s", "mean JCT (s)"), ("jct_p99_s", "p99 JCT (s)"), ("queuing_delay_mean_s", "mean queuing (s)"),
    ("ttft_mean_s", "mean TTFT (s)"), ("tpot_mean_s", "mean TPOT (s)"),
    ("jct_mean_s_short", "short JCT (s)"), ("jct_mean_s_long", "long JCT (s)"),
    ("request_throughput_rps", "req/s"), ("num_preemptions", "preemptions"), ("num_failed", "failed"),
)
COUNTS: frozenset[str] = frozenset({"num_preemptions", "num_failed"})  # shown without Δ %


def load_variants(run_dir: str | Path) -> pd.DataFrame:
    """One row per variant under ``run_dir/variants`` (or ``run_dir`` itself for a single run).

    Columns: name, policy, mode, preemption, run_dir, then every metric in ``METRICS``.

    Raises:
        FileNotFoundError: no ``metrics.json`` found.
    """
    root = Path(run_dir)
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
                "run_dir": str(d),
                **{k: m.get(k) for k in METRICS},
                "num_finished": m.get("num_finished"),
                "fail_reasons": m.get("fail_reasons") or {},
            }
        )
    df = pd.DataFrame(rows)
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
    """Add ``<metric>_vs_fcfs_windowed_pct`` and ``<metric>_vs_fcfs_continuous_pct`` columns."""
    out = df.copy()
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


def _fmt(v) -> str:
    if v is None or pd.isna(v):
        return "n/a"
    if isinstance(v, float) and not float(v).is_integer() or isinstance(v, float) and abs(v) < 1000:
        return f"{v:,.3f}" if abs(v) < 1000 else f"{v:,.0f}"
    return f"{int(v):,}" if isinstance(v, (int, float)) else str(v)


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
            if m not in COUNTS else _count(row[m])
            for m, _ in HEADLINE
        ]
        lines.append(f"| {row['name']} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Cells: value (change vs windowed FCFS / change vs continuous FCFS); lower is better except req/s. "
                 "Latencies are over finished requests; 'failed' requests are not in them.")
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
    """Re-read run directories and print/write their comparison tables."""
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print("usage: python -m elis.experiments.report RUN_DIR [RUN_DIR ...]")
        return 2
    for d in args:
        md, _ = write_comparison(d)
        print(f"## {d}\n\n{md.read_text()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
