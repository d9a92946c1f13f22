"""Cost model, workload validation, prediction service, invariants, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from elis.predictor.simple import NoisyOraclePredictor, OraclePredictor
from elis.serving.cost_model import CostModel
from elis.serving.metrics import InvariantError, check_invariants, summarize
from elis.serving.prediction import PredictionService, reveal_prefix
from elis.serving.simulator import RequestTable
from serving_factories import make_schedulers, make_table, simulate


def test_decode_time_closed_form_matches_step_sum():
    cm = CostModel(decode_base_s=0.01, decode_per_seq_s=0.002, decode_per_context_token_s=1e-5)
    b, ctx, n = 3, 700, 37
    by_steps = sum(cm.decode_step_time_s(b, ctx + j * b) for j in range(n))
    assert cm.decode_time_s(b, ctx, n) == pytest.approx(by_steps)
    for d in (0.0, 0.005, 0.1, 0.4):
        k = cm.steps_within_s(b, ctx, d)
        assert cm.decode_time_s(b, ctx, k) >= d - 1e-12
        assert k == 0 or cm.decode_time_s(b, ctx, k - 1) < d
    assert cm.prefill_time_s(0) == 0.0 and cm.predictor_latency_s(0) == 0.0
    with pytest.raises(ValueError, match="decode_base_s"):
        CostModel(decode_base_s=-1.0)


def test_request_table_validation_names_fields():
    with pytest.raises(ValueError, match="non-decreasing"):
        RequestTable(np.array([1.0, 0.0]), np.array([1, 1]), np.array([1, 1]), max_tokens=5)
    with pytest.raises(ValueError, match=r"num_output_tokens\[1\]=-3"):
        RequestTable(np.array([0.0, 1.0]), np.array([1, 1]), np.array([1, -3]), max_tokens=5)
    with pytest.raises(ValueError, match="num_prompt_tokens has 1 entries"):
        RequestTable(np.array([0.0, 1.0]), np.array([1]), np.array([1, 1]), max_tokens=5)


def test_reveal_prefix_concatenates_exactly():
    text = "The quick brown fox jumps over the lazy dog"
    assert reveal_prefix(text, 0, 9) == "" and reveal_prefix(text, 9, 9) == text
    parts = [reveal_prefix(text, g, 9)[len(reveal_prefix(text, g - 3, 9)):] for g in (3, 6, 9)]
    assert "".join(parts) == text


def test_precomputed_predictions_equal_online_ones():
    table = make_table([120, 7, 51, 0])
    reqs = [table.make_request(i) for i in range(len(table))]
    online = PredictionService(NoisyOraclePredictor(0.5, seed=1), latency_source="zero", window_tokens=50)
    pre = PredictionService(NoisyOraclePredictor(0.5, seed=1), latency_source="zero", window_tokens=50)
    assert pre.precompute(reqs) == 3 + 1 + 2 + 1
    for g in (0, 50, 100):
        reqs[0].num_generated_tokens = g
        a, _ = online.predict([reqs[0]])
        b, _ = pre.predict([reqs[0]])
        assert a[0] == b[0]
    assert pre.num_table_hits == 3


def test_predictor_latency_is_charged_to_simulated_time():
    # isrtf, W=1, 2 tokens + EOS: predictions at arrival (g=0), at g=1 and at g=2 (before the
    # EOS-only window), each call 0.5 s (1 query).
    cm = CostModel(decode_base_s=1.0, predictor_base_s=0.25, predictor_per_query_s=0.25)
    pred = PredictionService(OraclePredictor(), cm, window_tokens=1)
    res, _ = simulate(make_table([2], ids=["A"]), make_schedulers("isrtf", prediction=pred), cost_model=cm,
                      prediction=pred)
    assert res.records["jct_s"].iloc[0] == pytest.approx(0.5 + 1 + 0.5 + 1 + 0.5 + 1)
    assert res.counters["predictor_overhead_s"] == pytest.approx(1.5)
    assert list(res.records["predicted_remaining_tokens"].iloc[0]) == [2.0, 1.0, 0.0]
    assert list(res.records["true_remaining_tokens"].iloc[0]) == [2, 1, 0]


def _records():
    res, _ = simulate(make_table([3, 5, 0], ids=["a", "b", "c"]), make_schedulers("fcfs", window_tokens=2))
    return res.records


def test_invariants_pass_on_a_clean_run_and_catch_violations():
    rec = _records()
    check_invariants(rec, ["a", "b", "c"])
    with pytest.raises(InvariantError, match="lost"):
        check_invariants(rec.iloc[:2], ["a", "b", "c"])
    with pytest.raises(InvariantError, match="duplicated"):
        check_invariants(rec.iloc[[0, 0, 1, 2]], 4)
    bad = rec.copy()
    bad.loc[0, "num_output_tokens"] += 1
    with pytest.raises(InvariantError, match="wrong number of tokens"):
        check_invariants(bad, 3)
    bad = rec.copy()
    bad.loc[1, "status"] = "FAILED"
    bad.loc[1, "fail_reason"] = None
    with pytest.raises(InvariantError, match="without a reason"):
        check_invariants(bad, 3)
    bad = rec.copy()
    bad.loc[2, "status"] = "RUNNING"
    with pytest.raises(InvariantError, match="not terminal"):
        check_invariants(bad, 3)


def test_summary_hand_values():
    # FCFS, W=2, all at t=0, ties by id, each + one EOS step: a 0..4, b 4..10, c (0 tokens) 10..11
    rec = _records()
    m = summarize(rec, bucket_edges=(1.0, 4.0))
    assert m["jct_mean_s"] == pytest.approx((4 + 10 + 11) / 3)
    assert m["num_finished"] == 3 and m["num_failed"] == 0 and m["fail_reasons"] == {}
    assert m["queuing_delay_mean_s"] == pytest.approx((0 + 4 + 10) / 3)
    assert m["max_wait_s"] == 10.0
    assert m["tpot_mean_s"] == pytest.approx(1.0)  # a: (4-1)/3, b: (10-5)/5
    assert m["num_tpot_undefined"] == 1 and m["num_ttft_undefined"] == 1  # c
    assert m["jct_mean_s_short"] == 11.0 and m["jct_mean_s_medium"] == 4.0 and m["jct_mean_s_long"] == 10.0
    assert m["output_throughput_tok_s"] == pytest.approx(8 / 11)
