"""Training callbacks: iteration progress (a bar on a terminal, log lines with rate and ETA), the loss-curve picture."""

from __future__ import annotations

import logging
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import IO, Any

import lightning as L
from tqdm import tqdm

from ..io.files import atomic_open
from .metrics_log import read_metrics

logger = logging.getLogger(__name__)


class IterationProgress(L.Callback):
    """A log line every `log_period` iterations (loss, lr, it/s, ETA) and, when stderr is a terminal, a tqdm bar
    over SOLVER.MAX_ITER; into a pipe or a log file only the lines go (no carriage-return updates)."""

    def __init__(self, max_iter: int, log_period: int = 20, stream: IO | None = None) -> None:
        self.max_iter = max_iter
        self.log_period = max(1, log_period)
        self.stream = stream
        self.bar: tqdm | None = None
        self.window_start = 0.0
        self.window_iter = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        stream = self.stream or sys.stderr
        if trainer.is_global_zero and _is_terminal(stream):
            self.bar = tqdm(
                total=self.max_iter,
                initial=trainer.global_step,
                desc="train",
                unit="it",
                dynamic_ncols=True,
                file=stream,
            )
        self.window_start, self.window_iter = time.perf_counter(), trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if not trainer.is_global_zero:
            return
        iteration = trainer.global_step
        metrics = trainer.callback_metrics
        loss = float(metrics["total_loss"]) if "total_loss" in metrics else float("nan")
        # the LR this iteration ran with (as metrics.csv logs it); the optimizer's is already the next iteration's
        lr = float(metrics["lr"]) if "lr" in metrics else trainer.optimizers[0].param_groups[0]["lr"]
        if self.bar is not None:
            self.bar.update(iteration - self.bar.n)
            self.bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", refresh=False)
        if iteration % self.log_period == 0 or iteration == self.max_iter:
            elapsed = time.perf_counter() - self.window_start
            rate = (iteration - self.window_iter) / elapsed if elapsed > 0 else 0.0
            eta = timedelta(seconds=int((self.max_iter - iteration) / rate)) if rate > 0 else "?"
            logger.info(
                "iter %d/%d  loss %.4f  lr %.3e  %.2f it/s  eta %s",
                iteration,
                self.max_iter,
                loss,
                lr,
                rate,
                eta,
            )
            self.window_start, self.window_iter = time.perf_counter(), iteration

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.on_train_end(trainer, pl_module)


def plot_loss_curve(metrics_csv: str | Path, path: str | Path) -> bool:
    """total_loss (and mIoU when present) against iteration, from Lightning's metrics.csv; False if no data."""
    rows = read_metrics(metrics_csv)
    losses = [(int(r["step"]), float(r["total_loss"])) for r in rows if r.get("total_loss")]
    mious = [(int(r["step"]), float(r["sem_seg/mIoU"])) for r in rows if r.get("sem_seg/mIoU")]
    if not losses:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(*zip(*losses, strict=True), color="tab:blue", label="total loss")
    ax.set_xlabel("iteration")
    ax.set_ylabel("total loss", color="tab:blue")
    if mious:
        other = ax.twinx()
        other.plot(*zip(*mious, strict=True), "o-", color="tab:red", label="val mIoU")
        other.set_ylabel("val mIoU", color="tab:red")
        other.set_ylim(0, 1)
    ax.set_title("training")
    fig.tight_layout()
    try:
        with atomic_open(path, "wb") as handle:
            fig.savefig(handle, dpi=100, format="png")
    finally:
        plt.close(fig)
    return True


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
