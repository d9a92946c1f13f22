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
    ({"prompt": "hi", "seed": -1}, "seed", 400),
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


def test_remote_worker_through_our_backend_server_resumes_exactly(model_tok):
    """client → gateway (worker=remote, W=5) → HTTP → backend gateway (transformers worker).
    Each window is one /v1/completions with a token-id prompt; the tokens equal the engine's.
    A request the backend rejects (its context is 512, the front believes 10000) fails alone."""
    from elis.serving.load_balancer import RoundRobin
    from elis.serving.runtime import Runtime, build_schedulers
    from elis.serving.wallclock import LocalWorkerHandle
    from elis.serving.workers.remote import RemoteOpenAIWorker

    model, tok = model_tok
    prompts = [("alpha", 17), ("beta gamma", 9), ("x", 31), ("delta 123", 14)]
    refs = {p: reference(model, tok, p, n) for p, n in prompts}
    with Served(hf_runtime(model, tok, max_batch_size=4, window_tokens=50)) as backend:
        workers = [RemoteOpenAIWorker(w, backend.url, "tiny", tok, max_context_tokens=10_000) for w in range(2)]
        handles = [LocalWorkerHandle(w) for w in workers]
        scheds = build_schedulers({"policy": "isrtf", "mode": "windowed"}, 2, 2, W, None,
                                  _service(), None, 10_000)
        rt = Runtime(scheds, RoundRobin(), handles, _service(), tok, 10_000)
        with Served(rt) as front:
            c = front.client()
            with cf.ThreadPoolExecutor(5) as ex:
                futs = {p: ex.submit(lambda p=p, n=n: c.completions.create(model="tiny", prompt=p, max_tokens=n))
                        for p, n in prompts}
                bad = ex.submit(lambda: c.completions.create(model="tiny", prompt="y" * 600, max_tokens=5))
                got = {p: f.result() for p, f in futs.items()}
                import openai

                with pytest.raises(openai.InternalServerError, match="512"):
                    bad.result()
            streamed = "".join(ch.choices[0].text for ch in c.completions.create(
                model="tiny", prompt="x", max_tokens=31, stream=True))
        for w in workers:
            w.close()
    for p, _ in prompts:
        assert got[p].choices[0].text == refs[p][1]
        assert got[p].usage.completion_tokens == len(refs[p][0])
    assert streamed == refs["x"][1]
    # one HTTP request per window: ceil(L/W) when max_tokens ends it, L//W + 1 when EOS does
    windows = {p: -(-len(refs[p][0]) // W) if len(refs[p][0]) == n else len(refs[p][0]) // W + 1 for p, n in prompts}
    assert sum(w.stats.num_http_requests for w in workers) == sum(windows.values()) + windows["x"] + 1
    assert all(front.gw.loop.runner.alive)  # the rejected request did not take a worker down


def _service():
    from elis.serving.prediction import PredictionService

    return PredictionService(_prompt_len(), None, latency_source="measured", window_tokens=W)


def test_serve_config_composes_and_builds_a_gateway_over_remote_servers(model_tok, served, compose_cfg, tmp_path):
    """``conf/serve.yaml`` + ``worker=remote`` (URL = the test backend) + ``sched=isrtf`` with the
    prompt-length predictor: the composition root builds runtime and gateway; a request runs."""
    from elis.serving.gateway import build_gateway, gateway_config
    from elis.serving.runtime import SCHED_KEYS, _HANDLES, build_prediction_service, build_runtime

    model, tok = model_tok
    tok.save_pretrained(tmp_path / "tok")
    cfg = compose_cfg("serve", ["worker=remote", f"worker.urls=[{served.url}]", "worker.model_name=tiny",
                                f"worker.tokenizer={tmp_path / 'tok'}", "sched=isrtf", "predictor=prompt_length",
                                "window_tokens=4", "load_balancer=least_predicted_tokens"])
    sched = {k: v for k, v in cfg.sched.items() if k in SCHED_KEYS}
    rt = build_runtime(cfg, sched, build_prediction_service(cfg, None, latency_source="measured"), None)
    try:
        assert rt.max_context_tokens == 512  # asked from the backend's /v1/models
        gw, app = build_gateway(rt, gateway_config(cfg, rt))
        assert gw.config.model_name == "tiny"
        with ServerThread(app) as front:
            import openai

            c = openai.OpenAI(base_url=front.url + "/v1", api_key="none", max_retries=0)
            r = c.completions.create(model="tiny", prompt="beta gamma", max_tokens=9)
        gw.loop.close()
        assert r.choices[0].text == reference(model, tok, "beta gamma", 9)[1]
        # the arrival prediction is the load balancer's; isrtf re-predicts at the 4- and 8-token boundaries
        assert rt.schedulers[0].num_predictions == 2
    finally:
        for h in rt.handles:
            h.worker.close()
        _HANDLES.clear()


def test_tokens_stream_as_they_are_generated_inside_a_window(model_tok):
    """W=50 > max_tokens: one window, yet one SSE chunk per visible token (char tokenizer),
    each with its own token id when return_token_ids is set."""
    import httpx

    model, tok = model_tok
    ids, text = reference(model, tok, "beta gamma", 9)
    with Served(hf_runtime(model, tok, window_tokens=50)) as s:
        chunks = [ch for ch in s.client().completions.create(model="tiny", prompt="beta gamma", max_tokens=9,
                                                             stream=True) if ch.choices[0].text]
        with httpx.stream("POST", s.url + "/v1/completions", timeout=30, json={
                "prompt": "beta gamma", "max_tokens": 9, "stream": True, "return_token_ids": True}) as r:
            got = [json.loads(ln[5:]) for ln in r.iter_lines() if ln.startswith("data: {")]
    assert [ch.choices[0].text for ch in chunks] == list(text)
    assert [c["choices"][0]["token_ids"] for c in got if c["choices"][0]["token_ids"]] == [[t] for t in ids]


class _Slow:
    """An in-process worker that takes 0.3 s more per window (so a client can give up mid-run)."""

    def __init__(self, inner) -> None:
        self.inner, self.worker_id = inner, inner.worker_id

    def execute(self, batch, start_s):
        time.sleep(0.3)
        return self.inner.execute(batch, start_s)


def test_non_streaming_client_that_gives_up_cancels_its_request(model_tok):
    import httpx

    from elis.serving.wallclock import LocalWorkerHandle

    model, tok = model_tok
    rt = hf_runtime(model, tok, max_batch_size=1)
    rt.handles = [LocalWorkerHandle(_Slow(h.worker)) for h in rt.handles]
    with Served(rt) as s:
        with pytest.raises(httpx.ReadTimeout):  # 3+ windows of 5 tokens take > 0.9 s
            httpx.post(s.url + "/v1/completions", json={"prompt": "delta 123", "max_tokens": 40}, timeout=0.5)
        _wait(lambda: _metric(s.url, "elis:request_cancelled_total") == 1)
        assert _metric(s.url, "elis:num_requests_running") == 0
        assert _metric(s.url, "elis:generation_tokens_total") < 40


def test_remote_worker_text_resume_mode(model_tok, served):
    """worker.resume=text: prompt text + generated text each window, counts from `usage`.
    On this output (no special tokens) re-encoding is exact: same text, no mismatch counted."""
    from elis.serving.load_balancer import RoundRobin
    from elis.serving.runtime import Runtime, build_schedulers
    from elis.serving.wallclock import LocalWorkerHandle
    from elis.serving.workers.remote import RemoteOpenAIWorker

    model, tok = model_tok
    ids, text = reference(model, tok, "delta 123", 14)
    worker = RemoteOpenAIWorker(0, served.url, "tiny", tok, resume="text")
    scheds = build_schedulers({"policy": "fcfs"}, 1, 2, W, None, None, None, worker.max_context_tokens)
    with Served(Runtime(scheds, RoundRobin(), [LocalWorkerHandle(worker)], None, tok, 512)) as front:
        r = front.client().completions.create(model="tiny", prompt="delta 123", max_tokens=14)
    worker.close()
    assert (r.choices[0].text, r.usage.completion_tokens) == (text, len(ids)) and len(ids) == 14
    assert worker.stats.num_http_requests == 3 and worker.stats.num_text_resume_mismatches == 0


def test_a_seeded_sampled_request_is_reproducible(served):
    c = served.client()

    def ask(seed):
        return c.completions.create(model="tiny", prompt="beta", max_tokens=12, temperature=1.0,
                                    seed=seed).choices[0].text

    a, b, other = ask(7), ask(7), [ask(s) for s in (8, 9, 10)]
    assert a == b
    assert any(o != a for o in other)  # the seed matters (3 other seeds: not all equal to it)
