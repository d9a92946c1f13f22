"""Gateway follow-ups (issue 10): seeded sampling through gateway → backend, preemptions, streaming.

client → front gateway (``worker=remote``, small W) → HTTP → backend gateway (``serve.py
worker=hf`` equivalent: transformers worker on a 2-layer random Llama, character tokenizer), all
on loopback. Expected token ids come from running the engine directly (one window, no HTTP).
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from gateway_factories import char_tokenizer, hf_runtime, tiny_llama  # noqa: E402
from test_gateway import Served, _metric, _wait  # noqa: E402

pytest.importorskip("fastapi")
pytest.importorskip("openai")

W = 4  # front window: a 22-token answer spans 6 windows (6 HTTP calls to the backend)
T = 0.8


@pytest.fixture(scope="module")
def model_tok():
    return tiny_llama(), char_tokenizer()


def direct_sampled(model, tok, prompt: str, n: int, seed: int) -> list[int]:
    """The request's tokens (EOS excluded) from ONE window on the engine: T=0.8, ``seed``,
    the stream a seeded request uses (draws keyed by (seed, output position) only)."""
    from elis.serving.workers.hf import HFWindowEngine, SamplingParams, WindowItem

    eng = HFWindowEngine(model, tok)
    o = eng.generate(WindowItem("direct", tok(prompt)["input_ids"], (), n, max_tokens=n,
                                sampling_stream="seeded-request", sampling=SamplingParams(T, 1.0, seed)),
                     window_tokens=n)
    return o.new_token_ids[:-1] if o.finish_reason == "eos" else o.new_token_ids


def _front(backend_url: str, tok, *, policy="fcfs", predictor=None, max_batch_size=2, window_tokens=W,
           seed=0, slow_s: float = 0.0):
    """A runtime of ONE remote worker (``RemoteOpenAIWorker``) over ``backend_url``."""
    from elis.serving.load_balancer import RoundRobin
    from elis.serving.prediction import PredictionService
    from elis.serving.runtime import Runtime, build_schedulers
    from elis.serving.wallclock import LocalWorkerHandle
    from elis.serving.workers.remote import RemoteOpenAIWorker

    worker = RemoteOpenAIWorker(0, backend_url, "tiny", tok, max_context_tokens=10_000, sampling={"seed": seed})
    pred = None if predictor is None else PredictionService(predictor, None, latency_source="measured",
                                                            window_tokens=window_tokens)
    inner = worker if not slow_s else _Slow(worker, slow_s)
    scheds = build_schedulers({"policy": policy, "mode": "windowed"}, 1, max_batch_size, window_tokens, None,
                              pred, None, 10_000)
    return Runtime(scheds, RoundRobin(), [LocalWorkerHandle(inner)], pred, tok, 10_000), worker


class _Slow:
    """A worker that takes ``s`` seconds more per window (so a second request surely arrives
    while the first is still running); it keeps the inner worker's token listener."""

    def __init__(self, inner, s: float) -> None:
        self.inner, self.worker_id, self.s = inner, inner.worker_id, s

    def execute(self, batch, start_s):
        time.sleep(self.s)
        return self.inner.execute(batch, start_s)


def _ask(url: str, prompt: str, n: int, **extra) -> tuple[list[int], str]:
    """Streamed completion with ``return_token_ids``: (token ids, text)."""
    import httpx

    body = {"prompt": prompt, "max_tokens": n, "stream": True, "return_token_ids": True, **extra}
    ids, text = [], ""
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as r:
        assert r.status_code == 200, r.read()
        for ln in r.iter_lines():
            if ln.startswith("data: {"):
                ch = json.loads(ln[5:])["choices"]
                if ch:
                    ids += ch[0].get("token_ids") or []
                    text += ch[0]["text"]
    return ids, text


def test_seeded_sampling_is_one_stream_across_windows_backends_and_runs(model_tok):
    """T=0.8, seed 11: one window on the engine == in-process gateway (W=4) == front gateway
    (remote worker, W=4: 6 windows = 6 backend calls, each a new backend request id) ==
    the same again (a second identical run); another seed differs."""
    model, tok = model_tok
    prompt, n, seed = "beta gamma", 22, 11
    want = direct_sampled(model, tok, prompt, n, seed)
    assert len(want) == n  # no EOS: the answer crosses 5 front-window boundaries
    with Served(hf_runtime(model, tok, window_tokens=W)) as inproc:
        got_inproc = _ask(inproc.url, prompt, n, temperature=T, seed=seed)[0]
    with Served(hf_runtime(model, tok, max_batch_size=4, window_tokens=50)) as backend:
        runs = []
        for _ in range(2):
            rt, worker = _front(backend.url, tok)
            with Served(rt) as front:
                runs.append(_ask(front.url, prompt, n, temperature=T, seed=seed))
                other = _ask(front.url, prompt, n, temperature=T, seed=seed + 1)[0]
            assert worker.stats.num_http_requests == 2 * -(-n // W)  # 2 requests × 6 windows each
            worker.close()
    assert got_inproc == want
    assert runs[0][0] == want and runs[1][0] == want
    assert runs[0][1] == runs[1][1] == tok.decode(want, skip_special_tokens=True)
    assert other != want


def test_backend_continues_a_seeded_stream_at_elis_position_offset(model_tok):
    """A token-id prompt = prompt + the first 8 sampled tokens, ``elis_position_offset: 8``:
    the backend's draws continue the one-window stream (positions 8..); without the offset
    (positions restart at 0) they are a different stream."""
    model, tok = model_tok
    prompt, seed = "delta 123", 6
    want = direct_sampled(model, tok, prompt, 16, seed)
    assert len(want) == 16
    ids = tok(prompt)["input_ids"] + want[:8]
    with Served(hf_runtime(model, tok, window_tokens=50)) as backend:
        cont = _ask(backend.url, ids, 8, temperature=T, seed=seed, elis_position_offset=8)[0]
        restart = _ask(backend.url, ids, 8, temperature=T, seed=seed)[0]
        import httpx

        bad = httpx.post(backend.url + "/v1/completions", timeout=30,
                         json={"prompt": [5, 6, 7], "max_tokens": 2, "elis_position_offset": 4})
    assert cont == want[8:]
    assert restart != want[8:]
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "elis_position_offset"


def test_remote_worker_sends_one_seed_per_request_and_the_position():
    """``_body`` of window k: seed = the request's own seed, else one drawn from (worker seed,
    request id) that is the same in every window; ``elis_position_offset`` = tokens generated."""
    from elis.rng import make_rng
    from elis.serving.request import SamplingOptions
    from elis.serving.workers.base import WindowItem
    from elis.serving.workers.remote import RemoteOpenAIWorker

    w = RemoteOpenAIWorker(0, "http://127.0.0.1:9", "tiny", char_tokenizer(), max_context_tokens=100,
                           sampling={"seed": 3, "temperature": 0.5})
    try:
        own = WindowItem("r1", "p", [1, 7], [4, 5], 4, 4, 4, 30,
                         sampling=SamplingOptions(temperature=0.8, seed=42))
        b = w._body(own, 4)
        assert (b["seed"], b["temperature"], b["elis_position_offset"], b["prompt"]) == (42, 0.8, 2, [1, 7, 4, 5])
        derived = int(make_rng(3, "sampling/r1").integers(0, 2**31 - 1))
        for gen in ([], [4, 5, 6, 7]):
            it = WindowItem("r1", "p", [1, 7], gen, 4, 4, 4, 30)
            b = w._body(it, 4)
            assert (b["seed"], b["temperature"], b["elis_position_offset"]) == (derived, 0.5, len(gen))
        assert w._body(WindowItem("r2", "p", [1], [], 4, 4, 4, 30), 4)["seed"] != derived
    finally:
        w.close()


def test_isrtf_preempts_through_a_remote_worker_and_the_counter_shows_it(model_tok):
    """1 slot, ISRTF on prompt length (key = prompt tokens − generated, capped at max_tokens −
    generated): A (61-token prompt, 40 tokens) runs; B (2-token prompt, 8 tokens) arrives; at
    A's first boundary B's key 2 < A's min(61 − 4, 40 − 4) = 36 → A is preempted once, B runs to the end (A's key
    stays larger at B's boundary), A resumes exactly (its greedy tokens equal the engine's)."""
    from elis.predictor.simple import PromptLengthPredictor

    from test_gateway import reference

    model, tok = model_tok
    want_a = reference(model, tok, "x" * 60, 40)[1]
    want_b = reference(model, tok, "y", 8)[1]
    with Served(hf_runtime(model, tok, max_batch_size=4, window_tokens=50)) as backend:
        rt, worker = _front(backend.url, tok, policy="isrtf", predictor=PromptLengthPredictor(0.0, 1.0),
                            max_batch_size=1, window_tokens=4, slow_s=0.1)
        with Served(rt) as front:
            c = front.client()
            with cf.ThreadPoolExecutor(2) as ex:
                a = ex.submit(lambda: c.completions.create(model="tiny", prompt="x" * 60, max_tokens=40))
                _wait(lambda: _metric(front.url, "elis:num_requests_running") == 1)
                b = ex.submit(lambda: c.completions.create(model="tiny", prompt="y", max_tokens=8))
                got_a, got_b = a.result().choices[0].text, b.result().choices[0].text
            assert _metric(front.url, "elis:num_preemptions_total") == 1
        worker.close()
    assert (got_a, got_b) == (want_a, want_b)


def test_remote_worker_streams_each_backend_token_to_the_client_inside_a_window(model_tok):
    """W=50 > max_tokens: ONE window (one backend call), yet the client gets one SSE chunk per
    token, as the backend streams them (not the window's text at its end)."""
    from test_gateway import reference

    model, tok = model_tok
    ids, text = reference(model, tok, "beta gamma", 9)
    with Served(hf_runtime(model, tok, window_tokens=50)) as backend:
        rt, worker = _front(backend.url, tok, window_tokens=50)
        with Served(rt) as front:
            import httpx

            with httpx.stream("POST", front.url + "/v1/completions", timeout=30, json={
                    "prompt": "beta gamma", "max_tokens": 9, "stream": True, "return_token_ids": True}) as r:
                got = [json.loads(ln[5:]) for ln in r.iter_lines() if ln.startswith("data: {")]
        assert worker.stats.num_http_requests == 1
        worker.close()
    chunks = [c["choices"][0] for c in got if c["choices"] and c["choices"][0]["token_ids"]]
    assert [ch["token_ids"] for ch in chunks] == [[t] for t in ids]
    assert [ch["text"] for ch in chunks] == list(text)
