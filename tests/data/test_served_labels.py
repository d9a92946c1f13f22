"""Token labels count what the model served (issue 11 item 13), re-encoding only as a fallback."""

from __future__ import annotations

import json

from data_factories import words, write_jsonl

from elis.data.build import load_dataset_dir, run
from elis.data.lengths import ResponseTokenizer, label_report
from elis.data.sources.base import DropReport
from elis.data.sources.jsonl import JsonlSource


def test_response_tokenizer_prefers_served_ids_then_counts(word_tokenizer):
    tok = word_tokenizer.tokenizer
    ids5 = tok(words(5), add_special_tokens=False)["input_ids"]
    batch = {"response": [words(5), words(5), words(5)],
             "served_token_ids": [ids5 + [0, 0], [], []],  # 2 invisible ([UNK]) tokens served
             "num_served_tokens": [7, 9, -1]}
    out = ResponseTokenizer(tok)(batch)
    assert out["num_output_tokens"] == [7, 9, 5]
    assert out["num_reencoded_tokens"] == [5, 5, 5]
    assert out["label_source"] == ["served_ids", "served_count", "reencoded_text"]
    assert out["response_token_ids"][0] == ids5 + [0, 0] and out["response_token_ids"][1] == ids5
    # Without served columns (text-only sources) the labels are the re-encoded counts.
    assert ResponseTokenizer(tok)({"response": [words(3)]})["num_output_tokens"] == [3]
    rep = label_report(out["label_source"], out["num_output_tokens"], out["num_reencoded_tokens"])
    assert rep == {"label_source": {"served_ids": 1, "served_count": 1, "reencoded_text": 1},
                   "reencode_vs_served": {"num_compared": 2, "num_mismatch": 2, "mismatch_rate": 1.0,
                                          "diff_min": -4, "diff_max": -2, "diff_mean_abs": 3.0}}
    none = label_report(["reencoded_text"], [3], [3])["reencode_vs_served"]
    assert none["num_compared"] == 0 and none["mismatch_rate"] is None


def test_jsonl_served_fields_validated_and_counted(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [
        {"prompt_id": "1", "prompt": "p one", "response": "r", "generator": "g", "n": 3, "ids": [4, 5, 6]},
        {"prompt_id": "2", "prompt": "p two", "response": "r", "generator": "g", "n": 2, "ids": [4, 5, 6]},
        {"prompt_id": "3", "prompt": "p three", "response": "r", "generator": "g", "n": -1},
        {"prompt_id": "4", "prompt": "p four", "response": "r", "generator": "g"},
    ])
    drops = DropReport()
    src = JsonlSource(path, num_output_tokens_field="n", output_token_ids_field="ids")
    pairs = list(src.iter_pairs(drops))
    assert [(p.prompt_id, p.served_token_ids, p.num_served_tokens) for p in pairs] == [
        ("1", (4, 5, 6), 3), ("4", None, None)]
    assert drops.counts == {"bad_served_tokens": 2}  # count disagrees with ids; negative count


def test_build_labels_from_served_ids_and_counts(tmp_path, compose_cfg, word_tokenizer_dir, word_tokenizer):
    """60 words served as 75 tokens (15 invisible) → L = 75, prefixes cut at served tokens."""
    tok = word_tokenizer.tokenizer
    ids60 = tok(words(60), add_special_tokens=False)["input_ids"]
    served = ids60[:30] + [0] * 15 + ids60[30:]  # 15 [UNK]s served mid-answer (skipped on decode)
    path = write_jsonl(tmp_path / "answers.jsonl", [
        {"prompt_id": "a", "prompt": "what is two", "response": words(60), "generator": "g",
         "num_output_tokens": 75, "output_token_ids": served},
        {"prompt_id": "b", "prompt": "tell me a story", "response": words(12), "generator": "g",
         "num_output_tokens": 14},
        {"prompt_id": "c", "prompt": "why sky blue", "response": words(8), "generator": "g"},
    ])
    cfg = compose_cfg("build_dataset", [
        "data=jsonl", f"data.source.paths={path}", "data.split_fractions={train: 0.0, val: 0.0, test: 1.0}",
        "+data.source.num_output_tokens_field=num_output_tokens",
        "+data.source.output_token_ids_field=output_token_ids",
        f"data.label_tokenizer.name_or_path={word_tokenizer_dir}", "data.label_tokenizer.gguf_package=null"])
    manifest = run(cfg)
    pairs, iterative, _ = load_dataset_dir(tmp_path / "data" / cfg.data.name)
    labels = dict(zip(pairs["test"]["prompt_id"], pairs["test"]["num_output_tokens"]))
    assert labels == {"a": 75, "b": 14, "c": 8}
    it = iterative["test"].to_pandas().set_index(["prompt_id", "step"])
    assert it.loc[("a", 1), "num_remaining_tokens"] == 25
    # The first 50 served tokens are 30 words + 15 invisible + 5 words: 35 words of text.
    assert it.loc[("a", 1), "partial_response"] == words(35)
    assert it.loc[("b", 0), "num_remaining_tokens"] == 14
    assert manifest["labels"] == {
        "label_source": {"served_ids": 1, "served_count": 1, "reencoded_text": 1},
        "reencode_vs_served": {"num_compared": 2, "num_mismatch": 2, "mismatch_rate": 1.0,
                               "diff_min": -15, "diff_max": -2, "diff_mean_abs": 8.5}}
    on_disk = json.loads((tmp_path / "data" / cfg.data.name / "manifest.json").read_text())
    assert on_disk["labels"]["reencode_vs_served"]["num_mismatch"] == 2
