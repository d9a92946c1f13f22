"""The ``generate`` source: answer prompts with one or more LLMs, then build as usual.

The ELIS paper (arXiv 2505.09142, §4) built its dataset by answering prompts with 13 LLMs;
this source does the same with any transformers model through the serving worker's
``HFWindowEngine`` (``elis.serving.workers.hf``). Selected with ``data=generate``
(``conf/data/generate.yaml``); ``build_dataset.py`` then tokenises, makes the iterative
samples and splits exactly as for the other sources.

* **Prompts**: JSONL(.gz) files or folders with a prompt id and a prompt field
  (e.g. ``elis/data/embedded/prompts.jsonl`` or ``../shared/data/sharegpt_prompts/`` with
  ``prompt_id_field: id``). Unusable prompt rows are counted in the ``DropReport``.
* **Batching**: continuous batching at window granularity: ``batch_size`` requests run a
  ``window_tokens`` window together; finished requests leave and waiting prompts join
  before the next window (the engine resumes from token ids, so this is exact).
* **Sampling**: each answer's tokens come from ``make_rng(seed, "sampling/<generator>/
  <prompt_id>/<position>")`` streams: an answer does not depend on its batch or on an
  interruption.
* **Resumable**: every finished answer is appended (and flushed) to an append-only JSONL
  cache, one per generator: ``<cache_dir>/<generator>.jsonl``. A rerun reads it and only
  answers the prompts that are missing; a torn last line (a killed run) is ignored and
  re-answered. Cached rows record generator, sampling parameters, seed, prompt and output
  token counts, the served output token ids (EOS excluded) and the finish reason.
* **Labels**: the pairs carry the served token ids, so ``build_dataset.py`` labels each answer
  with the number of tokens the model generated (not the count of its re-encoded text, which
  differs: see ``elis.data.schema.RawPair``) and cuts the iterative prefixes at served-token
  boundaries. Caches written before ids were stored give the served count only.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from elis.data.schema import RawPair
from elis.data.sources.base import DropReport, SourceError
from elis.data.sources.rows import file_sha256, iter_json_objects, resolve_files, validated_pair

log = logging.getLogger(__name__)


@dataclass(slots=True, frozen=True)
class GeneratorSpec:
    """One answering model.

    Attributes:
        name: the generator name written in every row (e.g. ``SmolLM2-135M-Instruct``).
        name_or_path: hub id or local folder (used when no GGUF is given).
        gguf_package, gguf_file: a GGUF shipped in an installed package (offline default).
        dtype, device: torch dtype name and device for the model.
    """

    name: str
    name_or_path: str = ""
    gguf_package: str | None = None
    gguf_file: str | None = None
    dtype: str = "float32"
    device: str = "cpu"


@dataclass(slots=True)
class PromptRow:
    prompt_id: str
    prompt: str


@dataclass(slots=True)
class GenerationStats:
    """Counts and timing of the last ``iter_pairs`` call, per generator."""

    num_cached: dict[str, int] = field(default_factory=dict)
    num_generated: dict[str, int] = field(default_factory=dict)
    num_output_tokens: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    num_torn_cache_lines: int = 0


class GenerateSource:
    """A ``Source`` whose answers are generated here (see the module docstring).

    Args:
        prompts: prompt file(s)/folder(s) (``.jsonl``/``.jsonl.gz``).
        generators: answering models (dicts with ``GeneratorSpec`` fields, or specs).
        cache_dir: folder of the append-only answer caches (one JSONL per generator).
        temperature, top_p, seed: sampling (temperature 0 → greedy).
        max_new_tokens: cap on each answer's tokens (finish_reason ``length`` when hit).
        window_tokens: tokens per engine window (continuous-batching granularity).
        batch_size: requests per window.
        prompt_field, prompt_id_field: field names in the prompt files.
        max_prompts: use only the first N valid prompts (None: all).
        name: the ``source`` value of every row.
        torch_threads: ``torch.set_num_threads`` for generation (None: leave as is).
        model_cache_dir: where dequantised GGUF models are cached (``<dir>/models/``);
            None → the parent of ``cache_dir``.

    Raises:
        SourceError: no generator, or a prompt path that does not exist.
        ValueError: non-positive sizes (names the field).
    """

    def __init__(
        self,
        prompts: str | Path | list,
        generators: Sequence[dict | GeneratorSpec],
        cache_dir: str | Path,
        temperature: float = 0.7,
        top_p: float = 0.9,
        seed: int = 0,
        max_new_tokens: int = 400,
        window_tokens: int = 50,
        batch_size: int = 8,
        prompt_field: str = "prompt",
        prompt_id_field: str | None = "prompt_id",
        max_prompts: int | None = None,
        name: str = "generate",
        torch_threads: int | None = None,
        model_cache_dir: str | Path | None = None,
    ) -> None:
        if not generators:
            raise SourceError("generate source: `generators` is empty; give at least one model")
        for key, value in (("max_new_tokens", max_new_tokens), ("window_tokens", window_tokens),
                           ("batch_size", batch_size)):
            if int(value) < 1:
                raise ValueError(f"generate source: {key} must be >= 1, got {value!r}")
        self.prompts = prompts
        self.generators = [g if isinstance(g, GeneratorSpec) else GeneratorSpec(**dict(g))
                           for g in generators]
        names = [g.name for g in self.generators]
        if len(set(names)) != len(names):
            raise SourceError(f"generate source: duplicate generator names {names}")
        self.cache_dir = Path(cache_dir)
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.seed = int(seed)
        self.max_new_tokens = int(max_new_tokens)
        self.window_tokens = int(window_tokens)
        self.batch_size = int(batch_size)
        self.prompt_field = prompt_field
        self.prompt_id_field = prompt_id_field
        self.max_prompts = max_prompts
        self.name = name
        self.torch_threads = torch_threads
        self.model_cache_dir = Path(model_cache_dir) if model_cache_dir else self.cache_dir.parent
        self.stats = GenerationStats()

    # ------------------------------------------------------------------ Source API
    def iter_pairs(self, drops: DropReport) -> Iterator[RawPair]:
        """Answer every prompt with every generator (cached answers are reused), then yield
        the pairs in prompt order, generator by generator."""
        prompts = self.read_prompts(drops)
        self.stats = GenerationStats()
        for spec in self.generators:
            rows = self.answer(spec, prompts)
            for p in prompts:
                row = rows[p.prompt_id]
                pair = validated_pair(prompt_id=p.prompt_id, prompt=p.prompt,
                                      response=row["response"], generator=spec.name,
                                      source=self.name, drops=drops,
                                      where=f"{self.cache_path(spec).name} prompt_id={p.prompt_id}",
                                      served_token_ids=row.get("output_token_ids"),
                                      num_served_tokens=row.get("num_output_tokens"))
                if pair is not None:
                    yield pair

    def provenance(self) -> dict:
        return {
            "source": self.name,
            "prompt_files": {str(p.resolve()): file_sha256(p) for p in resolve_files(self.prompts)},
            "generators": [asdict(g) for g in self.generators],
            "sampling": self.sampling_record(),
            "cache_files": [str(self.cache_path(g)) for g in self.generators],
            # answers in each cache under these settings when provenance was taken
            "num_cached_answers": {g.name: len(self.read_cache(g)) for g in self.generators},
            "last_run": asdict(self.stats) if self.stats.num_generated else None,
        }

    # ------------------------------------------------------------------ steps
    def sampling_record(self) -> dict:
        return {"temperature": self.temperature, "top_p": self.top_p, "seed": self.seed,
                "max_new_tokens": self.max_new_tokens, "window_tokens": self.window_tokens,
                "batch_size": self.batch_size, "chat_template": True,
                "sampling_stream": "elis.rng.make_rng(seed, 'sampling/<generator>/<prompt_id>/<position>')"}

    def read_prompts(self, drops: DropReport) -> list[PromptRow]:
        """Valid prompts in file order; unusable rows counted in ``drops``; a repeated prompt
        id is counted as ``duplicate_sample``."""
        out: list[PromptRow] = []
        seen: set[str] = set()
        for path in resolve_files(self.prompts):
            for lineno, row in iter_json_objects(path, drops):
                where = f"{path.name}:{lineno}"
                if self.prompt_field not in row or (self.prompt_id_field and self.prompt_id_field not in row):
                    missing = self.prompt_field if self.prompt_field not in row else self.prompt_id_field
                    drops.add("missing_field", f"{where} field={missing}")
                    continue
                # validate the prompt with the shared rules (a placeholder response passes)
                pair = validated_pair(prompt_id=row[self.prompt_id_field] if self.prompt_id_field else None,
                                      prompt=row[self.prompt_field], response="-", generator="-",
                                      source=self.name, drops=drops, where=where)
                if pair is None:
                    continue
                if pair.prompt_id in seen:
                    drops.add("duplicate_sample", f"{where} prompt_id={pair.prompt_id}")
                    continue
                seen.add(pair.prompt_id)
                out.append(PromptRow(pair.prompt_id, pair.prompt))
                if self.max_prompts is not None and len(out) >= int(self.max_prompts):
                    return out
        return out

    def cache_path(self, spec: GeneratorSpec) -> Path:
        return self.cache_dir / f"{spec.name.replace('/', '--')}.jsonl"

    def read_cache(self, spec: GeneratorSpec) -> dict[str, dict]:
        """Finished answers already in the cache, by prompt id (last one wins)."""
        path = self.cache_path(spec)
        done: dict[str, dict] = {}
        if not path.is_file():
            return done
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    self.stats.num_torn_cache_lines += 1
                    log.warning("%s: ignoring a torn line (interrupted write)", path)
                    continue
                if row.get("generator") == spec.name and row.get("sampling") == self._cache_key():
                    done[str(row["prompt_id"])] = row
        return done

    def _cache_key(self) -> dict:
        # answers are reused only under the same sampling settings and seed
        return {"temperature": self.temperature, "top_p": self.top_p, "seed": self.seed,
                "max_new_tokens": self.max_new_tokens}

    def answer(self, spec: GeneratorSpec, prompts: list[PromptRow]) -> dict[str, dict]:
        """Cached + newly generated answer rows for ``prompts`` by prompt id."""
        done = self.read_cache(spec)
        todo = [p for p in prompts if p.prompt_id not in done]
        self.stats.num_cached[spec.name] = len(prompts) - len(todo)
        log.info("generator %s: %d cached, %d to answer", spec.name, len(prompts) - len(todo), len(todo))
        start = time.perf_counter()
        if todo:
            engine, tokenizer = self._build_engine(spec)
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            with open(self.cache_path(spec), "a", encoding="utf-8") as f:
                for row in answer_prompts(engine, tokenizer, todo, spec.name, self.max_new_tokens,
                                          self.window_tokens, self.batch_size):
                    row["sampling"] = self._cache_key()
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
                    f.flush()
                    os.fsync(f.fileno())
                    done[row["prompt_id"]] = row
        self.stats.num_generated[spec.name] = len(todo)
        self.stats.seconds[spec.name] = time.perf_counter() - start
        self.stats.num_output_tokens[spec.name] = int(
            sum(done[p.prompt_id]["num_output_tokens"] for p in prompts))
        return done

    def _build_engine(self, spec: GeneratorSpec):
        from elis.serving.workers.hf import HFWindowEngine, SamplingParams, load_causal_lm

        if self.torch_threads:
            import torch

            torch.set_num_threads(int(self.torch_threads))
        model, tok = load_causal_lm(spec.name_or_path, cache_dir=self.model_cache_dir,
                                    gguf_package=spec.gguf_package, gguf_file=spec.gguf_file,
                                    dtype=spec.dtype, device=spec.device)
        sampling = SamplingParams(self.temperature, self.top_p, self.seed)
        return HFWindowEngine(model, tok, sampling), tok


def answer_prompts(
    engine: Any,
    tokenizer: Any,
    prompts: Sequence[PromptRow],
    generator: str,
    max_new_tokens: int,
    window_tokens: int,
    batch_size: int,
) -> Iterator[dict]:
    """Answer ``prompts`` with continuous batching at window granularity; yield one row per
    finished answer (in finishing order).

    Row fields: prompt_id, prompt, response (decoded without special tokens), generator,
    num_prompt_tokens (chat-templated), num_output_tokens (generated tokens, the EOS token
    excluded), output_token_ids (those tokens' ids, as served), finish_reason
    ('eos'|'length'), seconds (wall time from first to last token).
    """
    from elis.serving.workers.hf import WindowItem, encode_prompt

    waiting = list(prompts)[::-1]  # pop() takes the next prompt in order
    running: dict[str, dict] = {}
    try:
        from elis.progress import progress

        bar = progress(total=len(prompts), desc=f"answering with {generator}", unit="answer")
    except ImportError:  # pragma: no cover
        bar = None
    while waiting or running:
        while waiting and len(running) < batch_size:
            p = waiting.pop()
            running[p.prompt_id] = {"p": p, "ids": encode_prompt(tokenizer, p.prompt),
                                    "gen": [], "t0": None}
        items = [WindowItem(f"{generator}/{pid}", st["ids"], tuple(st["gen"]), window_tokens,
                            max_tokens=max_new_tokens) for pid, st in running.items()]
        for pid, out in zip(list(running), engine.run_window(items)):
            st = running[pid]
            st["gen"] += out.new_token_ids
            if st["t0"] is None and out.token_times_s:
                st["t0"] = out.token_times_s[0]
            if out.finished:
                gen = st["gen"]
                n_out = len(gen) - (1 if out.finish_reason == "eos" else 0)
                del running[pid]
                if bar is not None:
                    bar.update(1)
                yield {
                    "prompt_id": pid,
                    "prompt": st["p"].prompt,
                    "response": tokenizer.decode(gen[:n_out], skip_special_tokens=True),
                    "generator": generator,
                    "num_prompt_tokens": len(st["ids"]),
                    "num_output_tokens": n_out,
                    "output_token_ids": [int(t) for t in gen[:n_out]],
                    "finish_reason": out.finish_reason,
                    "seconds": round(out.token_times_s[-1] - st["t0"], 3) if out.token_times_s else 0.0,
                }
    if bar is not None:
        bar.close()


def export_answers(rows: Sequence[dict], path: str | Path, settings: dict) -> dict:
    """Write answer rows as ``.jsonl.gz`` (fields: prompt_id, prompt, response, generator,
    num_output_tokens, finish_reason, and output_token_ids where the rows have them) plus
    ``generation.json`` (``settings`` and counts) beside it. Deterministic bytes (gzip mtime
    0). Returns the summary written."""
    import gzip

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    keep = ("prompt_id", "prompt", "response", "generator", "num_output_tokens", "finish_reason")
    with gzip.GzipFile(path, "wb", mtime=0) as gz:
        for r in rows:
            row = {k: r[k] for k in keep} | ({"output_token_ids": r["output_token_ids"]}
                                               if "output_token_ids" in r else {})
            gz.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
    lengths = sorted(int(r["num_output_tokens"]) for r in rows)
    summary = dict(settings)
    summary.update({
        "file": path.name,
        "num_answers": len(rows),
        "num_finish_eos": sum(r["finish_reason"] == "eos" for r in rows),
        "num_finish_length": sum(r["finish_reason"] == "length" for r in rows),
        "num_output_tokens_total": int(sum(lengths)),
        "num_output_tokens_mean": round(sum(lengths) / max(len(lengths), 1), 2),
        "num_output_tokens_median": lengths[len(lengths) // 2] if lengths else 0,
        "num_output_tokens_min": lengths[0] if lengths else 0,
        "num_output_tokens_max": lengths[-1] if lengths else 0,
        "num_output_tokens_note": "generated tokens under the generator's tokenizer, EOS excluded",
    })
    (path.parent / "generation.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: Sequence[str] | None = None) -> dict:
    """``python -m elis.data.generate --prompts FILE --out FILE.jsonl.gz [...]``: answer a
    prompt file with SmolLM2-135M-Instruct (offline GGUF) and export the answers (this is
    how ``elis/data/embedded/smollm2_answers.jsonl.gz`` was made)."""
    import argparse

    from elis.serving.workers.hf import SMOLLM2_GGUF_FILE, SMOLLM2_GGUF_PACKAGE, SMOLLM2_HUB_ID, SMOLLM2_NAME

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--cache-dir", default="cache/generate")
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--top-p", type=float, default=0.9)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-new-tokens", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-prompts", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    spec = GeneratorSpec(SMOLLM2_NAME, SMOLLM2_HUB_ID, SMOLLM2_GGUF_PACKAGE, SMOLLM2_GGUF_FILE)
    src = GenerateSource(a.prompts, [spec], a.cache_dir, a.temperature, a.top_p, a.seed,
                         a.max_new_tokens, batch_size=a.batch_size, max_prompts=a.max_prompts,
                         torch_threads=a.threads)
    drops = DropReport()
    prompts = src.read_prompts(drops)
    rows = src.answer(spec, prompts)
    settings = {"generator": spec.name, "model": asdict(spec), **src.sampling_record(),
                "prompts_file": str(a.prompts), "num_prompt_rows_dropped": drops.to_dict(),
                "command": "python -m elis.data.generate " + " ".join(argv or os.sys.argv[1:]),
                "generation_seconds": round(src.stats.seconds[spec.name], 1)}
    summary = export_answers([rows[p.prompt_id] for p in prompts], a.out, settings)
    print(json.dumps({k: v for k, v in summary.items() if k.startswith("num_")}, indent=2))
    return summary


if __name__ == "__main__":
    main()
