"""The embedded default dataset's prompts (``elis/data/embedded/prompts.jsonl``, issue 6 §1).

The file holds 300 prompts written for this project, deliberately varied so that answer
lengths spread from a few tokens to several hundred. These tests pin its shape: it parses,
ids and prompts are unique, every category is well represented, prompt lengths spread, and
(when ``../shared/data`` is present) no prompt is taken from the real datasets.
"""

from __future__ import annotations

import gzip
import json
import re
from collections import Counter
from importlib.resources import files
from pathlib import Path

import pytest

PROMPTS_PATH = Path(str(files("elis.data").joinpath("embedded", "prompts.jsonl")))

EXPECTED_CATEGORIES = {
    "factual",
    "yes_no",
    "explanation",
    "how_to",
    "list",
    "code",
    "math",
    "creative",
    "rewrite",
    "classification",
    "formatting",
    "chat",
}
NUM_PROMPTS = 300
MIN_PER_CATEGORY = 15


def _normalise(text: str) -> str:
    """Lower-case, collapse whitespace, keep only letters, digits and spaces."""
    text = re.sub(r"\s+", " ", text.strip().lower())
    return re.sub(r"[^a-z0-9 ]", "", text)


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    with PROMPTS_PATH.open(encoding="utf-8") as f:
        lines = f.read().splitlines()
    parsed = []
    for line_no, line in enumerate(lines, 1):
        assert line.strip(), f"blank line {line_no} in {PROMPTS_PATH}"
        row = json.loads(line)
        assert isinstance(row, dict), f"line {line_no} is not a JSON object"
        parsed.append(row)
    return parsed


def test_every_row_has_exactly_the_three_string_fields(rows):
    for row in rows:
        assert set(row) == {"prompt_id", "category", "prompt"}, row
        assert all(isinstance(value, str) for value in row.values()), row


def test_300_ids_numbered_in_file_order(rows):
    assert len(rows) == NUM_PROMPTS
    assert [row["prompt_id"] for row in rows] == [f"emb-{i:04d}" for i in range(1, 301)]


def test_prompts_are_unique_even_ignoring_case_spacing_and_punctuation(rows):
    counts = Counter(_normalise(row["prompt"]) for row in rows)
    duplicates = [text for text, n in counts.items() if n > 1]
    assert duplicates == []


def test_prompts_are_non_empty_and_trimmed(rows):
    for row in rows:
        assert row["prompt"].strip(), f"{row['prompt_id']}: empty prompt"
        assert row["prompt"] == row["prompt"].strip(), f"{row['prompt_id']}: untrimmed"


def test_categories_are_the_twelve_planned_each_with_at_least_15(rows):
    counts = Counter(row["category"] for row in rows)
    assert set(counts) == EXPECTED_CATEGORIES
    assert min(counts.values()) >= MIN_PER_CATEGORY, counts


def test_prompt_lengths_spread_from_a_few_words_to_a_paragraph(rows):
    lengths_chars = [len(row["prompt"]) for row in rows]
    assert min(lengths_chars) < 30
    assert max(lengths_chars) > 400


def test_some_prompts_ask_for_short_answers_and_some_for_long_ones(rows):
    texts = [row["prompt"].lower() for row in rows]
    short_cues = ("one word", "yes or no", "one sentence", "single word", "only the number")
    long_cues = ("in detail", "300-word", "400 words", "step by step", "step-by-step")
    assert sum(any(cue in t for cue in short_cues) for t in texts) >= 10
    assert sum(any(cue in t for cue in long_cues) for t in texts) >= 10


def test_rewrite_and_classification_prompts_include_the_text_to_work_on(rows):
    # The given paragraph/sentence follows a blank line or is quoted.
    for row in rows:
        if row["category"] in {"rewrite", "classification"}:
            assert "\n" in row["prompt"] or '"' in row["prompt"] or ":" in row["prompt"], row


def test_first_twelve_rows_cover_every_category(rows):
    # Categories are interleaved so that any prefix (e.g. a --limit run) is varied.
    first_block = [row["category"] for row in rows[: len(EXPECTED_CATEGORIES)]]
    assert set(first_block) == EXPECTED_CATEGORIES


SHARED_PROMPT_FILES = {
    "alpaca_eval/instructions.jsonl.gz": "instruction",
    "sharegpt_prompts/ShareGPT_V3_filtered_first_turn_1000.jsonl.gz": "prompt",
    "sharegpt_prompts/sg_90k_part1_en_first_turn_sample.jsonl.gz": "prompt",
    "castillo/prompts.jsonl.gz": "prompt_text",
}


def test_no_prompt_is_taken_from_the_shared_real_datasets(rows, shared_data):
    theirs: set[str] = set()
    for relative_path, field in SHARED_PROMPT_FILES.items():
        path = shared_data / relative_path
        if not path.is_file():
            pytest.skip(f"{path} is absent")
        with gzip.open(path, "rt", encoding="utf-8") as f:
            theirs.update(_normalise(json.loads(line)[field]) for line in f)
    overlap = [row["prompt_id"] for row in rows if _normalise(row["prompt"]) in theirs]
    assert overlap == []
