"""Metrics: hand-computed values and the undefined cases (NaN with a count, never 0/1/crash)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from elis.predictor.metrics import evaluate_frame, length_bucket, regression_metrics


def test_hand_computed_values():
    m = regression_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 4.0]))
    # MAE 1/3; RMSE sqrt(1/3); R² = 1 - 1/2 = 0.5; τ = 1 (same order).
    assert m["n"] == 3 and m["mae"] == pytest.approx(1 / 3)
    assert m["rmse"] == pytest.approx(math.sqrt(1 / 3))
    assert m["r2"] == pytest.approx(0.5) and m["kendall_tau"] == pytest.approx(1.0)


@pytest.mark.parametrize("y", [np.array([5.0]), np.array([7.0, 7.0, 7.0])])
def test_r2_undefined_is_nan(y):
    m = regression_metrics(y, y + 1.0)
    assert math.isnan(m["r2"]) and math.isnan(m["kendall_tau"])
    assert m["mae"] == pytest.approx(1.0)


def test_empty_and_bad_inputs():
    assert math.isnan(regression_metrics(np.array([]), np.array([]))["mae"])
    with pytest.raises(ValueError, match="shape"):
        regression_metrics(np.ones(2), np.ones(3))
    with pytest.raises(ValueError, match="non-finite"):
        regression_metrics(np.array([1.0, np.nan]), np.ones(2))


def test_breakdowns_count_undefined_groups():
    df = pd.DataFrame({
        "target": [100.0, 50.0, 300.0, 20.0], "pred": [90.0, 60.0, 280.0, 20.0],
        "step": [0, 1, 0, 1], "generator": ["a", "a", "b", "c"],
        "num_output_tokens": [100, 100, 300, 2000],
    })
    r = evaluate_frame(df)
    assert r["per_step"]["groups"]["0"]["mae"] == pytest.approx(15.0)
    assert r["kendall_tau_step0"] == pytest.approx(1.0)
    assert r["per_generator"]["num_r2_undefined"] == 2  # b and c have one row each
    assert set(r["per_length_bucket"]["groups"]) == {"0-128", "256-512", "1024+"}
    assert list(length_bucket(np.array([0, 127, 128, 5000]))) == ["0-128", "0-128", "128-256", "1024+"]


def test_logged_validation_metrics_accumulate_in_float64():
    """Targets 8000 + U{0..10}: float32 sums of squares cancel (R² 1.49); float64 gives 0.61."""
    import torch

    from elis.predictor.module import LengthRegressor

    rng = np.random.default_rng(0)
    y = 8000.0 + rng.integers(0, 11, size=4000)
    pred = y + rng.normal(0.0, 2.0, size=y.size)
    module = LengthRegressor(head={"input_dim": 4, "num_hidden_layers": 1, "hidden_dim": 4})
    logged: dict[str, float] = {}
    module.log = lambda name, value, **kw: logged.__setitem__(name, float(value))
    module.to(torch.float32)  # as load_from_checkpoint does: casts the metric states too
    module.on_validation_epoch_start()
    for sl in np.array_split(np.arange(y.size), 8):  # 8 validation batches, float32 like the loader
        z = torch.tensor(pred[sl], dtype=torch.float32)
        module.forward = lambda batch, z=z: z
        module.validation_step({"target": torch.tensor(y[sl], dtype=torch.float32)}, 0)
    module.on_validation_epoch_end()
    p32 = pred.astype(np.float32).astype(np.float64)  # what the head's float32 output holds
    want_r2 = 1 - np.sum((y - p32) ** 2) / np.sum((y - y.mean()) ** 2)
    assert logged["val/r2"] == pytest.approx(want_r2, abs=1e-9)
    assert logged["val/mae"] == pytest.approx(np.mean(np.abs(y - p32)), abs=1e-9)
    assert logged["val/loss"] == pytest.approx(np.mean((y - p32) ** 2), rel=1e-5)  # loss itself is float32
    assert 0.3 < logged["val/r2"] < 0.9
