"""Cheap structural features of a partial answer (no encoder): what the GBDT predictor reads.

``structural_features(texts) -> np.ndarray`` of shape ``(N, len(STRUCTURAL_FEATURES))``,
float32. Each feature is a count or a 0/1 flag computed with a handful of regular
expressions over the text generated so far (tens of microseconds per text), so the
predictor can re-predict at every window boundary without re-encoding the partial answer
(issue 9: encoding every partial answer costs ~100× more CPU and buys less).

Why these: answers are lists, essays, code or short replies; how far a list has got (its
last item number vs the largest number seen in the prompt), whether a code fence is still
open, whether a closing phrase ("In conclusion", "I hope this helps") has appeared and what
the last line looks like say much about how much is left.

Features (name: meaning):
  num_chars, num_words, num_lines, num_paragraphs (blank-line separated blocks),
  num_sentences ([.!?] after a non-digit, then space/end), num_numbered_items (lines "1." / "2)"),
  last_item_number (largest list number at a line start, 0 if none), num_bullets
  (lines "- " / "* " / "• "), num_code_fences (```), in_code_block (odd fence count),
  num_headings (markdown "#" lines or "**Title**:" lines), num_table_rows (lines with ≥ 2 "|"),
  has_closing_phrase (a closing/summary phrase in the last 300 chars), num_closing_phrases,
  last_line_chars, last_line_is_item (numbered or bullet), last_line_is_heading,
  last_line_ends_colon, last_line_ends_sentence ([.!?] at the end), ends_mid_word (last char
  alphanumeric), mean_line_chars, num_questions ("?" count), prompt_max_number (largest
  integer ≤ 100 in the prompt: "give me 10 ideas"), items_left (prompt_max_number −
  last_item_number when both > 0, else 0).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

STRUCTURAL_FEATURES: tuple[str, ...] = (
    "num_chars", "num_words", "num_lines", "num_paragraphs", "num_sentences",
    "num_numbered_items", "last_item_number", "num_bullets", "num_code_fences",
    "in_code_block", "num_headings", "num_table_rows", "has_closing_phrase",
    "num_closing_phrases", "last_line_chars", "last_line_is_item", "last_line_is_heading",
    "last_line_ends_colon", "last_line_ends_sentence", "ends_mid_word", "mean_line_chars",
    "num_questions", "prompt_max_number", "items_left",
)

_NUMBERED = re.compile(r"^\s*(\d{1,3})[.)]\s", re.MULTILINE)
_BULLET = re.compile(r"^\s*[-*•]\s", re.MULTILINE)
_HEADING = re.compile(r"^\s*(#{1,6}\s|\*\*[^*\n]{1,80}\*\*:?\s*$)", re.MULTILINE)
_SENTENCE = re.compile(r"(?<=[^\d\s])[.!?](\s|$)")  # not list numbers "1. "
_PARAGRAPH = re.compile(r"\n\s*\n")
_CLOSING = re.compile(
    r"in conclusion|in summary|to summarize|to sum up|overall,|ultimately,|hope this helps|"
    r"i hope this|let me know|feel free to|good luck|best regards|sincerely|in short,|"
    r"remember that|by following these",
)  # matched on lower-cased text: 5x faster than re.IGNORECASE, same matches for these phrases
_PROMPT_NUMBER = re.compile(r"\b(\d{1,3})\b")
_WORDS_NUMBERS = {
    "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10,
    "twelve": 12, "fifteen": 15, "twenty": 20,
}
_PROMPT_WORD_NUMBER = re.compile(r"\b(" + "|".join(_WORDS_NUMBERS) + r")\b", re.IGNORECASE)
_ITEM_LINE = re.compile(r"^\s*(\d{1,3}[.)]|[-*•])\s")


def prompt_max_number(prompt: str) -> int:
    """Largest number 1..100 written in the prompt (digits or 'three'..'twenty'); 0 if none."""
    best = 0
    for m in _PROMPT_NUMBER.finditer(prompt):
        v = int(m.group(1))
        if 1 <= v <= 100:
            best = max(best, v)
    for m in _PROMPT_WORD_NUMBER.finditer(prompt):
        best = max(best, _WORDS_NUMBERS[m.group(1).lower()])
    return best


def _one(text: str, prompt_number: int) -> list[float]:
    lines = text.split("\n") if text else []
    nonempty = [ln for ln in lines if ln.strip()]
    last = nonempty[-1].strip() if nonempty else ""
    numbers = [int(m.group(1)) for m in _NUMBERED.finditer(text)]
    last_item = max(numbers) if numbers else 0
    fences = text.count("```")
    tail = text[-300:].lower()
    num_closing = len(_CLOSING.findall(text.lower()))
    return [
        len(text),
        len(text.split()),
        len(lines),
        len(_PARAGRAPH.findall(text)) + (1 if text.strip() else 0),
        len(_SENTENCE.findall(text)),
        len(numbers),
        last_item,
        len(_BULLET.findall(text)),
        fences,
        fences % 2,
        len(_HEADING.findall(text)),
        sum(1 for ln in lines if ln.count("|") >= 2),
        1.0 if _CLOSING.search(tail) else 0.0,
        num_closing,
        len(last),
        1.0 if _ITEM_LINE.match(last) else 0.0,
        1.0 if last.startswith("#") or (last.startswith("**") and last.rstrip(":").endswith("**")) else 0.0,
        1.0 if last.endswith(":") else 0.0,
        1.0 if last[-1:] in (".", "!", "?") else 0.0,
        1.0 if text[-1:].isalnum() else 0.0,
        (sum(len(ln) for ln in nonempty) / len(nonempty)) if nonempty else 0.0,
        text.count("?"),
        prompt_number,
        float(prompt_number - last_item) if prompt_number > 0 and last_item > 0 else 0.0,
    ]


def structural_features(texts: Sequence[str], prompts: Sequence[str] | None = None) -> np.ndarray:
    """Features of each partial answer, float32 ``(N, len(STRUCTURAL_FEATURES))``.

    Args:
        texts: partial answers ('' before the first window).
        prompts: the matching prompts (for ``prompt_max_number`` / ``items_left``); None → 0.

    Raises:
        ValueError: if ``prompts`` is given with a different length than ``texts``.
    """
    if prompts is not None and len(prompts) != len(texts):
        raise ValueError(f"structural_features: {len(texts)} texts but {len(prompts)} prompts")
    cache: dict[str, int] = {}
    rows = []
    for i, t in enumerate(texts):
        pn = 0
        if prompts is not None:
            p = prompts[i]
            if p not in cache:
                cache[p] = prompt_max_number(p)
            pn = cache[p]
        rows.append(_one(t, pn))
    out = np.asarray(rows, dtype=np.float32).reshape(len(texts), len(STRUCTURAL_FEATURES))
    return out
