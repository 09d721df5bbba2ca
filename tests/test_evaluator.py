"""The evaluator equals the competition baseline's formula exactly, and reports what it should."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from mask2former.evaluation.sem_seg import SemSegEvaluator, confusion_matrix, metrics_from_confusion


def baseline_scores(pairs: list[tuple[np.ndarray, np.ndarray]], n_class: int) -> dict:
    """An independent transcription of the baseline's _fast_hist + label_accuracy_score."""
    hist = np.zeros((n_class, n_class))
    for gt, pred in pairs:
        for lt, lp in zip(gt, pred, strict=True):
            mask = (lt >= 0) & (lt < n_class)
            hist += np.bincount(n_class * lt[mask].astype(int) + lp[mask], minlength=n_class**2).reshape(
                n_class, n_class
            )
    with np.errstate(divide="ignore", invalid="ignore"):
        acc = np.diag(hist).sum() / hist.sum()
        acc_cls = np.nanmean(np.diag(hist) / hist.sum(axis=1))
        iu = np.diag(hist) / (hist.sum(axis=1) + hist.sum(axis=0) - np.diag(hist))
        mean_iu = np.nanmean(iu)
        freq = hist.sum(axis=1) / hist.sum()
        fwavacc = (freq[freq > 0] * iu[freq > 0]).sum()
    return {"pACC": acc, "mACC": acc_cls, "mIoU": mean_iu, "fwIoU": fwavacc, "IoU": iu}


@pytest.mark.parametrize("seed", range(5))
def test_equals_the_baseline_formula_exactly(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_class = 11
    pairs = []
    for _ in range(4):
        gt = rng.integers(0, n_class, (40, 50))
        gt[rng.random(gt.shape) < 0.1] = 255  # ignored pixels
        gt[gt == 9] = 0  # one class absent from the ground truth ...
        pred = rng.integers(0, n_class, (40, 50))
        pred[pred == 9] = 1  # ... and from the predictions: skipped by nanmean
        pairs.append((gt, pred))
    evaluator = SemSegEvaluator([f"c{i}" for i in range(n_class)], log_table=False)
    for gt, pred in pairs:
        evaluator.add(gt, pred)
    ours = metrics_from_confusion(evaluator.hist)
    theirs = baseline_scores(pairs, n_class)
    for key in ("pACC", "mACC", "mIoU", "fwIoU"):
        assert ours[key] == theirs[key], key  # exactly, not approximately
    assert np.isnan(ours["IoU"][9])
    np.testing.assert_array_equal(np.array(ours["IoU"]), theirs["IoU"])
    result = evaluator.evaluate()["sem_seg"]
    assert result["mIoU"] == theirs["mIoU"] and np.isnan(result["IoU-c9"])


def test_hand_computed_example() -> None:
    gt = np.array([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 2, 1]])
    hist = confusion_matrix(gt, pred, 3)
    np.testing.assert_array_equal(hist, [[1, 1, 0], [0, 3, 0], [1, 0, 1]])
    metrics = metrics_from_confusion(hist)
    assert metrics["IoU"] == pytest.approx([1 / 3, 3 / 4, 1 / 2])
    assert metrics["mIoU"] == pytest.approx((1 / 3 + 3 / 4 + 1 / 2) / 3)
    assert metrics["pACC"] == pytest.approx(5 / 7)


def test_rejects_out_of_range_predictions_and_shape_mismatch() -> None:
    with pytest.raises(ValueError, match=r"prediction values must lie in \[0, 3\), got 0..7"):
        confusion_matrix(np.zeros((2, 2), int), np.array([[0, 7], [0, 0]]), 3)
    with pytest.raises(ValueError, match="differ in shape"):
        confusion_matrix(np.zeros((2, 2), int), np.zeros((2, 3), int), 3)


def test_process_reads_label_files_and_writes_reports(tmp_path: Path) -> None:
    gt = np.zeros((8, 8), np.uint8)
    gt[:4] = 1
    gt[0, 0] = 255
    cv2.imwrite(str(tmp_path / "gt.png"), gt)
    scores = torch.zeros(2, 8, 8)
    scores[1, :5] = 1.0  # predicts class 1 on rows 0..4
    evaluator = SemSegEvaluator(["Background", "Paper"], output_dir=tmp_path / "eval", log_table=False)
    evaluator.process([{"sem_seg_file_name": str(tmp_path / "gt.png"), "file_name": "a.jpg"}], [{"sem_seg": scores}])
    result = evaluator.evaluate()["sem_seg"]
    # class 1: 31 true positives, 8 false positives (row 4) -> 31/39; background: 24/32
    assert result["IoU-Paper"] == pytest.approx(31 / 39)
    assert result["IoU-Background"] == pytest.approx(24 / 32)
    saved = json.loads((tmp_path / "eval" / "confusion_matrix.json").read_text())
    assert saved["matrix"] == [[24, 8], [0, 31]] and saved["class_names"] == ["Background", "Paper"]
    png = cv2.imread(str(tmp_path / "eval" / "confusion_matrix.png"))
    assert png is not None and png.shape[0] > 100
    assert "Paper" in evaluator.table and "0.7949" in evaluator.table
    with pytest.raises(ValueError, match="a.jpg: prediction is 4x4, ground truth 8x8"):
        evaluator.process(
            [{"sem_seg_file_name": str(tmp_path / "gt.png"), "file_name": "a.jpg"}],
            [{"sem_seg": torch.zeros(2, 4, 4)}],
        )
