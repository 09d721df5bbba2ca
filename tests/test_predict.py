"""tools/predict.py (mask2former/pipeline/predict.py) and the inference engine: TTA, batching, checkpoint ensembles,
resuming, worker processes (the same bytes as one process), --num-gpus on the CPU, the shared test-time view,
confinement to --out, non-finite numbers, errors. A tiny model on the CPU at small sizes (views of 64 and 96 px)
keeps the file fast."""

from __future__ import annotations

import functools
import hashlib
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
from conftest import REPO, TINY_MODEL

from mask2former.config import load_config
from mask2former.data import transforms as T
from mask2former.data.mapper import SemanticSegMapper
from mask2former.errors import UserError
from mask2former.inference import batch
from mask2former.inference.predictor import NonFiniteProbabilitiesError
from mask2former.inference.tta import inference_max_size, inference_views, predict_batch, predict_probabilities
from mask2former.io.images import read_image
from mask2former.io.probabilities import check_probabilities, load_probabilities, probability_path
from mask2former.io.submission import read_submission
from mask2former.modeling.build import build_model
from mask2former.pipeline import predict as pipeline
from mask2former.utils.output_folder import OWNER_FILE, OutputFolderError
from mask2former.utils.progress import Progress
from mask2former.utils.run_lock import OutputDirInUseError, OutputDirLock

TINY = TINY_MODEL
SIZES = ["INPUT.MIN_SIZE_TEST", "64", "TEST.AUG.MIN_SIZES", "(64, 96)", "MODEL.DEVICE", "cpu"]
CONFIG = str(REPO / "configs" / "quickstart.yaml")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_cfg(*extra: str):
    return load_config(CONFIG, TINY + SIZES + list(extra), freeze=False)


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


def argv_for(json_path: Path, out: Path, weights: list[Path], *flags: str) -> list[str]:
    argv = ["--config-file", CONFIG, "--weights", *map(str, weights), "--json", str(json_path)]
    return [*argv, "--out", str(out), "--overlays", "2", *flags, *TINY, *SIZES]


def run(sample_root: Path, out: Path, weights: list[Path], *flags: str, json_name: str = "test.json") -> Path:
    """The command in this process (UserErrors raised, not turned into an exit)."""
    return pipeline.predict(pipeline.parse_args(argv_for(sample_root / json_name, out, weights, *flags)))


def npz_files(out: Path) -> list[Path]:
    return sorted((out / "probs").rglob("*.npz"))


def meta(out: Path) -> dict:
    return json.loads((out / "meta.json").read_text())


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under root, by relative path."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def copy_test_images(sample_root: Path, folder: Path) -> dict:
    """test.json and its images copied under folder; returns the json's data."""
    data = json.loads((sample_root / "test.json").read_text())
    for image in data["images"]:
        target = folder / image["file_name"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(sample_root / image["file_name"], target)
    return data


def test_help_and_argument_split(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        pipeline.parse_args(["--help"])
    assert exit_info.value.code == 0 and "--weights-scale" in capsys.readouterr().out
    args = pipeline.parse_args(
        ["--config-file", "c", "--json", "j", "--out", "o", "--weights", "a", "b", "INPUT.MIN_SIZE_TEST", "64"]
    )
    assert args.weights == ["a", "b"] and args.opts == ["INPUT.MIN_SIZE_TEST", "64"]
    args = pipeline.parse_args(["--config-file", "c", "--json", "j", "--out", "o", "--weights", "a"])
    assert args.weights == ["a"] and args.opts == [] and args.weights_scale is None
    base = ["--config-file", "c", "--json", "j", "--out", "o", "--weights", "a"]
    with pytest.raises(pipeline.PredictError, match=r"--weights-scale takes numbers, got x"):
        pipeline.parse_args([*base, "--weights-scale", "x"])


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


@pytest.mark.slow
def test_predict_single_tta_batched_and_ensemble(sample_root, checkpoints, tmp_path, capsys) -> None:
    images = json.loads((sample_root / "test.json").read_text())["images"]
    plain = tmp_path / "plain"
    csv = run(sample_root, plain, [checkpoints["a"]])
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
    run(sample_root, one, [checkpoints["a"]], "--tta")
    run(sample_root, four, [checkpoints["a"]], "--tta", "--batch-size", "4")
    assert meta(four)["views"] == [[64, False], [64, True], [96, False], [96, True]]
    for first, second in zip(npz_files(one), npz_files(four), strict=True):
        np.testing.assert_allclose(load_probabilities(first)["probs"], load_probabilities(second)["probs"], atol=2e-3)

    # weighted checkpoint ensemble = weighted mean of the single-checkpoint predictions (full-size maps)
    runs = {}
    for name, weights, scale in [("a", ["a"], []), ("b", ["b"], []), ("ab", ["a", "b"], ["3", "1"])]:
        runs[name] = tmp_path / f"full_{name}"
        flags = ["--prob-size", "0", "--batch-size", "3"] + (["--weights-scale", *scale] if scale else [])
        run(sample_root, runs[name], [checkpoints[w] for w in weights], *flags)
    assert meta(runs["ab"])["weights_scale"] == [0.75, 0.25]
    for image in images[:2]:
        a, b, ab = (
            load_probabilities(probability_path(runs[k], image["file_name"]))["probs"] for k in ("a", "b", "ab")
        )
        assert ab.shape == (11, image["height"], image["width"])
        np.testing.assert_allclose(ab, 0.75 * a + 0.25 * b, atol=2e-3)


@pytest.mark.slow
def test_interrupted_run_resumes(sample_root, checkpoints, tmp_path, monkeypatch) -> None:
    images = json.loads((sample_root / "test.json").read_text())["images"]
    reference = tmp_path / "reference"
    run(sample_root, reference, [checkpoints["a"]], "--batch-size", "2")

    saved, lock = [], threading.Lock()
    real_save = batch.save_probabilities

    def failing_save(*args, **kwargs):  # the npz files are written in threads
        with lock:
            if len(saved) >= 3:
                raise RuntimeError("killed")
            saved.append(args[1])
        return real_save(*args, **kwargs)

    out = tmp_path / "resumed"
    monkeypatch.setattr(batch, "save_probabilities", failing_save)
    with pytest.raises(RuntimeError, match="killed"):
        run(sample_root, out, [checkpoints["a"]], "--batch-size", "2")
    monkeypatch.setattr(batch, "save_probabilities", real_save)
    assert len(npz_files(out)) == 3 and not meta(out)["complete"] and not (out / "submission.csv").exists()

    run(sample_root, out, [checkpoints["a"]], "--batch-size", "2")
    info = meta(out)
    assert (info["skipped"], info["predicted"], info["redone"]) == (3, len(images) - 3, 0)
    assert (out / "submission.csv").read_bytes() == (reference / "submission.csv").read_bytes()

    # a truncated npz (and a temporary file of a killed write) from a killed run: detected, predicted again
    broken = probability_path(out, images[4]["file_name"])
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])
    assert check_probabilities(broken) is not None
    stale = broken.with_name(f".{broken.name}.abc123.tmp")
    stale.write_bytes(b"partial")
    run(sample_root, out, [checkpoints["a"]])
    info = meta(out)
    assert (info["skipped"], info["predicted"], info["redone"]) == (len(images) - 1, 1, 1)
    assert not stale.exists() and check_probabilities(broken, images[4]["file_name"], info["class_names"], 256) is None
    assert (out / "submission.csv").read_bytes() == (reference / "submission.csv").read_bytes()

    # resuming with other settings is refused; --overwrite predicts everything again
    with pytest.raises(OutputFolderError, match="other settings.*prob_size: 256 before, 128 now"):
        run(sample_root, out, [checkpoints["a"]], "--prob-size", "128")
    run(sample_root, out, [checkpoints["a"]], "--prob-size", "128", "--overwrite")
    assert meta(out)["predicted"] == len(images)


def _json_with_bad_image(sample_root: Path, folder: Path, keep: int | None = None) -> Path:
    """test.json's images (the first `keep`) plus one corrupt JPEG third, in a copy of the folder layout."""
    data = copy_test_images(sample_root, folder)
    data["images"] = data["images"][:keep]
    (folder / "broken").mkdir()
    (folder / "broken" / "0000.jpg").write_bytes(b"not a jpeg")
    data["images"].insert(2, {"id": 999, "file_name": "broken/0000.jpg", "height": 512, "width": 512})
    (folder / "test.json").write_text(json.dumps(data))
    return folder


# meta.json fields that say how a run went (its processes, its times), not what it made
RUN_FIELDS = ("devices", "seconds", "images_per_second")


def made_files(out: Path) -> tuple[dict[str, bytes], dict]:
    """Every file under OUT by relative path (log.txt and the owner record, whose lines carry times, left out) and
    meta.json without RUN_FIELDS."""
    files = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert {"meta.json", "log.txt", OWNER_FILE} <= set(files), sorted(files)
    del files["log.txt"], files[OWNER_FILE]
    info = json.loads(files.pop("meta.json"))
    return files, {key: value for key, value in info.items() if key not in RUN_FIELDS}


def assert_same_files(single: Path, other: Path) -> None:
    (files, info), (other_files, other_info) = made_files(single), made_files(other)
    assert sorted(files) == sorted(other_files)
    differ = [name for name in files if files[name] != other_files[name]]
    assert not differ, f"{other} differs from {single} in {differ}"
    assert info == other_info


@pytest.mark.parametrize("tta", [False, True])
@pytest.mark.slow
def test_worker_processes_give_the_same_files(sample_root, checkpoints, tmp_path, tta) -> None:
    """Two CPU worker processes, by --num-workers 2 and by --num-gpus 2 (MODEL.DEVICE cpu: as on a machine without
    a GPU): 5 readable images and 2 unreadable ones in batches of 2 (uneven shards; worker 0 meets the second bad
    image, worker 1 the first). Every file under OUT equals one process's byte for byte (npz files, CSV, overlays);
    meta.json too but for RUN_FIELDS, its unreadable images in the json's order. One torch thread per process in
    every run: CPU float math depends on the thread count (predict's docstring)."""
    root = _json_with_bad_image(sample_root, tmp_path / "data", keep=5)
    data = json.loads((root / "test.json").read_text())
    (root / "broken" / "0001.jpg").write_bytes(b"not a jpeg either")
    data["images"].insert(5, {"id": 998, "file_name": "broken/0001.jpg", "height": 512, "width": 512})
    (root / "test.json").write_text(json.dumps(data))  # batches: [0 1] [bad 2] [3 bad] [4]
    flags = ["--skip-bad", "--batch-size", "2", *(["--tta"] if tta else []), "--overlays", "5", "--threads", "1"]
    single = tmp_path / "single"
    run(root, single, [checkpoints["a"]], *flags)
    info = meta(single)
    assert (info["predicted"], info["csv_rows"], info["devices"], info["tta"], info["threads"]) == (
        5,
        5,
        ["cpu"],
        tta,
        1,
    )
    assert [entry["id"] for entry in info["bad_images"]] == [999, 998]
    assert len(npz_files(single)) == 5 and len(list((single / "overlays").rglob("*.png"))) == 5
    for name, processes in [("workers", ["--num-workers", "2"]), ("gpus", ["--num-gpus", "2"])]:
        run(root, tmp_path / name, [checkpoints["a"]], *flags, *processes)
        assert meta(tmp_path / name)["devices"] == ["cpu", "cpu"]
        assert_same_files(single, tmp_path / name)


def test_threads_per_process() -> None:
    """--threads as given; else torch's default in one process, the cores shared out between workers."""
    assert pipeline.threads_per_process(3, 1) == pipeline.threads_per_process(3, 4) == 3
    assert pipeline.threads_per_process(0, 1) == torch.get_num_threads()
    assert pipeline.threads_per_process(0, 2) == max(1, pipeline.usable_cpus() // 2)
    assert pipeline.threads_per_process(0, 10**6) == 1


def test_shards_are_whole_batches() -> None:
    """Worker r gets batches r, r+N, ...: re-batched, each worker forms exactly the one-process run's batches."""
    images = [{"file_name": str(index)} for index in range(7)]
    shards = pipeline.shard_images(images, 2, 3)
    assert [[image["file_name"] for image in shard] for shard in shards] == [["0", "1", "2", "6"], ["3", "4", "5"]]
    rebatched = [batch for shard in shards for batch in pipeline.batches_of(shard, 3)]
    assert sorted(rebatched, key=lambda batch: batch[0]["file_name"]) == pipeline.batches_of(images, 3)
    assert pipeline.shard_images(images[:2], 3, 1) == [[images[0]], [images[1]], []]


def _devices(monkeypatch, gpus: int, *flags: str, model_device: str = "auto") -> list[str]:
    """resolve_devices for a command line on a machine with `gpus` GPUs."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    args = pipeline.parse_args(["--config-file", "c", "--json", "j", "--out", "o", "--weights", "a", *flags])
    return pipeline.resolve_devices(args, model_device)


def test_num_gpus_means_processes_on_gpus_or_the_cpu(monkeypatch) -> None:
    """--num-gpus N as train_net.py reads it: N GPUs when there are, N CPU processes without a GPU or with device
    cpu; 0: the CPU in this process; too few GPUs, or cuda without one, a clear error."""
    assert _devices(monkeypatch, 0, "--num-gpus", "2") == ["cpu", "cpu"]
    assert _devices(monkeypatch, 0, "--num-gpus", "1") == ["cpu"]
    assert _devices(monkeypatch, 0, "--num-gpus", "0") == _devices(monkeypatch, 2, "--num-gpus", "0") == ["cpu"]
    assert _devices(monkeypatch, 2, "--num-gpus", "2") == ["cuda:0", "cuda:1"]
    assert _devices(monkeypatch, 2, "--num-gpus", "2", "--device", "cpu") == ["cpu", "cpu"]
    assert _devices(monkeypatch, 2, "--num-gpus", "3", model_device="cpu") == ["cpu"] * 3
    assert _devices(monkeypatch, 2, "--num-gpus", "2", model_device="cuda") == ["cuda:0", "cuda:1"]
    assert _devices(monkeypatch, 0, "--num-workers", "2", "--device", "cpu") == ["cpu", "cpu"]
    with pytest.raises(pipeline.PredictError, match=r"^--num-gpus 4: 2 GPU\(s\) available$"):
        _devices(monkeypatch, 2, "--num-gpus", "4")
    with pytest.raises(pipeline.PredictError, match=r"--num-gpus 2: 0 GPU\(s\) available \(--device cpu: "):
        _devices(monkeypatch, 0, "--num-gpus", "2", "--device", "cuda")
    with pytest.raises(pipeline.PredictError, match=r"device 'cuda:1': --num-gpus runs on cuda:0\.\.1; .*--devices"):
        _devices(monkeypatch, 2, "--num-gpus", "2", "--device", "cuda:1")
    with pytest.raises(pipeline.PredictError, match=r"--num-gpus -1: give a process count >= 0"):
        _devices(monkeypatch, 2, "--num-gpus", "-1")
    with pytest.raises(pipeline.PredictError, match=r"unknown device 'gpu7'"):
        _devices(monkeypatch, 0, "--num-gpus", "2", "--device", "gpu7")
    with pytest.raises(pipeline.PredictError, match="use one of --devices, --num-gpus and --num-workers"):
        _devices(monkeypatch, 0, "--num-gpus", "2", "--num-workers", "2")


def test_clear_errors(sample_root, checkpoints, tmp_path) -> None:
    """Each bad input is a UserError (one line from the tool) naming the file and the item; no input changes."""
    before = tree_hashes(sample_root), tree_hashes(checkpoints["a"].parent)
    with pytest.raises(UserError, match=r"wide\.pth does not fit this model") as refused:
        run(sample_root, tmp_path / "e1", [checkpoints["wide"]])
    assert str(refused.value).endswith(
        "give the config the checkpoint was trained with (its run's config.yaml, or the run folder)."
    ) and "LOAD_STRICT" not in str(refused.value)
    with pytest.raises(UserError, match=r"classes\.pth was trained for 5 classes, the config has 11"):
        run(sample_root, tmp_path / "e2", [checkpoints["a"], checkpoints["classes"]])
    with pytest.raises(UserError, match=r"checkpoint not found: .*missing\.pth"):
        run(sample_root, tmp_path / "e3", [tmp_path / "missing.pth"])
    with pytest.raises(UserError, match="one non-negative number per checkpoint"):
        run(sample_root, tmp_path / "e4", [checkpoints["a"]], "--weights-scale", "1", "2")
    with pytest.raises(UserError, match=r"unknown device 'gpu7' \(cpu, cuda or cuda:N\)"):
        run(sample_root, tmp_path / "e4", [checkpoints["a"]], "--device", "gpu7")
    (tmp_path / "a_file").write_text("mine")
    with pytest.raises(UserError, match=r"--out .*a_file is a file: give a folder"):
        run(sample_root, tmp_path / "a_file", [checkpoints["a"]])
    assert not (tmp_path / "e3").exists() and not (tmp_path / "e4").exists()  # refused before writing anything
    assert (tmp_path / "a_file").read_text() == "mine"

    root = _json_with_bad_image(sample_root, tmp_path / "data")
    with pytest.raises(UserError, match=r"image id 999 \(broken/0000\.jpg\): cannot read image .*broken/0000\.jpg"):
        run(root, tmp_path / "e5", [checkpoints["a"]], "--batch-size", "4")
    assert "image id 999" in (tmp_path / "e5" / "log.txt").read_text()  # the reason is in the run's log too

    data = json.loads((sample_root / "test.json").read_text())
    (tmp_path / "empty.json").write_text(json.dumps({**data, "images": []}))
    with pytest.raises(UserError, match=r"empty\.json lists no images"):
        run(tmp_path, tmp_path / "e6", [checkpoints["a"]], json_name="empty.json")
    (tmp_path / "no_images.json").write_text(json.dumps({"categories": data["categories"]}))
    with pytest.raises(UserError, match=r"no_images\.json: missing the 'images' list"):
        run(tmp_path, tmp_path / "e7", [checkpoints["a"]], json_name="no_images.json")
    (tmp_path / "three.json").write_text(json.dumps({**data, "categories": data["categories"][:3]}))
    with pytest.raises(UserError, match=r"three\.json has 4 classes \(3 categories and background\), the model 11"):
        run(tmp_path, tmp_path / "e8", [checkpoints["a"]], json_name="three.json")
    assert (tree_hashes(sample_root), tree_hashes(checkpoints["a"].parent)) == before


@pytest.mark.slow
def test_worker_failure_stops_the_run(sample_root, checkpoints, tmp_path) -> None:
    root = _json_with_bad_image(sample_root, tmp_path / "data")
    with pytest.raises(UserError, match=r"worker \d \(cpu\): ImageReadError: image id 999 \(broken/0000\.jpg\)"):
        run(root, tmp_path / "out", [checkpoints["a"]], "--num-workers", "2")


# ---- the test-time view is the validation mapper's ---------------------------------------------------------------


class RecordingModel(torch.nn.Module):
    """Stands in for the model: keeps the inputs predict_batch hands it and returns uniform scores."""

    size_divisibility = 1

    def __init__(self) -> None:
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.inputs: list[dict] = []

    def forward(self, batched_inputs: list[dict]) -> list[dict]:
        self.inputs += batched_inputs
        return [{"sem_seg": torch.ones(3, item["height"], item["width"])} for item in batched_inputs]


@pytest.mark.parametrize("image_format", ["RGB", "BGR"])
def test_prediction_view_equals_validation_mapper(tmp_path, image_format) -> None:
    """What predict feeds the model for an image (no TTA) is, pixel for pixel, what the validation mapper gives for
    it: one function (transforms.resize_for_test) resizes both; sizes cover upscaling, the long-side cap and none."""
    rng = np.random.default_rng(0)
    cases = [((48, 64), "64", "1333"), ((100, 37), "64", "80"), ((90, 90), "0", "1333"), ((64, 96), "64", "1333")]
    for (height, width), short_side, max_size in cases:
        path = tmp_path / f"{height}x{width}.png"
        cv2.imwrite(str(path), rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        label_path = tmp_path / f"{height}x{width}_label.png"
        cv2.imwrite(str(label_path), rng.integers(0, 11, (height, width), dtype=np.uint8))
        cfg = tiny_cfg("INPUT.MIN_SIZE_TEST", short_side, "INPUT.MAX_SIZE_TEST", max_size, "INPUT.FORMAT", image_format)
        mapped = SemanticSegMapper.from_config(cfg, is_train=False)(
            {"file_name": str(path), "sem_seg_file_name": str(label_path), "height": height, "width": width}
        )
        model = RecordingModel()
        predict_batch(model, [read_image(str(path))], inference_views(cfg), inference_max_size(cfg), image_format)
        (seen,) = model.inputs
        assert seen["image"].dtype == mapped["image"].dtype == torch.uint8
        assert torch.equal(seen["image"], mapped["image"]), (height, width, short_side, max_size)
        expected_hw = T.shape_for_test(height, width, int(short_side), int(max_size))
        assert tuple(seen["image"].shape[1:]) == expected_hw == tuple(mapped["sem_seg"].shape)
        assert (seen["height"], seen["width"]) == (height, width)


# ---- nothing is written outside --out, no input is replaced -------------------------------------------------------


@pytest.mark.parametrize("kind", ["absolute", "climbing", "absolute_png"])
def test_unsafe_file_names_are_refused(sample_root, checkpoints, tmp_path, kind) -> None:
    """A json whose file_name is absolute, climbs out with '..', or is an absolute .png (whose overlay used to
    overwrite the photo): refused naming the json and the image; nothing written anywhere, no input changed."""
    data = copy_test_images(sample_root, tmp_path / "data")
    photos = tmp_path / "photos"
    photos.mkdir()
    photo = cv2.imread(str(sample_root / data["images"][0]["file_name"]))
    cv2.imwrite(str(photos / "holiday.jpg"), photo)
    cv2.imwrite(str(photos / "holiday.png"), photo)
    cv2.imwrite(str(tmp_path / "outside.jpg"), photo)
    names = {"absolute": photos / "holiday.jpg", "climbing": "../outside.jpg", "absolute_png": photos / "holiday.png"}
    name = str(names[kind])
    data["images"].append({"id": 77, "file_name": name, "height": photo.shape[0], "width": photo.shape[1]})
    json_path = tmp_path / "data" / "test.json"
    json_path.write_text(json.dumps(data))
    before = tree_hashes(tmp_path), tree_hashes(checkpoints["a"].parent)
    out = tmp_path / "out"
    with pytest.raises(UserError) as error:
        pipeline.predict(pipeline.parse_args(argv_for(json_path, out, [checkpoints["a"]])))
    message = str(error.value)
    assert str(json_path) in message and repr(name) in message and "77" in message, message
    assert (tree_hashes(tmp_path), tree_hashes(checkpoints["a"].parent)) == before and not out.exists()


@pytest.mark.parametrize("collision", ["overlay_is_an_image", "json_is_meta"])
def test_out_that_would_replace_an_input_is_refused(sample_root, checkpoints, tmp_path, collision) -> None:
    """--out chosen so that an overlay would land on an input image (PNG images in OUT/overlays), or so that
    meta.json is the --json file: refused before anything is written, naming both."""
    out = tmp_path / "out"
    if collision == "overlay_is_an_image":
        folder = out / "overlays"  # the user's PNGs live where the overlays would go
        data = copy_test_images(sample_root, tmp_path / "jpgs")
        for image in data["images"]:
            png = str(Path(image["file_name"]).with_suffix(".png"))
            (folder / png).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(folder / png), cv2.imread(str(tmp_path / "jpgs" / image["file_name"])))
            image["file_name"] = png
        json_path = folder / "test.json"
        expected = r"the overlay of image id \d+ would be written to .*overlays/.*\.png, which is image id \d+"
    else:
        data = copy_test_images(sample_root, out)
        json_path = out / "meta.json"
        expected = r"meta\.json would be written to .*out/meta\.json, which is the --json file"
    json_path.write_text(json.dumps(data))
    before = tree_hashes(tmp_path)
    with pytest.raises(pipeline.PredictError, match=expected + ".*choose another --out"):
        pipeline.predict(pipeline.parse_args(argv_for(json_path, out, [checkpoints["a"]])))
    assert tree_hashes(tmp_path) == before


# ---- numbers that cannot be trusted are errors ---------------------------------------------------------------------


def test_non_finite_probabilities_are_an_error(sample_root, checkpoints, tmp_path, monkeypatch) -> None:
    """A model whose weights turn NaN after loading (the checkpoint itself was fine): an error naming the image;
    no npz, no CSV, meta.json not complete; no input changed. A checkpoint holding NaN is refused at load."""
    state = torch.load(checkpoints["a"], weights_only=True)["model"]
    state["sem_seg_head.predictor.class_embed.bias"][0] = float("nan")
    torch.save({"model": state}, tmp_path / "nan.pth")
    with pytest.raises(UserError, match=r"nan\.pth: tensor sem_seg_head\.predictor\.class_embed\.bias holds NaN"):
        run(sample_root, tmp_path / "nan_ckpt", [tmp_path / "nan.pth"])
    assert npz_files(tmp_path / "nan_ckpt") == [] and not (tmp_path / "nan_ckpt" / "submission.csv").exists()

    real_load = batch.load_prediction_model

    def nan_model(*args, **kwargs):
        model = real_load(*args, **kwargs)
        with torch.no_grad():
            dict(model.named_parameters())["sem_seg_head.predictor.class_embed.bias"].fill_(float("nan"))
        return model

    monkeypatch.setattr(batch, "load_prediction_model", nan_model)
    before = tree_hashes(sample_root)
    first = json.loads((sample_root / "test.json").read_text())["images"][0]
    out = tmp_path / "out"
    pattern = rf"image id {first['id']} \({first['file_name']}\): the model gave \d+ non-finite \(NaN/Inf\)"
    with pytest.raises(NonFiniteProbabilitiesError, match=pattern):
        run(sample_root, out, [checkpoints["a"]])
    assert npz_files(out) == [] and not (out / "submission.csv").exists() and not meta(out)["complete"]
    assert tree_hashes(sample_root) == before


# ---- the command line: one line and status 2 for a user error, log lines (no '\r') in a pipe ----------------------


@pytest.mark.slow
@pytest.mark.subprocess
def test_tool_user_error_is_one_line(sample_root, tmp_path) -> None:
    missing = tmp_path / "missing.pth"
    out = tmp_path / "out"
    before = tree_hashes(sample_root)
    command = [sys.executable, "tools/predict.py", *argv_for(sample_root / "test.json", out, [missing])]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert lines == [f"predict.py: checkpoint not found: {missing}"], result.stderr
    assert not out.exists() and tree_hashes(sample_root) == before


@pytest.mark.slow
@pytest.mark.subprocess
def test_piped_run_logs_progress_lines(sample_root, checkpoints, tmp_path, monkeypatch) -> None:
    """Into a pipe or a file, progress is log lines with the rate and an ETA, never carriage returns: in a
    subprocess (its stderr a pipe) and in this process with a log line after every image."""
    out = tmp_path / "piped"
    command = [sys.executable, "tools/predict.py", *argv_for(sample_root / "test.json", out, [checkpoints["a"]])]
    result = subprocess.run(command, cwd=REPO, capture_output=True, timeout=300)
    assert result.returncode == 0, result.stderr.decode()
    assert b"\r" not in result.stderr and b"\r" not in (out / "log.txt").read_bytes()
    assert len(read_submission(out / "submission.csv")) == len(npz_files(out)) > 0

    monkeypatch.setattr(pipeline, "Progress", functools.partial(Progress, interval=0.0))
    run(sample_root, tmp_path / "lines", [checkpoints["a"]], "--overlays", "0")
    log = (tmp_path / "lines" / "log.txt").read_text()
    progress = [line for line in log.splitlines() if "predict: " in line and "img/s" in line]
    assert len(progress) == len(npz_files(tmp_path / "lines")) + 1 and progress[-1].endswith("(finished)")
    assert "predict: 1/6 img (17%)" in progress[0] and "ETA" in progress[0] and "\r" not in log


@pytest.mark.slow
@pytest.mark.subprocess
def test_benchmark_smoke_run(tmp_path) -> None:
    """benchmarks/predict.py at toy sizes prints one table row per setting."""
    command = [sys.executable, "benchmarks/predict.py", "--size", "64", "--images", "2", "--batch-sizes", "1", "2"]
    command += ["--threads", "1", "--device", "cpu", "TEST.AUG.MIN_SIZES", "(64, 96)", *TINY]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| cpu |")]
    assert len(rows) == 4 and "| yes | 4 | 2 | fp32 |" in rows[-1]


def test_a_second_run_on_the_same_out_is_refused(sample_root, checkpoints, tmp_path) -> None:
    """One run per --out: while another live run holds OUT/.lock, predict stops before writing anything."""
    out = tmp_path / "busy"
    with OutputDirLock(out, "--out"), pytest.raises(OutputDirInUseError, match=r"--out .* is in use by another run"):
        run(sample_root, out, [checkpoints["a"]])
    assert list(out.iterdir()) == []  # nothing written; the holder's lock file went with it
