"""Preemption and KV accounting (keep vs recompute), load-balancer evenness."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from elis.predictor.simple import OraclePredictor
from elis.serving.cost_model import CostModel
from elis.serving.load_balancer import LeastPredictedTokens, LeastRequests, PowerOfTwo, RoundRobin
from elis.serving.prediction import PredictionService
from serving_factories import make_schedulers, make_table, simulate

CM = CostModel(prefill_per_token_s=0.1, decode_base_s=1.0)


@pytest.mark.parametrize("capacity, jct_a, recomputed, drops", [(None, 15.0, 0, 0), (12, 15.2, 2, 1)])
def test_preemption_keeps_or_drops_kv(capacity, jct_a, recomputed, drops):
    # A (10 tok, prompt 1) t=0: prefill 0.1 + 1 step -> 1.1. B (2 tok, prompt 9, t=0.5) preempts A
    # at 1.1: prefill 0.9 + 2 steps + EOS step -> 5.0 (JCT 4.5). A resumes at 5.0 for 9 steps + EOS
    # -> 15.0 with its KV kept. Capacity 12: B's 2nd window reserves 9+1+1 = 11, plus A's cached 2
    # = 13 > 12 -> A's KV is dropped and re-prefilled at resume (prompt 1 + generated 1 = 2 tokens, 0.2 s).
    table = make_table([10, 2], [0.0, 0.5], ids=["A", "B"], num_prompt_tokens=[1, 9])
    scheds = make_schedulers("srtf_oracle", window_tokens=1, kv_capacity_tokens=capacity)
    res, _ = simulate(table, scheds, cost_model=CM)
    rec = res.records.set_index("request_id")
    assert rec.loc["B", "jct_s"] == pytest.approx(4.5)
    assert rec.loc["A", "jct_s"] == pytest.approx(jct_a)
    assert rec.loc["A", "num_preemptions"] == 1
    assert rec.loc["A", "num_recomputed_tokens"] == recomputed
    assert res.counters["num_kv_drops"] == drops


def test_request_outgrowing_kv_capacity_fails_midway_with_reason():
    # A needs prompt 5 + 10 tokens = 15 > 10: it runs until its context no longer fits, then fails.
    table = make_table([10, 2], [0.0, 0.5], ids=["A", "B"], num_prompt_tokens=5)
    res, _ = simulate(table, make_schedulers("srtf_oracle", window_tokens=1, kv_capacity_tokens=10), cost_model=CM)
    rec = res.records.set_index("request_id")
    assert rec.loc["A", "status"] == "FAILED" and "kv_capacity_tokens=10" in rec.loc["A", "fail_reason"]
    assert rec.loc["A", "num_output_tokens"] == 5
    assert rec.loc["B", "status"] == "FINISHED"


def test_request_larger_than_kv_capacity_fails_with_reason():
    table = make_table([5, 3], ids=["big", "ok"], num_prompt_tokens=[50, 2])
    res, _ = simulate(table, make_schedulers("fcfs", window_tokens=4, kv_capacity_tokens=20))
    rec = res.records.set_index("request_id")
    assert rec.loc["big", "status"] == "FAILED" and "kv_capacity_tokens=20" in rec.loc["big", "fail_reason"]
    assert rec.loc["ok", "status"] == "FINISHED"


def test_no_preemption_keeps_running_request():
    res, _ = simulate(make_table([100, 10], [0.0, 0.1], ids=["A", "B"]),
                      make_schedulers("srtf_oracle", preemption=False))
    assert dict(zip(res.records["request_id"], res.records["jct_s"])) == pytest.approx({"A": 101.0, "B": 111.9})


@pytest.mark.parametrize("lb_cls", [RoundRobin, LeastRequests, LeastPredictedTokens])
def test_identical_workers_share_load_evenly(lb_cls):
    n = 100
    table = make_table([20] * n, np.zeros(n))  # all arrive together: every choice is a tie
    pred = PredictionService(OraclePredictor(), latency_source="zero")
    scheds = make_schedulers("fcfs", 4, prediction=pred, max_batch_size=2, window_tokens=50)
    res, _ = simulate(table, scheds, lb=lb_cls(), prediction=pred)
    assert collections.Counter(res.records["worker_id"]) == {0: 25, 1: 25, 2: 25, 3: 25}


def test_power_of_two_is_balanced_and_seeded():
    def counts(seed):
        n = 400
        table = make_table([5] * n, np.arange(n) * 0.5)
        res, _ = simulate(table, make_schedulers("fcfs", 4, window_tokens=50), lb=PowerOfTwo(seed))
        return collections.Counter(res.records["worker_id"])

    c = counts(3)
    assert c == counts(3)
    assert min(c.values()) >= 80  # 100 each on average


def test_least_predicted_tokens_balances_work_not_count():
    # One long (1000) then short (10) jobs at once, 2 workers: the long one's worker gets no more
    # work until the other has 1000 predicted tokens.
    table = make_table([1000] + [10] * 10, np.zeros(11), ids=["L"] + [f"s{i}" for i in range(10)])
    pred = PredictionService(OraclePredictor(), latency_source="zero")
    res, _ = simulate(table, make_schedulers("fcfs", 2, prediction=pred, window_tokens=50),
                      lb=LeastPredictedTokens(), prediction=pred)
    w = dict(zip(res.records["request_id"], res.records["worker_id"]))
    assert all(w[f"s{i}"] != w["L"] for i in range(10))
