"""Step-0 (prompt-only) length prediction on CASTILLO: unseen prompts and out-of-domain datasets.

``python -m elis.predictor.castillo_step0 [--ood-datasets Apps,Mbpp,DS1000,BigCodeBench] [--out DIR]``

CASTILLO (arXiv:2505.16881, ``../shared/data/castillo``) gives, for each (prompt, model) of
7,898 prompts × 13 models, the token counts (model's own tokenizer) of **10 sampled answers**
but, for most rows, no answer text. So only the step-0 prediction (before any token is
generated) is measurable. Representation: one row per (prompt, model) with the 10 lengths as a
(R, 10) array; "single samples" scores every one of the 10 lengths against the row's one
prediction (10 × R targets), "10-sample means" scores the row mean.

Model (the step-0 part of ``predictor=gbdt``, fitted the same way):
- prompt effect: ridge (RidgeCV) on the frozen MiniLM prompt embedding → mean over models of
  ``log L − mean_model(log L)``, out-of-fold (5 prompt folds) for training prompts
  (``gbdt_train.fit_prompt_effect``), + a 16-d PCA of the embedding;
- model statistics: μ, σ of ``log L − effect`` per model (training rows), model code;
- log prompt tokens (the model's tokenizer, CASTILLO's ``input_size``);
- LightGBM, L2 on the 10-sample mean of lengths capped at ``cap_tokens`` (4,096), early
  stopping on a validation prompt split. The CASTILLO dataset name is NOT a feature.

Splits: the distinct prompt TEXTS are split train/val/test by a seeded permutation (a prompt
is never in two splits, whatever its model). ``ood_datasets``: those datasets' prompts are
removed from train/val entirely and scored on their test prompts (and the in-domain model,
trained with them, is scored on the same rows for comparison).

Metrics (``score_step0``), raw and capped (targets and predictions clipped at ``cap_tokens``):
R², MAE, Kendall τ-b; for single samples and 10-sample means; per dataset.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

CODE_DATASETS = ("Apps", "Mbpp", "DS1000", "BigCodeBench")
SPLITS = ("train", "val", "test")


def load_step0_frame(root: str | Path) -> pd.DataFrame:
    """One row per (prompt, model): ``prompt``, ``prompt_id``, ``dataset``, ``model``,
    ``num_prompt_tokens`` and ``output_sizes`` (int64 array of 10 token counts).

    Raises:
        SourceError: missing file/column (``load_castillo_lengths``); ValueError naming the
            prompt_id when a length row has no prompt text.
    """
    from elis.data.sources.castillo import _require, load_castillo_lengths

    lengths = load_castillo_lengths(root)
    prompts: dict[str, str] = {}
    with gzip.open(_require(Path(root) / "prompts.jsonl.gz"), "rt") as f:
        for line in f:
            row = json.loads(line)
            prompts[row["prompt_id"]] = row["prompt_text"]
    missing = sorted(set(lengths["prompt_id"]) - set(prompts))
    if missing:
        raise ValueError(f"castillo lengths: prompt_id {missing[0]!r} (+{len(missing) - 1}) has no prompt text")
    lengths["prompt"] = lengths["prompt_id"].map(prompts)
    return lengths[["prompt", "prompt_id", "dataset", "model", "num_prompt_tokens", "output_sizes"]]


def split_prompts(prompts: Sequence[str], fractions: dict[str, float], seed: int) -> dict[str, str]:
    """Distinct prompt texts → ``train`` / ``val`` / ``test`` by a seeded permutation.

    Raises:
        ValueError: if ``fractions`` lacks a split, has a negative value or does not sum to 1.
    """
    if set(fractions) != set(SPLITS) or min(fractions.values()) < 0 or abs(sum(fractions.values()) - 1) > 1e-9:
        raise ValueError(f"split fractions={fractions!r}; need train/val/test >= 0 summing to 1")
    uniq = sorted(set(prompts))
    order = np.random.default_rng(seed).permutation(len(uniq))
    n_tr = int(round(fractions["train"] * len(uniq)))
    n_va = int(round(fractions["val"] * len(uniq)))
    out = {}
    for rank, i in enumerate(order):
        out[uniq[i]] = "train" if rank < n_tr else "val" if rank < n_tr + n_va else "test"
    return out


def _single_samples(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per sampled answer (R × 10): prompt, generator (= model), num_output_tokens."""
    sizes = np.stack(frame["output_sizes"].to_numpy())
    s = sizes.shape[1]
    return pd.DataFrame({"prompt": np.repeat(frame["prompt"].to_numpy(), s),
                         "generator": np.repeat(frame["model"].to_numpy(), s),
                         "num_output_tokens": np.maximum(sizes.reshape(-1), 1)})


def fit_step0(
    train: pd.DataFrame, val: pd.DataFrame, embed: Callable[[list[str]], np.ndarray], *,
    cap_tokens: int = 4096, num_pca: int = 16, alphas: Sequence[float] = (0.1, 1.0, 10.0, 100.0, 1000.0),
    folds: int = 5, params: dict[str, Any] | None = None, num_boost_round: int = 600,
    early_stopping_rounds: int = 50, num_threads: int = 1, seed: int = 0,
) -> dict[str, Any]:
    """Fit the prompt effect, model statistics and the LightGBM booster (module doc).

    Args:
        train / val: ``load_step0_frame`` rows (disjoint prompts).
        embed: prompt texts → (N, D) float embeddings.

    Returns:
        the model dict for ``predict_step0`` (``effect``, ``stats``, ``models``, ``booster``,
        ``best_iteration``, ``r2_oof`` of the prompt effect).
    """
    import lightgbm as lgb

    from elis.predictor.gbdt_train import fit_prompt_effect

    prompts = sorted(set(train["prompt"]))
    emb = embed(prompts).astype(np.float64)
    pairs = _single_samples(train)
    eff = fit_prompt_effect(emb, prompts, pairs, folds=folds, alphas=alphas, num_pca=num_pca, seed=seed)
    x = np.log(pairs["num_output_tokens"].to_numpy(np.float64)) - pairs["prompt"].map(eff["oof"]).to_numpy()
    g = pd.Series(x).groupby(pairs["generator"].to_numpy())
    stats = {m: (float(mu), float(sd)) for m, mu, sd in zip(g.mean().index, g.mean(), g.std(ddof=0))}
    model = {"effect": eff, "stats": stats, "pooled": (float(x.mean()), float(x.std())),
             "models": sorted(stats), "cap_tokens": int(cap_tokens), "r2_oof": eff["r2_oof"]}

    def target(f: pd.DataFrame) -> np.ndarray:
        return np.minimum(np.stack(f["output_sizes"].to_numpy()), cap_tokens).mean(axis=1)

    p = {"objective": "regression", "learning_rate": 0.05, "num_leaves": 31, "min_data_in_leaf": 50,
         "feature_fraction": 0.8, "bagging_fraction": 0.8, "bagging_freq": 1, "lambda_l2": 1.0,
         **(params or {}), "num_threads": int(num_threads), "seed": int(seed), "verbosity": -1,
         "deterministic": True}
    dtr = lgb.Dataset(_features(model, train, embed, oof=True), target(train), free_raw_data=False)
    dva = lgb.Dataset(_features(model, val, embed), target(val), reference=dtr)
    booster = lgb.train(p, dtr, num_boost_round=int(num_boost_round), valid_sets=[dva],
                        callbacks=[lgb.early_stopping(int(early_stopping_rounds), verbose=False)])
    model["booster"] = booster
    model["best_iteration"] = int(booster.best_iteration or num_boost_round)
    return model


def _features(model: dict, frame: pd.DataFrame, embed: Callable, oof: bool = False) -> np.ndarray:
    """(R, 5 + num_pca): effect, μ_model, σ_model, model code, log prompt tokens, PCA."""
    eff = model["effect"]
    uniq = sorted(set(frame["prompt"]))
    e = embed(uniq).astype(np.float64)
    effect = dict(zip(uniq, e @ eff["coef"] + eff["intercept"]))
    if oof:  # training rows use their out-of-fold effect: no row sees a fit on its own answers
        effect.update({p: eff["oof"][p] for p in uniq if p in eff["oof"]})
    pca = dict(zip(uniq, (e - eff["pca_mean"]) @ eff["pca_components"].T))
    mu_sd = [model["stats"].get(m, model["pooled"]) for m in frame["model"]]
    code = {m: i for i, m in enumerate(model["models"])}
    return np.column_stack([
        frame["prompt"].map(effect).to_numpy(np.float64),
        np.array([a for a, _ in mu_sd]), np.array([b for _, b in mu_sd]),
        np.array([code.get(m, -1) for m in frame["model"]], dtype=np.float64),
        np.log1p(frame["num_prompt_tokens"].to_numpy(np.float64)),
        np.stack([pca[p] for p in frame["prompt"]]),
    ])


def predict_step0(model: dict, frame: pd.DataFrame, embed: Callable) -> np.ndarray:
    """Predicted mean output tokens per row, (R,), clipped to [1, cap_tokens]."""
    pred = model["booster"].predict(_features(model, frame, embed), num_iteration=model["best_iteration"])
    return np.clip(pred, 1.0, model["cap_tokens"])


def _scores(t: np.ndarray, p: np.ndarray) -> dict[str, float]:
    from scipy.stats import kendalltau

    t, p = t.astype(np.float64), p.astype(np.float64)
    ss = float(np.sum((t - t.mean()) ** 2))
    return {"n": int(len(t)), "r2": 1.0 - float(np.sum((t - p) ** 2)) / ss if ss > 0 else float("nan"),
            "mae": float(np.mean(np.abs(t - p))),
            "tau": float(kendalltau(t, p).statistic) if len(t) >= 2 else float("nan")}


def score_step0(frame: pd.DataFrame, pred: np.ndarray, cap_tokens: int = 4096) -> dict[str, Any]:
    """Raw and capped R² / MAE / τ-b of ``pred`` (R,) against single samples (each of the 10
    lengths, 10 × R targets) and against 10-sample means; overall and per dataset."""
    sizes = np.stack(frame["output_sizes"].to_numpy()).astype(np.float64)  # (R, S)

    def block(mask: np.ndarray) -> dict[str, Any]:
        sz, pr = sizes[mask], pred[mask]
        single_t, single_p = sz.reshape(-1), np.repeat(pr, sz.shape[1])
        capped = np.minimum(sz, cap_tokens)
        return {"single": {"raw": _scores(single_t, single_p),
                           "capped": _scores(capped.reshape(-1), np.minimum(single_p, cap_tokens))},
                "mean10": {"raw": _scores(sz.mean(axis=1), pr),
                           "capped": _scores(capped.mean(axis=1), np.minimum(pr, cap_tokens))},
                "num_samples_at_or_above_cap": int(np.sum(sz >= cap_tokens))}

    ds = frame["dataset"].to_numpy()
    return {"overall": block(np.ones(len(frame), bool)),
            "per_dataset": {d: block(ds == d) for d in sorted(set(ds))}}


def run(root: str | Path, embed: Callable, *, ood_datasets: Sequence[str] = (), seed: int = 0,
        fractions: dict[str, float] | None = None, score_cap_tokens: int = 4096, **fit_kwargs) -> dict[str, Any]:
    """Split, fit in-domain (all datasets) and, if ``ood_datasets``, without them; score test.

    Raises:
        ValueError: an ``ood_datasets`` entry that is not a CASTILLO dataset (lists the valid ones).
    """
    frame = load_step0_frame(root)
    valid = sorted(set(frame["dataset"]))
    bad = [d for d in ood_datasets if d not in valid]
    if bad:
        raise ValueError(f"ood_datasets={list(ood_datasets)!r}: unknown {bad}; valid: {', '.join(valid)}")
    split = frame["prompt"].map(split_prompts(frame["prompt"], fractions or
                                              {"train": 0.8, "val": 0.1, "test": 0.1}, seed))
    parts = {s: frame[split == s] for s in SPLITS}
    out: dict[str, Any] = {"seed": seed, "rows": {s: len(f) for s, f in parts.items()},
                           "prompts": {s: int(f["prompt"].nunique()) for s, f in parts.items()}}
    t = time.process_time()
    model = fit_step0(parts["train"], parts["val"], embed, seed=seed, **fit_kwargs)
    out["in_domain"] = {"fit_cpu_s": time.process_time() - t, "r2_oof_prompt_effect": model["r2_oof"],
                        "best_iteration": model["best_iteration"],
                        "test": score_step0(parts["test"], predict_step0(model, parts["test"], embed),
                                            score_cap_tokens)}
    if ood_datasets:
        is_ood = {s: f["dataset"].isin(list(ood_datasets)) for s, f in parts.items()}
        t = time.process_time()
        m2 = fit_step0(parts["train"][~is_ood["train"]], parts["val"][~is_ood["val"]], embed, seed=seed,
                       **fit_kwargs)
        test_ood = parts["test"][is_ood["test"]]
        out["ood"] = {"datasets": list(ood_datasets), "fit_cpu_s": time.process_time() - t,
                      "best_iteration": m2["best_iteration"], "r2_oof_prompt_effect": m2["r2_oof"],
                      "trained_without": score_step0(test_ood, predict_step0(m2, test_ood, embed), score_cap_tokens),
                      "trained_with": score_step0(test_ood, predict_step0(model, test_ood, embed), score_cap_tokens),
                      "in_domain_rest_without": score_step0(parts["test"][~is_ood["test"]], predict_step0(
                          m2, parts["test"][~is_ood["test"]], embed), score_cap_tokens)}
    return out


def prompt_effects(prompts: Sequence[str], generators: Sequence[str], lengths: np.ndarray) -> pd.Series:
    """Per prompt: mean over answers of ``log L − mean_generator(log L)`` (the prompt effect).

    Args:
        prompts / generators / lengths: one entry per answer (lengths >= 1 tokens).
    """
    logl = np.log(np.maximum(np.asarray(lengths, dtype=np.float64), 1.0))
    m = pd.Series(logl).groupby(np.asarray(generators)).transform("mean").to_numpy()
    return pd.Series(logl - m).groupby(np.asarray(prompts)).mean()


def prompt_effect_transfer(
    target: pd.Series, extra: pd.Series, embed: Callable[[list[str]], np.ndarray], *,
    folds: int = 10, seeds: Sequence[int] = (0, 1, 2), extra_weight: float = 1.0,
    alphas: Sequence[float] = (0.1, 1.0, 10.0, 100.0, 1000.0),
) -> dict[str, Any]:
    """Do extra prompts (e.g. CASTILLO × 13 models) help the ridge prompt effect of a target
    corpus (e.g. alpaca_eval × 117 generators)? K-fold over the TARGET prompts: ridge fitted on
    the other folds alone vs on the other folds + all ``extra`` prompts (exact-text duplicates of
    target prompts removed), scored on the held-out fold (log-scale, per prompt).

    Returns:
        ``{"target_only": {...}, "with_extra": {...}, "num_extra": int}`` with, per variant,
        ``r2_oof`` (pooled over all target prompts, one per seed), its mean, and ``tau_oof``.
    """
    from scipy.stats import kendalltau
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import KFold

    extra = extra[~extra.index.isin(target.index)]
    tp = list(target.index)
    et = embed(tp).astype(np.float64)
    ee = embed(list(extra.index)).astype(np.float64)
    y = target.to_numpy(np.float64)
    out: dict[str, Any] = {"num_target": len(tp), "num_extra": int(len(extra)), "extra_weight": extra_weight}
    for name in ("target_only", "with_extra"):
        r2s, taus = [], []
        for seed in seeds:
            oof = np.empty(len(tp))
            for tr, te in KFold(n_splits=folds, shuffle=True, random_state=int(seed)).split(et):
                if name == "target_only":
                    x, yy, w = et[tr], y[tr], np.ones(len(tr))
                else:
                    x = np.vstack([et[tr], ee])
                    yy = np.concatenate([y[tr], extra.to_numpy(np.float64)])
                    w = np.concatenate([np.ones(len(tr)), np.full(len(ee), float(extra_weight))])
                oof[te] = RidgeCV(alphas=list(alphas)).fit(x, yy, sample_weight=w).predict(et[te])
            r2s.append(1.0 - float(np.sum((y - oof) ** 2) / np.sum((y - y.mean()) ** 2)))
            taus.append(float(kendalltau(y, oof).statistic))
        out[name] = {"r2_oof": r2s, "r2_oof_mean": float(np.mean(r2s)), "tau_oof": taus}
    out["r2_gain_per_seed"] = [b - a for a, b in zip(out["target_only"]["r2_oof"], out["with_extra"]["r2_oof"])]
    return out


def _table(res: dict[str, Any]) -> str:
    rows = [("unseen prompts, all 7 datasets (trained on all)", res["in_domain"]["test"]["overall"])]
    if "ood" in res:
        o = res["ood"]
        rows += [(f"OOD {'+'.join(o['datasets'])} test prompts, trained WITHOUT them", o["trained_without"]["overall"]),
                 ("same rows, trained WITH them", o["trained_with"]["overall"]),
                 ("other datasets' test prompts, trained without OOD", o["in_domain_rest_without"]["overall"])]
    out = ["| test rows | single R² raw / capped | single MAE raw | single τ | 10-mean R² raw / capped | 10-mean MAE | 10-mean τ |",
           "|---|---|---|---|---|---|---|"]
    for name, b in rows:
        s, m = b["single"], b["mean10"]
        out.append(f"| {name} | {s['raw']['r2']:.3f} / {s['capped']['r2']:.3f} | {s['raw']['mae']:.1f} | "
                   f"{s['raw']['tau']:.3f} | {m['raw']['r2']:.3f} / {m['capped']['r2']:.3f} | "
                   f"{m['raw']['mae']:.1f} | {m['raw']['tau']:.3f} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="../shared/data/castillo")
    ap.add_argument("--cache-dir", default="cache")
    ap.add_argument("--ood-datasets", default="", help="comma list, e.g. Apps,Mbpp,DS1000,BigCodeBench")
    ap.add_argument("--seeds", default="0", help="comma list of seeds (split + LightGBM)")
    ap.add_argument("--train-cap-tokens", type=int, default=4096,
                    help="training targets (and predictions) capped here; scores are raw and capped at 4,096")
    ap.add_argument("--num-threads", type=int, default=1, help="LightGBM threads")
    ap.add_argument("--out", default="outputs/castillo_step0")
    ap.add_argument("--alpaca-dir", default="", help="built alpaca_eval dataset (data/alpaca_eval): "
                    "also measure whether CASTILLO prompts help alpaca_eval's prompt effect")
    ap.add_argument("--extra-weight", type=float, default=1.0, help="ridge sample weight of each CASTILLO prompt")
    ap.add_argument("--transfer-datasets", default="", help="CASTILLO datasets used as extra prompts (default all)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    from elis.predictor.cache import EmbeddingCache
    from elis.predictor.encoder import TextEncoder

    enc = TextEncoder(model_name="sentence-transformers/all-MiniLM-L6-v2", pooling="mean", max_length=256,
                      prompt_budget_fraction=0.5, batch_size=32, num_threads=1)  # = conf/predictor/gbdt.yaml
    cache = EmbeddingCache(enc, args.cache_dir)

    def embed(ps: list[str]) -> np.ndarray:
        return cache.embed(ps, [""] * len(ps), progress=len(ps) > 64)

    ood = [d for d in args.ood_datasets.split(",") if d]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for seed in [int(s) for s in args.seeds.split(",") if s]:
        res = run(args.root, embed, ood_datasets=ood, seed=seed, num_threads=args.num_threads,
                  cap_tokens=args.train_cap_tokens)
        results[str(seed)] = res
        log.info("seed %d\n%s", seed, _table(res))
        (out / "metrics.json").write_text(json.dumps({"embedding": cache.stats(), "seeds": results},
                                                     indent=2, default=float))
        (out / "summary.md").write_text("\n".join(f"seed {s}\n\n{_table(r)}" for s, r in results.items()))
    if args.alpaca_dir:
        from elis.data.build import load_dataset_dir

        pairs, _, _ = load_dataset_dir(args.alpaca_dir)
        ap_ = pd.concat([pairs[s].to_pandas() for s in pairs], ignore_index=True)
        target = prompt_effects(ap_["prompt"], ap_["generator"], ap_["num_output_tokens"])
        cf = load_step0_frame(args.root)
        keep = [d for d in args.transfer_datasets.split(",") if d]
        if keep:
            cf = cf[cf["dataset"].isin(keep)]
        ss = _single_samples(cf)
        extra = prompt_effects(ss["prompt"], ss["generator"], ss["num_output_tokens"])
        tr = prompt_effect_transfer(target, extra, embed, extra_weight=args.extra_weight)
        tr["transfer_datasets"] = keep or "all"
        (out / "transfer.json").write_text(json.dumps(tr, indent=2))
        print(json.dumps({k: v for k, v in tr.items()}, indent=1))
    if results:
        print((out / "summary.md").read_text())


if __name__ == "__main__":
    main()
