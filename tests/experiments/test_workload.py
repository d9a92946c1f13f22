"""Arrival processes, trace replay and Gamma fitting (elis.experiments.workload)."""

from __future__ import annotations

import numpy as np
import pytest

from elis.experiments.workload import (
    MAX_GAMMA_CV,
    GammaFit,
    check_mean_gap,
    fit_gamma,
    gamma_arrivals,
    infer_resolution_s,
    inter_arrival_times,
    load_trace,
    poisson_arrivals,
    read_trace,
    spread_ties,
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
        ({"cv": -0.5}, "cv"),
        ({"cv": float("nan")}, "cv"),
        ({"cv": float("inf")}, "cv"),
        ({"cv": 10.5}, "cv"),
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
    # max_rows keeps the earliest rows by time, not the first rows of the file.
    head = load_trace(p, max_rows=2)
    np.testing.assert_allclose(head["arrival_time_s"], [0.0, 1.3194101], atol=1e-9)
    assert head["num_prompt_tokens"].tolist() == [374, 10]


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
    with pytest.raises(ValueError, match="time_scale=1e-308 makes the offsets"):
        load_trace(ok, time_scale=1e-308)


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


# ---------------------------------------------------------------- degenerate Gamma (issue 11.5)
def test_degenerate_gamma_shape_refused():
    # Shape 1e-9: every float64 draw underflows to 0, all arrivals at t=0. Refused, naming cv.
    with pytest.raises(ValueError, match=r"cv must be a number in \[0, 10\], got 31623"):
        gamma_arrivals(10_000, rate_rps=2.0, cv=31623, rng=make_rng(0, "arrivals"))
    # The largest accepted cv still realises the rate (N·k = 100: spread 10%).
    t = gamma_arrivals(10_000, rate_rps=2.0, cv=MAX_GAMMA_CV, rng=make_rng(0, "arrivals"))
    assert abs(t[-1] / 10_000 - 0.5) < 0.5 * 0.5


def test_gamma_limits_cv_zero_and_rate_inf():
    # cv → 0: constant gaps 1/rate from start_s.
    t = gamma_arrivals(4, rate_rps=2.0, cv=0.0, rng=make_rng(0, "a"), start_s=1.0)
    np.testing.assert_array_equal(t, [1.5, 2.0, 2.5, 3.0])
    # Tiny cv: the exact law is narrower than float64 rounding of the sum; still accepted.
    t = gamma_arrivals(100_000, rate_rps=3.0, cv=1e-12, rng=make_rng(0, "a"))
    assert t[-1] / 100_000 == pytest.approx(1 / 3, rel=1e-9)
    # rate → ∞: one burst at start_s, for Gamma and Poisson alike.
    np.testing.assert_array_equal(gamma_arrivals(3, float("inf"), 2.0, make_rng(0, "a"), 5.0), [5.0] * 3)
    np.testing.assert_array_equal(poisson_arrivals(2, float("inf"), make_rng(0, "a")), [0.0, 0.0])


def test_check_mean_gap_refuses_a_draw_that_misses_the_rate(caplog):
    # Exact mean: 4 gaps of 0.5 s at rate 2.
    assert check_mean_gap(np.array([0.5, 1.0, 1.5, 2.0]), 2.0, 1.0) == 0.5
    # 100 Poisson arrivals all at t=0 (the underflow symptom): mean gap 0, far outside
    # Gamma(100, 1/100)'s central 1 - 1e-6 interval [~0.6, ~1.6].
    with pytest.raises(ValueError, match=r"realised mean gap 0 s of 100 arrivals is 0 × 1/rate_rps"):
        check_mean_gap(np.zeros(100), 2.0, 1.0)
    # Mean gap 1.0 s for rate 2 (0.5 s asked) with cv=0: refused.
    with pytest.raises(ValueError, match="does not realise the asked rate"):
        check_mean_gap(np.arange(1.0, 5.0), 2.0, 0.0)
    with pytest.raises(ValueError, match="rate_rps=inf"):
        check_mean_gap(np.array([0.0, 1.0]), float("inf"), 1.0)
    # 4 arrivals at cv=2: spread 2/sqrt(4) = 100% > 25%, warned with the realised rate.
    caplog.clear()
    with caplog.at_level("WARNING", logger="elis.experiments.workload"):
        check_mean_gap(np.array([0.5, 1.0, 1.5, 4.0]), 2.0, 2.0)
    assert "realises 1 req/s for the 2 asked" in caplog.text


def test_cli_degenerate_cv_refused():
    from omegaconf import OmegaConf

    from elis.experiments.run import make_arrivals

    wl = OmegaConf.create({"kind": "gamma", "rate_rps": 2.0, "cv": 31623})
    with pytest.raises(ValueError, match="cv must be"):
        make_arrivals(wl, 100, seed=0)
    wl = OmegaConf.create({"kind": "poisson", "rate_rps": "inf"})
    np.testing.assert_array_equal(make_arrivals(wl, 3, seed=0)[0], [0.0, 0.0, 0.0])


# ---------------------------------------------------------------- coarse timestamps (issue 11.6)
def test_spread_ties_hand_computed():
    # Times 0,0,0 | 1 | 3,3 at r = 1 s -> 0.25, 0.5, 0.75 | 1.5 | 3+1/3, 3+2/3.
    gaps = spread_ties(np.array([0.0, 0.0, 1.0, 2.0, 0.0]), 1.0)
    np.testing.assert_allclose(gaps, [0.25, 0.25, 0.75, 11 / 6, 1 / 3])
    # Times 0,0 | 1 at r = 12 s: 4, 8 | 6 -> the second gap would be 1 + 6 - 8 < 0.
    with pytest.raises(ValueError, match="resolution_s=12.0 is coarser"):
        spread_ties(np.array([0.0, 1.0]), 12.0)
    assert infer_resolution_s(np.array([0.0, 1.0, 3.0])) == 1.0
    assert infer_resolution_s(np.array([0.0, 0.0013, 0.5])) == 1e-4
    assert infer_resolution_s(np.array([0.1234567891234])) is None


def test_fit_gamma_coarse_timestamps():
    # 1000 Poisson arrivals at mean gap 1.372 s, floored to whole seconds (~28% ties).
    t = gamma_arrivals(1000, 1 / 1.372, 1.0, make_rng(0, "coarse"))
    true_gaps = np.diff(t)
    gaps = np.diff(np.floor(t))
    assert 0.2 < np.mean(gaps == 0) < 0.35
    spread = spread_ties(gaps, 1.0)
    for fit in (fit_gamma(gaps, resolution_s=1.0), fit_gamma(gaps)):  # given / inferred resolution
        assert fit.resolution_s == 1.0 and fit.method == "moments"
        assert abs(1 / fit.rate_rps - true_gaps.mean()) / true_gaps.mean() < 0.05
        assert fit.cv == pytest.approx(spread.std() / spread.mean(), rel=1e-9)
        assert abs(fit.cv - 1.0) < 0.1
    # The old default (ties at a 100 ns resolution, maximum likelihood): the cv blows up.
    assert fit_gamma(gaps, resolution_s=1e-7, method="mle").cv > 2


# ---------------------------------------------------------------- time units (issue 11.7)
ISO_ROWS = ["2023-11-16 18:15:46.680590", "2023-11-16 18:15:47.000001", "2023-11-16 18:15:50.500000"]
EPOCH_US = [1700158546680590, 1700158547000001, 1700158550500000]  # the same instants (UTC)


def _csv(path, stamps):
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                    + "".join(f"{s},{i + 1},{i + 2}\n" for i, s in enumerate(stamps)))
    return path


@pytest.mark.parametrize(
    ("unit", "stamps"),
    [
        ("us", EPOCH_US),
        ("ms", [u // 1000 for u in EPOCH_US]),
        ("s", [f"{u / 1e6:.6f}" for u in EPOCH_US]),
        ("ns", [u * 1000 for u in EPOCH_US]),
    ],
)
def test_time_units_match_iso(tmp_path, unit, stamps, caplog):
    iso = read_trace(_csv(tmp_path / "iso.csv", ISO_ROWS))
    assert iso.time_unit == "iso"
    with caplog.at_level("INFO", logger="elis.experiments.workload"):
        detected = read_trace(_csv(tmp_path / f"{unit}.csv", stamps))
    assert detected.time_unit == unit
    assert f"time_unit={unit} detected" in caplog.text
    explicit = read_trace(tmp_path / f"{unit}.csv", time_unit=unit)
    want = iso.arrival_time_s if unit != "ms" else np.array([0.0, 0.32, 3.82])  # ms drops the µs
    np.testing.assert_allclose(detected.arrival_time_s, want, rtol=0, atol=1e-9 if unit != "s" else 1e-6)
    np.testing.assert_array_equal(explicit.arrival_time_s, detected.arrival_time_s)


def test_time_units_offsets_and_errors(tmp_path):
    small = _csv(tmp_path / "offsets.csv", [0, 250, 1000])
    with pytest.raises(ValueError, match=r"offsets.csv: column TIMESTAMP holds numbers up to 1000.*time_unit"):
        read_trace(small)
    np.testing.assert_array_equal(read_trace(small, time_unit="ms").arrival_time_s, [0.0, 0.25, 1.0])
    np.testing.assert_array_equal(read_trace(small, time_unit="s").arrival_time_s, [0.0, 250.0, 1000.0])
    with pytest.raises(ValueError, match=r"time_unit='h' is not one of \['auto', 'iso', 's', 'ms', 'us', 'ns'\]"):
        read_trace(small, time_unit="h")
    iso = _csv(tmp_path / "iso.csv", ISO_ROWS)
    with pytest.raises(ValueError, match="must hold numbers in time_unit='s'"):
        read_trace(iso, time_unit="s")
    with pytest.raises(ValueError, match="not ISO 8601"):
        read_trace(small, time_unit="iso")


# ---------------------------------------------------------------- unsorted traces (issue 11.8)
def test_unsorted_trace_sorted_before_first_n(tmp_path):
    # File order 5 s, 0 s, 9 s, 1 s, 2 s: the 3 earliest are 0, 1, 2 s (rate 1 req/s), not
    # the first 3 file rows (0, 5, 9 s after sorting: 0.25 req/s).
    stamps = [f"2024-01-01 00:00:0{s}" for s in (5, 0, 9, 1, 2)]
    tr = read_trace(_csv(tmp_path / "shuffled.csv", stamps), max_rows=3)
    np.testing.assert_array_equal(tr.arrival_time_s, [0.0, 1.0, 2.0])
    assert tr.requests["num_prompt_tokens"].tolist() == [2, 4, 5]
    assert tr.num_reordered_rows == 5


def test_shuffled_azure_conv_trace_rate(shared_data, tmp_path):
    import pandas as pd

    src = shared_data / "traces" / "azure_llm_inference_2023" / "AzureLLMInferenceTrace_conv.csv"
    df = pd.read_csv(src)
    shuffled = tmp_path / "conv_shuffled.csv"
    df.sample(frac=1.0, random_state=0).to_csv(shuffled, index=False)
    a = read_trace(src, max_rows=1000).arrival_time_s
    b = read_trace(shuffled, max_rows=1000).arrival_time_s
    np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- other formats (issue 11.9)
MOONCAKE = [
    {"timestamp": 40, "input_length": 300, "output_length": 7, "hash_ids": [3, 4]},
    {"timestamp": 0, "input_length": 1000, "output_length": 6, "hash_ids": [0, 1, 2]},
    {"timestamp": 40, "input_length": 20, "output_length": 1, "hash_ids": [5]},
    {"timestamp": 3040, "input_length": 512, "output_length": 64, "hash_ids": [0, 6]},
]


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_mooncake_jsonl(tmp_path, suffix):
    import gzip
    import json

    p = tmp_path / f"trace{suffix}"
    text = "\n".join(json.dumps(r) for r in MOONCAKE) + "\n"
    if suffix.endswith(".gz"):
        with gzip.open(p, "wt") as f:
            f.write(text)
    else:
        p.write_text(text)
    tr = read_trace(p, time_scale=2.0)
    assert tr.format == "mooncake_jsonl" and tr.time_unit == "ms"
    np.testing.assert_array_equal(tr.arrival_time_s, [0.0, 0.02, 0.02, 1.52])
    assert tr.requests["num_prompt_tokens"].tolist() == [1000, 300, 20, 512]
    assert tr.requests["num_output_tokens"].tolist() == [6, 7, 1, 64]


def test_trace_format_errors_name_file_and_formats(tmp_path):
    odd = tmp_path / "trace.parquet"
    odd.write_bytes(b"PAR1")
    with pytest.raises(ValueError, match=r"trace.parquet: unknown trace format.*azure_csv.*mooncake_jsonl"):
        read_trace(odd)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"timestamp": 0, "input_length": 3, "output_length": 1}\n{"timestamp": 5,\n')
    with pytest.raises(ValueError, match=r"bad.jsonl: line 2 is not JSON.*mooncake_jsonl"):
        read_trace(bad)
    lacks = tmp_path / "lacks.jsonl"
    lacks.write_text('{"timestamp": 0, "input_length": 3}\n')
    with pytest.raises(ValueError, match=r"lacks.jsonl: line 1 lacks field\(s\) \['output_length'\]"):
        read_trace(lacks)
    # A JSONL file read as CSV (wrong explicit format) names the file and the formats.
    with pytest.raises(ValueError, match=r"lacks.jsonl.*supported trace formats"):
        read_trace(lacks, format="azure_csv")


def test_mooncake_real_trace(shared_data):
    tr = read_trace(shared_data / "traces" / "mooncake_fast25" / "synthetic_trace.jsonl.gz")
    df = tr.requests
    assert len(df) == 3993 and tr.num_reordered_rows == 0
    assert df["arrival_time_s"].iloc[0] == 0.0 and np.all(np.diff(df["arrival_time_s"]) >= 0)
    assert df["num_prompt_tokens"].iloc[0] == 40160 and df["num_output_tokens"].iloc[0] == 6
