"""``python train.py``: embed → fit the MLP head → test → metrics, tables, plots, checkpoint.

Composition root of the predictor (``run(cfg) -> dict``). Steps:

1. load the iterative dataset ``${paths.data_dir}/${data.name}/iterative`` and apply the
   documented subset (``cfg.subset``: generators, held-out generators, prompt caps, steps),
   recorded in ``metrics.json``;
2. embed every row once through the frozen encoder and the on-disk ``EmbeddingCache``
   (throughput and time are measured and reported);
3. fit ``LengthRegressor`` with Lightning (checkpoint on ``val/mae``, early stopping);
4. score the best checkpoint on ``cfg.eval_splits`` (+ ``test_ood`` when present) next to the
   baselines, optional ablations (``cfg.ablations``: iterative step-0-only training, generator
   conditioning), and write ``metrics.json``, ``per_step.md``, ``baselines.md`` and plots to the
   run folder and the model folder ``cfg.model_dir`` (which also gets ``best.ckpt``).

With ``train=false`` an existing checkpoint (``ckpt_path=…``, default ``model_dir``) is only
evaluated on the configured dataset's splits.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from elis.rng import make_rng

log = logging.getLogger(__name__)

TEXT_COLUMNS = ("prompt", "partial_response")
META_COLUMNS = (
    "prompt_id", "generator", "step", "num_generated_tokens", "num_output_tokens",
    "num_remaining_tokens", "num_prompt_tokens",
)


# ----------------------------------------------------------------------------- data
def load_iterative(data_dir: str | Path, name: str):
    """The ``iterative`` DatasetDict of dataset ``name`` (via ``elis.data.build.load_dataset_dir``).

    Raises:
        FileNotFoundError: naming the folder and the command that builds it.
    """
    from elis.data.build import load_dataset_dir

    return load_dataset_dir(Path(data_dir) / name)[1]


def select_rows(ds_dict, subset: dict[str, Any], seed: int) -> tuple[dict[str, pd.DataFrame], dict]:
    """Apply the subset rules; returns split → DataFrame and a record of what was kept.

    subset keys: ``generators`` (list or null = all), ``ood_generators`` (kept out of
    train/val; their test rows join ``test_ood``), ``max_prompts`` (int or null: prompts per
    split, drawn with ``make_rng(seed, 'predictor/subset/<split>')``), ``max_steps`` (keep
    steps < max_steps).

    Raises:
        ValueError: naming generators that are not in the dataset.
    """
    gens = subset.get("generators")
    ood = list(subset.get("ood_generators") or [])
    max_prompts = subset.get("max_prompts")
    max_steps = subset.get("max_steps")
    all_gens: set[str] = set()
    metas = {s: ds_dict[s].select_columns(["prompt_id", "generator", "step"]).to_pandas()
             for s in ds_dict}
    for m in metas.values():
        all_gens.update(m["generator"].unique().tolist())
    unknown = sorted(set(gens or []) | set(ood)) if gens is not None or ood else []
    unknown = [g for g in unknown if g not in all_gens]
    if unknown:
        raise ValueError(
            f"subset generators {unknown} not in the dataset; valid: {sorted(all_gens)[:200]}"
        )
    frames: dict[str, pd.DataFrame] = {}
    ood_frames = []
    for split, meta in metas.items():
        keep = np.ones(len(meta), dtype=bool)
        if max_steps is not None:
            keep &= meta["step"].to_numpy() < int(max_steps)
        if max_prompts is not None:
            ids = np.array(sorted(meta["prompt_id"].unique()))
            rng = make_rng(seed, f"predictor/subset/{split}")
            chosen = set(rng.permutation(ids)[: int(max_prompts)].tolist())
            keep &= meta["prompt_id"].isin(chosen).to_numpy()
        is_ood = meta["generator"].isin(ood).to_numpy()
        if split == "test" and ood:
            ood_idx = np.flatnonzero(keep & is_ood)
            if len(ood_idx):
                ood_frames.append(ds_dict[split].select(ood_idx).to_pandas())
        sel = keep & ~is_ood
        if gens is not None and split != "test_ood":
            sel &= meta["generator"].isin(gens).to_numpy()
        frames[split] = ds_dict[split].select(np.flatnonzero(sel)).to_pandas()
    if ood_frames:
        frames["test_ood"] = pd.concat([frames.get("test_ood", pd.DataFrame())] + ood_frames,
                                       ignore_index=True)
    record = {
        "generators": sorted(gens) if gens is not None else "all",
        "ood_generators": ood,
        "max_prompts": max_prompts,
        "max_steps": max_steps,
        "rows": {s: len(f) for s, f in frames.items()},
        "prompts": {s: int(f["prompt_id"].nunique()) if len(f) else 0 for s, f in frames.items()},
        "generators_per_split": {s: int(f["generator"].nunique()) if len(f) else 0
                                 for s, f in frames.items()},
    }
    return frames, record


def to_arrays(frame: pd.DataFrame, emb: np.ndarray, gen_index: dict[str, int]) -> dict[str, np.ndarray]:
    """Column arrays + embeddings for one split (what the head, baselines and metrics read)."""
    return {
        "emb": emb,
        "step": frame["step"].to_numpy(np.int64),
        "num_prompt_tokens": frame["num_prompt_tokens"].to_numpy(np.int64),
        "num_generated_tokens": frame["num_generated_tokens"].to_numpy(np.int64),
        "num_output_tokens": frame["num_output_tokens"].to_numpy(np.int64),
        "target": frame["num_remaining_tokens"].to_numpy(np.float64),
        "generator": frame["generator"].to_numpy(object),
        "generator_idx": np.array([gen_index.get(g, 0) for g in frame["generator"]], np.int64),
    }


def _frame(arrays: dict[str, np.ndarray], pred: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({
        "target": arrays["target"], "pred": pred, "step": arrays["step"],
        "generator": arrays["generator"], "num_output_tokens": arrays["num_output_tokens"],
    })


# ----------------------------------------------------------------------------- fit
def _embedded_split(a: dict[str, np.ndarray]):
    from elis.predictor.datamodule import EmbeddedSplit

    return EmbeddedSplit(a["emb"], a["generator_idx"], a["num_generated_tokens"], a["target"])


def predict_arrays(module, a: dict[str, np.ndarray], batch_size: int = 4096) -> np.ndarray:
    """Head predictions (tokens, float64 (N,)) for cached arrays."""
    import torch

    module.eval()
    out = np.empty(len(a["target"]), dtype=np.float64)
    with torch.inference_mode():
        for s in range(0, len(out), batch_size):
            sl = slice(s, s + batch_size)
            batch = {
                "emb": torch.from_numpy(np.ascontiguousarray(a["emb"][sl], np.float32)),
                "generator_idx": torch.from_numpy(a["generator_idx"][sl]),
                "num_generated_tokens": torch.from_numpy(a["num_generated_tokens"][sl].astype(np.float32)),
            }
            out[sl] = module.predict_tokens(batch).double().numpy()
    return out


def fit_head(cfg, module_kwargs: dict, arrays: dict[str, dict], run_dir: Path, tag: str,
             with_logger: bool) -> tuple[Any, dict]:
    """Fit one ``LengthRegressor``; returns (best module, fit info incl. epoch times)."""
    import hydra
    import lightning as L
    from lightning.pytorch.callbacks import Callback, ModelCheckpoint

    from elis.predictor.datamodule import EmbeddingDataModule
    from elis.predictor.module import LengthRegressor

    class EpochTimer(Callback):
        def __init__(self) -> None:
            self.seconds: list[float] = []

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self._t = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            self.seconds.append(time.perf_counter() - self._t)

    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    dm = EmbeddingDataModule(
        {s: _embedded_split(arrays[s]) for s in ("train", "val")},
        batch_size=int(cfg.fit.batch_size), seed=int(cfg.seed),
    )
    module = LengthRegressor(**module_kwargs)
    callbacks = [hydra.utils.instantiate(c) for c in cfg.callbacks.values()]
    ckpt_dir = run_dir / "checkpoints" / tag
    for c in callbacks:
        if isinstance(c, ModelCheckpoint):
            c.dirpath = str(ckpt_dir)
    timer = EpochTimer()
    loggers = ([hydra.utils.instantiate(lg) for lg in cfg.logger.values()]
               if with_logger and cfg.get("logger") else False)
    trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=callbacks + [timer], logger=loggers,
        default_root_dir=str(run_dir),
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    fit_s = time.perf_counter() - start
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if best:
        module = LengthRegressor.load_from_checkpoint(best, map_location="cpu")
        if not with_logger:  # an ablation head: loaded, scored below; its file is not kept
            Path(best).unlink(missing_ok=True)
    info = {
        "tag": tag, "best_ckpt": best,
        "best_val_mae": float(trainer.checkpoint_callback.best_model_score)
        if best and trainer.checkpoint_callback.best_model_score is not None else None,
        "epochs": len(timer.seconds), "fit_s": fit_s,
        "epoch_s_mean": float(np.mean(timer.seconds)) if timer.seconds else None,
        "num_train_rows": len(arrays["train"]["target"]),
        "num_parameters": int(sum(p.numel() for p in module.parameters())),
    }
    if loggers:
        for lg in loggers:
            lg.finalize("success")
    return module, info


# ----------------------------------------------------------------------------- run
def _module_kwargs(cfg, dim: int, generators: list[str], conditioning: bool) -> dict:
    p = cfg.predictor
    return {
        "head": {
            "input_dim": dim,
            "num_hidden_layers": int(p.head.num_hidden_layers),
            "hidden_dim": int(p.head.hidden_dim),
            "dropout": float(p.head.dropout),
            "num_generators": len(generators) if conditioning else 0,
            "generator_dim": int(p.head.generator_dim),
            "use_step_feature": bool(p.head.use_step_feature),
        },
        "target_transform": str(p.target_transform),
        "loss": str(p.loss),
        "huber_delta": float(p.huber_delta),
        "lr": float(cfg.fit.lr),
        "weight_decay": float(cfg.fit.weight_decay),
        "generators": generators,
        "encoder": _encoder_kwargs(cfg),
        "generator_dropout": float(p.head.generator_dropout),
    }


def _encoder_kwargs(cfg) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg.predictor.encoder, resolve=True)


def _evaluate(module, arrays: dict[str, dict], splits: list[str]) -> tuple[dict, dict]:
    from elis.predictor.metrics import evaluate_frame

    results, frames = {}, {}
    for s in splits:
        if s in arrays and len(arrays[s]["target"]):
            frames[s] = _frame(arrays[s], predict_arrays(module, arrays[s]))
            results[s] = evaluate_frame(frames[s])
    return results, frames


def _ablation_iterative(cfg, kwargs, arrays, run_dir, eval_splits) -> dict:
    """Step-0-only head: (a) re-predicting at every step, (b) predicting once at step 0 and
    counting down (remaining = max(pred0 - k·W, 0)), vs the all-steps head."""
    from elis.predictor.metrics import evaluate_frame

    def step0(a):
        m = a["step"] == 0
        return {k: v[m] for k, v in a.items()}

    sub = {s: (step0(a) if s in ("train", "val") else a) for s, a in arrays.items()}
    module, info = fit_head(cfg, kwargs, sub, run_dir, "ablation_step0_only", False)
    out: dict[str, Any] = {"fit": info}
    for s in eval_splits:
        if s not in arrays or not len(arrays[s]["target"]):
            continue
        a = arrays[s]
        repredict = predict_arrays(module, a)
        # Count-down: the step-0 prediction of the same (prompt, generator) minus generated.
        a0 = step0(a)
        p0 = predict_arrays(module, a0)
        key0 = {(pid, g): p for pid, g, p in zip(a0["prompt_id"], a0["generator"], p0)}
        countdown = np.array([
            max(key0.get((pid, g), 0.0) - n, 0.0)
            for pid, g, n in zip(a["prompt_id"], a["generator"], a["num_generated_tokens"])
        ])
        out[s] = {
            "step0_model_repredict": evaluate_frame(_frame(a, repredict)),
            "step0_model_countdown": evaluate_frame(_frame(a, countdown)),
        }
    return out


def _ablation_generator(cfg, kwargs, arrays, run_dir, eval_splits) -> dict:
    """Same head with a learned generator embedding concatenated to the text embedding."""
    kw = {**kwargs, "head": {**kwargs["head"], "num_generators": len(kwargs["generators"])}}
    module, info = fit_head(cfg, kw, arrays, run_dir, "ablation_generator_conditioning", False)
    results, _ = _evaluate(module, arrays, eval_splits)
    return {"fit": info, **results}


def _eval_baseline_tables(frames, arrays, results, eval_splits, gen_index) -> list[str]:
    """``baselines.md`` tables of a checkpoint evaluation: the head next to the baselines that
    need no embeddings (per-step mean/median, prompt-length linear), fitted on ``train``."""
    from elis.predictor.baselines import fit_baselines, predict_baseline
    from elis.predictor.evaluate import baseline_table
    from elis.predictor.metrics import evaluate_frame

    train = frames.get("train")
    fitted = {}
    if train is not None and len(train):
        fitted = fit_baselines({k: v for k, v in to_arrays(train, np.zeros((len(train), 0)), gen_index).items()
                                if k != "emb"})
    tables = []
    for s in eval_splits:
        if s not in results:
            continue
        rows = {name: evaluate_frame(_frame(arrays[s], predict_baseline(name, m, arrays[s])))
                for name, m in fitted.items()}
        rows["mlp_head (checkpoint)"] = results[s]
        tables.append(baseline_table(rows, s))
    return tables


def format_metrics(metrics: dict[str, Any]) -> str:
    """What ``train.py`` prints at the end: per evaluated split R², MAE, RMSE, Kendall τ, rows."""
    def f(v, d=3) -> str:
        return "n/a" if v is None or v != v else f"{v:.{d}f}"

    lines = [f"{metrics.get('task', 'train')}: predictor={metrics.get('predictor')} data={metrics.get('data')}"]
    flat: list[tuple[str, dict]] = []
    for split, r in (metrics.get("eval") or {}).items():
        if "raw" in r:  # predictor=gbdt: raw (and capped) scores
            flat.append((split, r["raw"]))
        elif "overall" in r:
            flat.append((split, r))
        else:  # gbdt held-out generators: before / after calibration
            flat += [(f"{split}/{k}", r[k]["raw"]) for k in ("uncalibrated", "calibrated") if k in r]
    for split, r in flat:
        o = r["overall"]
        lines.append(f"  {split:<9} rows={o.get('n')} R2={f(o.get('r2'))} MAE={f(o.get('mae'), 1)} tokens "
                     f"RMSE={f(o.get('rmse'), 1)} kendall_tau_step0={f(r.get('kendall_tau_step0'))}")
    if len(lines) == 1:
        lines.append("  (no evaluation split had rows)")
    if metrics.get("model_ckpt"):
        lines.append(f"  checkpoint: {metrics['model_ckpt']}")
    return "\n".join(lines)


def run(cfg) -> dict[str, Any]:
    """Train (or, with ``train=false``, evaluate) a learned predictor; see the module doc.

    Returns:
        the metrics dict also written to ``metrics.json``.

    Raises:
        ValueError: for a predictor config that is not trainable (oracle, constant, ...).
        FileNotFoundError: for a missing dataset or checkpoint (naming the command to run).
    """
    if not cfg.predictor.get("trainable", False):
        raise ValueError(
            f"predictor={cfg.predictor.name!r} is not trainable; train.py needs a learned "
            "predictor config: predictor=minilm, predictor=bge, predictor=bge_large or predictor=gbdt"
        )
    if cfg.predictor.get("kind") == "gbdt":
        from elis.predictor.gbdt_train import run as run_gbdt

        return run_gbdt(cfg)
    from elis.cli import ensure_model_available
    from elis.predictor.encoder import OFFLINE_ENCODER_HINT, resolve_model_path

    if cfg.train and cfg.predictor.get("encoder") is not None:  # offline, not on disk: fail now
        ensure_model_available("predictor.encoder.model_name",
                               resolve_model_path(cfg.predictor.encoder.model_name), OFFLINE_ENCODER_HINT)
    from omegaconf import OmegaConf

    from elis.predictor.baselines import fit_baselines, predict_baseline
    from elis.predictor.cache import EmbeddingCache
    from elis.predictor.encoder import TextEncoder
    from elis.predictor.evaluate import baseline_table, per_step_table, write_plots
    from elis.predictor.metrics import evaluate_frame
    from elis.predictor.module import LengthRegressor

    import torch

    torch.set_num_threads(int(cfg.num_threads))
    run_dir = Path(cfg.paths.output_dir)
    model_dir = Path(cfg.model_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    t_start = time.perf_counter()

    module = None
    if not cfg.train:
        ckpt = Path(cfg.ckpt_path or model_dir)
        ckpt = ckpt / "best.ckpt" if ckpt.is_dir() else ckpt
        if not ckpt.is_file():
            raise FileNotFoundError(
                f"ckpt_path {str(ckpt)!r} does not exist; train one with: python train.py "
                f"predictor={cfg.predictor.name} data={cfg.data.name}"
            )
        module = LengthRegressor.load_from_checkpoint(str(ckpt), map_location="cpu")
        enc_kwargs = dict(module.hparams.encoder)
        ensure_model_available("predictor.encoder.model_name", resolve_model_path(enc_kwargs["model_name"]),
                               OFFLINE_ENCODER_HINT)
    else:
        enc_kwargs = _encoder_kwargs(cfg)

    ds = load_iterative(cfg.paths.data_dir, cfg.data.name)
    subset = OmegaConf.to_container(cfg.subset, resolve=True)
    frames, subset_record = select_rows(ds, subset, int(cfg.seed))
    log.info("subset: %s", subset_record["rows"])

    encoder = TextEncoder(**enc_kwargs)
    cache = EmbeddingCache(encoder, cfg.paths.cache_dir)
    eval_splits = [s for s in list(cfg.eval_splits) if s in frames]
    need = ["train", "val"] + eval_splits if cfg.train else eval_splits
    if cfg.train:
        generators = ["<unknown>"] + sorted(frames["train"]["generator"].unique().tolist())
    else:
        generators = list(module.hparams.generators or ["<unknown>"])
    gen_index = {g: i for i, g in enumerate(generators)}
    arrays: dict[str, dict[str, np.ndarray]] = {}
    for s in dict.fromkeys(need):
        f = frames[s]
        emb = cache.embed(f["prompt"].tolist(), f["partial_response"].tolist(), progress=True)
        arrays[s] = to_arrays(f, emb, gen_index)
        arrays[s]["prompt_id"] = f["prompt_id"].to_numpy(object)
    embedding = {**encoder.stats.as_dict(), "cache_hits": cache.num_hits,
                 "cache_computed": cache.num_computed, "cache_key": encoder.cache_key}
    log.info("embedding: %s", embedding)

    metrics: dict[str, Any] = {
        "task": "train" if cfg.train else "evaluate",
        "predictor": cfg.predictor.name, "data": cfg.data.name, "seed": int(cfg.seed),
        "subset": subset_record, "embedding": embedding,
    }
    fit_info = None
    if cfg.train:
        conditioning = bool(cfg.predictor.head.generator_conditioning)
        kwargs = _module_kwargs(cfg, encoder.dim, generators, conditioning)
        module, fit_info = fit_head(cfg, kwargs, arrays, run_dir, "main", True)
        metrics["fit"] = fit_info
    results, pred_frames = _evaluate(module, arrays, eval_splits)
    metrics["eval"] = results

    tables = []
    if cfg.train:
        fitted = fit_baselines(arrays["train"])
        metrics["baselines"] = {}
        for s in eval_splits:
            rows = {name: evaluate_frame(_frame(arrays[s], predict_baseline(name, m, arrays[s])))
                    for name, m in fitted.items()}
            rows["mlp_head"] = results[s]
            metrics["baselines"][s] = {
                n: {"overall": r["overall"], "kendall_tau_step0": r["kendall_tau_step0"],
                    "per_step_mae": {k: v["mae"] for k, v in r["per_step"]["groups"].items()}}
                for n, r in rows.items()
            }
            tables.append(baseline_table(rows, s))
            lin = fitted["prompt_length_linear"]
            metrics["prompt_length_linear_coef"] = {
                "intercept": float(lin.intercept_), "slope_prompt": float(lin.coef_[0]),
                "slope_generated": float(lin.coef_[1])}
        abl = cfg.ablations
        if abl.iterative:
            metrics["ablation_iterative"] = _ablation_iterative(cfg, kwargs, arrays, run_dir, eval_splits)
        if abl.generator_conditioning and not conditioning:
            metrics["ablation_generator_conditioning"] = _ablation_generator(
                cfg, kwargs, arrays, run_dir, eval_splits)

    else:  # checkpoint evaluation: the embedding-free baselines from the train split's labels
        tables += _eval_baseline_tables(frames, arrays, results, eval_splits, gen_index)
    step_md = "".join(f"## {s}\n\n{per_step_table(r)}\n" for s, r in results.items())
    plot_paths = []
    for s, f in pred_frames.items():
        plot_paths += write_plots(f, results[s], run_dir / "plots", s)
    metrics["wall_s"] = time.perf_counter() - t_start
    metrics["plots"] = [Path(p).name for p in plot_paths]

    if cfg.train and fit_info and fit_info["best_ckpt"]:
        # moved, not copied: the checkpoint (~93 MB for MiniLM) is stored once, in model_dir
        model_dir.mkdir(parents=True, exist_ok=True)
        shutil.move(fit_info["best_ckpt"], model_dir / "best.ckpt")
        metrics["model_ckpt"] = str(model_dir / "best.ckpt")
        metrics["fit"]["best_ckpt"] = str(model_dir / "best.ckpt")
    for d in ([run_dir, model_dir] if cfg.train else [run_dir]):
        d.mkdir(parents=True, exist_ok=True)
        (d / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
        (d / "per_step.md").write_text(step_md)
        (d / "baselines.md").write_text("\n".join(tables))
        if d != run_dir:
            shutil.copytree(run_dir / "plots", d / "plots", dirs_exist_ok=True)
    return metrics
