"""The data tools' logic (mask2former.pipeline.evaluate / inspect_dataset, data.folds, submission) end to end on
the generated sample dataset, and each refusal: the message, inputs unchanged, nothing written outside the
output folder."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from mask2former.data.coco_semantic import DataError, load_sem_seg_dataset
from mask2former.data.folds import FoldError, format_fold_table, split_json
from mask2former.evaluation.sem_seg import confusion_matrix, metrics_from_confusion
from mask2former.io.images import read_label
from mask2former.io.submission import SubmissionError, check_submission, downsample_label_map, write_submission
from mask2former.pipeline.evaluate import EvaluateOptions, EvaluationError
from mask2former.pipeline.evaluate import run as evaluate
from mask2former.pipeline.inspect_dataset import InspectOptions
from mask2former.pipeline.inspect_dataset import run as inspect_dataset
from mask2former.utils.output_folder import OWNER_FILE, OutputFolderError


def tree_hashes(root: Path, skip: tuple[Path, ...] = ()) -> dict[str, str]:
    """relative path -> sha1 of every file under root, except under the folders in `skip`."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not any(p.is_relative_to(folder) for folder in skip)
    }


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


def _score(gt: Path, pred: Path, cache_dir: Path, out: Path | None = None) -> float:
    return evaluate(EvaluateOptions(gt=str(gt), pred=str(pred), cache_dir=str(cache_dir), out=out and str(out)))["mIoU"]


def _write_maps(folder: Path, maps: dict[str, np.ndarray]) -> Path:
    for name, label in maps.items():
        path = (folder / name).with_suffix(".png")
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), label)
    return folder


def test_evaluate_csv_and_label_folder(sample_root: Path, cache_dir: Path, tmp_path: Path, capsys) -> None:
    dicts, predictions = _perturbed_predictions(sample_root, cache_dir)
    csv = tmp_path / "pred.csv"
    write_submission(csv, ((name, downsample_label_map(label)) for name, label in predictions.items()))

    perfect = tmp_path / "perfect.csv"
    write_submission(
        perfect,
        ((_relative(d, sample_root), downsample_label_map(read_label(d["sem_seg_file_name"]))) for d in dicts),
    )
    assert _score(sample_root / "val.json", perfect, cache_dir) == 1.0
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
    score = _score(sample_root / "val.json", csv, cache_dir, out=tmp_path / "eval")
    assert score == expected < 1.0
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1] == f"mIoU: {expected:.4f}" and "Paper" in out
    assert (tmp_path / "eval" / "confusion_matrix.png").is_file()
    assert json.loads((tmp_path / "eval" / "confusion_matrix.json").read_text())["matrix"] == hist.tolist()
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == [
        OWNER_FILE,
        "confusion_matrix.json",
        "confusion_matrix.png",
        "sem_seg_metrics.json",
    ]  # atomic writes leave no temporary behind

    folder = _write_maps(tmp_path / "maps", predictions)
    full_hist = sum(
        confusion_matrix(read_label(d["sem_seg_file_name"]), predictions[_relative(d, sample_root)], 11) for d in dicts
    )
    assert _score(sample_root / "val.json", folder, cache_dir) == metrics_from_confusion(full_hist)["mIoU"]


def test_evaluate_refuses_incomplete_csv(sample_root: Path, cache_dir: Path, tmp_path: Path) -> None:
    _, predictions = _perturbed_predictions(sample_root, cache_dir)
    first = next(iter(predictions))
    write_submission(tmp_path / "one.csv", [(first, downsample_label_map(predictions[first]))])
    with pytest.raises(EvaluationError, match=r"one.csv: no row for \d+ ground-truth image"):
        _score(sample_root / "val.json", tmp_path / "one.csv", cache_dir)


def test_evaluate_refuses_label_maps_of_another_size(sample_root: Path, cache_dir: Path, tmp_path: Path) -> None:
    """Today's bug: a folder of 1x1 all-zero PNGs scored mIoU 1.0000 (the ground truth was shrunk to them)."""
    dicts, predictions = _perturbed_predictions(sample_root, cache_dir)
    tiny = _write_maps(tmp_path / "tiny", {name: np.zeros((1, 1), np.uint8) for name in predictions})
    inputs = tree_hashes(tmp_path) | tree_hashes(sample_root)
    with pytest.raises(EvaluationError) as error:
        _score(sample_root / "val.json", tiny, cache_dir, out=tmp_path / "eval")
    first = _relative(dicts[0], sample_root)
    assert str(error.value) == (
        f"{(tiny / first).with_suffix('.png')}: the prediction is 1x1, the ground truth of {first} is 512x512; "
        "write label maps at the image's size (or score the 256x256 submission CSV)"
    )
    assert tree_hashes(tmp_path) | tree_hashes(sample_root) == inputs  # nothing written, nothing changed
    # the 256x256 maps of a submission are scored only as a CSV, against the ground truth reduced to 256
    half = _write_maps(tmp_path / "half", {name: downsample_label_map(label) for name, label in predictions.items()})
    with pytest.raises(EvaluationError, match=r"the prediction is 256x256, the ground truth of .* is 512x512"):
        _score(sample_root / "val.json", half, cache_dir)


def test_evaluate_refuses_a_csv_row_of_another_size(sample_root: Path, cache_dir: Path, tmp_path: Path) -> None:
    _, predictions = _perturbed_predictions(sample_root, cache_dir)
    names = list(predictions)
    csv = tmp_path / "rows.csv"
    rows = [f"{names[0]}," + " ".join(["0"] * 128 * 128)] + [f"{name}," + " ".join(["0"] * 65536) for name in names[1:]]
    csv.write_text("image_id,PredictionString\n" + "\n".join(rows) + "\n")
    with pytest.raises(SubmissionError, match=rf"rows.csv: line 2 \({names[0]}\): PredictionString has 16384 values"):
        _score(sample_root / "val.json", csv, cache_dir)


def test_evaluate_refuses_predictions_outside_the_classes(sample_root: Path, cache_dir: Path, tmp_path: Path) -> None:
    _, predictions = _perturbed_predictions(sample_root, cache_dir)
    name = next(iter(predictions))
    predictions[name][100:110, 100:110] = 11  # 11 classes: 0..10
    folder = _write_maps(tmp_path / "maps", predictions)
    with pytest.raises(EvaluationError, match=r"\.png: holds class 11; the ground truth has classes 0\.\.10"):
        _score(sample_root / "val.json", folder, cache_dir)


def test_evaluate_refuses_a_json_without_ground_truth(sample_root: Path, cache_dir: Path, tmp_path: Path) -> None:
    """Today's bug: --gt test.json scored 0.4950 against all-background maps."""
    test = json.loads((sample_root / "test.json").read_text())
    write_submission(tmp_path / "zeros.csv", [(i["file_name"], np.zeros((256, 256), np.uint8)) for i in test["images"]])
    inputs = tree_hashes(tmp_path) | tree_hashes(sample_root)
    with pytest.raises(DataError) as error:
        _score(sample_root / "test.json", tmp_path / "zeros.csv", cache_dir, out=tmp_path / "eval")
    test_json = (sample_root / "test.json").resolve()
    assert str(error.value).startswith(
        f"{test_json}: used as ground truth, but none of them has an annotation (6 image(s))"
    )
    assert tree_hashes(tmp_path) | tree_hashes(sample_root) == inputs
    assert not (tmp_path / "eval").exists() and not cache_dir.exists()


def test_evaluate_never_writes_over_its_inputs(sample_root: Path, cache_dir: Path, tmp_path: Path) -> None:
    dicts, predictions = _perturbed_predictions(sample_root, cache_dir)
    folder = _write_maps(tmp_path / "maps", predictions)
    csv = tmp_path / "sem_seg_metrics.json"  # a CSV under the name of a report
    write_submission(csv, ((name, downsample_label_map(label)) for name, label in predictions.items()))
    before = tree_hashes(tmp_path)
    with pytest.raises(EvaluationError, match=r"writing sem_seg_metrics.json would replace an input"):
        _score(sample_root / "val.json", csv, cache_dir, out=tmp_path)
    assert tree_hashes(tmp_path) == before
    # the folder of the maps is not evaluate's: refused before scoring (its reports go into a folder of their own)
    with pytest.raises(OutputFolderError, match=rf"--out {folder} is not a folder evaluate.py made \(it holds "):
        _score(sample_root / "val.json", folder, cache_dir, out=folder)
    assert tree_hashes(tmp_path) == before


def test_check_submission_accepts_a_valid_csv_and_names_a_missing_row(sample_root: Path, tmp_path: Path) -> None:
    test = json.loads((sample_root / "test.json").read_text())
    rows = [(image["file_name"], np.zeros((256, 256), np.uint8)) for image in test["images"]]
    write_submission(tmp_path / "ok.csv", rows)
    assert check_submission(tmp_path / "ok.csv", sample_root / "test.json") == len(rows)
    write_submission(tmp_path / "short.csv", rows[:-1])
    with pytest.raises(SubmissionError, match=f"have no row: {rows[-1][0]}"):
        check_submission(tmp_path / "short.csv", sample_root / "test.json")


@pytest.mark.parametrize("method", ["group", "multilabel"])
def test_split_folds(sample_root: Path, tmp_path: Path, method: str) -> None:
    split = split_json(sample_root / "train_all.json", 4, tmp_path, method)
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
    assert len(split.paths) == 8
    table = format_fold_table(split)
    assert "fold3" in table and "Battery" in table


@pytest.mark.parametrize("method", ["group", "multilabel"])
def test_split_folds_names_an_unknown_category(tmp_path: Path, sample_root: Path, method: str) -> None:
    """Today's bug: `KeyError: 99`."""
    data = json.loads((sample_root / "train_all.json").read_text())
    data["annotations"][3]["category_id"] = 99
    source = tmp_path / "data" / "train_all.json"
    source.parent.mkdir()
    source.write_text(json.dumps(data))
    before = tree_hashes(tmp_path)
    with pytest.raises(DataError) as error:
        split_json(source, 4, tmp_path / "folds", method)
    ann = data["annotations"][3]
    assert str(error.value) == (
        f"{source}: annotation {ann['id']} (image {ann['image_id']}) has category_id 99, which is not in "
        "'categories' (listed: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10)"
    )
    assert tree_hashes(tmp_path) == before and not (tmp_path / "folds").exists()


def test_split_folds_never_writes_over_the_json_it_splits(tmp_path: Path, sample_root: Path) -> None:
    source = tmp_path / "val_fold0.json"
    source.write_bytes((sample_root / "train_all.json").read_bytes())
    before = tree_hashes(tmp_path)
    with pytest.raises(FoldError, match=r"the fold jsons would replace .*val_fold0.json, the json being split"):
        split_json(source, 4, tmp_path)
    with pytest.raises(FoldError, match=r"--folds must be between 2 and the number of images \(20\), got 1"):
        split_json(source, 1, tmp_path / "folds")
    assert tree_hashes(tmp_path) == before


def test_inspect_dataset(sample_root: Path, cache_dir: Path, tmp_path: Path) -> None:
    stats = inspect_dataset(
        InspectOptions(json=str(sample_root / "train.json"), out=str(tmp_path / "out"), num=4, cache_dir=str(cache_dir))
    )
    tmp_path = tmp_path / "out"
    data = json.loads((sample_root / "train.json").read_text())
    assert stats["num_images"] == len(data["images"])
    assert sum(c["instances"] for c in stats["classes"]) == len(data["annotations"])
    assert sum(c["pixel_share"] for c in stats["classes"]) == pytest.approx(1.0)
    for picture in ("ground_truth.png", "augmented.png"):
        image = cv2.imread(str(tmp_path / picture))
        assert image is not None and image.shape[0] >= 256 and image.shape[1] >= 1024
