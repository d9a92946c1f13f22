"""predictor=gbdt: residual life, structural features, generator statistics, progress tracking,
quantiles, save/load, online calibration, and train.py end to end on the tiny dataset."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import hydra
import numpy as np
import pandas as pd
import pytest
from conftest import train_overrides, write_tiny_dataset

from elis.predictor.base import LengthPredictor, PredictionQuery
from elis.predictor.gbdt import GbdtLengthModel, GbdtPredictor, GeneratorStats, lognormal_residual_life
from elis.predictor.gbdt_train import fit_gbdt, progress_slopes, queries_of
from elis.predictor.structural import STRUCTURAL_FEATURES, prompt_max_number, structural_features


def test_lognormal_residual_life_hand_computed():
    # mu=0, sigma=1: E[L] = e^0.5 = 1.64872; g=1: E[L|L>1] = e^0.5·Φ(1)/Φ(0) = 2.77423 → 1.77423
    rl, surv = lognormal_residual_life(np.array([0.0, 0.0]), np.array([1.0, 1.0]), np.array([0.0, 1.0]))
    assert rl[0] == pytest.approx(math.exp(0.5), rel=1e-9)
    assert rl[1] == pytest.approx(math.exp(0.5) * 0.8413447460685429 / 0.5 - 1.0, rel=1e-9)
    assert surv.tolist() == pytest.approx([1.0, 0.5])
    # Almost no spread: L ≈ 100, so after 60 tokens ≈ 40 remain.
    rl, _ = lognormal_residual_life(np.log(100.0), 0.01, 60.0)
    assert float(rl) == pytest.approx(40.0, rel=1e-2)


def test_structural_features_hand_computed():
    text = "Here are some tips:\n\n1. Sleep well.\n2. Eat fruit!\n```py\nx = 1"
    f = dict(zip(STRUCTURAL_FEATURES, structural_features([text], ["Give me 5 tips"])[0]))
    assert f["num_numbered_items"] == 2 and f["last_item_number"] == 2
    assert f["num_paragraphs"] == 2 and f["num_lines"] == 6
    assert f["num_code_fences"] == 1 and f["in_code_block"] == 1
    assert f["prompt_max_number"] == 5 and f["items_left"] == 3
    assert f["num_sentences"] == 2  # "well." and "fruit!"; "tips:" is not a sentence end
    assert f["last_line_chars"] == 5 and f["ends_mid_word"] == 1 and f["last_line_ends_sentence"] == 0
    g = dict(zip(STRUCTURAL_FEATURES, structural_features(["I hope this helps."], None)[0]))
    assert g["has_closing_phrase"] == 1 and g["last_line_ends_sentence"] == 1 and g["prompt_max_number"] == 0
    empty = structural_features([""], [""])
    assert empty.shape == (1, len(STRUCTURAL_FEATURES)) and not empty.any()
    assert prompt_max_number("List ten ideas in 3 groups") == 10
    with pytest.raises(ValueError, match="2 texts but 1 prompts"):
        structural_features(["a", "b"], ["p"])


def test_generator_stats_mean_and_sample_std():
    s = GeneratorStats()
    for x in (1.0, 2.0, 4.0):
        s.add(x)
    assert s.mu == pytest.approx(7 / 3) and s.sigma == pytest.approx(math.sqrt(7 / 3))
    assert math.isnan(GeneratorStats().mu)


# ----------------------------------------------------------------------------- synthetic data
WORDS = ["alpha", "beta", "gamma", "delta", "omega", "kappa"]


def _tokens(text: str) -> list[str]:
    return re.findall(r"\S+\s*", text)


def regular_frame(num_prompts: int, offset: int, window: int = 10, steps: int = 8) -> pd.DataFrame:
    """List answers: the prompt asks for N items; each generator writes items of a fixed size."""
    rows = []
    for i in range(offset, offset + num_prompts):
        n_items = 3 + (i * 7) % 10
        prompt = f"List {n_items} facts about {WORDS[i % 6]} {WORDS[(i // 6) % 6]} number {i + 200}"
        for gen, words_per_item in (("short", 5), ("long", 11)):
            body = "".join(f"{j}. " + " ".join([WORDS[(i + j) % 6]] * words_per_item) + ".\n"
                           for j in range(1, n_items + 1))
            toks = _tokens(body)
            length = len(toks)
            for k in range(steps):
                if k * window >= length:
                    break
                rows.append({"prompt_id": str(i), "prompt": prompt, "generator": gen,
                             "partial_response": "".join(toks[: k * window]), "step": k,
                             "num_generated_tokens": k * window, "num_output_tokens": length,
                             "num_remaining_tokens": length - k * window})
    return pd.DataFrame(rows)


def hashed_embedding(prompts: list[str]) -> np.ndarray:
    from sklearn.feature_extraction.text import HashingVectorizer

    return HashingVectorizer(n_features=64, alternate_sign=False).transform(prompts).toarray()


@pytest.fixture(scope="module")
def regular_model():
    train, val = regular_frame(160, 0), regular_frame(30, 1000)
    model, info = fit_gbdt(train, val, hashed_embedding, num_pca=4, min_answers=5, window_tokens=10,
                           num_boost_round=150, early_stopping_rounds=30, num_threads=1,
                           params={"min_data_in_leaf": 10, "num_leaves": 15, "learning_rate": 0.1})
    return model, info


def test_prediction_tracks_progress_on_regular_answers(regular_model):
    """The issue's failing input: predicted remaining must fall ~1 token per generated token.

    A predictor that does not read progress (a constant per answer, like a head that barely
    shrinks) has slope 0 and fails the same bound.
    """
    model, _ = regular_model
    test = regular_frame(40, 2000)
    pred = GbdtPredictor(model, hashed_embedding).predict_remaining(queries_of(test))
    slopes = progress_slopes(test, pred)
    assert len(slopes) == 80
    assert -1.2 <= float(np.median(slopes)) <= -0.8
    truth = progress_slopes(test, test["num_remaining_tokens"].to_numpy(float))
    assert np.allclose(truth, -1.0)
    frozen = test.groupby(["prompt_id", "generator"])["num_output_tokens"].transform("first").to_numpy(float)
    assert np.allclose(progress_slopes(test, frozen), 0.0)
    # and the prediction is accurate, not just sloped: R² well above the per-step mean's ~0
    y = test["num_remaining_tokens"].to_numpy(float)
    assert 1 - np.sum((y - pred) ** 2) / np.sum((y - y.mean()) ** 2) > 0.8


def test_quantiles_are_ordered_and_cover(regular_model):
    model, _ = regular_model
    test = regular_frame(40, 2000)
    pred = GbdtPredictor(model, hashed_embedding)
    assert isinstance(pred, LengthPredictor)
    q = pred.predict_quantiles(queries_of(test), [0.1, 0.5, 0.9])
    assert q.shape == (len(test), 3) and np.all(np.diff(q, axis=1) >= 0) and np.all(q >= 1)
    y = test["num_remaining_tokens"].to_numpy(float)
    assert np.mean(y <= q[:, 2]) > np.mean(y <= q[:, 0])
    with pytest.raises(ValueError, match="levels must"):
        pred.predict_quantiles(queries_of(test.head(2)), [0.0, 0.5])


def test_save_load_roundtrip_identical(regular_model, tmp_path):
    model, _ = regular_model
    test = regular_frame(10, 3000)
    model.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "meta.json").read_text())
    assert meta["feature_names"]["aware"][:2] == ["num_generated_tokens", "log_residual_life"]
    a = GbdtPredictor(model, hashed_embedding).predict_remaining(queries_of(test))
    b = GbdtPredictor(GbdtLengthModel.load(tmp_path / "m"), hashed_embedding).predict_remaining(queries_of(test))
    np.testing.assert_array_equal(a, b)
    with pytest.raises(FileNotFoundError, match="python train.py predictor=gbdt"):
        GbdtPredictor.from_dir(str(tmp_path / "nope"), train_command="python train.py predictor=gbdt")


def test_unseen_generator_agnostic_until_calibrated(regular_model):
    """A new model uses the agnostic booster until min_answers (5) finished answers exist."""
    model, _ = regular_model
    pred = GbdtPredictor(model, hashed_embedding)
    assert pred.generator_is_known("long") and not pred.generator_is_known("brand-new")
    q = [PredictionQuery("List 9 facts about beta beta number 7", "", 0, generator="brand-new")]
    agnostic = pred.predict_remaining(q)
    test = regular_frame(6, 4000)
    answers = test[(test["step"] == 0) & (test["generator"] == "long")]
    for p, n in zip(answers["prompt"], answers["num_output_tokens"]):
        pred.observe_finished(p, "brand-new", int(n))
        pred.observe_finished(p, None, int(n))  # no generator: ignored
    assert pred.generators["brand-new"].num_answers == 6 and pred.generator_is_known("brand-new")
    np.testing.assert_allclose(pred.predict_remaining(q),
                               pred.predict_remaining([PredictionQuery(q[0].prompt, "", 0, generator="long")]),
                               rtol=0.1)
    assert pred.predict_remaining(q)[0] != agnostic[0]
    # prediction of one query does not depend on its batch neighbours
    both = pred.predict_remaining(q + queries_of(test.head(3)))
    assert both[0] == pred.predict_remaining(q)[0]


def test_fit_refuses_val_generators_missing_from_train():
    with pytest.raises(ValueError, match="not in train"):
        fit_gbdt(regular_frame(5, 0).query("generator == 'short'"), regular_frame(5, 10), hashed_embedding)


# ----------------------------------------------------------------------------- train.py
def test_train_py_gbdt_end_to_end(compose_cfg, tmp_path, tiny_bert_dir):
    from elis.predictor.train import run

    write_tiny_dataset(tmp_path / "data", num_prompts=30)
    over = [o for o in train_overrides(tiny_bert_dir) if not o.startswith(("predictor.head", "trainer", "callbacks"))]
    small = ["predictor.gbdt.num_boost_round=20", "predictor.gbdt.params.min_data_in_leaf=5",
             "predictor.gbdt.min_answers=3", "eval.calibration_answers=4"]
    cfg = compose_cfg("train", ["predictor=gbdt", *over, *small, "subset.ood_generators=[gen-b]"])
    m = run(cfg)
    model_dir = Path(cfg.model_dir)
    assert (model_dir / "meta.json").is_file() and (model_dir / "metrics.json").is_file()
    test = m["eval"]["test"]
    assert test["raw"]["overall"]["n"] == m["subset"]["rows"]["test"] > 0
    assert set(test) >= {"raw", "capped", "progress_slope_median", "quantile_coverage"}
    held = m["eval"]["heldout"]
    assert held["calibration_answers"] == {"gen-b": 4}
    assert held["calibrated"]["raw"]["overall"]["n"] > 0
    assert m["cpu_s"] > 0 and "| gbdt (test) |" in (model_dir / "summary.md").read_text()
    pred = hydra.utils.instantiate(cfg.predictor.runtime)
    assert isinstance(pred, GbdtPredictor)
    out = pred.predict_remaining([PredictionQuery("Question 1: explain", "w1 w2", 50, generator="gen-a")])
    assert out.shape == (1,) and np.isfinite(out).all()
    # Its encoder counters reach metrics.json of every run that predicts (num_truncated...).
    from elis.serving.prediction import predictor_stats

    emb = predictor_stats(pred)["embedding"]
    assert emb["num_texts"] + emb["cache_hits"] == 1 and emb["num_truncated"] == 0
    ev = run(compose_cfg("train", ["predictor=gbdt", *over, *small, "train=false",
                                   "subset.ood_generators=[gen-b]"]))
    assert ev["eval"]["test"]["raw"]["overall"]["mae"] == pytest.approx(test["raw"]["overall"]["mae"])


def test_extra_generators_dir_calibrates_and_scores(compose_cfg, tmp_path, tiny_bert_dir):
    """eval.extra_generators_dir: an alpaca_eval-layout folder of a new generator is built with the
    label tokenizer, calibrated on its train-split prompts and scored on its test-split prompts."""
    import gzip

    from elis.data.splits import split_of_prompt
    from elis.predictor.train import run

    write_tiny_dataset(tmp_path / "data", num_prompts=30)
    over = [o for o in train_overrides(tiny_bert_dir) if not o.startswith(("predictor.head", "trainer", "callbacks"))]
    small = ["predictor.gbdt.num_boost_round=10", "predictor.gbdt.params.min_data_in_leaf=5",
             "predictor.gbdt.min_answers=3", "eval.calibration_answers=3",
             f"data.label_tokenizer.name_or_path={tiny_bert_dir}", "data.label_tokenizer.gguf_package=null"]
    run(compose_cfg("train", ["predictor=gbdt", *over, *small]))
    extra = tmp_path / "extra" / "model_outputs"
    extra.mkdir(parents=True)
    prompts = [f"Question {i}: explain topic {i}" for i in range(80)]
    rows = [{"generator": "gen-new", "instruction_id": i, "dataset": "koala", "instruction": p,
             "output": " ".join(["word"] * (20 + 7 * (i % 11)))} for i, p in enumerate(prompts)]
    with gzip.open(extra / "gen-new.jsonl.gz", "wt") as f:
        f.write("\n".join(json.dumps(r) for r in rows) + "\n")
    ev = run(compose_cfg("train", ["predictor=gbdt", *over, *small, "train=false",
                                   f"eval.extra_generators_dir={tmp_path / 'extra'}"]))
    res = ev["eval"]["extra_generators"]
    assert res["calibration_answers"] == {"gen-new": 3}
    fractions = {"train": 0.8, "val": 0.1, "test": 0.1}
    num_test = sum(split_of_prompt(p, fractions) == "test" for p in prompts)
    assert res["calibrated"]["num_answers"] == num_test > 0
    with pytest.raises(FileNotFoundError, match="model_outputs"):
        run(compose_cfg("train", ["predictor=gbdt", *over, *small, "train=false",
                                  f"eval.extra_generators_dir={tmp_path / 'nope'}"]))
