"""Arrival processes, trace replay and Gamma fitting (elis.experiments.workload)."""

from __future__ import annotations

import numpy as np
import pytest

from elis.experiments.workload import (
    GammaFit,
    fit_gamma,
    gamma_arrivals,
    inter_arrival_times,
    load_trace,
    poisson_arrivals,
    read_trace,
)
from elis.rng import make_rng

N = 20_000


def _cv(x: np.ndarray) -> float:
    return float(np.std(x) / np.mean(x))


def test_poisson_mean_gap_and_cv():
    t = poisson_arrivals(N, rate_rps=4.0, rng=make_rng(0, "arrivals"), start_s=10.0)
    assert t.shape == (N,)
    assert np.all(np.diff(t) >= 0)
    gaps = np.diff(np.concatenate([[10.0], t]))
    assert t[0] > 10.0
    # Standard error of the mean gap: 0.25 / sqrt(N) ~ 0.0018; of the cv ~ 0.007.
    assert abs(gaps.mean() - 0.25) < 0.01
    assert abs(_cv(gaps) - 1.0) < 0.03


@pytest.mark.parametrize("cv", [0.5, 1.0, 2.0])
def test_gamma_mean_gap_and_cv(cv):
    t = gamma_arrivals(N, rate_rps=2.0, cv=cv, rng=make_rng(1, "arrivals"))
    gaps = np.diff(np.concatenate([[0.0], t]))
    assert abs(gaps.mean() - 0.5) < 0.5 * 0.05
    assert abs(_cv(gaps) - cv) < 0.06 * cv


def test_same_seed_same_arrivals_other_seed_differs():
    a = gamma_arrivals(100, 3.0, 1.5, make_rng(7, "arrivals"))
    b = gamma_arrivals(100, 3.0, 1.5, make_rng(7, "arrivals"))
    c = gamma_arrivals(100, 3.0, 1.5, make_rng(8, "arrivals"))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    p1 = poisson_arrivals(50, 1.0, make_rng(7, "arrivals"))
    p2 = poisson_arrivals(50, 1.0, make_rng(7, "arrivals"))
    np.testing.assert_array_equal(p1, p2)


def test_zero_requests():
    assert poisson_arrivals(0, 1.0, make_rng(0, "a")).shape == (0,)
    assert gamma_arrivals(0, 1.0, 1.0, make_rng(0, "a")).shape == (0,)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"rate_rps": 0.0}, "rate_rps"),
        ({"rate_rps": -1.0}, "rate_rps"),
        ({"rate_rps": float("nan")}, "rate_rps"),
        ({"rate_rps": float("inf")}, "rate_rps"),
        ({"cv": 0.0}, "cv"),
        ({"cv": float("nan")}, "cv"),
        ({"num_requests": -1}, "num_requests"),
        ({"start_s": float("nan")}, "start_s"),
    ],
)
def test_gamma_validation_names_parameter(kwargs, name):
    args = {"num_requests": 5, "rate_rps": 1.0, "cv": 1.0, "start_s": 0.0} | kwargs
    with pytest.raises(ValueError, match=name):
        gamma_arrivals(rng=make_rng(0, "a"), **args)


def test_poisson_validation():
    with pytest.raises(ValueError, match="rate_rps"):
        poisson_arrivals(3, 0, make_rng(0, "a"))


def test_inter_arrival_times():
    np.testing.assert_allclose(inter_arrival_times(np.array([1.0, 1.5, 1.5, 4.0])), [0.5, 0.0, 2.5])
    assert inter_arrival_times(np.array([3.0])).shape == (0,)
    with pytest.raises(ValueError, match="non-decreasing"):
        inter_arrival_times(np.array([1.0, 0.5]))


@pytest.mark.parametrize(("rate", "cv"), [(2.0, 1.0), (5.0, 2.5), (0.5, 0.6)])
def test_fit_gamma_recovers_parameters(rate, cv):
    t = gamma_arrivals(N, rate, cv, make_rng(3, "fit"))
    gaps = inter_arrival_times(t)
    fit = fit_gamma(gaps)
    assert isinstance(fit, GammaFit)
    # cv=2.5 (shape 0.16) draws gaps below float64 resolution of the cumulative time: the
    # zero-gap rule must keep the fit finite and close.
    assert fit.num_gaps == N - 1 and fit.num_zero_gaps == int(np.sum(gaps == 0))
    assert abs(fit.rate_rps - rate) / rate < 0.05
    assert abs(fit.cv - cv) / cv < 0.05
    assert fit.shape == pytest.approx(1 / fit.cv**2)
    assert fit.rate_rps == pytest.approx(1 / (fit.shape * fit.scale_s))


def test_fit_gamma_zero_gaps_counted_and_finite():
    gaps = np.diff(gamma_arrivals(2000, 1.0, 1.0, make_rng(4, "fit")))
    gaps[::10] = 0.0
    fit = fit_gamma(gaps, resolution_s=1e-3)
    assert fit.num_zero_gaps == len(gaps[::10])
    assert np.isfinite(fit.shape) and fit.shape > 0 and np.isfinite(fit.rate_rps)
    with pytest.raises(ValueError, match="all zero"):
        fit_gamma(np.zeros(5))
    with pytest.raises(ValueError, match="at least 2"):
        fit_gamma(np.array([1.0]))
    with pytest.raises(ValueError, match=">= 0"):
        fit_gamma(np.array([1.0, -1.0]))


TINY_CSV = """TIMESTAMP,ContextTokens,GeneratedTokens
2023-11-16 18:15:46.6805900,374,44
2023-11-16 18:15:50.9951690,396,109
2023-11-16 18:15:48.0000001,10,3
2023-11-16 18:15:50.9951690,7,8
"""


def test_trace_offsets_sorted_and_scaled(tmp_path):
    p = tmp_path / "trace.csv"
    p.write_text(TINY_CSV)
    tr = read_trace(p)
    df = tr.requests
    assert list(df.columns) == ["arrival_time_s", "num_prompt_tokens", "num_output_tokens"]
    # Row 3 (48.0000001) moves before row 2; rows 2 and 4 share a timestamp: file order kept.
    np.testing.assert_allclose(df["arrival_time_s"], [0.0, 1.3194101, 4.314579, 4.314579], atol=1e-9)
    assert df["num_prompt_tokens"].tolist() == [374, 10, 396, 7]
    assert df["num_output_tokens"].tolist() == [44, 3, 109, 8]
    assert tr.num_reordered_rows == 2  # rows 2 and 3 swapped places
    fast = load_trace(p, time_scale=2.0)
    np.testing.assert_allclose(fast["arrival_time_s"], df["arrival_time_s"] / 2.0)
    head = load_trace(p, max_rows=2)
    np.testing.assert_allclose(head["arrival_time_s"], [0.0, 4.314579], atol=1e-9)


def test_trace_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        load_trace(tmp_path / "nope.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("TIMESTAMP,ContextTokens\n2023-11-16 18:15:46.68,3\n")
    with pytest.raises(ValueError, match="GeneratedTokens"):
        load_trace(bad)
    neg = tmp_path / "neg.csv"
    neg.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.68,3,-2\n")
    with pytest.raises(ValueError, match="GeneratedTokens"):
        load_trace(neg)
    ok = tmp_path / "ok.csv"
    ok.write_text(TINY_CSV)
    with pytest.raises(ValueError, match="time_scale"):
        load_trace(ok, time_scale=0)


def test_azure_conv_trace(shared_data):
    path = shared_data / "traces" / "azure_llm_inference_2023" / "AzureLLMInferenceTrace_conv.csv"
    tr = read_trace(path)
    df = tr.requests
    assert len(df) == 19_366
    assert df["arrival_time_s"].iloc[0] == 0.0
    assert np.all(np.diff(df["arrival_time_s"]) >= 0)
    # About one hour of traffic (README of ../shared/data).
    assert 3000 < tr.duration_s < 4000
    fit = fit_gamma(inter_arrival_times(tr.arrival_time_s))
    empirical_rate = (len(df) - 1) / tr.duration_s
    assert abs(fit.rate_rps - empirical_rate) / empirical_rate < 0.2
    assert fit.cv > 0
