"""Prompt-level splits: stable, hash-based, no prompt in two splits, generator hold-out."""

from __future__ import annotations

import hashlib

import pytest

from elis.data.splits import assign_splits, check_fractions, prompt_unit_interval, split_of_prompt

FR = {"train": 0.8, "val": 0.1, "test": 0.1}


def test_unit_interval_is_sha1():
    expected = int(hashlib.sha1(b"hello").hexdigest(), 16) / 2**160
    assert prompt_unit_interval("hello") == expected
    assert 0 <= expected < 1


def test_split_thresholds_by_hand():
    u = prompt_unit_interval("hello")  # sha1("hello") starts aaf4c6...: u ≈ 0.668
    assert 0.66 < u < 0.67
    assert split_of_prompt("hello", {"train": 0.8, "val": 0.1, "test": 0.1}) == "train"
    assert split_of_prompt("hello", {"train": 0.6, "val": 0.1, "test": 0.3}) == "val"
    assert split_of_prompt("hello", {"train": 0.5, "val": 0.1, "test": 0.4}) == "test"


def test_every_sample_of_a_prompt_in_one_split_and_stable():
    prompts = [f"prompt number {i}" for i in range(300)]
    rows_p = [p for p in prompts for _ in range(3)]
    rows_g = [g for _ in prompts for g in ("a", "b", "c")]
    splits = assign_splits(rows_p, rows_g, FR)
    by_prompt: dict[str, set[str]] = {}
    for p, s in zip(rows_p, splits, strict=True):
        by_prompt.setdefault(p, set()).add(s)
    assert all(len(s) == 1 for s in by_prompt.values())
    counts = {s: splits.count(s) for s in ("train", "val", "test")}
    assert counts["train"] > counts["val"] > 0 and counts["test"] > 0
    # Adding data never moves an existing prompt.
    more = assign_splits(rows_p + ["a brand new prompt"], rows_g + ["a"], FR)
    assert more[:-1] == splits


def test_holdout_generators_go_to_test_ood():
    splits = assign_splits(["p1", "p1", "p2"], ["a", "held", "held"], FR, holdout_generators=["held"])
    assert splits[1:] == ["test_ood", "test_ood"]
    assert splits[0] in ("train", "val", "test")


@pytest.mark.parametrize(
    ("fractions", "match"),
    [
        ({"train": 0.8, "val": 0.1, "test": 0.2}, "sum to 1"),
        ({"train": 0.8, "dev": 0.2}, "unknown split 'dev'"),
        ({"train": 1.2, "val": -0.2, "test": 0.0}, "split_fractions.train"),
    ],
)
def test_bad_fractions(fractions, match):
    with pytest.raises(ValueError, match=match):
        check_fractions(fractions)
