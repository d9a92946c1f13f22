"""The instant backend's protocol (token-id prompts, returned ids, usage, disconnects)."""

from __future__ import annotations

import json

import httpx
import pytest

from elis.experiments.instant_backend import make_app, serve_in_thread, token_id


@pytest.fixture(scope="module")
def backend():
    app = make_app()
    with serve_in_thread(app) as url:
        yield url, app.state.stats


def test_token_id_prompt_non_streaming(backend):
    url, _ = backend
    r = httpx.post(f"{url}/completions", json={"model": "instant", "prompt": [5, 6, 7], "max_tokens": 3,
                                                "return_token_ids": True})
    c = r.json()["choices"][0]
    assert (c["text"], c["token_ids"], c["finish_reason"]) == ("t0 t1 t2 ", [100, 101, 102], "length")
    assert r.json()["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
    assert token_id(1003) == 103


def test_streaming_ids_and_usage(backend):
    url, _ = backend
    body = {"prompt": [1] * 4, "max_tokens": 2, "stream": True, "return_token_ids": True,
            "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{url}/completions", json=body) as r:
        data = [ln[6:] for ln in r.iter_lines() if ln.startswith("data: ")]
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert [c["choices"][0]["token_ids"] for c in chunks[:3]] == [[100], [101], []]
    assert chunks[2]["choices"][0]["finish_reason"] == "length" and chunks[3]["usage"]["completion_tokens"] == 2


def test_chat_text_answer_and_400(backend):
    url, _ = backend
    r = httpx.post(f"{url}/chat/completions", json={"messages": [{"role": "user", "content": "abc"}], "max_tokens": 9})
    assert r.json()["choices"][0]["message"]["content"] == "t0 t1 t2 "
    assert r.json()["choices"][0]["finish_reason"] == "stop"
    r = httpx.post(f"{url}/completions", json={"prompt": "FAIL400", "max_tokens": 2})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"


def test_bench_gateway_counts_windows_against_the_instant_backend(backend):
    from elis.experiments.bench_gateway import dispatch, overhead

    url, _ = backend
    # 5 requests × max_tokens 2·3 = 6 tokens (prompt of 100 chars ≥ 6) → ceil(6/3) = 2 windows each
    d = dispatch(url, window_tokens=3, windows=2, num=5, reps=2, prompt_chars=100)
    assert [r["num_windows"] for r in d["runs"]] == [10, 10] and all(r["num_failed"] == 0 for r in d["runs"])
    assert d["windows_per_s_mean"] > 0
    # the same server as 'direct' and 'gateway': 2 runs each, interleaved A B B A
    o = overhead(url, url, window_tokens=3, windows=2, num=2, reps=2, prompt_chars=100)
    assert [r["repetition"] for r in o["runs"]["gateway"]] == [0, 1]
    assert all(r["tokens_mean"] == 6 for r in o["runs"]["direct"] + o["runs"]["gateway"])
    assert len(o["overhead_ms_per_window"]) == 2
