"""The generated sample dataset: layout, determinism, valid polygons, faithful labels, imbalance."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from mask2former.data.sample_dataset import (
    TRASH_CATEGORY_NAMES,
    make_sample_dataset,
    render_sample_scene,
)
from mask2former.utils.output_folder import OWNER_FILE, OutputFolderError


def test_layout(sample_root: Path) -> None:
    jsons = {
        name: json.loads((sample_root / f"{name}.json").read_text()) for name in ("train_all", "train", "val", "test")
    }
    for folder in ("batch_01_vt", "batch_02_vt", "batch_03"):
        assert (sample_root / folder).is_dir()
    for name, data in jsons.items():
        assert [c["name"] for c in data["categories"]] == list(TRASH_CATEGORY_NAMES)
        assert [c["id"] for c in data["categories"]] == list(range(1, 11))
        assert [i["id"] for i in data["images"]] == list(range(len(data["images"]))), name
        assert [a["id"] for a in data["annotations"]] == list(range(len(data["annotations"])))
    for image in jsons["train_all"]["images"] + jsons["test"]["images"]:
        assert not Path(image["file_name"]).is_absolute()
        decoded = cv2.imread(str(sample_root / image["file_name"]))
        assert decoded.shape == (512, 512, 3)
    names = lambda d: {i["file_name"] for i in d["images"]}  # noqa: E731
    assert names(jsons["train"]) | names(jsons["val"]) == names(jsons["train_all"])
    assert not names(jsons["train"]) & names(jsons["val"])
    assert not names(jsons["test"]) & names(jsons["train_all"])
    assert len(jsons["val"]["images"]) == 4 and jsons["test"]["annotations"] == []


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    make_sample_dataset(tmp_path / "a", 4, 2, seed=3)
    make_sample_dataset(tmp_path / "b", 4, 2, seed=3)
    make_sample_dataset(tmp_path / "c", 4, 2, seed=4)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 11 and Path(OWNER_FILE) in files  # 4 jsons, 6 images and the owner record
    for rel in files:
        if rel == Path(OWNER_FILE):  # it records when the folder was made
            continue
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    assert (tmp_path / "a" / "batch_01_vt/0000.jpg").read_bytes() != (
        tmp_path / "c" / "batch_01_vt/0000.jpg"
    ).read_bytes()


def test_polygons_are_valid(sample_root: Path) -> None:
    data = json.loads((sample_root / "train_all.json").read_text())
    assert data["annotations"]
    for ann in data["annotations"]:
        assert ann["area"] > 0 and ann["iscrowd"] == 0
        x, y, w, h = ann["bbox"]
        assert x >= 0 and y >= 0 and x + w <= 512 and y + h <= 512
        for polygon in ann["segmentation"]:
            assert len(polygon) >= 6 and len(polygon) % 2 == 0
            assert min(polygon) >= 0 and max(polygon) <= 512


def test_rendered_annotations_match_the_scene() -> None:
    rng = np.random.default_rng(5)
    for _ in range(4):
        _, objects, visible = render_sample_scene(rng, 512)
        label = np.zeros((512, 512), np.uint8)
        for obj in sorted(objects, key=lambda o: -o["area"]):
            mask = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(obj["polygons"], 512, 512)))
            label[mask == 1] = obj["category_id"]
        assert (label == visible).mean() >= 0.97


def test_every_class_present_and_imbalanced(tmp_path: Path) -> None:
    make_sample_dataset(tmp_path / "x", 20, 0, seed=1)
    data = json.loads((tmp_path / "x" / "train_all.json").read_text())
    assert {a["category_id"] for a in data["annotations"]} == set(range(1, 11))
    rng = np.random.default_rng(0)
    counts = np.zeros(11, int)
    for _ in range(100):
        for obj in render_sample_scene(rng, 128)[1]:
            counts[obj["category_id"]] += 1
    assert counts[2] > 3 * counts[9]


def _hashes(root: Path) -> dict[str, str]:
    files = (p for p in root.rglob("*") if p.is_file())
    return {p.relative_to(root).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest() for p in files}


def test_refuses_a_folder_that_holds_files(tmp_path: Path) -> None:
    """Today's bug: --out over a user's data replaced their train.json and images, exit 0."""
    user = tmp_path / "mine"
    (user / "batch_01_vt").mkdir(parents=True)
    (user / "train.json").write_text('{"my": "annotations"}')
    (user / "batch_01_vt" / "0000.jpg").write_bytes(b"my photo")
    before = _hashes(user)
    for overwrite in (False, True):  # --overwrite starts over only in a folder the generator made
        with pytest.raises(OutputFolderError) as error:
            make_sample_dataset(user, 4, 2, overwrite=overwrite)
        assert str(error.value) == (
            f"--out {user} is not a folder make_sample_dataset.py made ({user / 'train.json'} would be replaced): "
            "give a new or empty folder"
        )
        assert _hashes(user) == before
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(OutputFolderError, match="is a file: give a folder"):
        make_sample_dataset(tmp_path / "a_file", 4, 2)


def test_writes_again_into_a_folder_it_made(tmp_path: Path) -> None:
    """`make demo` regenerates when train_all.json is missing, e.g. after an interrupted run."""
    (tmp_path / "empty").mkdir()
    make_sample_dataset(tmp_path / "empty", 4, 2)  # an empty folder is fine
    first = _hashes(tmp_path / "empty")
    (tmp_path / "empty" / "train_all.json").unlink()
    make_sample_dataset(tmp_path / "empty", 4, 2)
    assert _hashes(tmp_path / "empty") == first


def test_other_arguments_need_overwrite_which_replaces_only_its_own_files(tmp_path: Path) -> None:
    """A folder it made for other arguments is refused; --overwrite deletes what it recorded there and starts over,
    leaving a user's file beside them as it was."""
    data = tmp_path / "data"
    make_sample_dataset(data, 4, 2, seed=0)
    (data / "submission.csv").write_text("image_id,PredictionString\n")
    before = _hashes(data)
    with pytest.raises(OutputFolderError, match=r"made with other settings \(seed: 0 before, 1 now\).*--overwrite"):
        make_sample_dataset(data, 4, 2, seed=1)
    assert _hashes(data) == before
    make_sample_dataset(data, 3, 2, seed=1, overwrite=True)
    assert (data / "submission.csv").read_text() == "image_id,PredictionString\n"
    assert len(json.loads((data / "train_all.json").read_text())["images"]) == 3
    assert _hashes(data) != before
