"""Source loaders on tiny files written here: each bad-input reason, lmsys/jsonl/alpaca/castillo."""

from __future__ import annotations

import gzip
import json

import pandas as pd
import pytest
from data_factories import write_jsonl

from elis.data.sources.alpaca_eval import AlpacaEvalSource
from elis.data.sources.base import DropReport, SourceError
from elis.data.sources.castillo import (
    CastilloSource,
    length_stochasticity,
    load_castillo_lengths,
    summarize_stochasticity,
)
from elis.data.sources.jsonl import JsonlSource
from elis.data.sources.lmsys_chat import LmsysChatSource, first_exchange

GOOD = {"prompt_id": "p1", "prompt": "why sky blue", "response": "tell me", "generator": "g1"}


def _read(source) -> tuple[list, DropReport]:
    drops = DropReport()
    return list(source.iter_pairs(drops)), drops


def test_jsonl_each_bad_input_reason(tmp_path):
    rows = [
        GOOD,
        "{not json",                                              # malformed_json
        "[1, 2]",                                                 # malformed_json (not an object)
        "",                                                       # blank line: not a row
        GOOD | {"prompt_id": "p2", "prompt": "   \n"},            # empty_prompt
        GOOD | {"prompt_id": "p3", "response": ""},               # empty_response
        GOOD | {"prompt_id": "p4", "response": 42},               # non_string_field
        GOOD | {"prompt_id": "p5", "generator": None},            # non_string_field
        {"prompt_id": "p6", "prompt": "x", "generator": "g"},     # missing_field (response)
        GOOD | {"prompt_id": 7},                                  # int ids are fine
    ]
    path = write_jsonl(tmp_path / "a.jsonl.gz", rows)
    pairs, drops = _read(JsonlSource(paths=str(path)))
    assert [p.prompt_id for p in pairs] == ["p1", "7"]
    assert pairs[0].source == "jsonl" and pairs[0].generator == "g1"
    assert dict(drops.counts) == {"malformed_json": 2, "empty_prompt": 1, "empty_response": 1,
                                  "non_string_field": 2, "missing_field": 1}
    assert drops.examples["malformed_json"] == ["a.jsonl.gz:2", "a.jsonl.gz:3 (not an object)"]
    assert drops.examples["non_string_field"][0] == "a.jsonl.gz:7 field=response type=int"
    assert drops.examples["missing_field"] == ["a.jsonl.gz:9 field=response"]


def test_jsonl_field_mapping_default_generator_and_derived_ids(tmp_path):
    path = write_jsonl(tmp_path / "b.jsonl", [{"q": "why sky blue", "a": "yes"}, {"q": "what is two", "a": "no"}])
    src = JsonlSource(paths=[str(tmp_path)], prompt_field="q", response_field="a", generator_field=None,
                      prompt_id_field=None, default_generator="me", name="mine")
    pairs, drops = _read(src)
    assert drops.total == 0
    assert [p.generator for p in pairs] == ["me", "me"]
    import hashlib
    assert pairs[0].prompt_id == hashlib.sha1(b"why sky blue").hexdigest()[:16]
    assert src.provenance()["files"] == {str(path.resolve()): hashlib.sha256(path.read_bytes()).hexdigest()}


def test_jsonl_missing_paths_raise(tmp_path):
    with pytest.raises(SourceError, match="nope.jsonl"):
        _read(JsonlSource(paths=str(tmp_path / "nope.jsonl")))
    with pytest.raises(SourceError, match="holds no"):
        _read(JsonlSource(paths=str(tmp_path)))
    with pytest.raises(SourceError, match="default_generator"):
        JsonlSource(paths="x", generator_field=None)


def _conv(user: str, assistant: str) -> list[dict]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


LMSYS_ROWS = [
    {"conversation_id": "c1", "model": "vicuna-13b", "language": "English", "turn": 2,
     "conversation": _conv("why sky blue", "tell me") + _conv("and two", "no")},
    {"conversation_id": "c2", "model": "koala-13b", "language": "German", "turn": 1,
     "conversation": _conv("was ist", "nein")},
    {"conversation_id": "c3", "model": "vicuna-13b", "language": "English", "turn": 1,
     "conversation": [{"role": "user", "content": "hello"}]},
    {"conversation_id": "c4", "model": "alpaca-13b", "language": "English", "turn": 1,
     "conversation": _conv("what is two", "  ")},
    {"conversation_id": "c5", "model": "alpaca-13b", "language": "English", "turn": 1,
     "conversation": [{"role": "assistant", "content": "hi"}] + _conv("hello world", "yes")},
]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_lmsys_chat_local_file_first_turns(tmp_path, fmt):
    if fmt == "jsonl":
        path = write_jsonl(tmp_path / "lmsys.jsonl", LMSYS_ROWS)
    else:
        path = tmp_path / "lmsys.parquet"
        pd.DataFrame(LMSYS_ROWS).to_parquet(path)
    pairs, drops = _read(LmsysChatSource(path=str(path), languages=["English"]))
    assert [(p.prompt_id, p.prompt, p.response, p.generator) for p in pairs] == [
        ("c1", "why sky blue", "tell me", "vicuna-13b"),
        ("c5", "hello world", "yes", "alpaca-13b"),
    ]
    assert all(p.source == "lmsys_chat" for p in pairs)
    assert dict(drops.counts) == {"filtered_language": 1, "no_reply_turn": 1, "empty_response": 1}
    all_langs, _ = _read(LmsysChatSource(path=str(path), languages=None, max_conversations=2))
    assert [p.prompt_id for p in all_langs] == ["c1", "c2"]


def test_first_exchange():
    assert first_exchange(_conv("a", "b")) == ("a", "b")
    assert first_exchange([{"role": "user", "content": "a"}, {"role": "user", "content": "c"},
                           {"role": "assistant", "content": "b"}]) == ("a", "b")
    assert first_exchange("not a list") is None
    assert first_exchange([]) is None


def test_lmsys_hub_failure_names_the_fix(monkeypatch):
    import datasets

    def refuse(*args, **kwargs):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", refuse)
    with pytest.raises(SourceError, match="HF_TOKEN"):
        _read(LmsysChatSource())


def test_alpaca_eval_tiny_folder(tmp_path):
    folder = tmp_path / "model_outputs"
    folder.mkdir()
    row = {"generator": "m1", "instruction_id": 0, "dataset": "koala", "instruction": "why sky blue", "output": "yes"}
    write_jsonl(folder / "m1.jsonl.gz", [row, row | {"instruction_id": 1, "output": ""},
                                          {"generator": "m1", "instruction_id": 2, "instruction": "x"}])
    write_jsonl(folder / "m2.jsonl.gz", [row | {"generator": "m2", "output": "no"}])
    pairs, drops = _read(AlpacaEvalSource(root=tmp_path))
    assert [(p.prompt_id, p.generator, p.response) for p in pairs] == [("0", "m1", "yes"), ("0", "m2", "no")]
    assert dict(drops.counts) == {"empty_response": 1, "missing_field": 1}
    assert sorted(AlpacaEvalSource(root=tmp_path).provenance()["files"]) == ["m1.jsonl.gz", "m2.jsonl.gz"]
    with pytest.raises(SourceError, match="model_outputs"):
        _read(AlpacaEvalSource(root=tmp_path / "missing"))


def _write_castillo(root):
    root.mkdir()
    write_jsonl(root / "prompts.jsonl.gz", [{"prompt_id": "a", "prompt_text": "why sky blue"},
                                            {"prompt_id": "b", "prompt_text": "tell me"}])
    write_jsonl(root / "responses_test.jsonl.gz", [
        {"sample_id": "s1", "prompt_id": "a", "dataset": "Alpaca", "model": "org/m",
         "longest_response": "yes no yes", "shortest_response": "yes"},
        {"sample_id": "s2", "prompt_id": "b", "dataset": "Mbpp", "model": "org/m",
         "longest_response": "x y", "shortest_response": ""},
    ])
    lengths = [
        {"sample_id": "s1", "prompt_id": "a", "dataset": "Alpaca", "split": "test", "model": "org/m",
         "input_size": 5, "output_sizes": [10, 10, 10, 10, 10, 10, 10, 10, 10, 10],
         "temp": 0.7, "top_p": 0.8, "top_k": 20},
        {"sample_id": "s2", "prompt_id": "b", "dataset": "Mbpp", "split": "test", "model": "org/m",
         "input_size": 3, "output_sizes": [5, 15, 5, 15, 5, 15, 5, 15, 5, 15],
         "temp": 0.7, "top_p": 0.8, "top_k": 20},
    ]
    with gzip.open(root / "lengths.jsonl.gz", "wt") as f:
        f.write("\n".join(json.dumps(r) for r in lengths) + "\n")


def test_castillo_pairs_and_stochasticity(tmp_path):
    root = tmp_path / "castillo"
    _write_castillo(root)
    pairs, drops = _read(CastilloSource(root=root, response="both"))
    assert [(p.prompt_id, p.generator, p.response) for p in pairs] == [
        ("a", "org/m:longest", "yes no yes"), ("a", "org/m:shortest", "yes"), ("b", "org/m:longest", "x y")]
    assert dict(drops.counts) == {"empty_response": 1}
    only, _ = _read(CastilloSource(root=root, response="longest", datasets=["Mbpp"]))
    assert [(p.prompt_id, p.generator) for p in only] == [("b", "org/m")]
    with pytest.raises(ValueError, match="longest, shortest, both"):
        CastilloSource(root=root, response="median")

    stats = length_stochasticity(load_castillo_lengths(root))
    # s1: all 10 equal → CV 0; s2: mean 10, population std 5 → CV 0.5, max/min 3.
    assert stats["output_cv"].tolist() == [0.0, 0.5]
    assert stats["output_max_over_min"].tolist() == [1.0, 3.0]
    summary = summarize_stochasticity(stats, by=None)
    assert summary.loc["all", "median_cv"] == 0.25 and summary.loc["all", "num_pairs"] == 2
    with pytest.raises(ValueError, match="valid: test"):
        load_castillo_lengths(root, split="train")


def test_castillo_real_lengths(shared_data):
    df = load_castillo_lengths(shared_data / "castillo", split="test")
    assert len(df) == 14_121
    stats = length_stochasticity(df)
    assert (stats["num_samples"] == 10).all()
    assert 0.0 < stats["output_cv"].median() < 1.0


def test_alpaca_eval_real_counts(shared_data):
    pairs, drops = _read(AlpacaEvalSource(root=shared_data / "alpaca_eval"))
    assert len(pairs) + drops.total == 94_178
    assert len({p.generator for p in pairs}) == 117
    assert set(drops.counts) <= {"empty_response"}


def test_jsonl_glob_and_list_of_paths(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [GOOD])
    write_jsonl(tmp_path / "b.jsonl.gz", [GOOD | {"prompt_id": "p2"}])
    pairs, _ = _read(JsonlSource(paths=str(tmp_path / "*.jsonl*")))
    assert [p.prompt_id for p in pairs] == ["p1", "p2"]
    pairs, _ = _read(JsonlSource(paths=[str(tmp_path / "b.jsonl.gz"), str(tmp_path / "a.jsonl")]))
    assert [p.prompt_id for p in pairs] == ["p2", "p1"]
    with pytest.raises(SourceError, match="matches no file"):
        _read(JsonlSource(paths=str(tmp_path / "*.parquet")))
