"""tools/convert_dataset.py as a user meets it: bad inputs are one line and exit status 2 with nothing written and
the inputs unchanged, --strict makes warnings errors, the commands of docs/formats/ run as written, and a tiny
model trains on a converted YOLO-seg export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, TINY_MODEL, doc_commands, tree_hashes
from format_trees import (
    H,
    W,
    write_ade20k,
    write_cityscapes,
    write_cvat_masks,
    write_grey_masks,
    write_photo,
    write_rgb,
    write_voc,
    write_yolo,
)

from mask2former.pipeline.convert_dataset import ConvertOptions, run
from mask2former.utils.cli import run_tool


def convert_cli(capsys, source: Path, out: Path, format_name: str, **flags) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of the tool's one call, as tools/convert_dataset.py makes it."""
    options = ConvertOptions(format=format_name, source=str(source), out=str(out), **flags)
    os.environ.pop("TRASHSEG_DEBUG", None)
    try:
        run_tool("convert_dataset.py", lambda: run(options), [])
        code = 0
    except SystemExit as stop:
        code = int(stop.code)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def break_yolo_class(root: Path) -> str:
    write_yolo(root)
    label = sorted((root / "train" / "labels").glob("*.txt"))[0]
    label.write_text("7 0.1 0.1 0.5 0.1 0.5 0.5\n")
    return f"{label}:1: class 7 is beyond the 2 names of data.yaml (0..1)"


def drop_a_mask(root: Path) -> str:
    write_grey_masks(root)
    (root / "masks" / "val" / "img_1.png").unlink()
    return f"{root / 'images' / 'val' / 'img_1.png'}: no mask for this image (expected {root / 'masks/val/img_1.png'})"


def split_class_lists(root: Path) -> str:
    write_grey_masks(root)
    (root / "masks" / "classes.txt").unlink()
    (root / "masks" / "train" / "classes.txt").write_text("background\nbag\nbottle\n")
    (root / "masks" / "val" / "classes.txt").write_text("background\nbottle\nbag\n")
    return f"{root / 'masks/val/classes.txt'}: classes ['background', 'bottle', 'bag'] differ from"


def rgb_as_indexed(root: Path) -> str:
    write_grey_masks(root)
    rgb = np.zeros((30, 40, 3), dtype=np.uint8)
    rgb[5:9, 2:6] = (128, 0, 0)
    write_rgb(root / "masks" / "train" / "img_1.png", rgb)
    mask = root / "masks" / "train" / "img_1.png"
    return f"{mask}: an RGB mask where class indices are expected (pixel x=2, y=5 is (128, 0, 0))"


def value_beyond_classes(root: Path) -> str:
    write_voc(root)
    (root / "labelmap.txt").write_text("background:0,0,0::\nbag:128,0,0::\n")
    return "value 2 at pixel"


def a_coco_json(root: Path) -> str:
    write_grey_masks(root)
    return "--from coco: a COCO json needs no conversion: train on it as it is"


BAD_INPUTS = {
    "coco-needs-no-conversion": ("coco", a_coco_json),
    "yolo-class-beyond-names": ("yolo-seg", break_yolo_class),
    "missing-mask": ("png-masks", drop_a_mask),
    "class-lists-differ-between-splits": ("png-masks", split_class_lists),
    "rgb-png-given-as-indexed": ("png-masks", rgb_as_indexed),
    "mask-value-beyond-the-class-list": ("png-masks", value_beyond_classes),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_nothing_written(capsys, tmp_path: Path, case: str) -> None:
    format_name, make = BAD_INPUTS[case]
    message = make(tmp_path / "src")
    before = tree_hashes(tmp_path / "src")
    code, _, err = convert_cli(capsys, tmp_path / "src", tmp_path / "out", format_name)
    assert code == 2, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("convert_dataset.py: ") and message in last, err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()
    assert tree_hashes(tmp_path / "src") == before


def test_strict_makes_warnings_errors(capsys, tmp_path: Path) -> None:
    write_yolo(tmp_path / "yolo", unlabelled=1)
    code, _, err = convert_cli(capsys, tmp_path / "yolo", tmp_path / "strict", "yolo-seg", strict=True)
    assert code == 2 and "no labels in split train: taken as all background" in err.strip().splitlines()[-1], err
    assert "--strict makes warnings errors" in err and not (tmp_path / "strict").exists()
    code, out, err = convert_cli(capsys, tmp_path / "yolo", tmp_path / "lenient", "yolo-seg")
    assert code == 0, err
    assert "1 warning(s)" in out and (tmp_path / "lenient" / "report.json").is_file()
    report = json.loads((tmp_path / "lenient" / "report.json").read_text())
    assert report["checks"]["images_without_labels"] == {"train": 1, "val": 0, "test": 0}


def test_out_inside_the_source_and_a_foreign_folder_are_refused(capsys, tmp_path: Path) -> None:
    write_grey_masks(tmp_path / "src")
    code, _, err = convert_cli(capsys, tmp_path / "src", tmp_path / "src" / "out", "png-masks")
    assert code == 2 and "lies inside the input SRC" in err and "give a folder outside it" in err
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "report.json").write_text("{}")
    code, _, err = convert_cli(capsys, tmp_path / "src", tmp_path / "mine", "png-masks")
    assert code == 2 and f"{tmp_path / 'mine' / 'report.json'} would be replaced" in err
    assert (tmp_path / "mine" / "report.json").read_text() == "{}"


def test_converting_again_with_other_settings_needs_overwrite(capsys, tmp_path: Path) -> None:
    write_grey_masks(tmp_path / "src")
    assert convert_cli(capsys, tmp_path / "src", tmp_path / "out", "png-masks")[0] == 0
    code, _, err = convert_cli(capsys, tmp_path / "src", tmp_path / "out", "png-masks", copy=True)
    assert code == 2 and "made with other settings (link: true before, false now)" in err
    code, _, err = convert_cli(capsys, tmp_path / "src", tmp_path / "out", "png-masks", copy=True, overwrite=True)
    assert code == 0, err
    assert not os.path.samefile(tmp_path / "out/train/img_0.png", tmp_path / "src/images/train/img_0.png")


# ---- the documented commands ------------------------------------------------------------------------------------

SOURCES = {
    "my_yolo": write_yolo,
    "voc": write_voc,
    "cvat_masks": write_cvat_masks,
    "my_masks": write_grey_masks,
    "cityscapes": write_cityscapes,
    "ADEChallengeData2016": lambda root: write_ade20k(root.parent),
}
PAGES = {
    "YOLO-seg: convert an export": 1,
    "PNG masks: convert a VOC or CVAT mask export": 2,
    "PNG masks: convert grey masks": 2,
    "Cityscapes: convert": 1,
    "ADE20K: convert": 2,
}


# Runs each command's script in one child process, as `python tools/convert_dataset.py ARGS` runs it.
RUN_SCRIPTS = """
import json, runpy, sys
for argv in json.loads(sys.argv[1]):
    sys.argv = argv
    runpy.run_path(argv[0], run_name="__main__")
"""


@pytest.mark.slow
@pytest.mark.subprocess
def test_docs_formats_commands_run_as_written(tmp_path: Path) -> None:
    """docs/formats/: every command, its source written here in its format, datasets/ -> a temporary folder; each
    writes a complete report."""
    commands = [argv for heading, count in PAGES.items() for argv in doc_commands(heading)]
    assert len(commands) == sum(PAGES.values())
    local_commands = []
    for argv in commands:
        assert argv[:2] == ["python", "tools/convert_dataset.py"], argv
        local = argv[1:]
        source = next(i for i in range(2, len(local)) if not local[i].startswith("-") and local[i - 1] != "--from")
        if not (tmp_path / local[source]).exists():
            SOURCES[local[source]](tmp_path / local[source])
        local[source] = str(tmp_path / local[source])
        local = [str(tmp_path / arg) if arg.startswith("datasets/") else arg for arg in local]
        local_commands.append(local)
    done = subprocess.run(
        [sys.executable, "-c", RUN_SCRIPTS, json.dumps(local_commands)], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for local in local_commands:
        out = Path(local[local.index("--out") + 1])
        assert json.loads((out / "report.json").read_text())["complete"] is True, out


# ---- training on a converted set --------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_tiny_model_trains_on_a_converted_yolo_export(capsys, tmp_path: Path) -> None:
    from mask2former.engine.launch import main

    write_yolo(tmp_path / "yolo", counts={"train": 6, "valid": 2})
    assert convert_cli(capsys, tmp_path / "yolo", tmp_path / "data", "yolo-seg")[0] == 0
    data = tmp_path / "data"
    register = repr([[f"y_{s}", str(data / f"{s}.json"), str(data)] for s in ("train", "val")])
    opts = [
        *TINY_MODEL,
        *("DATASETS.ROOT", "", "DATASETS.REGISTER", register, "DATASETS.TRAIN", "('y_train',)"),
        *("DATASETS.TEST", "('y_val',)", "DATASETS.LABEL_CACHE_DIR", str(tmp_path / "cache")),
        *("MODEL.SEM_SEG_HEAD.NUM_CLASSES", "3", "MODEL.DEVICE", "cpu", "INPUT.CROP.SIZE", "(64, 64)"),
        *("INPUT.MIN_SIZE_TRAIN", "(64, 96)", "INPUT.MIN_SIZE_TEST", "64", "SOLVER.IMS_PER_BATCH", "2"),
        *("SOLVER.WARMUP_ITERS", "0", "DATALOADER.NUM_WORKERS", "0", "SOLVER.MAX_ITER", "2"),
        *("SOLVER.CHECKPOINT_PERIOD", "2", "TEST.EVAL_PERIOD", "2", "OUTPUT_DIR", str(tmp_path / "run")),
    ]
    results = main(["--config-file", str(REPO / "configs" / "quickstart.yaml"), "--num-gpus", "0", *opts])
    assert 0.0 <= results["y_val"]["mIoU"] <= 1.0
    assert (tmp_path / "run" / "model_final.pth").is_file()


# ---- inputs and the user's files in OUT ---------------------------------------------------------------------------


def test_files_the_tool_did_not_place_stay_through_a_rerun_and_overwrite(capsys, tmp_path: Path) -> None:
    write_grey_masks(tmp_path / "src")
    assert convert_cli(capsys, tmp_path / "src", tmp_path / "out", "png-masks")[0] == 0
    mine = tmp_path / "out" / "train" / "my_extra.jpg"
    mine.write_bytes(b"mine")
    (tmp_path / "src" / "images" / "val" / "img_1.png").unlink()  # an image leaves the source
    (tmp_path / "src" / "masks" / "val" / "img_1.png").unlink()
    code, out, err = convert_cli(capsys, tmp_path / "src", tmp_path / "out", "png-masks")
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["images"]["removed_stale"] == 1 and not (tmp_path / "out" / "val" / "img_1.png").exists()
    assert report["images"]["not_placed_here"] == ["train/my_extra.jpg"] and mine.read_bytes() == b"mine"
    assert "1 file(s) in the image folders this tool did not place" in (tmp_path / "out" / "report.txt").read_text()
    code, _, err = convert_cli(capsys, tmp_path / "src", tmp_path / "out", "png-masks", copy=True, overwrite=True)
    assert code == 0, err
    assert mine.read_bytes() == b"mine" and (tmp_path / "out" / "train" / "img_0.png").is_file()


def label_studio_tree(root: Path) -> Path:
    """root/export.json with one polygon task on root/photos/a.jpg."""
    write_photo(root / "photos" / "a.jpg", 0)
    result = {
        "type": "polygonlabels",
        "original_width": W,
        "original_height": H,
        "value": {"points": [[10, 10], [60, 10], [60, 60]], "polygonlabels": ["can"]},
    }
    task = {"id": 1, "data": {"image": "/data/upload/1/a.jpg"}, "annotations": [{"id": 1, "result": [result]}]}
    (root / "export.json").write_text(json.dumps([task]))
    return root / "export.json"


def test_images_inside_out_or_out_inside_images_are_refused_and_nothing_is_deleted(capsys, tmp_path: Path) -> None:
    export = label_studio_tree(tmp_path)
    flags = {"images": str(tmp_path / "photos"), "copy": True}
    assert convert_cli(capsys, export, tmp_path / "conv", "label-studio", **flags)[0] == 0
    kept = tmp_path / "conv" / "train" / "a.jpg"
    (tmp_path / "photos" / "a.jpg").unlink()  # the user keeps only the converted copies, then converts again
    before = tree_hashes(tmp_path / "conv")
    again = {"images": str(tmp_path / "conv" / "train"), "overwrite": True}
    code, _, err = convert_cli(capsys, export, tmp_path / "conv", "label-studio", **again)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"--images {tmp_path / 'conv' / 'train'} is {kept.parent}, which convert_dataset.py writes" in err
    assert tree_hashes(tmp_path / "conv") == before and kept.is_file()
    code, _, err = convert_cli(capsys, export, tmp_path / "conv" / "train" / "sub", "label-studio", **again)
    assert code == 2 and "lies inside the input --images" in err, err
    assert tree_hashes(tmp_path / "conv") == before


def test_a_file_of_the_users_where_an_image_goes_is_refused_not_replaced(capsys, tmp_path: Path) -> None:
    write_grey_masks(tmp_path / "src")
    assert convert_cli(capsys, tmp_path / "src", tmp_path / "out", "png-masks")[0] == 0
    write_photo(tmp_path / "src" / "images" / "train" / "img_9.png", 9)  # the source gains an image...
    write_grey_masks(tmp_path / "other", splits=("train",))
    (tmp_path / "src" / "masks" / "train" / "img_9.png").write_bytes(
        (tmp_path / "other" / "masks" / "train" / "img_0.png").read_bytes()
    )
    mine = tmp_path / "out" / "train" / "img_9.png"
    mine.write_bytes(b"mine")  # ...where the user keeps a file of theirs
    before = tree_hashes(tmp_path / "out")
    code, _, err = convert_cli(capsys, tmp_path / "src", tmp_path / "out", "png-masks")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{mine} was not placed there by convert_dataset.py" in err and "move it away" in err
    assert tree_hashes(tmp_path / "out") == before and mine.read_bytes() == b"mine"


def test_images_in_an_earlier_runs_image_folder_are_refused_before_reading(capsys, tmp_path: Path) -> None:
    export = label_studio_tree(tmp_path)
    assert convert_cli(capsys, export, tmp_path / "conv", "label-studio", images=str(tmp_path / "photos"))[0] == 0
    export.write_text("not json")  # reading it would fail: the refusal comes first
    again = {"images": str(tmp_path / "conv" / "train"), "overwrite": True}
    code, _, err = convert_cli(capsys, export, tmp_path / "conv", "label-studio", **again)
    assert code == 2 and err.strip().splitlines() == [
        f"convert_dataset.py: --images {tmp_path / 'conv' / 'train'} is {tmp_path / 'conv' / 'train'}, which "
        "convert_dataset.py writes in --out (and --overwrite deletes): move it out of --out, or give "
        "convert_dataset.py another --out"
    ], err


def test_an_image_found_without_the_folders_its_task_names_is_a_warning(capsys, tmp_path: Path) -> None:
    export = label_studio_tree(tmp_path)
    tasks = json.loads(export.read_text())
    tasks[0]["data"]["image"] = "/data/local-files/?d=batch_01/a.jpg"  # the photo is in photos/, not batch_01/
    export.write_text(json.dumps(tasks))
    code, _, err = convert_cli(capsys, export, tmp_path / "out", "label-studio", images=str(tmp_path / "photos"))
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    (line,) = [p["message"] for p in report["checks"]["problems"]]
    assert f"found as {tmp_path / 'photos' / 'a.jpg'} by leaving out the folder batch_01 it names" in line
    assert "give --images the folder that holds batch_01" in line
    code, _, err = convert_cli(
        capsys, export, tmp_path / "strict", "label-studio", images=str(tmp_path / "photos"), strict=True
    )
    assert code == 2 and "leaving out the folder batch_01" in err
