"""``predictor=gbdt``: prompt effect + generator statistics + residual life + structure → LightGBM.

What it predicts: the remaining output tokens of a request after ``g`` generated tokens.
How (issue 9):

1. **Prompt effect.** Each distinct prompt is embedded ONCE by the frozen encoder
   (``EmbeddingCache``, step-0 text = the prompt alone). A ridge regression maps the embedding
   to the prompt's effect on log length, ``e_p = mean_g(log L_pg − m_g)`` (``m_g``: the
   generator's mean log length); in training it is fitted out-of-fold (5 prompt folds), so a
   training row never sees a prompt effect fitted on its own answer. A 16-component PCA of
   the embedding is kept as extra features.
2. **Generator statistics.** The served model is described by the location ``μ_g`` and scale
   ``σ_g`` of ``log L − e_p`` over its answers, not by an id. A model unseen in training gets
   them from its first ``min_answers`` finished answers (``observe_finished``: the serving
   frontend calls it as requests finish); until then the generator-agnostic booster is used
   (pooled statistics; it never reads generator features).
3. **Residual life.** With ``L ~ LogNormal(μ_g + e_p, σ_g)``, the mean residual life
   ``E[L − g | L > g]`` and survival ``P(L > g)`` (``lognormal_residual_life``) are features
   and the boosters' starting point (``init_score``): the trees learn a correction to the
   parametric backbone, so beyond the trained steps the prediction follows the backbone.
4. **Trees.** LightGBM on ``num_generated_tokens``, residual life, generator statistics,
   prompt effect, PCA, prompt length and the structural features of the partial answer
   (``elis.predictor.structural``): no re-encoding of the partial answer. Two boosters per
   mode (generator-aware / -agnostic): L2 on remaining tokens capped at ``cap_tokens`` (the
   mean) and L2 on log remaining tokens (the location of the predictive distribution).
5. **Predictive quantiles.** ``exp(log booster + r_k(q))`` where ``r_k(q)`` is the
   ``q``-quantile of the validation residuals of the log booster at step ``k`` (an
   empirical, per-step calibrated spread): ``predict_quantiles(queries, levels) -> (N, Q)``.

Saved artefact (``save``/``load``): a folder with ``meta.json`` (generator statistics, settings,
feature names), ``arrays.npz`` (ridge, PCA, residual quantile grids) and one LightGBM text
model per booster (``booster-<mode>-<kind>.txt``).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from elis.predictor.base import PredictionQuery, TimedPredictor
from elis.predictor.structural import STRUCTURAL_FEATURES, structural_features

log = logging.getLogger(__name__)

MODES: tuple[str, ...] = ("aware", "agnostic")
KINDS: tuple[str, ...] = ("mean", "log")
QUANTILE_GRID = np.linspace(0.005, 0.995, 199)
GENERATOR_FEATURES = ("gen_mu", "gen_sigma")


# ----------------------------------------------------------------------------- backbone
def lognormal_residual_life(
    mu: np.ndarray, sigma: np.ndarray, g: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Mean residual life ``E[L − g | L > g]`` and survival ``P(L > g)`` of ``L ~ LN(mu, sigma²)``.

    ``E[L | L > g] = exp(mu + σ²/2) Φ((mu + σ² − ln g)/σ) / Φ((mu − ln g)/σ)`` (computed in
    log space with ``log_ndtr``; ``g = 0`` gives the plain mean ``exp(mu + σ²/2)``). Example:
    mu=0, σ=1, g=1 → 1.6487·0.8413/0.5 − 1 = 1.7742.

    Args:
        mu, sigma: log-scale location and scale, broadcastable with ``g``; sigma > 0.
        g: tokens already generated (>= 0).

    Returns:
        ``(residual_tokens, survival)``, float64 arrays of the broadcast shape.
    """
    from scipy.special import log_ndtr

    mu = np.asarray(mu, dtype=np.float64)
    s = np.maximum(np.asarray(sigma, dtype=np.float64), 1e-3)
    g = np.asarray(g, dtype=np.float64)
    with np.errstate(divide="ignore"):
        lg = np.where(g > 0, np.log(np.maximum(g, 1e-300)), -np.inf)
    upper = log_ndtr((mu + s * s - lg) / s)
    surv_log = log_ndtr((mu - lg) / s)
    cond_mean = np.exp(mu + 0.5 * s * s + upper - surv_log)
    residual = np.maximum(cond_mean - g, 1.0)
    return residual, np.exp(surv_log)


# ----------------------------------------------------------------------------- generators
@dataclass(slots=True)
class GeneratorStats:
    """Running statistics of ``x = log L − prompt effect`` for one served model."""

    num_answers: int = 0
    sum_x: float = 0.0
    sum_x2: float = 0.0

    def add(self, x: float) -> None:
        self.num_answers += 1
        self.sum_x += x
        self.sum_x2 += x * x

    @property
    def mu(self) -> float:
        return self.sum_x / self.num_answers if self.num_answers else float("nan")

    @property
    def sigma(self) -> float:
        n = self.num_answers
        if n < 2:
            return float("nan")
        var = (self.sum_x2 - self.sum_x * self.sum_x / n) / (n - 1)
        return math.sqrt(max(var, 1e-6))

    def as_dict(self) -> dict:
        return {"num_answers": self.num_answers, "sum_x": self.sum_x, "sum_x2": self.sum_x2}


@dataclass(slots=True)
class GbdtLengthModel:
    """Everything ``GbdtPredictor`` needs, fitted by ``elis.predictor.gbdt_train.fit_gbdt``.

    Attributes:
        ridge_coef (D,), ridge_intercept: prompt embedding → prompt effect (log scale).
        pca_mean (D,), pca_components (P, D): embedding → P extra features.
        generators: training generators' statistics (``GeneratorStats``).
        pooled: statistics over all training answers (the generator-agnostic description).
        boosters: ``{(mode, kind): lightgbm.Booster}`` for mode in MODES, kind in KINDS.
        residual_quantiles: ``{mode: (K, len(QUANTILE_GRID))}`` log residuals per step.
        min_answers: answers a generator needs before the generator-aware booster is used.
        cap_tokens: training targets are capped here (runaway answers).
        window_tokens: W (maps g to the step of the residual quantile grid).
        encoder: the encoder kwargs (``TextEncoder``) whose embeddings the ridge reads.
    """

    ridge_coef: np.ndarray
    ridge_intercept: float
    pca_mean: np.ndarray
    pca_components: np.ndarray
    generators: dict[str, GeneratorStats]
    pooled: GeneratorStats
    boosters: dict = field(default_factory=dict)
    residual_quantiles: dict = field(default_factory=dict)
    min_answers: int = 20
    cap_tokens: int = 4096
    window_tokens: int = 50
    encoder: dict = field(default_factory=dict)

    # --------------------------------------------------------------- features
    def feature_names(self, mode: str) -> list[str]:
        """Column names of the design matrix of ``mode`` (aware adds GENERATOR_FEATURES)."""
        npca = int(self.pca_components.shape[0])
        gen = list(GENERATOR_FEATURES) if mode == "aware" else []
        return (["num_generated_tokens", "log_residual_life", "survival", "prompt_effect",
                 "log_prompt_chars", "chars_per_token"] + gen
                + [f"pca_{i}" for i in range(min(4, npca))] + list(STRUCTURAL_FEATURES)
                + [f"pca_{i}" for i in range(4, npca)])

    def prompt_features(self, emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, D) prompt embeddings → prompt effect (N,) and PCA features (N, P)."""
        emb = np.asarray(emb, dtype=np.float64)
        effect = emb @ self.ridge_coef + self.ridge_intercept
        pca = (emb - self.pca_mean) @ self.pca_components.T
        return effect, pca

    def design(
        self, mode: str, effect: np.ndarray, pca: np.ndarray, prompt_chars: np.ndarray,
        gen_mu: np.ndarray, gen_sigma: np.ndarray, g: np.ndarray, struct: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Design matrix (N, F) of ``mode`` and the backbone residual life (N,) in tokens.

        Args: per-row arrays; ``gen_mu``/``gen_sigma`` are the generator's statistics (the
        pooled ones for the agnostic mode), ``struct`` is ``structural_features`` (N, S).
        """
        if mode not in MODES:
            raise ValueError(f"mode={mode!r}; valid choices: {list(MODES)}")
        g = np.asarray(g, dtype=np.float64)
        rl, surv = lognormal_residual_life(gen_mu + effect, gen_sigma, g)
        chars = struct[:, 0].astype(np.float64)
        cols = [g, np.log(rl), surv, effect, np.log1p(prompt_chars),
                np.where(g > 0, chars / np.maximum(g, 1.0), 0.0)]
        if mode == "aware":
            cols += [gen_mu, gen_sigma]
        npca = pca.shape[1]
        cols += [pca[:, i] for i in range(min(4, npca))]
        cols += [struct[:, j].astype(np.float64) for j in range(struct.shape[1])]
        cols += [pca[:, i] for i in range(4, npca)]
        return np.column_stack(cols), rl

    # --------------------------------------------------------------- predict
    def predict_design(self, mode: str, x: np.ndarray, rl: np.ndarray) -> np.ndarray:
        """Mean remaining tokens (N,) = backbone + the mean booster's correction."""
        b = self.boosters[(mode, "mean")]
        return np.maximum(rl + b.predict(x, num_threads=1), 1.0)

    def predict_log_location(self, mode: str, x: np.ndarray, rl: np.ndarray) -> np.ndarray:
        """Log-scale location (N,) of the remaining tokens: log backbone + log booster."""
        b = self.boosters[(mode, "log")]
        return np.log(rl) + b.predict(x, num_threads=1)

    def quantiles_from_location(
        self, mode: str, loc: np.ndarray, g: np.ndarray, levels: Sequence[float]
    ) -> np.ndarray:
        """Quantiles (N, Q) of remaining tokens from log location and the step residual grid.

        Raises:
            ValueError: for a level outside (0, 1).
        """
        lv = np.asarray(levels, dtype=np.float64)
        if np.any((lv <= 0) | (lv >= 1)):
            raise ValueError(f"levels must lie in (0, 1), got {lv.tolist()}")
        grid = self.residual_quantiles[mode]  # (K, G)
        step = np.clip((np.asarray(g) // self.window_tokens).astype(int), 0, grid.shape[0] - 1)
        res = np.stack([np.interp(lv, QUANTILE_GRID, grid[k]) for k in range(grid.shape[0])])
        return np.maximum(np.exp(loc[:, None] + res[step]), 1.0)  # (N, Q)

    # --------------------------------------------------------------- persistence
    def save(self, path: str | Path) -> Path:
        """Write the artefact folder (see module doc); returns it."""
        d = Path(path)
        d.mkdir(parents=True, exist_ok=True)
        arrays = {"ridge_coef": self.ridge_coef, "pca_mean": self.pca_mean,
                  "pca_components": self.pca_components}
        arrays.update({f"residual_quantiles_{m}": q for m, q in self.residual_quantiles.items()})
        np.savez(d / "arrays.npz", **arrays)
        for (mode, kind), b in self.boosters.items():
            b.save_model(str(d / f"booster-{mode}-{kind}.txt"))
        meta = {
            "format": "elis-gbdt-v1",
            "ridge_intercept": self.ridge_intercept,
            "generators": {k: v.as_dict() for k, v in self.generators.items()},
            "pooled": self.pooled.as_dict(),
            "min_answers": self.min_answers, "cap_tokens": self.cap_tokens,
            "window_tokens": self.window_tokens, "encoder": self.encoder,
            "boosters": [list(k) for k in self.boosters],
            "feature_names": {m: self.feature_names(m) for m in MODES},
        }
        (d / "meta.json").write_text(json.dumps(meta, indent=2))
        return d

    @classmethod
    def load(cls, path: str | Path) -> GbdtLengthModel:
        """Read a folder written by ``save``.

        Raises:
            FileNotFoundError: if ``meta.json`` is missing.
        """
        import lightgbm as lgb

        d = Path(path)
        if not (d / "meta.json").is_file():
            raise FileNotFoundError(f"gbdt model folder {str(d)!r} has no meta.json")
        meta = json.loads((d / "meta.json").read_text())
        with np.load(d / "arrays.npz") as z:
            arrays = {k: z[k] for k in z.files}
        boosters = {(m, k): lgb.Booster(model_file=str(d / f"booster-{m}-{k}.txt"))
                    for m, k in meta["boosters"]}
        return cls(
            ridge_coef=arrays["ridge_coef"], ridge_intercept=float(meta["ridge_intercept"]),
            pca_mean=arrays["pca_mean"], pca_components=arrays["pca_components"],
            generators={k: GeneratorStats(**v) for k, v in meta["generators"].items()},
            pooled=GeneratorStats(**meta["pooled"]), boosters=boosters,
            residual_quantiles={m: arrays[f"residual_quantiles_{m}"] for m in MODES
                                if f"residual_quantiles_{m}" in arrays},
            min_answers=int(meta["min_answers"]), cap_tokens=int(meta["cap_tokens"]),
            window_tokens=int(meta["window_tokens"]), encoder=dict(meta["encoder"]),
        )


# ----------------------------------------------------------------------------- predictor
class GbdtPredictor(TimedPredictor):
    """The scheduler-facing ``LengthPredictor`` around a ``GbdtLengthModel``.

    Args:
        model: the fitted model.
        embed_prompts: ``list[str] -> (N, D)`` prompt embeddings (the ``EmbeddingCache`` of the
            model's encoder in serving; anything deterministic in tests).
        name: label in logs/results.

    Generator statistics start as the model's training statistics; ``observe_finished``
    adds finished answers (a model unseen in training switches from the agnostic to the
    aware booster once it has ``model.min_answers`` of them).
    """

    uses_text = True
    provides_quantiles = True

    def __init__(self, model: GbdtLengthModel, embed_prompts: Callable[[list[str]], np.ndarray],
                 name: str = "gbdt") -> None:
        super().__init__()
        self.model = model
        self.embed_prompts = embed_prompts
        self.name = name
        self.generators: dict[str, GeneratorStats] = {
            k: GeneratorStats(v.num_answers, v.sum_x, v.sum_x2) for k, v in model.generators.items()
        }
        self._prompt_memo: dict[str, tuple[float, np.ndarray]] = {}

    @classmethod
    def from_dir(
        cls, model_dir: str, cache_dir: str | None = None, name: str = "gbdt",
        train_command: str = "python train.py predictor=gbdt data=<dataset>",
        device: str = "cpu",
    ) -> GbdtPredictor:
        """Load the artefact in ``model_dir`` and its encoder (+ on-disk embedding cache).

        Raises:
            FileNotFoundError: naming the folder and the ``train_command`` that creates it.
        """
        from elis.predictor.cache import EmbeddingCache
        from elis.predictor.encoder import TextEncoder

        if not (Path(model_dir) / "meta.json").is_file():
            raise FileNotFoundError(
                f"gbdt predictor folder {str(model_dir)!r} has no meta.json; create it with: "
                f"{train_command}"
            )
        model = GbdtLengthModel.load(model_dir)
        enc = TextEncoder(**{**model.encoder, "device": device})
        cache = EmbeddingCache(enc, cache_dir)
        log.info("gbdt predictor from %s (encoder %s)", model_dir, enc.cache_key)
        pred = cls(model, lambda prompts: cache.embed(prompts, [""] * len(prompts)), name=name)
        pred.embedding_cache = cache  # for stats(): num_truncated etc. in metrics.json
        return pred

    def stats(self) -> dict:
        """``{"embedding": encoder counters + cache hits/key}`` when built with an
        ``EmbeddingCache`` (``from_dir``), else ``{}``."""
        cache = getattr(self, "embedding_cache", None)
        return {"embedding": cache.stats()} if cache is not None else {}

    # --------------------------------------------------------------- online statistics
    def _prompt(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        new = [p for p in dict.fromkeys(prompts) if p not in self._prompt_memo]
        if new:
            effect, pca = self.model.prompt_features(self.embed_prompts(new))
            for p, e, v in zip(new, effect, pca):
                self._prompt_memo[p] = (float(e), v)
        effect = np.array([self._prompt_memo[p][0] for p in prompts], dtype=np.float64)
        pca = np.stack([self._prompt_memo[p][1] for p in prompts])
        return effect, pca

    def observe_finished(self, prompt: str, generator: str | None, num_output_tokens: int) -> None:
        """Add one finished answer of ``generator`` to its statistics (ignored when ``None`` or
        ``num_output_tokens < 1``, which has no log length)."""
        if generator is None or num_output_tokens < 1:
            return
        effect, _ = self._prompt([prompt])
        self.generators.setdefault(generator, GeneratorStats()).add(
            math.log(num_output_tokens) - float(effect[0]))

    def generator_is_known(self, generator: str | None) -> bool:
        """Whether ``generator`` has at least ``min_answers`` answers (aware booster)."""
        s = self.generators.get(generator or "")
        return s is not None and s.num_answers >= max(self.model.min_answers, 2)

    # --------------------------------------------------------------- predictions
    def _designs(self, queries: Sequence[PredictionQuery]):
        prompts = [q.prompt for q in queries]
        effect, pca = self._prompt(prompts)
        struct = structural_features([q.partial_response for q in queries], prompts)
        g = np.array([q.num_generated_tokens for q in queries], dtype=np.float64)
        chars = np.array([len(p) for p in prompts], dtype=np.float64)
        known = np.array([self.generator_is_known(q.generator) for q in queries])
        pooled = self.model.pooled
        mu = np.array([self.generators[q.generator].mu if k else pooled.mu
                       for q, k in zip(queries, known)])
        sd = np.array([self.generators[q.generator].sigma if k else pooled.sigma
                       for q, k in zip(queries, known)])
        for mode, sel in (("aware", known), ("agnostic", ~known)):
            if sel.any():
                x, rl = self.model.design(mode, effect[sel], pca[sel], chars[sel], mu[sel],
                                          sd[sel], g[sel], struct[sel])
                yield mode, sel, x, rl, g[sel]

    def _predict(self, queries: Sequence[PredictionQuery]) -> np.ndarray:
        out = np.empty(len(queries), dtype=np.float64)
        for mode, sel, x, rl, _ in self._designs(queries):
            out[sel] = self.model.predict_design(mode, x, rl)
        return out

    def _predict_quantiles(self, queries: Sequence[PredictionQuery], levels: Sequence[float]) -> np.ndarray:
        """Quantiles of the remaining tokens, float64 (N, Q), non-decreasing along Q, >= 1
        (``TimedPredictor.predict_quantiles`` validates levels and output)."""
        out = np.empty((len(queries), len(levels)), dtype=np.float64)
        for mode, sel, x, rl, g in self._designs(queries):
            loc = self.model.predict_log_location(mode, x, rl)
            out[sel] = self.model.quantiles_from_location(mode, loc, g, levels)
        return out
