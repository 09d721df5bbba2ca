"""Submission CSV: round trip, downsampling rules, and the checker's message for each bad CSV."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mask2former.io.submission import (
    HEADER,
    SubmissionError,
    check_submission,
    downsample_label_map,
    read_submission,
    write_submission,
)


def _rows(count: int, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [(f"batch_01_vt/{i:04d}.jpg", rng.integers(0, 11, (256, 256)).astype(np.uint8)) for i in range(count)]


def _test_json(tmp_path: Path, count: int) -> Path:
    path = tmp_path / "test.json"
    path.write_text(
        json.dumps(
            {
                "images": [
                    {"id": i, "file_name": f"batch_01_vt/{i:04d}.jpg", "height": 512, "width": 512}
                    for i in range(count)
                ],
                "categories": [{"id": i, "name": f"c{i}"} for i in range(1, 11)],
                "annotations": [],
            }
        )
    )
    return path


def test_round_trip_is_identical(tmp_path: Path) -> None:
    rows = _rows(3)
    assert write_submission(tmp_path / "s.csv", rows) == 3
    text = (tmp_path / "s.csv").read_text()
    assert text.startswith(HEADER + "\nbatch_01_vt/0000.jpg,")
    read = read_submission(tmp_path / "s.csv")
    assert list(read) == [name for name, _ in rows]
    for name, label in rows:
        np.testing.assert_array_equal(read[name], label)
    assert check_submission(tmp_path / "s.csv", _test_json(tmp_path, 3)) == 3


def test_write_is_atomic(tmp_path: Path) -> None:
    write_submission(tmp_path / "s.csv", _rows(2))
    before = (tmp_path / "s.csv").read_bytes()
    bad_rows = _rows(1) + [("batch_01_vt/0001.jpg", np.zeros((128, 128), np.uint8))]
    with pytest.raises(ValueError, match="256x256"):
        write_submission(tmp_path / "s.csv", bad_rows)
    assert (tmp_path / "s.csv").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["s.csv"]


def test_downsample_rules() -> None:
    label = np.random.default_rng(0).integers(0, 11, (512, 512)).astype(np.uint8)
    np.testing.assert_array_equal(downsample_label_map(label), label[::2, ::2])  # the baseline's nearest
    pooled = downsample_label_map(label, method="max")
    np.testing.assert_array_equal(
        pooled,
        np.maximum.reduce([label[0::2, 0::2], label[0::2, 1::2], label[1::2, 0::2], label[1::2, 1::2]]),
    )
    with pytest.raises(ValueError, match="divisible by 256"):
        downsample_label_map(label[:500], method="max")


def _write_raw(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def _good_line(index: int, value: str = "1") -> str:
    return f"batch_01_vt/{index:04d}.jpg," + " ".join([value] * 65536)


BAD_CSVS = {
    "header": (["id,prediction", _good_line(0), _good_line(1)], r"line 1: header must be"),
    "too few values": (
        [HEADER, _good_line(0), "batch_01_vt/0001.jpg," + " ".join(["1"] * 100)],
        r"line 3 \(batch_01_vt/0001.jpg\): PredictionString has 100 values, expected 65536",
    ),
    "non-integer": (
        [HEADER, _good_line(0, "1.5"), _good_line(1)],
        r"line 2 \(batch_01_vt/0000.jpg\): PredictionString holds a non-integer value '1.5'",
    ),
    "out of range": (
        [HEADER, _good_line(0), _good_line(1, "11")],
        r"line 3 \(batch_01_vt/0001.jpg\): values must lie in \[0, 10\], found 11..11",
    ),
    "unknown id": (
        [HEADER, _good_line(0), _good_line(1), _good_line(7)],
        r"line 4 \(batch_01_vt/0007.jpg\): image_id is not in",
    ),
    "repeated id": (
        [HEADER, _good_line(0), _good_line(0), _good_line(1)],
        r"line 3 \(batch_01_vt/0000.jpg\): image_id repeats",
    ),
    "missing row": ([HEADER, _good_line(1)], r"1 test image\(s\) have no row: batch_01_vt/0000.jpg"),
    "no comma": ([HEADER, "batch_01_vt/0000.jpg 1 2 3"], r"line 2: expected 'image_id,PredictionString'"),
}


@pytest.mark.parametrize("case", sorted(BAD_CSVS))
def test_checker_rejects_bad_csv_naming_the_row(tmp_path: Path, case: str) -> None:
    lines, message = BAD_CSVS[case]
    csv = _write_raw(tmp_path / "bad.csv", lines)
    with pytest.raises(SubmissionError, match=message):
        check_submission(csv, _test_json(tmp_path, 2))


def _line_with(index: int, value: str) -> str:
    return f"batch_01_vt/{index:04d}.jpg," + " ".join(["1"] * 65535 + [value])


ROW = r"bad.csv: line 3 \(batch_01_vt/0001.jpg\): PredictionString"
# Python's int() (and numpy with it) takes all of these; the competition's reader does not.
NOT_ASCII_INTEGERS = {
    "Arabic-Indic digit": ("\u0663", r"holds a non-integer value '\u0663' \(values are ASCII digits 0-9\)"),
    "Devanagari digit": ("\u0967", r"holds a non-integer value '\u0967'"),
    "fullwidth digit": ("\uff11", r"holds a non-integer value '\uff11'"),
    "underscore": ("1_0", r"holds a non-integer value '1_0'"),
    "plus sign": ("+1", r"holds a non-integer value '\+1'"),
    "no-break space": ("1\u00a01", r"holds a non-integer value '1\\xa01'"),
    "huge integer": ("9" * 30, r"holds the value 9{30}\.\.\., far too large for a class index"),
}


@pytest.mark.parametrize("case", sorted(NOT_ASCII_INTEGERS))
def test_only_ascii_integers_are_values(tmp_path: Path, case: str) -> None:
    value, message = NOT_ASCII_INTEGERS[case]
    csv = tmp_path / "bad.csv"
    csv.write_text("\n".join([HEADER, _good_line(0), _line_with(1, value)]) + "\n", encoding="utf-8")
    before = csv.read_bytes()
    for reader in (lambda: check_submission(csv, _test_json(tmp_path, 2)), lambda: read_submission(csv)):
        with pytest.raises(SubmissionError, match=f"{ROW} {message}"):
            reader()
    assert csv.read_bytes() == before


@pytest.mark.parametrize("where", ["image_id", "values"])
def test_non_utf8_bytes_name_the_row(tmp_path: Path, where: str) -> None:
    csv = tmp_path / "latin1.csv"
    bad = (
        "batch_01_vt/0001\xe9.jpg,".encode("latin-1") + " ".join(["1"] * 65536).encode()
        if where == "image_id"
        else b"batch_01_vt/0001.jpg," + b"1 " * 100 + b"\xff " + b"1 " * 65435
    )
    csv.write_bytes(HEADER.encode() + b"\n" + _good_line(0).encode() + b"\n" + bad + b"\n")
    message = (
        r"latin1.csv: line 3: not UTF-8 text \(byte 0xe9 at column 17\); save the CSV as UTF-8"
        if where == "image_id"
        else ROW.replace("bad", "latin1") + r" holds b'\\xff', which is not UTF-8 text; save the CSV as UTF-8"
    )
    with pytest.raises(SubmissionError, match=message):
        check_submission(csv, _test_json(tmp_path, 2))


def test_negative_value_is_refused_by_the_range_check(tmp_path: Path) -> None:
    csv = _write_raw(tmp_path / "neg.csv", [HEADER, _good_line(0), _line_with(1, "-1")])
    range_error = r"line 3 \(batch_01_vt/0001.jpg\): values must lie in \[0, 10\], found -1\.\.1"
    with pytest.raises(SubmissionError, match=range_error):
        check_submission(csv, _test_json(tmp_path, 2))
