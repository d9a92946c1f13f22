"""Factories for the dataset pipeline tests: hand-countable texts and JSONL writers.

Under ``word_tokenizer`` (conftest) one word of WORDS is one token, so token counts and
decoded prefixes can be worked out by hand.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

WORDS = (
    "what is two plus three four five six seven eight nine ten why sky blue tell me a story about "
    "cat dog once upon time there was end hello world yes no alpha beta gamma delta x y z"
).split()


def words(n: int, start: int = 0) -> str:
    """``n`` words from WORDS, cycling (n tokens under the word tokenizer)."""
    return " ".join(WORDS[(start + i) % len(WORDS)] for i in range(n))


def write_jsonl(path: Path, rows: list, gz: bool | None = None) -> Path:
    """Write rows (dicts, or raw strings written as-is) as JSON lines; gzip if ``*.gz``."""
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    data = ("\n".join(lines) + "\n").encode("utf-8")
    if gz if gz is not None else path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path
