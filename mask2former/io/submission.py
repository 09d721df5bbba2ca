"""The competition's submission CSV: `image_id,PredictionString`, one row per test image.

image_id is the test image's file_name (`batch_01_vt/0021.jpg`); PredictionString is the 256x256
label map, row-major, as 65536 space-separated integers. Full-size label maps are reduced by
nearest neighbour (the baseline's rule: for 512 -> 256 this keeps every second pixel) or, as an
option, by block max-pooling of the labels (what some mmseg teams submitted).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np

from ..errors import UserError
from .coco_json import read_coco_json
from .files import atomic_open

SUBMISSION_SIZE = 256
HEADER = "image_id,PredictionString"
DOWNSAMPLE_METHODS = ("nearest", "max")


class SubmissionError(UserError, ValueError):
    """A malformed submission; the message names the file and the row."""


def downsample_label_map(label: np.ndarray, size: int = SUBMISSION_SIZE, method: str = "nearest") -> np.ndarray:
    """An HxW label map reduced to size x size (uint8)."""
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"a label map is 2-D, got shape {label.shape}")
    if label.shape == (size, size):
        return label.astype(np.uint8, copy=False)
    if method == "nearest":
        return cv2.resize(label.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST)
    if method == "max":
        height, width = label.shape
        if height % size or width % size:
            raise ValueError(f"max-pooling needs a size divisible by {size}, got {width}x{height}")
        blocks = label.reshape(size, height // size, size, width // size)
        return blocks.max(axis=(1, 3)).astype(np.uint8)
    raise ValueError(f"unknown downsample method {method!r}; use one of {DOWNSAMPLE_METHODS}")


def format_prediction(label: np.ndarray) -> str:
    label = np.asarray(label)
    if label.shape != (SUBMISSION_SIZE, SUBMISSION_SIZE):
        raise ValueError(f"a submission label map is {SUBMISSION_SIZE}x{SUBMISSION_SIZE}, got {label.shape}")
    return " ".join(map(str, label.ravel().tolist()))


def write_submission(path: str | Path, rows: Iterable[tuple[str, np.ndarray]]) -> int:
    """Write (image_id, 256x256 label map) rows atomically; returns the number of rows."""
    count = 0
    with atomic_open(path, "w", encoding="utf-8", newline="\n") as handle:
        handle.write(HEADER + "\n")
        for image_id, label in rows:
            if "," in image_id or "\n" in image_id:
                raise ValueError(f"image_id {image_id!r} contains a comma or newline")
            handle.write(f"{image_id},{format_prediction(label)}\n")
            count += 1
    return count


def iter_submission(path: str | Path) -> Iterable[tuple[int, str, bytes]]:
    """(line number, image_id, raw PredictionString bytes) per data row; checks the header and that each row is
    UTF-8 text."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"submission not found: {path}")
    with path.open("rb") as handle:
        header = _decoded(handle.readline(), path, 1).rstrip("\r\n")
        if header != HEADER:
            raise SubmissionError(f"{path}: line 1: header must be {HEADER!r}, got {header[:80]!r}")
        for number, line in enumerate(handle, start=2):
            line = line.rstrip(b"\r\n")
            if not line:
                continue
            image_id, sep, prediction = line.partition(b",")
            if not sep:
                shown = _decoded(line, path, number)[:80]
                raise SubmissionError(f"{path}: line {number}: expected 'image_id,PredictionString', got {shown!r}")
            yield number, _decoded(image_id, path, number).strip('"'), prediction.strip(b'"')


def _decoded(raw: bytes, path: Path, number: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise SubmissionError(
            f"{path}: line {number}: not UTF-8 text (byte 0x{raw[error.start]:02x} at column {error.start + 1}); "
            "save the CSV as UTF-8"
        ) from None


# A class index: ASCII digits (a leading '-' is read, then refused by the range check); int() would also take
# other scripts' digits, '_' separators and '+', which the competition's reader does not.
_INTEGER = re.compile(rb"-?[0-9]+")
_MAX_DIGITS = 18  # fits int64; far beyond any class index


def parse_prediction(text: str | bytes, where: str) -> np.ndarray:
    """A PredictionString (space-separated ASCII integers) -> 256x256 int64 label map; errors say `where`."""
    raw = text.encode("utf-8") if isinstance(text, str) else text
    codes = np.frombuffer(raw, dtype=np.uint8)
    digits = (codes >= ord("0")) & (codes <= ord("9"))
    if not (digits | (codes == ord(" ")) | (codes == ord("\t")) | (codes == ord("-"))).all():
        _raise_for_first_bad_value(raw.split(), where)
    values = raw.split()  # bytes.split: ASCII whitespace only
    expected = SUBMISSION_SIZE * SUBMISSION_SIZE
    if len(values) != expected:
        raise SubmissionError(f"{where}: PredictionString has {len(values)} values, expected {expected}")
    if b"-" in raw or max(map(len, values)) > _MAX_DIGITS:
        _check_each_value(values, where)
    array = np.fromstring(raw, dtype=np.int64, sep=" ")  # text mode; every value checked above
    return array.reshape(SUBMISSION_SIZE, SUBMISSION_SIZE)


def _check_each_value(values: list[bytes], where: str) -> None:
    for value in values:
        if not _INTEGER.fullmatch(value) or len(value) > _MAX_DIGITS:
            _raise_for_first_bad_value([value], where)


def _raise_for_first_bad_value(values: list[bytes], where: str) -> None:
    for value in values:
        if not _INTEGER.fullmatch(value):
            try:
                shown = repr(value.decode("utf-8")[:40])
            except UnicodeDecodeError:
                raise SubmissionError(
                    f"{where}: PredictionString holds {value[:40]!r}, which is not UTF-8 text; save the CSV as UTF-8"
                ) from None
            raise SubmissionError(
                f"{where}: PredictionString holds a non-integer value {shown} (values are ASCII digits 0-9)"
            )
        if len(value) > _MAX_DIGITS:
            raise SubmissionError(
                f"{where}: PredictionString holds the value {value[:40].decode()}..., far too large for a class index"
            )
    raise SubmissionError(f"{where}: PredictionString holds values that are not ASCII integers")


def read_submission(path: str | Path) -> dict[str, np.ndarray]:
    """image_id -> 256x256 label map, in file order; malformed rows raise `SubmissionError`."""
    rows: dict[str, np.ndarray] = {}
    for number, image_id, prediction in iter_submission(path):
        where = f"{path}: line {number} ({image_id})"
        if image_id in rows:
            raise SubmissionError(f"{where}: image_id repeats")
        rows[image_id] = parse_prediction(prediction, where)
    return rows


def check_submission(path: str | Path, test_json: str | Path, num_classes: int | None = None) -> int:
    """Validate a submission against the test json; returns the row count, raises on the first problem.

    One row per test image, no unknown or repeated ids, 65536 values per row, each in [0, num_classes).
    num_classes defaults to the json's categories plus background.
    """
    test = read_coco_json(test_json)
    expected_ids = [image["file_name"] for image in test["images"]]
    if num_classes is None:
        num_classes = len(test["categories"]) + 1
    expected = set(expected_ids)
    seen: set[str] = set()
    for number, image_id, prediction in iter_submission(path):
        where = f"{path}: line {number} ({image_id})"
        if image_id not in expected:
            raise SubmissionError(f"{where}: image_id is not in {test_json}")
        if image_id in seen:
            raise SubmissionError(f"{where}: image_id repeats")
        seen.add(image_id)
        label = parse_prediction(prediction, where)
        if label.min() < 0 or label.max() >= num_classes:
            raise SubmissionError(
                f"{where}: values must lie in [0, {num_classes - 1}], found {label.min()}..{label.max()}"
            )
    missing = [image_id for image_id in expected_ids if image_id not in seen]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise SubmissionError(f"{path}: {len(missing)} test image(s) have no row: {shown}")
    return len(seen)
