"""tools/export.py --package: the package folder's files, `Predictor(DIR)` loading it without the network, the
model card's facts, and the folders it refuses to write into."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import PACKAGE_CLASSES, REPO, TINY_MODEL, TinyPackage, doc_commands, tree_hashes, write_tiny_run
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from mask2former.config import load_config
from mask2former.export.model_card import licence_identifier, weights_licence
from mask2former.export.package import PACKAGE_FILES, PackageError, read_package_classes, write_package
from mask2former.inference.onnx_model import read_metadata
from mask2former.inference.predictor import Predictor
from mask2former.utils.output_folder import OWNER_FILE, OutputFolderError


def photo(seed: int = 0, height: int = 64, width: int = 64) -> np.ndarray:
    """A square photo: its view is the package's 64 x 64 input."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.slow  # the session's tiny package: an export, about 15 s
def test_the_package_holds_the_model_its_weights_config_classes_and_card(tiny_package: TinyPackage) -> None:
    folder = tiny_package.folder
    assert sorted(path.name for path in folder.iterdir()) == sorted([*PACKAGE_FILES, OWNER_FILE])
    owner = json.loads((folder / OWNER_FILE).read_text())
    assert owner["tool"] == "export.py" and sorted(owner["entries"]) == sorted(PACKAGE_FILES)

    classes = json.loads((folder / "classes.json").read_text())
    metadata = read_metadata(folder / "model.onnx")
    assert classes["class_names"] == PACKAGE_CLASSES == json.loads(metadata["class_names"])
    assert classes["palette"] == json.loads(metadata["palette"])
    assert read_package_classes(folder) == (classes["class_names"], classes["palette"])

    # model.safetensors: the checkpoint's tensors under the model's names, loadable as MODEL.WEIGHTS
    stored = load_file(folder / "model.safetensors")
    trained = torch.load(tiny_package.run / "model_final.pth", weights_only=True)["model"]
    assert stored.keys() == trained.keys()
    assert all(torch.equal(stored[key], trained[key]) for key in stored)
    with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
        assert handle.metadata()["license"] == "apache-2.0"
    cfg = load_config(str(folder / "config.yaml"), ["MODEL.WEIGHTS", str(folder / "model.safetensors")])
    assert cfg.MODEL.BACKBONE.WEIGHTS == ""
    assert len(PACKAGE_CLASSES) == cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES

    card = (folder / "README.md").read_text()
    for fact in [
        "license: apache-2.0",
        *(f"| {index} | {name} |" for index, name in enumerate(PACKAGE_CLASSES)),
        "- iterations: 4",
        "- val mIoU measured by this project: 0.1234 on `trash_val` (the run's final_metrics.json)",
        "- input size: 64 x 64 (H x W, fixed)",
        "# Mask2Former with a Swin Transformer backbone (`run/config.yaml`): semantic segmentation into 11 classes",
        "- output `scores`: float32 [1, 11, H, W], the class scores, not normalised: divide them by their sum",
        "- run: the folder `run`",
        "MODEL.BACKBONE.WEIGHTS `weights/swin_tiny.safetensors`: apache-2.0",
        tiny_package.command,
    ]:
        assert fact in card, fact
    # the output's name is the file's; no path of the exporting machine (config.yaml clears them too)
    assert "probabilities`" not in card and "D2SwinTransformer" not in card
    facts = card.replace(tiny_package.command, "")  # the command line is shown as it was typed
    assert str(tiny_package.run) not in facts and str(tiny_package.backbone) not in facts
    assert " images/s at 64 x 64 on the CPU (onnxruntime " in card


@pytest.mark.slow
def test_predictor_loads_the_package_without_the_network(
    tiny_package: TinyPackage, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With every connection refused, Predictor(DIR) gives PyTorch's probabilities (within the export's tolerance)
    and its label map wherever the top class leads by more than that."""

    def no_network(*args: object) -> None:
        raise AssertionError("the package tried to reach the network")

    reference = Predictor(tiny_package.run / "config.yaml", tiny_package.run / "model_final.pth")
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    before = tree_hashes(tiny_package.folder)
    predictor = Predictor(tiny_package.folder)
    assert predictor.class_names == PACKAGE_CLASSES
    image = photo()
    got, want = predictor(image), reference(image)
    assert got.labels.shape == (64, 64) and got.probabilities.shape == (len(PACKAGE_CLASSES), 64, 64)
    np.testing.assert_allclose(got.probabilities, want.probabilities, atol=1e-4)
    top2 = np.sort(want.probabilities, axis=0)[-2:]
    clear = top2[1] - top2[0] > 2e-4
    assert clear.mean() > 0.5
    np.testing.assert_array_equal(got.labels[clear], want.labels[clear])
    assert tree_hashes(tiny_package.folder) == before


def test_the_licence_is_what_the_weights_say(tmp_path: Path) -> None:
    tensors = {"w": torch.zeros(2)}
    save_file(tensors, str(tmp_path / "a.safetensors"), metadata={"license": "mit"})
    torch.save({"model": tensors, "license": "cc-by-nc-4.0"}, tmp_path / "b.pth")
    hub = tmp_path / "hub"
    hub.mkdir()
    torch.save(tensors, hub / "c.pth")
    (hub / "README.md").write_text("---\nlibrary_name: timm\nlicense: apache-2.0\n---\n# a model\n")
    licensed = tmp_path / "licensed"
    licensed.mkdir()
    torch.save(tensors, licensed / "d.pth")
    (licensed / "LICENSE").write_text("\nBSD 3-Clause License\n\nCopyright ...\n")
    torch.save(tensors, tmp_path / "e.pth")

    assert weights_licence(tmp_path / "a.safetensors") == "mit"
    assert weights_licence(tmp_path / "b.pth") == "cc-by-nc-4.0"
    assert weights_licence(hub / "c.pth") == "apache-2.0"
    assert weights_licence(licensed / "d.pth") == "BSD 3-Clause License (LICENSE beside the weights)"
    assert weights_licence(tmp_path / "e.pth") == "unknown"
    assert weights_licence(tmp_path / "gone.pth") == f"unknown ({tmp_path / 'gone.pth'} is not on this machine)"
    assert licence_identifier({"MODEL.WEIGHTS": "mit"}) == "mit"
    assert licence_identifier({"MODEL.WEIGHTS": "mit", "MODEL.BACKBONE.WEIGHTS": "apache-2.0"}) == "other"
    assert licence_identifier({"--weights": "unknown"}) == licence_identifier({}) == "unknown"


@pytest.fixture
def weights(tmp_path: Path) -> tuple[object, Path]:
    from mask2former.modeling.build import build_model

    cfg = load_config(str(REPO / "configs" / "quickstart.yaml"), TINY_MODEL)
    path = tmp_path / "w.pth"
    torch.save({"model": build_model(cfg).state_dict()}, path)
    return cfg, path


def test_a_folder_that_is_not_the_tools_is_refused_before_anything_is_written(
    weights: tuple[object, Path], tmp_path: Path
) -> None:
    cfg, path = weights
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "README.md").write_text("my notes\n")
    other = tmp_path / "other"
    other.mkdir()
    (other / OWNER_FILE).write_text(json.dumps({"tool": "predict.py", "job": {}, "created": "then", "entries": []}))
    (tmp_path / "file").write_text("x")
    before = tree_hashes(tmp_path)
    refusals = [
        (
            mine,
            f"--package {mine} is not a folder export.py made ({mine / 'README.md'} would be replaced): give a new "
            "or empty folder",
        ),
        (
            other,
            f"--package {other} holds the outputs of predict.py (made then), which export.py would replace: give "
            "export.py another folder",
        ),
        (tmp_path / "file", f"--package {tmp_path / 'file'} is a file: give a folder (it is created if missing)"),
    ]
    for folder, message in refusals:
        with pytest.raises(OutputFolderError) as refused:
            write_package(cfg, str(path), folder, size=(64, 64))
        assert str(refused.value) == message
    assert tree_hashes(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "mine", "other", "w.pth"]


def test_a_folder_that_is_not_a_package_is_named(tmp_path: Path) -> None:
    """An empty folder and an --out export's folder: the message says to write a package into a new folder."""
    with pytest.raises(PackageError) as refused:
        read_package_classes(tmp_path)
    assert str(refused.value) == (
        f"{tmp_path} is not a model package (no model.onnx): write one with tools/export.py --config-file CONFIG "
        "--weights CHECKPOINT --package NEW_FOLDER (a new folder)"
    )
    (tmp_path / "model.onnx").write_bytes(b"")
    with pytest.raises(PackageError) as refused:
        read_package_classes(tmp_path)
    assert str(refused.value).startswith(
        f"{tmp_path} is not a model package (no classes.json): its model.onnx is an export made with --out; write "
        "one with tools/export.py --config-file CONFIG --weights CHECKPOINT --package NEW_FOLDER (a new folder) "
        f"(tools/predict.py --weights {tmp_path / 'model.onnx'} runs"
    )
    with pytest.raises(PackageError, match=r"model package .*nope does not exist: give the folder written by"):
        read_package_classes(tmp_path / "nope")


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


@pytest.mark.slow
@pytest.mark.subprocess
def test_the_documented_commands_run_as_written(tmp_path: Path) -> None:
    """docs/deployment.md's commands in child processes, as a user types them, in a folder holding a tiny finished
    run where `make demo` leaves its run, and a square photo where the sample data has one."""
    export, load = doc_commands("A model package")
    assert export[:2] == ["python", "tools/export.py"] and load[:2] == ["python", "-c"]
    run = tmp_path / Path(flag(export, "--weights")).parent
    write_tiny_run(run)
    assert tmp_path / flag(export, "--config-file") == run / "config.yaml"
    image = tmp_path / "datasets" / "sample" / "batch_03" / "0000.jpg"
    image.parent.mkdir(parents=True)
    cv2.imwrite(str(image), photo())
    (tmp_path / "tools").symlink_to(REPO / "tools")
    before = tree_hashes(tmp_path / "datasets", run)

    done = subprocess.run([sys.executable, *export[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    package = tmp_path / flag(export, "--package")
    assert f"wrote the model package {flag(export, '--package')}: model.onnx (onnxruntime vs PyTorch" in done.stdout
    assert {path.name for path in package.iterdir()} == {*PACKAGE_FILES, OWNER_FILE}
    card = (package / "README.md").read_text()
    assert "- val mIoU measured by this project: 0.1234 on `trash_val`" in card
    assert "python tools/export.py --config-file output/demo/quickstart/config.yaml" in card

    done = subprocess.run([sys.executable, *load[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "(64, 64)"
    assert tree_hashes(tmp_path / "datasets", run) == before


def test_export_takes_one_of_out_and_package_and_never_packages_over_its_inputs(
    weights: tuple[object, Path], tmp_path: Path
) -> None:
    from mask2former.pipeline.export import ExportError, parse_args

    base = ["--config-file", "c.yaml", "--weights", "w.pth"]
    for extra in ([], ["--out", "a", "--package", "b"]):
        with pytest.raises(ExportError, match=r"^give one of --out DIR \(model.onnx\) and --package DIR"):
            parse_args(base + extra)
    assert parse_args([*base, "--package", "p"]).package == "p"

    cfg, path = weights
    package = tmp_path / "package"
    package.mkdir()
    inside = package / "model.safetensors"
    inside.write_bytes(path.read_bytes())
    before = tree_hashes(tmp_path)
    with pytest.raises(OutputFolderError) as refused:
        write_package(cfg, str(inside), package, overwrite=True)
    assert str(refused.value) == (
        f"--weights {inside} is {inside}, which export.py writes in --package (and --overwrite deletes): move "
        "it out of --package, or give export.py another --package"
    )
    assert tree_hashes(tmp_path) == before
