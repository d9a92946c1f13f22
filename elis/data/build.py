"""``python build_dataset.py data=<source>``: source → token labels → splits → dataset on disk.

Pipeline (each step logs what it did; every dropped row is counted under a named reason):

1. read ``RawPair``s from the source (``conf/data/<name>.yaml: source``), drop duplicate
   ``(source, prompt_id, generator)`` rows, apply the optional ``generators`` /
   ``max_pairs`` filters;
2. count tokens with the label tokenizer (``datasets.map(batched=True, num_proc=...)``);
   where the source knows what the model served (generated datasets store the served ids;
   the embedded answers the generator's own counts) that is the label instead, and the
   manifest's ``labels`` block counts each label source and the re-encoded-vs-served
   mismatch (``elis.data.lengths.label_report``); responses with 0 tokens are dropped
   (``empty_after_tokenize``). Steps 1-2 are cached
   under ``${paths.cache_dir}/labels/<key>/``, keyed by the source's provenance (file
   hashes), the tokenizer fingerprint and the filters, so a re-run skips them;
3. assign prompt-level splits (``elis.data.splits``), ``test_ood`` for held-out generators;
4. expand every pair into iterative samples (``elis.data.iterative``);
5. write ``pairs/``, ``iterative/`` (``DatasetDict.save_to_disk``) and ``manifest.json``
   into ``${paths.data_dir}/<name>/`` (built in a temporary sibling folder, then swapped in).
"""

from __future__ import annotations

import hashlib
import json
import logging
import resource
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np

from elis.data.iterative import IterativeExpander
from elis.data.lengths import (
    LabelTokenizer,
    ResponseTokenizer,
    count_unique_tokens,
    label_report,
    load_label_tokenizer,
)
from elis.data.schema import ITERATIVE_COLUMNS, OOD_SPLIT, PAIR_COLUMNS, SPLITS
from elis.data.sources.base import DropReport, Source, SourceError
from elis.data.splits import assign_splits, check_fractions

logger = logging.getLogger(__name__)

# Bump when the labelling code changes what it writes, to invalidate old label caches.
LABELS_VERSION = 2  # 2: labels from served token ids / counts where the source has them
# Below this many rows per worker, extra processes cost more than they save.
MIN_ROWS_PER_PROC = 2000
BUILD_COMMAND = "python build_dataset.py data=<name>"


class EmptyBuildError(RuntimeError):
    """The build kept no row (everything was dropped or filtered)."""


# ---------------------------------------------------------------------------------------
# Step 1-2: read, filter, label (cached)
# ---------------------------------------------------------------------------------------


def read_pairs(
    source: Source,
    drops: DropReport,
    generators: list[str] | None = None,
    max_pairs: int | None = None,
) -> tuple[dict[str, list], dict]:
    """Read the source into columns, dropping duplicates and applying the filters.

    Args:
        generators: keep only these generators (None: all). Unknown names raise.
        max_pairs: keep the first ``max_pairs`` pairs in source order (None: all).

    Returns:
        ``(columns, filters)``: PAIR_COLUMNS minus token counts, plus ``served_token_ids``
        (``[]`` when unknown) and ``num_served_tokens`` (-1 when unknown); ``filters`` counts
        the rows removed by each configured filter (not bad data, but reported).

    Raises:
        ValueError: unknown names in ``generators`` (lists the valid ones).
    """
    from elis.progress import progress

    cols: dict[str, list] = {k: [] for k in ("sample_id", "prompt_id", "prompt", "response", "generator", "source",
                                             "served_token_ids", "num_served_tokens")}
    seen: set[str] = set()
    wanted = None if generators is None else set(generators)
    all_generators: set[str] = set()
    filters = Counter()
    for pair in progress(source.iter_pairs(drops), desc=f"read {source.name}", unit="pairs", mininterval=2.0):
        sid = f"{pair.source}/{pair.prompt_id}/{pair.generator}"
        if sid in seen:
            drops.add("duplicate_sample", sid)
            continue
        seen.add(sid)
        all_generators.add(pair.generator)
        if wanted is not None and pair.generator not in wanted:
            filters["not_in_generators"] += 1
            continue
        if max_pairs is not None and len(cols["sample_id"]) >= max_pairs:
            filters["over_max_pairs"] += 1
            continue
        cols["sample_id"].append(sid)
        for k in ("prompt_id", "prompt", "response", "generator", "source"):
            cols[k].append(getattr(pair, k))
        # what the model served, when the source knows it ([] / -1: unknown, re-encode the text)
        served_ids = getattr(pair, "served_token_ids", None)
        served_count = getattr(pair, "num_served_tokens", None)
        cols["served_token_ids"].append(list(served_ids) if served_ids is not None else [])
        cols["num_served_tokens"].append(len(served_ids) if served_ids is not None
                                         else (served_count if served_count is not None else -1))
    if wanted is not None:
        unknown = sorted(wanted - all_generators)
        if unknown:
            raise ValueError(
                f"data.generators has unknown generator(s) {unknown}; valid: {', '.join(sorted(all_generators))}"
            )
    return cols, dict(filters)


def _num_proc(num_rows: int, num_proc: int | None) -> int | None:
    if not num_proc or num_proc <= 1 or num_rows < MIN_ROWS_PER_PROC * 2:
        return None
    return int(min(num_proc, num_rows // MIN_ROWS_PER_PROC))


def label_pairs(cols: dict[str, list], tok: LabelTokenizer, drops: DropReport, num_proc: int | None):
    """Add ``num_prompt_tokens``, ``num_output_tokens``, ``response_token_ids``; drop L == 0.

    L is the number of tokens the model served where the source knows it (served ids, else
    the generator's own count), else the count of the re-encoded text (``ResponseTokenizer``).

    Returns:
        ``datasets.Dataset`` with PAIR_COLUMNS + ``response_token_ids``,
        ``num_reencoded_tokens`` and ``label_source``.
    """
    import datasets

    counts = count_unique_tokens(tok.tokenizer, cols["prompt"])
    cols = {"served_token_ids": [[]] * len(cols["prompt"]), "num_served_tokens": [-1] * len(cols["prompt"])} | cols
    features = datasets.Features(
        {k: datasets.Value("string") for k in cols if k not in ("served_token_ids", "num_served_tokens")}
        | {"served_token_ids": datasets.Sequence(datasets.Value("int64")),
           "num_served_tokens": datasets.Value("int64"), "num_prompt_tokens": datasets.Value("int64")})
    ds = datasets.Dataset.from_dict(cols | {"num_prompt_tokens": [counts[p] for p in cols["prompt"]]},
                                    features=features)
    ds = ds.map(
        ResponseTokenizer(tok.tokenizer),
        batched=True,
        batch_size=1000,
        num_proc=_num_proc(len(ds), num_proc),
        desc="tokenize responses",
        new_fingerprint=f"labels-{tok.fingerprint[:16]}-{len(ds)}",
        remove_columns=["served_token_ids", "num_served_tokens"],
    )
    lengths = _col(ds, "num_output_tokens")
    empty = np.flatnonzero(lengths == 0)
    for i in empty:
        drops.add("empty_after_tokenize", cols["sample_id"][i])
    if empty.size:
        ds = ds.select(np.flatnonzero(lengths > 0))
    return ds


def labels_cache_key(provenance: dict, tok: LabelTokenizer, generators, max_pairs) -> str:
    """sha256 over what determines the labelled pairs (source files, tokenizer, filters)."""
    blob = json.dumps(
        {"v": LABELS_VERSION, "provenance": provenance, "tokenizer": tok.fingerprint,
         "generators": sorted(generators) if generators is not None else None, "max_pairs": max_pairs},
        sort_keys=True, default=str,
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:24]


def labelled_pairs(
    source: Source,
    tok: LabelTokenizer,
    cache_dir: Path | None,
    generators: list[str] | None,
    max_pairs: int | None,
    num_proc: int | None,
):
    """Steps 1-2 with the on-disk cache. Returns ``(dataset, drops, filters, info)``."""
    import datasets

    provenance = source.provenance()
    key = labels_cache_key(provenance, tok, generators, max_pairs)
    folder = None if cache_dir is None else Path(cache_dir) / key
    meta_path = None if folder is None else folder / "labels_meta.json"
    if meta_path is not None and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        drops = DropReport(counts=Counter(meta["drops"]["counts"]), examples=meta["drops"]["examples"])
        logger.info("reusing cached token labels %s", folder)
        ds = datasets.load_from_disk(str(folder / "dataset"))
        return ds, drops, meta["filters"], {"cache_key": key, "cache_hit": True, "provenance": provenance}
    drops = DropReport()
    t0 = time.perf_counter()
    cols, filters = read_pairs(source, drops, generators, max_pairs)
    logger.info("read %d pairs from %s in %.1f s (%d dropped)", len(cols["sample_id"]), source.name,
                time.perf_counter() - t0, drops.total)
    if not cols["sample_id"]:
        raise EmptyBuildError(f"source {source.name!r} yielded no usable pair; drops: {drops.to_dict()}; filters: {filters}")
    ds = label_pairs(cols, tok, drops, num_proc)
    if folder is not None:
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        ds.save_to_disk(str(tmp / "dataset"))
        (tmp / "labels_meta.json").write_text(json.dumps({"drops": drops.to_dict(), "filters": filters}, indent=1))
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
        ds = datasets.load_from_disk(str(folder / "dataset"))  # memory-mapped from here on
    return ds, drops, filters, {"cache_key": key, "cache_hit": False, "provenance": provenance}


# ---------------------------------------------------------------------------------------
# Step 3-5: split, expand, write
# ---------------------------------------------------------------------------------------


def _features(columns: dict[str, str]):
    """``datasets.Features`` from a schema dict whose descriptions start with the dtype."""
    import datasets

    return datasets.Features({c: datasets.Value("int64" if d.startswith("int64") else "string")
                              for c, d in columns.items()})


def _length_stats(values) -> dict:
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {"num": 0}
    return {
        "num": int(v.size),
        "mean": round(float(v.mean()), 2),
        "median": float(np.median(v)),
        "p90": round(float(np.percentile(v, 90)), 1),
        "p99": round(float(np.percentile(v, 99)), 1),
        "max": int(v.max()),
    }


def _counts(values) -> dict[str, int]:
    return {str(k): int(v) for k, v in sorted(Counter(values).items())}


def _col(ds, name: str) -> np.ndarray:
    """A column as a numpy array (via Arrow: ~10x faster than iterating a ``Column``)."""
    return np.asarray(ds.with_format("arrow")[name].to_numpy(zero_copy_only=False))


def describe(pairs, iterative) -> dict:
    """Counts and length statistics read back from the written DatasetDicts."""
    out: dict = {"pairs": {}, "iterative": {}}
    for split, ds in pairs.items():
        out["pairs"][split] = {
            "num_rows": ds.num_rows,
            "num_prompts": len(set(_col(ds, "prompt_id"))),
            "rows_per_generator": _counts(_col(ds, "generator")),
            "num_output_tokens": _length_stats(_col(ds, "num_output_tokens")),
            "num_prompt_tokens": _length_stats(_col(ds, "num_prompt_tokens")),
        }
    for split, ds in iterative.items():
        out["iterative"][split] = {
            "num_rows": ds.num_rows,
            "rows_per_step": _counts(_col(ds, "step")),
            "num_remaining_tokens": _length_stats(_col(ds, "num_remaining_tokens")),
        }
    return out


def _peak_rss_gib() -> dict:
    self_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"self": round(self_kib / 2**20, 3), "largest_child": round(child_kib / 2**20, 3)}


def build_dataset(
    source: Source,
    tok: LabelTokenizer,
    out_dir: str | Path,
    *,
    window_tokens: int = 50,
    num_steps: int = 8,
    split_fractions: dict[str, float] | None = None,
    holdout_generators: list[str] | None = None,
    generators: list[str] | None = None,
    max_pairs: int | None = None,
    num_proc: int | None = None,
    labels_cache_dir: str | Path | None = None,
    config: dict | None = None,
) -> dict:
    """Build the dataset into ``out_dir`` (replacing it) and return the manifest.

    Args:
        source: a built ``Source``.
        tok: the label tokenizer (``load_label_tokenizer``).
        out_dir: ``${paths.data_dir}/<name>``.
        window_tokens, num_steps: W and K of the iterative expansion (paper: 50, 8 here).
        split_fractions: ``{train, val, test}`` summing to 1 (default 0.8/0.1/0.1).
        holdout_generators: generators moved whole to ``test_ood``.
        generators, max_pairs: optional subset filters (see ``read_pairs``).
        num_proc: worker processes for ``datasets.map`` (None/1: in-process).
        labels_cache_dir: where labelled pairs are cached (None: no cache).
        config: the resolved config, recorded in the manifest.

    Raises:
        ValueError: bad fractions, unknown generator names (lists the valid ones).
        SourceError: unreadable source. EmptyBuildError: nothing kept.
    """
    import datasets

    t0 = time.perf_counter()
    fractions = check_fractions(split_fractions or {"train": 0.8, "val": 0.1, "test": 0.1})
    IterativeExpander(None, window_tokens, num_steps)  # validates W and K before any work
    ds, drops, filters, info = labelled_pairs(source, tok, labels_cache_dir, generators, max_pairs, num_proc)
    if ds.num_rows == 0:
        raise EmptyBuildError(f"every pair was dropped; drops: {drops.to_dict()}")
    gens = _col(ds, "generator")
    held = list(holdout_generators or [])
    unknown = sorted(set(held) - set(gens))
    if unknown:
        raise ValueError(
            f"data.holdout_generators has unknown generator(s) {unknown}; valid: {', '.join(sorted(set(gens)))}"
        )
    split_col = np.asarray(assign_splits(_col(ds, "prompt"), gens, fractions, held))
    labels = label_report(_col(ds, "label_source"), _col(ds, "num_output_tokens"), _col(ds, "num_reencoded_tokens"))
    rvs = labels["reencode_vs_served"]
    logger.info("labels: %s; re-encoded vs served tokens differ for %d of %d answers", labels["label_source"],
                rvs["num_mismatch"], rvs["num_compared"])
    split_names = list(SPLITS) + ([OOD_SPLIT] if held else [])

    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.building")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    expander = IterativeExpander(tok.tokenizer, window_tokens, num_steps)
    pair_dict, iter_dict = {}, {}
    for split in split_names:
        part = ds.select(np.flatnonzero(split_col == split))
        if part.num_rows == 0:
            logger.warning("split %s is empty", split)
        pair_dict[split] = part.select_columns(list(PAIR_COLUMNS))
        if part.num_rows == 0:  # map on 0 rows yields 0 columns: write the typed empty table
            iter_dict[split] = datasets.Dataset.from_dict({c: [] for c in ITERATIVE_COLUMNS},
                                                          features=_features(ITERATIVE_COLUMNS))
            continue
        iter_dict[split] = part.map(
            expander,
            batched=True,
            batch_size=500,
            remove_columns=part.column_names,
            num_proc=_num_proc(part.num_rows, num_proc),
            cache_file_name=str(tmp / "map_cache" / f"iterative-{split}.arrow"),
            new_fingerprint=f"iter-{info['cache_key']}-{split}-{window_tokens}-{num_steps}",
            desc=f"iterative samples ({split})",
            features=_features(ITERATIVE_COLUMNS),
        ).select_columns(list(ITERATIVE_COLUMNS))
    pairs = datasets.DatasetDict(pair_dict)
    iterative = datasets.DatasetDict(iter_dict)
    # datasets cannot reload a 0-row split saved with 0 shards: give empty splits one shard.
    pairs.save_to_disk(str(tmp / "pairs"), num_shards={s: 1 for s, d in pairs.items() if d.num_rows == 0})
    iterative.save_to_disk(str(tmp / "iterative"), num_shards={s: 1 for s, d in iterative.items() if d.num_rows == 0})
    del pairs, iterative, iter_dict, pair_dict
    shutil.rmtree(tmp / "map_cache", ignore_errors=True)

    # Describe what was written, read back from disk (the manifest counts are the rows written).
    written_pairs = datasets.load_from_disk(str(tmp / "pairs"))
    written_iter = datasets.load_from_disk(str(tmp / "iterative"))
    stats = describe(written_pairs, written_iter)
    all_lengths = np.concatenate([_col(written_pairs[s], "num_output_tokens") for s in split_names])
    manifest = {
        "name": out_dir.name,
        "num_pairs": int(sum(d.num_rows for d in written_pairs.values())),
        "num_iterative_rows": int(sum(d.num_rows for d in written_iter.values())),
        "num_generators": len(set(gens)),
        "num_prompts": len(set(_col(ds, "prompt_id"))),
        "window_tokens": window_tokens,
        "num_steps": num_steps,
        "split_fractions": fractions,
        "holdout_generators": held,
        "splits": split_names,
        "rows_per_split": {s: {"pairs": stats["pairs"][s]["num_rows"], "iterative": stats["iterative"][s]["num_rows"]}
                           for s in split_names},
        "rows_per_step": {s: stats["iterative"][s]["rows_per_step"] for s in split_names},
        "rows_per_generator": _counts(gens),
        "num_output_tokens": _length_stats(all_lengths),
        "per_split": stats,
        "drops": drops.to_dict(),
        "filters": filters,
        "label_tokenizer": tok.to_dict(),
        "labels": labels,
        "provenance": info["provenance"],
        "labels_cache": {"key": info["cache_key"], "hit": info["cache_hit"]},
        "config": config,
        "wall_time_s": round(time.perf_counter() - t0, 2),
        "peak_rss_gib": _peak_rss_gib(),
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1, default=str))
    del written_pairs, written_iter
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    logger.info("wrote %s: %d pairs, %d iterative rows in %.1f s", out_dir, manifest["num_pairs"],
                manifest["num_iterative_rows"], manifest["wall_time_s"])
    return manifest


# ---------------------------------------------------------------------------------------
# Entry point and consumers
# ---------------------------------------------------------------------------------------


def _resolved(cfg) -> dict:
    from omegaconf import OmegaConf

    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # e.g. ${hydra:...} outside a Hydra run
        return {k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k]
                for k in cfg if k not in ("paths",)}


def run(cfg) -> dict:
    """Build ``${paths.data_dir}/${data.name}`` from ``cfg.data`` (see module docstring).

    Config keys used: ``data.{name, source, label_tokenizer, window_tokens, num_steps,
    split_fractions, holdout_generators, generators, max_pairs, num_proc}``,
    ``paths.{data_dir, cache_dir}``.

    Returns:
        the manifest (also written to ``<data_dir>/<name>/manifest.json``).
    """
    from hydra.utils import instantiate

    d = cfg.data
    source = instantiate(d.source)
    if not isinstance(source, Source):
        raise SourceError(f"data.source built {type(source).__name__}, which is not a Source (needs name, iter_pairs, provenance)")
    logger.info("data=%s: source %s (%s)", d.name, source.name, type(source).__name__)
    lt = d.label_tokenizer
    tok = load_label_tokenizer(lt.name_or_path, gguf_package=lt.get("gguf_package"), gguf_file=lt.get("gguf_file"),
                               cache_dir=lt.get("cache_dir"))
    logger.info("label tokenizer: %s (%s)", tok.name, tok.origin)
    return build_dataset(
        source,
        tok,
        Path(cfg.paths.data_dir) / d.name,
        window_tokens=int(d.window_tokens),
        num_steps=int(d.num_steps),
        split_fractions=dict(d.split_fractions),
        holdout_generators=list(d.get("holdout_generators") or []),
        generators=list(d.generators) if d.get("generators") is not None else None,
        max_pairs=int(d.max_pairs) if d.get("max_pairs") is not None else None,
        num_proc=d.get("num_proc"),
        labels_cache_dir=Path(cfg.paths.cache_dir) / "labels",
        config=_resolved(cfg),
    )


def load_dataset_dir(path: str | Path):
    """Load a built dataset: ``(pairs: DatasetDict, iterative: DatasetDict, manifest: dict)``.

    Raises:
        FileNotFoundError: when ``path`` (or a part of it) is missing; names the build command.
    """
    import datasets

    p = Path(path)
    missing = [n for n in ("pairs", "iterative", "manifest.json") if not (p / n).exists()]
    if missing:
        raise FileNotFoundError(
            f"dataset folder {p} is missing {', '.join(missing)}; build it with "
            f"`python build_dataset.py data={p.name}` (or data=<config> whose name is {p.name!r})"
        )
    manifest = json.loads((p / "manifest.json").read_text())
    return datasets.load_from_disk(str(p / "pairs")), datasets.load_from_disk(str(p / "iterative")), manifest


def format_summary(manifest: dict) -> str:
    """A short plain-text table of a manifest (printed by ``build_dataset.py``)."""
    splits = manifest["splits"]
    steps = sorted({int(k) for s in splits for k in manifest["rows_per_step"][s]})
    lines = [
        f"dataset {manifest['name']}: {manifest['num_pairs']:,} pairs, {manifest['num_prompts']:,} prompts, "
        f"{manifest['num_generators']} generators, {manifest['num_iterative_rows']:,} iterative rows "
        f"(W={manifest['window_tokens']}, K={manifest['num_steps']})",
        f"{'split':<9}{'pairs':>10}{'iterative':>11}" + "".join(f"{'k=' + str(k):>9}" for k in steps),
    ]
    for s in splits:
        per_step = manifest["rows_per_step"][s]
        lines.append(f"{s:<9}{manifest['rows_per_split'][s]['pairs']:>10,}{manifest['rows_per_split'][s]['iterative']:>11,}"
                     + "".join(f"{per_step.get(str(k), 0):>9,}" for k in steps))
    st = manifest["num_output_tokens"]
    lines.append(f"output tokens: mean {st['mean']} median {st['median']} p90 {st['p90']} p99 {st['p99']} max {st['max']}")
    drops = manifest["drops"]["counts"]
    lines.append("dropped: " + (", ".join(f"{k}={v}" for k, v in sorted(drops.items())) or "none")
                 + (f"; filtered: {manifest['filters']}" if manifest["filters"] else ""))
    rss = manifest["peak_rss_gib"]
    lines.append(f"wall {manifest['wall_time_s']} s, peak RSS {rss['self']} GiB (largest worker {rss['largest_child']} GiB), "
                 f"labels cache {'hit' if manifest['labels_cache']['hit'] else 'miss'}")
    return "\n".join(lines)
