"""The real SmolLM2-135M-Instruct (offline GGUF) behind the gateway, through the openai client.

Slow (model load + ~150 generated tokens on a shared CPU): ``pytest -m slow tests/serving/test_gateway_smollm2.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
sys.path.insert(0, str(Path(__file__).parent))
from gateway_factories import ServerThread  # noqa: E402


def test_smollm2_chat_stream_equals_the_engine_and_stops(compose_cfg):
    import openai

    from elis.config import PROJECT_ROOT
    from elis.serving.gateway import build_gateway, gateway_config
    from elis.serving.runtime import _HANDLES, SCHED_KEYS, build_runtime
    from elis.serving.workers.hf import HFWindowEngine, WindowItem, encode_prompt

    cfg = compose_cfg("serve", [f"paths.cache_dir={PROJECT_ROOT / 'cache'}", "window_tokens=16",
                                "max_batch_size=2"])
    sched = {k: v for k, v in cfg.sched.items() if k in SCHED_KEYS}
    rt = build_runtime(cfg, sched, None, None)
    assert rt.max_context_tokens == 8192
    gw, app = build_gateway(rt, gateway_config(cfg, rt))
    q = "What is the capital of Canada?"
    try:
        with ServerThread(app) as s:
            c = openai.OpenAI(base_url=s.url + "/v1", api_key="none", max_retries=0, timeout=300)
            chunks = list(c.chat.completions.create(
                model=gw.config.model_name, messages=[{"role": "user", "content": q}], max_tokens=60,
                temperature=0, stream=True, stream_options={"include_usage": True}))
            text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
            usage = [ch.usage for ch in chunks if ch.usage is not None]
            # stop at the first word that straddles or follows the 16-token window boundary
            word = text.split()[len(text.split()) // 2]
            stopped = c.chat.completions.create(model=gw.config.model_name, messages=[{"role": "user", "content": q}],
                                                max_tokens=60, temperature=0, stop=[word])
    finally:
        gw.loop.close()
        _HANDLES.clear()
    tok = rt.tokenizer
    eng = HFWindowEngine(rt.handles[0].worker.engine.model, tok)
    ref = eng.generate(WindowItem("ref", encode_prompt(tok, q), (), 60, max_tokens=60), window_tokens=60)
    ids = ref.new_token_ids[:-1] if ref.finish_reason == "eos" else ref.new_token_ids
    assert text == tok.decode(ids, skip_special_tokens=True)
    assert "Ottawa" in text
    assert len(usage) == 1 and usage[0].completion_tokens == len(ids)
    assert usage[0].prompt_tokens == len(encode_prompt(tok, q))
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].message.content == text[: text.index(word)]
