"""LearnedPredictor's interface edge cases, on a tiny random BERT and an untrained head."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from elis.predictor.base import LengthPredictor, PredictionQuery
from elis.predictor.cache import EmbeddingCache
from elis.predictor.encoder import TextEncoder
from elis.predictor.learned import LearnedPredictor
from elis.predictor.module import LengthRegressor


@pytest.fixture
def predictor(tiny_bert, minilm_tokenizer, tmp_path) -> LearnedPredictor:
    torch.manual_seed(0)
    module = LengthRegressor(
        head={"input_dim": 32, "num_hidden_layers": 2, "hidden_dim": 16,
              "num_generators": 3, "use_step_feature": True},
        generators=["<unknown>", "gen-a", "gen-b"],
    )
    enc = TextEncoder("tiny-bert", model=tiny_bert, tokenizer=minilm_tokenizer, max_length=64)
    return LearnedPredictor(module, EmbeddingCache(enc, tmp_path))


def test_is_a_length_predictor_and_empty_batch(predictor):
    assert isinstance(predictor, LengthPredictor)
    out = predictor.predict_remaining([])
    assert out.shape == (0,) and out.dtype == np.float64
    assert predictor.latency.num_calls == 1


def test_empty_prompt_and_3000_token_input_are_finite(predictor):
    qs = [PredictionQuery(""), PredictionQuery("word " * 3000, "more " * 3000, 3000)]
    out = predictor.predict_remaining(qs)
    assert out.shape == (2,) and np.all(np.isfinite(out)) and np.all(out >= 0)


def test_batch_composition_does_not_change_a_prediction(predictor):
    q = PredictionQuery("What is 2+2?", "It is", 50, generator="gen-a")
    others = [PredictionQuery("long prompt " * 40, "answer " * 30, 100, generator="gen-b"),
              PredictionQuery("x", "", 0, generator="never-seen")]
    alone = predictor.predict_remaining([q])[0]
    mixed = predictor.predict_remaining([others[0], q, others[1]])[1]
    assert alone == pytest.approx(mixed, rel=1e-5)
    assert predictor.latency.num_queries == 4 and predictor.latency.last_ms > 0


def test_missing_checkpoint_names_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="python train.py predictor=minilm data=x"):
        LearnedPredictor.from_checkpoint(str(tmp_path / "nope"),
                                         train_command="python train.py predictor=minilm data=x")


def test_stats_report_truncation(predictor):
    from elis.predictor.simple import OraclePredictor
    from elis.serving.prediction import predictor_stats

    predictor.predict_remaining([PredictionQuery("short"), PredictionQuery("word " * 3000, "", 0)])
    emb = predictor_stats(predictor)["embedding"]
    assert (emb["num_texts"], emb["num_truncated"], emb["cache_computed"]) == (2, 1, 2)
    assert predictor_stats(OraclePredictor()) == {}
    assert predictor_stats(None) == {}
