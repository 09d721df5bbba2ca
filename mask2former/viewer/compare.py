"""Prediction sets against ground truth (or against each other when there is none).

A prediction set is a submission CSV (256x256 label maps, image_id = the json's file_name) or a
prediction folder (`probs/<file_name>.npz`, see mask2former/io/probabilities.py; the label map is
the argmax). Scoring follows tools/evaluate.py exactly: one confusion matrix per image with the
evaluator's `confusion_matrix`, the ground truth reduced by nearest neighbour to the prediction's
size, summed over the images, then `metrics_from_confusion`, so the numbers equal
`SemSegEvaluator`'s on the same data. Without ground truth, set B is scored against set A.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import UserError
from ..evaluation.sem_seg import confusion_matrix, metrics_from_confusion
from ..io.probabilities import load_label_map, probability_path
from ..io.submission import SubmissionError, read_submission
from .data import DatasetIndex, match_size
from .paths import Roots, file_signature, list_files, tree_signature


@dataclass(frozen=True)
class PredictionSet:
    """A submission CSV (`kind` "csv") or a prediction folder with probs/ (`kind` "folder")."""

    kind: str
    path: Path
    name: str

    def signature(self) -> tuple[str, str, int, int] | tuple[str, str, str]:
        """Cache key: the CSV's (path, mtime, size), or a digest over the folder's probs/ files."""
        if self.kind == "csv":
            return (self.kind, *file_signature(self.path))
        return self.kind, str(self.path), tree_signature(self.path / "probs")


def discover_prediction_sets(roots: Roots, paths: list[Path]) -> list[PredictionSet]:
    """The prediction sets found in the given paths: CSV files, and folders holding probs/ (2 levels deep)."""
    found: dict[Path, PredictionSet] = {}
    for given in paths:
        path = roots.check(given)
        if path.is_file():
            found[path] = PredictionSet("csv", path, str(given))
            continue
        for folder in [path, *_subfolders(path, depth=2)]:
            if (folder / "probs").is_dir() and roots.contains(folder / "probs"):
                label = str(Path(given) / folder.relative_to(path)) if folder != path else str(given)
                found[folder] = PredictionSet("folder", folder, f"{label} (probabilities)")
        for csv in list_files(roots, path, ".csv", max_depth=2):
            found[csv] = PredictionSet("csv", csv, str(Path(given) / csv.relative_to(path)))
    return list(found.values())


def _subfolders(path: Path, depth: int) -> list[Path]:
    out: list[Path] = []
    if depth <= 0:
        return out
    try:
        entries = sorted(os.scandir(path), key=lambda e: e.name)
    except OSError:
        return out
    for entry in entries:
        if entry.is_dir(follow_symlinks=False) and not entry.name.startswith(".") and entry.name != "probs":
            out.append(Path(entry.path))
            out.extend(_subfolders(Path(entry.path), depth - 1))
    return out


def read_csv_predictions(path: Path) -> dict[str, np.ndarray]:
    """image_id -> uint8 256x256 label map; malformed or repeated rows raise `SubmissionError` naming the line."""
    rows = read_submission(path)
    for number, (image_id, label) in enumerate(rows.items(), start=2):  # line 1 is the header
        if label.min() < 0 or label.max() > 255:
            raise SubmissionError(
                f"{path}: line {number} ({image_id}): values must lie in 0..255, found {label.min()}..{label.max()}"
            )
    return {image_id: label.astype(np.uint8) for image_id, label in rows.items()}


class FolderPredictions:
    """A prediction folder read lazily: file_name -> argmax label map of its npz (path checked)."""

    def __init__(self, folder: Path, roots: Roots) -> None:
        self.folder = folder
        self.roots = roots

    def get(self, file_name: str) -> np.ndarray | None:
        path = self.roots.join(self.folder, probability_path("", file_name).as_posix())
        return load_label_map(path) if path.is_file() else None


@dataclass
class Comparison:
    """Scores of prediction sets over the images they all cover.

    reference: "ground truth" or the name of set A (then `names` holds only B).
    per_image: file_name, image_id, then per scored set `mIoU <tag>` and `pixel acc <tag>`, worst first.
    hists / metrics: the summed confusion matrix and `metrics_from_confusion` per scored set.
    """

    reference: str
    names: list[str]
    tags: list[str]
    per_image: pd.DataFrame
    hists: list[np.ndarray]
    metrics: list[dict[str, Any]]
    num_images: int
    missing: dict[str, list[str]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def compare(
    index: DatasetIndex,
    sources: list[Any],
    names: list[str],
    ground_truth: Callable[[Any], np.ndarray] | None,
) -> Comparison:
    """Score each source against the ground truth, or (ground_truth None) sources[1:] against sources[0].

    Only images that every source covers are scored; the others are listed in `missing`.
    """
    tags = [chr(ord("A") + i) for i in range(len(sources))]
    if ground_truth is None and len(sources) < 2:
        raise ValueError("without ground truth, two prediction sets are needed (B is scored against A)")
    scored = list(range(len(sources))) if ground_truth is not None else list(range(1, len(sources)))
    num_classes = index.num_classes
    hists = [np.zeros((num_classes, num_classes), dtype=np.int64) for _ in scored]
    missing: dict[str, list[str]] = {name: [] for name in names}
    errors: list[str] = []
    rows = []
    for image in index.images:
        file_name = image["file_name"]
        try:
            preds = [source.get(file_name) for source in sources]
        except (UserError, OSError, ValueError) as error:  # a truncated or non-finite npz, a path out of the roots
            errors.append(f"{file_name}: {error}")
            continue
        absent = [names[i] for i, pred in enumerate(preds) if pred is None]
        for name in absent:
            missing[name].append(file_name)
        if absent:
            continue
        reference = ground_truth(image["id"]) if ground_truth is not None else preds[0]
        try:
            image_hists = [
                confusion_matrix(match_size(reference, preds[i].shape), preds[i], num_classes) for i in scored
            ]
        except ValueError as error:
            errors.append(f"{file_name}: {error}")
            continue
        for slot, hist in enumerate(image_hists):
            hists[slot] += hist
        rows.append(_image_row(image, [tags[i] for i in scored], image_hists))
    return Comparison(
        reference="ground truth" if ground_truth is not None else names[0],
        names=[names[i] for i in scored],
        tags=[tags[i] for i in scored],
        per_image=_worst_first(rows, f"mIoU {tags[scored[0]]}"),
        hists=hists,
        metrics=[metrics_from_confusion(hist) for hist in hists],
        num_images=len(rows),
        missing={name: files for name, files in missing.items() if files},
        errors=errors,
    )


def _image_row(image: dict, tags: list[str], hists: list[np.ndarray]) -> dict[str, Any]:
    """One image's row of the per-image table: its mIoU and pixel accuracy per scored set (`tags`), and with
    two sets the difference of their mIoU."""
    row: dict[str, Any] = {"file_name": image["file_name"], "image_id": image["id"]}
    for tag, hist in zip(tags, hists, strict=True):
        metrics = metrics_from_confusion(hist)
        row[f"mIoU {tag}"] = metrics["mIoU"]
        row[f"pixel acc {tag}"] = metrics["pACC"]
    if len(tags) == 2:
        row["mIoU B - A"] = row[f"mIoU {tags[1]}"] - row[f"mIoU {tags[0]}"]
    return row


def _worst_first(rows: list[dict[str, Any]], column: str) -> pd.DataFrame:
    """The per-image table sorted by `column`, worst first (stable; images without a score last)."""
    per_image = pd.DataFrame(rows)
    if rows:
        per_image = per_image.sort_values(column, kind="stable", na_position="last")
        per_image = per_image.reset_index(drop=True)
    return per_image


def class_iou_table(comparison: Comparison, class_names: list[str]) -> pd.DataFrame:
    """Per class: IoU and accuracy of each scored set, reference pixels and predicted pixels."""
    table: dict[str, Any] = {"class": list(class_names)}
    reference = "GT" if comparison.reference == "ground truth" else "A"
    table[f"{reference} px"] = [int(v) for v in comparison.hists[0].sum(axis=1)]
    for tag, hist, metrics in zip(comparison.tags, comparison.hists, comparison.metrics, strict=True):
        table[f"IoU {tag}"] = [round(v, 4) if v == v else None for v in metrics["IoU"]]
        table[f"acc {tag}"] = [round(v, 4) if v == v else None for v in metrics["ACC"]]
        table[f"{tag} px"] = [int(v) for v in hist.sum(axis=0)]
    return pd.DataFrame(table)


def confusion_table(hist: np.ndarray, class_names: list[str]) -> pd.DataFrame:
    """The confusion matrix as a table: rows the reference's classes, columns the prediction's."""
    return pd.DataFrame(np.asarray(hist, dtype=np.int64), index=list(class_names), columns=list(class_names))
