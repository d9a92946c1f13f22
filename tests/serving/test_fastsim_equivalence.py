"""The fast simulation path gives the general path's records and counters, bit for bit.

Each case runs ``elis.experiments.run.simulate`` twice on the same workload, ``path='general'``
(the ``Simulator`` with the per-window object protocol) and ``path='fast'``
(``elis.serving.fastsim``), and compares every column of every per-request record exactly
(row order included) and every counter but wall time. The workloads are built to hit the
edges: arrival ties, 0-token and 1-token answers, answers of exactly k·W tokens, answers
capped by ``max_tokens``, predictor latency (delayed enqueue), scheduling overhead.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from elis.serving.runtime import simulate
from elis.predictor.base import TimedPredictor
from elis.predictor.simple import NoisyOraclePredictor, OraclePredictor, PromptLengthPredictor
from elis.serving.cost_model import CostModel
from elis.serving.fastsim import unsupported_reason
from elis.serving.load_balancer import LeastPredictedTokens, LeastRequests, PowerOfTwo, RoundRobin
from elis.serving.prediction import PredictionService
from elis.serving.simulator import RequestTable

W = 8  # a small window so that requests cross many boundaries
MAX_TOKENS = 40
COST = CostModel(
    name="odd", prefill_base_s=0.013, prefill_per_token_s=1.7e-4, decode_base_s=0.021, decode_per_seq_s=1.3e-3,
    decode_per_context_token_s=3.1e-6, scheduling_overhead_s=7e-4, predictor_base_s=2.3e-3,
    predictor_per_query_s=4.1e-4,
)


def workload(n: int = 90, workers: int = 1, seed: int = 0) -> RequestTable:
    """Lengths mixing 0, 1, k·W, k·W ± 1 and > max_tokens; arrivals on a coarse grid (ties)."""
    rng = np.random.default_rng(seed)
    special = np.array([0, 1, W, 2 * W, 2 * W + 1, 3 * W - 1, MAX_TOKENS, MAX_TOKENS + 7])
    lengths = np.where(rng.random(n) < 0.4, rng.choice(special, n), rng.integers(0, 60, n))
    # ~1.3x one worker's capacity per worker, on a 0.1 s grid so that several arrive together
    gaps = rng.exponential(0.12 / workers, n)
    arrivals = np.round(np.cumsum(gaps), 1)
    prompts = rng.integers(1, 300, n)
    return RequestTable(
        arrivals, prompts, lengths, max_tokens=MAX_TOKENS,
        prompts=[f"prompt {i}" for i in range(n)],
        responses=[" ".join(f"w{j}" for j in range(k)) for k in lengths],
        generators=[f"gen{i % 3}" for i in range(n)],
    )


class TextLengthPredictor(TimedPredictor):
    """Reads the partial text: remaining ≈ 90 − characters so far (a text-reading generic predictor)."""

    name = "text_length"
    uses_text = True

    def _predict(self, queries):
        return np.array([max(90.0 - len(q.partial_response) / 3.0, 0.0) for q in queries])


class OnlineMeanPredictor(TimedPredictor):
    """Learns online: remaining = mean finished length of the generator so far − generated (gbdt-style)."""

    name = "online_mean"
    uses_text = False

    def __init__(self):
        super().__init__()
        self.sums: dict = {}

    def observe_finished(self, prompt, generator, num_output_tokens):
        s, n = self.sums.get(generator, (0.0, 0))
        self.sums[generator] = (s + num_output_tokens + len(prompt) % 3, n + 1)

    def _predict(self, queries):
        out = []
        for q in queries:
            s, n = self.sums.get(q.generator, (30.0, 1))
            out.append(max(s / n - q.num_generated_tokens, 0.0))
        return np.array(out)


def service(kind: str, latency: str = "cost_model") -> PredictionService:
    pred = {
        "oracle": lambda: OraclePredictor(),
        "noisy_oracle": lambda: NoisyOraclePredictor(0.7, seed=5),
        "prompt_length": lambda: PromptLengthPredictor(intercept=20.0, slope=0.1),
        "text": lambda: TextLengthPredictor(),
        "online": lambda: OnlineMeanPredictor(),
    }[kind]()
    return PredictionService(pred, COST, latency_source=latency, window_tokens=W)


def balancer(kind: str):
    return {"round_robin": RoundRobin, "least_requests": LeastRequests,
            "least_predicted_tokens": LeastPredictedTokens, "power_of_two": lambda: PowerOfTwo(seed=3)}[kind]()


def run_both(table, sched, *, workers=1, lb="round_robin", pred="noisy_oracle", record_intervals=True,
             reveal_text=False, batch=3, max_context_tokens=None):
    out = {}
    for path in ("general", "fast"):
        out[path] = simulate(
            table, sched, num_workers=workers, max_batch_size=batch, window_tokens=W, cost_model=COST,
            load_balancer=balancer(lb), prediction=service(pred), record_intervals=record_intervals,
            reveal_text=reveal_text, max_context_tokens=max_context_tokens, path=path,
        )
    return out["general"], out["fast"]


def assert_same(general, fast):
    assert general.counters["sim_path"] == "general" and fast.counters["sim_path"] == "fast"
    pd.testing.assert_frame_equal(general.records, fast.records, check_exact=True)
    drop = ("wall_s", "sim_path")
    assert {k: v for k, v in general.counters.items() if k not in drop} == {
        k: v for k, v in fast.counters.items() if k not in drop
    }


@pytest.mark.parametrize("mode", ["windowed", "continuous"])
@pytest.mark.parametrize("policy", ["fcfs", "sjf", "isrtf", "srtf_oracle"])
@pytest.mark.parametrize("preemption", [True, False])
def test_one_worker_every_policy_mode_and_preemption(mode, policy, preemption):
    general, fast = run_both(workload(), {"policy": policy, "mode": mode, "preemption": preemption})
    assert general.records["num_preemptions"].sum() > 0 or not preemption or policy in ("fcfs", "sjf")
    assert_same(general, fast)


@pytest.mark.parametrize("lb", ["round_robin", "least_requests", "least_predicted_tokens", "power_of_two"])
@pytest.mark.parametrize("mode", ["windowed", "continuous"])
@pytest.mark.parametrize("policy", ["fcfs", "isrtf", "srtf_oracle"])
def test_several_workers_and_balancers(lb, mode, policy):
    table = workload(n=100, workers=3, seed=1)
    assert_same(*run_both(table, {"policy": policy, "mode": mode, "preemption": True}, workers=3, lb=lb))


@pytest.mark.parametrize("mode", ["windowed", "continuous"])
@pytest.mark.parametrize("extra", [{"preemption_margin": 5.0}, {"aging_tokens_per_s": 3.0},
                                   {"preemption_margin": 2.0, "aging_tokens_per_s": 0.5}])
@pytest.mark.parametrize("policy", ["sjf", "isrtf", "srtf_oracle"])
def test_margins_and_aging(mode, extra, policy):
    table = workload(n=100, seed=2)
    assert_same(*run_both(table, {"policy": policy, "mode": mode, "preemption": True, **extra}, batch=2))


@pytest.mark.parametrize("pred", ["oracle", "prompt_length", "text", "online"])
@pytest.mark.parametrize("mode", ["windowed", "continuous"])
def test_other_predictors_through_the_service(pred, mode):
    table = workload(n=80, workers=2, seed=3)
    sched = {"policy": "isrtf", "mode": mode, "preemption": True}
    assert_same(*run_both(table, sched, workers=2, lb="least_predicted_tokens", pred=pred, reveal_text=pred == "text"))


@pytest.mark.parametrize("mode", ["windowed", "continuous"])
@pytest.mark.parametrize("policy", ["sjf", "isrtf", "srtf_oracle"])
def test_context_length_rule_rejects_and_caps(mode, policy):
    table = workload(n=100, workers=2, seed=6)
    general, fast = run_both(table, {"policy": policy, "mode": mode}, workers=2, lb="least_predicted_tokens",
                             max_context_tokens=250)
    status = general.records["status"]
    assert (status == "FAILED").sum() > 0 and (general.records["max_tokens"] < MAX_TOKENS).sum() > 0
    assert_same(general, fast)


def test_without_interval_lists_and_with_batch_one():
    table = workload(n=120, seed=4)
    for mode in ("windowed", "continuous"):
        general, fast = run_both(table, {"policy": "isrtf", "mode": mode}, record_intervals=False, batch=1)
        assert "window_start_s" not in fast.records.columns
        assert_same(general, fast)


def test_unsupported_configurations_fall_back_with_a_reason():
    from elis.serving.runtime import build_schedulers

    svc = service("noisy_oracle")

    def reason(sched, kv=None, lb=None):
        s = build_schedulers(sched, 2, 4, W, kv, svc, COST)
        return unsupported_reason(s, lb or RoundRobin(), svc)

    assert reason({"policy": "isrtf"}) is None
    assert "kv_capacity_tokens" in reason({"policy": "isrtf"}, kv=500)
    assert "promote_after_s" in reason({"policy": "isrtf", "promote_after_s": 2.0})
    table = workload(n=30)
    kw = dict(num_workers=1, max_batch_size=2, window_tokens=W, cost_model=COST, load_balancer=RoundRobin(),
              prediction=svc, kv_capacity_tokens=200)
    with pytest.raises(ValueError, match="kv_capacity_tokens"):
        simulate(table, {"policy": "isrtf"}, path="fast", **kw)
    assert simulate(table, {"policy": "isrtf"}, path="auto", **kw).counters["sim_path"] == "general"
    with pytest.raises(ValueError, match=r"sim_path='quick' is not one of \['auto', 'fast', 'general'\]"):
        simulate(table, {"policy": "isrtf"}, path="quick", **kw)


def test_workload_read_in_chunks(monkeypatch):
    import elis.serving.fastsim as fastsim

    monkeypatch.setattr(fastsim, "_CHUNK", 7)  # chunk edges inside arrival ties and noise blocks
    table = workload(n=60, workers=2, seed=5)
    sched = {"policy": "isrtf", "mode": "continuous", "preemption": True}
    assert_same(*run_both(table, sched, workers=2, lb="least_predicted_tokens"))


@pytest.mark.parametrize("policy", ["fcfs", "srtf_oracle", "isrtf"])
def test_ties_by_arrival_sequence_with_unpadded_ids_on_both_paths(policy):
    # issue 11 item 17: r0..r11 arriving together with equal lengths tie on arrival sequence,
    # not on the ids' string order (r0, r1, r10, r11, r2, ...), on the fast path as on the general
    ids = [f"r{i}" for i in range(12)]
    table = RequestTable(arrival_time_s=np.zeros(12), num_prompt_tokens=np.full(12, 5),
                         num_output_tokens=np.full(12, 60), max_tokens=512, request_ids=ids)
    general, fast = run_both(table, {"policy": policy, "mode": "windowed", "preemption": True}, pred="oracle", batch=1)
    assert_same(general, fast)
    assert list(fast.records.sort_values("finish_time_s")["request_id"]) == ids
    if policy == "isrtf":  # τ among co-waiting requests is reported by both paths
        assert fast.counters["num_ranking_decisions"] > 0

