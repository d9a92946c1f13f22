"""train.py end to end on a tiny dataset + tiny BERT: files, determinism, evaluation, errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import hydra
import numpy as np
import pytest
from hydra.errors import InstantiationException
from conftest import train_overrides, write_tiny_dataset

from elis.predictor.base import LengthPredictor, PredictionQuery
from elis.predictor.train import run


def _cfg(compose_cfg, tmp_path, tiny_bert_dir, *extra):
    if not (tmp_path / "data" / "tiny").exists():
        write_tiny_dataset(tmp_path / "data")
    return compose_cfg("train", train_overrides(tiny_bert_dir, *extra))


def test_train_end_to_end_writes_metrics_checkpoint_and_plots(compose_cfg, tmp_path, tiny_bert_dir):
    cfg = _cfg(compose_cfg, tmp_path, tiny_bert_dir, "subset.ood_generators=[gen-b]",
               "ablations.iterative=true", "ablations.generator_conditioning=true")
    m = run(cfg)
    model_dir = Path(cfg.model_dir)
    assert (model_dir / "best.ckpt").is_file() and (model_dir / "metrics.json").is_file()
    on_disk = json.loads((model_dir / "metrics.json").read_text())
    assert on_disk["eval"]["test"]["overall"]["n"] == m["subset"]["rows"]["test"] > 0
    assert m["subset"]["rows"]["test_ood"] > 0 and set(m["eval"]) == {"test", "test_ood"}
    assert m["subset"]["generators_per_split"]["train"] == 1  # gen-b held out
    assert set(m["baselines"]["test"]) == {"mean_per_step", "median_per_step",
                                           "prompt_length_linear", "ridge_embedding", "mlp_head"}
    assert "step0_model_countdown" in m["ablation_iterative"]["test"]
    assert m["ablation_generator_conditioning"]["fit"]["epochs"] >= 1
    # every row is embedded once or served from the cache (duplicate texts across generators)
    emb = m["embedding"]
    assert emb["num_texts"] + emb["cache_hits"] == sum(m["subset"]["rows"].values())
    # Answers of up to 406 words at max_length=64: the truncation count is reported.
    assert 0 < on_disk["embedding"]["num_truncated"] <= emb["num_texts"]
    assert (model_dir / "plots" / "test_mae_per_step.png").is_file()
    assert "| step |" in (model_dir / "per_step.md").read_text()

    # The serving side: the runtime node builds a LengthPredictor from this checkpoint.
    pred = hydra.utils.instantiate(cfg.predictor.runtime)
    assert isinstance(pred, LengthPredictor)
    out = pred.predict_remaining([PredictionQuery("Question 1: explain", "", 0)])
    assert out.shape == (1,) and np.isfinite(out).all()

    # A run that predicts with it records the encoder's counters (num_truncated) too.
    from elis.experiments.run import run as run_experiment

    rcfg = compose_cfg("run_experiment", ["data.name=tiny", "predictor=minilm", "num_requests=6",
                                          "plots=false", "workload.rate_rps=2.0", "max_tokens=400"])
    run_experiment(rcfg)
    served = json.loads((Path(rcfg.paths.output_dir) / "metrics.json").read_text())["embedding"]
    assert 0 < served["num_truncated"] <= served["num_texts"]
    assert served["cache_key"] == emb["cache_key"]

    # Evaluate the saved checkpoint without training (train=false).
    ev = run(compose_cfg("train", train_overrides(tiny_bert_dir, "train=false",
                                                  "subset.ood_generators=[gen-b]")))
    assert ev["task"] == "evaluate"
    assert ev["eval"]["test"]["overall"]["mae"] == pytest.approx(m["eval"]["test"]["overall"]["mae"])


def test_same_seed_same_metrics(compose_cfg, tmp_path, tiny_bert_dir):
    a = run(_cfg(compose_cfg, tmp_path, tiny_bert_dir, "trainer.max_epochs=2"))
    b = run(_cfg(compose_cfg, tmp_path, tiny_bert_dir, "trainer.max_epochs=2"))
    for key in ("mae", "rmse", "r2"):
        x, y = a["eval"]["test"]["overall"][key], b["eval"]["test"]["overall"][key]
        assert x == y or (math.isnan(x) and math.isnan(y))


def test_errors_name_the_fix(compose_cfg, tmp_path, tiny_bert_dir):
    with pytest.raises(ValueError, match="not trainable"):
        run(compose_cfg("train", ["predictor=oracle"]))
    with pytest.raises(FileNotFoundError, match="python build_dataset.py data=missing"):
        run(compose_cfg("train", train_overrides(tiny_bert_dir, "data.name=missing")))
    with pytest.raises(ValueError, match="nope"):
        run(_cfg(compose_cfg, tmp_path, tiny_bert_dir, "subset.generators=[nope]"))
    with pytest.raises(FileNotFoundError, match="python train.py predictor=minilm data=tiny"):
        run(_cfg(compose_cfg, tmp_path, tiny_bert_dir, "train=false"))


@pytest.mark.parametrize("name", ["oracle", "noisy_oracle", "constant", "prompt_length",
                                  "minilm", "bge", "bge_large", "gbdt"])
def test_every_predictor_config_composes(compose_cfg, name):
    cfg = compose_cfg("train", [f"predictor={name}"])
    assert cfg.predictor.name == name and "runtime" in cfg.predictor
    if not cfg.predictor.trainable:
        pred = hydra.utils.instantiate(cfg.predictor.runtime)
        assert isinstance(pred, LengthPredictor)
    else:
        # Hydra wraps the FileNotFoundError; its message names the path and the command.
        with pytest.raises(InstantiationException, match=f"python train.py predictor={name}"):
            hydra.utils.instantiate(cfg.predictor.runtime)


@pytest.mark.parametrize("group", ["trainer=gpu", "logger=wandb"])
def test_other_groups_compose(compose_cfg, group):
    cfg = compose_cfg("train", [group])
    assert cfg.trainer._target_ == "lightning.Trainer"
