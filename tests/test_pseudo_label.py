"""Pseudo-labels: label maps from probabilities, the label-map dataset json, and tools/pseudo_label.py end to end
(tiny model, sample data, real child processes), including a run killed inside a round and resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import REPO, TINY_MODEL, load_tool, tiny_training_opts

from mask2former.config import get_cfg
from mask2former.data.catalog import DatasetCatalog
from mask2former.data.coco_semantic import DataError, register_coco_semantic
from mask2former.data.mapper import SemanticSegMapper
from mask2former.ensemble import write_label_png
from mask2former.modeling.meta_arch import build_model
from mask2former.prediction_io import probability_path
from mask2former.pseudo_label import (
    keeps_round,
    label_png_name,
    pseudo_label_map,
    write_pseudo_dataset,
)

CONFIG = str(REPO / "configs" / "quickstart.yaml")
CATEGORIES = [{"id": 1, "name": "Paper"}, {"id": 2, "name": "Metal"}]


def test_label_map_takes_the_argmax_where_confident_and_ignores_the_rest() -> None:
    probs = np.zeros((3, 2, 2), np.float32)
    probs[:, 0, 0] = [0.1, 0.85, 0.05]  # confident class 1
    probs[:, 0, 1] = [0.5, 0.3, 0.2]  # unsure
    probs[:, 1, 0] = [0.0, 0.0, 1.0]  # sure class 2
    probs[:, 1, 1] = [0.8, 0.1, 0.1]  # exactly at the threshold: kept
    label = pseudo_label_map(probs, 2, 2, threshold=0.8)
    assert label.dtype == np.uint8
    assert label.tolist() == [[1, 255], [2, 0]]
    assert pseudo_label_map(probs, 2, 2, threshold=0.0).tolist() == [[1, 0], [2, 0]]
    assert (pseudo_label_map(probs, 2, 2, threshold=1.0) == 255).sum() == 3


def test_label_map_resizes_probabilities_to_the_image() -> None:
    probs = np.zeros((2, 4, 4), np.float32)
    probs[0], probs[1, :, 2:] = 1.0, 1.0
    probs[0, :, 2:] = 0.0
    label = pseudo_label_map(probs, 8, 12, threshold=0.5)
    assert label.shape == (8, 12)
    assert (label[:, :5] == 0).all() and (label[:, 7:] == 1).all()  # left half class 0, right half class 1
    with pytest.raises(ValueError, match="threshold"):
        pseudo_label_map(probs, 4, 4, threshold=1.5)
    with pytest.raises(ValueError, match="K x H x W"):
        pseudo_label_map(probs[0], 4, 4, threshold=0.5)


def test_rounds_are_kept_only_when_val_miou_rises() -> None:
    assert keeps_round(0.51, 0.50)
    assert not keeps_round(0.50, 0.50)
    assert not keeps_round(0.505, 0.50, min_gain=0.01)
    assert keeps_round(0.49, 0.50, min_gain=-1.0)  # a negative gain keeps every round
    assert not keeps_round(float("nan"), 0.0, min_gain=-1.0)


def _label_map_dataset(root: Path, values: np.ndarray | None = None) -> tuple[Path, list[dict]]:
    images = []
    for index in range(2):
        name = f"unlabeled/{index:04d}.jpg"
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / name), np.full((24, 32, 3), 60 * index, np.uint8))
        label = np.full((24, 32), index, np.uint8) if values is None else values
        label[:4] = 255
        write_label_png(root / "pseudo" / label_png_name(name), label)
        images.append({"id": index, "file_name": name, "height": 24, "width": 32})
    return write_pseudo_dataset(root / "pseudo", images, CATEGORIES), images


def test_label_map_json_registers_and_feeds_the_mapper(tmp_path: Path) -> None:
    json_path, images = _label_map_dataset(tmp_path)
    data = json.loads(json_path.read_text())
    assert data["annotations"] == [] and data["images"][1]["sem_seg_file_name"] == "labels/unlabeled/0001.png"
    register_coco_semantic("pseudo", json_path, tmp_path, cache_dir=tmp_path / "cache")
    dicts = DatasetCatalog.get("pseudo")
    assert [Path(d["sem_seg_file_name"]) for d in dicts] == [
        (tmp_path / "pseudo" / label_png_name(image["file_name"])).resolve() for image in images
    ]
    mapper = SemanticSegMapper(is_train=False, min_size=(24,), max_size=1000, crop_size=None)
    sample = mapper(dicts[1], np.random.default_rng(0))
    assert sample["sem_seg"].shape == (24, 32)
    assert (sample["sem_seg"][:4] == 255).all() and (sample["sem_seg"][4:] == 1).all()


def test_label_map_json_errors_name_the_file_and_the_image(tmp_path: Path) -> None:
    bad = np.zeros((24, 32), np.uint8)
    bad[10, 10] = 7  # 3 classes (background, Paper, Metal): 7 is out of range
    json_path, _ = _label_map_dataset(tmp_path, bad)
    register_coco_semantic("bad_values", json_path, tmp_path, cache_dir=tmp_path / "cache")
    with pytest.raises(DataError, match=r"pseudo\.json: image 'unlabeled/0000\.jpg' \(id 0\).*holds \[7\]"):
        DatasetCatalog.get("bad_values")

    data = json.loads(json_path.read_text())
    del data["images"][1]["sem_seg_file_name"]
    partial = tmp_path / "pseudo" / "partial.json"
    partial.write_text(json.dumps(data))
    register_coco_semantic("partial", partial, tmp_path, cache_dir=tmp_path / "cache")
    with pytest.raises(DataError, match=r"'unlabeled/0001\.jpg' \(id 1\): has no sem_seg_file_name"):
        DatasetCatalog.get("partial")

    data = json.loads(json_path.read_text())
    data["images"][0]["sem_seg_file_name"] = "labels/nowhere.png"
    missing = tmp_path / "pseudo" / "missing.json"
    missing.write_text(json.dumps(data))
    register_coco_semantic("missing", missing, tmp_path, cache_dir=tmp_path / "cache")
    with pytest.raises(DataError, match=r"id 0\): label map .*nowhere\.png is missing"):
        DatasetCatalog.get("missing")


# ---- the tool end to end --------------------------------------------------------------------------------------------


def tiny_opts(sample_root: Path, cache: Path) -> list[str]:
    return tiny_training_opts(sample_root, cache) + ["SOLVER.CHECKPOINT_PERIOD", "1", "MODEL.DEVICE", "cpu"]


@pytest.fixture(scope="module")
def start_weights(tmp_path_factory) -> Path:
    cfg = get_cfg()
    cfg.merge_from_file(CONFIG)
    cfg.merge_from_list(TINY_MODEL)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("start") / "start.pth"
    torch.save({"model": build_model(cfg).state_dict()}, path)
    return path


def command(sample_root: Path, weights: Path, out: Path, *flags: str) -> list[str]:
    argv = [sys.executable, str(REPO / "tools" / "pseudo_label.py"), "--config-file", CONFIG, "--weights", str(weights)]
    argv += ["--unlabeled", str(sample_root / "test.json"), "--out", str(out), "--overlays", "2", *flags]
    return argv + tiny_opts(sample_root, out.parent / "cache")


def state_of(out: Path) -> dict:
    return json.loads((out / "state.json").read_text())


def test_two_rounds_killed_inside_a_round_resume_to_the_end(sample_root: Path, start_weights: Path, tmp_path) -> None:
    out = tmp_path / "pseudo"
    # --min-gain -1 keeps every round whatever the (random) model scores, so that round 2 always runs
    argv = command(sample_root, start_weights, out, "--rounds", "2", "--threshold", "0.3", "--min-gain", "-1")
    argv += ["SOLVER.MAX_ITER", "40"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)  # fmt: skip
    checkpoints = out / "round_1" / "train" / "checkpoints"
    deadline = time.monotonic() + 240
    while not list(checkpoints.glob("model_000000[3-9].ckpt")) and time.monotonic() < deadline:
        assert process.poll() is None, "the loop ended before it was killed"
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)  # the loop and its training child, mid-training
    process.wait()
    assert not (out / "round_1" / "train" / "model_final.pth").exists()
    killed = state_of(out)
    assert killed["baseline"]["mIoU"] >= 0 and len(killed["rounds"]) == 1 and "kept" not in killed["rounds"][0]
    test_images = json.loads((sample_root / "test.json").read_text())["images"]
    npz = [probability_path(out / "round_1" / "predict", image["file_name"]) for image in test_images]
    stamps = [path.stat().st_mtime_ns for path in npz]

    finished = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert [path.stat().st_mtime_ns for path in npz] == stamps  # round 1's predictions were not made again
    assert "resuming from" in (out / "round_1" / "train" / "log.txt").read_text()
    state = state_of(out)
    assert [entry["round"] for entry in state["rounds"]] == [1, 2]
    assert [entry["start_round"] for entry in state["rounds"]] == [0, 1]
    assert all(entry["kept"] for entry in state["rounds"])
    assert state["best"]["round"] == 2 and Path(state["best"]["weights"]).is_file()
    for entry in state["rounds"]:
        final = json.loads((out / f"round_{entry['round']}" / "train" / "final_metrics.json").read_text())
        assert final["iteration"] == 40 and final["results"]["trash_val"]["mIoU"] == entry["mIoU"]
        config = (out / f"round_{entry['round']}" / "train" / "config.yaml").read_text()
        assert f"pseudo_round_{entry['round']}" in config and entry["start_weights"] in config
    # round 2 trained from round 1's model on labels made by round 1's model
    assert state["rounds"][1]["start_weights"] == state["rounds"][0]["weights"]
    round_2 = json.loads((out / "round_2" / "predict" / "meta.json").read_text())
    assert round_2["weights"] == [state["rounds"][0]["weights"]]

    # the labels follow the stored probabilities and the threshold
    pseudo = json.loads((out / "round_2" / "pseudo.json").read_text())
    assert len(pseudo["images"]) == len(test_images) and pseudo["annotations"] == []
    from mask2former.prediction_io import load_probabilities

    first = pseudo["images"][0]
    label = cv2.imread(str(out / "round_2" / first["sem_seg_file_name"]), cv2.IMREAD_UNCHANGED)
    probs = load_probabilities(probability_path(out / "round_2" / "predict", first["file_name"]))["probs"]
    np.testing.assert_array_equal(label, pseudo_label_map(probs, first["height"], first["width"], 0.3))
    share = float((label == 255).mean())
    assert 0.0 <= share <= 1.0 and len(list((out / "round_2" / "overlays").rglob("*.png"))) == 2

    table = (out / "rounds.md").read_text()
    assert finished.stdout.strip().startswith(table.strip())
    assert table.count("\n") == 5 and "| 2 | round 1 | 6 |" in table

    # the same command once more does nothing new; other settings are refused
    again = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True)
    assert again.returncode == 0 and state_of(out)["rounds"] == state["rounds"]
    other = [arg if arg != "0.3" else "0.5" for arg in argv]
    refused = subprocess.run(other, cwd=REPO, env=env, capture_output=True, text=True)
    assert refused.returncode != 0 and "threshold: 0.3 before, 0.5 now" in refused.stderr


def test_a_round_that_does_not_help_is_dropped_and_ends_the_loop(sample_root, start_weights, tmp_path, monkeypatch):
    tool = load_tool("pseudo_label")
    out = tmp_path / "pseudo"
    scores = iter([0.40, 0.35, 0.38])  # the baseline, round 1, round 1's control
    commands: dict[str, list[str]] = {}

    def fake_run(stage: str, argv: list[str], log: Path) -> None:
        commands[stage] = argv
        if stage == "predict":
            subprocess.run(argv, cwd=REPO, check=True, capture_output=True)  # real predictions, for real labels
            return
        folder = Path(argv[argv.index("OUTPUT_DIR") + 1])
        folder.mkdir(parents=True, exist_ok=True)
        name = "eval_metrics.json" if stage == "evaluate" else "final_metrics.json"
        (folder / name).write_text(json.dumps({"iteration": 1, "results": {"trash_val": {"mIoU": next(scores)}}}))
        (folder / "model_final.pth").write_bytes(b"")

    monkeypatch.setattr(tool, "run_command", fake_run)
    argv = command(sample_root, start_weights, out, "--rounds", "3", "--threshold", "0.3", "--control")[2:]
    state = tool.main(argv)
    assert state["stopped"] and len(state["rounds"]) == 1 and state["rounds"][0]["kept"] is False
    assert state["best"] == {"round": 0, "weights": str(start_weights.resolve()), "mIoU": 0.40}
    assert state["rounds"][0]["control_mIoU"] == 0.38
    table = (out / "rounds.md").read_text()
    assert (
        "control: no pseudo-labels" in table and "| 1 | round 0 | 6 |" in table and "| 0.3500 | no | 0.3800 |" in table
    )
    # the round trains on train + pseudo-labels, its control on the training set alone, both from the same model
    assert "pseudo_round_1" in " ".join(commands["train"]) and "pseudo_round_1" not in " ".join(commands["control"])
    start = commands["train"].index("MODEL.WEIGHTS") + 1
    assert commands["train"][start] == commands["control"][commands["control"].index("MODEL.WEIGHTS") + 1]


def test_init_probs_and_input_errors(sample_root: Path, start_weights: Path, tmp_path: Path, capsys) -> None:
    tool = load_tool("pseudo_label")
    base = command(sample_root, start_weights, tmp_path / "out")[2:]
    with pytest.raises(SystemExit, match="checkpoint not found"):
        tool.main([arg if arg != str(start_weights) else str(tmp_path / "none.pth") for arg in base])
    with pytest.raises(SystemExit, match="is not a folder"):
        tool.main(base[:4] + ["--init-probs", str(tmp_path / "nowhere")] + base[4:])
    empty = tmp_path / "empty_probs"
    empty.mkdir()
    monkey_eval = tmp_path / "out" / "round_0"
    monkey_eval.mkdir(parents=True)
    (monkey_eval / "eval_metrics.json").write_text(json.dumps({"results": {"trash_val": {"mIoU": 0.1}}}))
    with pytest.raises(SystemExit, match=r"no usable prediction for image \d+ \(batch_\d+/\d+\.jpg\)"):
        tool.main(base[:4] + ["--init-probs", str(empty)] + base[4:])
    with pytest.raises(SystemExit):
        tool.main(base[:-1])  # an odd number of overrides
    assert "config overrides come in KEY VALUE pairs" in capsys.readouterr().err
