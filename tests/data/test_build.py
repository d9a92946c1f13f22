"""End-to-end builds through the real Hydra configs on tiny JSONL files (word tokenizer)."""

from __future__ import annotations

import json

import pytest
from data_factories import words, write_jsonl
from hydra.utils import instantiate

from elis.config import CONFIG_DIR
from elis.data.build import EmptyBuildError, format_summary, load_dataset_dir, run
from elis.data.schema import ITERATIVE_COLUMNS, PAIR_COLUMNS

# 40 prompts × 2 generators. Response of prompt i by "short": i % 7 words; by "long": 3 + i words.
NUM_PROMPTS = 40


def _rows() -> list:
    rows = []
    for i in range(NUM_PROMPTS):
        prompt = f"{words(3, i)} {i}"
        rows.append({"prompt_id": f"p{i}", "prompt": prompt, "response": words(i % 7), "generator": "short"})
        rows.append({"prompt_id": f"p{i}", "prompt": prompt, "response": words(3 + i, i), "generator": "long"})
    rows.append(rows[1])                                   # duplicate_sample
    rows.append("{oops")                                   # malformed_json
    rows.append({"prompt_id": "q", "prompt": "", "response": "yes", "generator": "short"})  # empty_prompt
    return rows


def _expected_steps(length: int, w: int = 5, k: int = 4) -> int:
    return min(k, -(-length // w))


@pytest.fixture
def build(tmp_path, compose_cfg, word_tokenizer_dir):
    """Compose ``build_dataset`` with ``data=jsonl`` on a file in tmp_path, W=5, K=4."""
    path = write_jsonl(tmp_path / "answers.jsonl", _rows())

    def _build(*extra: str):
        cfg = compose_cfg("build_dataset", [
            "data=jsonl", f"data.source.paths={path}", "data.name=tiny",
            "data.window_tokens=5", "data.num_steps=4", "data.num_proc=1",
            f"data.label_tokenizer.name_or_path={word_tokenizer_dir}", "data.label_tokenizer.gguf_package=null",
            *extra,
        ])
        return cfg, run(cfg)

    return _build


def test_tiny_build_counts_splits_and_manifest(build, tmp_path):
    cfg, manifest = build()
    out = tmp_path / "data" / "tiny"
    pairs, iterative, on_disk = load_dataset_dir(out)
    assert on_disk == json.loads(json.dumps(manifest, default=str))
    assert list(pairs) == ["train", "val", "test"] and list(iterative) == ["train", "val", "test"]
    for split in pairs:
        assert pairs[split].column_names == list(PAIR_COLUMNS)
        assert iterative[split].column_names == list(ITERATIVE_COLUMNS)

    # Drops: prompt 0 of "short" has 0 words → empty_response at read time (whitespace-only "").
    lengths = {f"p{i}": {"short": i % 7, "long": 3 + i} for i in range(NUM_PROMPTS)}
    num_empty = sum(1 for i in range(NUM_PROMPTS) if i % 7 == 0)
    assert manifest["drops"]["counts"] == {"duplicate_sample": 1, "malformed_json": 1, "empty_prompt": 1,
                                           "empty_response": num_empty}
    assert manifest["num_pairs"] == 2 * NUM_PROMPTS - num_empty
    assert manifest["rows_per_generator"] == {"long": NUM_PROMPTS, "short": NUM_PROMPTS - num_empty}

    # Manifest counts equal the rows written, per split and per step.
    expected_iter = 0
    for split in pairs:
        assert manifest["rows_per_split"][split] == {"pairs": pairs[split].num_rows,
                                                     "iterative": iterative[split].num_rows}
        steps = iterative[split]["step"]
        assert manifest["rows_per_step"][split] == {str(k): list(steps).count(k) for k in sorted(set(steps))}
        for row in pairs[split]:
            assert row["num_output_tokens"] == lengths[row["prompt_id"]][row["generator"]]
            assert row["num_prompt_tokens"] == 4
            assert row["sample_id"] == f"jsonl/{row['prompt_id']}/{row['generator']}"
            expected_iter += _expected_steps(row["num_output_tokens"])
    assert manifest["num_iterative_rows"] == expected_iter == sum(d.num_rows for d in iterative.values())

    # No prompt in two splits (pairs and iterative agree).
    seen: dict[str, str] = {}
    for split in pairs:
        for ds in (pairs[split], iterative[split]):
            for pid in ds["prompt_id"]:
                assert seen.setdefault(pid, split) == split

    # Hand-checked iterative rows of prompt p12 by "long": L = 15 → targets 15, 10, 5.
    split = seen["p12"]
    rows = [r for r in iterative[split] if r["sample_id"] == "jsonl/p12/long"]
    assert [r["num_remaining_tokens"] for r in rows] == [15, 10, 5]
    assert [r["partial_response"] for r in rows] == ["", words(5, 12), words(10, 12)]
    st = manifest["num_output_tokens"]
    all_lengths = sorted(v for d in lengths.values() for v in d.values() if v > 0)
    assert st["max"] == max(all_lengths) and st["num"] == len(all_lengths)
    assert "tiny" in format_summary(manifest)


def test_rebuild_reuses_label_cache(build):
    _, first = build()
    _, second = build()
    assert first["labels_cache"]["hit"] is False and second["labels_cache"]["hit"] is True
    assert second["drops"] == first["drops"] and second["rows_per_split"] == first["rows_per_split"]


def test_holdout_generator_and_filters(build, tmp_path):
    _, manifest = build("data.holdout_generators=[short]")
    pairs, iterative, _ = load_dataset_dir(tmp_path / "data" / "tiny")
    assert list(pairs) == ["train", "val", "test", "test_ood"]
    assert set(pairs["test_ood"]["generator"]) == {"short"}
    assert all(set(pairs[s]["generator"]) <= {"long"} for s in ("train", "val", "test"))
    assert manifest["rows_per_split"]["test_ood"]["iterative"] == iterative["test_ood"].num_rows

    _, manifest = build("data.generators=[long]", "data.max_pairs=10")
    assert manifest["num_pairs"] == 10 and manifest["rows_per_generator"] == {"long": 10}
    assert manifest["filters"]["over_max_pairs"] == NUM_PROMPTS - 10


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("data.holdout_generators=[nobody]", r"holdout_generators.*nobody.*valid: long, short"),
        ("data.generators=[nobody]", r"data.generators.*nobody.*valid: long, short"),
        ("data.split_fractions.train=0.5", "sum to 1"),
        ("data.window_tokens=0", "window_tokens"),
    ],
)
def test_bad_config_values_raise(build, override, match):
    with pytest.raises(ValueError, match=match):
        build(override)


def test_build_that_keeps_nothing_fails(tmp_path, compose_cfg, word_tokenizer_dir):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt_id": "a", "prompt": " ", "response": "x", "generator": "g"}])
    cfg = compose_cfg("build_dataset", [
        "data=jsonl", f"data.source.paths={path}",
        f"data.label_tokenizer.name_or_path={word_tokenizer_dir}", "data.label_tokenizer.gguf_package=null"])
    with pytest.raises(EmptyBuildError, match="empty_prompt"):
        run(cfg)
    assert not (tmp_path / "data" / "jsonl").exists()


def test_empty_after_tokenize_is_counted(tmp_path, compose_cfg, word_tokenizer_dir):
    # U+200B is not whitespace to Python (the row passes the empty check) but the word
    # tokenizer's normalizer deletes it: 0 tokens.
    path = write_jsonl(tmp_path / "a.jsonl", [
        {"prompt_id": "a", "prompt": "why", "response": "yes no", "generator": "g"},
        {"prompt_id": "b", "prompt": "sky", "response": "\u200b\u200b", "generator": "g"},
    ])
    cfg = compose_cfg("build_dataset", [
        "data=jsonl", f"data.source.paths={path}",
        f"data.label_tokenizer.name_or_path={word_tokenizer_dir}", "data.label_tokenizer.gguf_package=null"])
    manifest = run(cfg)
    assert manifest["num_pairs"] == 1
    assert manifest["drops"]["counts"] == {"empty_after_tokenize": 1}
    assert manifest["drops"]["examples"]["empty_after_tokenize"] == ["jsonl/b/g"]


def test_load_dataset_dir_missing_names_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="python build_dataset.py data=nothing"):
        load_dataset_dir(tmp_path / "nothing")


def test_embedded_config_reads_its_jsonl(tmp_path, compose_cfg, word_tokenizer_dir):
    path = write_jsonl(tmp_path / "smollm2_answers.jsonl.gz", [
        {"prompt_id": "emb-0001", "prompt": "what is two", "response": words(12), "generator": "SmolLM2-135M-Instruct"},
    ])
    cfg = compose_cfg("build_dataset", [
        f"data.source.paths={path}", "data.split_fractions={train: 0.0, val: 0.0, test: 1.0}",
        f"data.label_tokenizer.name_or_path={word_tokenizer_dir}", "data.label_tokenizer.gguf_package=null"])
    assert cfg.data.name == "embedded"  # the default data config
    manifest = run(cfg)
    pairs, iterative, _ = load_dataset_dir(tmp_path / "data" / "embedded")
    assert pairs["test"].num_rows == 1 and pairs["train"].num_rows == 0
    assert iterative["test"]["num_remaining_tokens"] == [12]  # W=50: one step
    assert manifest["provenance"]["source"] == "embedded"


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONFIG_DIR / "data").glob("*.yaml") if p.stem != "generate"))
def test_every_data_config_composes_and_builds_its_source(compose_cfg, name):
    cfg = compose_cfg("build_dataset", [f"data={name}", "data.source.paths=[x]"] if name == "jsonl" else [f"data={name}"])
    for key in ("name", "source", "window_tokens", "num_steps", "split_fractions", "holdout_generators",
                "label_tokenizer", "num_proc"):
        assert key in cfg.data, f"conf/data/{name}.yaml lacks {key}"
    assert cfg.data.window_tokens == 50 and cfg.data.num_steps == 8
    source = instantiate(cfg.data.source)
    assert hasattr(source, "iter_pairs") and hasattr(source, "provenance")


@pytest.mark.slow
def test_real_alpaca_eval_one_generator(shared_data, compose_cfg, tmp_path):
    """data=alpaca_eval with the default SmolLM2 label tokenizer, one generator (805 pairs)."""
    cfg = compose_cfg("build_dataset", ["data=alpaca_eval", f"paths.shared_data_dir={shared_data}",
                                        "data.generators=[gpt4]"])
    manifest = run(cfg)
    pairs, iterative, _ = load_dataset_dir(tmp_path / "data" / "alpaca_eval")
    assert manifest["num_pairs"] == 805 == sum(d.num_rows for d in pairs.values())
    assert manifest["num_prompts"] == 805 and manifest["rows_per_generator"] == {"gpt4": 805}
    assert manifest["filters"]["not_in_generators"] == 94_155 - 805
    assert set(manifest["rows_per_step"]["train"]) == {str(k) for k in range(8)}
    row = iterative["train"].filter(lambda r: r["step"] == 1).select([0])[0]
    assert row["num_generated_tokens"] == 50 and row["num_remaining_tokens"] == row["num_output_tokens"] - 50
