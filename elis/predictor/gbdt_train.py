"""``python train.py predictor=gbdt``: fit and evaluate the GBDT length predictor.

``fit_gbdt(train, val, embed_prompts, ...) -> (GbdtLengthModel, info)`` fits everything in
``elis.predictor.gbdt`` from two iterative-sample frames (columns of
``elis.data.schema.ITERATIVE_COLUMNS``). ``run(cfg)`` is the ``train.py`` composition root for
``predictor=gbdt``; it writes ``metrics.json`` / ``per_step.md`` to the run folder and the
artefact to ``cfg.model_dir`` (``models/gbdt-<data>``).

Evaluation protocol (``evaluate_split``; every number in ``metrics.json``):
- raw: targets as built (runaway / ``max_tokens``-truncated answers kept as they are; the
  count of answers with ``L >= cap_tokens`` is reported); capped: targets AND predictions
  clipped to ``cap_tokens`` (4,096), the score that runaway generations cannot dominate;
- pooled R², MAE, RMSE, τ; per step k (R², MAE, τ); τ at k = 0; per generator;
- progress: median within-request slope of predicted remaining vs generated tokens over
  answers with ≥ 2 steps (the truth is exactly −1; a slope near 0 turns ISRTF into LAS);
- quantile coverage: share of targets below p10 / p50 / p90;
- ``agnostic``: the same split with every generator treated as unseen (generator-agnostic
  booster), i.e. what a brand-new model gets before ``min_answers`` answers.
Held-out generators (``subset.ood_generators`` or ``eval.extra_generators_dir``, a folder in the
alpaca_eval layout ``model_outputs/<generator>.jsonl.gz``): each is calibrated with
``eval.calibration_answers`` of its answers on TRAIN-split prompts (seeded draw), then scored
on TEST-split prompts, with and without the calibration.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from elis.predictor.base import PredictionQuery
from elis.predictor.gbdt import (
    MODES, QUANTILE_GRID, GbdtLengthModel, GbdtPredictor, GeneratorStats,
)
from elis.predictor.structural import structural_features
from elis.rng import make_rng

log = logging.getLogger(__name__)

DEFAULT_PARAMS: dict[str, Any] = {
    "objective": "regression", "learning_rate": 0.05, "num_leaves": 63,
    "min_data_in_leaf": 200, "feature_fraction": 0.8, "bagging_fraction": 0.8,
    "bagging_freq": 1, "lambda_l2": 1.0,
}


# ----------------------------------------------------------------------------- fit
def _pairs(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per answer (the step-0 rows): prompt, generator, num_output_tokens."""
    return frame.loc[frame["step"] == 0, ["prompt", "generator", "num_output_tokens"]]


def fit_prompt_effect(
    emb: np.ndarray, prompts: list[str], pairs: pd.DataFrame, *, folds: int, alphas, num_pca: int,
    seed: int,
) -> dict[str, Any]:
    """Ridge (embedding → prompt effect) with out-of-fold effects for the training prompts.

    Args:
        emb: (P, D) embeddings of ``prompts`` (distinct training prompts).
        pairs: training answers (prompt, generator, num_output_tokens >= 1).

    Returns:
        ``{coef (D,), intercept, alpha, oof {prompt: effect}, pca_mean (D,),
        pca_components (P', D), r2_oof}``.
    """
    from sklearn.decomposition import PCA
    from sklearn.linear_model import Ridge, RidgeCV
    from sklearn.model_selection import KFold

    logl = np.log(pairs["num_output_tokens"].to_numpy(np.float64))
    m0 = pd.Series(logl).groupby(pairs["generator"].to_numpy()).transform("mean").to_numpy()
    y_by_prompt = pd.Series(logl - m0).groupby(pairs["prompt"].to_numpy()).mean()
    y = y_by_prompt.reindex(prompts).to_numpy()
    if np.isnan(y).any():
        raise ValueError("fit_prompt_effect: a training prompt has no answer")
    full = RidgeCV(alphas=list(alphas)).fit(emb, y)
    alpha = float(full.alpha_)
    oof = np.empty(len(prompts))
    n_splits = min(int(folds), len(prompts))
    for tr, te in KFold(n_splits=n_splits, shuffle=True, random_state=seed).split(emb):
        oof[te] = Ridge(alpha=alpha).fit(emb[tr], y[tr]).predict(emb[te])
    pca = PCA(n_components=min(num_pca, emb.shape[0], emb.shape[1]), svd_solver="full").fit(emb)
    r2 = 1.0 - float(np.sum((y - oof) ** 2) / np.sum((y - y.mean()) ** 2))
    return {"coef": full.coef_.astype(np.float64), "intercept": float(full.intercept_),
            "alpha": alpha, "oof": dict(zip(prompts, oof)), "r2_oof": r2,
            "pca_mean": pca.mean_.astype(np.float64), "pca_components": pca.components_.astype(np.float64)}


def generator_stats(pairs: pd.DataFrame, effect: dict[str, float]) -> tuple[dict[str, GeneratorStats], GeneratorStats]:
    """Per-generator and pooled statistics of ``log L − effect(prompt)``."""
    stats: dict[str, GeneratorStats] = {}
    pooled = GeneratorStats()
    for p, g, n in zip(pairs["prompt"], pairs["generator"], pairs["num_output_tokens"]):
        x = math.log(n) - effect[p]
        stats.setdefault(g, GeneratorStats()).add(x)
        pooled.add(x)
    return stats, pooled


def _rows(frame: pd.DataFrame, model: GbdtLengthModel, effect_of: Callable[[list[str]], tuple],
          stats: dict[str, GeneratorStats], mode: str, struct: np.ndarray):
    prompts = frame["prompt"].tolist()
    effect, pca = effect_of(prompts)
    if mode == "aware":
        mu = np.array([stats[g].mu for g in frame["generator"]])
        sd = np.array([stats[g].sigma for g in frame["generator"]])
    else:
        mu = np.full(len(frame), model.pooled.mu)
        sd = np.full(len(frame), model.pooled.sigma)
    chars = np.array([len(p) for p in prompts], dtype=np.float64)
    return model.design(mode, effect, pca, chars, mu, sd,
                        frame["num_generated_tokens"].to_numpy(np.float64), struct)


def fit_gbdt(
    train: pd.DataFrame, val: pd.DataFrame, embed_prompts: Callable[[list[str]], np.ndarray], *,
    encoder: dict | None = None, num_pca: int = 16, alphas=(0.1, 1.0, 10.0, 100.0, 1000.0),
    folds: int = 5, min_answers: int = 20, cap_tokens: int = 4096, window_tokens: int = 50,
    num_boost_round: int = 600, early_stopping_rounds: int = 50, params: dict | None = None,
    num_threads: int = 2, seed: int = 0,
) -> tuple[GbdtLengthModel, dict[str, Any]]:
    """Fit prompt effect, generator statistics, the four boosters and the residual grids.

    Args:
        train, val: iterative-sample frames (val: early stopping and quantile calibration;
            its generators must appear in ``train``).
        embed_prompts: ``list[str] -> (N, D)`` prompt embeddings.

    Returns:
        the model and a fit record (rows, rounds per booster, ridge alpha, OOF R², seconds).

    Raises:
        ValueError: when val holds a generator missing from train.
    """
    import lightgbm as lgb

    t0 = time.perf_counter()
    missing = sorted(set(val["generator"]) - set(train["generator"]))
    if missing:
        raise ValueError(f"fit_gbdt: val generators {missing[:10]} are not in train")
    pairs = _pairs(train)
    prompts = sorted(set(train["prompt"]))
    emb = np.asarray(embed_prompts(prompts), dtype=np.float64)
    pe = fit_prompt_effect(emb, prompts, pairs, folds=folds, alphas=alphas, num_pca=num_pca, seed=seed)
    stats, pooled = generator_stats(pairs, pe["oof"])
    model = GbdtLengthModel(
        ridge_coef=pe["coef"], ridge_intercept=pe["intercept"], pca_mean=pe["pca_mean"],
        pca_components=pe["pca_components"], generators=stats, pooled=pooled,
        min_answers=int(min_answers), cap_tokens=int(cap_tokens), window_tokens=int(window_tokens),
        encoder=dict(encoder or {}),
    )
    pca_train = (emb - model.pca_mean) @ model.pca_components.T
    pca_of = dict(zip(prompts, pca_train))

    def effect_train(ps: list[str]):  # out-of-fold effects: no row sees its own answer's fit
        return np.array([pe["oof"][p] for p in ps]), np.stack([pca_of[p] for p in ps])

    val_prompts = sorted(set(val["prompt"]))
    val_emb = dict(zip(val_prompts, np.asarray(embed_prompts(val_prompts), dtype=np.float64)))

    def effect_val(ps: list[str]):
        return model.prompt_features(np.stack([val_emb[p] for p in ps]))

    log.info("prompt effect: ridge alpha %g, out-of-fold R² %.3f over %d prompts; %d generators",
             pe["alpha"], pe["r2_oof"], len(prompts), len(stats))
    t_struct = time.perf_counter()
    s_tr = structural_features(train["partial_response"].tolist(), train["prompt"].tolist())
    s_va = structural_features(val["partial_response"].tolist(), val["prompt"].tolist())
    struct_s = time.perf_counter() - t_struct
    log.info("structural features of %d + %d partial answers in %.1f s", len(train), len(val), struct_s)
    y_tr = np.minimum(train["num_remaining_tokens"].to_numpy(np.float64), cap_tokens)
    y_va = np.minimum(val["num_remaining_tokens"].to_numpy(np.float64), cap_tokens)
    base = {**DEFAULT_PARAMS, **(params or {}), "num_threads": int(num_threads), "seed": int(seed),
            "deterministic": True, "force_row_wise": True, "verbose": -1}
    info: dict[str, Any] = {"rows_train": len(train), "rows_val": len(val),
                            "prompts_train": len(prompts), "generators_train": len(stats),
                            "ridge_alpha": pe["alpha"], "prompt_effect_r2_oof": pe["r2_oof"],
                            "structural_features_s": struct_s, "boosters": {}}
    for mode in MODES:
        x_tr, rl_tr = _rows(train, model, effect_train, stats, mode, s_tr)
        x_va, rl_va = _rows(val, model, effect_val, stats, mode, s_va)
        names = model.feature_names(mode)
        for kind, (ytr, yva, itr, iva) in {
            "mean": (y_tr, y_va, rl_tr, rl_va),
            "log": (np.log(y_tr), np.log(y_va), np.log(rl_tr), np.log(rl_va)),
        }.items():
            t = time.perf_counter()
            dtr = lgb.Dataset(x_tr, ytr, init_score=itr, feature_name=names, free_raw_data=False)
            dva = lgb.Dataset(x_va, yva, init_score=iva, reference=dtr)
            b = lgb.train(base, dtr, num_boost_round=int(num_boost_round), valid_sets=[dva],
                          callbacks=[lgb.early_stopping(int(early_stopping_rounds), verbose=False)])
            model.boosters[(mode, kind)] = b
            log.info("booster %s/%s: %d rounds in %.1f s", mode, kind, b.current_iteration(),
                     time.perf_counter() - t)
            info["boosters"][f"{mode}/{kind}"] = {"rounds": int(b.best_iteration or b.current_iteration()),
                                                  "fit_s": time.perf_counter() - t}
        loc = model.predict_log_location(mode, x_va, rl_va)
        resid = np.log(y_va) - loc
        steps = (val["num_generated_tokens"].to_numpy() // window_tokens).astype(int)
        grid = np.stack([np.quantile(resid[steps == k] if (steps == k).sum() >= 20 else resid, QUANTILE_GRID)
                         for k in range(int(steps.max()) + 1)])
        model.residual_quantiles[mode] = grid
    info["fit_s"] = time.perf_counter() - t0
    return model, info


# ----------------------------------------------------------------------------- evaluate
def queries_of(frame: pd.DataFrame) -> list[PredictionQuery]:
    """One ``PredictionQuery`` per iterative row (what the scheduler would send)."""
    return [PredictionQuery(prompt=p, partial_response=r, num_generated_tokens=int(g), generator=gen)
            for p, r, g, gen in zip(frame["prompt"], frame["partial_response"],
                                    frame["num_generated_tokens"], frame["generator"])]


def progress_slopes(frame: pd.DataFrame, pred: np.ndarray, min_steps: int = 2) -> np.ndarray:
    """Within-answer least-squares slope of predicted remaining vs generated tokens.

    One slope per (prompt, generator) answer with at least ``min_steps`` steps; the truth's
    slope is exactly −1. Returns float64 (num_answers,).
    """
    df = pd.DataFrame({"key": frame["prompt_id"].astype(str) + "\x00" + frame["generator"].astype(str),
                       "g": frame["num_generated_tokens"].to_numpy(np.float64), "p": pred})
    out = []
    for _, grp in df.groupby("key", sort=True):
        if len(grp) >= min_steps:
            g = grp["g"].to_numpy()
            gc = g - g.mean()
            out.append(float(np.dot(gc, grp["p"].to_numpy() - grp["p"].mean()) / np.dot(gc, gc)))
    return np.asarray(out, dtype=np.float64)


def evaluate_split(predictor: GbdtPredictor, frame: pd.DataFrame, cap_tokens: int) -> dict[str, Any]:
    """Raw + capped metrics, progress slope, quantile coverage (see the module doc)."""
    from elis.predictor.metrics import evaluate_frame

    queries = queries_of(frame)
    t = time.perf_counter()
    pred = predictor.predict_remaining(queries)
    predict_s = time.perf_counter() - t
    q = predictor.predict_quantiles(queries, [0.1, 0.5, 0.9])
    target = frame["num_remaining_tokens"].to_numpy(np.float64)

    def fr(tv, pv):
        return pd.DataFrame({"target": tv, "pred": pv, "step": frame["step"].to_numpy(),
                             "generator": frame["generator"].to_numpy(),
                             "num_output_tokens": frame["num_output_tokens"].to_numpy()})

    raw = evaluate_frame(fr(target, pred))
    capped = evaluate_frame(fr(np.minimum(target, cap_tokens), np.minimum(pred, cap_tokens)))
    slopes = progress_slopes(frame, pred)
    answers = frame.loc[frame["step"] == 0, "num_output_tokens"].to_numpy()
    return {
        "raw": raw, "capped": capped,
        "progress_slope_median": float(np.median(slopes)) if len(slopes) else float("nan"),
        "progress_slope_num_answers": int(len(slopes)),
        "quantile_coverage": {f"p{int(lv * 100)}": float(np.mean(target <= q[:, i]))
                              for i, lv in enumerate((0.1, 0.5, 0.9))},
        "num_answers": int(len(answers)),
        "num_answers_at_or_above_cap": int(np.sum(answers >= cap_tokens)),
        "predict_ms_per_query": 1e3 * predict_s / max(len(queries), 1),
    }, pred


def summary_row(name: str, r: dict) -> dict[str, Any]:
    """Flat row for a markdown table: pooled R² raw/capped, per-step R²/MAE k=0/k=7, τ k=0."""
    ps = r["raw"]["per_step"]["groups"]
    ks = sorted(ps, key=int)
    return {"predictor": name, "n": r["raw"]["overall"]["n"],
            "R2 raw": r["raw"]["overall"]["r2"], "R2 capped": r["capped"]["overall"]["r2"],
            "R2 k0": ps[ks[0]]["r2"], "R2 klast": ps[ks[-1]]["r2"],
            "MAE k0": ps[ks[0]]["mae"], "MAE klast": ps[ks[-1]]["mae"], "MAE": r["raw"]["overall"]["mae"],
            "tau k0": r["raw"]["kendall_tau_step0"], "slope": r.get("progress_slope_median", float("nan"))}


def markdown_table(rows: list[dict]) -> str:
    """Rows of ``summary_row`` as a markdown table (3 decimals, MAE 1)."""
    if not rows:
        return ""
    cols = list(rows[0])
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for c in cols:
            v = r[c]
            cells.append(f"{v:.1f}" if isinstance(v, float) and c.startswith("MAE")
                         else f"{v:.3f}" if isinstance(v, float) else str(v))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def calibrate_and_score(
    predictor: GbdtPredictor, calib: pd.DataFrame, test: pd.DataFrame, num_answers: int,
    cap_tokens: int, seed: int,
) -> dict[str, Any]:
    """Held-out generators: score ``test`` uncalibrated (agnostic), then calibrate each generator
    with ``num_answers`` of its ``calib`` answers (seeded draw) and score again."""
    before, _ = evaluate_split(predictor, test, cap_tokens)
    used = {}
    pairs = _pairs(calib)
    for gen in sorted(set(test["generator"])):
        gp = pairs[pairs["generator"] == gen]
        rng = make_rng(seed, f"predictor/calibration/{gen}")
        take = gp.iloc[rng.permutation(len(gp))[:num_answers]]
        for p, n in zip(take["prompt"], take["num_output_tokens"]):
            predictor.observe_finished(p, gen, int(n))
        used[gen] = int(len(take))
    after, _ = evaluate_split(predictor, test, cap_tokens)
    return {"calibration_answers": used, "uncalibrated": before, "calibrated": after}


# ----------------------------------------------------------------------------- entry
def _extra_generators(cfg, directory: str) -> dict[str, pd.DataFrame]:
    """Build (or reuse) an alpaca_eval-layout folder as a dataset; returns split → frame."""
    import hashlib

    from elis.data.build import build_dataset, load_dataset_dir
    from elis.data.lengths import load_label_tokenizer
    from elis.data.sources.alpaca_eval import AlpacaEvalSource

    d = Path(directory)
    if not (d / "model_outputs").is_dir():
        raise FileNotFoundError(
            f"eval.extra_generators_dir={directory!r} has no model_outputs/ folder; expected the "
            "alpaca_eval layout model_outputs/<generator>.jsonl.gz")
    key = hashlib.sha256(str(d.resolve()).encode()).hexdigest()[:12]
    out = Path(cfg.paths.cache_dir) / "extra_generators" / key
    if not (out / "manifest.json").is_file():
        lt = cfg.data.label_tokenizer
        tok = load_label_tokenizer(lt.name_or_path, gguf_package=lt.get("gguf_package"),
                                   gguf_file=lt.get("gguf_file"), cache_dir=lt.get("cache_dir"))
        build_dataset(AlpacaEvalSource(root=str(d), name="extra"), tok, out,
                      window_tokens=int(cfg.data.window_tokens), num_steps=int(cfg.data.num_steps),
                      split_fractions=dict(cfg.data.split_fractions), num_proc=None,
                      labels_cache_dir=Path(cfg.paths.cache_dir) / "labels")
    _, it, _ = load_dataset_dir(out)
    return {s: it[s].to_pandas() for s in it}


def run(cfg) -> dict[str, Any]:
    """``train.py predictor=gbdt``: fit (``train=true``) or load, then evaluate; see module doc.

    Raises:
        FileNotFoundError: dataset or model folder missing (naming the command to run).
    """
    from omegaconf import OmegaConf

    from elis.predictor.cache import EmbeddingCache
    from elis.predictor.encoder import TextEncoder
    from elis.predictor.train import load_iterative, select_rows

    t_wall, t_cpu = time.perf_counter(), time.process_time()
    run_dir = Path(cfg.paths.output_dir)
    model_dir = Path(cfg.ckpt_path or cfg.model_dir) if not cfg.train else Path(cfg.model_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    g = cfg.predictor.gbdt
    ev = cfg.get("eval") or {}
    cap = int(g.cap_tokens)
    seed = int(cfg.seed)

    ds = load_iterative(cfg.paths.data_dir, cfg.data.name)
    subset = OmegaConf.to_container(cfg.subset, resolve=True)
    ood = list(subset.get("ood_generators") or [])
    frames, record = select_rows(ds, {**subset, "ood_generators": []}, seed)
    if ood:  # held out of train/val entirely; their train-split answers calibrate, test scores
        held = {s: f[f["generator"].isin(ood)] for s, f in frames.items()}
        frames = {s: f[~f["generator"].isin(ood)] for s, f in frames.items()}
        record["ood_generators"] = ood
    record["rows"] = {s: len(f) for s, f in frames.items()}

    if cfg.train:
        enc_kwargs = OmegaConf.to_container(cfg.predictor.encoder, resolve=True)
    else:
        if not (model_dir / "meta.json").is_file():
            raise FileNotFoundError(f"gbdt model folder {str(model_dir)!r} has no meta.json; train "
                                    f"it with: python train.py predictor=gbdt data={cfg.data.name}")
        enc_kwargs = GbdtLengthModel.load(model_dir).encoder
    encoder = TextEncoder(**enc_kwargs)
    cache = EmbeddingCache(encoder, cfg.paths.cache_dir)
    t_emb = time.perf_counter()

    def embed(prompts: list[str]) -> np.ndarray:
        return cache.embed(prompts, [""] * len(prompts), progress=len(prompts) > 64)

    metrics: dict[str, Any] = {"task": "train" if cfg.train else "evaluate", "predictor": "gbdt",
                               "data": cfg.data.name, "seed": seed, "subset": record}
    if cfg.train:
        model, fit = fit_gbdt(
            frames["train"], frames["val"], embed, encoder=enc_kwargs, num_pca=int(g.num_pca),
            alphas=list(g.ridge_alphas), folds=int(g.oof_folds), min_answers=int(g.min_answers),
            cap_tokens=cap, window_tokens=int(cfg.data.window_tokens),
            num_boost_round=int(g.num_boost_round), early_stopping_rounds=int(g.early_stopping_rounds),
            params=OmegaConf.to_container(g.params, resolve=True), num_threads=int(g.get("num_threads", cfg.num_threads)),
            seed=seed)
        metrics["fit"] = fit
        model.save(model_dir)
        metrics["model_dir"] = str(model_dir)
    else:
        model = GbdtLengthModel.load(model_dir)
    predictor = GbdtPredictor(model, embed, name="gbdt")
    metrics["embedding"] = {**encoder.stats.as_dict(), "cache_hits": cache.num_hits,
                            "cache_computed": cache.num_computed, "cache_key": encoder.cache_key,
                            "embed_s_first_pass": time.perf_counter() - t_emb}

    results, rows = {}, []
    for s in [s for s in cfg.eval_splits if s in frames and len(frames[s])]:
        results[s], _ = evaluate_split(predictor, frames[s], cap)
        rows.append(summary_row(f"gbdt ({s})", results[s]))
        agn = GbdtPredictor(model, embed, name="gbdt-agnostic")
        agn.generators = {}
        results[f"{s}_agnostic"], _ = evaluate_split(agn, frames[s], cap)
        rows.append(summary_row(f"gbdt agnostic ({s})", results[f"{s}_agnostic"]))
    n_cal = int(ev.get("calibration_answers", 20))
    if ood:
        results["heldout"] = calibrate_and_score(GbdtPredictor(model, embed), held["train"],
                                                 held["test"], n_cal, cap, seed)
        for k in ("uncalibrated", "calibrated"):
            rows.append(summary_row(f"held-out {k}", results["heldout"][k]))
    if ev.get("extra_generators_dir"):
        extra = _extra_generators(cfg, str(ev.extra_generators_dir))
        results["extra_generators"] = calibrate_and_score(
            GbdtPredictor(model, embed), extra["train"], extra["test"], n_cal, cap, seed)
        for k in ("uncalibrated", "calibrated"):
            rows.append(summary_row(f"extra {k}", results["extra_generators"][k]))
    metrics["eval"] = results
    metrics["cpu_s"] = time.process_time() - t_cpu
    metrics["wall_s"] = time.perf_counter() - t_wall
    table = markdown_table(rows)
    log.info("gbdt results:\n%s", table)
    for d in ([run_dir, model_dir] if cfg.train else [run_dir]):
        d.mkdir(parents=True, exist_ok=True)
        (d / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
        (d / "summary.md").write_text(table)
    return metrics
