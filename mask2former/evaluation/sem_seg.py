"""Semantic-segmentation metrics: one confusion matrix over the whole set, then IoU per class.

The formulas are the competition baseline's: a bincount histogram over valid ground-truth pixels
(0 <= gt < num_classes; the ignore label falls outside), IoU = diag / (row + col - diag), and
means taken with nanmean so that a class absent from both ground truth and prediction (0 / 0) is
skipped. All metrics are fractions in [0, 1].
"""

from __future__ import annotations

import io
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..io.files import atomic_write_bytes, atomic_write_json

logger = logging.getLogger(__name__)


def confusion_matrix(gt: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """num_classes x num_classes int64 counts; rows are ground truth, columns predictions."""
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} differ in shape")
    valid = (gt >= 0) & (gt < num_classes)
    pred_valid = pred[valid].astype(np.int64)
    if pred_valid.size and (pred_valid.min() < 0 or pred_valid.max() >= num_classes):
        raise ValueError(
            f"prediction values must lie in [0, {num_classes}), got {pred_valid.min()}..{pred_valid.max()}"
        )
    index = num_classes * gt[valid].astype(np.int64) + pred_valid
    return np.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


def metrics_from_confusion(hist: np.ndarray) -> dict[str, Any]:
    """pixel accuracy, mean class accuracy, per-class IoU, mIoU and frequency-weighted IoU."""
    hist = np.asarray(hist)
    diag = np.diag(hist)
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of all-nan (an empty set) is nan
        pixel_accuracy = diag.sum() / hist.sum()
        class_accuracy = diag / hist.sum(axis=1)
        iou = diag / (hist.sum(axis=1) + hist.sum(axis=0) - diag)
        freq = hist.sum(axis=1) / hist.sum()
        mean_class_accuracy = np.nanmean(class_accuracy)
        mean_iou = np.nanmean(iou)
    return {
        "pACC": float(pixel_accuracy),
        "mACC": float(mean_class_accuracy),
        "mIoU": float(mean_iou),
        "fwIoU": float((freq[freq > 0] * iou[freq > 0]).sum()),
        "IoU": [float(v) for v in iou],
        "ACC": [float(v) for v in class_accuracy],
    }


def format_table(metrics: dict[str, Any], class_names: list[str], hist: np.ndarray | None = None) -> str:
    """A per-class table (IoU, accuracy, pixel counts) followed by the summary metrics."""
    width = max(12, max(len(name) for name in class_names) + 2)
    lines = [f"{'class':<{width}}{'IoU':>8}{'Acc':>8}{'GT px':>14}{'pred px':>14}"]
    for index, name in enumerate(class_names):
        gt_px = int(hist[index].sum()) if hist is not None else 0
        pred_px = int(hist[:, index].sum()) if hist is not None else 0
        lines.append(
            f"{name:<{width}}{_pct(metrics['IoU'][index]):>8}{_pct(metrics['ACC'][index]):>8}{gt_px:>14}{pred_px:>14}"
        )
    lines.append(
        f"pixel acc {metrics['pACC']:.4f}   mean class acc {metrics['mACC']:.4f}   fwIoU {metrics['fwIoU']:.4f}"
    )
    return "\n".join(lines)


def _pct(value: float) -> str:
    return "n/a" if value != value else f"{value:.4f}"


def plot_confusion_matrix(hist: np.ndarray, class_names: list[str], path: str | Path) -> None:
    """Row-normalised confusion matrix (share of each true class) as a PNG, with counts per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hist = np.asarray(hist, dtype=np.float64)
    rows = hist.sum(axis=1, keepdims=True)
    shares = np.divide(hist, rows, out=np.zeros_like(hist), where=rows > 0)
    size = max(5.0, 0.55 * len(class_names) + 2.5)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(class_names)), class_names, rotation=60, ha="right")
    ax.set_yticks(range(len(class_names)), [f"{n} ({int(r)})" for n, r in zip(class_names, rows[:, 0], strict=True)])
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth (pixels)")
    for i in range(len(class_names)):
        for j in range(len(class_names)):
            if shares[i, j] >= 0.005:
                ax.text(
                    j,
                    i,
                    f"{shares[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if shares[i, j] > 0.5 else "black",
                )
    ax.set_title("confusion matrix (row-normalised)")
    fig.tight_layout()
    encoded = io.BytesIO()
    fig.savefig(encoded, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, encoded.getvalue())


class SemSegEvaluator:
    """detectron2's evaluator interface: `reset()`, `process(inputs, outputs)`, `evaluate()`.

    `inputs` are dataset dicts with "sem_seg_file_name" (or a "sem_seg" label tensor at the
    output's size); `outputs` carry "sem_seg": C x H x W scores or an H x W label map.
    """

    def __init__(
        self,
        class_names: list[str],
        ignore_label: int = 255,
        output_dir: str | Path | None = None,
        log_table: bool = True,
    ) -> None:
        self.class_names = list(class_names)
        self.log_table = log_table
        self.num_classes = len(class_names)
        self.ignore_label = ignore_label
        self.output_dir = Path(output_dir) if output_dir else None
        self.reset()

    def reset(self) -> None:
        self.hist = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        self.num_images = 0

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        from ..io.images import read_label  # the one label reader, as training uses

        for item, output in zip(inputs, outputs, strict=True):
            pred = output["sem_seg"]
            if isinstance(pred, torch.Tensor):
                pred = (pred.argmax(dim=0) if pred.ndim == 3 else pred).cpu().numpy()
            elif pred.ndim == 3:
                pred = pred.argmax(axis=0)
            gt = read_label(item["sem_seg_file_name"]) if "sem_seg_file_name" in item else np.asarray(item["sem_seg"])
            if gt.shape != pred.shape:
                raise ValueError(
                    f"{item.get('file_name', 'image')}: prediction is {pred.shape[1]}x{pred.shape[0]}, "
                    f"ground truth {gt.shape[1]}x{gt.shape[0]}; resize the prediction to the image first"
                )
            self.add(gt, pred)

    def add(self, gt: np.ndarray, pred: np.ndarray) -> None:
        """Accumulate one image's label maps (gt may hold the ignore label)."""
        self.hist += confusion_matrix(gt, pred, self.num_classes)
        self.num_images += 1

    def evaluate(self) -> dict[str, Any]:
        hist, num_images = self.hist.copy(), self.num_images
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # each rank saw its shard: the sums over ranks (integers, so exactly one process's numbers)
            tensor = torch.from_numpy(np.append(hist.ravel(), num_images))
            torch.distributed.all_reduce(tensor)
            hist, num_images = tensor[:-1].numpy().reshape(hist.shape), int(tensor[-1])
        metrics = metrics_from_confusion(hist)
        self.table = format_table(metrics, self.class_names, hist)
        if self.log_table:
            logger.info("semantic segmentation on %d image(s):\n%s", num_images, self.table)
        if self.output_dir is not None:
            self.write(hist, metrics, num_images)
        result = {key: metrics[key] for key in ("mIoU", "fwIoU", "mACC", "pACC")}
        result.update({f"IoU-{name}": metrics["IoU"][i] for i, name in enumerate(self.class_names)})
        return {"sem_seg": result}

    def write(self, hist: np.ndarray, metrics: dict[str, Any], num_images: int) -> None:
        assert self.output_dir is not None
        atomic_write_json(
            self.output_dir / "sem_seg_metrics.json",
            {"class_names": self.class_names, "num_images": num_images, **metrics},
            indent=2,
        )
        atomic_write_json(
            self.output_dir / "confusion_matrix.json",
            {
                "class_names": self.class_names,
                "rows": "ground truth",
                "columns": "prediction",
                "matrix": hist.tolist(),
            },
        )
        plot_confusion_matrix(hist, self.class_names, self.output_dir / "confusion_matrix.png")


def load_confusion_matrix(path: str | Path) -> tuple[np.ndarray, list[str]]:
    """Read a confusion_matrix.json written by `SemSegEvaluator`."""
    data = json.loads(Path(path).read_text())
    return np.asarray(data["matrix"], dtype=np.int64), list(data["class_names"])
