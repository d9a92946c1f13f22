"""Issue 11 items 1-4: preemption margin ties, unschedulable requests, balancer load at
assignment, load counters back to zero. Unit cost (1 s per decode step) unless stated."""

from __future__ import annotations

import pytest

from serving_factories import ScriptedPredictor, make_schedulers, make_table, simulate


def jcts(res) -> dict[str, float]:
    return dict(zip(res.records["request_id"], res.records["jct_s"]))


@pytest.mark.parametrize("mode", ["windowed", "continuous"])
def test_equal_keys_do_not_preempt(mode):
    # Issue 11 item 1. One slot, W=50, ISRTF, margin 0. A (t=0, 400 tok) predicted 300 then 250;
    # B (t=0.1, 400 tok) predicted 100 then 250. t=50: B (100) < A (250) -> B displaces A.
    # t=100: B at its boundary has key 250, A waits with 250: a tie keeps the incumbent B, so B
    # runs 50..450 (JCT 449.9) and A 450..800 (JCT 800). The old rule (ties by arrival) let A
    # displace B at t=100 (A 450, B 799.9).
    pred = ScriptedPredictor({"A": 300, "B": 100}, {"A": 250, "B": 250})
    res, sim = simulate(make_table([400, 400], [0.0, 0.1], ids=["A", "B"]),
                        make_schedulers("isrtf", prediction=pred, window_tokens=50, mode=mode), trace=True)
    assert jcts(res) == pytest.approx({"A": 800.0, "B": 449.9})
    assert [(e, r, t) for e, r, t in sim.trace if e == "preempt"] == [("preempt", "A", 50.0)]
    rec = res.records.set_index("request_id")
    assert rec.loc["A", "num_preemptions"] == 1 and rec.loc["B", "num_preemptions"] == 0


@pytest.mark.parametrize("mode", ["windowed", "continuous"])
@pytest.mark.parametrize("margin, expected", [(4.0, {"A": 10.0, "B": 13.9}), (3.5, {"A": 14.0, "B": 5.9})])
def test_challenger_must_be_lower_by_more_than_margin(mode, margin, expected):
    # One slot, W=2, srtf_oracle. A (10 tok, t=0), B (4 tok, t=0.1). At t=2 A's key is 8, B's 4:
    # a gap of exactly the margin (4) keeps A (later gaps are smaller), so A runs to 10 and B
    # 10..14; a margin of 3.5 lets B displace A at t=2 (B 2..6, A 6..14).
    res, _ = simulate(make_table([10, 4], [0.0, 0.1], ids=["A", "B"]),
                      make_schedulers("srtf_oracle", window_tokens=2, preemption_margin=margin, mode=mode))
    assert jcts(res) == pytest.approx(expected)
