"""The one reader (mask2former.io.images): the stored-pixel frame for EXIF-oriented photos, label-map and json
checks, and the refusals at registration (unsafe file names, repeated category ids, ground truth without
annotations), each leaving every input unchanged and writing nothing outside the cache."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import tiny_coco_dict, write_tiny_coco
from PIL import Image

from mask2former.data import mapper as mapper_module
from mask2former.data.catalog import DatasetCatalog
from mask2former.data.coco_semantic import DataError, load_with_manifest, register_coco_semantic
from mask2former.data.mapper import SemanticSegMapper
from mask2former.errors import UserError
from mask2former.io import images as data_io
from mask2former.io.coco_json import read_coco_json
from mask2former.io.images import LabelMapError, ReadError, read_image, read_label

BLOCK = 16


def tree_hashes(root: Path) -> dict[str, str]:
    """relative path -> sha1 of every file under root."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def write_oriented_photo(path: Path, height: int, width: int, orientation: int = 6) -> None:
    """A JPEG whose stored pixels are black with a white BLOCKxBLOCK square at the top-left, tagged `orientation`."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:BLOCK, :BLOCK] = 255
    exif = Image.Exif()
    exif[data_io.EXIF_ORIENTATION_TAG] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, exif=exif, quality=95)


def oriented_json(root: Path, height: int, width: int, json_hw: tuple[int, int] | None = None) -> Path:
    """A json with one tagged photo and one annotation covering the white square (in stored pixels)."""
    write_oriented_photo(root / "photos" / "phone.jpg", height, width)
    json_h, json_w = json_hw or (height, width)
    data = {
        "images": [{"id": 0, "file_name": "photos/phone.jpg", "height": json_h, "width": json_w}],
        "categories": [{"id": 1, "name": "Battery"}],
        "annotations": [
            {
                "id": 5,
                "image_id": 0,
                "category_id": 1,
                "segmentation": [[0, 0, BLOCK, 0, BLOCK, BLOCK, 0, BLOCK]],
                "area": float(BLOCK * BLOCK),
                "iscrowd": 0,
            }
        ],
    }
    path = root / "phone.json"
    path.write_text(json.dumps(data))
    return path


def test_opencv_would_rotate_the_pixels_the_reader_does_not(tmp_path: Path, caplog) -> None:
    path = tmp_path / "phone.jpg"
    write_oriented_photo(path, 48, 64)
    assert cv2.imread(str(path), cv2.IMREAD_COLOR).shape == (64, 48, 3)  # what the project used to read
    seen = data_io.oriented_images_seen()
    with caplog.at_level(logging.WARNING, logger="mask2former.io.images"):
        image = read_image(path)
        read_image(path)
    assert image.shape == (48, 64, 3)
    assert image[:BLOCK, :BLOCK].min() > 200 and image[BLOCK:, BLOCK:].max() < 50  # stored pixels, in place
    assert data_io.exif_orientation(path) == 6
    assert data_io.oriented_images_seen() == seen + 2
    assert caplog.text.count("carries EXIF orientation tag 6") <= 1  # once per process, then counted


@pytest.mark.parametrize("height, width", [(64, 64), (48, 64)], ids=["square", "non-square"])
def test_labels_align_with_the_pixels_of_an_oriented_photo(tmp_path: Path, caplog, height: int, width: int) -> None:
    json_path = oriented_json(tmp_path / "data", height, width)
    inputs = tree_hashes(tmp_path / "data")
    with caplog.at_level(logging.WARNING):
        dicts, manifest = load_with_manifest(json_path, tmp_path / "data", tmp_path / "cache", progress=False)
    assert manifest["oriented"] == {"count": 1, "example": "photos/phone.jpg", "tag": 6}
    assert "1 image(s) carry an EXIF orientation tag (e.g. photos/phone.jpg: EXIF orientation tag 6" in caplog.text
    mapper = SemanticSegMapper(
        is_train=False, min_size=(0,), max_size=0, crop_size=None, flip=False, image_format="BGR"
    )
    sample = mapper(dicts[0])
    image = sample["image"].permute(1, 2, 0).numpy()
    label = sample["sem_seg"].numpy()
    assert image.shape[:2] == label.shape == (height, width)
    assert (label == 1).sum() == BLOCK * BLOCK
    assert image[label == 1].min() > 200 and image[label == 0].max() < 60  # every labelled pixel is the object's
    assert tree_hashes(tmp_path / "data") == inputs
    # a cached load logs the count again
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        load_with_manifest(json_path, tmp_path / "data", tmp_path / "cache", progress=False)
    assert "1 image(s) carry an EXIF orientation tag" in caplog.text


def test_json_with_the_rotated_size_is_refused_naming_json_and_image(tmp_path: Path) -> None:
    json_path = oriented_json(tmp_path / "data", 48, 64, json_hw=(64, 48))  # a tool that applied the tag
    with pytest.raises(DataError) as error:
        load_with_manifest(json_path, tmp_path / "data", tmp_path / "cache")
    text = str(error.value)
    assert str(json_path) in text and "image 'photos/phone.jpg' (id 0)" in text
    assert "is 64x48 but the json says 48x64" in text and "EXIF orientation tag 6" in text
    assert "stored pixels" in text


def test_mapper_re_exports_the_one_reader() -> None:
    assert mapper_module.read_image is read_image and mapper_module.read_label is read_label
    assert mapper_module.read_label_at is data_io.read_label_at


def test_read_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ReadError, match=r"cannot read image .*nope\.jpg: no such file"):
        read_image(tmp_path / "nope.jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ReadError, match=r"cannot read image .*empty\.jpg \(empty, truncated or not an image\)"):
        read_image(tmp_path / "empty.jpg")
    (tmp_path / "text.png").write_text("not a png")
    with pytest.raises(ReadError, match=r"cannot read label map .*text\.png"):
        read_label(tmp_path / "text.png")
    cv2.imwrite(str(tmp_path / "rgb.png"), np.zeros((4, 5, 3), np.uint8))
    expected = r"rgb\.png must be a single-channel or indexed 8-bit PNG of class indices, got 3 channel\(s\)"
    with pytest.raises(LabelMapError, match=expected):
        read_label(tmp_path / "rgb.png")
    cv2.imwrite(str(tmp_path / "deep.png"), np.zeros((4, 5), np.uint16))
    with pytest.raises(LabelMapError, match=r"deep\.png must be a single-channel .*got 1 channel\(s\) of uint16"):
        read_label(tmp_path / "deep.png")
    cv2.imwrite(str(tmp_path / "small.png"), np.zeros((4, 5), np.uint8))
    with pytest.raises(LabelMapError, match=r"small\.png is 5x4, its image is 6x3"):
        read_label(tmp_path / "small.png", (3, 6))
    for error in (ReadError, LabelMapError, DataError):
        assert issubclass(error, UserError)
    assert issubclass(ReadError, OSError)  # callers that catch OSError for an unreadable image keep working


def test_duplicate_category_ids_are_refused(tmp_path: Path) -> None:
    data = tiny_coco_dict()
    data["categories"].append({"id": 4, "name": "Glass"})  # id 4 is Metal already
    json_path = write_tiny_coco(tmp_path / "data", data)
    with pytest.raises(DataError) as error:
        read_coco_json(json_path)
    assert str(error.value) == (
        f"{json_path}: category id 4 is given twice ('Metal' and 'Glass'); each category needs its own id "
        "(labels are assigned in id order)"
    )
    with pytest.raises(DataError, match="category id 4 is given twice"):
        load_with_manifest(json_path, tmp_path / "data", tmp_path / "cache")
    assert not (tmp_path / "cache").exists()
    data["categories"][-1] = {"name": "Glass"}
    write_tiny_coco(tmp_path / "data", data)
    with pytest.raises(DataError, match=r"category 'Glass' has id None; ids are integers"):
        read_coco_json(json_path)


UNSAFE_NAMES = {
    "absolute": ("/etc/hostname", "is absolute"),
    "climbing": ("../outside/0000.jpg", "climbs out of its folder with '..'"),
    "climbing inside": ("batch_01_vt/../../0000.jpg", "climbs out of its folder with '..'"),
}


@pytest.mark.parametrize("case", sorted(UNSAFE_NAMES))
def test_unsafe_file_name_is_refused_at_registration(tmp_path: Path, case: str) -> None:
    name, reason = UNSAFE_NAMES[case]
    data = tiny_coco_dict()
    data["images"][1]["file_name"] = name
    json_path = write_tiny_coco(tmp_path / "data", data)
    inputs = tree_hashes(tmp_path / "data")
    register_coco_semantic("unsafe", json_path, tmp_path / "data", cache_dir=tmp_path / "cache")
    with pytest.raises(DataError) as error:
        DatasetCatalog.get("unsafe")
    text = str(error.value)
    assert text.startswith(f"{json_path}: image {name!r} (id 1): file_name {name!r}") and reason in text
    for skip_bad in (False, True):  # not a bad annotation to skip: the json itself is refused
        with pytest.raises(DataError, match="file_name"):
            load_with_manifest(json_path, tmp_path / "data", tmp_path / "cache", skip_bad=skip_bad)
    assert tree_hashes(tmp_path / "data") == inputs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # not even a cache folder


def test_image_id_that_would_climb_out_of_the_cache_is_refused(tmp_path: Path) -> None:
    data = tiny_coco_dict()
    data["images"][2]["id"] = "../../escaped"
    json_path = write_tiny_coco(tmp_path / "data", data)
    inputs = tree_hashes(tmp_path / "data")
    with pytest.raises(DataError, match=r"image 'batch_02_vt/0000.jpg' \(id \.\./\.\./escaped\): its id cannot name"):
        load_with_manifest(json_path, tmp_path / "data", tmp_path / "cache" / "labels")
    assert tree_hashes(tmp_path / "data") == inputs
    assert not list(tmp_path.rglob("escaped*"))
    assert all(p.is_relative_to(tmp_path / "cache") or p.is_relative_to(tmp_path / "data") for p in tmp_path.rglob("*"))


def test_ground_truth_without_annotations_is_refused(tmp_path: Path) -> None:
    data = tiny_coco_dict()
    data["annotations"] = []
    json_path = write_tiny_coco(tmp_path / "data", data, name="test.json")
    inputs = tree_hashes(tmp_path / "data")
    with pytest.raises(DataError) as error:
        load_with_manifest(json_path, tmp_path / "data", tmp_path / "cache", has_gt=True)
    assert str(error.value).startswith(
        f"{json_path}: used as ground truth, but none of them has an annotation (3 image(s))"
    )
    assert "not test.json" in str(error.value)
    assert not (tmp_path / "cache").exists()
    # as a dataset without ground truth it loads, and the cached manifest does not let it through later
    _, manifest = load_with_manifest(json_path, tmp_path / "data", tmp_path / "cache")
    assert manifest["has_gt"] is False
    with pytest.raises(DataError, match="used as ground truth"):
        load_with_manifest(json_path, tmp_path / "data", tmp_path / "cache", has_gt=True)
    assert tree_hashes(tmp_path / "data") == inputs


def test_ground_truth_whose_annotations_were_all_skipped_is_refused(tmp_path: Path) -> None:
    data = tiny_coco_dict()
    for ann in data["annotations"]:
        ann["category_id"] = 99
    json_path = write_tiny_coco(tmp_path / "data", data)
    with pytest.raises(DataError, match=r"all 4 of its annotations were skipped as bad \(3 image\(s\)\)"):
        load_with_manifest(json_path, tmp_path / "data", tmp_path / "cache", skip_bad=True, has_gt=True)


def test_old_cache_manifest_is_rebuilt_without_rendering_again(tmp_path: Path, monkeypatch) -> None:
    json_path = write_tiny_coco(tmp_path / "data")
    dicts, manifest = load_with_manifest(json_path, tmp_path / "data", tmp_path / "cache")
    folder = Path(dicts[0]["sem_seg_file_name"]).parent
    old = {key: value for key, value in manifest.items() if key not in ("num_annotations", "oriented")}
    (folder / "manifest.json").write_text(json.dumps(old))  # as an older version wrote it
    from mask2former.data import coco_semantic

    monkeypatch.setattr(coco_semantic, "render_label_map", lambda *a, **k: pytest.fail("rendered again"))
    again, manifest = load_with_manifest(json_path, tmp_path / "data", tmp_path / "cache")
    assert again == dicts and manifest["num_annotations"] == 4
