"""The generated sample dataset: layout, determinism, valid polygons, faithful labels, imbalance."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from mask2former.data.sample_dataset import TRASH_CATEGORY_NAMES, make_sample_dataset, render_sample_scene


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
    assert len(files) == 10
    for rel in files:
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
