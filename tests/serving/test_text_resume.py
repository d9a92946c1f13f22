"""Text-resume mismatch counting with hand-made tokenizers (elis.serving.text_resume)."""

from __future__ import annotations

import pytest

from elis.serving.text_resume import boundary_mismatches

AB = 1000  # the toy tokenizer's one merge: "ab" → 1000, every other character → its code point


def tok(s: str) -> list[int]:
    out, i = [], 0
    while i < len(s):
        if s[i:i + 2] == "ab":
            out.append(AB)
            i += 2
        else:
            out.append(ord(s[i]))
            i += 1
    return out


def detok(ids) -> bytes:
    return "".join("ab" if t == AB else chr(t) for t in ids).encode("utf-8")


def test_canonical_generation_resumes_exactly():
    # "x", "ab", "y": boundaries after 1 and 2 tokens re-tokenize to the same ids
    assert boundary_mismatches("P", [ord("x"), AB, ord("y")], 1, tok, detok) == ([], 2)


def test_non_canonical_split_mismatches_only_where_the_merge_happens():
    gen = [ord("x"), ord("a"), ord("b"), ord("y")]  # the model wrote "a" + "b", BPE would write "ab"
    assert boundary_mismatches("P", gen, 1, tok, detok) == ([3], 3)  # "xab" → x, ab
    assert boundary_mismatches("P", gen, 2, tok, detok) == ([], 1)  # "xa" is fine


def test_merge_across_the_prompt_boundary():
    # prompt ends in "a", generation starts with "b": resumed "Pab" tokenizes to P, ab
    assert boundary_mismatches("Pa", [ord("b"), ord("y")], 1, tok, detok) == ([1], 1)


def test_boundary_inside_a_utf8_character_is_a_mismatch():
    btok = lambda s: list(s.encode("utf-8"))  # noqa: E731  byte-level tokenizer
    bdetok = lambda ids: bytes(ids)  # noqa: E731
    gen = list("é".encode("utf-8")) + [ord("y")]  # 195, 169, 121
    assert boundary_mismatches("P", gen, 1, btok, bdetok) == ([1], 2)


def test_no_boundary_before_the_last_token_and_bad_window():
    assert boundary_mismatches("P", [1, 2, 3], 50, tok, detok) == ([], 0)
    with pytest.raises(ValueError, match="window_tokens"):
        boundary_mismatches("P", [1], 0, tok, detok)


def test_measure_records_with_a_char_tokenizer():
    """Records mode on a char tokenizer (1 char = 1 token, no merges): every boundary resumes exactly,
    so 0 of 2 boundaries (answer of 5 tokens, W=2: boundaries 2 and 4) mismatch."""
    import sys
    from pathlib import Path

    import pandas as pd

    sys.path.insert(0, str(Path(__file__).parent))
    from gateway_factories import char_tokenizer

    from elis.serving.text_resume import measure_records

    tk = char_tokenizer()
    ids = tk("hello", add_special_tokens=False)["input_ids"]
    recs = pd.DataFrame({"status": ["FINISHED", "FAILED"], "prompt": ["Hi", "x"], "output_token_ids": [ids, []]})
    res = measure_records(recs, tk, window_tokens=2)
    assert (res["num_boundaries"], res["num_mismatched_boundaries"], res["num_requests_with_boundary"]) == (2, 0, 1)
    assert res["request_mismatch_rate"] == 0.0
