"""Hand-computed schedules (SimPy/vLLM style): exact JCTs and event traces.

Unless stated: one worker, unit cost (every decode step 1 s, no prefill/overhead cost).
A request whose answer is shorter than ``max_tokens`` ends by EOS, which costs one more
decode step after its last token (``elis.serving.workers.sim``; issue 11 item 10).
"""

from __future__ import annotations

import numpy as np
import pytest

from elis.serving.cost_model import CostModel
from serving_factories import make_schedulers, make_table, simulate


def jcts(res) -> dict[str, float]:
    return dict(zip(res.records["request_id"], res.records["jct_s"]))


@pytest.mark.parametrize("mode", ["windowed", "continuous"])
def test_issue_example_fcfs(mode):
    # A (100 tokens + EOS, t=0) runs to t=101; B (10 tokens, t=0.1) waits, runs 101..112.
    res, _ = simulate(make_table([100, 10], [0.0, 0.1], ids=["A", "B"]), make_schedulers("fcfs", mode=mode))
    assert jcts(res) == pytest.approx({"A": 101.0, "B": 111.9})
    assert res.records["num_preemptions"].sum() == 0


@pytest.mark.parametrize("mode", ["windowed", "continuous"])
def test_issue_example_srtf_oracle(mode):
    # t=1: A's window ends (99 left), B (10) is shorter -> B preempts A, runs 1..12 (10 tokens
    # + EOS); A resumes at 12 and needs 99 more steps + EOS -> finishes at 112.
    res, sim = simulate(
        make_table([100, 10], [0.0, 0.1], ids=["A", "B"]), make_schedulers("srtf_oracle", mode=mode), trace=True
    )
    assert jcts(res) == pytest.approx({"A": 112.0, "B": 11.9})
    rec = res.records.set_index("request_id")
    assert rec.loc["A", "num_preemptions"] == 1 and rec.loc["B", "num_preemptions"] == 0
    assert rec.loc["B", "queuing_delay_s"] == pytest.approx(0.9)
    assert rec.loc["A", "queuing_delay_s"] == pytest.approx(11.0)
    assert list(rec.loc["A", "window_start_s"]) == [0.0, 12.0]  # contiguous windows merged
    assert list(rec.loc["A", "window_end_s"]) == [1.0, 112.0]
    first = [(e, r, t) for e, r, t in sim.trace if e in ("preempt", "finish")]
    assert first == [("preempt", "A", 1.0), ("finish", "B", 12.0), ("finish", "A", 112.0)]


def test_windowed_idles_finished_slot_but_continuous_refills():
    # batch 2, W=4: A(1), B(4), C(4) at t=0. Windowed: A ends at 2 (token + EOS) but its slot
    # idles until t=4; B's EOS falls in its 2nd window (4..5), C runs 4..8 and its EOS 8..9.
    # Continuous: C takes A's slot at t=2; B's EOS step 4..5; C reaches its boundary at 6 and
    # ends at 7.
    table = lambda: make_table([1, 4, 4], ids=["A", "B", "C"])  # noqa: E731
    w, _ = simulate(table(), make_schedulers("fcfs", max_batch_size=2, window_tokens=4, mode="windowed"))
    c, _ = simulate(table(), make_schedulers("fcfs", max_batch_size=2, window_tokens=4, mode="continuous"))
    assert jcts(w) == pytest.approx({"A": 2.0, "B": 5.0, "C": 9.0})
    assert jcts(c) == pytest.approx({"A": 2.0, "B": 5.0, "C": 7.0})


def test_continuous_arrival_refills_free_slot_at_next_step():
    # batch 2: A (10 tokens) alone from t=0; B (2 tokens) arrives at 2.5 -> joins at the step
    # boundary t=3, finishes at 6 with its EOS step (JCT 3.5); A is undisturbed (JCT 11).
    res, _ = simulate(
        make_table([10, 2], [0.0, 2.5], ids=["A", "B"]),
        make_schedulers("fcfs", max_batch_size=2, window_tokens=50, mode="continuous"),
    )
    assert jcts(res) == pytest.approx({"A": 11.0, "B": 3.5})


@pytest.mark.parametrize("margin, expected", [(0.0, {"A": 11.0, "B": 5.5}), (5.0, {"A": 9.0, "B": 10.5})])
def test_continuous_preempts_only_at_window_boundary_with_margin(margin, expected):
    # W=4: A (8 tokens, t=0) can be displaced only at t=4 (its boundary). B (1 token, t=0.5).
    # margin 0: 1 < 4 -> B runs 4..6 (token + EOS), A 6..10 and its EOS step 10..11.
    # margin 5: 1 < 4-5 is false -> A keeps its slot to 9; B 9..11.
    res, _ = simulate(
        make_table([8, 1], [0.0, 0.5], ids=["A", "B"]),
        make_schedulers("srtf_oracle", window_tokens=4, mode="continuous", preemption_margin=margin),
    )
    assert jcts(res) == pytest.approx(expected)
    start_b = res.records.set_index("request_id").loc["B", "window_start_s"][0]
    assert start_b >= 4.0  # never before A's boundary


def test_prefill_and_window_cost_model_times():
    # prefill 0.1 s/token, step = 0.5 + 0.25*b: A (2 tokens, prompt 4) and B (1 token, prompt 2)
    # in one window: prefill 0.6; step1 (b=2) 1.0 -> first tokens at 1.6; step2 (b=2, B's EOS)
    # -> B done at 2.6; step3 (b=1, A's EOS) 0.75 -> A at 3.35. A's TPOT over its 3 steps:
    # (3.35 - 1.6) / 2 = 0.875.
    cm = CostModel(prefill_per_token_s=0.1, decode_base_s=0.5, decode_per_seq_s=0.25)
    res, _ = simulate(
        make_table([2, 1], ids=["A", "B"], num_prompt_tokens=[4, 2]),
        make_schedulers("fcfs", max_batch_size=2, window_tokens=50), cost_model=cm,
    )
    assert jcts(res) == pytest.approx({"A": 3.35, "B": 2.6})
    rec = res.records.set_index("request_id")
    assert rec.loc["A", "ttft_s"] == pytest.approx(1.6) and rec.loc["A", "tpot_s"] == pytest.approx(0.875)
    assert list(rec.loc[["A", "B"], "num_decode_steps"]) == [3, 2]


def test_zero_and_one_token_responses():
    res, _ = simulate(make_table([0, 1, 2], [0.0, 0.0, 0.0], ids=["z", "o", "t"]),
                      make_schedulers("fcfs", max_batch_size=3, window_tokens=50))
    # Each ends one EOS step after its last token: z (EOS only) at 1, o at 2, t at 3.
    rec = res.records.set_index("request_id")
    assert rec.loc["z", "jct_s"] == 1.0 and np.isnan(rec.loc["z", "ttft_s"]) and np.isnan(rec.loc["z", "tpot_s"])
    assert rec.loc["o", "jct_s"] == 2.0 and rec.loc["o", "ttft_s"] == 1.0 and rec.loc["o", "tpot_s"] == 1.0
    assert rec.loc["t", "jct_s"] == 3.0 and rec.loc["t", "tpot_s"] == 1.0
    assert list(rec.loc[["z", "o", "t"], "num_decode_steps"]) == [1, 2, 3]
    assert list(rec.loc[["z", "o", "t"], "num_output_tokens"]) == [0, 1, 2]
    assert list(rec.loc[["z", "o", "t"], "finish_reason"]) == ["eos", "eos", "eos"]


def test_max_tokens_caps_and_finishes_with_length():
    res, _ = simulate(make_table([30, 5], max_tokens=10, ids=["long", "short"]),
                      make_schedulers("fcfs", window_tokens=4))
    rec = res.records.set_index("request_id")
    assert rec.loc["long", "num_output_tokens"] == 10 and rec.loc["long", "finish_reason"] == "length"
    assert rec.loc["short", "finish_reason"] == "eos"
    # 'length' has no EOS step: long 0..10; short 10..16 (5 tokens + EOS).
    assert jcts(res) == pytest.approx({"long": 10.0, "short": 16.0})
    assert list(res.records.set_index("request_id").loc[["long", "short"], "num_decode_steps"]) == [10, 6]
