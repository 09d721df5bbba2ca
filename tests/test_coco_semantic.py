"""COCO -> label maps: rendering rules, the on-disk cache, and every bad-input rule."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import tiny_coco_dict, write_tiny_coco

from mask2former.data import coco_semantic
from mask2former.data.coco_semantic import DataError, load_sem_seg_dataset, load_with_manifest
from mask2former.io.images import read_label

# Category ids 1, 2, 4, 8 -> labels 1..4 in id order.
PAPER, METAL, BAG, TRASH = 2, 3, 4, 1


def _labels(dicts: list[dict]) -> dict[int, np.ndarray]:
    return {d["image_id"]: read_label(d["sem_seg_file_name"]) for d in dicts}


def test_renders_polygons_rle_and_paints_largest_first(tiny_coco: Path, cache_dir: Path) -> None:
    dicts = load_sem_seg_dataset(tiny_coco, tiny_coco.parent, cache_dir)
    assert [d["image_id"] for d in dicts] == [0, 1, 2]
    assert dicts[0]["file_name"] == str(tiny_coco.parent / "batch_01_vt" / "0000.jpg")
    labels = _labels(dicts)
    first = labels[0]
    assert first.shape == (48, 64) and first.dtype == np.uint8
    assert first[15, 12] == METAL and first[15, 16] == METAL  # both polygons of one object, on top of paper
    assert first[7, 30] == PAPER
    assert first[45, 50] == BAG
    assert first[2, 2] == 0 and first[40, 5] == 0
    second = labels[1]
    assert (second[10:20, 30:50] == TRASH).all() and (second == TRASH).sum() == 200  # RLE exactly
    assert (labels[2] == 0).all()  # an image without annotations is all background


def test_paint_order_follows_area_not_json_order(tmp_path: Path, cache_dir: Path) -> None:
    data = tiny_coco_dict()
    data["annotations"][0]["area"] = 5000.0  # the small Metal squares now count as larger than Paper
    json_path = write_tiny_coco(tmp_path, data)
    first = _labels(load_sem_seg_dataset(json_path, tmp_path, cache_dir))[0]
    assert first[15, 12] == PAPER


def test_crowd_as_ignore(tmp_path: Path, cache_dir: Path) -> None:
    data = tiny_coco_dict()
    data["annotations"][2]["iscrowd"] = 1
    json_path = write_tiny_coco(tmp_path, data)
    assert _labels(load_sem_seg_dataset(json_path, tmp_path, cache_dir))[0][45, 50] == BAG
    ignored = load_sem_seg_dataset(json_path, tmp_path, cache_dir, crowd_as_ignore=True)
    assert _labels(ignored)[0][45, 50] == 255


def test_uncompressed_rle(tmp_path: Path, cache_dir: Path) -> None:
    data = tiny_coco_dict()
    mask = np.zeros((48, 64), dtype=np.uint8)
    mask[0:4, 0:64] = 1  # column-major runs: each column starts with 4 ones then 44 zeros
    counts = [0] + [4, 44] * 64
    counts[-1] = 44
    data["annotations"][3]["segmentation"] = {"size": [48, 64], "counts": counts}
    json_path = write_tiny_coco(tmp_path, data)
    second = _labels(load_sem_seg_dataset(json_path, tmp_path, cache_dir))[1]
    assert (second == TRASH).sum() == 4 * 64 and (second[0:4] == TRASH).all()


def test_cache_is_reused_and_keyed_by_json_content(tmp_path: Path, cache_dir: Path, monkeypatch) -> None:
    json_path = write_tiny_coco(tmp_path)
    first = load_sem_seg_dataset(json_path, tmp_path, cache_dir)

    def fail(*args, **kwargs):
        raise AssertionError("re-rendered although the cache is complete")

    monkeypatch.setattr(coco_semantic, "render_label_map", fail)
    assert load_sem_seg_dataset(json_path, tmp_path, cache_dir) == first

    data = tiny_coco_dict()
    data["annotations"].pop(2)
    write_tiny_coco(tmp_path, data)
    monkeypatch.undo()
    changed = load_sem_seg_dataset(json_path, tmp_path, cache_dir)
    assert changed[0]["sem_seg_file_name"] != first[0]["sem_seg_file_name"]
    assert _labels(changed)[0][45, 50] == 0


def test_interrupted_render_resumes(tmp_path: Path, cache_dir: Path, monkeypatch) -> None:
    json_path = write_tiny_coco(tmp_path)
    dicts = load_sem_seg_dataset(json_path, tmp_path, cache_dir)
    folder = Path(dicts[0]["sem_seg_file_name"]).parent
    (folder / "manifest.json").unlink()  # as if killed before the end
    Path(dicts[2]["sem_seg_file_name"]).unlink()
    rendered = []
    original = coco_semantic.render_label_map
    monkeypatch.setattr(
        coco_semantic,
        "render_label_map",
        lambda image, *a, **k: rendered.append(image["id"]) or original(image, *a, **k),
    )
    again = load_sem_seg_dataset(json_path, tmp_path, cache_dir)
    assert rendered == [2]
    assert again == dicts


def test_test_json_has_no_ground_truth(tmp_path: Path, cache_dir: Path) -> None:
    data = tiny_coco_dict()
    data["annotations"] = []
    json_path = write_tiny_coco(tmp_path, data, name="test.json")
    dicts, manifest = load_with_manifest(json_path, tmp_path, cache_dir)
    assert manifest["has_gt"] is False
    assert all("sem_seg_file_name" not in d for d in dicts)
    assert manifest["class_names"] == ["Background", "General trash", "Paper", "Metal", "Plastic bag"]


def _bad(tmp_path: Path, edit) -> Path:
    data = tiny_coco_dict()
    edit(data)
    return write_tiny_coco(tmp_path, data)


BAD_ANNOTATIONS = {
    "two-point polygon": (
        lambda d: d["annotations"][2].update(segmentation=[[50, 30, 63, 47]]),
        "polygon 0 has 2 point(s); a polygon needs at least 3",
        12,
    ),
    "odd values": (
        lambda d: d["annotations"][1].update(segmentation=[[5, 5, 45, 5, 45, 25, 5]]),
        "odd number of values (7)",
        11,
    ),
    "far outside": (
        lambda d: d["annotations"][2].update(segmentation=[[50, 30, 6300, 47, 40, 47]]),
        "far outside the 64x48 image",
        12,
    ),
    "unknown category": (lambda d: d["annotations"][0].update(category_id=99), "unknown category_id 99", 10),
    "empty segmentation": (
        lambda d: d["annotations"][0].update(segmentation=[]),
        "segmentation is empty",
        10,
    ),
    "RLE size": (
        lambda d: d["annotations"][3]["segmentation"].update(size=[10, 10]),
        "RLE size [10, 10] differs from the image size [48, 64]",
        13,
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_ANNOTATIONS))
def test_bad_annotation_is_an_error_naming_json_image_and_annotation(tmp_path, cache_dir, case) -> None:
    edit, message, ann_id = BAD_ANNOTATIONS[case]
    json_path = _bad(tmp_path, edit)
    image_id = next(a["image_id"] for a in tiny_coco_dict()["annotations"] if a["id"] == ann_id)
    file_name = tiny_coco_dict()["images"][image_id]["file_name"]
    with pytest.raises(DataError) as error:
        load_sem_seg_dataset(json_path, tmp_path, cache_dir)
    text = str(error.value)
    assert str(json_path) in text and file_name in text and f"annotation {ann_id}" in text and message in text


def test_annotation_of_unknown_image(tmp_path, cache_dir) -> None:
    json_path = _bad(tmp_path, lambda d: d["annotations"][0].update(image_id=42))
    with pytest.raises(DataError, match=r"annotation 10 refers to image id 42"):
        load_sem_seg_dataset(json_path, tmp_path, cache_dir)


def test_missing_image(tmp_path, cache_dir) -> None:
    json_path = write_tiny_coco(tmp_path)
    (tmp_path / "batch_02_vt" / "0000.jpg").unlink()
    with pytest.raises(DataError, match=r"image 'batch_02_vt/0000.jpg' \(id 2\): image file not found"):
        load_sem_seg_dataset(json_path, tmp_path, cache_dir)


def test_unreadable_image(tmp_path, cache_dir) -> None:
    json_path = write_tiny_coco(tmp_path)
    path = tmp_path / "batch_01_vt" / "0001.jpg"
    path.write_bytes(path.read_bytes()[:200])  # truncated JPEG
    with pytest.raises(DataError, match=r"image 'batch_01_vt/0001.jpg' \(id 1\): cannot read"):
        load_sem_seg_dataset(json_path, tmp_path, cache_dir)
    path.write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=r"cannot read"):
        load_sem_seg_dataset(json_path, tmp_path, cache_dir)


def test_size_mismatch(tmp_path, cache_dir) -> None:
    json_path = write_tiny_coco(tmp_path)
    cv2.imwrite(str(tmp_path / "batch_01_vt" / "0000.jpg"), np.zeros((40, 64, 3), np.uint8))
    with pytest.raises(DataError, match=r"0000.jpg is 64x40 but the json says 64x48"):
        load_sem_seg_dataset(json_path, tmp_path, cache_dir)


def test_missing_json_and_bad_json(tmp_path, cache_dir) -> None:
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_sem_seg_dataset(tmp_path / "nope.json", tmp_path, cache_dir)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="bad.json: not valid JSON"):
        load_sem_seg_dataset(bad, tmp_path, cache_dir)
    bad.write_text(json.dumps({"images": []}))
    with pytest.raises(DataError, match="missing the 'categories' list"):
        load_sem_seg_dataset(bad, tmp_path, cache_dir)


def test_skip_bad_skips_counts_and_summarises(tmp_path, cache_dir, caplog) -> None:
    data = tiny_coco_dict()
    data["annotations"][2]["segmentation"] = [[50, 30, 63, 47]]  # bad polygon: annotation skipped
    data["annotations"][0]["category_id"] = 99  # unknown category: annotation skipped
    json_path = write_tiny_coco(tmp_path, data)
    (tmp_path / "batch_01_vt" / "0001.jpg").unlink()  # missing image: the image (and its RLE) skipped
    with caplog.at_level(logging.WARNING):
        dicts, manifest = load_with_manifest(json_path, tmp_path, cache_dir, skip_bad=True)
    assert [d["image_id"] for d in dicts] == [0, 2]
    skipped = manifest["skipped"]
    assert skipped["skipped_images"] == 1 and skipped["skipped_annotations"] == 2
    assert skipped["reasons"] == {"bad polygon": 1, "unknown category": 1, "missing image": 1}
    assert "skipped 1 image(s) and 2 annotation(s)" in caplog.text
    assert "annotation 12" in caplog.text
    first = _labels(dicts)[0]
    assert first[7, 30] == PAPER and first[45, 50] == 0 and first[15, 12] == PAPER
