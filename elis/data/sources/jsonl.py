"""Generic local JSON-lines files (``.jsonl`` or ``.jsonl.gz``) with configurable fields."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from elis.data.schema import RawPair
from elis.data.sources.base import DropReport, SourceError
from elis.data.sources.rows import file_sha256, iter_json_objects, resolve_files, validated_pair


class JsonlSource:
    """One pair per JSON line: ``{prompt_field, response_field, [generator_field], [prompt_id_field]}``.

    Args:
        paths: a file, a folder (all its ``*.jsonl``/``*.jsonl.gz``, sorted), a glob, or a
            list of those.
        prompt_field, response_field: field names of the prompt and the answer.
        generator_field: field naming the model that answered; None → every row uses
            ``default_generator``.
        prompt_id_field: field with a stable prompt id (str or int); None → sha1 of the
            prompt text (first 16 hex digits).
        default_generator: generator name when ``generator_field`` is None.
        name: the ``source`` value written in every row.
        num_output_tokens_field: field with the generator's own count of the tokens it
            served (EOS excluded); when set and present it is the label instead of the count
            of re-encoded response text (``elis/data/embedded``: ``num_output_tokens``).
        output_token_ids_field: field with the served token ids themselves; when present
            they are the label and the iterative samples' prefixes.

    A row missing a configured field is counted as ``missing_field``; other bad rows as in
    ``elis.data.sources.rows.validated_pair``.

    Raises:
        SourceError: when a path does not exist or no field mapping is possible.
    """

    def __init__(
        self,
        paths: str | Path | list,
        prompt_field: str = "prompt",
        response_field: str = "response",
        generator_field: str | None = "generator",
        prompt_id_field: str | None = "prompt_id",
        default_generator: str | None = None,
        name: str = "jsonl",
        num_output_tokens_field: str | None = None,
        output_token_ids_field: str | None = None,
    ) -> None:
        if generator_field is None and not default_generator:
            raise SourceError("jsonl source: set generator_field or default_generator")
        self.paths = paths
        self.prompt_field = prompt_field
        self.response_field = response_field
        self.generator_field = generator_field
        self.prompt_id_field = prompt_id_field
        self.default_generator = default_generator
        self.name = name
        self.num_output_tokens_field = num_output_tokens_field
        self.output_token_ids_field = output_token_ids_field

    def files(self) -> list[Path]:
        return resolve_files(self.paths)

    def iter_pairs(self, drops: DropReport) -> Iterator[RawPair]:
        required = [self.prompt_field, self.response_field]
        required += [f for f in (self.generator_field, self.prompt_id_field) if f is not None]
        for path in self.files():
            for lineno, row in iter_json_objects(path, drops):
                where = f"{path.name}:{lineno}"
                missing = [f for f in required if f not in row]
                if missing:
                    drops.add("missing_field", f"{where} field={missing[0]}")
                    continue
                pair = validated_pair(
                    prompt_id=row[self.prompt_id_field] if self.prompt_id_field else None,
                    prompt=row[self.prompt_field],
                    response=row[self.response_field],
                    generator=row[self.generator_field] if self.generator_field else self.default_generator,
                    source=self.name,
                    drops=drops,
                    where=where,
                    # what the generator served, when the file records it (else: re-encoded)
                    served_token_ids=row.get(self.output_token_ids_field) if self.output_token_ids_field else None,
                    num_served_tokens=row.get(self.num_output_tokens_field) if self.num_output_tokens_field else None,
                )
                if pair is not None:
                    yield pair

    def provenance(self) -> dict:
        files = self.files()
        return {
            "source": self.name,
            "files": {str(p.resolve()): file_sha256(p) for p in files},
            "fields": {
                "prompt": self.prompt_field,
                "response": self.response_field,
                "generator": self.generator_field,
                "prompt_id": self.prompt_id_field,
                "num_output_tokens": self.num_output_tokens_field,
                "output_token_ids": self.output_token_ids_field,
            },
        }
