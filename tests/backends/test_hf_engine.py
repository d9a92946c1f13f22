"""HFWindowEngine on a tiny random Llama: windows, resume, batching, EOS, max_tokens."""

from __future__ import annotations

import pytest

from elis.serving.workers.hf import (
    FINISH_EOS,
    FINISH_LENGTH,
    HFWindowEngine,
    SamplingParams,
    WindowItem,
)

# Mixed lengths on purpose: the batch needs left padding.
PROMPTS = {
    "a": [1, 5, 6, 7],
    "b": [1, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18],
    "c": [1, 3],
    "d": [1, 40, 41, 42, 43, 44, 45],
}
NEVER = 95  # an EOS id the tiny model is checked not to emit in these runs


@pytest.fixture
def engine(tiny_llama):
    return HFWindowEngine(tiny_llama, eos_token_ids=[NEVER])


def _alone(engine, rid, n, generated=()):
    (out,) = engine.run_window([WindowItem(rid, PROMPTS[rid], tuple(generated), n)])
    return out


def _run_in_windows(engine, rid, window, total, partners=()):
    """Generate ``total`` tokens of ``rid`` in windows of ``window``, each window batched
    with a different subset of ``partners`` (fresh requests), resuming from token ids."""
    gen: list[int] = []
    w = 0
    while len(gen) < total:
        items = [WindowItem(rid, PROMPTS[rid], tuple(gen), min(window, total - len(gen)))]
        items += [WindowItem(p, PROMPTS[p], (), 7) for p in partners[: w % (len(partners) + 1)]]
        outs = engine.run_window(items)
        gen += outs[0].new_token_ids
        w += 1
    return gen


def test_exactly_w_tokens_per_window(engine):
    outs = engine.run_window([WindowItem(r, p, (), 50) for r, p in PROMPTS.items()])
    assert [o.request_id for o in outs] == list(PROMPTS)
    for o in outs:
        assert NEVER not in o.new_token_ids
        assert len(o.new_token_ids) == 50
        assert not o.finished and o.finish_reason is None
        assert len(o.token_times_s) == 50
        assert o.token_times_s == sorted(o.token_times_s)
    t = engine.last_timing
    # prefill covers context[:-1]; step 0 feeds each prompt's last token and yields token 1
    assert t.batch_size == 4 and t.prefill_tokens == 3 + 10 + 1 + 6
    assert t.prefill_padded_tokens == 4 * 10
    assert len(t.decode_step_times_s) == 50 and t.decode_batch_sizes == [4] * 50
    assert t.decode_context_tokens[0] == 24 and t.decode_context_tokens[-1] == 24 + 49 * 4
    # the next window resumes from kept KV: no prefill at all
    engine.run_window([WindowItem(o.request_id, PROMPTS[o.request_id], tuple(o.new_token_ids), 5)
                       for o in outs])
    assert engine.last_timing.prefill_tokens == 0 and engine.num_kv_tokens == 24 + 4 * 54  # contexts minus their last token


def test_resume_equals_uninterrupted_greedy(engine):
    for rid in PROMPTS:
        full = _alone(engine, rid, 60).new_token_ids
        assert _run_in_windows(engine, rid, 20, 60) == full
        # preempted after odd-sized windows and resumed next to other requests
        assert _run_in_windows(engine, rid, 13, 60, partners=[p for p in PROMPTS if p != rid]) == full


def test_batched_equals_unbatched_greedy(engine):
    alone = {r: _alone(engine, r, 40).new_token_ids for r in PROMPTS}
    batched = engine.run_window([WindowItem(r, p, (), 40) for r, p in PROMPTS.items()])
    assert {o.request_id: o.new_token_ids for o in batched} == alone
    # reversed order and a resumed member with a longer context
    items = [WindowItem(r, PROMPTS[r], tuple(alone[r][:10]), 30) for r in reversed(PROMPTS)]
    for o in engine.run_window(items):
        assert o.new_token_ids == alone[o.request_id][10:]


def test_eos_mid_window(tiny_llama):
    plain = HFWindowEngine(tiny_llama, eos_token_ids=[NEVER])
    full = _alone(plain, "b", 50).new_token_ids
    j = 6
    eos = full[j]
    stop = full.index(eos)  # first occurrence ends the request
    assert stop <= j
    # per-request EOS: only "b" uses it; "d" runs its full window next to it
    outs = plain.run_window([
        WindowItem("b", PROMPTS["b"], (), 50, eos_token_ids=(eos,)),
        WindowItem("d", PROMPTS["d"], (), 50),
    ])
    assert outs[0].new_token_ids == full[: stop + 1]
    assert outs[0].finished and outs[0].finish_reason == FINISH_EOS
    assert outs[1].new_token_ids == _alone(plain, "d", 50).new_token_ids
    assert not outs[1].finished
    assert plain.last_timing.decode_batch_sizes[stop] == 1  # the finished row left the batch
    # engine-wide default EOS
    (o,) = HFWindowEngine(tiny_llama, eos_token_ids=[eos]).run_window(
        [WindowItem("b", PROMPTS["b"], (), 50)]
    )
    assert o.new_token_ids == full[: stop + 1] and o.finish_reason == FINISH_EOS


def test_max_tokens_mid_window(engine):
    full = _alone(engine, "a", 50).new_token_ids
    (o,) = engine.run_window([WindowItem("a", PROMPTS["a"], tuple(full[:15]), 20, max_tokens=25)])
    assert o.new_token_ids == full[15:25]
    assert o.finished and o.finish_reason == FINISH_LENGTH
    # reaching max_tokens exactly at the window's end is also 'length'
    (o,) = engine.run_window([WindowItem("a", PROMPTS["a"], (), 20, max_tokens=20)])
    assert o.finished and o.finish_reason == FINISH_LENGTH and len(o.new_token_ids) == 20


def test_empty_prompt_uses_bos(engine, tiny_llama):
    (o,) = engine.run_window([WindowItem("e", (), (), 10)])
    (ref,) = engine.run_window([WindowItem("e", [tiny_llama.config.bos_token_id], (), 10)])
    assert len(o.new_token_ids) == 10 and o.new_token_ids == ref.new_token_ids
    nobos = HFWindowEngine(tiny_llama, eos_token_ids=[NEVER])
    nobos.bos_token_id = None
    with pytest.raises(ValueError, match="empty prompt_token_ids"):
        nobos.run_window([WindowItem("e", (), (), 10)])


def test_bad_items_raise(engine):
    assert engine.run_window([]) == []
    with pytest.raises(ValueError, match="budget 0"):
        engine.run_window([WindowItem("a", PROMPTS["a"], (5,) * 10, 5, max_tokens=10)])
    with pytest.raises(ValueError, match="duplicate request_id 'a'"):
        engine.run_window([WindowItem("a", PROMPTS["a"]), WindowItem("a", PROMPTS["b"])])
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(temperature=1.0, top_p=0.0)


def test_seeded_sampling_reproducible_resumable_batch_independent(tiny_llama):
    s = SamplingParams(temperature=1.0, top_p=0.9, seed=7)
    eng = HFWindowEngine(tiny_llama, sampling=s, eos_token_ids=[NEVER])
    full = _alone(eng, "b", 40).new_token_ids
    assert _alone(eng, "b", 40).new_token_ids == full
    assert _run_in_windows(eng, "b", 15, 40, partners=["a", "c"]) == full
    greedy = _alone(HFWindowEngine(tiny_llama, eos_token_ids=[NEVER]), "b", 40).new_token_ids
    assert full != greedy
    other = HFWindowEngine(tiny_llama, sampling=SamplingParams(1.0, 0.9, seed=8),
                           eos_token_ids=[NEVER])
    assert _alone(other, "b", 40).new_token_ids != full


def test_generate_runs_windows_until_finished(engine):
    full = _alone(engine, "c", 45).new_token_ids
    o = engine.generate(WindowItem("c", PROMPTS["c"], (), 10, max_tokens=45), window_tokens=10)
    assert o.new_token_ids == full and o.finish_reason == FINISH_LENGTH


def test_stop_on_first_and_max_steps(engine):
    items = [WindowItem("a", PROMPTS["a"], (), 20), WindowItem("b", PROMPTS["b"], (), 5),
             WindowItem("c", PROMPTS["c"], (), 20)]
    outs = engine.run_window(items, stop_on_first=True)
    assert [len(o.new_token_ids) for o in outs] == [5, 5, 5]
    assert [o.finished for o in outs] == [False, False, False]
    outs = engine.run_window(items, max_steps=3)
    assert [len(o.new_token_ids) for o in outs] == [3, 3, 3]
    assert outs[0].new_token_ids == _alone(engine, "a", 3).new_token_ids


def test_hf_worker_drives_the_scheduler_with_preemption(engine):
    """Real Scheduler (windowed, SRTF-oracle, batch 2) over the tiny model: requests are
    preempted at window boundaries and resumed from token ids; each output equals its
    uninterrupted greedy generation, and the worker's times are on the run clock."""
    from elis.serving.policy import SchedulingPolicy
    from elis.serving.request import Request
    from elis.serving.scheduler import Scheduler
    from elis.serving.workers.hf import HFWorker

    lengths = {"a": 23, "b": 9, "c": 31, "d": 14}
    full = {r: _alone(engine, r, n).new_token_ids for r, n in lengths.items()}
    worker = HFWorker(0, engine)
    sched = Scheduler(0, SchedulingPolicy("srtf_oracle"), max_batch_size=2, window_tokens=5)

    def add(r, now):
        n = lengths[r]
        sched.add_request(Request(r, "", now, len(PROMPTS[r]), max_tokens=n,
                                  prompt_token_ids=PROMPTS[r], true_num_output_tokens=n), now)

    now, done = 10.0, []
    add("a", now), add("c", now)
    late = ["b", "d"]  # arrive after the first window: shorter, so they preempt a and c
    while sched.has_work:
        if sched.num_decisions == 1:
            for r in late:
                add(r, now)
        out = sched.schedule(now)
        results = worker.execute(out.batch, now)
        assert all(now <= t for res in results for t in res.token_times_s)
        now = max(res.end_s for res in results)
        done += sched.update(out, results, now)
    assert sorted(r.request_id for r in done) == sorted(lengths)
    for req in done:
        assert req.output_token_ids == full[req.request_id]
        assert req.finish_reason == "length"
    assert sum(r.num_preemptions for r in done) > 0
    assert worker.stats.num_tokens == sum(lengths.values())
    # KV kept across windows and preemptions: only the prompts were prefilled (all but the
    # last token, which the first decode step feeds)
    assert worker.stats.scheduler_prefill_tokens == sum(len(PROMPTS[r]) for r in lengths)
    assert worker.stats.prefill_tokens == worker.stats.scheduler_prefill_tokens - len(lengths)
    assert engine.num_kv_tokens == 0  # finished requests release their KV


@pytest.mark.parametrize("kv", [{"kv_keep": False}, {"max_kv_tokens": 30}])
def test_recompute_and_eviction_give_the_same_tokens(tiny_llama, kv):
    keep = HFWindowEngine(tiny_llama, eos_token_ids=[NEVER])
    other = HFWindowEngine(tiny_llama, eos_token_ids=[NEVER], **kv)
    gens = {r: [] for r in PROMPTS}
    ref = {r: [] for r in PROMPTS}
    for w, n in enumerate([7, 9, 4, 12]):
        batch = list(PROMPTS)[w % 2:] if w < 3 else list(PROMPTS)
        for eng, store in ((keep, ref), (other, gens)):
            outs = eng.run_window([WindowItem(r, PROMPTS[r], tuple(store[r]), n) for r in batch])
            for o in outs:
                store[o.request_id] += o.new_token_ids
    assert gens == ref
    assert other.last_timing.prefill_tokens > 0
    if "max_kv_tokens" in kv:
        assert other.num_kv_evictions > 0 and other.num_kv_tokens <= 30
    else:
        assert other.num_kv_tokens == 0


def test_hf_worker_reports_tokens_without_eos(engine, tiny_llama):
    from elis.serving.workers.base import WindowBatch
    from elis.serving.workers.base import WindowItem as SeamItem
    from elis.serving.workers.hf import HFWorker

    full = _alone(engine, "b", 20).new_token_ids
    eos = full[4]
    stop = full.index(eos)
    w = HFWorker(0, HFWindowEngine(tiny_llama, eos_token_ids=[eos]))
    (res,) = w.execute(WindowBatch(0, [SeamItem("b", "", PROMPTS["b"], [], 20, 11, 11, 100)]), 5.0)
    assert res.new_token_ids == full[:stop] and res.num_new_tokens == stop
    assert res.finished and res.finish_reason == "eos"
    assert res.end_s > res.token_times_s[-1] if stop else res.end_s >= 5.0  # EOS step timed
    assert w.stats.num_tokens == stop + 1


def test_tpot_counts_the_eos_step_on_the_hf_worker(tiny_llama):
    # Issue 11 item 10: k content tokens + EOS, every decode step 2.0 clock units (the fake
    # clock advances 1.0 per read; the engine reads it twice per step). TPOT must be 2.0 exactly
    # (it was 2.0·k/(k−1) when the EOS step's time was divided by k−1 tokens), and the recorded
    # finish is the end of the EOS step.
    import itertools

    from elis.serving.metrics import RequestRecorder
    from elis.serving.policy import SchedulingPolicy
    from elis.serving.request import Request
    from elis.serving.scheduler import Scheduler
    from elis.serving.workers.hf import HFWorker

    full = _alone(HFWindowEngine(tiny_llama, eos_token_ids=[NEVER]), "b", 20).new_token_ids
    k = next(j for j in range(3, 20) if full.index(full[j]) == j)  # first new id at j >= 3
    ticks = itertools.count()
    eng = HFWindowEngine(tiny_llama, eos_token_ids=[full[k]], clock=lambda: float(next(ticks)))
    worker = HFWorker(0, eng)
    s = Scheduler(0, SchedulingPolicy("fcfs"), max_batch_size=1, window_tokens=50)
    r = Request("b", "", 0.0, len(PROMPTS["b"]), max_tokens=100, prompt_token_ids=PROMPTS["b"])
    s.add_request(r, 0.0)
    out = s.schedule(0.0)
    res = worker.execute(out.batch, 0.0)
    assert s.update(out, res, res[0].end_s) == [r]
    rec = RequestRecorder()
    rec.add(r)
    row = rec.to_frame().iloc[0]
    assert row["num_output_tokens"] == k and row["num_decode_steps"] == k + 1 and row["finish_reason"] == "eos"
    assert row["finish_time_s"] - row["first_token_time_s"] == pytest.approx(2.0 * k)
    assert row["tpot_s"] == pytest.approx(2.0)


def test_answer_of_exactly_w_tokens_spends_an_eos_window_on_hf_and_in_the_simulator(tiny_llama):
    # k content tokens with W = k: the first window returns k tokens unfinished, the next one
    # only the EOS step (0 tokens, 'eos'). The simulated worker plans the same windows and steps.
    from elis.serving.cost_model import CostModel
    from elis.serving.policy import SchedulingPolicy
    from elis.serving.request import Request
    from elis.serving.scheduler import Scheduler
    from elis.serving.workers.hf import HFWorker
    from elis.serving.workers.sim import SimWorker

    full = _alone(HFWindowEngine(tiny_llama, eos_token_ids=[NEVER]), "b", 20).new_token_ids
    k = next(j for j in range(3, 20) if full.index(full[j]) == j)
    runs = {}
    for kind in ("hf", "sim"):
        r = Request("b", "", 0.0, len(PROMPTS["b"]), max_tokens=100, prompt_token_ids=PROMPTS["b"],
                    true_num_output_tokens=k)
        worker = (HFWorker(0, HFWindowEngine(tiny_llama, eos_token_ids=[full[k]])) if kind == "hf"
                  else SimWorker(0, CostModel(decode_base_s=1.0), {"b": r}.__getitem__))
        s = Scheduler(0, SchedulingPolicy("fcfs"), max_batch_size=1, window_tokens=k)
        s.add_request(r, 0.0)
        windows = []
        while s.has_work:
            out = s.schedule(0.0)
            (res,) = worker.execute(out.batch, 0.0)
            windows.append((res.num_new_tokens, res.finished, res.finish_reason))
            s.update(out, [res], res.end_s)
        runs[kind] = windows
    assert runs["hf"] == runs["sim"] == [(k, False, None), (0, True, "eos")]
