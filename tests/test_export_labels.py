"""tools/export_labels.py's logic: predictions and pseudo-labels written for labelling tools (CVAT's Segmentation
mask 1.1 layout, a COCO json, Label Studio brush pre-annotations) give back the same label maps through each
format's reader; the output folder's contract; each bad input is one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import REPO, doc_commands
from PIL import Image

from mask2former.data import formats
from mask2former.data.coco_semantic import ClassListError, category_to_label
from mask2former.data.formats.base import FormatOptions, label_map_of, read_dataset
from mask2former.data.rasterize import render_label_map
from mask2former.io.files import atomic_write_json
from mask2former.io.images import read_label, write_label_png
from mask2former.io.probabilities import ProbabilityFileError, save_probabilities
from mask2former.pipeline.convert_dataset import ConvertOptions
from mask2former.pipeline.convert_dataset import run as convert_run
from mask2former.pipeline.export_labels import ExportError, ExportOptions, run
from mask2former.pipeline.pseudo_label_maps import pseudo_label_map
from mask2former.utils.output_folder import OutputFolderError

CLASSES = ["Background", "bottle", "can"]
SIZES = {"batch/a.jpg": (30, 40), "b.png": (24, 24)}  # file_name -> (height, width) of the image


def make_predictions(folder: Path, stored: int = 0) -> dict[str, np.ndarray]:
    """A finished prediction folder (probs/*.npz, meta.json) for SIZES, probabilities at the image's size
    (`stored` 0) or stored x stored; returns the label maps they mean at the image's size."""
    rng = np.random.default_rng(0)
    maps = {}
    for index, (name, (height, width)) in enumerate(SIZES.items()):
        size = (stored, stored) if stored else (height, width)
        logits = rng.normal(size=(len(CLASSES), *size)).astype(np.float32)
        logits[1, : size[0] // 2] += 3  # whole areas of one class, as a model gives
        logits[2, :, : size[1] // 3] += 4
        probs = np.exp(logits) / np.exp(logits).sum(axis=0)
        save_probabilities(folder, name, index + 7, probs, height, width, CLASSES)
        maps[name] = pseudo_label_map(probs, height, width, 0.0)
    atomic_write_json(folder / "meta.json", {"complete": True, "file_names": list(SIZES), "class_names": CLASSES})
    return maps


def test_predictions_at_the_image_size_are_their_argmax(tmp_path: Path) -> None:
    maps = make_predictions(tmp_path / "pred")
    for name, (height, width) in SIZES.items():
        with np.load(tmp_path / "pred" / "probs" / Path(name).with_suffix(".npz")) as data:
            assert np.array_equal(maps[name], data["probs"].astype(np.float32).argmax(axis=0))
        assert maps[name].shape == (height, width) and set(np.unique(maps[name])) == {0, 1, 2}


def test_export_round_trips_through_cvat_coco_and_label_studio(tmp_path: Path) -> None:
    maps = make_predictions(tmp_path / "pred", stored=16)
    out = tmp_path / "out"
    counts = run(ExportOptions(str(tmp_path / "pred"), str(out)))
    assert counts["images"] == 2 and counts["unlabelled_pixels"] == 0

    # CVAT Segmentation mask 1.1: indexed PNGs whose palette is labelmap.txt's colours, in its order
    lines = (out / "labelmap.txt").read_text().splitlines()
    assert lines[0] == "# label:color_rgb:parts:actions" and [line.split(":")[0] for line in lines[1:]] == [
        "background",
        "bottle",
        "can",
    ]
    colours = [tuple(int(c) for c in line.split(":")[1].split(",")) for line in lines[1:]]
    assert (out / "ImageSets/Segmentation/default.txt").read_text().splitlines() == ["batch/a", "b"]
    for name, expected in maps.items():
        png = out / "SegmentationClass" / Path(name).with_suffix(".png")
        with Image.open(png) as image:
            assert image.mode == "P"
            palette = np.array(image.getpalette()[: 3 * len(CLASSES)]).reshape(-1, 3)
            rgb = np.asarray(image.convert("RGB"))
        assert [tuple(colour) for colour in palette.tolist()] == colours
        assert np.array_equal(read_label(png), expected)
        by_colour = np.zeros(expected.shape, np.uint8)
        for label, colour in enumerate(colours):
            by_colour[(rgb == colour).all(axis=2)] = label
        assert np.array_equal(by_colour, expected)  # what a reader matching colours gets

    # COCO: one RLE annotation per class per image, categories 1..K, image ids as predicted
    coco = json.loads((out / "coco.json").read_text())
    assert [c["name"] for c in coco["categories"]] == CLASSES[1:] and [c["id"] for c in coco["categories"]] == [1, 2]
    assert len(coco["annotations"]) == 4 and {a["iscrowd"] for a in coco["annotations"]} == {0}
    for image in coco["images"]:
        anns = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
        rendered = render_label_map(image, anns, category_to_label(coco["categories"]))
        assert np.array_equal(rendered, maps[image["file_name"]])
    assert sorted(image["id"] for image in coco["images"]) == [7, 8]

    # Label Studio: the pre-annotations, accepted as they are, read back by the label-studio reader
    tasks = json.loads((out / "label_studio.json").read_text())
    assert [task["data"]["image"] for task in tasks] == [
        "/data/local-files/?d=batch/a.jpg",
        "/data/local-files/?d=b.png",
    ]
    for task in tasks:
        task["annotations"] = [{"id": 1, "result": task.pop("predictions")[0]["result"]}]
    (tmp_path / "corrected.json").write_text(json.dumps(tasks))
    images = tmp_path / "photos"
    for name, (height, width) in SIZES.items():
        (images / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(images / name), np.zeros((height, width, 3), np.uint8))
    options = FormatOptions(classes=tuple(CLASSES), images=images)
    dataset = read_dataset("label-studio", tmp_path / "corrected.json", options)
    for image in dataset.splits["train"]:
        assert np.array_equal(label_map_of(image), maps[image.name.removeprefix("train/")]), image.name
    config = (out / "label_studio_config.xml").read_text()
    assert '<BrushLabels name="label" toName="image">' in config and 'value="can"' in config


@pytest.mark.skipif("png-masks" not in dict(formats.DATASET_FORMATS), reason="the png-masks reader is not there")
def test_exported_cvat_masks_read_by_the_png_masks_reader(tmp_path: Path) -> None:
    maps = make_predictions(tmp_path / "pred", stored=16)
    out = tmp_path / "out"
    run(ExportOptions(str(tmp_path / "pred"), str(out)))
    for name, (height, width) in SIZES.items():  # a CVAT export with images has them in JPEGImages/
        path = (out / "JPEGImages" / name).with_suffix(".jpg")
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), np.zeros((height, width, 3), np.uint8))
    dataset = read_dataset("png-masks", out, FormatOptions())
    assert dataset.classes[1:] == CLASSES[1:]
    read = {
        Path(image.name).with_suffix("").as_posix(): label_map_of(image) for s in dataset.splits.values() for image in s
    }
    for name, expected in maps.items():
        key = next(key for key in read if key.endswith(Path(name).with_suffix("").as_posix()))
        assert np.array_equal(read[key], expected), name


def test_threshold_leaves_uncertain_pixels_unlabelled(tmp_path: Path) -> None:
    make_predictions(tmp_path / "pred")
    counts = run(ExportOptions(str(tmp_path / "pred"), str(tmp_path / "out"), threshold=0.9))
    total = 0
    for name in SIZES:
        with np.load(tmp_path / "pred" / "probs" / Path(name).with_suffix(".npz")) as data:
            probs = data["probs"].astype(np.float32)
        expected = probs.argmax(axis=0)
        expected[probs.max(axis=0) < 0.9] = 0
        total += int((probs.max(axis=0) < 0.9).sum())
        assert np.array_equal(read_label(tmp_path / "out/SegmentationClass" / Path(name).with_suffix(".png")), expected)
    assert counts["unlabelled_pixels"] == total > 0
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["complete"] is True and meta["unlabelled_pixels"] == total and meta["threshold"] == 0.9


def test_pseudo_labels_export_with_ignored_pixels_unlabelled(tmp_path: Path) -> None:
    round_folder = tmp_path / "round_1"
    images, maps, ignored = [], {}, 0
    for index, (name, (height, width)) in enumerate(SIZES.items()):
        label = np.zeros((height, width), np.uint8)
        label[2:10, 3:20] = 2
        label[12:, :5] = 255
        label[0, 0] = 1
        png = f"labels/{Path(name).with_suffix('.png').as_posix()}"
        write_label_png(round_folder / png, label)
        images.append({"id": index, "file_name": name, "height": height, "width": width, "sem_seg_file_name": png})
        maps[name] = np.where(label == 255, 0, label)
        ignored += int((label == 255).sum())
    categories = [{"id": 1, "name": "bottle"}, {"id": 2, "name": "can"}]
    atomic_write_json(round_folder / "pseudo.json", {"images": images, "annotations": [], "categories": categories})
    counts = run(ExportOptions(str(round_folder), str(tmp_path / "out")))
    assert counts["unlabelled_pixels"] == ignored > 0
    for name, expected in maps.items():
        assert np.array_equal(read_label(tmp_path / "out/SegmentationClass" / Path(name).with_suffix(".png")), expected)
    with pytest.raises(ExportError, match="--threshold applies to prediction folders"):
        run(ExportOptions(str(round_folder / "pseudo.json"), str(tmp_path / "out2"), threshold=0.5))


def test_output_folder_contract(tmp_path: Path) -> None:
    make_predictions(tmp_path / "pred")
    out = tmp_path / "out"
    run(ExportOptions(str(tmp_path / "pred"), str(out)))
    first = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != "log.txt"}
    run(ExportOptions(str(tmp_path / "pred"), str(out)))  # the same job again: the same files
    again = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != "log.txt"}
    assert {k for k in first if k.name != "meta.json"} == {k for k in again if k.name != "meta.json"}
    assert all(first[k] == again[k] for k in first if k.name not in ("meta.json", ".trashseg-owner.json"))
    with pytest.raises(OutputFolderError, match="other settings .*threshold") as refused:
        run(ExportOptions(str(tmp_path / "pred"), str(out), threshold=0.5))
    assert "\n" not in str(refused.value)
    run(ExportOptions(str(tmp_path / "pred"), str(out), threshold=0.5, overwrite=True))
    assert json.loads((out / "meta.json").read_text())["threshold"] == 0.5
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    with pytest.raises(OutputFolderError, match="not a folder export_labels.py made"):
        run(ExportOptions(str(tmp_path / "pred"), str(foreign)))
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    with pytest.raises(OutputFolderError, match="lies inside the input SRC .*: give a folder outside it"):
        run(ExportOptions(str(tmp_path / "pred"), str(tmp_path / "pred" / "export")))
    with pytest.raises(ExportError, match="no such file or folder"):
        run(ExportOptions(str(tmp_path / "typo"), str(tmp_path / "typo_export")))


def test_bad_sources_are_one_line(tmp_path: Path) -> None:
    make_predictions(tmp_path / "pred")
    (tmp_path / "photos").mkdir()
    with pytest.raises(ExportError, match="neither a prediction folder"):
        run(ExportOptions(str(tmp_path / "photos"), str(tmp_path / "out")))
    meta = json.loads((tmp_path / "pred" / "meta.json").read_text())
    (tmp_path / "pred" / "meta.json").write_text(json.dumps({**meta, "complete": False}))
    with pytest.raises(ProbabilityFileError, match="did not finish"):
        run(ExportOptions(str(tmp_path / "pred"), str(tmp_path / "out")))
    (tmp_path / "pred" / "meta.json").write_text(json.dumps(meta))
    save_probabilities(tmp_path / "pred", "b.png", 8, np.full((2, 4, 4), 0.5), 24, 24, ["bg", "a:b"])
    with pytest.raises(ClassListError, match="classes .* differ"):
        run(ExportOptions(str(tmp_path / "pred"), str(tmp_path / "out")))
    save_probabilities(tmp_path / "pred", "batch/a.jpg", 7, np.full((2, 4, 4), 0.5), 30, 40, ["bg", "a:b"])
    with pytest.raises(ExportError, match="class name 'a:b' cannot go into labelmap.txt"):
        run(ExportOptions(str(tmp_path / "pred"), str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()


@pytest.mark.subprocess
@pytest.mark.slow
def test_the_documented_commands_run(tmp_path: Path) -> None:
    """docs/formats/export.md's commands, in child processes, with its paths under a temporary folder holding a
    prediction folder and a pseudo-label round; then a bad one: one line, exit status 2."""
    commands = doc_commands("Export predictions for labelling tools")
    assert [argv[:2] for argv in commands] == [["python", "tools/export_labels.py"]] * len(commands) and commands
    (tmp_path / "tools").symlink_to(REPO / "tools")
    make_predictions(tmp_path / "output/predict")
    round_folder = tmp_path / "output/pseudo/round_1"
    write_label_png(round_folder / "labels/b.png", np.ones((24, 24), np.uint8))
    image = {"id": 1, "file_name": "b.png", "height": 24, "width": 24, "sem_seg_file_name": "labels/b.png"}
    atomic_write_json(round_folder / "pseudo.json", {"images": [image], "categories": [{"id": 1, "name": "bottle"}]})
    for argv in commands:
        done = subprocess.run([sys.executable, *argv[1:]], cwd=tmp_path, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        out = tmp_path / argv[argv.index("--out") + 1]
        assert json.loads((out / "meta.json").read_text())["complete"] is True
    done = subprocess.run(
        [sys.executable, "tools/export_labels.py", "output", "--out", "elsewhere"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "neither a prediction folder" in done.stderr and not (tmp_path / "elsewhere").exists()


def test_corrections_come_back_with_the_models_class_ids(tmp_path: Path) -> None:
    """docs/formats/export.md's "Bring the corrections back": a Label Studio export whose corrected tasks use only
    'can' converts with --classes-file to the model's ids (bottle 1, can 2); without it 'can' would become 1."""
    (command,) = doc_commands("Bring the corrections back")
    argv = command[2:]
    maps = make_predictions(tmp_path / "output/predict", stored=16)
    run(ExportOptions(str(tmp_path / "output/predict"), str(tmp_path / "output/to_label")))
    tasks = json.loads((tmp_path / "output/to_label/label_studio.json").read_text())
    for task in tasks:  # the labeller keeps the cans and deletes the bottles
        regions = [r for r in task.pop("predictions")[0]["result"] if r["value"]["brushlabels"] == ["can"]]
        task["annotations"] = [{"id": 1, "result": regions}]
    export = tmp_path / "ls_export" / "export.json"
    export.parent.mkdir()
    export.write_text(json.dumps(tasks))
    for name, (height, width) in SIZES.items():
        (tmp_path / "ls_export/images" / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(tmp_path / "ls_export/images" / name), np.zeros((height, width, 3), np.uint8))
    assert argv[:2] == ["--from", "label-studio"]
    flags = {arg.removeprefix("--").replace("-", "_"): value for arg, value in zip(argv[3::2], argv[4::2], strict=True)}
    assert sorted(flags) == ["classes_file", "images", "out"]
    paths = {key: str(tmp_path / value) for key, value in flags.items()}
    convert_run(ConvertOptions(format=argv[1], source=str(tmp_path / argv[2]), **paths))
    coco = json.loads((tmp_path / flags["out"] / "train.json").read_text())
    assert [(c["id"], c["name"]) for c in coco["categories"]] == [(1, "bottle"), (2, "can")]
    for image in coco["images"]:
        anns = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
        rendered = render_label_map(image, anns, category_to_label(coco["categories"]))
        expected = np.where(maps[image["file_name"].removeprefix("train/")] == 2, 2, 0)
        assert np.array_equal(rendered, expected), image["file_name"]
