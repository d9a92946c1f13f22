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
