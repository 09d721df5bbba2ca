"""The dataset-format readers (mask2former/data/formats/): each reads a small dataset written here in its format,
and its conversion to the competition layout, loaded back by the COCO loader, gives the label maps that were
drawn (round trip); the mask-value conventions (background, ignore, reduce zero label); the checks; direct
registration of a mask folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from format_trees import (
    CVAT_COLORS,
    YOLO_NAMES,
    H,
    W,
    blocks,
    write_ade20k,
    write_cityscapes,
    write_cvat_masks,
    write_grey,
    write_grey_masks,
    write_photo,
    write_rgb,
    write_voc,
    write_yolo,
)
from pycocotools import mask as mask_utils

from mask2former.data.catalog import DatasetCatalog, MetadataCatalog
from mask2former.data.coco_semantic import load_sem_seg_dataset
from mask2former.data.formats.base import FormatError, FormatOptions, SourceDataset, SourceImage, read_dataset
from mask2former.data.formats.checks import check_dataset, difference_hash
from mask2former.data.formats.png_masks import build_mapping
from mask2former.data.formats.registration import register_mask_folders
from mask2former.data.formats.write_layout import write_layout
from mask2former.errors import UserError
from mask2former.io.coco_json import DataError
from mask2former.io.images import read_image, read_label
from mask2former.utils.output_folder import OutputFolderError


def converted_label_maps(out: Path, split: str, cache: Path) -> dict[str, np.ndarray]:
    """{file_name: label map} of OUT/<split>.json as the COCO loader renders it."""
    dicts = load_sem_seg_dataset(out / f"{split}.json", out, cache_dir=cache, progress=False)
    return {
        Path(d["file_name"]).relative_to(out.resolve()).as_posix(): read_label(d["sem_seg_file_name"]) for d in dicts
    }


def convert(source: Path, out: Path, format_name: str, **options) -> dict:
    return write_layout(read_dataset(format_name, source, FormatOptions(**options)), out)


def painted(objects: list[tuple[int, list[float]]]) -> np.ndarray:
    """YOLO objects drawn by pycocotools in pixels, label c + 1, largest first (the COCO loader's order)."""
    label = np.zeros((H, W), dtype=np.uint8)
    masks = []
    for class_id, coords in objects:
        pixels = [v * (W if i % 2 == 0 else H) for i, v in enumerate(coords)]
        masks.append((class_id + 1, mask_utils.decode(mask_utils.frPyObjects([pixels], H, W))[..., 0]))
    for value, mask in sorted(masks, key=lambda item: -int(item[1].sum())):
        label[mask > 0] = value
    return label


# ---- YOLO-seg ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("names_as_dict", [False, True], ids=["names-list", "names-dict"])
def test_yolo_seg_roboflow_export_round_trip(tmp_path: Path, names_as_dict: bool) -> None:
    drawn = write_yolo(tmp_path / "yolo", names_as_dict=names_as_dict)
    report = convert(tmp_path / "yolo", tmp_path / "out", "yolo-seg")
    assert report["classes"] == ["Background", *YOLO_NAMES]
    assert set(report["splits"]) == {"train", "val", "test", "train_all"}  # "valid" -> "val"
    assert report["splits"]["test"]["annotations"] == 0 or report["splits"]["test"]["images"] == 1
    assert any("1 image(s) have no .txt" in line for line in report["conventions"])
    for split, folder in (("train", "train"), ("val", "valid")):
        maps = converted_label_maps(tmp_path / "out", split, tmp_path / "cache")
        assert sorted(maps) == sorted(f"{split}/{name}" for name in drawn[folder])
        for name, objects in drawn[folder].items():
            assert np.array_equal(maps[f"{split}/{name}"], painted(objects)), name
    empty = next(iter(drawn["train"]))
    assert not converted_label_maps(tmp_path / "out", "train", tmp_path / "cache")[f"train/{empty}"].any()
    categories = json.loads((tmp_path / "out" / "train.json").read_text())["categories"]
    assert [(c["id"], c["name"]) for c in categories] == [(1, "bag"), (2, "bottle")]


def test_yolo_seg_test_split_named_but_not_exported_is_said(tmp_path: Path) -> None:
    write_yolo(tmp_path / "yolo", counts={"train": 2, "valid": 1})  # data.yaml still names ../test/images
    dataset = read_dataset("yolo-seg", tmp_path / "yolo")
    assert list(dataset.splits) == ["train", "val"]
    assert "data.yaml test: ../test/images is not there: no test split written" in dataset.conventions


def test_yolo_seg_ultralytics_layout_with_path_and_split_folders(tmp_path: Path) -> None:
    root = tmp_path / "coco8"
    for split, seed in (("train", 1), ("val", 2)):
        write_photo(root / "images" / split / f"a{seed}.jpg", seed)
        (root / "labels" / split).mkdir(parents=True)
        (root / "labels" / split / f"a{seed}.txt").write_text("1 0.1 0.1 0.9 0.1 0.5 0.9\n")
    (tmp_path / "coco8.yaml").write_text(
        f"path: {root.name}\ntrain: images/train\nval: images/val\nnames:\n  0: a\n  1: b\n"
    )
    dataset = read_dataset("yolo-seg", tmp_path / "coco8.yaml")
    assert {split: [image.name for image in images] for split, images in dataset.splits.items()} == {
        "train": ["train/a1.jpg"],
        "val": ["val/a2.jpg"],
    }
    region = dataset.splits["train"][0].regions[0]
    assert region.label == 2 and region.polygons[0][:2] == pytest.approx([0.1 * W, 0.1 * H])


def test_yolo_seg_class_beyond_names_is_one_line_naming_file_and_line(tmp_path: Path) -> None:
    write_yolo(tmp_path / "yolo")
    label = next((tmp_path / "yolo" / "valid" / "labels").glob("*.txt"))
    label.write_text(label.read_text() + "5 0.1 0.1 0.2 0.1 0.2 0.2\n")
    with pytest.raises(FormatError, match=rf"^{label}:\d+: class 5 is beyond the 2 names of data.yaml \(0..1\)"):
        read_dataset("yolo-seg", tmp_path / "yolo")


# ---- PNG masks ---------------------------------------------------------------------------------------------------


def test_voc_indexed_masks_round_trip_with_ignore_border(tmp_path: Path) -> None:
    drawn = write_voc(tmp_path / "voc")
    report = convert(tmp_path / "voc", tmp_path / "out", "png-masks")
    assert report["classes"][:4] == ["background", "aeroplane", "bicycle", "bird"] and len(report["classes"]) == 21
    warnings = [p["message"] for p in report["checks"]["problems"] if p["severity"] == "warning"]
    assert any("read with the 21 Pascal VOC class names; give --classes" in line for line in warnings), warnings
    for split in ("train", "val"):
        for name, label in converted_label_maps(tmp_path / "out", split, tmp_path / "cache").items():
            assert np.array_equal(label, drawn[Path(name).stem]), name  # 255 border included
    anns = json.loads((tmp_path / "out" / "train.json").read_text())["annotations"]
    ignored = [a for a in anns if a.get("ignore")]
    assert ignored and all(a["iscrowd"] == 1 and isinstance(a["segmentation"]["counts"], str) for a in ignored)


def test_cvat_segmentation_mask_export_with_labelmap_round_trip(tmp_path: Path) -> None:
    drawn = write_cvat_masks(tmp_path / "cvat")
    report = convert(tmp_path / "cvat", tmp_path / "out", "png-masks")
    assert report["classes"] == list(CVAT_COLORS) and list(report["splits"]) == ["train"]  # default.txt -> train
    maps = converted_label_maps(tmp_path / "out", "train", tmp_path / "cache")
    assert {Path(name).stem: label.tolist() for name, label in maps.items()} == {
        k: v.tolist() for k, v in drawn.items()
    }


def test_grey_masks_in_split_folders_round_trip(tmp_path: Path) -> None:
    drawn = write_grey_masks(tmp_path / "grey")
    report = convert(tmp_path / "grey", tmp_path / "out", "png-masks")
    assert report["classes"] == ["background", "bag", "bottle"] and "train_all" in report["splits"]
    for split in ("train", "val"):
        for name, label in converted_label_maps(tmp_path / "out", split, tmp_path / "cache").items():
            assert np.array_equal(label, drawn[name]), name


def test_mask_values_background_ignore_and_reduce_zero_label() -> None:
    names = ["road", "sky", "bag", "bottle"]
    values = np.array([[0, 1, 2, 3, 255]], dtype=np.uint8)
    plain = build_mapping(names, FormatOptions())
    assert plain.table[values].tolist() == [[0, 1, 2, 3, 255]] and plain.classes == names
    moved = build_mapping(names, FormatOptions(background=2, ignore=(255,)))
    assert moved.table[values].tolist() == [[1, 2, 0, 3, 255]] and moved.classes == ["bag", "road", "sky", "bottle"]
    reduced = build_mapping(names, FormatOptions(reduce_zero_label=True))
    assert reduced.table[np.array([0, 1, 4, 255])].tolist() == [255, 0, 3, 255] and reduced.classes == names
    assert reduced.table[5] == 256  # a value beyond the list is no class
    with pytest.raises(FormatError, match=r"--ignore 1 is also the class 'sky'"):
        build_mapping(names, FormatOptions(ignore=(1,)))
    with pytest.raises(FormatError, match=r"the class list starts with 'background'.*leave 'background' out"):
        build_mapping(["background", "bag"], FormatOptions(reduce_zero_label=True))


def test_colour_not_in_the_labelmap_names_the_file_and_pixel(tmp_path: Path) -> None:
    write_cvat_masks(tmp_path / "cvat")
    mask = sorted((tmp_path / "cvat" / "SegmentationClass").glob("*.png"))[1]
    from PIL import Image

    rgb = np.array(Image.open(mask))
    rgb[3, 5] = (1, 2, 3)
    Image.fromarray(rgb).save(mask)
    dataset = read_dataset("png-masks", tmp_path / "cvat")
    with pytest.raises(FormatError, match=rf"^{mask}: colour \(1, 2, 3\) at pixel x=5, y=3 is not in the label map"):
        dataset.splits["train"][1].label_map()


# ---- Cityscapes, ADE20K --------------------------------------------------------------------------------------------


def test_cityscapes_label_ids_become_train_ids(tmp_path: Path) -> None:
    drawn = write_cityscapes(tmp_path / "cs")
    report = convert(tmp_path / "cs", tmp_path / "out", "cityscapes")
    assert len(report["classes"]) == 19 and report["classes"][0] == "road" and report["classes"][13] == "car"
    assert report["splits"]["test"]["annotations"] == 0
    for split in ("train", "val"):
        for name, label in converted_label_maps(tmp_path / "out", split, tmp_path / "cache").items():
            assert np.array_equal(label, drawn[name]), name


@pytest.mark.parametrize("reduce", [None, False], ids=["reduce-zero-label", "no-reduce"])
def test_ade20k_reduce_zero_label_by_default(tmp_path: Path, reduce: bool | None) -> None:
    drawn = write_ade20k(tmp_path / "ade")
    report = convert(tmp_path / "ade", tmp_path / "out", "ade20k", reduce_zero_label=reduce)
    assert report["classes"][:2] == (["wall", "building"] if reduce is None else ["other", "wall"])
    assert len(report["classes"]) == (150 if reduce is None else 151)
    for name, label in converted_label_maps(tmp_path / "out", "val", tmp_path / "cache").items():
        stored = drawn[name]
        expected = np.where(stored == 0, 255, stored - 1).astype(np.uint8) if reduce is None else stored
        assert np.array_equal(label, expected), name


# ---- the layout writer ---------------------------------------------------------------------------------------------


def test_layout_links_images_and_resumes_and_drops_stale_files(tmp_path: Path) -> None:
    write_grey_masks(tmp_path / "grey")
    first = convert(tmp_path / "grey", tmp_path / "out", "png-masks")
    image = tmp_path / "grey" / "images" / "train" / "img_0.png"
    assert os.path.samefile(image, tmp_path / "out" / "train" / "img_0.png") and first["images"]["linked"] == 4
    (tmp_path / "grey" / "images" / "val" / "img_1.png").unlink()
    (tmp_path / "grey" / "masks" / "val" / "img_1.png").unlink()
    again = convert(tmp_path / "grey", tmp_path / "out", "png-masks")
    assert again["images"]["kept"] == 3 and again["images"]["removed_stale"] == 1
    assert not (tmp_path / "out" / "val" / "img_1.png").exists()
    assert [i["file_name"] for i in json.loads((tmp_path / "out" / "val.json").read_text())["images"]] == [
        "val/img_0.png"
    ]


def test_layout_copies_with_link_false_and_refuses_a_foreign_folder(tmp_path: Path) -> None:
    write_grey_masks(tmp_path / "grey", splits=("train",))
    dataset = read_dataset("png-masks", tmp_path / "grey")
    report = write_layout(dataset, tmp_path / "out", link=False)
    copied = tmp_path / "out" / "train" / "img_0.png"
    assert report["images"]["copied"] == 2 and not os.path.samefile(copied, tmp_path / "grey/images/train/img_0.png")
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(OutputFolderError, match="is not a folder convert_dataset.py made"):
        write_layout(dataset, foreign)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]


def test_regions_masks_and_ignore_round_trip_through_the_coco_loader(tmp_path: Path) -> None:
    """Masks and IGNORE regions (as the labelling-tool readers give them) come back from the json exactly."""
    from mask2former.data.formats.base import Region

    write_photo(tmp_path / "src" / "a.png", 1)
    mask = np.zeros((H, W), dtype=bool)
    mask[2:9, 3:20] = True
    ignore = np.zeros((H, W), dtype=bool)
    ignore[20:25, 10:30] = True
    image = SourceImage(path=tmp_path / "src" / "a.png", name="train/a.png", height=H, width=W)
    image.regions = [
        Region(label=2, mask=mask),
        Region(label=255, mask=ignore),
        Region(label=1, polygons=[[30, 2, 38, 2, 38, 12]]),
    ]
    dataset = SourceDataset("test", tmp_path / "src", ["bg", "a", "b"], {"train": [image]})
    write_layout(dataset, tmp_path / "out")
    (label,) = converted_label_maps(tmp_path / "out", "train", tmp_path / "cache").values()
    from mask2former.data.formats.base import label_map_of

    assert np.array_equal(label, label_map_of(image)) and (label == 255).sum() == ignore.sum()
    assert (label[mask] == 2).all()


def test_ignore_regions_are_not_counted_as_objects(tmp_path: Path) -> None:
    """The converter's ignore annotations carry a category id (COCO needs one) but are not objects: the dataset
    statistics and the fold tables count the drawn objects only, and the ignore pixels apart."""
    from mask2former.data.folds import fold_class_counts
    from mask2former.data.stats import dataset_statistics

    drawn = write_voc(tmp_path / "voc")
    convert(tmp_path / "voc", tmp_path / "out", "png-masks")
    data = json.loads((tmp_path / "out" / "train.json").read_text())
    objects = [a for a in data["annotations"] if not a.get("ignore")]
    assert len(objects) < len(data["annotations"])  # every VOC mask here has its 255 border
    dicts = load_sem_seg_dataset(tmp_path / "out" / "train.json", tmp_path / "out", cache_dir=tmp_path / "cache")
    stats = dataset_statistics(data, dicts, ["background", *[f"c{i}" for i in range(1, 21)]])
    assert stats["num_annotations"] == len(objects)
    assert stats["ignored_pixels"] == sum(int((drawn[Path(d["file_name"]).stem] == 255).sum()) for d in dicts)
    table = fold_class_counts(data, {image["id"]: 0 for image in data["images"]}, 1)
    assert int(table[0, 1:].sum()) == len(objects)


# ---- checks --------------------------------------------------------------------------------------------------------


def test_checks_find_duplicates_across_splits_and_polygons_out_of_the_image(tmp_path: Path) -> None:
    write_yolo(tmp_path / "yolo", unlabelled=0)
    train = sorted((tmp_path / "yolo" / "train" / "images").glob("*.jpg"))
    valid = sorted((tmp_path / "yolo" / "valid" / "images").glob("*.jpg"))
    valid[0].write_bytes(train[0].read_bytes())  # the same photo in train and valid
    pixels = read_image(train[1]).astype(np.int16)
    write_nearly = np.clip(pixels + 3, 0, 255).astype(np.uint8)  # a slightly brighter copy
    import cv2

    cv2.imwrite(str(valid[1].with_suffix(".png")), write_nearly)
    valid[1].unlink()
    (valid[1].parent.parent / "labels" / f"{valid[1].stem}.txt").unlink()
    label = tmp_path / "yolo" / "train" / "labels" / f"{train[2].stem}.txt"
    label.write_text("0 -0.05 0.1 0.5 0.1 0.5 0.5\n")
    check = check_dataset(read_dataset("yolo-seg", tmp_path / "yolo"))
    lines = [p.line() for p in check.problems]
    assert any(f"{valid[0]} (val) has the same pixels as {train[0]} (train)" in line for line in lines), lines
    assert any(f"{valid[1].with_suffix('.png')} (val) looks like {train[1]} (train)" in line for line in lines), lines
    assert any(line.startswith(f"warning: {label}:1: polygon 0 reaches") for line in lines), lines
    assert not check.errors
    assert check.pixels["train"][0] > 0 and sum(check.images["train"]) >= len(train)


def test_difference_hash_is_stable_under_small_changes_and_differs_between_photos() -> None:
    from format_trees import photo

    a = photo(1, 64, 64)
    smooth = np.repeat(np.repeat(a[::8, ::8], 8, 0), 8, 1)
    same = bin(difference_hash(smooth) ^ difference_hash(np.clip(smooth.astype(int) + 4, 0, 255).astype(np.uint8)))
    other = bin(difference_hash(smooth) ^ difference_hash(np.repeat(np.repeat(photo(2, 8, 8), 8, 0), 8, 1)))
    assert same.count("1") <= 2 and other.count("1") > 10


def test_mask_of_another_size_is_an_error_naming_the_mask(tmp_path: Path) -> None:
    write_grey_masks(tmp_path / "grey", splits=("train",))
    mask = tmp_path / "grey" / "masks" / "train" / "img_1.png"
    write_grey(mask, blocks(1, [1], height=H + 2))
    check = check_dataset(read_dataset("png-masks", tmp_path / "grey"), duplicates=False)
    assert [p.message for p in check.errors] == [f"{mask}: mask is {W}x{H + 2}, its image is {W}x{H}"]


# ---- direct registration -------------------------------------------------------------------------------------------


def test_png_mask_folder_registers_without_conversion(tmp_path: Path) -> None:
    drawn = write_grey_masks(tmp_path / "grey", splits=("train",))
    register_mask_folders("grey_train", tmp_path / "grey/images/train", tmp_path / "grey/masks/train", tmp_path / "c")
    dicts = DatasetCatalog.get("grey_train")
    assert MetadataCatalog.get("grey_train").stuff_classes == ["Background", "bag", "bottle"]  # as any json
    assert {Path(d["file_name"]).name: read_label(d["sem_seg_file_name"]).tolist() for d in dicts} == {
        Path(name).name: label.tolist() for name, label in drawn.items()
    }


def test_registering_a_mask_folder_from_the_config(tmp_path: Path) -> None:
    from mask2former.config import load_config
    from mask2former.data.trash import register_datasets_from_config

    write_grey_masks(tmp_path / "grey", splits=("train",))
    cfg = load_config(None, freeze=False)
    images, masks = tmp_path / "grey/images/train", tmp_path / "grey/masks/train"
    cfg.DATASETS.REGISTER = [["masks", "png-masks", str(images), str(masks)]]
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = ("masks",), ()
    cfg.DATASETS.LABEL_CACHE_DIR = str(tmp_path / "cache")
    assert register_datasets_from_config(cfg) == ["masks"]
    assert len(DatasetCatalog.get("masks")) == 2
    (masks / "img_1.png").unlink()
    with pytest.raises(DataError, match=r"img_1.png has no mask .*img_1.png: add it or drop the image"):
        register_mask_folders("masks_again", images, masks, tmp_path / "cache")
    write_rgb(masks / "img_1.png", np.zeros((H, W, 3), np.uint8))  # a colour mask, named by the registration
    register_mask_folders("masks_rgb", images, masks, tmp_path / "cache")
    with pytest.raises(UserError) as raised:
        DatasetCatalog.get("masks_rgb")
    message = str(raised.value)
    assert message.startswith("DATASETS.REGISTER masks_rgb: ") and "registered" not in message.split(":")[0], message
    assert "colour masks: convert them with tools/convert_dataset.py --from png-masks" in message
