"""Request lifecycle on the runtime: cancel in every state, context-length rule in the
simulator and the transformers worker, one bad request among good ones, max_tokens=None."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest

from elis.serving.request import Request, RequestStatus

sys.path.insert(0, str(Path(__file__).parent))
from gateway_factories import char_tokenizer, hf_runtime, tiny_llama  # noqa: E402
from serving_factories import make_schedulers, make_table, simulate  # noqa: E402


def test_max_tokens_none_is_a_value_error_naming_the_field():
    with pytest.raises(ValueError, match="max_tokens is None"):
        Request("r", "p", 0.0, 3, None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_tokens must be an integer >= 1, got None"):
        make_table([3], max_tokens=None)


def test_simulator_context_rule_fails_a_too_long_prompt_and_caps_max_tokens():
    # prompts 700 / 10 / 500 tokens on a 512-token context; max_tokens 50; true lengths 30/30/30
    table = make_table([30, 30, 30], num_prompt_tokens=[700, 10, 500], max_tokens=50)
    scheds = make_schedulers("fcfs", max_batch_size=2, window_tokens=5, max_context_tokens=512)
    res, _ = simulate(table, scheds)
    df = res.records.set_index("request_id")
    assert df.loc["req-0000000", "status"] == "FAILED"
    assert "prompt has 700 tokens" in df.loc["req-0000000", "fail_reason"]
    assert "max_context_tokens=512" in df.loc["req-0000000", "fail_reason"]
    assert (df.loc["req-0000001", "status"], df.loc["req-0000001", "num_output_tokens"]) == ("FINISHED", 30)
    # 500 + 50 > 512: capped at 12 tokens, finished 'length' at the end of the context
    assert df.loc["req-0000002", "num_output_tokens"] == 12
    assert df.loc["req-0000002", "finish_reason"] == "length"
    assert scheds[0].num_max_tokens_capped == 1


def test_abort_and_finish_request_are_safe_in_every_state():
    (s,) = make_schedulers("fcfs", max_batch_size=1, window_tokens=5)
    a, b = (Request(i, "p", 0.0, 3, 20) for i in ("a", "b"))
    s.add_request(a, 0.0)
    s.add_request(b, 0.0)
    out = s.schedule(0.0)
    assert out.scheduled == [a]
    assert s.abort_request(b, "cancelled") and b.status is RequestStatus.FAILED and len(s.buffer) == 0
    assert not s.abort_request(b, "again")  # already failed: unchanged
    assert s.finish_request(a, "stop", 1.0) and a.finish_reason == "stop" and s.running == []
    assert not s.abort_request(a, "late cancel")  # a finished request stays finished
    assert a.status is RequestStatus.FINISHED and a.fail_reason is None
    assert not s.has_work


@pytest.fixture(scope="module")
def model_tok():
    return tiny_llama(), char_tokenizer()


def _runner(rt):
    from elis.serving.wallclock import WallClockRunner

    r = WallClockRunner(None, rt.schedulers, rt.handles, rt.load_balancer, rt.prediction)
    r.start_clock()
    return r


def _req(rid, ids, max_tokens):
    return Request(rid, "", 0.0, len(ids), max_tokens, prompt_token_ids=list(ids))


def _run_until(runner, cond, timeout_s=30.0):
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "did not finish"
        runner.step(0.05)


def test_runner_cancel_queued_running_and_finished(model_tok):
    model, tok = model_tok
    rt = hf_runtime(model, tok, max_batch_size=1, window_tokens=400)
    runner = _runner(rt)
    engine = rt.handles[0].worker.engine
    a, b, c = _req("a", [5, 6, 7], 400), _req("b", [8, 9], 400), _req("c", [10], 3)
    runner.submit(a)
    runner.submit(b)
    runner.step(0.0)  # a's 400-token window is in flight, b waits
    assert runner._inflight_ids == {"a": 0}
    assert runner.cancel("b", "cancelled: test") == "queued"
    assert b.status is RequestStatus.FAILED and b.fail_reason == "cancelled: test"
    assert runner.cancel("a", "cancelled: test") == "running"
    # failed and out of the scheduler at once; the in-flight window's result is discarded
    assert a.status is RequestStatus.FAILED and a.fail_reason == "cancelled: test"
    assert rt.schedulers[0].running == [] and "a" not in runner.active
    _run_until(runner, lambda: not runner._inflight)
    # the abort reached the engine: the window stopped long before its 400 tokens
    assert rt.handles[0].worker.stats.num_tokens < 400 and engine._cancelled == {}
    assert runner.cancel("a") == "done" and a.fail_reason == "cancelled: test"
    runner.submit(c)
    _run_until(runner, lambda: c.status.is_terminal)
    assert runner.cancel("c") == "done" and c.status is RequestStatus.FINISHED
    assert runner.num_cancelled == 2 and not runner.active and not runner.has_work


def test_one_request_the_backend_cannot_run_fails_alone(model_tok):
    """Empty prompt on a model without BOS (and a prompt beyond its 64 positions), two workers:
    those requests fail with their reason; the others finish; no worker is marked dead."""
    from elis.serving.simulator import RequestTable
    from elis.serving.wallclock import WallClockRunner

    _, tok = model_tok
    model = tiny_llama(bos=False, max_positions=64)
    rt = hf_runtime(model, tok, num_workers=2, max_batch_size=2)
    prompts = [[5, 6], [], [7, 8, 9], list(range(3, 73)), [10, 11]]
    table = RequestTable(arrival_time_s=np.zeros(5), num_prompt_tokens=np.array([len(p) for p in prompts]),
                         num_output_tokens=np.full(5, 8), max_tokens=8)
    runner = WallClockRunner(table, rt.schedulers, rt.handles, rt.load_balancer, None, prompts)
    df, counters = runner.run()
    df = df.set_index("request_id")
    assert counters["num_worker_faults"] == 0 and runner.alive == [True, True]
    assert df.loc["req-0000001", "status"] == "FAILED"
    assert "no bos_token_id" in df.loc["req-0000001", "fail_reason"]
    assert df.loc["req-0000003", "status"] == "FAILED"
    assert "max_context_tokens=64" in df.loc["req-0000003", "fail_reason"]
    good = df.drop(index=["req-0000001", "req-0000003"])
    assert (good["status"] == "FINISHED").all() and (good["num_output_tokens"] >= 1).all()


def test_hf_worker_rejects_a_window_beyond_the_context_per_item(model_tok):
    from elis.serving.workers.base import WindowBatch, WindowItem

    model, tok = model_tok
    rt = hf_runtime(model, tok)
    w = rt.handles[0].worker
    long = WindowItem("long", "", list(range(3, 98)) * 8, [], 5, 0, 760, 5)  # 760 > 512 positions
    ok = WindowItem("ok", "", [5, 6], [], 5, 0, 2, 5)
    res = w.execute(WindowBatch(0, [long, ok]), 0.0)
    assert res[0].error is not None and "max_context_tokens=512" in res[0].error and res[0].num_new_tokens == 0
    assert res[1].error is None and res[1].num_new_tokens >= 1


class _Picky:
    """An in-process worker that raises (a plain engine error, not a death) on request 'bad'."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.worker_id = inner.worker_id

    def execute(self, batch, start_s):
        if any(it.request_id == "bad" for it in batch.items):
            raise RuntimeError("engine blew up on this input")
        return self.inner.execute(batch, start_s)


def test_a_window_error_fails_its_requests_not_the_worker(model_tok):
    from elis.serving.wallclock import LocalWorkerHandle

    model, tok = model_tok
    rt = hf_runtime(model, tok, num_workers=2, max_batch_size=1)
    rt.handles = [LocalWorkerHandle(_Picky(h.worker)) for h in rt.handles]
    runner = _runner(rt)
    reqs = [_req(rid, [5, 6], 7) for rid in ("a", "bad", "b", "c")]
    for r in reqs:
        runner.submit(r)
    _run_until(runner, lambda: all(r.status.is_terminal for r in reqs))
    st = {r.request_id: r.status for r in reqs}
    assert st == {"a": RequestStatus.FINISHED, "bad": RequestStatus.FAILED, "b": RequestStatus.FINISHED,
                  "c": RequestStatus.FINISHED}
    assert "engine blew up" in reqs[1].fail_reason
    assert runner.alive == [True, True] and runner.faults == [] and runner.num_batch_errors == 1
