"""Training callbacks: an iteration progress bar with ETA, periodic log lines, the loss-curve picture."""

from __future__ import annotations

import csv
import logging
import time
from datetime import timedelta
from pathlib import Path

import lightning as L
from tqdm import tqdm

logger = logging.getLogger(__name__)


class IterationProgress(L.Callback):
    """A tqdm bar over SOLVER.MAX_ITER (it/s and ETA) and a log line every `log_period` iterations."""

    def __init__(self, max_iter: int, log_period: int = 20) -> None:
        self.max_iter = max_iter
        self.log_period = max(1, log_period)
        self.bar: tqdm | None = None
        self.window_start = 0.0
        self.window_iter = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            self.bar = tqdm(
                total=self.max_iter, initial=trainer.global_step, desc="train", unit="it", dynamic_ncols=True
            )
        self.window_start, self.window_iter = time.perf_counter(), trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if not trainer.is_global_zero:
            return
        iteration = trainer.global_step
        metrics = trainer.callback_metrics
        loss = float(metrics["total_loss"]) if "total_loss" in metrics else float("nan")
        lr = trainer.optimizers[0].param_groups[0]["lr"]
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
    rows = []
    if Path(metrics_csv).is_file():
        with Path(metrics_csv).open() as handle:
            rows = list(csv.DictReader(handle))
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
    tmp = Path(path).with_name(f".{Path(path).name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return True
