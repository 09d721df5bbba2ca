"""Shared fixtures: a tiny hand-made COCO set, the generated sample dataset, a clean catalog."""

from __future__ import annotations

import hashlib
import os
import signal

import torch

# Triton decides between compiling and interpreting when a kernel is decorated: without a GPU, interpret (set
# before any test module imports Triton kernels).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The Ctrl-C tests interrupt child processes, which inherit an ignored SIGINT: a shell starts a background job
# (`make test &`) with SIGINT ignored. A handler here is reset to the default in every child that is started.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

import copy
import importlib
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

import mask2former.modeling.register_all  # noqa: F401  (every model family's config keys and classes)
import semask  # noqa: F401  (the test suite is an entry point: it takes the SeMask plug-in, as train_net.py does)
from mask2former.data.catalog import DatasetCatalog, MetadataCatalog
from mask2former.modeling.backbone.timm_backbone import TINY_TIMM_MODELS
from mask2former.modeling.tiny import TINY_SIZES, tiny_overrides

REPO = Path(__file__).resolve().parents[1]
TRASHBAGS = REPO.parent / "shared" / "data" / "trashbags"

# Tiny widths for any config in configs/: every model family's declared tiny sizes (register_tiny_sizes beside its
# config keys, mask2former/modeling/tiny.py), the same classes as the big models, small enough for a CPU step in a
# second.
TINY_MODEL = tiny_overrides()

# timm backbones (MODEL.BACKBONE.NAME TimmBackbone) are shrunk by name (make_tiny): the smallest model of the same
# timm class, narrowed further where the class takes widths.
TINY_TIMM = TINY_TIMM_MODELS


# ---- what each config key does: a family's test module declares CONFIG_KEY_CHECKS = {KEY: check} for its keys, and
# tests/test_config_keys.py collects them all and runs them (see its docstring).


@dataclass(frozen=True)
class Changes:
    """Setting `value` (over the overrides `base`) changes what the observer `observe` shows."""

    value: str  # KEY VALUE override text; "{data}" is the test data folder
    observe: str  # a name of test_config_keys.OBSERVERS
    base: tuple[str, ...] = ()  # overrides under which the key matters


@dataclass(frozen=True)
class Refused:
    """Any value but the default is refused; `value` raises an error naming the key."""

    value: str
    observe: str | None = None  # None: load_config itself refuses it
    base: tuple[str, ...] = ()  # overrides under which the observer builds what reads the key


@dataclass(frozen=True)
class CoveredBy:
    """Shown by that test, which names the full key."""

    test: str  # "tests/test_file.py::test_name"


@dataclass(frozen=True)
class Recorded:
    """Nothing reads the key, by design; the reason says why."""

    reason: str


ConfigKeyCheck = Changes | Refused | CoveredBy | Recorded


def tree_hashes(*roots: Path) -> dict[str, str]:
    """path -> sha1 of every file under `roots`: to show that a command changed no byte of them."""
    return {
        str(path): hashlib.sha1(path.read_bytes()).hexdigest()
        for root in roots
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def make_tiny(cfg) -> None:
    """TINY_MODEL, then each family's shrink (a timm backbone swapped for its TINY_TIMM sibling, ARGS other than the
    sizes kept)."""
    cfg.merge_from_list(TINY_MODEL)
    for sizes in TINY_SIZES.values():
        if sizes.shrink is not None:
            sizes.shrink(cfg)


# A 64x48 image with: a big square (Paper), a small square on top of it (Metal) drawn as two
# polygons, and a triangle (Plastic bag). A second image holds one RLE annotation.
TINY_W, TINY_H = 64, 48
TINY_CATEGORIES = [
    {"id": i, "name": n, "supercategory": n}
    for i, n in [(1, "General trash"), (2, "Paper"), (4, "Metal"), (8, "Plastic bag")]
]


def _square(x0: float, y0: float, x1: float, y1: float) -> list[float]:
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def tiny_coco_dict() -> dict:
    from pycocotools import mask as mask_utils

    rle_mask = np.zeros((TINY_H, TINY_W), dtype=np.uint8, order="F")
    rle_mask[10:20, 30:50] = 1
    rle = mask_utils.encode(rle_mask)
    rle["counts"] = rle["counts"].decode("ascii")
    return {
        "info": {},
        "licenses": [],
        "categories": copy.deepcopy(TINY_CATEGORIES),
        "images": [
            {"id": 0, "file_name": "batch_01_vt/0000.jpg", "height": TINY_H, "width": TINY_W},
            {"id": 1, "file_name": "batch_01_vt/0001.jpg", "height": TINY_H, "width": TINY_W},
            {"id": 2, "file_name": "batch_02_vt/0000.jpg", "height": TINY_H, "width": TINY_W},
        ],
        "annotations": [
            {
                "id": 10,
                "image_id": 0,
                "category_id": 4,
                "area": 64.0,
                "bbox": [0, 0, 1, 1],
                "iscrowd": 0,
                "segmentation": [_square(10, 10, 14, 18), _square(14, 10, 18, 18)],
            },
            {
                "id": 11,
                "image_id": 0,
                "category_id": 2,
                "area": 800.0,
                "bbox": [0, 0, 1, 1],
                "iscrowd": 0,
                "segmentation": [_square(5, 5, 45, 25)],
            },
            {
                "id": 12,
                "image_id": 0,
                "category_id": 8,
                "area": 150.0,
                "bbox": [0, 0, 1, 1],
                "iscrowd": 0,
                "segmentation": [[50, 30, 63, 47, 40, 47]],
            },
            {
                "id": 13,
                "image_id": 1,
                "category_id": 1,
                "area": 200.0,
                "bbox": [30, 10, 20, 10],
                "iscrowd": 0,
                "segmentation": rle,
            },
        ],
    }


def write_tiny_coco(root: Path, data: dict | None = None, name: str = "train.json") -> Path:
    """Write the tiny json (or a modified copy) and its three images under `root`."""
    data = tiny_coco_dict() if data is None else data
    rng = np.random.default_rng(0)
    for image in tiny_coco_dict()["images"]:
        path = root / image["file_name"]
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), rng.integers(0, 255, (TINY_H, TINY_W, 3), dtype=np.uint8))
    json_path = root / name
    json_path.write_text(json.dumps(data))
    return json_path


@pytest.fixture
def tiny_coco(tmp_path: Path) -> Path:
    """Path of a tiny valid COCO json whose images live beside it."""
    return write_tiny_coco(tmp_path / "data")


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture(scope="session")
def sample_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny generated sample dataset in the competition layout (made once per test session)."""
    from mask2former.data.sample_dataset import make_sample_dataset

    root = tmp_path_factory.mktemp("sample")
    make_sample_dataset(root, num_train=20, num_test=6, seed=0)
    return root


@pytest.fixture(autouse=True)
def clean_catalog():
    """Each test starts and ends with empty dataset/metadata catalogs."""
    for name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    for name in MetadataCatalog.list():
        MetadataCatalog.remove(name)
    yield
    for name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    for name in MetadataCatalog.list():
        MetadataCatalog.remove(name)


def tiny_training_opts(sample_root: Path, cache: Path) -> list[str]:
    """TINY_MODEL plus what a CPU training run on the generated sample data needs to take seconds: 64 px crops,
    batch 2, no warm-up, no loader processes."""
    data = ["DATASETS.ROOT", str(sample_root), "DATASETS.LABEL_CACHE_DIR", str(cache)]
    sizes = ["INPUT.CROP.SIZE", "(64, 64)", "INPUT.MIN_SIZE_TRAIN", "(64, 96)", "INPUT.MIN_SIZE_TEST", "64"]
    solver = ["SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "0", "DATALOADER.NUM_WORKERS", "0"]
    return TINY_MODEL + data + sizes + solver


def tiny_run_argv(
    sample_root: Path,
    output: Path,
    *extra: str,
    max_iter: int = 4,
    period: int = 2,
    seed: int = 3,
    config: str = "quickstart.yaml",
) -> list[str]:
    """train_net.py's command line for a tiny CPU run into `output`: a checkpoint every `period` iterations, an
    evaluation at the end, a log line every iteration; `extra` KEY VALUE pairs last."""
    opts = tiny_training_opts(sample_root, output.parent / "cache") + [
        "SOLVER.MAX_ITER",
        str(max_iter),
        "SOLVER.CHECKPOINT_PERIOD",
        str(period),
        "TEST.EVAL_PERIOD",
        str(max_iter),
        "SOLVER.LOG_PERIOD",
        "1",
        "OUTPUT_DIR",
        str(output),
        "SEED",
        str(seed),
        *extra,
    ]
    return ["--config-file", str(REPO / "configs" / config), "--num-gpus", "0", *opts]


def doc_pages() -> list[Path]:
    """Where the documented commands live: README.md and every page under docs/ (docs/formats/ included)."""
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def doc_headings(text: str) -> list[tuple[int, int, str]]:
    """(line index, level, title) of every Markdown heading of `text`, skipping fenced code blocks."""
    import re

    headings, in_code = [], False
    for index, line in enumerate(text.splitlines()):
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and (match := re.match(r"(#{1,6}) +(.*?) *#*$", line)):
            headings.append((index, len(match.group(1)), match.group(2)))
    return headings


def doc_section(heading: str) -> str:
    """The text under the heading titled `heading` ('#'s optional, any level) in README.md or docs/*.md, up to the
    next heading of the same or a higher level. The title must head exactly one section of those pages."""
    title = heading.lstrip("#").strip()
    found = []
    for page in doc_pages():
        lines = page.read_text().splitlines()
        headings = doc_headings("\n".join(lines))
        for position, (index, level, name) in enumerate(headings):
            if name == title:
                end = next((i for i, depth, _ in headings[position + 1 :] if depth <= level), len(lines))
                found.append((page, "\n".join(lines[index + 1 : end])))
    pages = ", ".join(str(page.relative_to(REPO)) for page, _ in found)
    assert len(found) == 1, f"README.md and docs/*.md hold {len(found)} sections titled {title!r} ({pages})"
    return found[0][1]


def doc_commands(heading: str) -> list[list[str]]:
    """The commands of the first bash block under `heading` (see doc_section), as a shell reads them: continuation
    lines joined, comments dropped, each command as argv."""
    import re
    import shlex

    block = re.search(r"```bash\n(.*?)```", doc_section(heading), re.S)
    assert block is not None, f"no bash block under the heading {heading!r}"
    commands = [shlex.split(line, comments=True) for line in block.group(1).replace("\\\n", " ").splitlines()]
    return [argv for argv in commands if argv]


# ---- a tiny model package (tools/export.py --package), shared by tests/test_package.py and tests/test_serve.py -----

PACKAGE_CLASSES = ["Background", "General trash", "Paper", "Paper pack", "Metal", "Glass", "Plastic", "Styrofoam"]
PACKAGE_CLASSES += ["Plastic bag", "Battery", "Clothing"]


@dataclass(frozen=True)
class TinyPackage:
    """A package exported at 64 x 64 (INPUT.MIN_SIZE_TEST 64: a square photo's view) from a tiny untrained
    quickstart model saved as a finished run's model_final.pth (`run`: its folder, with config.yaml and
    final_metrics.json), whose backbone weights (`backbone`) carry an apache-2.0 licence."""

    folder: Path
    run: Path
    backbone: Path
    command: str


@pytest.fixture(scope="session")
def tiny_package(tmp_path_factory: pytest.TempPathFactory) -> TinyPackage:
    from safetensors.torch import save_file

    from mask2former.export.package import write_package

    root = tmp_path_factory.mktemp("package")
    backbone = root / "weights" / "swin_tiny.safetensors"
    backbone.parent.mkdir()
    save_file({"unused": torch.zeros(1)}, str(backbone), metadata={"license": "apache-2.0"})
    run = root / "run"
    cfg = write_tiny_run(run, ["MODEL.BACKBONE.WEIGHTS", str(backbone)])
    command = f"python tools/export.py --config-file {run}/config.yaml --weights {run}/model_final.pth --package PKG"
    write_package(cfg, str(run / "model_final.pth"), root / "package", size=(64, 64), command=command)
    return TinyPackage(root / "package", run, backbone, command)


def write_tiny_run(run: Path, opts: list[str] = ()):  # noqa: ANN201  (a CfgNode)
    """What a finished training run leaves in `run` (config.yaml, model_final.pth with PACKAGE_CLASSES, and
    final_metrics.json: 4 iterations, val mIoU 0.1234), for a tiny untrained quickstart model whose test view of a
    square photo is 64 x 64; returns its config."""
    from mask2former.config import load_config
    from mask2former.modeling.build import build_model

    run.mkdir(parents=True)
    cfg = load_config(str(REPO / "configs" / "quickstart.yaml"), [*TINY_MODEL, "INPUT.MIN_SIZE_TEST", "64", *opts])
    (run / "config.yaml").write_text(cfg.dump())
    torch.manual_seed(0)
    state = build_model(cfg).state_dict()
    torch.save({"model": state, "iteration": 4, "class_names": PACKAGE_CLASSES}, run / "model_final.pth")
    metrics = {"iteration": 4, "results": {"trash_val": {"mIoU": 0.1234}}}
    (run / "final_metrics.json").write_text(json.dumps(metrics))
    return cfg


@pytest.fixture
def one_torch_thread():
    """Tiny models: one torch thread is faster on a shared CPU, and fixes the float summation order."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run_export(argv: list[str], capsys) -> tuple[int, str, str]:
    """tools/export.py's command in this process: (exit status, stdout, stderr)."""
    from mask2former.pipeline.export import export, parse_args
    from mask2former.utils.cli import run_tool

    capsys.readouterr()
    try:
        run_tool("export.py", lambda: export(parse_args(argv)), argv)
        code = 0
    except SystemExit as stop:
        code = int(stop.code)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@contextmanager
def benchmark_module(name: str) -> Iterator:
    """The script benchmarks/<name>.py imported as a module, benchmarks/ on sys.path only while it is used."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        yield importlib.import_module(name)
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
