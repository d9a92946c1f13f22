"""LAS, MLFQ (skip-join), Gittins, the predictive-distribution interface and τ among co-waiting requests."""

from __future__ import annotations

import numpy as np
import pytest

from elis.predictor.base import PredictionQuery
from elis.predictor.simple import ConstantPredictor, NoisyOraclePredictor, OraclePredictor
from elis.serving.policy import MLFQ, SchedulingPolicy, gittins_key, make_policy, quantile_weights
from elis.serving.prediction import PredictionService
from elis.serving.ranking import kendall_tau_b
from elis.serving.request import Request
from elis.serving.scheduler import Scheduler
from serving_factories import UNIT_STEP, make_schedulers, make_table, simulate


def _finish(res) -> dict[str, float]:
    return dict(zip(res.records["request_id"], res.records["finish_time_s"]))


def test_las_alternates_by_attained_service_hand_trace():
    # A (3 tokens) and B (2 tokens) arrive at 0; W = 1, batch 1, 1 s per decode step; an EOS
    # answer spends one more step choosing EOS (README, "Scheduling and simulation"), so A needs 4 steps, B 3.
    # Equal keys keep the incumbent (README, "Scheduling and simulation"). t0: both 0, tie in the buffer -> A
    # (seq 0). t1: A=1 > B=0 -> B. t2: 1 vs 1, B keeps. t3: B=2 > A=1 -> A. t4: 2 vs 2, A keeps.
    # t5: A=3 > B=2 -> B's EOS step, done at 6. A's EOS step [6, 7].
    res, _ = simulate(make_table([3, 2], ids=["A", "B"]), make_schedulers("las", window_tokens=1))
    assert _finish(res) == {"A": 7.0, "B": 6.0}


def test_las_needs_no_predictor_and_runs_continuous():
    res, _ = simulate(make_table([5, 1, 3], [0.0, 0.5, 0.5]),
                      make_schedulers("las", max_batch_size=2, window_tokens=2, mode="continuous"))
    assert (res.records["status"] == "FINISHED").all()


def test_mlfq_skip_join_and_demotion_levels():
    pol = MLFQ(num_levels=3, base_quantum_tokens=2.0, quantum_ratio=2.0, prompt_token_weight=0.5)
    assert pol.quanta_tokens == [2.0, 4.0, 8.0]
    assert pol.initial_level(1) == 0  # first iteration 1.5 <= q0 = 2
    assert pol.initial_level(6) == 1  # 4.0 > 2, <= 4
    assert pol.initial_level(100) == 2  # 51: no quantum covers it -> last level
    assert [pol.level(1, g) for g in (0, 1, 2, 5, 6, 100)] == [0, 0, 1, 1, 2, 2]
    assert [pol.level(6, g) for g in (0, 3, 4, 50)] == [1, 1, 2, 2]


def test_mlfq_simulated_order_hand_trace():
    # quanta 1, 2, 4 tokens; prompt weight 0 -> everyone joins level 0. W = 1, batch 1; an EOS
    # answer spends one more step (A: 4 tokens + EOS, B: 1 token + EOS).
    # A at 0: [0,1] -> level 1. B at 0.5 joins level 0 and displaces A: [1,2] -> level 1 (used
    # q0 = 1). t2: both level 1; equal keys keep the incumbent B: EOS step [2,3], done at 3.
    # A: [3,4], [4,5] (quantum 2 used -> level 2), [5,6] (4th token), EOS [6,7].
    pol = make_policy("mlfq", num_levels=3, base_quantum_tokens=1.0, quantum_ratio=2.0, prompt_token_weight=0.0)
    res, sim = simulate(make_table([4, 1], [0.0, 0.5], ids=["A", "B"]), make_schedulers(pol, window_tokens=1),
                        trace=True)
    assert _finish(res) == {"A": 7.0, "B": 3.0}
    assert [e for e in sim.trace if e[0] == "preempt"] == [("preempt", "A", 1.0)]


def test_policy_parameters_are_checked_by_name():
    with pytest.raises(ValueError, match="quantum_ratio"):
        make_policy("mlfq", quantum_ratio=0.5)
    with pytest.raises(ValueError, match="not accepted by policy 'las'"):
        make_policy("las", num_levels=3)
    with pytest.raises(ValueError, match="quantile_levels"):
        make_policy("gittins", quantile_levels=[0.5, 0.1])
    with pytest.raises(ValueError, match="'lifo' is not one of .*'mlfq'"):
        make_policy("lifo")


def test_declared_behaviour_not_names():
    assert [(p, SchedulingPolicy(p).uses_predictions, SchedulingPolicy(p).repredicts)
            for p in ("las", "mlfq", "gittins")] == [("las", False, True), ("mlfq", False, True), ("gittins", True, True)]
    assert SchedulingPolicy("gittins").quantile_levels is not None and SchedulingPolicy("isrtf").quantile_levels is None


def test_gittins_key_hand_values():
    w = quantile_weights(np.array([0.25, 0.75]))
    np.testing.assert_allclose(w, [0.5, 0.5])
    np.testing.assert_allclose(quantile_weights(np.array([(j - 0.5) / 9 for j in range(1, 10)])), np.full(9, 1 / 9))
    assert gittins_key(np.array([7.0, 7.0]), w) == 7.0  # a point mass: SRTF
    # atoms 1 and 100 (1/2 each): Δ=1 -> E[min]=1, P=1/2 -> 2; Δ=100 -> 50.5/1. key 2 < 10:
    # a possibly-short job goes before a surely-10-token one although its mean is 50.5.
    assert gittins_key(np.array([1.0, 100.0]), w) == 2.0


def test_gittins_key_on_requests_clips_to_the_cap():
    pol = SchedulingPolicy("gittins", quantile_levels=[0.25, 0.75])
    r = Request("a", "p", 0.0, 3, 100)
    r.num_generated_tokens = 40
    r.predicted_quantiles = np.array([1.0, 500.0])  # 500 clipped to 60
    assert pol.key_tokens(r) == 2.0
    r.predicted_quantiles = np.array([80.0, 90.0])  # both clipped to 60
    assert pol.key_tokens(r) == 60.0


def test_gittins_refuses_a_predictor_without_a_distribution_naming_it():
    with pytest.raises(ValueError, match="'constant' does not implement predict_quantiles"):
        Scheduler(0, SchedulingPolicy("gittins"), predictor=PredictionService(ConstantPredictor(), latency_source="zero"))
    with pytest.raises(NotImplementedError, match="'constant'"):
        ConstantPredictor().predict_quantiles([PredictionQuery("p")], [0.5])


def test_gittins_with_the_oracle_reproduces_srtf_oracle():
    table = make_table([9, 2, 5, 1, 7, 3], [0.0, 0.0, 1.0, 2.5, 3.0, 3.0])
    pred = PredictionService(OraclePredictor(), latency_source="zero")
    g, _ = simulate(table, make_schedulers("gittins", prediction=pred, window_tokens=2, max_batch_size=2),
                    prediction=pred)
    o, _ = simulate(table, make_schedulers("srtf_oracle", window_tokens=2, max_batch_size=2))
    assert _finish(g) == _finish(o)


def _q(rid, total, gen=0):
    return PredictionQuery("p", num_generated_tokens=gen, request_id=rid, num_output_tokens=total)


def test_quantile_interface_oracle_and_noisy_oracle():
    qs = [_q("a", 120, 50), _q("b", 10)]
    np.testing.assert_array_equal(OraclePredictor().predict_quantiles(qs, [0.1, 0.5, 0.9]), [[70.0] * 3, [10.0] * 3])
    noisy = NoisyOraclePredictor(sigma=0.5, seed=1)
    out = noisy.predict_quantiles(qs, [0.1, 0.5, 0.9])
    assert out.shape == (2, 3) and out.dtype == np.float64
    np.testing.assert_allclose(out[:, 1], noisy.predict_remaining(qs))  # the median is the point prediction
    # log-normal spread: q(0.9)/q(0.5) = exp(0.5 * 1.2815516)
    np.testing.assert_allclose(out[:, 2] / out[:, 1], np.exp(0.5 * 1.2815515655446004))
    assert np.all(np.diff(out, axis=1) >= 0)
    with pytest.raises(ValueError, match="levels"):
        noisy.predict_quantiles(qs, [0.0, 0.5])


def test_kendall_tau_b_hand_values():
    assert kendall_tau_b([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)
    assert kendall_tau_b([1, 1, 2], [1, 2, 3]) == pytest.approx(2 / np.sqrt(6))
    assert kendall_tau_b([1], [1]) is None and kendall_tau_b([1, 1], [1, 2]) is None


def test_cowaiting_tau_is_one_with_the_oracle_and_counted():
    table = make_table([9, 2, 5, 1, 7, 3], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    pred = PredictionService(OraclePredictor(), latency_source="zero")
    res, _ = simulate(table, make_schedulers("isrtf", prediction=pred, window_tokens=2), prediction=pred)
    assert res.counters["kendall_tau_cowaiting_mean"] == 1.0
    assert res.counters["num_ranking_decisions"] >= 5
    res, _ = simulate(table, make_schedulers("fcfs"))
    assert res.counters["kendall_tau_cowaiting_mean"] is None and res.counters["num_ranking_decisions"] == 0


def test_ties_use_arrival_seq_with_unpadded_ids():
    # r0..r11 all arrive at 0 with equal lengths: served r0, r1, ..., r11, not r0, r1, r10, r11, r2, ...
    ids = [f"r{i}" for i in range(12)]
    for policy in ("fcfs", "srtf_oracle"):
        res, _ = simulate(make_table([2] * 12, ids=ids), make_schedulers(policy, window_tokens=2))
        assert list(res.records["request_id"]) == ids, policy


def test_promotion_by_age_serves_the_old_first_hand_trace():
    # Batch 1, W = 1, 1 s per step; every answer + 1 EOS step. L (4 tokens) at 0, short S1, S2,
    # S3 (1 token) at 0.5, 2.5, 4.5; srtf_oracle.
    # Without promotion L starves behind each short: S1 [1,3], S2 [3,5], S3 [5,7], L done at 11.
    # promote_by=age, P = 3: at t3 L (age 3) is tier 0 and runs, keeps its slot against the
    # younger S2 (tier 1) until done at 7; then S2 (older) 7->9, S3 9->11.
    table = make_table([4, 1, 1, 1], [0.0, 0.5, 2.5, 4.5], ids=["L", "S1", "S2", "S3"])
    res, _ = simulate(table, make_schedulers("srtf_oracle", window_tokens=1))
    assert _finish(res) == {"L": 11.0, "S1": 3.0, "S2": 5.0, "S3": 7.0}
    pol = make_policy("srtf_oracle", promote_after_s=3.0, promote_by="age")
    res, _ = simulate(table, make_schedulers(pol, window_tokens=1))
    assert _finish(res) == {"L": 7.0, "S1": 3.0, "S2": 9.0, "S3": 11.0}
    with pytest.raises(ValueError, match="promote_by='oldest'"):
        make_policy("isrtf", promote_after_s=3.0, promote_by="oldest")


def test_a_predictor_with_its_own_predict_quantiles_is_accepted():
    from elis.predictor.base import TimedPredictor, supports_quantiles

    class Spread(TimedPredictor):  # e.g. the GBDT predictor: overrides the method itself
        name = "spread"

        def _predict(self, queries):
            return np.full(len(queries), 10.0)

        def predict_quantiles(self, queries, levels):
            return np.tile(np.asarray(levels) * 20.0, (len(queries), 1))

    assert supports_quantiles(Spread()) and not supports_quantiles(ConstantPredictor())
    Scheduler(0, SchedulingPolicy("gittins"), predictor=PredictionService(Spread(), latency_source="zero"))


def test_kendall_tau_loop_and_numpy_paths_agree_exactly():
    from elis.serving.ranking import _tau_b_loop, _tau_b_numpy

    rng = np.random.default_rng(0)
    for n in (2, 5, 40):
        x, y = rng.integers(0, 6, n).astype(float), rng.integers(0, 6, n).astype(float)  # with ties
        assert _tau_b_loop(list(x), list(y)) == _tau_b_numpy(x, y)


def test_kendall_tau_b_long_queue_uses_n_log_n_form_with_the_same_value():
    # above LARGE_N the scipy form replaces the O(n²) pair matrix: same τ-b (ties included)
    from elis.serving import ranking

    rng = np.random.default_rng(7)
    x = rng.integers(0, 50, ranking.LARGE_N + 300).astype(float)  # many ties in both
    y = x + rng.integers(-20, 20, x.size)
    fast = ranking.kendall_tau_b(x, y)
    assert fast == pytest.approx(ranking._tau_b_numpy(x, y), abs=1e-12)
    assert ranking.kendall_tau_b(np.ones(ranking.LARGE_N + 1), y[: ranking.LARGE_N + 1]) is None


def test_ranking_tracker_skips_decisions_beyond_the_cost_bound():
    """A decision with more than MAX_COMPETING requests is counted as skipped, never observed;
    up to the bound it is observed (hand-computed τ = 1 for identical orders)."""
    from elis.serving.ranking import MAX_COMPETING, RankingTracker, ranking_counters

    t = RankingTracker()
    assert not t.admits(1)  # fewer than two: nothing to rank, not a skip
    assert t.admits(MAX_COMPETING)
    t.observe([3.0, 1.0, 2.0], [30.0, 10.0, 20.0])
    assert not t.admits(MAX_COMPETING + 1)
    assert (t.num_decisions, t.num_skipped, t.mean) == (1, 1, 1.0)

    class _S:
        ranking = t

    assert ranking_counters([_S()]) == {
        "kendall_tau_cowaiting_mean": 1.0, "num_ranking_decisions": 1, "num_ranking_decisions_skipped": 1,
    }
