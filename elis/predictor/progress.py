"""Lightning progress as plain lines: one per epoch, readable in a redirected log.

``EpochLines`` replaces Lightning's ``TQDMProgressBar`` (whose ``\\r`` redraws made
``make run``'s log 25 KB of lines thousands of characters long). It is a ``ProgressBar``
subclass, so Lightning adds no bar of its own; after each training epoch it logs::

    epoch 3/50: train/loss=1234.5 val/loss=2345.6 val/mae=87.1 (4.2 s)
"""

from __future__ import annotations

import logging
import time

from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar

log = logging.getLogger(__name__)


class EpochLines(ProgressBar):
    """Log one line per finished training epoch with the logged metrics (see module doc)."""

    def __init__(self) -> None:
        super().__init__()
        self._enabled = True
        self._t0 = time.monotonic()

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._t0 = time.monotonic()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not self._enabled or trainer.sanity_checking:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()
                   if getattr(v, "numel", lambda: 1)() == 1}
        shown = " ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()))
        of = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        log.info("epoch %d%s: %s (%.1f s)", trainer.current_epoch + 1, of, shown,
                 time.monotonic() - self._t0)
