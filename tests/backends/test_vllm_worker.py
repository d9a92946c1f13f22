"""vLLM worker: the engine-free parts (request building, output mapping, priorities).
The engine itself is exercised by tests marked `vllm` and scripts/vllm_smoke.sh (GPU)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from elis.serving.workers.base import WindowBatch, WindowItem
from elis.serving.workers.vllm_worker import priority_of, window_requests, window_results, window_seed


def _item(rid, out=(), n=5, max_tokens=100, prompt=(1, 2, 3)):
    return WindowItem(rid, "p", list(prompt), list(out), n, 0, len(prompt) + len(out), max_tokens)


def _out(ids, reason, text="t"):
    return SimpleNamespace(outputs=[SimpleNamespace(token_ids=ids, text=text, finish_reason=reason)])


def test_window_requests_are_token_id_prompts_with_window_budgets():
    b = WindowBatch(0, [_item("a", out=[7, 8]), _item("b", n=3), _item("c", n=0)])
    specs = window_requests(b, {}, temperature=0.0, top_p=1.0, seed=0)
    assert [s.request_id for s in specs] == ["a", "b"]  # 0-token items are not sent
    assert specs[0].prompt_token_ids == [1, 2, 3, 7, 8]  # prompt + generated ids, no text
    assert specs[0].sampling_kwargs == {"max_tokens": 5, "temperature": 0.0, "top_p": 1.0,
                                        "skip_special_tokens": True}
    assert specs[1].sampling_kwargs["max_tokens"] == 3
    b.stop_on_first = True
    assert [s.sampling_kwargs["max_tokens"] for s in window_requests(b, {}, 0.0, 1.0, 0)] == [3, 3]
    b.stop_on_first, b.max_steps = False, 2
    assert [s.sampling_kwargs["max_tokens"] for s in window_requests(b, {}, 0.0, 1.0, 0)] == [2, 2]


def test_seeded_windows_and_missing_prompt():
    b = WindowBatch(0, [_item("a", out=[7, 8])])
    s = window_requests(b, {}, 0.7, 0.9, seed=3, streams={"a": "gen/p1"}, eos_token_ids=[2])
    assert s[0].sampling_kwargs["seed"] == window_seed(3, "gen/p1", 2)
    assert s[0].sampling_kwargs["stop_token_ids"] == [2]
    assert window_seed(3, "gen/p1", 2) != window_seed(3, "gen/p1", 3)
    bad = WindowBatch(0, [WindowItem("z", "p", None, [], 5, 0, 0, 10)])
    with pytest.raises(ValueError, match="'z'"):
        window_requests(bad, {}, 0.0, 1.0, 0)


def test_window_results_map_finish_reasons_and_interpolate_times():
    b = WindowBatch(0, [_item("a", n=4), _item("b", out=[5] * 96, n=4, max_tokens=100),
                        _item("c", n=4), _item("d", n=0)])
    outs = [_out([9, 9, 9, 9], "length"), _out([4, 4, 4, 4], "length"), _out([6, 2], "stop")]
    res = window_results(b, outs, start_s=10.0, end_s=12.0)
    a, bb, c, d = res
    assert (a.num_new_tokens, a.finished, a.finish_reason) == (4, False, None)  # window boundary
    assert (bb.finished, bb.finish_reason) == (True, "length")  # reached max_tokens=100
    # c's last id (2) is the EOS vLLM returns: dropped from the tokens, its step's time kept
    assert (c.num_new_tokens, c.new_token_ids, c.finished, c.finish_reason) == (1, [6], True, "eos")
    assert (d.num_new_tokens, d.start_s, d.end_s) == (0, 10.0, 10.0)
    assert a.token_times_s == [10.5, 11.0, 11.5, 12.0] and c.end_s == 11.0 and c.token_times_s == [10.5]
    assert a.first_token_time_s == 10.5
    with pytest.raises(RuntimeError, match="2 outputs for 3"):
        window_results(b, outs[:2], 0.0, 1.0)


def test_priority_is_the_first_prediction():
    assert priority_of(12.4) == 12 and priority_of(12.6) == 13
    with pytest.raises(ValueError, match="predictor"):
        priority_of(None)


@pytest.mark.vllm
def test_vllm_worker_resume_equals_uninterrupted():  # pragma: no cover - needs a GPU
    vllm = pytest.importorskip("vllm")
    from elis.serving.workers.vllm_worker import VLLMWorker

    llm = vllm.LLM(model="HuggingFaceTB/SmolLM2-135M-Instruct", enable_prefix_caching=True, seed=0)
    w = VLLMWorker(0, llm, llm.get_tokenizer())
    prompt = list(llm.get_tokenizer()("Write a short poem about the sea.")["input_ids"])
    full = w.execute(WindowBatch(0, [_item("a", n=60, prompt=prompt)]), 0.0)[0].new_token_ids
    gen: list[int] = []
    while len(gen) < len(full):
        res = w.execute(WindowBatch(0, [_item("a", out=gen, n=20, prompt=prompt)]), 0.0)[0]
        gen += res.new_token_ids
        if res.finished:
            break
    assert gen == full
