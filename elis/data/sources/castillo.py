"""CASTILLO (Perez-Ramirez et al., arXiv:2505.16881): 13 LLMs × 7 datasets, 10 sampled
output lengths per (prompt, model), from ``../shared/data/castillo``.

Two uses:

* ``CastilloSource`` yields (prompt, response) pairs from ``responses_test.jsonl.gz``: the
  longest and/or shortest of the 10 sampled responses of each (prompt, model) pair (only
  the test split ships response texts). Use it to evaluate a predictor on other models.
* ``load_castillo_lengths`` + ``length_stochasticity`` measure how much the output length of
  ONE prompt varies between samples (token counts in each model's own tokenizer): a floor
  on the error any prompt-only length predictor can reach.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from elis.data.schema import RawPair
from elis.data.sources.base import DropReport, SourceError
from elis.data.sources.rows import file_sha256, iter_json_objects, validated_pair

logger = logging.getLogger(__name__)

RESPONSE_CHOICES = ("longest", "shortest", "both")


def _require(path: Path) -> Path:
    if not path.is_file():
        raise SourceError(f"CASTILLO file {path} not found (set data.source.root; see ../shared/data/README.md)")
    return path


class CastilloSource:
    """Pairs from CASTILLO's test-split response texts.

    Args:
        root: folder with ``prompts.jsonl.gz`` and ``responses_test.jsonl.gz``.
        response: ``"longest"``, ``"shortest"`` or ``"both"`` of the 10 sampled responses.
            The generator is the model id (HF name); with ``"both"`` it gets a ``:longest``
            / ``:shortest`` suffix so (prompt, generator) stays unique.
        datasets: keep only these CASTILLO datasets (e.g. ``["Alpaca", "ShareGPT"]``); None: all.
        name: the ``source`` value written in every row.

    Raises:
        ValueError: for an unknown ``response`` (lists the valid ones).
        SourceError: (when read) for missing files.
    """

    def __init__(
        self,
        root: str | Path,
        response: str = "longest",
        datasets: list[str] | None = None,
        name: str = "castillo",
    ) -> None:
        if response not in RESPONSE_CHOICES:
            raise ValueError(f"castillo response={response!r}; valid: {', '.join(RESPONSE_CHOICES)}")
        self.root = Path(root)
        self.response = response
        self.datasets = None if datasets is None else {str(d) for d in datasets}
        self.name = name

    def _prompts(self, drops: DropReport) -> dict[str, str]:
        prompts: dict[str, str] = {}
        for lineno, row in iter_json_objects(_require(self.root / "prompts.jsonl.gz"), drops):
            if isinstance(row.get("prompt_id"), str) and "prompt_text" in row:
                prompts[row["prompt_id"]] = row["prompt_text"]
            else:
                drops.add("missing_field", f"prompts.jsonl.gz:{lineno} field=prompt_id/prompt_text")
        return prompts

    def iter_pairs(self, drops: DropReport) -> Iterator[RawPair]:
        prompts = self._prompts(drops)
        kinds = ("longest", "shortest") if self.response == "both" else (self.response,)
        path = _require(self.root / "responses_test.jsonl.gz")
        for lineno, row in iter_json_objects(path, drops):
            where = f"{path.name}:{lineno}"
            if self.datasets is not None and row.get("dataset") not in self.datasets:
                continue  # a configured subset, not bad data; counted in the manifest's rows
            pid = row.get("prompt_id")
            if pid not in prompts or "model" not in row:
                drops.add("missing_field", f"{where} field={'model' if pid in prompts else 'prompt_id'}")
                continue
            for kind in kinds:
                key = f"{kind}_response"
                if key not in row:
                    drops.add("missing_field", f"{where} field={key}")
                    continue
                model = row["model"]
                generator = f"{model}:{kind}" if self.response == "both" and isinstance(model, str) else model
                pair = validated_pair(
                    prompt_id=pid, prompt=prompts[pid], response=row[key], generator=generator,
                    source=self.name, drops=drops, where=f"{where} field={key}",
                )
                if pair is not None:
                    yield pair

    def provenance(self) -> dict:
        files = [_require(self.root / n) for n in ("prompts.jsonl.gz", "responses_test.jsonl.gz")]
        return {
            "source": self.name,
            "root": str(self.root.resolve()),
            "response": self.response,
            "datasets": sorted(self.datasets) if self.datasets else None,
            "files": {p.name: file_sha256(p) for p in files},
        }


def load_castillo_lengths(root: str | Path, split: str | None = None) -> pd.DataFrame:
    """The 10 sampled output lengths per (prompt, model) from ``lengths.jsonl.gz``.

    Returns:
        One row per (prompt, model): columns ``sample_id``, ``prompt_id``, ``dataset``,
        ``split``, ``model``, ``num_prompt_tokens`` (``input_size``), ``output_sizes``
        (array of 10 token counts, the model's own tokenizer), ``temp``, ``top_p``, ``top_k``.

    Raises:
        SourceError: if the file is missing or lacks a column; ValueError for an unknown split.
    """
    path = _require(Path(root) / "lengths.jsonl.gz")
    df = pd.read_json(path, lines=True, compression="gzip")
    need = ["sample_id", "prompt_id", "dataset", "split", "model", "input_size", "output_sizes", "temp", "top_p", "top_k"]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise SourceError(f"{path}: missing column(s) {missing}")
    if split is not None:
        valid = sorted(df["split"].unique())
        if split not in valid:
            raise ValueError(f"castillo split={split!r}; valid: {', '.join(valid)}")
        df = df[df["split"] == split]
    df = df[need].rename(columns={"input_size": "num_prompt_tokens"}).reset_index(drop=True)
    df["output_sizes"] = df["output_sizes"].map(lambda v: np.asarray(v, dtype=np.int64))
    return df


def length_stochasticity(lengths: pd.DataFrame) -> pd.DataFrame:
    """Per (prompt, model) spread of the sampled output lengths.

    Args:
        lengths: ``load_castillo_lengths`` output (needs ``output_sizes``).

    Returns:
        ``lengths`` plus columns ``num_samples``, ``output_mean_tokens``,
        ``output_std_tokens`` (population std, ddof=0), ``output_cv`` (std / mean; NaN
        when the mean is 0, counted by ``summarize_stochasticity``), ``output_range_tokens``
        (max − min) and ``output_max_over_min`` (max / max(min, 1)).
    """
    sizes = np.stack(lengths["output_sizes"].to_numpy()).astype(np.float64)  # (R, S)
    mean = sizes.mean(axis=1)
    std = sizes.std(axis=1)
    out = lengths.copy()
    out["num_samples"] = sizes.shape[1]
    out["output_mean_tokens"] = mean
    out["output_std_tokens"] = std
    with np.errstate(divide="ignore", invalid="ignore"):
        out["output_cv"] = np.where(mean > 0, std / np.where(mean > 0, mean, 1.0), np.nan)
    out["output_range_tokens"] = sizes.max(axis=1) - sizes.min(axis=1)
    out["output_max_over_min"] = sizes.max(axis=1) / np.maximum(sizes.min(axis=1), 1.0)
    return out


def summarize_stochasticity(stats: pd.DataFrame, by: str | None = "model") -> pd.DataFrame:
    """Median/mean CV and median max/min ratio, overall (``by=None``) or per group.

    Rows whose mean length is 0 (CV undefined) are counted in ``num_undefined_cv``.
    """
    def agg(g: pd.DataFrame) -> pd.Series:
        cv = g["output_cv"]
        return pd.Series({
            "num_pairs": len(g),
            "num_undefined_cv": int(cv.isna().sum()),
            "median_cv": float(cv.median()),
            "mean_cv": float(cv.mean()),
            "p90_cv": float(cv.quantile(0.9)),
            "median_max_over_min": float(g["output_max_over_min"].median()),
            "median_output_mean_tokens": float(g["output_mean_tokens"].median()),
        })

    if by is None:
        return agg(stats).to_frame("all").T
    return stats.groupby(by, sort=True).apply(agg, include_groups=False)
