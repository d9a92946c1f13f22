"""The contract every source loader follows.

A source is built by Hydra from ``conf/data/<name>.yaml`` (``source: {_target_: ...}``) and
exposes ``name``, ``iter_pairs(drops)`` and ``provenance()``. Bad rows are never dropped
silently: the loader either raises ``SourceError`` (naming file, line and field) or calls
``drops.add(reason, where)`` with one of the named reasons, which the manifest reports.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from elis.data.schema import RawPair

# Named reasons a row can be dropped for; the manifest reports a count for each.
DROP_REASONS: tuple[str, ...] = (
    "empty_prompt",          # empty or whitespace-only prompt
    "empty_response",        # empty or whitespace-only response
    "non_string_field",      # prompt/response/generator not a string
    "malformed_json",        # a line that does not parse as a JSON object
    "missing_field",         # a required field absent from the row
    "empty_after_tokenize",  # response has 0 tokens under the label tokenizer
    "duplicate_sample",      # same (source, prompt_id, generator) seen before
    "no_reply_turn",         # a conversation without a user turn followed by an assistant turn
    "filtered_language",     # excluded by a configured language filter (lmsys_chat)
    "bad_served_tokens",     # served token ids/count malformed, negative or disagreeing
)


class SourceError(ValueError):
    """A source cannot be read at all (missing folder/file, wrong layout, bad config)."""


@dataclass(slots=True)
class DropReport:
    """Counts of dropped rows per reason, with up to ``max_examples`` locations each."""

    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    max_examples: int = 5

    def add(self, reason: str, where: str) -> None:
        """Count one dropped row.

        Args:
            reason: one of ``DROP_REASONS``.
            where: a human-readable location, e.g. ``'gpt4.jsonl.gz:17 field=output'``.

        Raises:
            ValueError: for an unknown reason (lists the valid ones).
        """
        if reason not in DROP_REASONS:
            raise ValueError(f"unknown drop reason {reason!r}; valid: {', '.join(DROP_REASONS)}")
        self.counts[reason] += 1
        ex = self.examples.setdefault(reason, [])
        if len(ex) < self.max_examples:
            ex.append(where)

    @property
    def total(self) -> int:
        return int(sum(self.counts.values()))

    def to_dict(self) -> dict:
        return {"total": self.total, "counts": dict(self.counts), "examples": self.examples}


@runtime_checkable
class Source(Protocol):
    """A loader of (prompt, response, generator) pairs."""

    name: str

    def iter_pairs(self, drops: DropReport) -> Iterator[RawPair]:
        """Yield valid pairs; count every unusable row in ``drops``.

        Raises:
            SourceError: when the source cannot be read at all.
        """
        ...

    def provenance(self) -> dict:
        """Paths or hub ids, file hashes, versions: recorded in the manifest."""
        ...
