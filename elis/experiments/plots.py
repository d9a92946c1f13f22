"""Plots: pure functions of saved run directories (``requests.parquet``, ``metrics.json``).

- ``plot_jct_cdf(run_dir, path)``: empirical CDF of JCT, one line per variant.
- ``plot_jct_by_bucket(run_dir, path)``: mean JCT per true-length bucket (short/medium/long
  terciles, ``elis.serving.metrics``) per variant: who pays for ISRTF.
- ``plot_queuing_delay(run_dir, path)``: mean and p99 queuing delay per variant.
- ``plot_jct_vs_rate(run_dir, path)``: mean and p99 JCT against request rate (sweep runs,
  ``run_dir/rates/<rate>/``).
``plot_run(run_dir)`` draws whichever apply into ``run_dir/plots/``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from elis.experiments.report import load_variants

log = logging.getLogger(__name__)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


POLICY_COLORS = {"fcfs": "tab:blue", "sjf": "tab:orange", "isrtf": "tab:green", "srtf_oracle": "tab:red",
                 "las": "tab:purple", "mlfq": "tab:brown", "gittins": "tab:olive"}


def _style(row) -> dict:
    """Colour by policy, solid for windowed and dashed for continuous."""
    return {"color": POLICY_COLORS.get(row["policy"]), "linestyle": "-" if row["mode"] == "windowed" else "--"}


def _records(row) -> pd.DataFrame:
    return pd.read_parquet(Path(row["run_dir"]) / "requests.parquet")


def plot_jct_cdf(run_dir: str | Path, path: str | Path) -> Path:
    """Empirical JCT CDF per variant (log-x)."""
    plt = _plt()
    df = load_variants(run_dir)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for _, row in df.iterrows():
        jct = np.sort(_records(row)["jct_s"].dropna().to_numpy())
        if jct.size:
            ax.step(jct, np.arange(1, jct.size + 1) / jct.size, where="post", label=row["name"], **_style(row))
    ax.set_xscale("log")
    ax.set_xlabel("JCT (s)")
    ax.set_ylabel("fraction of requests")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_jct_by_bucket(run_dir: str | Path, path: str | Path) -> Path:
    """Grouped bars: mean JCT for short/medium/long true lengths, per variant."""
    plt = _plt()
    df = load_variants(run_dir)
    buckets = ("short", "medium", "long")
    x = np.arange(len(buckets))
    width = 0.8 / max(len(df), 1)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, (_, row) in enumerate(df.iterrows()):
        vals = [row[f"jct_mean_s_{b}"] if row[f"jct_mean_s_{b}"] is not None else np.nan for b in buckets]
        ax.bar(x + i * width, vals, width, label=row["name"], color=_style(row)["color"],
               hatch="" if row["mode"] == "windowed" else "//", edgecolor="white")
    ax.set_xticks(x + width * (len(df) - 1) / 2, [f"{b} (true length tercile)" for b in buckets])
    ax.set_ylabel("mean JCT (s)")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_queuing_delay(run_dir: str | Path, path: str | Path) -> Path:
    """Mean and p99 queuing delay per variant."""
    plt = _plt()
    df = load_variants(run_dir)
    x = np.arange(len(df))
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.bar(x - 0.2, df["queuing_delay_mean_s"].astype(float), 0.4, label="mean")
    ax.bar(x + 0.2, df["queuing_delay_p99_s"].astype(float), 0.4, label="p99")
    ax.set_xticks(x, df["name"], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("queuing delay (s)")
    ax.legend()
    return _save(fig, path)


def load_sweep(run_dir: str | Path) -> pd.DataFrame:
    """Variants of every ``run_dir/rates/<rate>/`` with a ``rate`` column (sorted)."""
    frames = []
    for d in sorted(Path(run_dir).glob("rates/*")):
        if d.is_dir():
            f = load_variants(d)
            f["rate"] = float(d.name)
            frames.append(f)
    if not frames:
        raise FileNotFoundError(f"no rates/<rate>/ folders under {run_dir}")
    return pd.concat(frames, ignore_index=True).sort_values(["name", "rate"])


def plot_jct_vs_rate(run_dir: str | Path, path: str | Path) -> Path:
    """Mean (left) and p99 (right) JCT against the sweep's rate, one line per variant."""
    plt = _plt()
    df = load_sweep(run_dir)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    # the REALISED offered rate when the runs recorded it (issue 12 item 7), else the requested one
    realised = "offered_rate_rps" in df and df["offered_rate_rps"].notna().all()
    x_col = "offered_rate_rps" if realised else "rate"
    for name, g in df.groupby("name", sort=True):
        style = _style(g.iloc[0])
        g = g.sort_values(x_col)
        axes[0].plot(g[x_col].astype(float), g["jct_mean_s"].astype(float), marker="o", label=name, **style)
        axes[1].plot(g[x_col].astype(float), g["jct_p99_s"].astype(float), marker="o", label=name, **style)
    for ax, t in zip(axes, ("mean JCT (s)", "p99 JCT (s)")):
        ax.set_xlabel("realised offered rate (req/s)" if realised else "request rate (req/s, or trace time_scale)")
        ax.set_ylabel(t)
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(p, dpi=120)
    _plt().close(fig)
    return p


def plot_run(run_dir: str | Path) -> list[Path]:
    """Draw every applicable plot into ``run_dir/plots/``; returns the files written."""
    root = Path(run_dir)
    out = []
    if (root / "rates").is_dir():
        out.append(plot_jct_vs_rate(root, root / "plots" / "jct_vs_rate.png"))
        dirs = sorted(d for d in (root / "rates").iterdir() if d.is_dir())
    else:
        dirs = [root]
    for d in dirs:
        suffix = "" if d == root else f"_rate{d.name}"
        try:
            load_variants(d)
        except FileNotFoundError:
            continue
        out.append(plot_jct_cdf(d, root / "plots" / f"jct_cdf{suffix}.png"))
        out.append(plot_jct_by_bucket(d, root / "plots" / f"jct_by_bucket{suffix}.png"))
        out.append(plot_queuing_delay(d, root / "plots" / f"queuing_delay{suffix}.png"))
    log.info("wrote %d plots under %s", len(out), root / "plots")
    return out
