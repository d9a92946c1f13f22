"""Fixtures for backend tests: a tiny randomly initialised Llama (no download)."""

from __future__ import annotations

import pytest


def make_tiny_llama(seed: int = 0, vocab_size: int = 96):
    """A 2-layer, 32-wide Llama with random float32 weights (deterministic for ``seed``).

    ``initializer_range=0.2`` (HF default 0.02) makes the logits less flat, so greedy
    choices are not decided by float rounding.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=1, eos_token_id=2, pad_token_id=0, initializer_range=0.2,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="session")
def tiny_llama():
    import torch

    torch.set_num_threads(1)
    return make_tiny_llama()
