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


def test_cache_key_identifies_the_weights_not_the_folder(tmp_path, minilm_tokenizer):
    """Weights replaced in the same folder: the new model's vectors, none from the old cache."""
    import torch
    from transformers import BertConfig, BertModel

    folder = tmp_path / "model"
    cfg = BertConfig(vocab_size=minilm_tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1,
                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    minilm_tokenizer.save_pretrained(str(folder))
    vectors = []
    for seed in (0, 1):  # same architecture and file size, other weights
        torch.manual_seed(seed)
        BertModel(cfg).save_pretrained(str(folder))
        enc = TextEncoder(str(folder), max_length=32)
        cache = EmbeddingCache(enc, tmp_path / "cache")
        vectors.append(cache.embed(["a", "b"], ["", "x"]))
        assert (cache.num_hits, cache.num_computed) == (0, 2)
        np.testing.assert_array_equal(vectors[-1], enc.encode(["a", "b"], ["", "x"]))
    assert np.abs(vectors[0] - vectors[1]).max() > 1e-3
    # Same weights again (a fresh load of the second model): served from the cache.
    again = EmbeddingCache(TextEncoder(str(folder), max_length=32), tmp_path / "cache")
    np.testing.assert_array_equal(again.embed(["a", "b"], ["", "x"]), vectors[1])
    assert (again.num_hits, again.num_computed) == (2, 0)
    # The truncation budget and pooling are in the key as well.
    keys = {TextEncoder(str(folder), max_length=32, prompt_budget_fraction=f, pooling=p).cache_key
            for f in (0.5, 0.8) for p in ("cls", "mean")}
    assert len(keys) == 4
