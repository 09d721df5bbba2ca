"""The data tools as a user runs them: bad input is one line on stderr and exit status 2 (check_submission: 1 and
`INVALID: ...` for an invalid submission), no traceback, inputs unchanged, nothing written outside the output
folder (and the label cache)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import REPO

from mask2former.io.submission import HEADER

pytestmark = pytest.mark.subprocess  # every test runs a tool as a child process


def tree_hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def run_cli(tool: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TRASH_CACHE": str(cwd / "default_cache")}
    env.pop("TRASHSEG_DEBUG", None)
    return subprocess.run(
        [sys.executable, str(REPO / "tools" / f"{tool}.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def assert_one_line_error(result: subprocess.CompletedProcess, tool: str, message: str, status: int = 2) -> None:
    assert result.returncode == status, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert f"{tool}.py" in last and message in last, result.stderr


def test_evaluate_cli_refuses_tiny_label_maps(sample_root: Path, tmp_path: Path) -> None:
    val = json.loads((sample_root / "val.json").read_text())
    for image in val["images"]:
        path = (tmp_path / "tiny" / image["file_name"]).with_suffix(".png")
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), np.zeros((1, 1), np.uint8))
    before, data_before = tree_hashes(tmp_path), tree_hashes(sample_root)
    result = run_cli(
        "evaluate",
        *("--gt", str(sample_root / "val.json"), "--pred", "tiny", "--out", "eval", "--cache-dir", "cache"),
        cwd=tmp_path,
    )
    first = (tmp_path / "tiny" / val["images"][0]["file_name"]).with_suffix(".png")
    assert_one_line_error(result, "evaluate", f"tiny/{first.relative_to(tmp_path / 'tiny')}: the prediction is 1x1")
    assert "is 512x512" in result.stderr and "mIoU" not in result.stdout
    assert tree_hashes(sample_root) == data_before
    after = tree_hashes(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith("cache/")} == before  # only the label cache


def test_split_folds_cli_names_the_unknown_category(sample_root: Path, tmp_path: Path) -> None:
    data = json.loads((sample_root / "train_all.json").read_text())
    data["annotations"][0]["category_id"] = 99
    (tmp_path / "train_all.json").write_text(json.dumps(data))
    before = tree_hashes(tmp_path)
    result = run_cli("split_folds", "--json", "train_all.json", "--folds", "4", "--out", "folds", cwd=tmp_path)
    assert_one_line_error(result, "split_folds", "annotation 0 (image 0) has category_id 99, which is not in")
    assert tree_hashes(tmp_path) == before
    debug = run_cli("split_folds", "--json", "train_all.json", "--out", "folds", "--debug", cwd=tmp_path)
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "DataError" in debug.stderr


def test_check_submission_cli_statuses(sample_root: Path, tmp_path: Path) -> None:
    test = json.loads((sample_root / "test.json").read_text())
    rows = [f"{image['file_name']}," + " ".join(["0"] * 65536) for image in test["images"]]
    rows[2] = rows[2][:-1] + "\u0663"  # an Arabic-Indic three: int() takes it, the competition does not
    (tmp_path / "sub.csv").write_text(HEADER + "\n" + "\n".join(rows) + "\n", encoding="utf-8")
    before = tree_hashes(tmp_path)
    invalid = run_cli("check_submission", "sub.csv", "--test-json", str(sample_root / "test.json"), cwd=tmp_path)
    assert invalid.returncode == 1 and "Traceback" not in invalid.stderr
    assert invalid.stderr.startswith(f"INVALID: sub.csv: line 4 ({test['images'][2]['file_name']}): PredictionString")
    assert "non-integer value '\u0663' (values are ASCII digits 0-9)" in invalid.stderr
    missing = run_cli("check_submission", "sub.csv", "--test-json", "nope.json", cwd=tmp_path)
    assert_one_line_error(missing, "check_submission", "COCO json not found: nope.json")
    assert tree_hashes(tmp_path) == before


def test_make_sample_dataset_cli_refuses_a_folder_with_files(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.json").write_text('{"mine": true}')
    before = tree_hashes(tmp_path)
    result = run_cli("make_sample_dataset", "--out", "data", "--num-train", "2", "--num-test", "1", cwd=tmp_path)
    message = "--out data is not a folder make_sample_dataset.py made (data/train.json would be replaced)"
    assert_one_line_error(result, "make_sample_dataset", message)
    assert tree_hashes(tmp_path) == before


def test_inspect_dataset_cli_refuses_repeated_category_ids(sample_root: Path, tmp_path: Path) -> None:
    data = json.loads((sample_root / "train.json").read_text())
    data["categories"][1]["id"] = data["categories"][0]["id"]
    (tmp_path / "train.json").write_text(json.dumps(data))
    before = tree_hashes(tmp_path)
    result = run_cli(
        "inspect_dataset", "--json", "train.json", "--image-root", str(sample_root), "--out", "out", cwd=tmp_path
    )
    assert_one_line_error(result, "inspect_dataset", "train.json: category id 1 is given twice ('General trash' and")
    assert tree_hashes(tmp_path) == before


def test_copy_paste_preview_cli_names_an_unregistered_dataset(tmp_path: Path) -> None:
    result = run_cli(
        "copy_paste_preview",
        *("--config-file", str(REPO / "configs" / "quickstart.yaml"), "--out", "out", "--num", "1"),
        *("DATASETS.ROOT", "", "DATASETS.TRAIN", "('nowhere',)"),
        cwd=tmp_path,
    )
    assert_one_line_error(result, "copy_paste_preview", "dataset 'nowhere' is named in the config but not registered")
    assert sorted(p.name for p in tmp_path.iterdir()) == []
