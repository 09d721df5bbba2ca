"""Pseudo-labels: label maps from probabilities, the label-map dataset json, the loop of
mask2former/pipeline/pseudo_label.py (stages faked where only the loop is under test) and tools/pseudo_label.py end
to end (tiny model, sample data, real child processes), including a run killed inside a round and resumed; bad
inputs are refused with one line, before anything is written."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import REPO, TINY_MODEL, tiny_training_opts

from mask2former.config import load_config
from mask2former.config.plugins import environment_with_plugins
from mask2former.data.catalog import DatasetCatalog
from mask2former.data.coco_semantic import DataError, class_names_from_categories, register_coco_semantic
from mask2former.data.mapper import SemanticSegMapper
from mask2former.io.files import UnsafePathError
from mask2former.io.images import write_label_png
from mask2former.io.probabilities import ProbabilityFileError, load_probabilities, probability_path, save_probabilities
from mask2former.modeling.build import build_model
from mask2former.pipeline import pseudo_label as loop
from mask2former.pipeline.pseudo_label import LoopOptions, PseudoLabelError
from mask2former.pipeline.pseudo_label_maps import keeps_round, label_png_name, pseudo_label_map, write_pseudo_dataset
from mask2former.utils.output_folder import OutputFolderError, claim_output_folder
from mask2former.utils.run_lock import OutputDirInUseError, OutputDirLock

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
    with pytest.raises(DataError, match=r"id 0\): .*label map .*nowhere\.png.*(is missing|no such file)"):
        DatasetCatalog.get("missing")


# ---- the tool end to end --------------------------------------------------------------------------------------------


def tiny_opts(sample_root: Path, cache: Path) -> list[str]:
    return tiny_training_opts(sample_root, cache) + ["SOLVER.CHECKPOINT_PERIOD", "1", "MODEL.DEVICE", "cpu"]


@pytest.fixture(scope="module")
def start_weights(tmp_path_factory) -> Path:
    cfg = load_config(CONFIG, TINY_MODEL)
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


@pytest.mark.slow
@pytest.mark.subprocess
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


# ---- the loop with its stages faked, and bad inputs -----------------------------------------------------------------


def loop_options(sample_root: Path, weights: Path, out: Path, **changes) -> LoopOptions:
    base = dict(config_file=CONFIG, weights=str(weights), unlabeled=str(sample_root / "test.json"), out=str(out))
    base.update(overlays=2, opts=tuple(tiny_opts(sample_root, out.parent / "cache")))
    return LoopOptions(**{**base, **changes})


def fake_stages(monkeypatch, scores: list[float], predict=None) -> dict[str, list[str]]:
    """Replace the child processes: evaluate/train write the next of `scores` (and an empty model_final.pth);
    predict runs tools/predict.py for real, or calls `predict(out_folder)`. Returns {stage: its command}."""
    commands: dict[str, list[str]] = {}
    remaining = iter(scores)

    def fake_run(stage: str, argv: list[str], log: Path) -> None:
        commands[stage] = argv
        if stage == "predict":
            if predict is None:
                # real predictions, for real labels, started as run_command starts them
                subprocess.run(argv, cwd=REPO, check=True, capture_output=True, env=environment_with_plugins())
            else:
                predict(Path(argv[argv.index("--out") + 1]))
            return
        folder = Path(argv[argv.index("OUTPUT_DIR") + 1])
        folder.mkdir(parents=True, exist_ok=True)
        name = "eval_metrics.json" if stage == "evaluate" else "final_metrics.json"
        (folder / name).write_text(json.dumps({"iteration": 1, "results": {"trash_val": {"mIoU": next(remaining)}}}))
        (folder / "model_final.pth").write_bytes(b"")

    monkeypatch.setattr(loop, "run_command", fake_run)
    return commands


def unlabeled_test_images(sample_root: Path) -> tuple[list[dict], list[str]]:
    data = json.loads((sample_root / "test.json").read_text())
    return data["images"], class_names_from_categories(data["categories"])


def write_npz(folder: Path, image: dict, probs: np.ndarray, class_names: list[str]) -> Path:
    """A prediction file in mask2former/io/probabilities.py's layout, written
    raw (so that it may hold what the writer refuses)."""
    path = probability_path(folder, image["file_name"])
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = dict(file_name=np.array(image["file_name"]), image_id=np.array(image["id"]))
    fields.update(height=np.array(image["height"]), width=np.array(image["width"]), class_names=np.array(class_names))
    with open(path, "wb") as handle:
        np.savez_compressed(handle, probs=probs.astype(np.float16), **fields)
    return path


def random_probabilities(rng: np.random.Generator, classes: int, size: int) -> np.ndarray:
    logits = rng.normal(0, 3, (classes, size, size)).astype(np.float32)
    exp = np.exp(logits - logits.max(axis=0))
    return exp / exp.sum(axis=0)


def digest(root: Path, skip: Path | None = None) -> dict[str, str]:
    """sha256 of every file under root (except under `skip`)."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file() and (skip is None or not path.is_relative_to(skip))
    }


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_round_that_does_not_help_is_dropped_and_ends_the_loop(sample_root, start_weights, tmp_path, monkeypatch):
    out = tmp_path / "pseudo"
    commands = fake_stages(monkeypatch, [0.40, 0.35, 0.38])  # the baseline, round 1, round 1's control
    options = loop_options(sample_root, start_weights, out, rounds=3, threshold=0.3, control=True)
    state = loop.run_loop(options)
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


def test_init_probs_of_any_size_are_resized_to_the_image(sample_root, start_weights, tmp_path, monkeypatch) -> None:
    """README step 3: --init-probs takes the 256x256 (here 32x32) maps predict.py and ensemble_crf.py write."""
    images, class_names = unlabeled_test_images(sample_root)
    rng = np.random.default_rng(0)
    init = tmp_path / "ens"
    stored = {}
    for image in images:
        stored[image["file_name"]] = random_probabilities(rng, len(class_names), 32)
        save_probabilities(init, image["file_name"], image["id"], stored[image["file_name"]], 512, 512, class_names)
    out = tmp_path / "pseudo"

    def no_predict(folder: Path) -> None:
        raise AssertionError("round 1 must take --init-probs, not predict")

    fake_stages(monkeypatch, [0.40, 0.45], predict=no_predict)
    state = loop.run_loop(loop_options(sample_root, start_weights, out, rounds=1, threshold=0.3, init_probs=str(init)))
    assert state["rounds"][0]["kept"] and state["rounds"][0]["images"] == len(images)
    for image in images:
        label = cv2.imread(str(out / "round_1" / label_png_name(image["file_name"])), cv2.IMREAD_UNCHANGED)
        assert label.shape == (image["height"], image["width"]) == (512, 512)
        stored_probs = load_probabilities(probability_path(init, image["file_name"]))["probs"]
        np.testing.assert_array_equal(label, pseudo_label_map(stored_probs, 512, 512, 0.3))
    assert 0.0 < state["rounds"][0]["ignored_share"] < 1.0
    assert len(list((out / "round_1" / "overlays").rglob("*.png"))) == 2


@pytest.mark.slow
@pytest.mark.subprocess
def test_nan_in_init_probs_is_one_line_exit_2_and_writes_nothing(sample_root, start_weights, tmp_path) -> None:
    images, class_names = unlabeled_test_images(sample_root)
    rng = np.random.default_rng(1)
    init = tmp_path / "ens"
    for image in images:
        write_npz(init, image, random_probabilities(rng, len(class_names), 16), class_names)
    bad = random_probabilities(rng, len(class_names), 16)
    bad[:, 3, 5] = np.nan
    bad_file = write_npz(init, images[2], bad, class_names)
    out = tmp_path / "pseudo"
    before, inputs_before = digest(tmp_path), digest(sample_root)
    argv = command(sample_root, start_weights, out, "--init-probs", str(init))
    result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert str(bad_file) in lines[0] and images[2]["file_name"] in lines[0]
    assert "NaN" in lines[0] or "non-finite" in lines[0]
    assert digest(tmp_path) == before and digest(sample_root) == inputs_before  # nothing written, not even OUT
    assert not out.exists()


def test_nan_in_the_loops_own_predictions_is_refused(sample_root, start_weights, tmp_path, monkeypatch) -> None:
    images, class_names = unlabeled_test_images(sample_root)

    def nan_predict(folder: Path) -> None:
        for image in images:
            write_npz(folder, image, np.full((len(class_names), 16, 16), np.nan, np.float32), class_names)

    fake_stages(monkeypatch, [0.40], predict=nan_predict)
    out = tmp_path / "pseudo"
    first = probability_path(out / "round_1" / "predict", images[0]["file_name"])
    with pytest.raises(PseudoLabelError, match=re.escape(str(first))):
        loop.run_loop(loop_options(sample_root, start_weights, out, rounds=1))
    assert not (out / "round_1" / "labels").exists() and not (out / "round_1" / "pseudo.json").exists()


def test_input_errors_name_the_file_and_write_nothing(sample_root, start_weights, tmp_path, monkeypatch) -> None:
    fake_stages(monkeypatch, [0.1] * 4, predict=lambda folder: None)
    out = tmp_path / "out"
    base = loop_options(sample_root, start_weights, out)

    def refused(pattern: str, error=PseudoLabelError, **changes) -> None:
        snapshot = digest(tmp_path)
        with pytest.raises(error, match=pattern):
            loop.run_loop(LoopOptions(**{**base.__dict__, **changes}))
        assert digest(tmp_path) == snapshot

    refused("checkpoint not found", weights=str(tmp_path / "none.pth"))
    refused("is not a folder", init_probs=str(tmp_path / "nowhere"))
    empty = tmp_path / "empty_probs"
    empty.mkdir()
    refused(r"empty_probs: not a prediction folder \(no probs/ inside\)", ProbabilityFileError, init_probs=str(empty))
    (empty / "probs").mkdir()
    refused(r"no usable prediction for image \d+ \(batch_\d+/\d+\.jpg\): .*is missing", init_probs=str(empty))
    images, class_names = unlabeled_test_images(sample_root)
    other = tmp_path / "other_classes"
    rng = np.random.default_rng(2)
    for image in images:
        write_npz(other, image, random_probabilities(rng, 3, 8), ["Background", "Paper", "Metal"])
    refused(r"has the classes \['Background', 'Paper', 'Metal'\], the training data", init_probs=str(other))
    with pytest.raises(PseudoLabelError, match="KEY VALUE pairs"):
        LoopOptions(**{**base.__dict__, "opts": ("MODEL.DEVICE",)})

    # image names that would leave OUT, or two images sharing a label PNG, are refused before anything is written
    data = json.loads((sample_root / "test.json").read_text())
    for name, pattern in [("../outside.jpg", "climbs out"), ("/abs/photo.png", "absolute")]:
        unsafe = tmp_path / f"unsafe_{len(name)}.json"
        unsafe.write_text(json.dumps({**data, "images": [{**data["images"][0], "file_name": name}]}))
        errors = (PseudoLabelError, UnsafePathError, DataError)
        refused(rf"{re.escape(str(unsafe))}.*{re.escape(name)}.*{pattern}", errors, unlabeled=str(unsafe),
                image_root=str(sample_root))  # fmt: skip
    twin = {**data["images"][1], "file_name": str(Path(data["images"][0]["file_name"]).with_suffix(".png"))}
    twins = [data["images"][0], twin]
    twin_json = tmp_path / "twins.json"
    twin_json.write_text(json.dumps({**data, "images": twins}))
    refused(r"would share the pseudo-label labels/.*\.png: rename one", unlabeled=str(twin_json),
            image_root=str(sample_root))  # fmt: skip

    # OUT: a folder of someone else's files; --overwrite deleting the weights it starts from
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    refused(r"is not a folder pseudo_label\.py made \(it holds notes\.txt\): give a new or empty", OutputFolderError,
            out=str(foreign))  # fmt: skip
    refused(r"is not a folder pseudo_label\.py made", OutputFolderError, out=str(foreign), overwrite=True)
    # a folder a run of the tool made (its owner record) whose round keeps the weights a new run would start from
    kept = out / "round_2" / "train"
    moved = LoopOptions(**{**base.__dict__, "weights": str(kept / "model_final.pth")})
    claim_output_folder(out, loop.TOOL, loop.settings_of(moved)).record("round_2", "state.json")
    kept.mkdir(parents=True)
    (out / "state.json").write_text(json.dumps({"settings": {}, "rounds": []}))
    shutil.copy(start_weights, kept / "model_final.pth")
    refused(r"--overwrite would delete --weights .*round_2.*copy it out", weights=str(kept / "model_final.pth"),
            overwrite=True)  # fmt: skip
    (out / "state.json").unlink()
    refused(r"holds rounds but no state\.json", weights=str(kept / "model_final.pth"))


@pytest.mark.slow
@pytest.mark.subprocess
def test_cli_user_errors_are_one_line_with_status_2(sample_root: Path, start_weights: Path, tmp_path: Path) -> None:
    argv = command(sample_root, tmp_path / "none.pth", tmp_path / "out")
    result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [f"pseudo_label.py: checkpoint not found: {tmp_path / 'none.pth'}"]
    debug = subprocess.run(argv + ["--debug"], cwd=REPO, capture_output=True, text=True)
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "PseudoLabelError" in debug.stderr
    odd = subprocess.run(argv[:-1], cwd=REPO, capture_output=True, text=True)  # an odd number of overrides
    assert odd.returncode == 2 and "config overrides come in KEY VALUE pairs" in odd.stderr


def test_a_second_run_on_the_same_out_is_refused(sample_root, start_weights, tmp_path, monkeypatch) -> None:
    fake_stages(monkeypatch, [0.1, 0.2])
    out = tmp_path / "pseudo"
    with OutputDirLock(out):  # a live run holding OUT
        with pytest.raises(OutputDirInUseError, match=rf"{re.escape(str(out))} is in use by another run \(pid"):
            loop.run_loop(loop_options(sample_root, start_weights, out))
        assert [path.name for path in out.iterdir()] == [".lock"]  # nothing written beside the holder's lock


# ---- the process count reaches every child ---------------------------------------------------------------------------


@pytest.mark.parametrize("num_gpus", [0, 1, 2])
def test_every_child_command_carries_the_process_count(sample_root, start_weights, tmp_path, num_gpus) -> None:
    """--num-gpus N goes to train_net.py --eval-only, train_net.py and predict.py alike, before the KEY VALUE
    overrides, and each child's own parser reads N from it (predict.py: N processes, on the CPU without a GPU)."""
    from mask2former.engine.arguments import default_argument_parser
    from mask2former.pipeline.predict import parse_args as predict_args

    options = loop_options(sample_root, start_weights, tmp_path / "pseudo", num_gpus=num_gpus, tta=True)
    cfg = loop.loop_config(options)
    folder = tmp_path / "pseudo" / "round_1"
    commands = {
        "evaluate": loop.evaluate_command(options, str(start_weights), folder / "eval"),
        "predict": loop.predict_command(options, str(start_weights), sample_root / "test.json", sample_root, folder),
        "train": loop.train_command(options, cfg, str(start_weights), folder / "train", None),
    }
    arguments = {stage: argv[3:] for stage, argv in commands.items()}  # after python -m <entry point>
    for stage, argv in commands.items():
        assert argv[:3] == (loop.PREDICT if stage == "predict" else loop.TRAIN_NET), stage
        assert argv.count("--num-gpus") == 1 and argv[argv.index("--num-gpus") + 1] == str(num_gpus), stage
        parsed = (predict_args if stage == "predict" else default_argument_parser().parse_args)(arguments[stage])
        assert parsed.num_gpus == num_gpus and list(parsed.opts[: len(options.opts)]) == list(options.opts), stage
    assert default_argument_parser().parse_args(arguments["evaluate"]).eval_only
    assert predict_args(arguments["predict"]).tta
    with pytest.raises(PseudoLabelError, match=r"--num-gpus must be >= 0"):
        loop_options(sample_root, start_weights, tmp_path / "pseudo", num_gpus=-1)


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_loop_with_two_processes_predicts_in_two_cpu_workers(sample_root, start_weights, tmp_path, monkeypatch):
    """num_gpus 2 on the CPU: the predict stage (run for real) starts two CPU worker processes; evaluation and
    training (faked) are given --num-gpus 2 too."""
    out = tmp_path / "pseudo"
    commands = fake_stages(monkeypatch, [0.40, 0.45])
    state = loop.run_loop(loop_options(sample_root, start_weights, out, rounds=1, threshold=0.3, num_gpus=2))
    assert set(commands) == {"evaluate", "predict", "train"}
    for argv in commands.values():
        assert argv[argv.index("--num-gpus") + 1] == "2"
    predicted = json.loads((out / "round_1" / "predict" / "meta.json").read_text())
    assert predicted["devices"] == ["cpu", "cpu"] and predicted["predicted"] == state["rounds"][0]["images"] == 6
