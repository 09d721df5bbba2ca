"""The checks of a dataset read from another format, before it is written or trained on: each problem is one line
naming the file and the item, an error (the data cannot be used as it is) or a warning (it can, but is likely a
labelling mistake; `--strict` makes warnings errors).

Errors: a label map of another size than its image, label ids outside the class list, polygons far outside their
image (the COCO loader would refuse them), a reader's refusal of one image (a colour not in the label map, an RGB
mask where an indexed one is expected). Warnings: images without labels in a labelled split, polygons reaching out
of their image, the same photo in two splits (a hash of the pixels) and near-duplicates across splits (a 64-bit
difference hash, a few bits apart), and the reader's own warnings. Alongside: per split and class, the pixels and
the images that hold the class.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from ...errors import UserError
from ...io.images import ReadError, read_image
from ...utils.progress import progress as with_progress
from ..coco_checks import OUT_OF_BOUNDS_MARGIN
from ..coco_semantic import check_class_lists
from .base import IGNORE_LABEL, FormatError, SourceDataset, SourceImage, label_map_of

logger = logging.getLogger(__name__)

NEAR_DUPLICATE_BITS = 4  # difference hashes at most this many of 64 bits apart are near-duplicates
SHOWN_PER_KIND = 20  # problem lines of one kind shown on the terminal; the report lists them all


class DatasetCheckError(UserError):
    """A dataset with errors (or, under --strict, warnings); the message gives the first and the count."""


@dataclass(frozen=True)
class Problem:
    severity: str  # "error" or "warning"
    kind: str  # what was found, e.g. "size mismatch", "duplicate across splits"
    message: str  # one line naming the file and the item

    def line(self) -> str:
        return f"{self.severity}: {self.message}"


@dataclass
class DatasetCheck:
    """What `check_dataset` found: the problems, and per split the pixels of each label (0..K, then ignore) and
    the images holding each label."""

    classes: list[str]
    problems: list[Problem] = field(default_factory=list)
    pixels: dict[str, list[int]] = field(default_factory=dict)
    images: dict[str, list[int]] = field(default_factory=dict)
    unlabelled: dict[str, int] = field(default_factory=dict)

    def add(self, severity: str, kind: str, message: str) -> None:
        self.problems.append(Problem(severity, kind, message))

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    def failing(self, strict: bool = False) -> list[Problem]:
        """The problems that stop the conversion: the errors, or under `strict` the warnings when there is none."""
        return self.errors or (self.warnings if strict else [])

    def log(self, strict: bool = False) -> None:
        """Each problem as one log line at its level (at most SHOWN_PER_KIND of each kind, then a count), but the
        one `raise_if_failed(strict)` ends the run with, so that no line is given twice."""
        failing = self.failing(strict)
        last = failing[0] if failing else None
        shown: dict[str, int] = {}
        for problem in self.problems:
            if problem is last:
                continue
            shown[problem.kind] = shown.get(problem.kind, 0) + 1
            if shown[problem.kind] <= SHOWN_PER_KIND:
                logger.log(logging.ERROR if problem.severity == "error" else logging.WARNING, "%s", problem.line())
        where = "fix these to see them" if failing else "the report lists them all"
        for kind, count in shown.items():
            if count > SHOWN_PER_KIND:
                logger.warning("... %d more of '%s' (%s)", count - SHOWN_PER_KIND, kind, where)

    def raise_if_failed(self, strict: bool = False) -> None:
        """DatasetCheckError giving the first error (or, `strict`, the first warning) and how many there are."""
        failing = self.failing(strict)
        if failing:
            what = "error(s)" if self.errors else "warning(s), and --strict makes warnings errors"
            more = f" (and {len(failing) - 1} more above)" if len(failing) > 1 else ""
            raise DatasetCheckError(f"{failing[0].message}{more}: {len(failing)} {what}; fix the data and run again")

    def class_table(self) -> dict[str, list[dict[str, Any]]]:
        """Per split: [{label, name, pixels, images}] for labels 0..K and ignore."""
        names = [*self.classes, "(ignore)"]
        labels = [*range(len(self.classes)), IGNORE_LABEL]
        return {
            split: [
                {"label": label, "name": name, "pixels": int(pixels[i]), "images": int(self.images[split][i])}
                for i, (label, name) in enumerate(zip(labels, names, strict=True))
            ]
            for split, pixels in self.pixels.items()
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "problems": [{"severity": p.severity, "kind": p.kind, "message": p.message} for p in self.problems],
            "classes": self.class_table(),
            "images_without_labels": dict(self.unlabelled),
        }


def check_dataset(dataset: SourceDataset, duplicates: bool = True, progress: bool = True) -> DatasetCheck:
    """Every check above over every image of `dataset` (its images decoded when `duplicates`)."""
    check = DatasetCheck(list(dataset.classes))
    for message in dataset.warnings:
        check.add("warning", "reader", message)
    labelled = set(dataset.labelled_splits())
    hashes: dict[str, list[tuple[str, bytes, int]]] = {}  # split -> (image path, pixel sha1, difference hash)
    for split, images in dataset.splits.items():
        check.pixels[split] = [0] * (len(dataset.classes) + 1)
        check.images[split] = [0] * (len(dataset.classes) + 1)
        check.unlabelled[split] = 0
        shown = with_progress(images, desc=f"check {split}", unit="img") if progress and len(images) >= 200 else images
        for image in shown:
            if split in labelled:
                _check_labels(image, split, check)
            if duplicates:
                hashes.setdefault(split, []).extend(_hashes(image, check))
    if duplicates:
        _check_duplicates(hashes, check)
    return check


def _check_labels(image: SourceImage, split: str, check: DatasetCheck) -> None:
    """The image's label problems, and its pixels and presence counted per class."""
    if not image.regions and image.label_map is None and image.label_path is None:
        check.unlabelled[split] += 1
        check.add("warning", "no labels", f"{image.path}: no labels in split {split}: taken as all background")
    num_labels = len(check.classes)
    for index, region in enumerate(image.regions):
        where = region.where or f"{image.path}: region {index}"
        if not (1 <= region.label < num_labels or region.label == IGNORE_LABEL):
            check.add(
                "error", "label outside the class list", f"{where}: label {region.label} outside 1..{num_labels - 1}"
            )
            return
        _check_polygons(region.polygons, image, where, check)
    try:
        label = label_map_of(image)
    except (FormatError, ReadError) as error:
        check.add("error", "unreadable labels", str(error))
        return
    if label.shape != (image.height, image.width):
        check.add(
            "error",
            "size mismatch",
            f"{image.label_path or image.path}: label map is {label.shape[1]}x{label.shape[0]}, its image "
            f"{image.path.name} is {image.width}x{image.height}",
        )
        return
    counts = np.bincount(label.ravel(), minlength=256)
    outside = [v for v in np.flatnonzero(counts).tolist() if v >= num_labels and v != IGNORE_LABEL]
    if outside:
        check.add(
            "error",
            "label outside the class list",
            f"{image.label_path or image.path}: label(s) {outside} outside the {num_labels} classes "
            f"(0..{num_labels - 1}) and {IGNORE_LABEL} (ignore)",
        )
        return
    present = [*counts[:num_labels].tolist(), int(counts[IGNORE_LABEL])]
    check.pixels[split] = [a + b for a, b in zip(check.pixels[split], present, strict=True)]
    check.images[split] = [a + int(b > 0) for a, b in zip(check.images[split], present, strict=True)]


def _check_polygons(polygons: list[list[float]], image: SourceImage, where: str, check: DatasetCheck) -> None:
    margin = OUT_OF_BOUNDS_MARGIN * max(image.height, image.width)
    for index, polygon in enumerate(polygons):
        xs, ys = np.asarray(polygon[0::2], dtype=np.float64), np.asarray(polygon[1::2], dtype=np.float64)
        if xs.size == 0:
            continue
        low, high = min(xs.min(), ys.min()), max(xs.max() - image.width, ys.max() - image.height)
        if low < -margin or high > margin:
            severity = "error"
        elif low < 0 or high > 0:
            severity = "warning"
        else:
            continue
        check.add(
            severity,
            "polygon out of the image",
            f"{where}: polygon {index} reaches ({xs.min():.1f}..{xs.max():.1f}, {ys.min():.1f}..{ys.max():.1f}), "
            f"outside the {image.width}x{image.height} image"
            + (": fix its points in the labelling tool" if severity == "error" else ": clipped to the image"),
        )


def _hashes(image: SourceImage, check: DatasetCheck) -> list[tuple[str, bytes, int]]:
    """[(path, sha1 of the pixels, 64-bit difference hash)] of the image; [] (an error noted) if unreadable."""
    try:
        pixels = read_image(image.path)
    except ReadError as error:
        check.add("error", "unreadable image", str(error))
        return []
    return [(str(image.path), hashlib.sha1(pixels.tobytes()).digest(), difference_hash(pixels))]


def difference_hash(pixels: np.ndarray) -> int:
    """A 64-bit perceptual hash: the grey image at 9x8, one bit per horizontal neighbour pair (left brighter)."""
    grey = cv2.cvtColor(pixels, cv2.COLOR_BGR2GRAY) if pixels.ndim == 3 else pixels
    small = cv2.resize(grey, (9, 8), interpolation=cv2.INTER_AREA).astype(np.int16)
    bits = (small[:, :-1] > small[:, 1:]).ravel()
    return int(np.packbits(bits).view(">u8")[0])


def _check_duplicates(hashes: dict[str, list[tuple[str, bytes, int]]], check: DatasetCheck) -> None:
    """The same pixels in two splits, and near-duplicates (difference hashes a few bits apart) across splits."""
    splits = list(hashes)
    for i, first in enumerate(splits):
        exact = {digest: path for path, digest, _ in hashes[first]}
        for second in splits[i + 1 :]:
            same = set()
            for path, digest, _ in hashes[second]:
                if digest in exact:
                    same.add(path)
                    check.add(
                        "warning",
                        "duplicate across splits",
                        f"{path} ({second}) has the same pixels as {exact[digest]} ({first}): the same photo in two "
                        "splits inflates the validation score; keep it in one split",
                    )
            _near_duplicates(hashes[first], [h for h in hashes[second] if h[0] not in same], first, second, check)


def _near_duplicates(
    first: list[tuple[str, bytes, int]],
    second: list[tuple[str, bytes, int]],
    first_split: str,
    second_split: str,
    check: DatasetCheck,
) -> None:
    if not first or not second:
        return
    a = np.array([h for _, _, h in first], dtype=np.uint64)
    for path, _, value in second:
        distance = np.bitwise_count(a ^ np.uint64(value))
        closest = int(distance.argmin())
        if distance[closest] <= NEAR_DUPLICATE_BITS:
            check.add(
                "warning",
                "near-duplicate across splits",
                f"{path} ({second_split}) looks like {first[closest][0]} ({first_split}) (difference hashes "
                f"{int(distance[closest])} of 64 bits apart): a near-duplicate across splits; look at both, and keep "
                "one split's copy if they are the same scene",
            )


def same_class_lists(lists: Iterable[tuple[str, list[str]]]) -> list[str]:
    """The one class list that every (source, names) pair gives; ClassListError naming the first two sources that
    differ (a split labelled with another class list would train one class as another)."""
    reference: tuple[str, list[str]] | None = None
    for source, names in lists:
        if reference is None:
            reference = (source, list(names))
        else:
            check_class_lists(names, source, reference[1], reference[0], "label every split with one class list")
    return reference[1] if reference else []
