"""K-fold splits of a COCO json, grouped by image so no image is in two folds.

"group": StratifiedGroupKFold over annotations (y = category, group = image), the competition
teams' split; images without annotations take part as one row of class 0. "multilabel":
MultilabelStratifiedKFold over images, each described by the set of classes it contains.
Fold jsons keep the original image and annotation ids, so every row traces back to train_all.
An annotation of a category or an image the json does not list is an error naming the json and the annotation;
the fold jsons are never written over the json being split.
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from ..io.coco_json import DataError, object_annotations, read_coco_json
from ..io.files import atomic_write_json
from ..utils.output_folder import check_claim, owned_output_folder

SPLIT_METHODS = ("group", "multilabel")

logger = logging.getLogger(__name__)


class FoldError(UserError, ValueError):
    """Folds that cannot be made as asked (a fold count, a method, an output over the input)."""


@dataclass
class FoldSplit:
    """What `split_json` did: the files written and the per-fold counts (`fold_class_counts`)."""

    paths: list[Path]
    table: np.ndarray
    class_names: list[str]


def split_json(
    json_file: str | Path, folds: int, out_dir: str | Path, method: str = "group", seed: int = 0
) -> FoldSplit:
    """Read, check and split `json_file` into train_fold{k}.json / val_fold{k}.json under `out_dir`."""
    json_file = Path(json_file)
    data = read_coco_json(json_file)
    check_fold_input(data, json_file)
    targets = {(Path(out_dir) / name).resolve() for name in fold_file_names(folds)}
    if json_file.resolve() in targets:
        raise FoldError(f"--out {out_dir}: the fold jsons would replace {json_file}, the json being split")
    job = {"json": str(json_file.resolve()), "folds": folds, "method": method, "seed": seed}
    written = fold_file_names(folds)
    check_claim(out_dir, "split_folds.py", job, writes=written)  # a folder of someone else's: refused first
    assignment = fold_assignment(data, folds, seed, method)
    with owned_output_folder(out_dir, "split_folds.py", job, writes=written) as owned:
        owned.record(*written)
        paths = write_folds(data, assignment, folds, out_dir)
    names = [c["name"] for c in sorted(data["categories"], key=lambda c: c["id"])]
    return FoldSplit(paths, fold_class_counts(data, assignment, folds), names)


def format_fold_table(split: FoldSplit) -> str:
    """Validation images and annotations per class, one column per fold and a total."""
    folds = split.table.shape[0]
    width = max(len(n) for n in split.class_names + ["images"]) + 2
    lines = [f"{'validation':<{width}}" + "".join(f"{f'fold{k}':>8}" for k in range(folds)) + f"{'total':>8}"]
    for column, name in enumerate(["images"] + split.class_names):
        counts = split.table[:, column]
        lines.append(f"{name:<{width}}" + "".join(f"{c:>8}" for c in counts) + f"{counts.sum():>8}")
    return "\n".join(lines)


def check_fold_input(data: dict[str, Any], json_file: str | Path) -> None:
    """Every image has an id, every annotation an id-listed image and a listed category (DataError otherwise)."""
    image_ids = set()
    for index, image in enumerate(data["images"]):
        if not isinstance(image, dict) or "id" not in image:
            raise DataError(f"{json_file}: image entry {index} has no 'id'")
        image_ids.add(image["id"])
    known = {c["id"] for c in data["categories"]}
    for ann in data["annotations"]:
        where = f"{json_file}: annotation {ann.get('id')!r} (image {ann.get('image_id')!r})"
        if ann.get("image_id") not in image_ids:
            raise DataError(f"{where} refers to an image id that is not in 'images'")
        if ann.get("category_id") not in known:
            listed = ", ".join(str(c) for c in sorted(known)) or "none"
            raise DataError(
                f"{where} has category_id {ann.get('category_id')!r}, which is not in 'categories' (listed: {listed})"
            )


def fold_file_names(folds: int) -> list[str]:
    return [name for fold in range(folds) for name in (f"train_fold{fold}.json", f"val_fold{fold}.json")]


def fold_assignment(data: dict[str, Any], folds: int, seed: int = 0, method: str = "group") -> dict[int, int]:
    """image id -> the fold (0..folds-1) where it is a validation image."""
    image_ids = [image["id"] for image in data["images"]]
    if folds < 2 or folds > len(image_ids):
        raise FoldError(f"--folds must be between 2 and the number of images ({len(image_ids)}), got {folds}")
    if method == "group":
        return _group_folds(data, image_ids, folds, seed)
    if method == "multilabel":
        return _multilabel_folds(data, image_ids, folds, seed)
    raise FoldError(f"unknown split method {method!r}; use one of {SPLIT_METHODS}")


def _group_folds(data: dict[str, Any], image_ids: list[int], folds: int, seed: int) -> dict[int, int]:
    from sklearn.model_selection import StratifiedGroupKFold

    objects = object_annotations(data["annotations"])
    labels = [ann["category_id"] for ann in objects]
    groups = [ann["image_id"] for ann in objects]
    annotated = set(groups)
    for image_id in image_ids:
        if image_id not in annotated:
            labels.append(0)
            groups.append(image_id)
    check_class_counts(data, labels, folds)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    assignment: dict[int, int] = {}
    with warnings.catch_warnings():  # said once, in check_class_counts's words
        warnings.filterwarnings("ignore", message="The least populated class in y has only")
        for fold, (_, val_rows) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups)):
            for row in val_rows:
                assignment[groups[row]] = fold
    return assignment


def check_class_counts(data: dict[str, Any], labels: list[int], folds: int) -> list[str]:
    """Stratifying by class needs a class with an annotation per fold: FoldError when none has; one warning naming
    the classes with fewer annotations than folds (some folds' validation images hold none of them, so those folds
    cannot score them); returns their names."""
    names = {c["id"]: c["name"] for c in data["categories"]}
    names[0] = "(images without annotations)"
    counts = Counter(labels)
    if counts and max(counts.values()) < folds:
        most, label = max((count, label) for label, count in counts.items())
        fewer = f"give --folds {most} or fewer, or " if most >= 2 else "use "
        raise FoldError(
            f"--folds {folds}: no class has {folds} annotations to share out among the folds (the most: {most}, "
            f"{names.get(label)}): {fewer}--method multilabel"
        )
    rare = [f"{names.get(label, label)} ({counts[label]})" for label in sorted(counts) if counts[label] < folds]
    if rare:
        logger.warning(
            "fold split: %s %s fewer annotations than the %d folds, so some folds' validation sets hold none of %s",
            ", ".join(rare),
            "has" if len(rare) == 1 else "have",
            folds,
            "it" if len(rare) == 1 else "them",
        )
    return [item.rsplit(" (", 1)[0] for item in rare]


def _multilabel_folds(data: dict[str, Any], image_ids: list[int], folds: int, seed: int) -> dict[int, int]:
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    category_ids = sorted(c["id"] for c in data["categories"])
    column = {cid: i + 1 for i, cid in enumerate(category_ids)}  # column 0: "has no object"
    row = {image_id: i for i, image_id in enumerate(image_ids)}
    targets = np.zeros((len(image_ids), len(category_ids) + 1), dtype=np.int64)
    for ann in object_annotations(data["annotations"]):
        targets[row[ann["image_id"]], column[ann["category_id"]]] = 1
    targets[targets.sum(axis=1) == 0, 0] = 1
    splitter = MultilabelStratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    assignment: dict[int, int] = {}
    for fold, (_, val_rows) in enumerate(splitter.split(np.zeros(len(image_ids)), targets)):
        for index in val_rows:
            assignment[image_ids[index]] = fold
    return assignment


def subset(data: dict[str, Any], image_ids: set[int]) -> dict[str, Any]:
    """The json restricted to some images (and their annotations); other sections kept."""
    out = {key: value for key, value in data.items() if key not in ("images", "annotations")}
    out["images"] = [image for image in data["images"] if image["id"] in image_ids]
    out["annotations"] = [ann for ann in data["annotations"] if ann["image_id"] in image_ids]
    return out


def write_folds(data: dict[str, Any], assignment: dict[int, int], folds: int, out_dir: str | Path) -> list[Path]:
    """train_fold{k}.json / val_fold{k}.json for k in 0..folds-1; returns the paths written."""
    out_dir = Path(out_dir)
    written = []
    for fold in range(folds):
        val_ids = {image_id for image_id, f in assignment.items() if f == fold}
        train_ids = set(assignment) - val_ids
        for name, ids in ((f"train_fold{fold}.json", train_ids), (f"val_fold{fold}.json", val_ids)):
            atomic_write_json(out_dir / name, subset(data, ids))
            written.append(out_dir / name)
    return written


def fold_class_counts(data: dict[str, Any], assignment: dict[int, int], folds: int) -> np.ndarray:
    """folds x (1 + K) table: images per fold, then annotations of each category (id order) per fold."""
    category_ids = sorted(c["id"] for c in data["categories"])
    column = {cid: i + 1 for i, cid in enumerate(category_ids)}
    table = np.zeros((folds, len(category_ids) + 1), dtype=np.int64)
    for fold in assignment.values():
        table[fold, 0] += 1
    for ann in object_annotations(data["annotations"]):
        table[assignment[ann["image_id"]], column[ann["category_id"]]] += 1
    return table
