"""Baselines fitted on the train split and scored on the same splits as the MLP head.

- ``mean_per_step`` / ``median_per_step``: the train split's mean/median remaining tokens at
  the query's step k (the step is known at serving time; the global mean would be weaker).
- ``prompt_length_linear``: least squares on [num_prompt_tokens, num_generated_tokens]
  (``sklearn.linear_model.LinearRegression``); its coefficients can configure
  ``elis.predictor.simple.PromptLengthPredictor``.
- ``ridge_embedding``: ``sklearn.linear_model.RidgeCV`` on the same cached embeddings plus
  log1p(num_generated_tokens), fitted on log1p(target) like the head's default transform.
Predictions are clipped at >= 0 tokens.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LinearRegression, RidgeCV


def _features(split: dict[str, np.ndarray]) -> np.ndarray:
    ngen = np.log1p(split["num_generated_tokens"].astype(np.float64))[:, None] / 10.0
    return np.hstack([split["emb"].astype(np.float64), ngen])


def fit_baselines(train: dict[str, np.ndarray]) -> dict[str, object]:
    """Fit all baselines; ``train`` holds arrays emb (N, D), step, num_prompt_tokens,
    num_generated_tokens, target (N,). Returns name → fitted object for ``predict_baseline``.
    Without ``emb`` (checkpoint evaluation embeds no train split) ``ridge_embedding`` is left out."""
    steps = train["step"]
    y = train["target"].astype(np.float64)
    per_step_mean = {int(k): float(y[steps == k].mean()) for k in np.unique(steps)}
    per_step_median = {int(k): float(np.median(y[steps == k])) for k in np.unique(steps)}
    lin = LinearRegression().fit(
        np.column_stack([train["num_prompt_tokens"], train["num_generated_tokens"]]).astype(float), y
    )
    out: dict[str, object] = {
        "mean_per_step": (per_step_mean, float(y.mean())),
        "median_per_step": (per_step_median, float(np.median(y))),
        "prompt_length_linear": lin,
    }
    if "emb" in train:
        out["ridge_embedding"] = RidgeCV(alphas=(0.1, 1.0, 10.0, 100.0)).fit(_features(train), np.log1p(y))
    return out


def predict_baseline(name: str, model: object, split: dict[str, np.ndarray]) -> np.ndarray:
    """Predicted remaining tokens (N,) float64, >= 0. Unseen steps fall back to the global value."""
    if name in ("mean_per_step", "median_per_step"):
        table, fallback = model  # type: ignore[misc]
        out = np.array([table.get(int(k), fallback) for k in split["step"]], dtype=np.float64)
    elif name == "prompt_length_linear":
        x = np.column_stack([split["num_prompt_tokens"], split["num_generated_tokens"]])
        out = model.predict(x.astype(float))  # type: ignore[attr-defined]
    elif name == "ridge_embedding":
        out = np.expm1(np.clip(model.predict(_features(split)), None, 20.0))  # type: ignore[attr-defined]
    else:
        raise ValueError(f"unknown baseline {name!r}")
    return np.clip(np.asarray(out, dtype=np.float64), 0.0, None)
