"""tools/export.py --int8 (mask2former/export/quantize.py) and benchmarks/deploy.py.

What the INT8 file is held to here: its class probabilities stay within PROBABILITY_TOLERANCE (0.05) of the fp32
file's on every pixel of 64 x 64 views of the generated sample photos (measured on the tiny untrained quickstart
model: 0.003 to 0.029). Its label maps are not compared on that model: an untrained model's top two classes lie
within 0.001 to 0.03 of each other, so differences of that size flip whole photos (measured: 8% to 100% of the
pixels agree). On a trained model they agree: the demo's quickstart model on the 48 sample val photos, 99.4% of the
pixels (98.3% on the least of them; benchmarks/RESULTS.md, issue 24).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import PACKAGE_CLASSES, REPO, TINY_MODEL, doc_commands, run_export, tree_hashes

from mask2former.inference.onnx_model import read_metadata
from mask2former.inference.predictor import Predictor
from mask2former.utils.output_folder import file_sha1

PROBABILITY_TOLERANCE = 0.05  # the largest |INT8 - fp32| class probability on the tiny model's photos


def tiny_weights(folder: Path) -> tuple[Path, Path]:
    """(config file, checkpoint) of the tiny untrained quickstart model whose view of a square photo is 64 x 64,
    recording the sample data's classes."""
    import torch

    from mask2former.config import load_config
    from mask2former.modeling.build import build_model

    folder.mkdir(parents=True, exist_ok=True)
    cfg = load_config(str(REPO / "configs" / "quickstart.yaml"), [*TINY_MODEL, "INPUT.MIN_SIZE_TEST", "64"])
    config = folder / "config.yaml"
    config.write_text(cfg.dump())
    torch.manual_seed(0)
    weights = folder / "model.pth"
    torch.save({"model": build_model(cfg).state_dict(), "class_names": PACKAGE_CLASSES}, weights)
    return config, weights


@pytest.mark.slow
def test_int8_with_a_calibration_folder_agrees_with_fp32(sample_root: Path, tmp_path: Path, capsys) -> None:
    """--int8 --calibration FOLDER writes model_int8.onnx beside model.onnx with the same metadata and the
    quantization noted; Predictor loads it, and its label maps agree with the fp32 file's on >= AGREEMENT of the
    pixels; the inputs are untouched and no temporary is left."""
    config, weights = tiny_weights(tmp_path / "model")
    photos = sorted(p for p in sample_root.rglob("*.jpg"))[:8]
    calibration = tmp_path / "calibration"
    for index, photo in enumerate(photos[:5]):
        nested = calibration / ("a" if index % 2 else "b")
        nested.mkdir(parents=True, exist_ok=True)
        shutil.copy(photo, nested / photo.name)
    (calibration / "notes.txt").write_text("not an image")
    before = tree_hashes(tmp_path / "calibration") | {"weights": file_sha1(weights), "config": file_sha1(config)}
    out = tmp_path / "out"
    argv = ["--config-file", str(config), "--weights", str(weights), "--out", str(out), "--int8"]
    code, stdout, err = run_export([*argv, "--calibration", str(calibration)], capsys)
    assert code == 0, err
    assert f"wrote {out / 'model_int8.onnx'}: INT8, calibrated on 5 image(s)" in stdout
    assert tree_hashes(calibration) | {"weights": file_sha1(weights), "config": file_sha1(config)} == before
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".trashseg")) == [
        "log.txt",
        "model.onnx",
        "model_int8.onnx",
    ]
    fp32, int8 = read_metadata(out / "model.onnx"), read_metadata(out / "model_int8.onnx")
    assert int8 == {**fp32, "quantization": "int8 static, 5 calibration images"}
    full, quantized = Predictor(out / "model.onnx"), Predictor(out / "model_int8.onnx")
    assert quantized.class_names == full.class_names
    differences = []
    for photo in photos:
        expected, got = full(photo), quantized(photo)
        assert got.labels.shape == expected.labels.shape and got.probabilities.shape == expected.probabilities.shape
        differences.append(float(np.abs(got.probabilities - expected.probabilities).max()))
    print("INT8 vs fp32, largest probability difference:", [round(value, 4) for value in differences])
    assert max(differences) <= PROBABILITY_TOLERANCE, differences


def test_int8_refusals(tmp_path: Path, capsys) -> None:
    """--int8 needs --calibration (and --out); --calibration needs --int8; a calibration source with no image is
    refused before OUT is claimed. One line each, exit status 2, nothing written."""
    config, weights = tiny_weights(tmp_path / "model")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no photo here")
    before = tree_hashes(tmp_path)
    out = tmp_path / "out"
    base = ["--config-file", str(config), "--weights", str(weights)]
    needs = "export.py: --int8 needs --out DIR and --calibration JSON_OR_FOLDER (photos to calibrate on)\n"
    assert run_export([*base, "--out", str(out), "--int8"], capsys)[::2] == (2, needs)
    assert run_export([*base, "--package", str(out), "--int8", "--calibration", str(empty)], capsys)[::2] == (2, needs)
    refused = "export.py: --calibration is for --int8: add --int8, or leave --calibration out\n"
    assert run_export([*base, "--out", str(out), "--calibration", str(empty)], capsys)[::2] == (2, refused)
    code, _, err = run_export([*base, "--out", str(out), "--int8", "--calibration", str(empty)], capsys)
    assert (code, err) == (
        2,
        f"export.py: --calibration {empty} names no image: give a json listing images or a folder holding some\n",
    )
    assert tree_hashes(tmp_path) == before and not out.exists()


@pytest.mark.slow
@pytest.mark.subprocess
def test_the_documented_int8_commands_run(sample_root: Path, tmp_path: Path) -> None:
    """docs/deployment.md "INT8 quantization": the export with --int8 and the prediction with model_int8.onnx, as
    written (DATA = the generated sample data, a tiny checkpoint at the documented path, tiny sizes appended)."""
    commands = doc_commands("INT8 quantization")
    assert [argv[:2] for argv in commands] == [["python", "tools/export.py"], ["python", "tools/predict.py"]]
    _, checkpoint = tiny_weights(tmp_path / "model")
    for command in commands:
        argv = [arg.replace("DATA/", f"{sample_root}/") for arg in command]
        if "--config-file" in argv:
            argv[argv.index("--config-file") + 1] = str(REPO / argv[argv.index("--config-file") + 1])
            weights = tmp_path / argv[argv.index("--weights") + 1]
            weights.parent.mkdir(parents=True, exist_ok=True)
            weights.write_bytes(checkpoint.read_bytes())
            argv += [*TINY_MODEL, "INPUT.MIN_SIZE_TEST", "64"]
        done = subprocess.run(
            [sys.executable, str(REPO / argv[1]), *argv[2:]], cwd=tmp_path, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, done.stderr[-2000:]
    out = tmp_path / commands[1][commands[1].index("--out") + 1]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["complete"] is True
    rows = (out / "submission.csv").read_text().splitlines()
    assert len(rows) == 1 + len(json.loads((sample_root / "val.json").read_text())["images"])


@pytest.mark.slow
@pytest.mark.subprocess
def test_deploy_benchmark_runs_on_a_tiny_model(tmp_path: Path) -> None:
    """benchmarks/deploy.py end to end at 64 x 64 on the tiny quickstart: a row per backend with images/s, the
    ratio to PyTorch eager and the peak memory, and the export's note."""
    argv = ["--models", "quickstart", "--size", "64", "--repeats", "1", "--threads", "1"]
    argv += ["--calibration-images", "2", "--work", str(tmp_path), *TINY_MODEL]
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "deploy.py"), *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    table = done.stdout[done.stdout.index("| model | backend |") :]
    rows = [line.split("|")[1:-1] for line in table.splitlines() if line.startswith("| quickstart |")]
    assert [row[1].strip() for row in rows] == ["pytorch", "onnxruntime", "openvino", "onnxruntime-int8"]
    for row in rows:
        assert float(row[2]) > 0 and float(row[5]) > 0 and row[4].strip().endswith("x")
    assert rows[0][4].strip() == "1.00x"
    assert re.search(r"^- quickstart: [0-9.]+M parameters; exported in [0-9]+ s, .*; quantized in", done.stdout, re.M)
    assert (tmp_path / "quickstart" / "model_int8.onnx").is_file()


def test_calibration_skips_unreadable_photos_and_refuses_only_too_few(tmp_path: Path, caplog) -> None:
    """An unreadable photo among the calibration photos is skipped (the next one read in its place), one warning
    counting them and naming the first; fewer readable photos than needed is one line."""
    import cv2

    from mask2former.export.quantize import QuantizeError, calibration_photos

    rng = np.random.default_rng(0)
    files = []
    for index in range(6):
        path = tmp_path / f"{index}.jpg"
        cv2.imwrite(str(path), rng.integers(0, 255, (20 + index, 30, 3), dtype=np.uint8))
        files.append(path)
    for index in (0, 2):  # truncated JPEGs, as a copy cut short leaves them
        files[index].write_bytes(files[index].read_bytes()[:40])
    with caplog.at_level("WARNING"):
        photos = calibration_photos(files, 3)
    assert [photo.shape[0] for photo in photos] == [24, 21, 23]  # 4 (of the spread 0, 2, 4), then 1 and 3
    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert len(warnings) == 1 and "skipped 2 unreadable photo(s), the first: " in warnings[0], warnings
    assert str(files[0]) in warnings[0]
    assert len(calibration_photos(files, 6, needed=4)) == 4
    with pytest.raises(
        QuantizeError, match=rf"^--calibration: 4 readable photo\(s\) of 6, 5 needed \(the first: .*{files[0]}"
    ):
        calibration_photos(files, 6, needed=5)
