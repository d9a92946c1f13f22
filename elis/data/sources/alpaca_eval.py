"""AlpacaEval model outputs: 117 LLMs × 805 instructions (``../shared/data/alpaca_eval``).

Layout (see ``../shared/data/README.md``)::

    <root>/model_outputs/<model>.jsonl.gz   fields generator, instruction_id, dataset,
                                            instruction, output
    <root>/instructions.jsonl.gz            (optional) the 805 instructions

``prompt_id`` is ``instruction_id`` (0..804), ``prompt`` the instruction, ``response`` the
output and ``generator`` the ``generator`` field (the leaderboard name).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

from elis.data.schema import RawPair
from elis.data.sources.base import DropReport, SourceError
from elis.data.sources.rows import file_sha256, iter_json_objects, validated_pair

logger = logging.getLogger(__name__)

REQUIRED_FIELDS = ("generator", "instruction_id", "instruction", "output")


class AlpacaEvalSource:
    """Loader for a local AlpacaEval ``model_outputs`` folder.

    Args:
        root: the folder holding ``model_outputs/`` (config ``data.source.root``).
        name: the ``source`` value written in every row.

    Raises:
        SourceError: (on ``iter_pairs``/``provenance``) if ``root/model_outputs`` is missing
            or holds no ``*.jsonl.gz`` file.
    """

    def __init__(self, root: str | Path, name: str = "alpaca_eval") -> None:
        self.root = Path(root)
        self.name = name

    def files(self) -> list[Path]:
        folder = self.root / "model_outputs"
        if not folder.is_dir():
            raise SourceError(
                f"AlpacaEval folder {folder} not found (set data.source.root; expected "
                "<root>/model_outputs/<model>.jsonl.gz, see ../shared/data/README.md)"
            )
        files = sorted(folder.glob("*.jsonl.gz"))
        if not files:
            raise SourceError(f"{folder} holds no *.jsonl.gz file")
        return files

    def iter_pairs(self, drops: DropReport) -> Iterator[RawPair]:
        for path in self.files():
            for lineno, row in iter_json_objects(path, drops):
                where = f"{path.name}:{lineno}"
                missing = [f for f in REQUIRED_FIELDS if f not in row]
                if missing:
                    drops.add("missing_field", f"{where} field={missing[0]}")
                    continue
                pair = validated_pair(
                    prompt_id=row["instruction_id"],
                    prompt=row["instruction"],
                    response=row["output"],
                    generator=row["generator"],
                    source=self.name,
                    drops=drops,
                    where=where,
                )
                if pair is not None:
                    yield pair

    def provenance(self) -> dict:
        files = self.files()
        return {
            "source": self.name,
            "root": str(self.root.resolve()),
            "files": {p.name: file_sha256(p) for p in files},
            "num_files": len(files),
        }
