"""Row-level helpers shared by the source loaders: reading JSON lines, validating fields.

Every unusable row is counted in a ``DropReport`` under one of ``DROP_REASONS`` with its
location (``file:line field=...``); nothing is dropped silently.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import io
import json
from collections.abc import Iterator
from pathlib import Path

from elis.data.schema import RawPair
from elis.data.sources.base import DropReport, SourceError


def file_sha256(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes (provenance in the manifest)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            h.update(chunk)
    return h.hexdigest()


def open_text(path: str | Path) -> io.TextIOBase:
    """Open a UTF-8 text file, transparently gunzipping ``*.gz``.

    Raises:
        SourceError: if the file does not exist.
    """
    p = Path(path)
    if not p.is_file():
        raise SourceError(f"file not found: {p}")
    if p.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(p, "rb"), encoding="utf-8")
    return open(p, encoding="utf-8")


def iter_json_objects(path: str | Path, drops: DropReport) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` for each JSON-object line of a .jsonl(.gz) file.

    Blank lines are skipped (they hold no row). A line that is not valid JSON, or is JSON
    but not an object, is counted as ``malformed_json`` at ``file:line``.
    """
    name = Path(path).name
    with open_text(path) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                drops.add("malformed_json", f"{name}:{lineno}")
                continue
            if not isinstance(obj, dict):
                drops.add("malformed_json", f"{name}:{lineno} (not an object)")
                continue
            yield lineno, obj


def stable_text_id(text: str, num_hex: int = 16) -> str:
    """A stable id for a text (sha1 of its UTF-8 bytes, first ``num_hex`` hex digits)."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:num_hex]


def validated_pair(
    *,
    prompt_id: object,
    prompt: object,
    response: object,
    generator: object,
    source: str,
    drops: DropReport,
    where: str,
    served_token_ids: object = None,
    num_served_tokens: object = None,
) -> RawPair | None:
    """Build a ``RawPair`` or count why the row cannot be used (and return None).

    Rules: prompt, response and generator must be ``str`` (else ``non_string_field``);
    ``prompt_id`` may be ``str`` or ``int`` (converted to str); None for ``prompt_id`` means
    "derive it": the sha1 of the prompt text. Empty or whitespace-only prompt/response →
    ``empty_prompt`` / ``empty_response``. Texts are kept unchanged (no stripping).
    ``served_token_ids`` (a list of ints >= 0) and ``num_served_tokens`` (an int >= 0) are
    optional; a malformed one, or both given and disagreeing, is ``bad_served_tokens``.
    """
    for field_name, value in (("prompt", prompt), ("response", response), ("generator", generator)):
        if not isinstance(value, str):
            drops.add("non_string_field", f"{where} field={field_name} type={type(value).__name__}")
            return None
    if prompt_id is not None and (isinstance(prompt_id, bool) or not isinstance(prompt_id, (str, int))):
        drops.add("non_string_field", f"{where} field=prompt_id type={type(prompt_id).__name__}")
        return None
    if not prompt.strip():
        drops.add("empty_prompt", where)
        return None
    if not response.strip():
        drops.add("empty_response", where)
        return None
    if not generator.strip():
        drops.add("missing_field", f"{where} field=generator (empty)")
        return None
    ids = None
    if served_token_ids is not None:
        if not isinstance(served_token_ids, (list, tuple)) or not all(
            isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in served_token_ids
        ):
            drops.add("bad_served_tokens", f"{where} field=served token ids (not a list of ints >= 0)")
            return None
        ids = tuple(served_token_ids)
    count = None
    if num_served_tokens is not None:
        if isinstance(num_served_tokens, bool) or not isinstance(num_served_tokens, int) or num_served_tokens < 0:
            drops.add("bad_served_tokens", f"{where} field=served token count {num_served_tokens!r}")
            return None
        count = int(num_served_tokens)
    if ids is not None and count is not None and len(ids) != count:
        drops.add("bad_served_tokens", f"{where} {len(ids)} served ids but count {count}")
        return None
    pid = stable_text_id(prompt) if prompt_id is None else str(prompt_id)
    return RawPair(prompt_id=pid, prompt=prompt, response=response, generator=generator, source=source,
                   served_token_ids=ids, num_served_tokens=count)


def resolve_files(paths: str | Path | list, patterns: tuple[str, ...] = ("*.jsonl", "*.jsonl.gz")) -> list[Path]:
    """Expand files, folders (their ``patterns`` files, sorted) and glob patterns.

    Raises:
        SourceError: for a path that matches nothing, or when no file is found at all.
    """
    items = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not items:
        raise SourceError("no input paths given (source.paths is empty)")
    files: list[Path] = []
    for item in items:
        p = Path(str(item))
        if p.is_file():
            files.append(p)
        elif p.is_dir():
            found = sorted({f for pat in patterns for f in p.glob(pat)})
            if not found:
                raise SourceError(f"folder {p} holds no {' or '.join(patterns)} file")
            files.extend(found)
        elif any(ch in str(item) for ch in "*?["):
            found = sorted(Path(f) for f in glob.glob(str(item), recursive=True) if Path(f).is_file())
            if not found:
                raise SourceError(f"glob {item!r} matches no file")
            files.extend(found)
        else:
            raise SourceError(f"path not found: {p}")
    return files
