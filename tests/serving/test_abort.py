"""``Scheduler.abort_request``: safe external cancel in every state (issue 10 item 4)."""

from __future__ import annotations

import pytest

from elis.serving.metrics import InvariantError
from elis.serving.policy import SchedulingPolicy
from elis.serving.request import Request, RequestStatus
from elis.serving.scheduler import Scheduler
from elis.serving.workers.sim import SimWorker
from serving_factories import UNIT_STEP, ScriptedPredictor


def _setup(policy="fcfs", n=3, **kw):
    reqs = {f"r{i}": Request(f"r{i}", "", 0.0, 5, 100, true_num_output_tokens=20) for i in range(n)}
    pred = ScriptedPredictor({k: 20.0 for k in reqs})
    s = Scheduler(0, SchedulingPolicy(policy), max_batch_size=2, window_tokens=5, predictor=pred, **kw)
    return s, reqs, SimWorker(0, UNIT_STEP, reqs.__getitem__)


def test_abort_waiting_and_in_transit_and_pending():
    s, reqs, _ = _setup("isrtf")
    a, b, c = reqs.values()
    s.assign(a)
    b.record_prediction(20.0)
    s.add_request(b, 0.0)   # predicted: straight into the buffer
    s.add_request(c, 0.0)   # isrtf, not predicted: pending
    assert s.num_outstanding == 3 and s.predicted_outstanding_tokens == 20.0
    assert s.abort_request(a, "client disconnected", 0.1) and a.status is RequestStatus.FAILED
    assert s.abort_request(b, "client disconnected", 0.2) and not b.in_buffer
    assert s.abort_request(c, "client disconnected", 0.3)
    assert (a.fail_reason, c.fail_time_s) == ("client disconnected", 0.3)
    assert s.num_outstanding == 0 and s.predicted_outstanding_tokens == 0.0 and not s.has_work
    assert s.schedule(0.4).is_empty
    s.check_idle()


def test_abort_running_frees_slot_at_once_and_discards_window_result():
    s, reqs, worker = _setup("fcfs")
    a, b, c = reqs.values()
    for r in (a, b):
        s.add_request(r, 0.0)
    out = s.schedule(0.0)
    res = worker.execute(out.batch, 0.0)  # both would make 5 tokens by t=5
    assert s.abort_request(a, "cancelled", 2.0)
    assert s.running == [b] and s.num_free_slots == 1 and a.status is RequestStatus.FAILED
    s.add_request(c, 2.5)
    assert s.update(out, res, 5.0) == []
    assert a.num_generated_tokens == 0 and a.output_token_ids == [] and a.run_intervals == []
    assert b.num_generated_tokens == 5
    nxt = s.schedule(5.0)
    assert [r.request_id for r in nxt.scheduled] == ["r1", "r2"]
    assert nxt.batch.items[1].num_prefill_tokens == 5  # C is new: prompt prefill


def test_abort_finished_is_a_no_op():
    s, reqs, worker = _setup("fcfs", n=1)
    (a,) = reqs.values()
    a.true_num_output_tokens = 3
    s.add_request(a, 0.0)
    out = s.schedule(0.0)
    assert s.update(out, worker.execute(out.batch, 0.0), 4.0) == [a]  # 3 tokens + the EOS step
    assert not s.abort_request(a, "late cancel", 5.0)
    assert a.status is RequestStatus.FINISHED and a.fail_reason is None and a.finish_time_s == 4.0
    s.check_idle()


def test_abort_rejects_foreign_request_and_empty_reason():
    s, reqs, _ = _setup("fcfs")
    a = reqs["r0"]
    Scheduler(1, SchedulingPolicy("fcfs")).add_request(a, 0.0)
    with pytest.raises(ValueError, match="worker 1"):
        s.abort_request(a, "x", 0.0)
    b = reqs["r1"]
    s.add_request(b, 0.0)
    with pytest.raises(ValueError, match="reason"):
        s.abort_request(b, "", 0.0)


def test_check_idle_names_leftover_counters():
    s, reqs, _ = _setup("fcfs")
    s.add_request(reqs["r0"], 0.0)
    with pytest.raises(InvariantError, match="waiting=1"):
        s.check_idle()
    s.predicted_outstanding_tokens = 5.0
    with pytest.raises(InvariantError, match="predicted_outstanding_tokens=5.0"):
        s.check_idle()
