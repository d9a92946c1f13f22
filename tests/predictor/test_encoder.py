"""Pooling (mask use, padding side), truncation budget and encoder errors; tiny random BERT."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from elis.predictor.encoder import TextEncoder, pool, split_budget


def test_pool_cls_and_mean_use_the_mask():
    hidden = torch.tensor([[[1.0, 1.0], [3.0, 5.0], [9.0, 9.0]],     # right-padded: 2 real
                           [[9.0, 9.0], [2.0, 4.0], [4.0, 8.0]]])    # left-padded: 2 real
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]])
    assert pool(hidden, mask, "cls").tolist() == [[1.0, 1.0], [2.0, 4.0]]
    assert pool(hidden, mask, "mean").tolist() == [[2.0, 3.0], [3.0, 6.0]]
    with pytest.raises(ValueError, match="no real token"):
        pool(hidden, torch.zeros(2, 3, dtype=torch.long), "mean")
    with pytest.raises(ValueError, match="pooling='max'"):
        pool(hidden, mask, "max")


@pytest.mark.parametrize(
    ("n_prompt", "n_resp", "budget", "expected"),
    [(10, 10, 30, (10, 10)), (100, 100, 30, (15, 15)), (5, 100, 30, (5, 25)),
     (100, 5, 30, (25, 5)), (100, 0, 30, (30, 0))],
)
def test_split_budget(n_prompt, n_resp, budget, expected):
    assert split_budget(n_prompt, n_resp, budget, 0.5) == expected


def _encoder(tiny_bert, tok, **kw) -> TextEncoder:
    return TextEncoder("tiny-bert", model=tiny_bert, tokenizer=tok, **kw)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_embedding_independent_of_padding_side_and_batch(tiny_bert, minilm_tokenizer, pooling):
    import copy

    prompts = ["short", "a much longer prompt " * 8, "middle sized prompt here"]
    responses = ["", "some answer " * 5, "x"]
    right = _encoder(tiny_bert, minilm_tokenizer, pooling=pooling, max_length=64, batch_size=3)
    left_tok = copy.deepcopy(minilm_tokenizer)
    left_tok.padding_side = "left"
    left = _encoder(tiny_bert, left_tok, pooling=pooling, max_length=64, batch_size=3)
    a = right.encode(prompts, responses)
    b = left.encode(prompts, responses)
    alone = np.vstack([right.encode([p], [r]) for p, r in zip(prompts, responses)])
    assert a.shape == (3, 32)
    np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(a, alone, atol=1e-5)


def test_truncation_keeps_prompt_start_and_response_end(tiny_bert, minilm_tokenizer):
    enc = _encoder(tiny_bert, minilm_tokenizer, max_length=16, prompt_budget_fraction=0.5)
    prompt = " ".join(f"p{i}" for i in range(40))
    response = " ".join(str(i) for i in range(100, 140))
    (ids,) = enc.token_ids([prompt], [response])
    text = minilm_tokenizer.decode(ids)
    assert len(ids) == 16
    assert text.startswith("[CLS] p0") and text.endswith("139 [SEP]")
    assert "response so far" in text  # the separator survives truncation
    assert enc.stats.num_truncated == 1
    enc.token_ids(["short"], [""])
    assert enc.stats.num_truncated == 1  # fits: not counted


def test_empty_and_long_inputs_are_finite(tiny_bert, minilm_tokenizer):
    enc = _encoder(tiny_bert, minilm_tokenizer, max_length=64)
    out = enc.encode(["", "word " * 3000], ["", "more " * 3000])
    assert out.shape == (2, 32) and np.all(np.isfinite(out))
    assert enc.encode([], []).shape == (0, 32)


def test_bad_settings_name_the_field(tiny_bert, minilm_tokenizer):
    with pytest.raises(ValueError, match="encoder.pooling='max'"):
        _encoder(tiny_bert, minilm_tokenizer, pooling="max")
    with pytest.raises(ValueError, match="encoder.max_length"):
        _encoder(tiny_bert, minilm_tokenizer, max_length=4096)
    with pytest.raises(ValueError, match="encoder.backend"):
        _encoder(tiny_bert, minilm_tokenizer, backend="fp8")


def test_offline_hub_failure_names_the_offline_config(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from elis.cli import UserError

    with pytest.raises(UserError, match="predictor.encoder.model_name='BAAI/bge-nonexistent-test-model'.*"
                                        "local.*predictor=minilm"):
        TextEncoder("BAAI/bge-nonexistent-test-model")


def _tiny(family: str):
    """A random 1-layer encoder of ``family`` with pad_token_id=1 and 40 positions."""
    import torch
    from transformers import (BertConfig, BertModel, MPNetConfig, MPNetModel, RobertaConfig,
                              RobertaModel, XLMRobertaConfig, XLMRobertaModel)

    cls = {"bert": (BertConfig, BertModel), "roberta": (RobertaConfig, RobertaModel),
           "mpnet": (MPNetConfig, MPNetModel), "xlm-roberta": (XLMRobertaConfig, XLMRobertaModel)}
    config_cls, model_cls = cls[family]
    torch.manual_seed(0)
    cfg = config_cls(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=40, pad_token_id=1)
    return model_cls(cfg).eval()


@pytest.mark.parametrize(("family", "usable"), [("bert", 40), ("roberta", 38), ("mpnet", 38),
                                                 ("xlm-roberta", 38)])
@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_embedding_equals_the_models_own_forward_pass(family, usable, pooling, minilm_tokenizer):
    """Positions start after padding_idx in RoBERTa/MPNet/XLM-R: still the model's own vectors."""
    import torch

    model = _tiny(family)
    enc = TextEncoder(family, model=model, tokenizer=minilm_tokenizer, pooling=pooling,
                      max_length=usable, batch_size=3)
    texts = ["a short one", "a much longer prompt " * 12, "middle sized text"]
    got = enc.encode(texts, ["", "", ""])  # batched with neighbours of other lengths
    assert enc.stats.num_truncated == 1  # the long text was cut to the usable positions
    for i, ids in enumerate(enc.token_ids(texts, ["", "", ""])):
        with torch.inference_mode():
            hidden = model(input_ids=torch.tensor([ids])).last_hidden_state[0]  # (T, D) unpadded
        want = (hidden[0] if pooling == "cls" else hidden.mean(dim=0)).numpy()
        cos = float(got[i] @ want / np.linalg.norm(got[i]) / np.linalg.norm(want))
        assert cos == pytest.approx(1.0, abs=1e-6)
        np.testing.assert_allclose(got[i], want, atol=1e-5)
    # One position more than the model can use is refused, naming the field and the limit.
    with pytest.raises(ValueError, match=rf"encoder.max_length must be in \[8, {usable}\]"):
        TextEncoder(family, model=model, tokenizer=minilm_tokenizer, max_length=usable + 1)
