"""LightningDataModule over cached embeddings (no text, no encoder in the training loop)."""

from __future__ import annotations

from dataclasses import dataclass

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset


@dataclass(slots=True)
class EmbeddedSplit:
    """One split as arrays: emb (N, D) float32; generator_idx, num_generated_tokens,
    target (remaining tokens) all (N,)."""

    emb: np.ndarray
    generator_idx: np.ndarray
    num_generated_tokens: np.ndarray
    target: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.emb)
        for name in ("generator_idx", "num_generated_tokens", "target"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"EmbeddedSplit.{name} has {len(getattr(self, name))} rows, emb {n}")

    def __len__(self) -> int:
        return len(self.emb)


class _DictDataset(Dataset):
    def __init__(self, split: EmbeddedSplit) -> None:
        self.emb = torch.from_numpy(np.ascontiguousarray(split.emb, dtype=np.float32))
        self.gen = torch.from_numpy(np.asarray(split.generator_idx, dtype=np.int64))
        self.ngen = torch.from_numpy(np.asarray(split.num_generated_tokens, dtype=np.float32))
        self.target = torch.from_numpy(np.asarray(split.target, dtype=np.float32))

    def __len__(self) -> int:
        return len(self.target)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"emb": self.emb[i], "generator_idx": self.gen[i],
                "num_generated_tokens": self.ngen[i], "target": self.target[i]}


class EmbeddingDataModule(L.LightningDataModule):
    """Train/val/test loaders over ``EmbeddedSplit``s.

    Args:
        splits: split name → EmbeddedSplit (``train`` and ``val`` required for fit).
        batch_size: rows per batch.
        seed: shuffling seed for the train loader (a dedicated torch.Generator).
    """

    def __init__(self, splits: dict[str, EmbeddedSplit], batch_size: int = 256, seed: int = 0):
        super().__init__()
        for name in ("train", "val"):
            if name not in splits or len(splits[name]) == 0:
                raise ValueError(f"EmbeddingDataModule: split {name!r} is missing or empty")
        self.splits = splits
        self.batch_size = int(batch_size)
        self.seed = int(seed)

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        gen = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(_DictDataset(self.splits[name]), batch_size=self.batch_size,
                          shuffle=shuffle, generator=gen, num_workers=0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)

    def loader(self, name: str) -> DataLoader:
        """An unshuffled loader for any split (prediction/evaluation)."""
        return self._loader(name, False)
