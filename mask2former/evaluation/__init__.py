"""Metrics: confusion matrix, per-class IoU, mIoU."""

from .sem_seg import SemSegEvaluator, confusion_matrix, metrics_from_confusion

__all__ = ["SemSegEvaluator", "confusion_matrix", "metrics_from_confusion"]
