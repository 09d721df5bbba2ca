"""tools/predict.py and the inference engine: TTA, batching, checkpoint ensembles, resuming, worker processes,
errors. A tiny model on the CPU at small sizes (views of 64 and 96 px) keeps the file fast."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import REPO, TINY_MODEL, load_tool

from mask2former.config import get_cfg
from mask2former.engine import inference
from mask2former.engine.inference import inference_views, predict_batch, predict_probabilities
from mask2former.modeling.meta_arch import build_model
from mask2former.prediction_io import check_probabilities, load_probabilities, probability_path
from mask2former.submission import read_submission

TINY = TINY_MODEL
SIZES = ["INPUT.MIN_SIZE_TEST", "64", "TEST.AUG.MIN_SIZES", "(64, 96)", "MODEL.DEVICE", "cpu"]
CONFIG = str(REPO / "configs" / "quickstart.yaml")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one torch thread is faster, and far faster when other jobs share the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def predict_tool():
    return load_tool("predict")


def tiny_cfg(*extra: str):
    cfg = get_cfg()
    cfg.merge_from_file(CONFIG)
    cfg.merge_from_list(TINY + SIZES + list(extra))
    return cfg


def tiny_model(seed: int, *extra: str) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(tiny_cfg(*extra)).eval()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Freshly initialised tiny models saved as this project's .pth: two of the config's model, one of another
    width, one with another class count."""
    folder = tmp_path_factory.mktemp("ckpt")
    paths = {}
    for name, seed, extra in [
        ("a", 0, ()),
        ("b", 1, ()),
        ("wide", 2, ("MODEL.MASK_FORMER.HIDDEN_DIM", "48")),
        ("classes", 3, ("MODEL.SEM_SEG_HEAD.NUM_CLASSES", "5")),
    ]:
        paths[name] = folder / f"{name}.pth"
        torch.save({"model": tiny_model(seed, *extra).state_dict()}, paths[name])
    return paths


def run(tool, sample_root: Path, out: Path, weights: list[Path], *flags: str, json_name: str = "test.json") -> Path:
    argv = ["--config-file", CONFIG, "--weights", *map(str, weights), "--json", str(sample_root / json_name)]
    return tool.main([*argv, "--out", str(out), "--overlays", "2", *flags, *TINY, *SIZES])


def npz_files(out: Path) -> list[Path]:
    return sorted((out / "probs").rglob("*.npz"))


def meta(out: Path) -> dict:
    return json.loads((out / "meta.json").read_text())


def test_help_and_argument_split(predict_tool, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        predict_tool.parse_args(["--help"])
    assert exit_info.value.code == 0 and "--weights-scale" in capsys.readouterr().out
    args = predict_tool.parse_args(
        ["--config-file", "c", "--json", "j", "--out", "o", "--weights", "a", "b", "INPUT.MIN_SIZE_TEST", "64"]
    )
    assert args.weights == ["a", "b"] and args.opts == ["INPUT.MIN_SIZE_TEST", "64"]
    args = predict_tool.parse_args(["--config-file", "c", "--json", "j", "--out", "o", "--weights", "a"])
    assert args.weights == ["a"] and args.opts == [] and args.weights_scale is None


def test_batched_views_equal_one_at_a_time() -> None:
    """Mixed image sizes, two scales x flip: batches of 3 views give what one view at a time gives."""
    model = tiny_model(0)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, shape, dtype=np.uint8) for shape in [(96, 96, 3), (80, 120, 3), (96, 96, 3)]]
    views = inference_views(tiny_cfg("TEST.AUG.ENABLED", "True"))
    assert views == [(64, False), (64, True), (96, False), (96, True)]
    sizes = [(32, 32), (80, 120), (32, 32)]
    one = [
        predict_batch(model, [image], views, 4096, output_sizes=[size])[0]
        for image, size in zip(images, sizes, strict=True)
    ]
    batched = predict_batch(model, images, views, 4096, output_sizes=sizes, batch_size=3)
    for single, many, size in zip(one, batched, sizes, strict=True):
        assert many.shape == (11, *size)
        torch.testing.assert_close(many, single, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(many.sum(0), torch.ones(size), atol=1e-5, rtol=0)
    # the image-size API is the same function
    torch.testing.assert_close(predict_probabilities(model, images[1], views, 4096), one[1], atol=1e-6, rtol=0)
    # two checkpoints, weights 3:1: the weighted mean of their predictions
    other = tiny_model(1)
    mixed = predict_batch([model, other], images[:1], views, 4096, output_sizes=sizes[:1], weights=[3, 1])[0]
    alone = predict_batch(other, images[:1], views, 4096, output_sizes=sizes[:1])[0]
    torch.testing.assert_close(mixed, 0.75 * one[0] + 0.25 * alone, atol=1e-5, rtol=1e-4)
    amp = predict_batch(model, images[:1], views[:1], 4096, output_sizes=sizes[:1], amp=True)[0]
    assert torch.isfinite(amp).all() and (amp - one[0]).abs().max() < 1.0


def test_predict_single_tta_batched_and_ensemble(predict_tool, sample_root, checkpoints, tmp_path, capsys) -> None:
    images = json.loads((sample_root / "test.json").read_text())["images"]
    plain = tmp_path / "plain"
    csv = run(predict_tool, sample_root, plain, [checkpoints["a"]])
    out = capsys.readouterr().out
    assert "images/s" in out and f"{len(images)} predicted" in out
    assert csv == plain / "submission.csv" and len(read_submission(csv)) == len(images)
    assert len(npz_files(plain)) == len(images) and len(list((plain / "overlays").rglob("*.png"))) == 2
    info = meta(plain)
    assert info["complete"] and info["predicted"] == len(images) and info["views"] == [[64, False]]
    # the stored maps are what the engine computes at 256x256
    model = tiny_model(0)
    bgr = cv2.imread(str(sample_root / images[0]["file_name"]))
    expected = predict_batch(model, [bgr], [(64, False)], 2048, output_sizes=[(256, 256)])[0].numpy()
    stored = load_probabilities(probability_path(plain, images[0]["file_name"]))
    assert stored["probs"].shape == (11, 256, 256) and stored["height"] == bgr.shape[0]
    np.testing.assert_allclose(stored["probs"], expected, atol=2e-3)

    # TTA, one image per pass vs 4 views per pass
    one, four = tmp_path / "tta1", tmp_path / "tta4"
    run(predict_tool, sample_root, one, [checkpoints["a"]], "--tta")
    run(predict_tool, sample_root, four, [checkpoints["a"]], "--tta", "--batch-size", "4")
    assert meta(four)["views"] == [[64, False], [64, True], [96, False], [96, True]]
    for first, second in zip(npz_files(one), npz_files(four), strict=True):
        np.testing.assert_allclose(load_probabilities(first)["probs"], load_probabilities(second)["probs"], atol=2e-3)

    # weighted checkpoint ensemble = weighted mean of the single-checkpoint predictions (full-size maps)
    runs = {}
    for name, weights, scale in [("a", ["a"], []), ("b", ["b"], []), ("ab", ["a", "b"], ["3", "1"])]:
        runs[name] = tmp_path / f"full_{name}"
        flags = ["--prob-size", "0", "--batch-size", "3"] + (["--weights-scale", *scale] if scale else [])
        run(predict_tool, sample_root, runs[name], [checkpoints[w] for w in weights], *flags)
    assert meta(runs["ab"])["weights_scale"] == [0.75, 0.25]
    for image in images[:2]:
        a, b, ab = (
            load_probabilities(probability_path(runs[k], image["file_name"]))["probs"] for k in ("a", "b", "ab")
        )
        assert ab.shape == (11, image["height"], image["width"])
        np.testing.assert_allclose(ab, 0.75 * a + 0.25 * b, atol=2e-3)


def test_interrupted_run_resumes(predict_tool, sample_root, checkpoints, tmp_path, monkeypatch) -> None:
    images = json.loads((sample_root / "test.json").read_text())["images"]
    reference = tmp_path / "reference"
    run(predict_tool, sample_root, reference, [checkpoints["a"]], "--batch-size", "2")

    saved, lock = [], threading.Lock()
    real_save = inference.save_probabilities

    def failing_save(*args, **kwargs):  # the npz files are written in threads
        with lock:
            if len(saved) >= 3:
                raise RuntimeError("killed")
            saved.append(args[1])
        return real_save(*args, **kwargs)

    out = tmp_path / "resumed"
    monkeypatch.setattr(inference, "save_probabilities", failing_save)
    with pytest.raises(RuntimeError, match="killed"):
        run(predict_tool, sample_root, out, [checkpoints["a"]], "--batch-size", "2")
    monkeypatch.setattr(inference, "save_probabilities", real_save)
    assert len(npz_files(out)) == 3 and not meta(out)["complete"] and not (out / "submission.csv").exists()

    run(predict_tool, sample_root, out, [checkpoints["a"]], "--batch-size", "2")
    info = meta(out)
    assert (info["skipped"], info["predicted"], info["redone"]) == (3, len(images) - 3, 0)
    assert (out / "submission.csv").read_bytes() == (reference / "submission.csv").read_bytes()

    # a truncated npz (and a temporary file of a killed write) from a killed run: detected, predicted again
    broken = probability_path(out, images[4]["file_name"])
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])
    assert check_probabilities(broken) is not None
    stale = broken.with_name(f".{broken.name}.abc123.tmp")
    stale.write_bytes(b"partial")
    run(predict_tool, sample_root, out, [checkpoints["a"]])
    info = meta(out)
    assert (info["skipped"], info["predicted"], info["redone"]) == (len(images) - 1, 1, 1)
    assert not stale.exists() and check_probabilities(broken, images[4]["file_name"], info["class_names"], 256) is None
    assert (out / "submission.csv").read_bytes() == (reference / "submission.csv").read_bytes()

    # resuming with other settings is refused; --overwrite predicts everything again
    with pytest.raises(SystemExit, match="other settings.*prob_size"):
        run(predict_tool, sample_root, out, [checkpoints["a"]], "--prob-size", "128")
    run(predict_tool, sample_root, out, [checkpoints["a"]], "--prob-size", "128", "--overwrite")
    assert meta(out)["predicted"] == len(images)


def _json_with_bad_image(sample_root: Path, folder: Path) -> Path:
    """test.json's images plus one corrupt JPEG, in a copy of the folder layout."""
    data = json.loads((sample_root / "test.json").read_text())
    for image in data["images"]:
        target = folder / image["file_name"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(sample_root / image["file_name"], target)
    (folder / "broken").mkdir()
    (folder / "broken" / "0000.jpg").write_bytes(b"not a jpeg")
    data["images"].insert(2, {"id": 999, "file_name": "broken/0000.jpg", "height": 512, "width": 512})
    (folder / "test.json").write_text(json.dumps(data))
    return folder


def test_worker_processes_shard_and_merge(predict_tool, sample_root, checkpoints, tmp_path) -> None:
    """Two CPU worker processes (the multi-GPU code path): same files and CSV as one process; unreadable images
    counted across workers with --skip-bad."""
    root = _json_with_bad_image(sample_root, tmp_path / "data")
    single, workers = tmp_path / "single", tmp_path / "workers"
    run(predict_tool, root, single, [checkpoints["a"]], "--skip-bad", "--batch-size", "2")
    run(predict_tool, root, workers, [checkpoints["a"]], "--skip-bad", "--batch-size", "2", "--num-workers", "2")
    info = meta(workers)
    assert info["devices"] == ["cpu", "cpu"] and info["predicted"] == 6 and info["csv_rows"] == 6
    assert [entry["id"] for entry in info["bad_images"]] == [999] == [e["id"] for e in meta(single)["bad_images"]]
    for first, second in zip(npz_files(single), npz_files(workers), strict=True):
        assert first.relative_to(single) == second.relative_to(workers)
        np.testing.assert_allclose(load_probabilities(first)["probs"], load_probabilities(second)["probs"], atol=2e-3)
    rows_single, rows_workers = read_submission(single / "submission.csv"), read_submission(workers / "submission.csv")
    assert list(rows_single) == list(rows_workers) and "broken/0000.jpg" not in rows_workers
    agreement = np.mean([np.mean(rows_single[k] == rows_workers[k]) for k in rows_single])
    assert agreement > 0.999


def test_clear_errors(predict_tool, sample_root, checkpoints, tmp_path) -> None:
    with pytest.raises(SystemExit, match=r"wide\.pth does not fit this model"):
        run(predict_tool, sample_root, tmp_path / "e1", [checkpoints["wide"]])
    with pytest.raises(SystemExit, match=r"classes\.pth was trained for 5 classes, the config has 11"):
        run(predict_tool, sample_root, tmp_path / "e2", [checkpoints["a"], checkpoints["classes"]])
    with pytest.raises(SystemExit, match=r"checkpoint not found: .*missing\.pth"):
        run(predict_tool, sample_root, tmp_path / "e3", [tmp_path / "missing.pth"])
    with pytest.raises(SystemExit, match="one non-negative number per checkpoint"):
        run(predict_tool, sample_root, tmp_path / "e4", [checkpoints["a"]], "--weights-scale", "1", "2")

    root = _json_with_bad_image(sample_root, tmp_path / "data")
    with pytest.raises(SystemExit, match=r"image id 999 \(broken/0000\.jpg\): cannot read image .*broken/0000\.jpg"):
        run(predict_tool, root, tmp_path / "e5", [checkpoints["a"]], "--batch-size", "4")

    data = json.loads((sample_root / "test.json").read_text())
    (tmp_path / "empty.json").write_text(json.dumps({**data, "images": []}))
    with pytest.raises(SystemExit, match=r"empty\.json lists no images"):
        run(predict_tool, tmp_path, tmp_path / "e6", [checkpoints["a"]], json_name="empty.json")
    (tmp_path / "no_images.json").write_text(json.dumps({"categories": data["categories"]}))
    with pytest.raises(SystemExit, match=r"no_images\.json: missing the 'images' list"):
        run(predict_tool, tmp_path, tmp_path / "e7", [checkpoints["a"]], json_name="no_images.json")


def test_worker_failure_stops_the_run(predict_tool, sample_root, checkpoints, tmp_path) -> None:
    root = _json_with_bad_image(sample_root, tmp_path / "data")
    with pytest.raises(SystemExit, match=r"worker \d \(cpu\): ImageReadError: image id 999 \(broken/0000\.jpg\)"):
        run(predict_tool, root, tmp_path / "out", [checkpoints["a"]], "--num-workers", "2")


def test_benchmark_smoke_run(tmp_path) -> None:
    """benchmarks/predict.py at toy sizes prints one table row per setting."""
    command = [sys.executable, "benchmarks/predict.py", "--size", "64", "--images", "2", "--batch-sizes", "1", "2"]
    command += ["--threads", "1", "--device", "cpu", "TEST.AUG.MIN_SIZES", "(64, 96)", *TINY]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| cpu |")]
    assert len(rows) == 4 and "| yes | 4 | 2 | fp32 |" in rows[-1]
