"""The Label Studio and CVAT XML readers on small exports written here: the label maps they give equal what was
drawn (overlaps as the tool stacks them), through the project's COCO loader too; each bad input is one line.

The Label Studio exports are encoded by this file's own brush RLE encoder, written from the format's description
(other run-length field sizes than Label Studio's, literals and repeats mixed at random), not by the package's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import REPO, doc_commands

from mask2former.data.coco_semantic import load_sem_seg_dataset
from mask2former.data.formats import brush_rle
from mask2former.data.formats.base import FormatError, FormatOptions, Region, label_map_of, read_dataset, region_mask
from mask2former.data.formats.labelling_tools import Shape, image_labels
from mask2former.io.images import read_label

H, W = 30, 40  # every test image's size: polygon vertices at whole pixels are exact in percent (2.5 per pixel)


# ---- a brush RLE encoder of this test's own ----------------------------------------------------------------------


def encode_brush(words: np.ndarray, rng: np.random.Generator, field_sizes=(2, 5, 9, 13)) -> list[int]:
    """Label Studio's brush RLE of `words`, as the json holds it (a list of byte values), written bit by bit."""
    bits = [format(words.size, "032b"), format(7, "05b"), *(format(s - 1, "04b") for s in field_sizes)]

    def length_field(count: int) -> str:
        kind = next(k for k, size in enumerate(field_sizes) if count - 1 < (1 << size))
        return format(kind, "02b") + format(count - 1, f"0{field_sizes[kind]}b")

    longest = 1 << field_sizes[-1]
    i = 0
    while i < words.size:
        j = i
        while j < words.size and words[j] == words[i] and j - i < longest:
            j += 1
        if j - i >= 2 and rng.random() < 0.8:  # a repeat
            bits.append("1" + length_field(j - i) + format(int(words[i]), "08b"))
        else:  # a literal of a few words
            j = min(words.size, i + int(rng.integers(1, 12)))
            bits.append("0" + length_field(j - i) + "".join(format(int(w), "08b") for w in words[i:j]))
        i = j
    text = "".join(bits)
    text += "0" * (-len(text) % 8)
    return [int(text[k : k + 8], 2) for k in range(0, len(text), 8)]


def rgba_words(mask: np.ndarray, colour=(255, 255, 255)) -> np.ndarray:
    """The RGBA layer of a brush mask (alpha 255 inside), flat."""
    layer = np.zeros((*mask.shape, 4), dtype=np.uint8)
    layer[mask] = (*colour, 255)
    return layer.ravel()


@pytest.mark.parametrize("colour", [(255, 255, 255), (30, 144, 200)])
def test_brush_decoder_reads_this_tests_encoding(colour) -> None:
    rng = np.random.default_rng(0)
    mask = rng.random((H, W)) < 0.3
    mask[5:20, 10:30] = True
    words = rgba_words(mask, colour)
    words[3::40] = 100  # alpha below the threshold on some pixels of row 0: outside the region
    code = encode_brush(words, rng)
    assert np.array_equal(brush_rle.decode_brush_rle(code), words)
    expected = mask.copy()
    expected.ravel()[np.flatnonzero(words[3::4] == 100)] = False
    assert np.array_equal(brush_rle.brush_mask(code, H, W), expected)


def test_package_encoder_round_trips_and_matches_label_studio_field_sizes() -> None:
    rng = np.random.default_rng(1)
    for size in (0, 1, 2, 7, 1000, 280_000):
        words = (rng.random(size) < 0.5).astype(np.uint8) * 255
        words[: size // 2] = 9  # one long run (longer than 2**16 words in the last case: split)
        words[size - size // 4 :] = np.arange(size // 4) % 251  # a long literal (also split)
        code = brush_rle.encode_brush_rle(words)
        assert np.array_equal(brush_rle.decode_brush_rle(code), words)
        header = int.from_bytes(code[4:7], "big")  # after the 32-bit word count: 5 bits word size - 1, 4 x 4 bits
        assert [header >> 19, *[(header >> shift) & 15 for shift in (15, 11, 7, 3)]] == [7, 2, 3, 7, 15]


@pytest.mark.parametrize(
    "code, message",
    [
        (bytes(3), "too few for the code's header"),
        (bytes.fromhex("00000010") + bytes([0b00111_001, 0b0_0011_01, 0b11_1111_0, 0b1_0101_00]), "ends in the middle"),
        ([1, 2, 300, 4, 5, 6, 7], "not a list of byte values"),
    ],
)
def test_malformed_brush_codes_are_refused(code, message) -> None:
    with pytest.raises(brush_rle.BrushRleError, match=message):
        brush_rle.decode_brush_rle(code)


# ---- Label Studio -------------------------------------------------------------------------------------------------


def write_image(path: Path, value: int = 90, size: tuple[int, int] = (H, W)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((*size, 3), value, dtype=np.uint8))


def percent(points: list[tuple[int, int]]) -> list[list[float]]:
    return [[x * 100.0 / W, y * 100.0 / H] for x, y in points]


def polygon_result(label: str, points: list[tuple[int, int]], rid: str) -> dict:
    value = {"points": percent(points), "polygonlabels": [label], "closed": True}
    return {"id": rid, "type": "polygonlabels", "value": value, "original_width": W, "original_height": H}


def brush_result(label: str, mask: np.ndarray, rid: str, rng: np.random.Generator) -> dict:
    value = {"format": "rle", "rle": encode_brush(rgba_words(mask), rng), "brushlabels": [label]}
    return {"id": rid, "type": "brushlabels", "value": value, "original_width": W, "original_height": H}


def pixels(points: list[tuple[int, int]]) -> np.ndarray:
    """The pixels the project's rasteriser gives a polygon at whole-pixel vertices."""
    ring = [float(c) for point in points for c in point]
    return region_mask(Region(1, polygons=[ring]), H, W).astype(bool)


BOTTLE = [(2, 2), (20, 2), (20, 20), (2, 20)]
CAN = [(10, 10), (36, 10), (36, 26), (10, 26)]


def label_studio_export(root: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """root/export.json and root/images: four tasks (an upload, a local-files URL in a subfolder, a task whose
    newest annotation was cancelled, one without annotations) and the label maps drawn (classes: background, bottle,
    can, sorted)."""
    rng = np.random.default_rng(2)
    images = root / "images"
    for name in ("a.jpg", "sub/b.png", "c.jpg", "d.jpg"):
        write_image(images / name)
    blob = np.zeros((H, W), dtype=bool)
    blob[5:25, 25:38] = True
    blob[0, :] = True
    drawn_a = np.zeros((H, W), np.uint8)
    drawn_a[pixels(BOTTLE)] = 1
    drawn_a[blob] = 2  # the brush result comes later: on top
    drawn_b = np.zeros((H, W), np.uint8)
    drawn_b[pixels(CAN)] = 2
    drawn_b[pixels(BOTTLE)] = 1  # later on top, though larger objects are painted first by the COCO loader
    tasks = [
        {
            "id": 1,
            "data": {"image": "/data/upload/7/0a1b2c3d-a.jpg"},
            "annotations": [
                {
                    "id": 11,
                    "created_at": "2026-01-02T10:00:00.000000Z",
                    "result": [
                        polygon_result("bottle", BOTTLE, "r1"),
                        brush_result("can", blob, "r2", rng),
                        {"id": "r3", "type": "rectanglelabels", "value": {"rectanglelabels": ["can"]}},
                    ],
                }
            ],
        },
        {
            "id": 2,
            "data": {"image": "/data/local-files/?d=photos/sub/b.png"},
            "annotations": [
                {"id": 21, "updated_at": "2026-01-01T00:00:00+00:00", "result": [polygon_result("can", BOTTLE, "x")]},
                {
                    "id": 22,
                    "updated_at": "2026-01-03T00:00:00+01:00",
                    "result": [polygon_result("can", CAN, "y"), polygon_result("bottle", BOTTLE, "z")],
                },
            ],
        },
        {
            "id": 3,
            "data": {"image": "s3://bucket/c.jpg"},
            "annotations": [
                {"id": 31, "updated_at": "2026-01-01T00:00:00Z", "result": []},
                {"id": 32, "updated_at": "2026-02-01T00:00:00Z", "was_cancelled": True, "result": []},
            ],
        },
        {"id": 4, "data": {"image": "http://host/d.jpg"}, "annotations": []},
    ]
    path = root / "export.json"
    path.write_text(json.dumps(tasks))
    return path, {"train/a.jpg": drawn_a, "train/sub/b.png": drawn_b, "train/c.jpg": np.zeros((H, W), np.uint8)}


def test_label_studio_reader_gives_the_drawn_label_maps(tmp_path: Path) -> None:
    export, drawn = label_studio_export(tmp_path)
    dataset = read_dataset("label-studio", export, FormatOptions(images=tmp_path / "images"))
    assert dataset.classes == ["background", "bottle", "can"]
    assert list(dataset.splits) == ["train"]
    images = {image.name: image for image in dataset.splits["train"]}
    assert sorted(images) == sorted(drawn)  # task 4 (no annotation) left out
    for name, expected in drawn.items():
        assert np.array_equal(label_map_of(images[name]), expected), name
    assert images["train/c.jpg"].regions == [] and images["train/c.jpg"].label_map is None
    notes = "\n".join(dataset.conventions)
    assert "1 task(s) with several annotations" not in notes and "2 task(s) with several annotations" in notes
    assert "1 tasks without an annotation" in notes and "1 results of type rectanglelabels left out" in notes


def test_label_studio_classes_from_the_command_line(tmp_path: Path) -> None:
    export, drawn = label_studio_export(tmp_path)
    options = FormatOptions(classes=("Background", "can", "bottle", "cup"), images=tmp_path / "images")
    dataset = read_dataset("label-studio", export, options)
    assert dataset.classes == ["Background", "can", "bottle", "cup"]
    image = next(image for image in dataset.splits["train"] if image.name == "train/sub/b.png")
    swapped = np.choose(drawn["train/sub/b.png"], [0, 2, 1]).astype(np.uint8)
    assert np.array_equal(label_map_of(image), swapped)


def run_documented(heading: str, folder: Path) -> list[Path]:
    """The commands under `heading` in child processes in `folder` (tools/ linked there); their --out folders."""
    (folder / "tools").symlink_to(REPO / "tools")
    outs = []
    for argv in doc_commands(heading):
        assert argv[:3] == ["python", "tools/convert_dataset.py", "--from"], argv
        done = subprocess.run([sys.executable, *argv[1:]], cwd=folder, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        outs.append(folder / argv[argv.index("--out") + 1])
    return outs


def assert_converted(out: Path, drawn: dict[str, np.ndarray], cache: Path) -> None:
    """The label maps the project's COCO loader gives the converted jsons are those drawn."""
    seen = []
    for json_path in [out / f"{split}.json" for split in ("train", "val", "test") if (out / f"{split}.json").is_file()]:
        for entry in load_sem_seg_dataset(json_path, out, cache_dir=cache, progress=False):
            name = Path(entry["file_name"]).relative_to(out).as_posix()
            assert np.array_equal(read_label(entry["sem_seg_file_name"]), drawn[name]), name
            seen.append(name)
    assert sorted(seen) == sorted(drawn)


@pytest.mark.subprocess
@pytest.mark.slow
def test_label_studio_documented_commands_through_the_coco_loader(tmp_path: Path) -> None:
    _, drawn = label_studio_export(tmp_path / "ls_export")
    plain, with_classes = run_documented("Label Studio: convert an export", tmp_path)
    assert_converted(plain, drawn, tmp_path / "cache")
    assert json.loads((with_classes / "train.json").read_text())["categories"][0]["name"] == "bottle"


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda tasks: tasks[0]["data"].update(image="/data/upload/7/0a1b2c3d-gone.jpg"), "image not found in"),
        (lambda tasks: tasks[0]["annotations"][0]["result"][1]["value"]["rle"].__delitem__(slice(-3, None)), "RLE"),
        (lambda tasks: [r.update(original_width=W + 1) for r in tasks[1]["annotations"][1]["result"]], "says 41x30"),
        (lambda tasks: tasks[0]["annotations"][0]["result"][0]["value"].update(points=[[1, 2]] * 2 + [[3]]), "points"),
        (lambda tasks: tasks[1]["annotations"][1]["result"][0]["value"].update(polygonlabels=["a", "b"]), "one label"),
        (lambda tasks: tasks.append({"id": 9, "annotations": []}), "export the project as JSON"),
    ],
)
def test_label_studio_bad_inputs_are_one_line(tmp_path: Path, change, message) -> None:
    export, _ = label_studio_export(tmp_path)
    tasks = json.loads(export.read_text())
    change(tasks)
    export.write_text(json.dumps(tasks))
    with pytest.raises(FormatError, match=message) as raised:
        dataset = read_dataset("label-studio", export, FormatOptions(images=tmp_path / "images"))
        for image in dataset.splits["train"]:
            label_map_of(image)
    assert "\n" not in str(raised.value) and str(export) in str(raised.value)


@pytest.mark.subprocess
@pytest.mark.slow
def test_label_studio_unknown_label_exits_2_through_the_tool(tmp_path: Path) -> None:
    export, _ = label_studio_export(tmp_path)
    command = [sys.executable, str(REPO / "tools" / "convert_dataset.py"), "--from", "label-studio", str(export)]
    command += ["--images", str(tmp_path / "images"), "--out", str(tmp_path / "out"), "--classes", "bg", "can"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "label 'bottle' is not in the class list ['bg', 'can']" in lines[0], done.stderr
    assert not (tmp_path / "out").exists()


# ---- CVAT XML -----------------------------------------------------------------------------------------------------


def cvat_runs(mask: np.ndarray) -> str:
    """CVAT's mask RLE of a boolean box: run lengths alternating 0s and 1s, 0s first, row by row."""
    runs, current, count = [], False, 0
    for value in mask.ravel().tolist():
        if value == current:
            count += 1
        else:
            runs.append(count)
            current, count = value, 1
    return ", ".join(str(run) for run in [*runs, count])


def cvat_export(root: Path, subset: str = "Train") -> tuple[Path, dict[str, np.ndarray]]:
    """root/annotations.xml and root/images/: two images with polygons and masks whose z_order puts a shape that
    comes first in the file on top, a box (left out); classes from <meta>: bottle, can, cup."""
    for name in ("one.jpg", "dir/two.jpg"):
        write_image(root / "images" / name)
    box = np.zeros((12, 9), dtype=bool)
    box[2:10, 1:8] = True
    box[0, 0] = True
    mask = np.zeros((H, W), dtype=bool)
    mask[4:16, 15:24] = box
    one = np.zeros((H, W), np.uint8)
    one[pixels(CAN)] = 2
    one[mask] = 3
    one[pixels(BOTTLE)] = 1  # z_order 2: on top of both
    two = np.zeros((H, W), np.uint8)
    two[mask] = 1
    xml = f"""<?xml version="1.0" encoding="utf-8"?>
<annotations>
  <version>1.1</version>
  <meta><task><name>t</name><labels>
    <label><name>bottle</name><color>#ff0000</color></label>
    <label><name>can</name><color>#00ff00</color></label>
    <label><name>cup</name><color>#0000ff</color></label>
  </labels></task></meta>
  <image id="0" name="one.jpg" subset="{subset}" width="{W}" height="{H}">
    <polygon label="bottle" occluded="0" points="{";".join(f"{x},{y}" for x, y in BOTTLE)}" z_order="2"/>
    <box label="can" xtl="1" ytl="1" xbr="5" ybr="5" z_order="9"/>
    <mask label="cup" rle="{cvat_runs(box)}" left="15" top="4" width="9" height="12" z_order="1"/>
    <polygon label="can" points="{";".join(f"{x}.0,{y}.0" for x, y in CAN)}" z_order="0"/>
  </image>
  <image id="1" name="dir/two.jpg" subset="Validation" width="{W}" height="{H}">
    <mask label="bottle" rle="{cvat_runs(box)}" left="15" top="4" width="9" height="12" z_order="0"/>
  </image>
</annotations>
"""
    (root / "annotations.xml").write_text(xml)
    return root / "annotations.xml", {"train/one.jpg": one, "val/dir/two.jpg": two}


def test_cvat_reader_gives_the_drawn_label_maps_in_z_order(tmp_path: Path) -> None:
    xml, drawn = cvat_export(tmp_path)
    dataset = read_dataset("cvat-xml", tmp_path, FormatOptions())
    assert dataset.classes == ["background", "bottle", "can", "cup"]
    assert {split: [image.name for image in images] for split, images in dataset.splits.items()} == {
        "train": ["train/one.jpg"],
        "val": ["val/dir/two.jpg"],
    }
    for images in dataset.splits.values():
        for image in images:
            assert np.array_equal(label_map_of(image), drawn[image.name]), image.name
    assert "1 box shapes left out" in dataset.conventions


def test_shapes_keep_their_polygons_unless_something_drawn_later_covers_them() -> None:
    def ring(points):
        return [[float(c) for point in points for c in point]]

    far = [(30, 1), (38, 1), (38, 8)]
    apart = [Shape("can", ring(CAN), None, "1"), Shape("bottle", ring(far), None, "2")]
    regions, paint = image_labels(apart, ["background", "bottle", "can"], H, W)
    assert paint is None and [(r.label, r.polygons, r.mask) for r in regions] == [
        (2, ring(CAN), None),
        (1, ring(far), None),
    ]
    stacked = [*apart, Shape("background", ring(BOTTLE), None, "3")]  # a background shape hides what is below
    regions, paint = image_labels(stacked, ["background", "bottle", "can"], H, W)
    assert regions == [] and paint is not None
    expected = np.zeros((H, W), np.uint8)
    expected[pixels(CAN)] = 2
    expected[pixels(far)] = 1
    expected[pixels(BOTTLE)] = 0
    assert np.array_equal(paint(), expected)


@pytest.mark.subprocess
@pytest.mark.slow
def test_cvat_documented_commands_through_the_coco_loader(tmp_path: Path) -> None:
    _, drawn = cvat_export(tmp_path / "cvat_export")
    for out in run_documented("CVAT XML: convert an export", tmp_path):
        assert_converted(out, drawn, tmp_path / "cache")


@pytest.mark.parametrize(
    "old, new, message",
    [
        ('label="cup" rle="', 'label="plate" rle="', "label 'plate' is not in the class list"),
        ('name="dir/two.jpg"', 'name="dir/three.jpg"', "image not found in"),
        ('left="15" top="4" width="9" height="12" z_order="1"', 'left="15" top="4" width="9" height="11"', "RLE"),
        ('left="15" top="4" width="9" height="12" z_order="1"', 'left="35" top="4" width="9" height="12"', "box"),
        ('points="2,2;', 'points="2,two;', "are not 'x,y;x,y;...' numbers"),
        ('subset="Validation"', 'subset="holdout"', "subset 'holdout'"),
        ("</annotations>", "", "not well-formed XML"),
        (f'width="{W}" height="{H}">\n    <polygon', f'width="{W}" height="{H + 1}">\n    <polygon', "export says"),
    ],
)
def test_cvat_bad_inputs_are_one_line(tmp_path: Path, old: str, new: str, message: str) -> None:
    xml, _ = cvat_export(tmp_path)
    text = xml.read_text()
    assert old in text
    xml.write_text(text.replace(old, new, 1))
    with pytest.raises(FormatError, match=message) as raised:
        read_dataset("cvat-xml", xml, FormatOptions())
    assert "\n" not in str(raised.value) and str(xml) in str(raised.value)


@pytest.mark.subprocess
@pytest.mark.slow
def test_cvat_malformed_rle_exits_2_through_the_tool(tmp_path: Path) -> None:
    xml, _ = cvat_export(tmp_path / "cvat")
    xml.write_text(xml.read_text().replace('rle="', 'rle="1, ', 1))
    command = [sys.executable, str(REPO / "tools" / "convert_dataset.py"), "--from", "cvat-xml", str(xml)]
    done = subprocess.run(command + ["--out", str(tmp_path / "out")], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "malformed mask RLE" in lines[0] and "one.jpg" in lines[0], done.stderr
