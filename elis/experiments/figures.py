"""The ELIS paper's results as figures and "paper vs ours" tables (issue 6 §3).

Pure functions of saved artefacts; each writes one PNG and returns a markdown table:

- ``predictor_figure(metrics_json, png)``  (a) MAE per prediction step and R² of the learned
  predictor (``train.py``'s ``metrics.json``) against the baselines and the paper's anchors.
- ``jct_figure(sweep_dir, png, trace_dir=None)``  (b) mean JCT and queuing delay, windowed FCFS
  vs windowed ISRTF at several loads (``run_experiment.py preset=paper_b``; trace replay
  ``preset=paper_b_trace``), with oracle SRTF and continuous FCFS for context.
- ``scalability_figure(rows_json, png)``  (c) highest request rate with mean queuing delay
  < 0.5 s against the number of workers (``python -m elis.serving.bench scalability --out``).
- ``starvation_figure(run_dir, png)``  (d) JCT by true-length tercile and max waiting time for
  FCFS, SJF (single prediction), ISRTF (iterative), ISRTF with aging / promotion
  (``preset=paper_d``).

Paper numbers (``PAPER``) are from arXiv 2505.09142 (ELIS): R² 0.852 of the BGE predictor;
MAE falling from about 60 to about 20 tokens over 8 prediction steps (read off its MAE-per-step
figure, so approximate); −19.6 % mean JCT and −16.75 % mean queuing delay of ISRTF vs FCFS;
18.77 req/s sustained on 50 H100 workers with mean queuing delay < 0.5 s.

CLI: ``python -m elis.experiments.figures {a,b,c,d} INPUT... --png P --md M``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from elis.experiments.plots import POLICY_COLORS, _plt, load_sweep
from elis.experiments.report import load_variants

PAPER: dict[str, float] = {
    "r2": 0.852,
    "mae_step0_tokens": 60.0,      # approximate, read off the paper's MAE-per-step figure
    "mae_last_step_tokens": 20.0,  # approximate, step 8
    "jct_change_pct": -19.6,
    "queuing_change_pct": -16.75,
    "scal_workers": 50,
    "scal_max_rate_rps": 18.77,
}


def _num(x: Any) -> float:
    """``x`` as float; None/missing → NaN (shown as 'n/a' in tables)."""
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _f(x: Any, digits: int = 3) -> str:
    v = _num(x)
    return "n/a" if math.isnan(v) else f"{v:,.{digits}f}"


def _pct(new: Any, base: Any) -> float:
    n, b = _num(new), _num(base)
    return math.nan if math.isnan(n) or math.isnan(b) or b == 0 else 100.0 * (n - b) / b


def _p(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:+.1f}%"


def _save(fig, path: str | Path, dpi: int = 100) -> Path:
    """Write a small PNG (README figures: dpi 100) and close the figure."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(p, dpi=dpi)
    _plt().close(fig)
    return p


def _log_y(ax) -> None:
    """Log y axis with plain-number tick labels (not 4×10^1)."""
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.grid(alpha=0.3, which="both")


def _write_md(md: str, path: str | Path | None) -> str:
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(md)
    return md


# ---------------------------------------------------------------------- (a) predictor
def load_predictor_metrics(metrics_json: str | Path, split: str = "test") -> dict[str, Any]:
    """MAE per step of the MLP head and of each baseline on ``split`` from ``train.py``'s metrics.json.

    Returns ``{"steps": [int], "mae": {name: [float per step]}, "r2": float, "tau0": float,
    "n": int, "subset": dict, "predictor": str, "data": str}``; ``mae["mlp_head"]`` is ours.

    Raises:
        FileNotFoundError: missing file.
        KeyError: ``split`` not evaluated in it (lists the evaluated splits).
    """
    m = json.loads(Path(metrics_json).read_text())
    ev = m.get("eval", {})
    if split not in ev:
        raise KeyError(f"split={split!r} not in {metrics_json} eval; available: {sorted(ev)}")
    res = ev[split]
    groups = res["per_step"]["groups"]
    steps = sorted(int(k) for k in groups)
    mae = {"mlp_head": [_num(groups[str(k)]["mae"]) for k in steps]}
    for name, b in m.get("baselines", {}).get(split, {}).items():
        if name != "mlp_head":
            mae[name] = [_num(b["per_step_mae"].get(str(k))) for k in steps]
    return {
        "steps": steps, "mae": mae, "r2": _num(res["overall"]["r2"]), "mae_all": _num(res["overall"]["mae"]),
        "tau0": _num(res.get("kendall_tau_step0")), "n": int(res["overall"]["n"]),
        "subset": m.get("subset", {}), "predictor": m.get("predictor"), "data": m.get("data"),
        "r2_baselines": {n: _num(b["overall"]["r2"]) for n, b in m.get("baselines", {}).get(split, {}).items()},
    }


def predictor_figure(metrics_json: str | Path, png: str | Path, md: str | Path | None = None,
                     split: str = "test") -> str:
    """(a) MAE per prediction step (ours and baselines, paper's endpoints marked) + R² table."""
    d = load_predictor_metrics(metrics_json, split)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for name, ys in d["mae"].items():
        ours = name == "mlp_head"
        ax.plot(d["steps"], ys, marker="o" if ours else ".", linewidth=2.2 if ours else 1.0,
                label=f"ours: {d['predictor']} + MLP" if ours else f"baseline: {name}",
                color="black" if ours else None, alpha=1.0 if ours else 0.7)
    last = max(d["steps"]) if d["steps"] else 7
    ax.plot([0, last], [PAPER["mae_step0_tokens"], PAPER["mae_last_step_tokens"]], "k*", markersize=11,
            label="paper (BGE, approx. endpoints)")
    ax.set_xlabel("prediction step k (tokens generated = 50·k)")
    ax.set_ylabel("MAE of remaining tokens")
    ax.set_title(f"(a) predictor on {d['data']} {split} split: R² {d['r2']:.3f} (paper {PAPER['r2']})", fontsize=10)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save(fig, png)

    ours = d["mae"]["mlp_head"]
    lines = [
        f"| quantity ({d['data']} {split} split, {d['n']:,} iterative samples) | paper (ELIS) | ours |",
        "|---|---|---|",
        f"| R² over all steps | {PAPER['r2']} | {_f(d['r2'])} |",
        f"| MAE step 0 (tokens) | ~{PAPER['mae_step0_tokens']:.0f} | {_f(ours[0] if ours else None, 1)} |",
        f"| MAE step {last} (tokens) | ~{PAPER['mae_last_step_tokens']:.0f} | {_f(ours[-1] if ours else None, 1)} |",
        f"| MAE all steps (tokens) | n/a | {_f(d['mae_all'], 1)} |",
        f"| Kendall τ at step 0 | n/a | {_f(d['tau0'])} |",
    ]
    for name, r2 in d["r2_baselines"].items():
        if name != "mlp_head":
            lines.append(f"| R² of baseline {name} | n/a | {_f(r2)} |")
    sub = d["subset"]
    lines += ["", f"Predictor: {d['predictor']} encoder + 8×1024 MLP head; subset: "
              f"`{json.dumps({k: v for k, v in sub.items() if k != 'rows'}, default=str)}`."]
    return _write_md("\n".join(lines) + "\n", md)


# ---------------------------------------------------------------------- (b) JCT vs load
def _run_predictor(run_dir: Path) -> str:
    from omegaconf import OmegaConf

    cfg_path = run_dir / "config.yaml"
    if not cfg_path.exists():
        return "unknown"
    cfg = OmegaConf.load(cfg_path)
    return str(OmegaConf.select(cfg, "predictor.name", default="unknown"))


def jct_table(sweep: pd.DataFrame, load_label: str) -> pd.DataFrame:
    """One row per load: FCFS/ISRTF (windowed) mean JCT and queuing, their changes, context variants.

    Args:
        sweep: ``plots.load_sweep`` frame (columns name, policy, mode, rate, metrics).
        load_label: the name of the ``rate`` column in the output (e.g. 'rate_rps', 'time_scale').

    Raises:
        ValueError: windowed FCFS or windowed ISRTF missing at some load.
    """
    rows = []
    for rate, g in sweep.groupby("rate", sort=True):
        pick = {(r["policy"], r["mode"]): r for _, r in g.iterrows()}
        f, i = pick.get(("fcfs", "windowed")), pick.get(("isrtf", "windowed"))
        if f is None or i is None:
            raise ValueError(f"{load_label}={rate:g}: need variants fcfs/windowed and isrtf/windowed, got {sorted(pick)}")
        o, c = pick.get(("srtf_oracle", "windowed")), pick.get(("fcfs", "continuous"))
        rows.append({
            load_label: float(rate), "throughput_rps": _num(f["request_throughput_rps"]),
            "fcfs_jct_mean_s": _num(f["jct_mean_s"]), "isrtf_jct_mean_s": _num(i["jct_mean_s"]),
            "jct_change_pct": _pct(i["jct_mean_s"], f["jct_mean_s"]),
            "fcfs_queuing_mean_s": _num(f["queuing_delay_mean_s"]),
            "isrtf_queuing_mean_s": _num(i["queuing_delay_mean_s"]),
            "queuing_change_pct": _pct(i["queuing_delay_mean_s"], f["queuing_delay_mean_s"]),
            "srtf_oracle_jct_change_pct": _pct(o["jct_mean_s"], f["jct_mean_s"]) if o is not None else math.nan,
            "fcfs_continuous_jct_change_pct": _pct(c["jct_mean_s"], f["jct_mean_s"]) if c is not None else math.nan,
        })
    return pd.DataFrame(rows)


def _jct_md(t: pd.DataFrame, load_label: str, title: str) -> list[str]:
    lines = [
        f"**{title}**", "",
        f"| {load_label} | served req/s | FCFS JCT (s) | ISRTF JCT (s) | ΔJCT | FCFS queuing (s) | ISRTF queuing (s) "
        "| Δqueuing | SRTF-oracle ΔJCT | continuous FCFS ΔJCT |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| paper (ELIS) | | | | {PAPER['jct_change_pct']:+.1f}% | | | {PAPER['queuing_change_pct']:+.2f}% | | |",
    ]
    for _, r in t.iterrows():
        lines.append(
            f"| {r[load_label]:g} | {_f(r['throughput_rps'])} | {_f(r['fcfs_jct_mean_s'], 2)} | {_f(r['isrtf_jct_mean_s'], 2)} "
            f"| {_p(r['jct_change_pct'])} | {_f(r['fcfs_queuing_mean_s'], 2)} | {_f(r['isrtf_queuing_mean_s'], 2)} "
            f"| {_p(r['queuing_change_pct'])} | {_p(r['srtf_oracle_jct_change_pct'])} "
            f"| {_p(r['fcfs_continuous_jct_change_pct'])} |"
        )
    return lines


def jct_figure(sweep_dir: str | Path, png: str | Path, md: str | Path | None = None,
               trace_dir: str | Path | None = None) -> str:
    """(b) Mean JCT and mean queuing delay against load, per variant; paper-vs-ours table.

    ``sweep_dir`` is a ``preset=paper_b`` run (rates in req/s); ``trace_dir`` an optional
    ``preset=paper_b_trace`` run (rates are trace time_scale factors), drawn as a second row.
    Changes are windowed ISRTF vs windowed FCFS on the identical workload (lower is better).
    """
    runs = [(Path(sweep_dir), "rate_rps", "Gamma arrivals (Azure-conv cv)")]
    if trace_dir is not None:
        runs.append((Path(trace_dir), "time_scale", "Azure conv trace replay"))
    plt = _plt()
    fig, axes = plt.subplots(len(runs), 2, figsize=(10, 3.6 * len(runs)), squeeze=False)
    lines: list[str] = []
    for row, (d, label, title) in enumerate(runs):
        sweep = load_sweep(d)
        pred = _run_predictor(d)
        # x: the REALISED offered rate when recorded (issue 12 item 7), else the requested one
        realised = label == "rate_rps" and "offered_rate_rps" in sweep and sweep["offered_rate_rps"].notna().all()
        x_col = "offered_rate_rps" if realised else "rate"
        for name, g in sweep.groupby("name", sort=False):
            first = g.iloc[0]
            style = {"color": POLICY_COLORS.get(first["policy"]),
                     "linestyle": "-" if first["mode"] == "windowed" else "--"}
            g = g.sort_values(x_col)
            for ax, metric in zip(axes[row], ("jct_mean_s", "queuing_delay_mean_s")):
                ax.plot(g[x_col].astype(float), g[metric].astype(float), marker="o", label=name, **style)
        for ax, ylab in zip(axes[row], ("mean JCT (s)", "mean queuing delay (s)")):
            ax.set_xlabel(("realised offered rate (req/s)" if realised else "request rate (req/s)")
                          if label == "rate_rps" else "trace time_scale (load factor)")
            ax.set_ylabel(ylab)
            ax.grid(alpha=0.3)
            ax.set_title(f"{title}; predictor {pred}", fontsize=9)
        _log_y(axes[row][1])  # queuing spans two decades; JCT stays linear
        axes[row][0].legend(fontsize=7, handlelength=3.5)
        t = jct_table(sweep, label)
        lines += _jct_md(t, label, f"{title}, predictor `{pred}` ({d})") + [""]
    _save(fig, png)
    lines.append("Δ = change of windowed ISRTF (or the named variant) vs windowed FCFS on the identical "
                 "workload (same requests and arrival times); negative is better.")
    return _write_md("\n".join(lines) + "\n", md)


# ---------------------------------------------------------------------- (c) scalability
def scalability_figure(rows_json: str | Path, png: str | Path, md: str | Path | None = None) -> str:
    """(c) Highest rate with mean queuing delay < 0.5 s vs workers, per policy (bench JSON rows).

    ``rows_json``: the ``--out`` file of ``python -m elis.serving.bench scalability`` (key
    ``scalability``: rows with num_workers, policy, max_rate_rps, queuing_delay_mean_s_at_rate).

    Raises:
        ValueError: no scalability rows in the file.
    """
    data = json.loads(Path(rows_json).read_text())
    rows = data.get("scalability", data if isinstance(data, list) else [])
    if not rows:
        raise ValueError(f"{rows_json}: no 'scalability' rows")
    from elis.experiments.report import mean_ci95

    df = pd.DataFrame(rows)
    if "seed" not in df:
        df["seed"] = 0
    agg = []  # rows with several seeds: mean and 95% half-width per (workers, policy)
    for (w, policy), g in df.groupby(["num_workers", "policy"], sort=True):
        mean, hw, n = mean_ci95(g["max_rate_rps"])
        agg.append({"num_workers": w, "policy": policy, "max_rate_rps": mean,
                    "ci95": math.nan if hw is None else hw, "num_seeds": n})
    per_seed = df
    df = pd.DataFrame(agg).assign(predictor=per_seed["predictor"].iloc[0] if "predictor" in per_seed else "?")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for policy, g in df.groupby("policy", sort=True):
        g = g.sort_values("num_workers")
        ax.errorbar(g["num_workers"], g["max_rate_rps"], yerr=g["ci95"].fillna(0.0), marker="o", capsize=3,
                    label=f"ours: {policy}", color=POLICY_COLORS.get(policy))
        per = (g["max_rate_rps"] / g["num_workers"]).iloc[0]
        ax.plot(g["num_workers"], per * g["num_workers"], ":", color=POLICY_COLORS.get(policy), alpha=0.6,
                label=f"linear from {int(g['num_workers'].iloc[0])} workers ({policy})")
    ax.plot([PAPER["scal_workers"]], [PAPER["scal_max_rate_rps"]], "k*", markersize=12,
            label=f"paper: ELIS {PAPER['scal_max_rate_rps']} req/s @ 50 H100")
    ax.set_xlabel("workers")
    ax.set_ylabel("max request rate (req/s), mean queuing < 0.5 s")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("(c) scalability, " + ", ".join(sorted(set(df.get("predictor", pd.Series(["?"])).astype(str))))
                 + " predictor", fontsize=10)
    _save(fig, png)
    piv = df.pivot_table(index="num_workers", columns="policy", values="max_rate_rps")
    hws = df.pivot_table(index="num_workers", columns="policy", values="ci95", dropna=False)
    policies = list(piv.columns)
    n = int(df["num_seeds"].min())

    def cell(w, p) -> str:
        hw = hws.loc[w, p] if p in hws and w in hws.index else math.nan
        return _f(piv.loc[w, p], 2) + ("" if pd.isna(hw) else f" ± {_f(hw, 2)}")

    lines = ["| workers | paper ELIS (req/s) | " + " | ".join(f"ours {p} (req/s)" for p in policies)
             + " | " + " | ".join(f"{p} per worker" for p in policies) + " |",
             "|---|---|" + "---|" * (2 * len(policies))]
    for w, r in piv.iterrows():
        paper = f"{PAPER['scal_max_rate_rps']}" if int(w) == PAPER["scal_workers"] else ""
        lines.append(f"| {int(w)} | {paper} | " + " | ".join(cell(w, p) for p in policies) + " | "
                     + " | ".join(_f(r[p] / w, 3) for p in policies) + " |")
    if n > 1:
        lines += ["", f"Cells: mean ± half-width of the 95% Student-t interval over {n} seeds "
                  "(each seed re-draws lengths, arrivals and predictor noise); per worker: the mean."]
    return _write_md("\n".join(lines) + "\n", md)


# ---------------------------------------------------------------------- (d) starvation
def starvation_table(run_dir: str | Path) -> pd.DataFrame:
    """Per variant: mean JCT overall and per true-length tercile, p99 JCT of the long tercile,
    max waiting time, p99 queuing, preemptions; plus aging/promotion settings from variant.json."""
    df = load_variants(run_dir).drop(columns=["aging_tokens_per_s", "promote_after_s", "promote_by"], errors="ignore")
    extra = []
    for _, r in df.iterrows():
        m = json.loads((Path(r["run_dir"]) / "metrics.json").read_text())
        v = m.get("variant", {})
        extra.append({"jct_p99_s_long": m.get("jct_p99_s_long"),
                      "aging_tokens_per_s": v.get("aging_tokens_per_s") or 0.0,
                      "promote_after_s": v.get("promote_after_s"),
                      "edges": m.get("length_bucket_edges_tokens")})
    out = pd.concat([df.reset_index(drop=True), pd.DataFrame(extra)], axis=1)
    order = _variant_order(Path(run_dir))
    if order:  # only the run's configured variants (not stale folders), in the preset's order
        out = out[out["name"].isin(order)]
        out = out.sort_values("name", key=lambda s: s.map(order), kind="stable")
    return out.reset_index(drop=True)


def _variant_order(run_dir: Path) -> dict[str, int]:
    """``{variant name: position}`` from the run's ``config.yaml`` ``compare.variants`` ({} if absent)."""
    from omegaconf import OmegaConf

    if not (run_dir / "config.yaml").exists():
        return {}
    variants = OmegaConf.select(OmegaConf.load(run_dir / "config.yaml"), "compare.variants", default=None) or []
    return {v["name"]: i for i, v in enumerate(variants)}


def starvation_figure(run_dir: str | Path, png: str | Path, md: str | Path | None = None) -> str:
    """(d) Left: mean JCT by true-length tercile per variant; right: max waiting time per variant."""
    t = starvation_table(run_dir)
    plt = _plt()
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    buckets = ("short", "medium", "long")
    x = np.arange(len(buckets))
    width = 0.8 / max(len(t), 1)
    cmap = plt.get_cmap("tab10")
    for i, (_, r) in enumerate(t.iterrows()):
        vals = [_num(r[f"jct_mean_s_{b}"]) for b in buckets]
        ax0.bar(x + i * width, vals, width, label=r["name"], color=cmap(i))
        ax1.bar(i, _num(r["max_wait_s"]), color=cmap(i))
    edges = t["edges"].iloc[0] or [math.nan, math.nan]
    labels = [f"short (≤{edges[0]:.0f} tok)", f"medium (≤{edges[1]:.0f})", f"long (>{edges[1]:.0f})"]
    ax0.set_xticks(x + width * (len(t) - 1) / 2, labels)
    ax0.set_ylabel("mean JCT (s)")
    ax0.legend(fontsize=7)
    ax0.set_title("JCT by true output length tercile", fontsize=10)
    ax1.set_xticks(np.arange(len(t)), t["name"], rotation=35, ha="right", fontsize=7)
    ax1.set_ylabel("max waiting time (s)")
    ax1.set_title("starvation: longest single wait", fontsize=10)
    for ax in (ax0, ax1):
        ax.grid(alpha=0.3, axis="y")
    _save(fig, png)
    base = t[(t["policy"] == "fcfs") & (t["mode"] == "windowed")]
    b = base.iloc[0] if len(base) else None
    lines = ["| variant | aging α (tok/s) | promote after (s) | mean JCT (s) | short | medium | long "
             "| long p99 (s) | max wait (s) | p99 queuing (s) | preemptions |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in t.iterrows():
        d = (lambda k: f" ({_p(_pct(r[k], b[k]))})" if b is not None and r["name"] != b["name"] else "")
        lines.append(
            f"| {r['name']} | {_f(r['aging_tokens_per_s'], 1)} | {_f(r['promote_after_s'], 0)} "
            f"| {_f(r['jct_mean_s'], 2)}{d('jct_mean_s')} | {_f(r['jct_mean_s_short'], 2)}{d('jct_mean_s_short')} "
            f"| {_f(r['jct_mean_s_medium'], 2)}{d('jct_mean_s_medium')} | {_f(r['jct_mean_s_long'], 2)}{d('jct_mean_s_long')} "
            f"| {_f(r['jct_p99_s_long'], 1)} | {_f(r['max_wait_s'], 1)} | {_f(r['queuing_delay_p99_s'], 1)} "
            f"| {int(_num(r['num_preemptions'])) if not math.isnan(_num(r['num_preemptions'])) else 'n/a'} |"
        )
    lines += ["", f"Terciles of the workload's true output length (edges {edges[0]:.0f} / {edges[1]:.0f} tokens); "
              "(Δ vs windowed FCFS). The paper has no numbers here: it leaves starvation and iterative-vs-single "
              "prediction open.", f"Predictor: `{_run_predictor(Path(run_dir))}`."]
    return _write_md("\n".join(lines) + "\n", md)


# ---------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    """``python -m elis.experiments.figures {a,b,c,d} INPUT [--trace DIR] --png P [--md M]``; prints the table."""
    ap = argparse.ArgumentParser(prog="python -m elis.experiments.figures")
    ap.add_argument("result", choices=["a", "b", "c", "d"])
    ap.add_argument("input", type=Path, help="a: metrics.json; b/d: run folder; c: bench scalability JSON")
    ap.add_argument("--trace", type=Path, default=None, help="b: the trace-replay run folder")
    ap.add_argument("--png", type=Path, required=True)
    ap.add_argument("--md", type=Path, default=None)
    ap.add_argument("--split", default="test")
    a = ap.parse_args(sys.argv[1:] if argv is None else argv)
    if a.result == "a":
        md = predictor_figure(a.input, a.png, a.md, a.split)
    elif a.result == "b":
        md = jct_figure(a.input, a.png, a.md, a.trace)
    elif a.result == "c":
        md = scalability_figure(a.input, a.png, a.md)
    else:
        md = starvation_figure(a.input, a.png, a.md)
    print(md)
    print(f"figure: {a.png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
