"""Reports from predictions: markdown tables and matplotlib plots (pure functions of frames).

``per_step_table`` is the paper's MAE-per-step view (arXiv 2505.09142, Fig. 4);
``write_plots`` draws MAE per step, predicted vs true remaining tokens (log-log) and MAE per
generator into a folder.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def _fmt(x: float, digits: int = 3) -> str:
    return "NaN" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def per_step_table(result: dict[str, Any], baselines: dict[str, dict[str, Any]] | None = None) -> str:
    """Markdown: step | n | MAE | RMSE | R² | τ (+ one MAE column per baseline)."""
    base = baselines or {}
    head = "| step | n | MAE (tokens) | RMSE | R² | Kendall τ |" + "".join(
        f" MAE {b} |" for b in base
    )
    lines = [head, "|" + "---|" * (6 + len(base))]
    for k, m in sorted(result["per_step"]["groups"].items(), key=lambda kv: int(kv[0])):
        row = f"| {k} | {m['n']} | {_fmt(m['mae'], 1)} | {_fmt(m['rmse'], 1)} | {_fmt(m['r2'])} | {_fmt(m['kendall_tau'])} |"
        for b in base.values():
            row += f" {_fmt(b['per_step']['groups'].get(k, {}).get('mae', float('nan')), 1)} |"
        lines.append(row)
    o = result["overall"]
    lines.append(
        f"| all | {o['n']} | {_fmt(o['mae'], 1)} | {_fmt(o['rmse'], 1)} | {_fmt(o['r2'])} | {_fmt(o['kendall_tau'])} |"
        + "".join(f" {_fmt(b['overall']['mae'], 1)} |" for b in base.values())
    )
    undefined = result["per_step"]["num_r2_undefined"]
    if undefined:
        lines.append(f"\nR² undefined (n < 2 or constant targets) in {undefined} step(s).")
    return "\n".join(lines) + "\n"


def baseline_table(rows: dict[str, dict[str, Any]], split: str) -> str:
    """Markdown: predictor | MAE | RMSE | R² | τ overall | τ step 0 on ``split``."""
    lines = [
        f"| predictor ({split}) | MAE (tokens) | RMSE | R² | Kendall τ (all) | Kendall τ (step 0) |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        o = r["overall"]
        lines.append(
            f"| {name} | {_fmt(o['mae'], 1)} | {_fmt(o['rmse'], 1)} | {_fmt(o['r2'])} | "
            f"{_fmt(o['kendall_tau'])} | {_fmt(r['kendall_tau_step0'])} |"
        )
    return "\n".join(lines) + "\n"


def write_plots(frame: pd.DataFrame, result: dict[str, Any], out_dir: str | Path, tag: str) -> list[str]:
    """Write ``{tag}_mae_per_step.png``, ``{tag}_pred_vs_true.png``,
    ``{tag}_error_per_generator.png``; returns the file paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []

    steps = sorted(result["per_step"]["groups"].items(), key=lambda kv: int(kv[0]))
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([int(k) for k, _ in steps], [m["mae"] for _, m in steps], marker="o")
    ax.set_xlabel("step k (windows generated)")
    ax.set_ylabel("MAE (remaining tokens)")
    ax.set_title(f"MAE per step ({tag})")
    ax.grid(alpha=0.3)
    paths.append(out / f"{tag}_mae_per_step.png")
    fig.tight_layout()
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.3, 4.5))
    t = frame["target"].to_numpy(float)
    p = np.clip(frame["pred"].to_numpy(float), 1.0, None)
    pts = ax.scatter(t, p, s=3, alpha=0.3, c=frame["step"].to_numpy(), cmap="viridis")
    fig.colorbar(pts, ax=ax, label="step k (windows generated)")  # the colour is otherwise unexplained
    lim = (1.0, max(float(t.max(initial=1)), float(p.max(initial=1))) * 1.2)
    ax.plot(lim, lim, "k--", lw=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("true remaining tokens")
    ax.set_ylabel("predicted remaining tokens")
    ax.set_title(f"predicted vs true ({tag})")
    paths.append(out / f"{tag}_pred_vs_true.png")
    fig.tight_layout()
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    gens = sorted(result["per_generator"]["groups"].items(), key=lambda kv: kv[1]["mae"])
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(gens) + 1.5))
    ax.barh([g for g, _ in gens], [m["mae"] for _, m in gens])
    ax.set_xlabel("MAE (remaining tokens)")
    ax.set_title(f"error per generator ({tag})")
    paths.append(out / f"{tag}_error_per_generator.png")
    fig.tight_layout()
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return [str(p) for p in paths]
