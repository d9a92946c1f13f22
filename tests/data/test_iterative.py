"""Iterative expansion (ELIS §3): steps, targets and decoded prefixes, worked by hand."""

from __future__ import annotations

import pytest
from data_factories import words

from elis.data.iterative import IterativeExpander, iterative_steps


@pytest.mark.parametrize(
    ("length", "expected_steps"),
    [
        (120, [0, 1, 2]),          # the paper-style example: targets 120, 70, 20
        (0, []),                   # nothing to predict
        (1, [0]),
        (50, [0]),                 # L = W: after one window nothing remains
        (51, [0, 1]),
        (400, list(range(8))),     # L = K*W exactly
        (1000, list(range(8))),    # L > K*W: capped at K steps
    ],
)
def test_iterative_steps(length, expected_steps):
    assert iterative_steps(length, window_tokens=50, num_steps=8) == expected_steps


def test_targets_for_120_tokens():
    assert [120 - 50 * k for k in iterative_steps(120, 50, 8)] == [120, 70, 20]


@pytest.mark.parametrize(("w", "k", "length"), [(0, 8, 5), (50, 0, 5), (50, 8, -1)])
def test_iterative_steps_rejects_bad_values(w, k, length):
    with pytest.raises(ValueError):
        iterative_steps(length, w, k)


def _batch(tokenizer, responses: list[str]) -> dict:
    ids = [tokenizer(r, add_special_tokens=False)["input_ids"] for r in responses]
    n = len(responses)
    return {
        "sample_id": [f"s/{i}/g" for i in range(n)],
        "prompt_id": [str(i) for i in range(n)],
        "generator": ["g"] * n,
        "source": ["s"] * n,
        "prompt": [f"prompt {i}" for i in range(n)],
        "response_token_ids": ids,
        "num_output_tokens": [len(x) for x in ids],
        "num_prompt_tokens": [2] * n,
    }


def test_expander_rows_and_prefixes(word_tokenizer):
    tok = word_tokenizer.tokenizer
    # W=3, K=4: L=7 → k=0,1,2 (targets 7,4,1); L=3 → k=0; L=20 → k=0..3 (20,17,14,11).
    out = IterativeExpander(tok, window_tokens=3, num_steps=4)(_batch(tok, [words(7), words(3), words(20)]))
    assert out["sample_id"] == ["s/0/g"] * 3 + ["s/1/g"] + ["s/2/g"] * 4
    assert out["step"] == [0, 1, 2, 0, 0, 1, 2, 3]
    assert out["num_generated_tokens"] == [0, 3, 6, 0, 0, 3, 6, 9]
    assert out["num_output_tokens"] == [7, 7, 7, 3, 20, 20, 20, 20]
    assert out["num_remaining_tokens"] == [7, 4, 1, 3, 20, 17, 14, 11]
    assert out["partial_response"][:3] == ["", "what is two", "what is two plus three four"]
    assert out["partial_response"][7] == words(9)
    assert out["prompt"][4] == "prompt 2" and out["num_prompt_tokens"] == [2] * 8


def test_expander_skips_special_tokens_in_prefix(word_tokenizer):
    tok = word_tokenizer.tokenizer
    out = IterativeExpander(tok, window_tokens=2, num_steps=3)(_batch(tok, ["hello [EOS] world yes"]))
    # Token ids: hello, [EOS], world, yes → prefix of 2 tokens decodes without [EOS].
    assert out["partial_response"] == ["", "hello"]
    assert out["num_remaining_tokens"] == [4, 2]


def test_expander_empty_response_gives_no_rows(word_tokenizer):
    tok = word_tokenizer.tokenizer
    batch = _batch(tok, ["hello"])
    batch["response_token_ids"], batch["num_output_tokens"] = [[]], [0]
    out = IterativeExpander(tok, 50, 8)(batch)
    assert out["step"] == [] and out["partial_response"] == []
