"""Embedding cache: a second call (same object or a new one on the same folder) computes nothing."""

from __future__ import annotations

import numpy as np

from elis.predictor.cache import EmbeddingCache
from elis.predictor.encoder import TextEncoder


def test_cache_reuse_across_calls_and_objects(tmp_path, tiny_bert, minilm_tokenizer):
    enc = TextEncoder("tiny-bert", model=tiny_bert, tokenizer=minilm_tokenizer, max_length=32)
    cache = EmbeddingCache(enc, tmp_path)
    prompts, responses = ["a", "b", "a"], ["", "x y", ""]
    first = cache.embed(prompts, responses)
    assert cache.num_computed == 2 and enc.stats.num_texts == 2  # the duplicate is embedded once
    second = cache.embed(prompts, responses)
    assert cache.num_computed == 2 and enc.stats.num_texts == 2
    np.testing.assert_array_equal(first, second)

    reopened = EmbeddingCache(enc, tmp_path)
    third = reopened.embed(["b"], ["x y"])
    assert reopened.num_computed == 0 and reopened.num_hits == 1
    np.testing.assert_array_equal(third[0], first[1])
    assert len(list((tmp_path / "embeddings" / enc.cache_key).glob("shard-*.npz"))) == 1


def test_cache_namespace_depends_on_settings(tiny_bert, minilm_tokenizer):
    a = TextEncoder("m", model=tiny_bert, tokenizer=minilm_tokenizer, max_length=32)
    b = TextEncoder("m", model=tiny_bert, tokenizer=minilm_tokenizer, max_length=64)
    c = TextEncoder("m", model=tiny_bert, tokenizer=minilm_tokenizer, max_length=32, pooling="mean")
    assert len({a.cache_key, b.cache_key, c.cache_key}) == 3
