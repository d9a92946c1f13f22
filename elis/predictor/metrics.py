"""Regression and ranking metrics for remaining-token predictions (float64).

R², MAE and RMSE come from ``torchmetrics.functional`` on float64 tensors; Kendall's τ-b from
``scipy.stats.kendalltau`` (the ranking metric learning-to-rank schedulers report, e.g.
vllm-ltr). R² is undefined for fewer than 2 samples or constant targets and τ for fewer than
2 samples or a constant side: both are then reported as NaN, and the group breakdowns count
how many groups had an undefined value (``num_r2_undefined``), never 0, 1 or a crash.
Breakdowns: per step k, per generator and per response-length bucket (``LENGTH_BUCKETS``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

# Response-length buckets (total output tokens L): [lo, hi).
LENGTH_BUCKETS: tuple[tuple[int, float], ...] = (
    (0, 128), (128, 256), (256, 512), (512, 1024), (1024, math.inf)
)


def _defined(y: np.ndarray) -> bool:
    return len(y) >= 2 and not np.all(y == y[0])


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """``{n, mae, rmse, r2, kendall_tau}`` in float64; NaN where undefined (n == 0 → all NaN).

    Raises:
        ValueError: on a shape mismatch or non-finite values.
    """
    import torch
    from scipy.stats import kendalltau
    from torchmetrics.functional import mean_absolute_error, mean_squared_error, r2_score

    t = np.asarray(y_true, dtype=np.float64).reshape(-1)
    p = np.asarray(y_pred, dtype=np.float64).reshape(-1)
    if t.shape != p.shape:
        raise ValueError(f"y_true has shape {t.shape}, y_pred {p.shape}")
    if not (np.all(np.isfinite(t)) and np.all(np.isfinite(p))):
        raise ValueError("regression_metrics: non-finite y_true or y_pred")
    nan = float("nan")
    if len(t) == 0:
        return {"n": 0, "mae": nan, "rmse": nan, "r2": nan, "kendall_tau": nan}
    tt, pp = torch.tensor(t), torch.tensor(p)
    out: dict[str, float] = {
        "n": int(len(t)),
        "mae": float(mean_absolute_error(pp, tt)),
        "rmse": float(mean_squared_error(pp, tt, squared=False)),
        "r2": float(r2_score(pp, tt)) if _defined(t) else nan,
        "kendall_tau": float(kendalltau(t, p).statistic) if _defined(t) and _defined(p) else nan,
    }
    return out


def grouped_metrics(df: pd.DataFrame, by: str) -> dict[str, Any]:
    """Metrics per value of column ``by`` (needs columns ``target``, ``pred``).

    Returns ``{"groups": {value: metrics}, "num_r2_undefined": int, "num_tau_undefined": int}``.
    """
    groups: dict[str, dict[str, float]] = {}
    for key, g in df.groupby(by, sort=True, observed=True):
        groups[str(key)] = regression_metrics(g["target"].to_numpy(), g["pred"].to_numpy())
    return {
        "groups": groups,
        "num_r2_undefined": sum(math.isnan(m["r2"]) for m in groups.values()),
        "num_tau_undefined": sum(math.isnan(m["kendall_tau"]) for m in groups.values()),
    }


def length_bucket(num_output_tokens: np.ndarray) -> np.ndarray:
    """Label like ``'128-256'`` / ``'1024+'`` for each total length (see LENGTH_BUCKETS)."""
    labels = np.empty(len(num_output_tokens), dtype=object)
    for lo, hi in LENGTH_BUCKETS:
        sel = (num_output_tokens >= lo) & (num_output_tokens < hi)
        labels[sel] = f"{lo}+" if math.isinf(hi) else f"{lo}-{int(hi)}"
    return labels


def evaluate_frame(df: pd.DataFrame) -> dict[str, Any]:
    """Full breakdown for one split.

    Args:
        df: one row per iterative sample with columns ``target`` (true remaining tokens),
            ``pred``, ``step``, ``generator``, ``num_output_tokens``.

    Returns:
        ``overall``, ``per_step``, ``per_generator``, ``per_length_bucket`` and
        ``kendall_tau_step0`` (τ over step-0 rows: how well the first prediction ranks jobs).
    """
    df = df.assign(length_bucket=length_bucket(df["num_output_tokens"].to_numpy()))
    per_step = grouped_metrics(df, "step")
    step0 = per_step["groups"].get("0", {}).get("kendall_tau", float("nan"))
    return {
        "overall": regression_metrics(df["target"].to_numpy(), df["pred"].to_numpy()),
        "kendall_tau_step0": step0,
        "per_step": per_step,
        "per_generator": grouped_metrics(df, "generator"),
        "per_length_bucket": grouped_metrics(df, "length_bucket"),
    }
