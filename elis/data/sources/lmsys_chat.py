"""LMSYS-Chat-1M (Zheng et al., 2023): the ELIS paper's training source.

Hugging Face ``lmsys/lmsys-chat-1m`` is gated: accept its licence on the hub and put a token
in the environment (``HF_TOKEN`` by default, config ``data.source.token_env``). The same
schema can be read from local ``.parquet`` / ``.jsonl`` / ``.jsonl.gz`` / ``.json`` files
(``data.source.path``). Row schema used: ``conversation_id`` (str), ``model`` (str),
``language`` (str), ``conversation`` (list of ``{"role": "user"|"assistant", "content": str}``).

Each conversation gives one pair: its first user turn → the first assistant turn after it,
with ``model`` as generator and ``conversation_id`` as prompt id.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from elis.data.schema import RawPair
from elis.data.sources.base import DropReport, SourceError
from elis.data.sources.rows import file_sha256, resolve_files, validated_pair

logger = logging.getLogger(__name__)

HUB_ID = "lmsys/lmsys-chat-1m"
_LOCAL_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".gz": "json"}


def first_exchange(conversation: object) -> tuple[str, str] | None:
    """``(first user turn, first assistant turn after it)`` or None when there is none.

    Non-dict messages and messages without ``role``/``content`` are skipped. The contents
    are returned as found (they may be non-strings; the caller validates them).
    """
    if not isinstance(conversation, (list, tuple)):
        return None
    prompt = None
    for msg in conversation:
        if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
            continue
        if prompt is None and msg["role"] == "user":
            prompt = msg["content"]
        elif prompt is not None and msg["role"] == "assistant":
            return prompt, msg["content"]
    return None


class LmsysChatSource:
    """Loader for LMSYS-Chat-1M from the hub or from local files in the same schema.

    Args:
        path: local file/folder/glob/list (``.parquet``, ``.jsonl``, ``.jsonl.gz``,
            ``.json``); None → the hub dataset ``hub_id``.
        hub_id: Hugging Face dataset id.
        split: dataset split to read.
        languages: keep only conversations whose ``language`` is in this list (e.g.
            ``["English"]``); None keeps all. Excluded rows count as ``filtered_language``.
        token_env: environment variable holding the hub token (the dataset is gated).
        streaming: stream from the hub instead of downloading all parquet shards first.
        max_conversations: stop after reading this many rows (None: all).
        name: the ``source`` value written in every row.
    """

    def __init__(
        self,
        path: str | Path | list | None = None,
        hub_id: str = HUB_ID,
        split: str = "train",
        languages: list[str] | None = None,
        token_env: str = "HF_TOKEN",
        streaming: bool = False,
        max_conversations: int | None = None,
        name: str = "lmsys_chat",
    ) -> None:
        self.path = path
        self.hub_id = hub_id
        self.split = split
        self.languages = None if languages is None else {str(x) for x in languages}
        self.token_env = token_env
        self.streaming = streaming
        self.max_conversations = max_conversations
        self.name = name

    def _local_files(self) -> list[Path]:
        files = resolve_files(self.path, patterns=("*.parquet", "*.jsonl", "*.jsonl.gz", "*.json"))
        bad = [f for f in files if f.suffix not in _LOCAL_BUILDERS]
        if bad:
            raise SourceError(f"lmsys_chat: unsupported file type {bad[0]} (use .parquet, .jsonl, .jsonl.gz, .json)")
        kinds = {_LOCAL_BUILDERS[f.suffix] for f in files}
        if len(kinds) > 1:
            raise SourceError(f"lmsys_chat: mix of parquet and json files in {self.path}; use one kind")
        return files

    def _rows(self) -> Iterable[dict]:
        import datasets

        if self.path is not None:
            files = self._local_files()
            builder = _LOCAL_BUILDERS[files[0].suffix]
            logger.info("lmsys_chat: reading %d local %s file(s)", len(files), builder)
            return datasets.load_dataset(builder, data_files=[str(f) for f in files], split=self.split)
        token = os.environ.get(self.token_env)
        if not token:
            logger.warning("lmsys_chat: %s is not set; %s is gated and may refuse access", self.token_env, self.hub_id)
        try:
            return datasets.load_dataset(self.hub_id, split=self.split, token=token, streaming=self.streaming)
        except Exception as e:  # hub errors come in many types; re-raise with the fix
            raise SourceError(
                f"cannot load {self.hub_id!r} from the Hugging Face hub ({type(e).__name__}: {e}); "
                f"accept its licence, export {self.token_env}=<token>, or set data.source.path to local files"
            ) from e

    def iter_pairs(self, drops: DropReport) -> Iterator[RawPair]:
        for i, row in enumerate(self._rows()):
            if self.max_conversations is not None and i >= self.max_conversations:
                break
            where = f"row {i}"
            missing = [f for f in ("conversation_id", "model", "conversation") if row.get(f) is None]
            if missing:
                drops.add("missing_field", f"{where} field={missing[0]}")
                continue
            where = f"row {i} conversation_id={row['conversation_id']}"
            if self.languages is not None and row.get("language") not in self.languages:
                drops.add("filtered_language", f"{where} language={row.get('language')!r}")
                continue
            exchange = first_exchange(row["conversation"])
            if exchange is None:
                drops.add("no_reply_turn", f"{where} field=conversation")
                continue
            pair = validated_pair(
                prompt_id=row["conversation_id"],
                prompt=exchange[0],
                response=exchange[1],
                generator=row["model"],
                source=self.name,
                drops=drops,
                where=where,
            )
            if pair is not None:
                yield pair

    def provenance(self) -> dict:
        base = {"source": self.name, "split": self.split, "languages": sorted(self.languages) if self.languages else None}
        if self.path is not None:
            return base | {"files": {str(p.resolve()): file_sha256(p) for p in self._local_files()}}
        return base | {"hub_id": self.hub_id, "streaming": self.streaming, "max_conversations": self.max_conversations}
