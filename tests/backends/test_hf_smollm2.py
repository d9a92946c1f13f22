"""SmolLM2-135M-Instruct (offline GGUF) end to end: chat template, resume and batching.

Slow (~1 min on a shared CPU): `pytest -m slow tests/backends/test_hf_smollm2.py`.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow

PROMPTS = ["What is the capital of Canada?", "Write a haiku about autumn.", ""]


@pytest.fixture(scope="module")
def smollm2():
    from elis.config import PROJECT_ROOT
    from elis.serving.workers.hf import load_causal_lm

    return load_causal_lm(cache_dir=PROJECT_ROOT / "cache")


def test_greedy_resume_and_batch_equal_uninterrupted(smollm2):
    from elis.serving.workers.hf import HFWindowEngine, WindowItem, encode_prompt

    model, tok = smollm2
    eng = HFWindowEngine(model, tok)
    assert eng.eos_token_ids == (tok.convert_tokens_to_ids("<|im_end|>"),)
    ids = [encode_prompt(tok, p) for p in PROMPTS]
    assert tok.decode(ids[0]).endswith("<|im_start|>assistant\n")  # chat template applied
    full = [eng.run_window([WindowItem(str(i), p, (), 60)])[0] for i, p in enumerate(ids)]
    assert "Ottawa" in full[0].text
    batched = eng.run_window([WindowItem(str(i), p, (), 60) for i, p in enumerate(ids)])
    assert [o.new_token_ids for o in batched] == [o.new_token_ids for o in full]
    for i, p in enumerate(ids):  # windows of 7 tokens, each next to a different partner
        gen: list[int] = []
        while True:
            n = min(7, len(full[i].new_token_ids) - len(gen))
            items = [WindowItem(str(i), p, tuple(gen), n), WindowItem("x", ids[(i + len(gen)) % 3], (), 3)]
            o = eng.run_window(items)[0]
            gen += o.new_token_ids
            if o.finished or len(gen) >= len(full[i].new_token_ids):
                break
        assert gen == full[i].new_token_ids
