"""The documented recipes run as written: the bash block of "Prediction, ensembling and pseudo-labels" (in
docs/prediction.md) is read through conftest.doc_commands and its three commands are run in child processes,
changing only paths (DATA, output/, the weights), the GPU count (--num-gpus 4 -> the CPU) and appending tiny-model
config overrides."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import REPO, TINY_MODEL, doc_commands, tiny_training_opts

from mask2former.config import load_config
from mask2former.io.probabilities import load_probabilities, probability_path
from mask2former.modeling.build import build_model
from mask2former.pipeline.pseudo_label_maps import label_png_name, pseudo_label_map

SECTION = "Prediction, ensembling and pseudo-labels"
CPU = ["MODEL.DEVICE", "cpu"]
# one small test scale for --tta (flip x 64 px; the configs' TEST.AUG.MIN_SIZES are for 512-pixel models)
TTA = ["TEST.AUG.MIN_SIZES", "(64,)"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DATA: the generated sample layout, smaller (2 train, 2 val, 2 test images of 512x512)."""
    from mask2former.data.sample_dataset import make_sample_dataset

    root = tmp_path_factory.mktemp("data")
    make_sample_dataset(root, num_train=4, num_test=2, seed=0, val_fraction=0.5)
    return root


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def replaced(argv: list[str], changes: dict[str, str]) -> list[str]:
    return [changes.get(arg, arg) for arg in argv]


def localised(argv: list[str], data: Path, output: Path) -> list[str]:
    """argv with python -> this interpreter, DATA/ -> the sample data, output/ -> a temporary folder, and the
    GPU count -> 0 (the CPU); nothing else changes."""
    out = [sys.executable if argv[0] == "python" else argv[0]]
    for previous, arg in zip(argv, argv[1:], strict=False):
        if previous == "--num-gpus":
            arg = "0"
        elif arg.startswith("DATA/"):
            arg = str(data / arg.removeprefix("DATA/"))
        elif arg.startswith("output/"):
            arg = str(output / arg.removeprefix("output/"))
        out.append(arg)
    return out


def save_untrained(config_file: str, path: Path, seed: int) -> None:
    """A tiny untrained model of this config, saved where the recipe expects a trained one."""
    torch.manual_seed(seed)
    model = build_model(load_config(str(REPO / config_file), TINY_MODEL))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict()}, path)


def run(argv: list[str]) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, f"{shlex.join(argv[:4])} ... failed:\n{result.stderr[-4000:]}"
    return result


def test_the_prediction_recipe_has_three_commands() -> None:
    commands = doc_commands(SECTION)
    assert [argv[:2] for argv in commands] == [
        ["python", "tools/predict.py"],
        ["python", "tools/ensemble_crf.py"],
        ["python", "tools/pseudo_label.py"],
    ]
    assert flag(commands[2], "--init-probs") == flag(commands[1], "--out")  # step 3 reads step 2's output


@pytest.mark.slow
@pytest.mark.subprocess
def test_prediction_ensembling_and_pseudo_label_recipe_runs_as_written(data: Path, tmp_path: Path) -> None:
    predict, ensemble, pseudo = doc_commands(SECTION)
    output = tmp_path / "output"
    # step 1 is run for "every model": the folders step 2 combines, each with its config and checkpoint
    models = {
        flag(predict, "--out"): (flag(predict, "--config-file"), flag(predict, "--weights")),
        "output/pred/semask": (flag(pseudo, "--config-file"), flag(pseudo, "--weights")),
        "output/pred/swin": ("configs/m2f_swin_l.yaml", "output/m2f_swin_l/model_final.pth"),
    }
    assert sorted(models) == sorted(arg for arg in ensemble if arg.startswith("output/pred/"))
    for seed, (folder, (config_file, weights)) in enumerate(models.items()):
        save_untrained(config_file, output / weights.removeprefix("output/"), seed)
        paths = {flag(predict, "--out"): folder, flag(predict, "--config-file"): config_file}
        each = replaced(predict, {**paths, flag(predict, "--weights"): weights})
        run(localised(each, data, output) + TINY_MODEL + CPU + TTA + ["INPUT.MIN_SIZE_TEST", "64"])

    run(localised(ensemble, data, output))
    ens = output / flag(ensemble, "--out").removeprefix("output/")

    cache = tmp_path / "cache"
    # BASE_LR 0: round 1 cannot beat round 0, so the loop stops after one round (--rounds 3 stays as written)
    tiny = tiny_training_opts(data, cache) + CPU + TTA + ["SOLVER.MAX_ITER", "1", "SOLVER.BASE_LR", "0.0"]
    result = run(localised(pseudo, data, output) + tiny)
    out = output / flag(pseudo, "--out").removeprefix("output/")
    state = json.loads((out / "state.json").read_text())
    assert state["rounds"][0]["images"] == 2 and "kept" in state["rounds"][0]
    assert not (out / "round_1" / "predict").exists()  # round 1 took the ensemble's probabilities
    assert (out / "rounds.md").read_text().strip() in result.stdout

    # the ensemble stores 256x256 maps; the pseudo-labels are those maps resized to the 512x512 images
    threshold = float(flag(pseudo, "--threshold"))
    images = json.loads((data / "test.json").read_text())["images"]
    for image in images:
        probs = load_probabilities(probability_path(ens, image["file_name"]))["probs"]
        assert probs.shape[1:] == (256, 256) and (image["height"], image["width"]) == (512, 512)
        label = cv2.imread(str(out / "round_1" / label_png_name(image["file_name"])), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(label, pseudo_label_map(probs, 512, 512, threshold))


def test_recipe_paths_are_placeholders_the_test_can_replace() -> None:
    """Every path of the recipe is DATA/..., output/..., configs/... or tools/... (what the test above maps)."""
    for argv in doc_commands(SECTION):
        for arg in argv[1:]:
            if "/" in arg:
                assert arg.split("/", 1)[0] in ("DATA", "output", "configs", "tools"), arg
