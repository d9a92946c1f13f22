"""Issue 11 items 1-4: preemption margin ties, unschedulable requests, balancer load at
assignment, load counters back to zero. Unit cost (1 s per decode step) unless stated."""

from __future__ import annotations

import pytest

from serving_factories import ScriptedPredictor, make_schedulers, make_table, simulate


def jcts(res) -> dict[str, float]:
    return dict(zip(res.records["request_id"], res.records["jct_s"]))


@pytest.mark.parametrize("mode", ["windowed", "continuous"])
def test_equal_keys_do_not_preempt(mode):
    # Issue 11 item 1. One slot, W=50, ISRTF, margin 0. A (t=0, 390 tok) predicted 300 then 250;
    # B (t=0.1, 390 tok) predicted 100 then 250. t=50: B (100) < A (250) -> B displaces A.
    # t=100: B at its boundary has key 250, A waits with 250: a tie keeps the incumbent B, so B
    # runs 50..441 (390 tokens + the EOS step, JCT 440.9) and A 441..782 (340 + EOS, JCT 782).
    # The old rule (ties by arrival) let A displace B at t=100 (A 441, B 781.9).
    pred = ScriptedPredictor({"A": 300, "B": 100}, {"A": 250, "B": 250})
    res, sim = simulate(make_table([390, 390], [0.0, 0.1], ids=["A", "B"]),
                        make_schedulers("isrtf", prediction=pred, window_tokens=50, mode=mode), trace=True)
    assert jcts(res) == pytest.approx({"A": 782.0, "B": 440.9})
    assert [(e, r, t) for e, r, t in sim.trace if e == "preempt"] == [("preempt", "A", 50.0)]
    rec = res.records.set_index("request_id")
    assert rec.loc["A", "num_preemptions"] == 1 and rec.loc["B", "num_preemptions"] == 0


@pytest.mark.parametrize("mode", ["windowed", "continuous"])
@pytest.mark.parametrize("margin, expected", [(4.0, {"A": 11.0, "B": 15.9}), (3.5, {"A": 16.0, "B": 6.9})])
def test_challenger_must_be_lower_by_more_than_margin(mode, margin, expected):
    # One slot, W=2, srtf_oracle. A (10 tok, t=0), B (4 tok, t=0.1). At t=2 A's key is 8, B's 4:
    # a gap of exactly the margin (4) keeps A (later gaps are smaller), so A runs to 10 plus its
    # EOS step (11) and B 11..16 (4 tokens + EOS, the EOS in a third window); a margin of 3.5
    # lets B displace A at t=2 (B 2..7, A 7..16).
    res, _ = simulate(make_table([10, 4], [0.0, 0.1], ids=["A", "B"]),
                      make_schedulers("srtf_oracle", window_tokens=2, preemption_margin=margin, mode=mode))
    assert jcts(res) == pytest.approx(expected)


def _short_jcts_item2(mode):
    # Issue 11 item 2: batch 4, W=50, kv 20000, unit cost, FCFS. Running from t=0: 99, 199, 299
    # and 1999 tokens (+ EOS: they end at 100, 200, 300, 2000). At 0.5 a 50,000-token prompt
    # (never fits) arrives, then three 10-token requests (11 steps) at 0.6, 0.7, 0.8.
    table = make_table([99, 199, 299, 1999, 5, 10, 10, 10], [0, 0, 0, 0, 0.5, 0.6, 0.7, 0.8],
                       ids=["r100", "r200", "r300", "r2000", "huge", "s1", "s2", "s3"],
                       num_prompt_tokens=[5, 5, 5, 5, 50_000, 5, 5, 5])
    scheds = make_schedulers("fcfs", max_batch_size=4, window_tokens=50, kv_capacity_tokens=20_000, mode=mode)
    return simulate(table, scheds, trace=True)


def test_unschedulable_request_is_rejected_at_arrival_and_does_not_block_windowed():
    # The huge one fails at 0.5. Windowed: r100 ends at 100 -> s1 runs 100..111 (its slot then
    # idles to the window end 150); s2 150..161; r200 ends at 200 -> s3 200..211.
    res, sim = _short_jcts_item2("windowed")
    rec = res.records.set_index("request_id")
    assert rec.loc["huge", "status"] == "FAILED"
    assert "kv_capacity_tokens=20000" in rec.loc["huge", "fail_reason"]
    assert ("reject", "huge", 0.5) in sim.trace
    assert {k: rec.loc[k, "jct_s"] for k in ("s1", "s2", "s3")} == pytest.approx({"s1": 110.4, "s2": 160.3, "s3": 210.2})
    assert res.counters["num_decisions"] >= 1


def test_unschedulable_request_is_rejected_at_arrival_and_does_not_block_continuous():
    # Continuous: s1 takes r100's slot at 100 (done 111), s2 111..122, s3 122..133.
    res, _ = _short_jcts_item2("continuous")
    rec = res.records.set_index("request_id")
    assert rec.loc["huge", "status"] == "FAILED"
    assert {k: rec.loc[k, "jct_s"] for k in ("s1", "s2", "s3")} == pytest.approx({"s1": 110.4, "s2": 121.3, "s3": 132.2})


def test_request_that_fits_later_keeps_its_place_no_backfilling():
    # batch 2, W=10, kv 100, FCFS windowed. A (prompt 5, 30 tok, t=0); B (prompt 80, 5 tok, t=1)
    # needs 90 alone (fits an empty worker) but not next to A (A reserves 5+g+10 >= 25);
    # C (prompt 5, 5 tok, t=2) would fit next to A but waits behind B (strict order): A 0..31
    # (30 tokens + its EOS step), B 31..37 (B + C = 105 > 100), C 37..43.
    table = make_table([30, 5, 5], [0, 1, 2], ids=["A", "B", "C"], num_prompt_tokens=[5, 80, 5])
    res, _ = simulate(table, make_schedulers("fcfs", max_batch_size=2, window_tokens=10, kv_capacity_tokens=100))
    assert jcts(res) == pytest.approx({"A": 31.0, "B": 36.0, "C": 41.0})
    assert res.records.set_index("request_id").loc["C", "window_start_s"][0] == 37.0


def test_balancer_counts_load_from_assignment_despite_predictor_latency():
    # Issue 11 item 3: 2 workers, least_predicted_tokens, oracle, 0.08 s frontend predictor
    # latency. One 5000-token and twenty 50-token requests at t=0: all 20 short ones avoid
    # the long one's worker (20 x 50 = 1000 < 5000), as with zero latency.
    from elis.predictor.simple import OraclePredictor
    from elis.serving.cost_model import CostModel
    from elis.serving.load_balancer import LeastPredictedTokens
    from elis.serving.prediction import PredictionService

    cm = CostModel(decode_base_s=1.0, predictor_base_s=0.08)
    ids = ["L"] + [f"s{i}" for i in range(20)]
    for latency in ("cost_model", "zero"):
        pred = PredictionService(OraclePredictor(), cm, latency_source=latency)
        res, _ = simulate(make_table([5000] + [50] * 20, ids=ids),
                          make_schedulers("fcfs", 2, prediction=pred, max_batch_size=4, window_tokens=50),
                          cost_model=cm, lb=LeastPredictedTokens(), prediction=pred)
        w = dict(zip(res.records["request_id"], res.records["worker_id"]))
        assert sum(w[f"s{i}"] != w["L"] for i in range(20)) == 20, latency


def test_least_requests_counts_requests_in_transit():
    # LeastRequests with a 0.5 s frontend predictor charge (the balancer needs no prediction, but
    # an isrtf scheduler does; num_outstanding includes assigned-not-yet-added requests).
    from elis.serving.load_balancer import LeastRequests

    from elis.serving.scheduler import Scheduler
    from elis.serving.policy import SchedulingPolicy
    from elis.serving.request import Request

    s = Scheduler(0, SchedulingPolicy("fcfs"))
    r = Request("a", "", 0.0, 5, 10)
    r.record_prediction(40.0)
    s.assign(r)
    assert s.num_outstanding == 1 and s.predicted_outstanding_tokens == 40.0
    assert LeastRequests().select(Request("b", "", 0.0, 5, 10), [s, Scheduler(1, SchedulingPolicy("fcfs"))]) == 1
    assert s.add_request(r, 0.5) and s.num_outstanding == 1 and s.predicted_outstanding_tokens == 40.0
