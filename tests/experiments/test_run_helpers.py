"""Run helpers: capacity estimate, overload warning, generator filter (hand-computed)."""

import logging

import pandas as pd
import pytest

from elis.experiments.run import warn_if_overloaded
from elis.serving.cost_model import CostModel, estimate_capacity_rps

# Only a decode base cost: one step = 0.1 s whatever the batch; no prefill cost.
CM = CostModel(name="hand", decode_base_s=0.1)


def test_capacity_is_batch_over_decode_time():
    # B=4 requests of L=10 tokens share 10 steps + the EOS step of 0.1 s: 4 / 1.1 requests per second.
    assert estimate_capacity_rps(CM, mean_prompt_tokens=5, mean_output_tokens=10, max_batch_size=4) == pytest.approx(4 / 1.1)


def _wl(arrivals):
    n = len(arrivals)
    return pd.DataFrame({"arrival_time_s": arrivals, "num_prompt_tokens": [5] * n, "num_output_tokens": [10] * n})


def test_light_load_is_reported_without_warning(caplog):
    with caplog.at_level(logging.INFO, logger="elis.experiments.run"):
        load = warn_if_overloaded(_wl([0.0, 1.0, 2.0]), CM, max_batch_size=4, num_workers=1)
    assert load == pytest.approx(0.275)  # 1 req/s offered / (4 / 1.1) req/s capacity
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_overload_warns_and_scales_with_workers(caplog):
    with caplog.at_level(logging.INFO, logger="elis.experiments.run"):
        load = warn_if_overloaded(_wl([0.0, 0.1, 0.2]), CM, max_batch_size=4, num_workers=1)
    assert load == pytest.approx(2.75)  # 10 req/s offered / (4 / 1.1) req/s
    assert any("queue grows" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert warn_if_overloaded(_wl([0.0, 0.1, 0.2]), CM, max_batch_size=4, num_workers=5) == pytest.approx(0.55)


def test_single_request_has_no_rate():
    assert warn_if_overloaded(_wl([3.0]), CM, max_batch_size=4, num_workers=1) is None


def test_select_generators_filters_and_names_unknown():
    from elis.experiments.run import select_generators

    df = pd.DataFrame({"generator": ["a", "b", "a", "c"], "x": [1, 2, 3, 4]})
    assert select_generators(df, None) is df
    assert select_generators(df, ["a", "c"])["x"].tolist() == [1, 3, 4]
    with pytest.raises(ValueError, match=r"\['zz'\].*valid: \['a', 'b', 'c'\]"):
        select_generators(df, ["zz"])


def test_capacity_counts_outputs_capped_at_max_tokens():
    # outputs of 10 tokens capped at 4: B=4 requests share 4 steps + EOS = 0.5 s → 8 req/s;
    # 1 req/s offered → load 0.125 (uncapped it would be 0.275)
    load = warn_if_overloaded(_wl([0.0, 1.0, 2.0]), CM, max_batch_size=4, num_workers=1, max_tokens=4)
    assert load == pytest.approx(1 / 8)


def test_compare_leaves_out_distribution_policies_a_point_predictor_cannot_serve(tmp_path):
    """`make run` (predictor=minilm, preset=compare with gittins) must not fail: gittins is named
    as not run, with its reason, and every other variant runs; alone it keeps its error."""
    import json
    from types import SimpleNamespace

    from elis.experiments.report import skipped_lines
    from elis.experiments.run import split_runnable_variants
    from elis.predictor.simple import ConstantPredictor, NoisyOraclePredictor

    variants = [("fcfs_w", {"policy": "fcfs"}), ("gittins_w", {"policy": "gittins"}),
                ("isrtf_c", {"policy": "isrtf"}), ("gittins_c", {"policy": "gittins"})]
    point = SimpleNamespace(predictor=ConstantPredictor(100.0))  # as PredictionService wraps it
    runnable, skipped = split_runnable_variants(variants, point)
    assert [n for n, _ in runnable] == ["fcfs_w", "isrtf_c"]
    assert list(skipped) == ["gittins_w", "gittins_c"]
    assert "predict_quantiles" in skipped["gittins_w"] and "noisy_oracle" in skipped["gittins_w"]
    # A predictor with a distribution runs every variant.
    assert split_runnable_variants(variants, SimpleNamespace(predictor=NoisyOraclePredictor())) == (variants, {})
    # Nothing runnable: returned unchanged, so the policy's own error is raised where it is built.
    only = [("gittins_w", {"policy": "gittins"})]
    assert split_runnable_variants(only, point) == (only, {})
    # The comparison names what was not run.
    assert skipped_lines(tmp_path) == ""
    (tmp_path / "skipped_variants.json").write_text(json.dumps({"gittins_w": "why"}))
    assert skipped_lines(tmp_path) == "- Not run: gittins_w: why\n"
