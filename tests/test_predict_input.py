"""tools/predict.py --input: photos, folders, glob patterns, lists of paths and videos without a COCO json
(mask2former/pipeline/image_inputs.py), the label maps as indexed PNGs (mask2former/io/images.py), the overlay
video (mask2former/io/video.py) and the documented commands (docs/deployment.md). A tiny model on the CPU on
small generated photos keeps the file fast."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import REPO, TINY_MODEL, doc_commands
from PIL import Image

from mask2former.commands.predict import main
from mask2former.config import load_config
from mask2former.data.classes import TRASH_CLASSES, palette_for
from mask2former.io.images import read_label, write_indexed_label_png
from mask2former.io.probabilities import load_probabilities
from mask2former.modeling.build import build_model

CONFIG = str(REPO / "configs" / "quickstart.yaml")
TINY = [*TINY_MODEL, "INPUT.MIN_SIZE_TEST", "64", "MODEL.DEVICE", "cpu"]
SECTION = "Photos, folders and videos without a json"
PHOTOS = {"a.jpg": (48, 80), "sub/b.png": (40, 40), "sub/deeper/c.JPG": (64, 48)}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def save_tiny(path: Path, class_names: list[str] | None) -> Path:
    """A tiny untrained quickstart model, recording `class_names` as a model_final.pth trained here does."""
    torch.manual_seed(0)
    model = build_model(load_config(CONFIG, TINY))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), **({"class_names": class_names} if class_names else {})}, path)
    return path


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("model") / "model_final.pth", list(TRASH_CLASSES))


def make_photos(folder: Path, broken: bool = False) -> Path:
    """PHOTOS (random pixels) under `folder`, a non-image file, and optionally a broken JPEG (its first 300 bytes)."""
    rng = np.random.default_rng(0)
    for name, (height, width) in PHOTOS.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / name), rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
    (folder / "notes.txt").write_text("not a photo\n")
    if broken:
        (folder / "broken.jpg").write_bytes((folder / "a.jpg").read_bytes()[:300])
    return folder


def make_video(path: Path, frames: int = 10, fps: float = 10.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (64, 64))
    assert writer.isOpened()
    for index in range(frames):
        frame = np.zeros((64, 64, 3), dtype=np.uint8)
        cv2.rectangle(frame, (index * 4, 10), (index * 4 + 20, 40), (0, 200, 255), -1)
        writer.write(frame)
    writer.release()
    return path


def hashes(root: Path, skip: Path | None = None) -> dict[str, str]:
    """sha256 of every file under root (but those under `skip`), by relative path."""
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file() and (skip is None or not path.is_relative_to(skip))
    }


def predict(weights: Path, source: str | Path, out: Path, *flags: str) -> None:
    main(["--config-file", CONFIG, "--weights", str(weights), "--input", str(source), "--out", str(out), *flags, *TINY])


def refused(capsys, weights: Path, source: str | Path, out: Path, *flags: str, during_run: bool = False) -> str:
    """The line predict.py exits with (status 2, `predict.py: ...`): its only output when refused before the run,
    else the last line on stderr, also in the run's log.txt."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        predict(weights, source, out, *flags)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    if during_run:
        assert lines[-1].startswith("predict.py: "), lines
        assert lines[-1].removeprefix("predict.py: ") in (out / "log.txt").read_text(), lines
    else:
        assert len(lines) == 1 and lines[0].startswith("predict.py: "), lines
    return lines[-1]


def meta(out: Path) -> dict:
    return json.loads((out / "meta.json").read_text())


def check_label_maps(out: Path, names: dict[str, tuple[int, int]]) -> None:
    """OUT/labels/<name>.png: an indexed PNG with the trash palette, at the image's size, whose indices are the
    argmax of the npz resized by nearest neighbour (read back through read_label)."""
    palette = [channel for color in palette_for(list(TRASH_CLASSES)) for channel in color]
    for name, (height, width) in names.items():
        stem = Path(name).with_suffix("").as_posix()
        with Image.open(out / "labels" / f"{stem}.png") as image:
            assert image.mode == "P" and image.size == (width, height)
            assert image.getpalette()[: len(palette)] == palette
        probs = load_probabilities(out / "probs" / f"{stem}.npz")["probs"]
        expected = cv2.resize(probs.argmax(0).astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
        np.testing.assert_array_equal(read_label(out / "labels" / f"{stem}.png", (height, width)), expected)


def test_indexed_label_png_reads_back_as_class_indices(tmp_path: Path) -> None:
    label = np.random.default_rng(0).integers(0, 11, (37, 53)).astype(np.uint8)
    write_indexed_label_png(tmp_path / "a.png", label, palette_for(list(TRASH_CLASSES)))
    with Image.open(tmp_path / "a.png") as image:
        assert image.mode == "P" and image.getpalette()[3:6] == list(palette_for(list(TRASH_CLASSES))[1])
    np.testing.assert_array_equal(read_label(tmp_path / "a.png", (37, 53)), label)
    # an indexed PNG of fewer bits (PIL writes 2 bits for 4 colours) reads as its indices too
    small = Image.frombytes("P", (53, 37), (label % 4).tobytes())
    small.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255])
    small.save(tmp_path / "b.png")
    np.testing.assert_array_equal(read_label(tmp_path / "b.png"), label % 4)


def test_folder_with_sub_folders_a_non_image_and_a_broken_jpeg(weights: Path, tmp_path: Path, capsys) -> None:
    photos = make_photos(tmp_path / "photos", broken=True)
    out = photos / "predictions"  # inside the input folder: its files must never be read as inputs
    before = hashes(photos)
    line = refused(capsys, weights, photos, out, during_run=True)
    assert "broken.jpg" in line and "cannot read image" in line and "--skip-bad" in line

    predict(weights, photos, out, "--skip-bad")
    record = meta(out)
    assert record["file_names"] == ["a.jpg", "broken.jpg", "sub/b.png", "sub/deeper/c.JPG"]
    assert record["input_kind"] == "folder" and record["ignored_files"] == 1 and record["label_maps"] == 3
    assert [bad["file_name"] for bad in record["bad_images"]] == ["broken.jpg"]
    assert not (out / "submission.csv").exists() and not (out / "labels" / "broken.png").exists()
    overlays = sorted(p.relative_to(out / "overlays").as_posix() for p in (out / "overlays").rglob("*.png"))
    assert overlays == ["a.png", "sub/b.png", "sub/deeper/c.png"]
    check_label_maps(out, PHOTOS)
    log = (out / "log.txt").read_text()
    assert "1 file(s) that are not images ignored" in log and "skipped: image id 1 (broken.jpg)" in log
    assert f"--out {out} lies inside --input {photos}" in log and "recorded in" in log
    assert hashes(photos, skip=out) == before

    outputs = hashes(out, skip=out / "log.txt")
    predict(weights, photos, out, "--skip-bad")  # resumed: nothing predicted again, no output rewritten
    assert meta(out)["predicted"] == 0 and meta(out)["skipped"] == 3
    assert {k: v for k, v in hashes(out).items() if k not in ("log.txt", "meta.json")} == {
        k: v for k, v in outputs.items() if k != "meta.json"
    }
    assert hashes(photos, skip=out) == before

    cv2.imwrite(str(photos / "d.png"), np.zeros((8, 8, 3), dtype=np.uint8))  # another listing: another job
    line = refused(capsys, weights, photos, out, "--skip-bad")
    assert "made with other settings (the images of --input changed: 1 added (d.png), none removed)" in line


def test_glob_list_and_single_image(weights: Path, tmp_path: Path) -> None:
    photos = make_photos(tmp_path / "photos")
    (photos / "list.txt").write_text("# picked\nsub/deeper/c.JPG\n\na.jpg\n")
    before = hashes(photos)

    predict(weights, f"{photos}/**/*.png", tmp_path / "glob")
    assert meta(tmp_path / "glob")["file_names"] == ["sub/b.png"]
    check_label_maps(tmp_path / "glob", {"sub/b.png": PHOTOS["sub/b.png"]})

    predict(weights, photos / "list.txt", tmp_path / "list")
    assert meta(tmp_path / "list")["file_names"] == ["sub/deeper/c.JPG", "a.jpg"]
    check_label_maps(tmp_path / "list", {name: PHOTOS[name] for name in ("a.jpg", "sub/deeper/c.JPG")})

    predict(weights, photos / "sub" / "b.png", tmp_path / "one")
    assert meta(tmp_path / "one")["file_names"] == ["b.png"]
    check_label_maps(tmp_path / "one", {"b.png": PHOTOS["sub/b.png"]})
    assert sorted(os.listdir(tmp_path / "one")) == [
        ".trashseg-owner.json",
        "labels",
        "log.txt",
        "meta.json",
        "overlays",
        "probs",
    ]
    assert hashes(photos) == before


def test_video_frames_label_maps_and_overlay_video(weights: Path, tmp_path: Path) -> None:
    video = make_video(tmp_path / "clip.mp4")
    before = hashes(tmp_path)
    out = tmp_path / "out"
    predict(weights, video, out, "--every", "3")
    names = [f"clip/frame_{index:06d}.png" for index in (0, 3, 6, 9)]
    assert meta(out)["file_names"] == names and meta(out)["every"] == 3
    assert sorted(p.relative_to(out / "frames").as_posix() for p in (out / "frames").rglob("*.png")) == names
    check_label_maps(out, dict.fromkeys(names, (64, 64)))
    capture = cv2.VideoCapture(str(out / "overlay.mp4"))
    assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(10 / 3, rel=0.01)
    assert int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)) == 64
    count = 0
    while capture.read()[0]:
        count += 1
    capture.release()
    assert count == 4
    assert not (out / "submission.csv").exists()

    outputs = hashes(out)
    predict(weights, video, out, "--every", "3")  # resumed: no frame predicted, nothing rewritten
    assert meta(out)["predicted"] == 0
    assert {k: v for k, v in hashes(out).items() if k not in ("log.txt", "meta.json")} == {
        k: v for k, v in outputs.items() if k not in ("log.txt", "meta.json")
    }
    assert hashes(tmp_path, skip=out) == before


def test_class_names_from_the_configs_training_dataset(tmp_path: Path, sample_root: Path, capsys) -> None:
    """A checkpoint that records no class names: the config's training dataset gives them; without one, a line."""
    plain = save_tiny(tmp_path / "plain.pth", None)
    image = make_photos(tmp_path / "photos") / "a.jpg"
    predict(plain, image, tmp_path / "out", "DATASETS.ROOT", str(sample_root))
    expected = [c["name"] for c in json.loads((sample_root / "train.json").read_text())["categories"]]
    assert meta(tmp_path / "out")["class_names"] == ["Background", *expected]
    assert "class names of the config's training dataset trash_train" in (tmp_path / "out" / "log.txt").read_text()
    line = refused(capsys, plain, image, tmp_path / "out2", "DATASETS.ROOT", str(tmp_path / "nothing"))
    assert "no class names for --input" in line and "plain.pth records none" in line


def test_refusals_name_the_problem(weights: Path, tmp_path: Path, capsys) -> None:
    photos = make_photos(tmp_path / "photos")
    out = tmp_path / "out"
    cases = [
        ((tmp_path / "missing",), "no such file or folder"),
        ((photos / "notes.txt",), "line 1: not a photo is not an image"),
        ((photos, "--every", "2"), "--every 2 takes frames of a video; --input"),
        ((photos, "--image-root", str(photos)), "--image-root goes with --json"),
        ((f"{photos}/*.gif",), "holds no image"),
    ]
    (photos / "up.txt").write_text("../elsewhere.jpg\n")
    cases.append(((photos / "up.txt",), "up.txt line 1: ../elsewhere.jpg is outside the list's folder"))
    for args, message in cases:
        assert message in refused(capsys, weights, args[0], out, *args[1:]), args
    cv2.imwrite(str(photos / "a.png"), np.zeros((8, 8, 3), dtype=np.uint8))
    assert "a.jpg and a.png map to the same output files" in refused(capsys, weights, photos, out)
    video = make_video(tmp_path / "v" / "overlay.mp4", frames=2)
    line = refused(capsys, weights, video, video.parent)
    assert "the overlay video would be written to" in line and "which is the --input video" in line
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    assert "cannot read video" in refused(capsys, weights, tmp_path / "bad.mp4", out)
    assert not out.exists()


def test_documented_commands_run_as_written(weights: Path, tmp_path: Path, monkeypatch) -> None:
    """The bash block of docs/deployment.md's section, run from a folder holding photos/, clip.mp4 and
    output/demo/quickstart/model_final.pth (tiny: `make demo` trains the full one there), with the tiny-model
    overrides appended."""
    commands = doc_commands(SECTION)
    assert all(argv[:2] == ["python", "tools/predict.py"] for argv in commands)
    make_photos(tmp_path / "photos")
    (tmp_path / "photos" / "list.txt").write_text("a.jpg\nsub/b.png\n")
    make_video(tmp_path / "clip.mp4")
    (tmp_path / "output" / "demo" / "quickstart").mkdir(parents=True)
    (tmp_path / "output" / "demo" / "quickstart" / "model_final.pth").write_bytes(weights.read_bytes())
    monkeypatch.chdir(tmp_path)
    for argv in commands:
        main([str(REPO / arg) if arg.startswith("configs/") else arg for arg in argv[2:]] + TINY)
        out = tmp_path / argv[argv.index("--out") + 1]
        assert (out / "labels").is_dir() and meta(out)["complete"] and not (out / "submission.csv").exists()
    assert any((tmp_path / "output").glob("*/overlay.mp4"))


def exit_line(capsys, argv: list[str]) -> str:
    """The one line predict.py exits with (status 2, `predict.py: ...`) when `argv` is refused before the run."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("predict.py: "), lines
    return lines[0]


def test_a_package_folder_as_weights_and_shapes_a_fixed_size_file_refuses_up_front(
    tiny_package, tmp_path: Path, capsys
) -> None:
    """--weights takes a model package folder (its model.onnx, config from its metadata). The package is a fixed
    64 x 64 export: a folder holding photos of other shapes is refused before --out is claimed, the offending
    photos counted and the first named, and so is a video of another shape; a square photo is predicted."""
    photos = make_photos(tmp_path / "photos")
    out = tmp_path / "out"
    package = str(tiny_package.folder)
    line = exit_line(capsys, ["--weights", package, "--input", str(photos), "--out", str(out)])
    assert "2 image(s) cannot be predicted, the first a.jpg (80x48 pixels, width x height) makes a 107x64 view" in line
    assert "fixed-size export that takes only 64x64 views" in line and "--dynamic-size" in line, line
    wide = cv2.VideoWriter(str(tmp_path / "wide.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (96, 64))
    for _ in range(2):
        wide.write(np.zeros((64, 96, 3), dtype=np.uint8))
    wide.release()
    line = exit_line(capsys, ["--weights", package, "--input", str(tmp_path / "wide.mp4"), "--out", str(out)])
    assert f"the frames of {tmp_path / 'wide.mp4'} (96x64 pixels" in line, line
    assert not out.exists()
    main(["--weights", package, "--input", str(photos / "sub" / "b.png"), "--out", str(out)])
    assert meta(out)["predicted"] == 1 and meta(out)["weights"] == [str(tiny_package.folder / "model.onnx")]


def test_weights_that_are_no_model_say_what_weights_takes(tiny_package, tmp_path: Path, capsys) -> None:
    """A text file, a run folder and a folder without model.onnx as --weights: one line each, saying what to give."""
    photo = make_photos(tmp_path / "photos") / "a.jpg"
    (tmp_path / "empty").mkdir()
    cases = [
        (str(REPO / "README.md"), "README.md is not a checkpoint or an exported model: --weights takes"),
        (str(tiny_package.run), f"is a training run's folder: give --config-file {tiny_package.run / 'config.yaml'}"),
        (str(tmp_path / "empty"), "is a folder without model.onnx: --weights takes"),
    ]
    for weights, message in cases:
        line = exit_line(capsys, ["--weights", weights, "--input", str(photo), "--out", str(tmp_path / "out")])
        assert message in line, line
    assert not (tmp_path / "out").exists()


def test_output_folders_inside_the_input_are_not_photos_and_a_changed_listing_is_named(
    weights: Path, tmp_path: Path, capsys
) -> None:
    """Predictions written inside --input (their folder holds the owner record) are skipped by any later run on
    that folder or a glob over it, and counted; a resume over a listing that changed names the files."""
    photos = make_photos(tmp_path / "photos")
    predict(weights, photos, photos / "pred")  # labels/ and overlays/ PNGs now lie under photos/pred
    elsewhere = tmp_path / "elsewhere"
    predict(weights, photos, elsewhere)
    err = capsys.readouterr().err
    assert meta(elsewhere)["file_names"] == meta(photos / "pred")["file_names"] == sorted(PHOTOS)
    assert "1 output folder(s) of this project's tools skipped (pred)" in err, err
    predict(weights, f"{photos}/**/*.png", tmp_path / "globbed")
    assert meta(tmp_path / "globbed")["file_names"] == sorted(name for name in PHOTOS if name.endswith(".png"))

    (photos / "sub" / "added.jpg").write_bytes((photos / "a.jpg").read_bytes())
    (photos / "a.jpg").unlink()
    line = refused(capsys, weights, photos, elsewhere)
    assert "(the images of --input changed: 1 added (sub/added.jpg), 1 removed (a.jpg)): use another --out" in line
