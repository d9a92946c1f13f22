"""LightningModule for the remaining-tokens regressor on cached embeddings.

Targets may be trained in a transformed space (``identity`` or ``log1p``; output tokens are
heavy-tailed; yet identity + mse measured better on alpaca_eval than log1p + huber,
which under-predicts long answers, so it is the default); predictions are always returned in
tokens, clipped at >= 0. Loss: ``mse``, ``l1`` or ``huber`` (on the transformed target).
Logged metrics (Lightning's ``split/metric``): ``train/loss``, ``val/loss``, ``val/mae``
(tokens; the checkpoint and early-stopping monitor), ``val/r2``. Every logged metric is
accumulated in float64 (torchmetrics states set to float64, inputs cast): in float32, R² of
targets 8000 + U{0..10} came out 1.49 instead of 0.61 (the sums of squares cancel).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torchmetrics
from torch import nn

from elis.predictor.head import MLPHead

TARGET_TRANSFORMS = ("identity", "log1p")
LOSSES = ("mse", "l1", "huber")


def forward_transform(y: torch.Tensor, name: str) -> torch.Tensor:
    """Tokens → training space."""
    if name == "identity":
        return y
    if name == "log1p":
        return torch.log1p(y)
    raise ValueError(f"target_transform={name!r}; valid choices: {list(TARGET_TRANSFORMS)}")


def inverse_transform(z: torch.Tensor, name: str) -> torch.Tensor:
    """Training space → tokens, clipped at >= 0 (log1p inverse capped to avoid overflow)."""
    if name == "identity":
        return z.clamp(min=0)
    if name == "log1p":
        return torch.expm1(z.clamp(max=20.0)).clamp(min=0)
    raise ValueError(f"target_transform={name!r}; valid choices: {list(TARGET_TRANSFORMS)}")


def make_loss(name: str, huber_delta: float = 1.0) -> nn.Module:
    if name == "mse":
        return nn.MSELoss()
    if name == "l1":
        return nn.L1Loss()
    if name == "huber":
        return nn.HuberLoss(delta=huber_delta)
    raise ValueError(f"loss={name!r}; valid choices: {list(LOSSES)}")


class LengthRegressor(L.LightningModule):
    """MLP head + target transform + loss. Batches are dicts from ``EmbeddingDataModule``.

    Args:
        head: keyword arguments of ``MLPHead`` (kept as a dict so the checkpoint rebuilds it).
        target_transform: ``identity`` or ``log1p``.
        loss: ``mse``, ``l1`` or ``huber``; huber_delta its delta.
        lr, weight_decay: AdamW settings.
        generators: the generator vocabulary (index 0 = unknown), saved in the checkpoint.
        encoder: the encoder settings (``TextEncoder`` kwargs), saved so the serving side
            rebuilds the same encoder from the checkpoint alone.
        generator_dropout: with generator conditioning, the probability that a training row's
            generator is replaced by index 0 ("unknown"), so unseen generators at serving time
            get a trained embedding instead of a random one.
    """

    def __init__(
        self,
        head: dict[str, Any],
        target_transform: str = "identity",
        loss: str = "mse",
        huber_delta: float = 1.0,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        generators: list[str] | None = None,
        encoder: dict[str, Any] | None = None,
        generator_dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if target_transform not in TARGET_TRANSFORMS:
            raise ValueError(
                f"target_transform={target_transform!r}; valid: {list(TARGET_TRANSFORMS)}"
            )
        self.save_hyperparameters()
        self.head = MLPHead(**head)
        self.loss_fn = make_loss(loss, huber_delta)
        self.val_mae = torchmetrics.MeanAbsoluteError()
        self.val_r2 = torchmetrics.R2Score()
        self.val_loss = torchmetrics.MeanMetric()
        self.train_loss = torchmetrics.MeanMetric()
        self._float64_metrics()

    def _float64_metrics(self) -> None:
        # module.to(float32) (load_from_checkpoint, precision plugins) casts metric states
        # too, so float64 is re-asserted at every epoch start.
        for m in (self.val_mae, self.val_r2, self.val_loss, self.train_loss):
            m.set_dtype(torch.float64)

    def on_train_epoch_start(self) -> None:
        self._float64_metrics()

    def on_validation_epoch_start(self) -> None:
        self._float64_metrics()

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Raw output in the training space, shape (B,)."""
        return self.head(batch["emb"], batch.get("generator_idx"), batch.get("num_generated_tokens"))

    def predict_tokens(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Predicted remaining tokens, (B,), >= 0."""
        return inverse_transform(self(batch), self.hparams.target_transform)

    def _loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        z = self(batch)
        target = forward_transform(batch["target"].to(z.dtype), self.hparams.target_transform)
        return self.loss_fn(z, target), z

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        p = float(self.hparams.generator_dropout)
        if self.head.num_generators > 0 and p > 0 and "generator_idx" in batch:
            drop = torch.rand(batch["generator_idx"].shape, device=self.device) < p
            batch = {**batch, "generator_idx": batch["generator_idx"].masked_fill(drop, 0)}
        loss, _ = self._loss(batch)
        self.train_loss.update(loss.detach().double(), weight=len(batch["target"]))
        return loss

    def on_train_epoch_end(self) -> None:
        self.log("train/loss", self.train_loss.compute(), prog_bar=True)
        self.train_loss.reset()

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss, z = self._loss(batch)
        pred = inverse_transform(z, self.hparams.target_transform)
        pred, y = pred.double(), batch["target"].double()
        self.val_mae.update(pred, y)
        self.val_r2.update(pred, y)
        self.val_loss.update(loss.detach().double(), weight=len(y))

    def on_validation_epoch_end(self) -> None:
        self.log("val/loss", self.val_loss.compute())
        self.log("val/mae", self.val_mae.compute(), prog_bar=True)
        self.log("val/r2", self.val_r2.compute())
        self.val_loss.reset()
        self.val_mae.reset()
        self.val_r2.reset()

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.predict_tokens(batch)

    def configure_optimizers(self):
        return torch.optim.AdamW(
            self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )
