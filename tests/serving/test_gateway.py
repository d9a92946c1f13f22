"""The OpenAI-compatible gateway on loopback: a tiny random Llama behind the real runtime.

Every test starts uvicorn on 127.0.0.1 (free port), talks to it with the official ``openai``
client or ``httpx``, and stops it; requests are bounded (max_tokens ≤ 40), so each test ends
by itself. Expected tokens come from running the same engine directly (greedy, float32: a
request's tokens do not depend on its batch or on window boundaries, tests/backends).
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from gateway_factories import ServerThread, char_tokenizer, hf_runtime, tiny_llama  # noqa: E402

pytest.importorskip("fastapi")
pytest.importorskip("openai")

W = 5


@pytest.fixture(scope="module")
def model_tok():
    return tiny_llama(), char_tokenizer()


@pytest.fixture(scope="module")
def served(model_tok):
    """One gateway (FCFS, windowed, W=5, 2 slots) shared by the tests that only send requests."""
    model, tok = model_tok
    with Served(hf_runtime(model, tok)) as s:
        yield s


def reference(model, tok, prompt: str, n: int) -> tuple[list[int], str]:
    """Greedy tokens (EOS excluded) and text of ``prompt`` run directly on the engine."""
    from elis.serving.workers.hf import HFWindowEngine, WindowItem

    eng = HFWindowEngine(model, tok)
    o = eng.generate(WindowItem("ref", tok(prompt)["input_ids"], (), W, max_tokens=n), window_tokens=W)
    ids = o.new_token_ids[:-1] if o.finish_reason == "eos" else o.new_token_ids
    return ids, tok.decode(ids, skip_special_tokens=True)


class Served:
    """Gateway over ``runtime`` served on loopback (context manager)."""

    def __init__(self, runtime, **cfg) -> None:
        from elis.serving.gateway import GatewayConfig, build_gateway

        self.gw, app = build_gateway(runtime, GatewayConfig("tiny", runtime.max_context_tokens, **cfg))
        self.server = ServerThread(app)

    def __enter__(self):
        self.server.__enter__()
        self.url = self.server.url
        return self

    def __exit__(self, *exc):
        self.server.__exit__(*exc)
        self.gw.loop.close()

    def client(self):
        import openai

        return openai.OpenAI(base_url=self.url + "/v1", api_key="none", max_retries=0, timeout=60)


def test_openai_client_stream_and_json_agree_with_the_engine(model_tok, served):
    model, tok = model_tok
    ref_ids, ref_text = reference(model, tok, "Hello world", 23)
    c = served.client()
    r = c.completions.create(model="tiny", prompt="Hello world", max_tokens=23)
    chunks = list(c.completions.create(model="tiny", prompt="Hello world", max_tokens=23, stream=True,
                                       stream_options={"include_usage": True}))
    chat = list(c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                          max_tokens=12, stream=True, stream_options={"include_usage": True}))
    assert r.choices[0].text == ref_text
    assert r.choices[0].finish_reason == ("length" if len(ref_ids) == 23 else "stop")
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (11, len(ref_ids))
    # one seamless stream over 5 windows, exactly one usage record (prompt counted once)
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == ref_text
    usages = [ch.usage for ch in chunks if ch.usage is not None]
    assert len(usages) == 1 and (usages[0].prompt_tokens, usages[0].completion_tokens) == (11, len(ref_ids))
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == r.choices[0].finish_reason
    assert chat[0].choices[0].delta.role == "assistant"
    assert sum(1 for ch in chat if ch.usage is not None) == 1 and chat[-1].usage.completion_tokens <= 12


def test_concurrent_requests_each_get_their_own_exact_tokens(model_tok):
    model, tok = model_tok
    prompts = [("alpha", 17), ("beta gamma", 9), ("x", 31), ("delta 123", 14), ("zz top", 22), ("q", 6)]
    refs = {p: reference(model, tok, p, n)[1] for p, n in prompts}
    rt = hf_runtime(model, tok, policy="isrtf", num_workers=2, predictor=_prompt_len())
    with Served(rt) as s:
        c = s.client()
        with cf.ThreadPoolExecutor(6) as ex:
            futs = {p: ex.submit(lambda p=p, n=n: c.completions.create(model="tiny", prompt=p, max_tokens=n))
                    for p, n in prompts}
            got = {p: f.result().choices[0].text for p, f in futs.items()}
        body = _get(s.url + "/metrics")
    assert got == refs
    assert "elis:num_predictions_total" in body and 'elis:request_success_total{finished_reason="length"}' in body


def _prompt_len():
    from elis.predictor.simple import PromptLengthPredictor

    return PromptLengthPredictor(intercept=30.0, slope=0.0)


def _get(url: str) -> str:
    import httpx

    return httpx.get(url, timeout=30).text


def test_stop_string_spanning_a_window_boundary(model_tok, served):
    model, tok = model_tok
    ids, text = reference(model, tok, "Hello world", 30)
    # characters ↔ tokens (char tokenizer; skip specials): find a 2-char stop whose first char
    # is the last token of window 1 (position W-1) and second the first of window 2
    visible = [i for i in ids if i > 2]
    assert len(visible) >= 12
    chars = tok.decode(visible, skip_special_tokens=True)
    k = next(j for j in range(W - 1, len(chars) - 1, W) if chars.find(chars[j:j + 2]) == j and j > 0)
    stop = chars[k:k + 2]
    c = served.client()
    r = c.completions.create(model="tiny", prompt="Hello world", max_tokens=30, stop=[stop, "@@@@"])
    st = list(c.completions.create(model="tiny", prompt="Hello world", max_tokens=30, stop=stop, stream=True))
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].text == chars[:k] and stop not in r.choices[0].text
    assert "".join(ch.choices[0].text for ch in st) == chars[:k]
    assert st[-1].choices[0].finish_reason == "stop"


@pytest.mark.parametrize("body, field, status", [
    ({"prompt": "hi", "max_tokens": 0}, "max_tokens", 400),
    ({"prompt": "hi", "max_tokens": "many"}, "max_tokens", 400),
    ({"prompt": "hi", "temperature": -1}, "temperature", 400),
    ({"prompt": "hi", "top_p": 0}, "top_p", 400),
    ({"prompt": {"a": 1}}, "prompt", 400),
    ({"prompt": [1, 2, 999]}, "prompt", 400),
    ({"prompt": "hi", "stop": [1]}, "stop", 400),
    ({"prompt": "hi", "n": 2}, "n", 400),
    ({"prompt": "hi", "max_tokens": 600}, "max_tokens", 400),      # 2 + 600 > 512 positions
    ({"prompt": "x" * 700, "max_tokens": 5}, "prompt", 400),       # prompt alone > 512
])
def test_bad_input_is_a_4xx_naming_the_field(served, body, field, status):
    import httpx

    s = served
    r = httpx.post(s.url + "/v1/completions", json=body, timeout=30)
    ok = httpx.post(s.url + "/v1/completions", json={"prompt": "hi", "max_tokens": 3}, timeout=30)
    assert r.status_code == status
    err = r.json()["error"]
    assert err["param"] == field and err["type"] == "invalid_request_error"
    if body.get("max_tokens") == 600:
        assert "512" in err["message"] and "602" in err["message"]
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] <= 3


def test_invalid_json_and_chat_messages(served):
    import httpx

    s = served
    r = httpx.post(s.url + "/v1/completions", content=b"{nope", timeout=30)
    m = httpx.post(s.url + "/v1/chat/completions", json={"messages": "hi"}, timeout=30)
    models = httpx.get(s.url + "/v1/models", timeout=30).json()
    health = httpx.get(s.url + "/health", timeout=30)
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    assert m.status_code == 400 and m.json()["error"]["param"] == "messages"
    assert models["data"][0]["id"] == "tiny" and models["data"][0]["max_model_len"] == 512
    assert health.status_code == 200


def test_max_tokens_absent_defaults_to_the_context_left(model_tok):
    from elis.serving.gateway import GatewayConfig, GatewayError, Gateway

    model, tok = model_tok
    gw = Gateway(loop=None, tokenizer=tok, config=GatewayConfig("tiny", max_context_tokens=512))
    r, _, _ = gw.parse({"prompt": "abc"}, chat=False)
    assert r.max_tokens == 509
    gw.config.default_max_tokens = 100
    assert gw.parse({"prompt": "abc"}, chat=False)[0].max_tokens == 100
    gw2 = Gateway(loop=None, tokenizer=tok, config=GatewayConfig("tiny", max_context_tokens=None))
    with pytest.raises(GatewayError, match="'max_tokens' is required"):
        gw2.parse({"prompt": "abc"}, chat=False)


def test_client_disconnect_cancels_queued_and_running_requests(model_tok):
    """One slot: a long stream runs, a second waits; both clients leave; the slot is free and
    a third request is served; the cancellations are counted, nothing is left queued."""
    import httpx

    model, tok = model_tok
    rt = hf_runtime(model, tok, max_batch_size=1)
    with Served(rt) as s:
        body = {"prompt": "long one", "max_tokens": 400, "stream": True}
        with httpx.Client(timeout=30) as c1, httpx.Client(timeout=30) as c2:
            with c1.stream("POST", s.url + "/v1/completions", json=body) as r1:
                lines = r1.iter_lines()
                first = next(ln for ln in lines if ln.startswith("data:"))  # it is running
                with c2.stream("POST", s.url + "/v1/completions", json=body) as r2:
                    assert r2.status_code == 200
                    _wait(lambda: _metric(s.url, "elis:num_requests_waiting") == 1)
                # client 2 left while queued
                _wait(lambda: _metric(s.url, "elis:request_cancelled_total") == 1)
            # client 1 left while running
            _wait(lambda: _metric(s.url, "elis:request_cancelled_total") == 2)
        assert json.loads(first[5:])["choices"][0]["text"] is not None
        r3 = s.client().completions.create(model="tiny", prompt="after", max_tokens=4)
        assert r3.usage.completion_tokens <= 4
        assert _metric(s.url, "elis:num_requests_running") == 0 and _metric(s.url, "elis:num_requests_waiting") == 0
        assert _metric(s.url, "elis:generation_tokens_total") < 400  # the 400-token request was cut short


def _metric(url: str, name: str) -> float:
    for line in _get(url + "/metrics").splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise KeyError(name)


def _wait(cond, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.02)
