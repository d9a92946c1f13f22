"""Policy keys, the tie rule, aging and its bound, the priority buffer."""

from __future__ import annotations

import pytest

from elis.serving.buffer import PriorityBuffer
from elis.serving.policy import SchedulingPolicy
from elis.serving.request import Request
from serving_factories import make_schedulers, make_table, simulate


def req(rid, t=0.0, true=None, pred=None, gen=0, max_tokens=1000):
    r = Request(rid, "p", t, 3, max_tokens, true_num_output_tokens=true)
    r.num_generated_tokens = gen
    if pred is not None:
        r.record_prediction(pred)
    return r


def test_keys_per_policy():
    r = req("a", t=2.0, true=100, pred=80.0, gen=0)
    assert SchedulingPolicy("fcfs").key_tokens(r) == 2.0
    assert SchedulingPolicy("srtf_oracle").key_tokens(r) == 100.0
    r.num_generated_tokens = 50
    r.record_prediction(30.0)
    assert SchedulingPolicy("sjf").key_tokens(r) == 80.0  # first prediction, never updated
    assert SchedulingPolicy("isrtf").key_tokens(r) == 30.0  # latest
    assert SchedulingPolicy("srtf_oracle").key_tokens(r) == 50.0
    r.record_prediction(5000.0)
    assert SchedulingPolicy("isrtf").key_tokens(r) == 950.0  # clipped to max_tokens - generated


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="not one of"):
        SchedulingPolicy("lifo")
    with pytest.raises(ValueError, match="no prediction"):
        SchedulingPolicy("isrtf").key_tokens(req("a"))
    with pytest.raises(ValueError, match="true length"):
        SchedulingPolicy("srtf_oracle").key_tokens(req("a"))
    with pytest.raises(ValueError, match="aging_tokens_per_s"):
        SchedulingPolicy("isrtf", aging_tokens_per_s=-1)


def test_ties_break_on_arrival_then_arrival_seq_not_id():
    pol = SchedulingPolicy("srtf_oracle")
    buf = PriorityBuffer()
    for seq, r in enumerate([req("b", 1.0, 10), req("c", 0.5, 10), req("a", 1.0, 10), req("z", 9.0, 3)]):
        r.arrival_seq = seq
        r.sort_key = pol.sort_key(r)
        buf.push(r, 0.0)
    order = [buf.pop(10.0).request_id for _ in range(4)]
    assert order == ["z", "c", "b", "a"]  # b was submitted before a (seq 0 < 2)
    assert buf.pop(10.0) is None and len(buf) == 0


def test_simultaneous_equal_jobs_served_in_arrival_order_whatever_the_ids():
    res, _ = simulate(make_table([3, 3, 3], ids=["r2", "r0", "r1"]), make_schedulers("srtf_oracle", window_tokens=1))
    assert list(res.records["request_id"]) == ["r2", "r0", "r1"]  # finish order = submission order


def test_aging_sort_key_orders_like_effective_key():
    pol = SchedulingPolicy("srtf_oracle", aging_tokens_per_s=2.0)
    rs = [req("a", 0.0, 100), req("b", 30.0, 50), req("c", 45.0, 10)]
    now = 60.0
    by_sort = sorted(rs, key=pol.sort_key)
    by_eff = sorted(rs, key=lambda r: (pol.effective_key(r, now), r.arrival_time_s, r.request_id))
    assert [r.request_id for r in by_sort] == [r.request_id for r in by_eff] == ["a", "c", "b"]
    assert pol.effective_key(rs[0], now) == 100 - 2.0 * 60


def _long_vs_stream(aging):
    # A (50 tokens) at t=0.5 against a stream of 1-token jobs (2 steps with EOS) arriving every
    # 2 seconds from t=0: the worker is always busy with them.
    lengths = [1] * 200 + [50]
    arrivals = [2.0 * i for i in range(200)] + [0.5]
    order = sorted(range(201), key=lambda i: arrivals[i])
    ids = [f"s{i:03d}" for i in range(200)] + ["A"]
    table = make_table([lengths[i] for i in order], [arrivals[i] for i in order], ids=[ids[i] for i in order],
                       max_tokens=100)
    pol = SchedulingPolicy("srtf_oracle", aging_tokens_per_s=aging)
    res, _ = simulate(table, make_schedulers(pol, window_tokens=1))
    return res.records.set_index("request_id").loc["A"]


def test_aging_bounds_starvation():
    # Without aging A starts only when the stream ends (t=400). With alpha=1 token/s, A's key
    # 50 + 0.5 beats every short job arriving after t=49.5 (1 + t): A starts at t=50, inside the
    # documented bound a + K/alpha = 0.5 + 100.
    assert _long_vs_stream(0.0)["window_start_s"][0] == 400.0
    a = _long_vs_stream(1.0)
    assert a["window_start_s"][0] == 50.0
    assert a["window_start_s"][0] <= 0.5 + 100 / 1.0


def test_promotion_after_max_wait():
    # Same stream, promote after 10 s of waiting: A is promoted at t=10.5 and starts at the
    # next decision (t=11).
    lengths = [1] * 40 + [50]
    arrivals = [float(i) for i in range(40)] + [0.5]
    order = sorted(range(41), key=lambda i: arrivals[i])
    ids = [f"s{i:03d}" for i in range(40)] + ["A"]
    table = make_table([lengths[i] for i in order], [arrivals[i] for i in order], ids=[ids[i] for i in order])
    pol = SchedulingPolicy("srtf_oracle", promote_after_s=10.0)
    res, _ = simulate(table, make_schedulers(pol, window_tokens=1))
    assert res.records.set_index("request_id").loc["A", "window_start_s"][0] == 11.0
