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
