"""Tail vs mean: how much aging/promotion (or Gittins) a length-ranked policy needs (issue 12 item 5).

Ranking by predicted remaining length (ISRTF) lowers the MEAN JCT but can starve long requests,
raising the p99 above FCFS's. Aging (``aging_tokens_per_s``, ``elis.serving.policy``) bounds
that starvation. ``tradeoff_frame(run_dir)`` reads a compare run (single or multi-seed; means
over seeds) holding ``fcfs``, ``isrtf`` (no aging, no promotion) and any number of aged /
promoted / other variants IN THE SAME MODE, and gives per variant:

- ``isrtf_gain_share`` = (JCT_fcfs − JCT_v) / (JCT_fcfs − JCT_isrtf): the share of plain ISRTF's
  mean-JCT gain the variant keeps;
- ``p99_vs_fcfs`` = p99_v / p99_fcfs;
- ``meets_target``: p99_v ≤ p99_fcfs AND isrtf_gain_share ≥ 0.8 (the issue's target).

``best_setting`` picks the target-meeting variant with the lowest mean JCT. ``plot_tradeoff``
draws mean vs p99 JCT (one point per variant, aged ISRTF joined by a line in order of α) with
FCFS's p99 and the 80%-of-gain mean as dashed lines.

CLI: ``python -m elis.experiments.tradeoff RUN_DIR [--mode windowed] [--png PATH] [--md PATH]``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd

from elis.experiments.report import load_variants

log = logging.getLogger(__name__)

TARGET_GAIN_SHARE = 0.8


def _plain(df: pd.DataFrame, policy: str) -> pd.Series:
    sel = df[(df["policy"] == policy) & (df["aging_tokens_per_s"].fillna(0) == 0) & df["promote_after_s"].isna()]
    if sel.empty:
        raise ValueError(f"tradeoff needs a plain {policy!r} variant (no aging, no promotion); have {list(df['name'])}")
    return sel.iloc[0]


def tradeoff_frame(run_dir: str | Path, mode: str = "windowed") -> pd.DataFrame:
    """Per variant of ``mode``: mean and p99 JCT, ``isrtf_gain_share``, ``p99_vs_fcfs``, ``meets_target``.

    Raises:
        ValueError: the mode lacks a plain fcfs or isrtf variant, or ISRTF gains nothing.
    """
    df = load_variants(run_dir)
    df = df[df["mode"] == mode].reset_index(drop=True)
    fcfs, isrtf = _plain(df, "fcfs"), _plain(df, "isrtf")
    gain = fcfs["jct_mean_s"] - isrtf["jct_mean_s"]
    if not gain > 0:
        raise ValueError(f"plain isrtf ({isrtf['jct_mean_s']:.3f} s) does not beat fcfs ({fcfs['jct_mean_s']:.3f} s) in {mode}")
    out = df[["name", "policy", "aging_tokens_per_s", "promote_after_s", "promote_by", "jct_mean_s", "jct_p99_s"]].copy()
    out["isrtf_gain_share"] = (fcfs["jct_mean_s"] - out["jct_mean_s"]) / gain
    out["p99_vs_fcfs"] = out["jct_p99_s"] / fcfs["jct_p99_s"]
    out["meets_target"] = (out["jct_p99_s"] <= fcfs["jct_p99_s"]) & (out["isrtf_gain_share"] >= TARGET_GAIN_SHARE)
    out = out.assign(_a=out["aging_tokens_per_s"].fillna(0), _p=out["promote_after_s"].fillna(float("inf")))
    out = out.sort_values(["policy", "promote_by", "_p", "_a"], kind="stable").drop(columns=["_a", "_p"]).reset_index(drop=True)
    out.attrs.update(fcfs_p99_s=float(fcfs["jct_p99_s"]), fcfs_mean_s=float(fcfs["jct_mean_s"]),
                     isrtf_mean_s=float(isrtf["jct_mean_s"]))
    return out


def best_setting(frame: pd.DataFrame) -> pd.Series | None:
    """The target-meeting variant with the lowest mean JCT (None when none meets it)."""
    ok = frame[frame["meets_target"]]
    return None if ok.empty else ok.sort_values("jct_mean_s").iloc[0]


def tradeoff_markdown(frame: pd.DataFrame) -> str:
    lines = ["| variant | α (tokens/s) | promote after (s) (by) | mean JCT (s) | p99 JCT (s) | share of ISRTF gain | p99 / FCFS p99 | target |",
             "|---|---|---|---|---|---|---|---|"]
    for _, r in frame.iterrows():
        promote = "-" if pd.isna(r["promote_after_s"]) else f"{r['promote_after_s']:g} ({r['promote_by']})"
        lines.append(
            f"| {r['name']} | {r['aging_tokens_per_s'] or 0:g} | "
            f"{promote} | {r['jct_mean_s']:.3f} | "
            f"{r['jct_p99_s']:.3f} | {100 * r['isrtf_gain_share']:.1f}% | {r['p99_vs_fcfs']:.3f} | "
            f"{'yes' if r['meets_target'] else 'no'} |"
        )
    best = best_setting(frame)
    lines += ["", "Target: p99 ≤ FCFS p99 and ≥ 80% of plain ISRTF's mean-JCT gain over FCFS (same mode).",
              f"- Best setting meeting it: {best['name']}" if best is not None else "- No variant meets the target."]
    return "\n".join(lines) + "\n"


def plot_tradeoff(frame: pd.DataFrame, path: str | Path) -> Path:
    """Mean (y) vs p99 (x) JCT per variant; aged ISRTF as a line ordered by α."""
    from elis.experiments.plots import _plt, _save

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    aged = frame[(frame["policy"] == "isrtf") & frame["promote_after_s"].isna()].copy()
    aged["a"] = aged["aging_tokens_per_s"].fillna(0)
    aged = aged.sort_values("a")
    ax.plot(aged["jct_p99_s"], aged["jct_mean_s"], marker="o", color="tab:green", label="isrtf, aging α")
    for _, r in aged.iterrows():
        ax.annotate(f"α={r['a']:g}", (r["jct_p99_s"], r["jct_mean_s"]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    for _, r in frame.drop(aged.index).iterrows():
        ax.scatter(r["jct_p99_s"], r["jct_mean_s"], marker="s")
        ax.annotate(r["name"], (r["jct_p99_s"], r["jct_mean_s"]), fontsize=7, xytext=(3, -9), textcoords="offset points")
    a = frame.attrs
    ax.axvline(a["fcfs_p99_s"], ls="--", color="grey", lw=1, label="FCFS p99")
    ax.axhline(a["fcfs_mean_s"] - TARGET_GAIN_SHARE * (a["fcfs_mean_s"] - a["isrtf_mean_s"]), ls=":", color="grey",
               lw=1, label="80% of ISRTF's mean gain")
    ax.set_xlabel("p99 JCT (s)")
    ax.set_ylabel("mean JCT (s)")
    ax.set_title("Mean vs tail JCT over the aging rate")
    ax.legend(fontsize=7)
    return _save(fig, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run_dir")
    p.add_argument("--mode", default="windowed")
    p.add_argument("--png")
    p.add_argument("--md")
    a = p.parse_args(argv)
    frame = tradeoff_frame(a.run_dir, a.mode)
    md = tradeoff_markdown(frame)
    if a.md:
        Path(a.md).write_text(md)
    if a.png:
        plot_tradeoff(frame, a.png)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
