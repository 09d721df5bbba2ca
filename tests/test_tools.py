"""The command-line tools end to end on the generated sample dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import load_tool

from mask2former.data.coco_semantic import load_sem_seg_dataset
from mask2former.data.mapper import read_label
from mask2former.evaluation.sem_seg import confusion_matrix, metrics_from_confusion
from mask2former.submission import downsample_label_map, write_submission


def _relative(record: dict, root: Path) -> str:
    return Path(record["file_name"]).relative_to(root.resolve()).as_posix()


def _perturbed_predictions(sample_root: Path, cache_dir: Path) -> tuple[list[dict], dict[str, np.ndarray]]:
    """Ground truth with a band of each image replaced by class 2 (Paper), at full size."""
    dicts = load_sem_seg_dataset(sample_root / "val.json", sample_root, cache_dir)
    predictions = {}
    for index, record in enumerate(dicts):
        label = read_label(record["sem_seg_file_name"]).copy()
        label[40 * index : 40 * index + 60] = 2
        predictions[_relative(record, sample_root)] = label
    return dicts, predictions


def test_evaluate_csv_and_label_folder(sample_root: Path, cache_dir: Path, tmp_path: Path, capsys) -> None:
    evaluate = load_tool("evaluate")
    dicts, predictions = _perturbed_predictions(sample_root, cache_dir)
    csv = tmp_path / "pred.csv"
    write_submission(csv, ((name, downsample_label_map(label)) for name, label in predictions.items()))

    perfect = tmp_path / "perfect.csv"
    write_submission(
        perfect,
        ((_relative(d, sample_root), downsample_label_map(read_label(d["sem_seg_file_name"]))) for d in dicts),
    )
    assert (
        evaluate.main(["--gt", str(sample_root / "val.json"), "--pred", str(perfect), "--cache-dir", str(cache_dir)])
        == 1.0
    )
    assert capsys.readouterr().out.strip().splitlines()[-1] == "mIoU: 1.0000"

    hist = sum(
        confusion_matrix(
            downsample_label_map(read_label(d["sem_seg_file_name"])),
            downsample_label_map(predictions[_relative(d, sample_root)]),
            11,
        )
        for d in dicts
    )
    expected = metrics_from_confusion(hist)["mIoU"]
    score = evaluate.main(
        [
            "--gt",
            str(sample_root / "val.json"),
            "--pred",
            str(csv),
            "--cache-dir",
            str(cache_dir),
            "--out",
            str(tmp_path / "eval"),
        ]
    )
    assert score == expected < 1.0
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1] == f"mIoU: {expected:.4f}" and "Paper" in out
    assert (tmp_path / "eval" / "confusion_matrix.png").is_file()
    assert json.loads((tmp_path / "eval" / "confusion_matrix.json").read_text())["matrix"] == hist.tolist()

    folder = tmp_path / "maps"
    import cv2

    for name, label in predictions.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str((folder / name).with_suffix(".png")), label)
    full_hist = sum(
        confusion_matrix(read_label(d["sem_seg_file_name"]), predictions[_relative(d, sample_root)], 11) for d in dicts
    )
    score = evaluate.main(["--gt", str(sample_root / "val.json"), "--pred", str(folder), "--cache-dir", str(cache_dir)])
    assert score == metrics_from_confusion(full_hist)["mIoU"]


def test_evaluate_refuses_incomplete_csv(sample_root: Path, cache_dir: Path, tmp_path: Path) -> None:
    evaluate = load_tool("evaluate")
    _, predictions = _perturbed_predictions(sample_root, cache_dir)
    first = next(iter(predictions))
    write_submission(tmp_path / "one.csv", [(first, downsample_label_map(predictions[first]))])
    with pytest.raises(SystemExit, match=r"no row for \d+ ground-truth image"):
        evaluate.main(
            [
                "--gt",
                str(sample_root / "val.json"),
                "--pred",
                str(tmp_path / "one.csv"),
                "--cache-dir",
                str(cache_dir),
            ]
        )


def test_check_submission_cli(sample_root: Path, tmp_path: Path, capsys) -> None:
    check = load_tool("check_submission")
    test = json.loads((sample_root / "test.json").read_text())
    rows = [(image["file_name"], np.zeros((256, 256), np.uint8)) for image in test["images"]]
    write_submission(tmp_path / "ok.csv", rows)
    assert check.main([str(tmp_path / "ok.csv"), "--test-json", str(sample_root / "test.json")]) == 0
    assert "OK" in capsys.readouterr().out
    write_submission(tmp_path / "short.csv", rows[:-1])
    assert check.main([str(tmp_path / "short.csv"), "--test-json", str(sample_root / "test.json")]) == 1
    assert f"have no row: {rows[-1][0]}" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["group", "multilabel"])
def test_split_folds(sample_root: Path, tmp_path: Path, capsys, method: str) -> None:
    split = load_tool("split_folds")
    split.main(
        [
            "--json",
            str(sample_root / "train_all.json"),
            "--folds",
            "4",
            "--out",
            str(tmp_path),
            "--method",
            method,
        ]
    )
    data = json.loads((sample_root / "train_all.json").read_text())
    all_ids = {image["id"] for image in data["images"]}
    seen: list[int] = []
    for fold in range(4):
        train = json.loads((tmp_path / f"train_fold{fold}.json").read_text())
        val = json.loads((tmp_path / f"val_fold{fold}.json").read_text())
        train_ids, val_ids = {i["id"] for i in train["images"]}, {i["id"] for i in val["images"]}
        assert train_ids | val_ids == all_ids and not train_ids & val_ids and val_ids
        assert all(a["image_id"] in val_ids for a in val["annotations"])
        assert len(train["annotations"]) + len(val["annotations"]) == len(data["annotations"])
        assert val["categories"] == data["categories"]
        seen += sorted(val_ids)
    assert sorted(seen) == sorted(all_ids)  # every image is validated exactly once
    out = capsys.readouterr().out
    assert "fold3" in out and "Battery" in out and "wrote 8 files" in out


def test_inspect_dataset(sample_root: Path, cache_dir: Path, tmp_path: Path) -> None:
    inspect = load_tool("inspect_dataset")
    stats = inspect.main(
        [
            "--json",
            str(sample_root / "train.json"),
            "--out",
            str(tmp_path),
            "--num",
            "4",
            "--cache-dir",
            str(cache_dir),
        ]
    )
    data = json.loads((sample_root / "train.json").read_text())
    assert stats["num_images"] == len(data["images"])
    assert sum(c["instances"] for c in stats["classes"]) == len(data["annotations"])
    assert sum(c["pixel_share"] for c in stats["classes"]) == pytest.approx(1.0)
    import cv2

    for picture in ("ground_truth.png", "augmented.png"):
        image = cv2.imread(str(tmp_path / picture))
        assert image is not None and image.shape[0] >= 256 and image.shape[1] >= 1024
