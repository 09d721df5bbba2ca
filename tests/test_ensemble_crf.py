"""mask2former/pipeline/voting.py and crf.py (votes, tie rule, consensus, DenseCRF),
mask2former/io/probabilities.py (the one reader and writer of probability files) and the ensemble_crf / tune_crf
commands (mask2former/pipeline/, and tools/ as a
subprocess) end to end on small synthetic prediction folders and CSVs made for the tiny COCO set."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import REPO, tree_hashes, write_tiny_coco

from mask2former.data.coco_semantic import class_names_from_categories, load_sem_seg_dataset
from mask2former.errors import UserError
from mask2former.evaluation.sem_seg import confusion_matrix, metrics_from_confusion
from mask2former.io.files import UnsafePathError
from mask2former.io.images import read_label
from mask2former.io.probabilities import (
    ProbabilityFileError,
    check_probabilities,
    load_label_map,
    load_probabilities,
    probability_path,
    save_probabilities,
)
from mask2former.io.submission import check_submission, downsample_label_map, read_submission, write_submission
from mask2former.pipeline import ensemble_crf
from mask2former.pipeline.crf import dense_crf
from mask2former.pipeline.ensemble_crf import EnsembleOptions
from mask2former.pipeline.tune_crf import TuneOptions
from mask2former.pipeline.tune_crf import run as tune_crf
from mask2former.pipeline.voting import (
    EnsembleError,
    consensus_mask,
    consensus_write_back,
    hard_vote,
    resize_probabilities,
    soft_vote,
    vote_shares,
)
from mask2former.utils.output_folder import OutputFolderError


def random_probs(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    p = rng.random(shape).astype(np.float32)
    return p / p.sum(axis=0, keepdims=True)


# ---- votes, ties, consensus ---------------------------------------------------------------------------------


def test_soft_vote_is_the_weighted_mean() -> None:
    rng = np.random.default_rng(0)
    probs = [random_probs(rng, (4, 5, 6)) for _ in range(3)]
    np.testing.assert_allclose(soft_vote(probs, [2, 1, 1]), (2 * probs[0] + probs[1] + probs[2]) / 4, atol=1e-6)
    np.testing.assert_allclose(soft_vote(probs), sum(probs) / 3, atol=1e-6)
    np.testing.assert_allclose(soft_vote(probs, [0, 5, 0]), probs[1], atol=1e-6)
    np.testing.assert_allclose(soft_vote(probs, [3, 1, 2]).sum(axis=0), 1.0, atol=1e-5)
    with pytest.raises(EnsembleError, match="2 weight"):
        soft_vote(probs, [1, 1])
    with pytest.raises(EnsembleError, match="non-negative"):
        soft_vote(probs, [1, -1, 1])
    with pytest.raises(EnsembleError, match=r"probability map 1 has shape \(4, 5, 5\)"):
        soft_vote([probs[0], probs[1][:, :, :5]])


def test_hard_vote_weighted_majority_and_first_listed_wins_ties() -> None:
    a = np.array([[1, 1, 3, 0]])
    b = np.array([[2, 2, 1, 0]])
    c = np.array([[2, 3, 2, 0]])
    # equal weights: pixel 0 majority 2; pixels 1 and 2 three-way ties -> the first input's class
    assert hard_vote([a, b, c], num_classes=4).tolist() == [[2, 1, 3, 0]]
    assert hard_vote([b, a, c], num_classes=4).tolist() == [[2, 2, 1, 0]]
    assert hard_vote([c, b, a], num_classes=4).tolist() == [[2, 3, 2, 0]]
    # weights: a alone outweighs b + c at pixel 0; a weight equal to two others' sum is a tie -> a
    assert hard_vote([a, b, c], [3, 1, 1], num_classes=4).tolist() == [[1, 1, 3, 0]]
    assert hard_vote([a, b, c], [2, 1, 1], num_classes=4).tolist() == [[1, 1, 3, 0]]
    assert hard_vote([b, a, c], [1, 2, 1], num_classes=4).tolist() == [[2, 1, 3, 0]]
    # 0.3 vs 0.1 + 0.2 differ in the last bits of a float: still a tie, still the first input
    assert hard_vote([a, b, b], [0.3, 0.1, 0.2], num_classes=4).tolist() == [[1, 1, 3, 0]]
    # a zero-weight input neither votes nor breaks ties: b and c tie at pixel 2 -> b's class
    assert hard_vote([a, b, c], [0, 1, 1], num_classes=4).tolist() == [[2, 2, 1, 0]]
    shares = vote_shares([a, b, c], [2, 1, 1], 4)
    np.testing.assert_allclose(shares[:, 0, 0], [0, 0.5, 0.5, 0])
    np.testing.assert_allclose(shares.sum(axis=0), 1.0)
    with pytest.raises(EnsembleError, match=r"\[0, 3\)"):
        hard_vote([a, b], num_classes=3)


def test_hard_vote_ties_on_random_maps_follow_the_first_listed_rule() -> None:
    rng = np.random.default_rng(1)
    labels = [rng.integers(0, 3, (20, 20)) for _ in range(4)]
    weights = [1.0, 2.0, 1.0, 2.0]
    voted = hard_vote(labels, weights, num_classes=3)
    for y, x in np.ndindex(20, 20):
        score = np.zeros(3)
        for w, label in zip(weights, labels, strict=True):
            score[label[y, x]] += w
        tied = set(np.flatnonzero(score == score.max()))
        expected = next(label[y, x] for label in labels if label[y, x] in tied)
        assert voted[y, x] == expected


def test_consensus_keeps_agreed_pixels_and_only_those() -> None:
    rng = np.random.default_rng(2)
    labels = [rng.integers(0, 3, (16, 16)) for _ in range(3)]
    labels[1][:4] = labels[2][:4] = labels[0][:4]  # agreement on the top rows at least
    refined = rng.integers(0, 3, (16, 16))
    agreed = (labels[0] == labels[1]) & (labels[1] == labels[2])
    np.testing.assert_array_equal(consensus_mask(labels), agreed)
    out = consensus_write_back(refined, labels)
    np.testing.assert_array_equal(out[agreed], labels[0][agreed])
    np.testing.assert_array_equal(out[~agreed], refined[~agreed])
    assert agreed[:4].all() and (~agreed).sum() > 50


# ---- DenseCRF -----------------------------------------------------------------------------------------------


def two_region_case(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A dark and a bright region split by a slanted edge; noisy probabilities (about 30% of pixels wrong)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:48, :64]
    truth = (xx > 24 + yy // 3).astype(np.int64)
    image = np.where(truth[..., None] == 1, 190, 60).astype(np.int16) + rng.integers(-12, 13, (48, 64, 3))
    image = np.clip(image, 0, 255).astype(np.uint8)
    flipped = rng.random(truth.shape) < 0.3
    noisy = np.where(flipped, 1 - truth, truth)
    confidence = rng.uniform(0.55, 0.8, truth.shape)
    probs = np.stack(
        [np.where(noisy == 0, confidence, 1 - confidence), np.where(noisy == 1, confidence, 1 - confidence)]
    )
    return truth, image, probs.astype(np.float32)


def test_dense_crf_smooths_noisy_probabilities_toward_image_edges() -> None:
    truth, image, probs = two_region_case()
    before = (probs.argmax(axis=0) == truth).mean()
    refined = dense_crf(probs, image, iters=5)
    assert refined.shape == probs.shape and refined.dtype == np.float32
    np.testing.assert_allclose(refined.sum(axis=0), 1.0, atol=1e-4)
    after = (refined.argmax(axis=0) == truth).mean()
    assert before < 0.75 and after > 0.97 and after > before
    labels = dense_crf(probs, image, return_labels=True)
    np.testing.assert_array_equal(labels, refined.argmax(axis=0))
    # the image is resized to the maps: a 2x image gives nearly the same labels
    big = cv2.resize(image, (128, 96), interpolation=cv2.INTER_NEAREST)
    assert (dense_crf(probs, big, return_labels=True) == truth).mean() > 0.97
    np.testing.assert_allclose(dense_crf(probs, image, iters=0), probs, atol=1e-5)


def test_crf_erases_a_small_object_that_consensus_restores() -> None:
    image = np.full((40, 40, 3), 120, np.uint8)  # no colour edge around the object: the CRF sees noise
    probs = np.stack([np.full((40, 40), 0.9), np.full((40, 40), 0.1)]).astype(np.float32)
    probs[:, 20:22, 20:22] = np.array([0.35, 0.65])[:, None, None]
    inputs = [probs.argmax(axis=0)] * 3
    crf = dense_crf(probs, image, return_labels=True)
    assert crf.sum() == 0
    final = consensus_write_back(crf, inputs)
    assert final[20:22, 20:22].all() and final.sum() == 4
    image[20:22, 20:22] = 220  # with a colour edge the bilateral kernel keeps it
    assert dense_crf(probs, image, return_labels=True).sum() == 4


def test_resize_probabilities_and_crf_argument_checks() -> None:
    rng = np.random.default_rng(3)
    probs = random_probs(rng, (3, 8, 10))
    resized = resize_probabilities(probs, 16, 20)
    assert resized.shape == (3, 16, 20)
    np.testing.assert_allclose(resized.sum(axis=0), 1.0, atol=1e-5)
    with pytest.raises(EnsembleError, match="uint8"):
        dense_crf(probs, np.zeros((8, 10, 3), np.float32))
    with pytest.raises(EnsembleError, match="sxy"):
        dense_crf(probs, np.zeros((8, 10, 3), np.uint8), sxy=0)


# ---- the probability-file reader and writer -----------------------------------------------------------------


def write_raw_npz(path: Path, probs: np.ndarray, file_name: str = "a.jpg", class_names: list | None = None) -> Path:
    """A probability file written without save_probabilities' checks (as a foreign writer, an older version or a
    diverging model's run could)."""
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        probs=probs.astype(np.float16),
        file_name=np.array(file_name),
        image_id=np.array(1),
        height=np.array(probs.shape[1]),
        width=np.array(probs.shape[2]),
        class_names=np.array(class_names or [f"c{k}" for k in range(probs.shape[0])]),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return path


def test_reader_refuses_maps_that_are_not_probabilities_naming_the_file(tmp_path: Path) -> None:
    probs = random_probs(np.random.default_rng(4), (3, 8, 10))
    good = write_raw_npz(tmp_path / "good.npz", probs)
    assert load_probabilities(good)["probs"].shape == (3, 8, 10) and check_probabilities(good) is None
    cases = {
        "nan": (np.where(np.arange(10) == 3, np.nan, probs), "NaN or infinite"),
        "inf": (np.where(np.arange(10) == 0, np.inf, probs), "NaN or infinite"),
        "negative": (probs - 0.5, "negative values"),
        "halves": (probs / 2, r"sum to 0\.5\.\.0\.5 over the 3 classes, not 1"),
    }
    for name, (bad, message) in cases.items():
        path = write_raw_npz(tmp_path / f"{name}.npz", bad)
        pattern = rf"{path} \(image a.jpg\): probabilities (hold |){message}.*predict it again"
        for read in (load_probabilities, load_label_map):  # the viewer reads label maps through load_label_map
            with pytest.raises(ProbabilityFileError, match=pattern):
                read(path)
        assert isinstance(ProbabilityFileError("x"), UserError)
        assert message.split()[0] in check_probabilities(path)  # predict's resume redoes such a file
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[:100])
    with pytest.raises(ProbabilityFileError, match=rf"{truncated}: not a prediction file"):
        load_probabilities(truncated)

    # the writer refuses what the reader would refuse, naming the image; nothing is written
    nan = np.where(np.arange(10) == 3, np.nan, probs)
    with pytest.raises(ProbabilityFileError, match=r"image x/b.jpg: probabilities hold NaN.*was not written"):
        save_probabilities(tmp_path / "out", "x/b.jpg", 7, nan, 8, 10, ["a", "b", "c"])
    with pytest.raises(ProbabilityFileError, match="negative"):
        save_probabilities(tmp_path / "out", "x/b.jpg", 7, probs - 0.5, 8, 10, ["a", "b", "c"])
    assert not (tmp_path / "out").exists()
    with pytest.raises(UnsafePathError, match="climbs out"):
        save_probabilities(tmp_path / "out", "../b.jpg", 7, probs, 8, 10, ["a", "b", "c"])


# ---- the commands end to end --------------------------------------------------------------------------------


def make_predictions(root: Path, json_path: Path, cache: Path, seeds: tuple[int, ...] = (0, 1, 2)) -> list[Path]:
    """One prediction folder per seed: ground truth one-hot, blurred, noised, at the image size (64x48)."""
    data = json.loads(json_path.read_text())
    class_names = class_names_from_categories(data["categories"])
    dicts = load_sem_seg_dataset(json_path, json_path.parent, cache, progress=False)
    folders = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        folder = root / f"pred{seed}"
        for image, record in zip(data["images"], dicts, strict=True):
            gt = read_label(record["sem_seg_file_name"]).astype(np.int64)
            onehot = np.eye(len(class_names), dtype=np.float32)[np.minimum(gt, len(class_names) - 1)]
            blurred = cv2.GaussianBlur(onehot, (7, 7), 2.0).transpose(2, 0, 1)
            noisy = np.clip(blurred + rng.uniform(0, 0.6, blurred.shape), 1e-3, None)
            probs = noisy / noisy.sum(axis=0, keepdims=True)
            save_probabilities(
                folder, image["file_name"], image["id"], probs, image["height"], image["width"], class_names
            )
        (folder / "meta.json").write_text(json.dumps({"class_names": class_names}))
        folders.append(folder)
    return folders


@pytest.fixture
def case(tmp_path: Path) -> dict:
    json_path = write_tiny_coco(tmp_path / "data", name="val.json")
    cache = tmp_path / "cache"
    return {
        "json": json_path,
        "cache": cache,
        "folders": make_predictions(tmp_path / "preds", json_path, cache),
        "tmp": tmp_path,
    }


def options(case: dict, out: Path, inputs: list, **extra) -> EnsembleOptions:
    """The command's options with the case's json and label cache (extra: any other flag, by its dest name)."""
    extra = {"json": str(case["json"]), "cache_dir": str(case["cache"]), **extra}
    return EnsembleOptions(inputs=[str(path) for path in inputs], out=str(out), **extra)


def run_cli(tool: str, *args: str | Path) -> subprocess.CompletedProcess:
    command = [sys.executable, str(REPO / "tools" / tool), *map(str, args)]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)


def test_soft_vote_crf_consensus_gt_table_and_resume(case: dict, capsys, monkeypatch) -> None:
    out = case["tmp"] / "ens"

    def run(target: Path, **extra) -> dict:
        return ensemble_crf.run(
            options(
                case,
                target,
                case["folders"],
                weights=[2, 1, 1],
                crf=True,
                consensus=True,
                gt=str(case["json"]),
                **extra,
            )  # fmt: skip
        )

    result = run(out)
    printed = capsys.readouterr().out
    images = json.loads(case["json"].read_text())["images"]
    names = [image["file_name"] for image in images]
    assert result["processed"] == 3 and result["skipped"] == 0
    assert check_submission(out / "submission.csv", case["json"]) == 3
    assert list(read_submission(out / "submission.csv")) == names

    # one table: three inputs, the vote, the CRF, the final output; also in eval.json
    table = [line for line in printed.splitlines() if line.startswith("|")]
    assert len(table) == 2 + 6 and "soft vote (weights 0.5 0.25 0.25)" in table[5]
    assert "DenseCRF" in table[6] and "consensus" in table[7]
    report = json.loads((out / "eval.json").read_text())
    assert [s["stage"] for s in report["stages"]][3:] == [
        "soft vote (weights 0.5 0.25 0.25)",
        "DenseCRF",
        "final: CRF + consensus write-back",
    ]
    # the input and vote rows are the metrics of those label maps
    dicts = load_sem_seg_dataset(case["json"], case["json"].parent, case["cache"], progress=False)
    gts = [read_label(d["sem_seg_file_name"]) for d in dicts]
    maps = [[load_probabilities(probability_path(f, n))["probs"] for f in case["folders"]] for n in names]
    first = sum(confusion_matrix(gt, m[0].argmax(axis=0), 5) for gt, m in zip(gts, maps, strict=True))
    vote = sum(confusion_matrix(gt, soft_vote(m, [2, 1, 1]).argmax(axis=0), 5) for gt, m in zip(gts, maps, strict=True))
    assert report["stages"][0]["mIoU"] == pytest.approx(metrics_from_confusion(first)["mIoU"])
    assert report["stages"][3]["mIoU"] == pytest.approx(metrics_from_confusion(vote)["mIoU"])
    assert f"{report['stages'][0]['mIoU']:.4f}" in table[2]

    # outputs: label PNGs at the maps' size, npz files whose argmax is that label map, consensus pixels kept
    for name, m in zip(names, maps, strict=True):
        label = read_label(str(out / "labels" / Path(name).with_suffix(".png")))
        assert label.shape == (48, 64)
        assert check_probabilities(probability_path(out, name), name, report["class_names"]) is None
        np.testing.assert_array_equal(load_probabilities(probability_path(out, name))["probs"].argmax(axis=0), label)
        inputs = [p.argmax(axis=0) for p in m]
        agreed = consensus_mask(inputs)
        np.testing.assert_array_equal(label[agreed], inputs[0][agreed])

    # resume: nothing to do, same outputs and table
    before = (out / "submission.csv").read_bytes()
    again = run(out)
    assert again["processed"] == 0 and again["skipped"] == 3
    assert (out / "submission.csv").read_bytes() == before
    assert again["report"]["stages"] == report["stages"]
    assert "DenseCRF" in capsys.readouterr().out
    # one image's outputs lost: only that one is processed again
    (out / "labels" / Path(names[1]).with_suffix(".png")).unlink()
    assert run(out)["processed"] == 1
    # other settings into the same folder: refused
    with pytest.raises(OutputFolderError, match="other settings.*compat.: 10.0.*compat.: 3.0"):
        run(out, compat=3.0)

    # two worker processes give the same outputs (the parent's process_image is never called)
    def in_parent(*args):
        raise AssertionError("process_image ran in the parent")

    monkeypatch.setattr(ensemble_crf, "process_image", in_parent)
    pooled = case["tmp"] / "ens_pool"
    assert run(pooled, workers=2)["processed"] == 3
    assert (pooled / "submission.csv").read_bytes() == before
    capsys.readouterr()


def test_without_crf_and_with_csv_inputs(case: dict, capsys) -> None:
    names = [image["file_name"] for image in json.loads(case["json"].read_text())["images"]]
    soft = case["tmp"] / "soft"
    result = ensemble_crf.run(options(case, soft, case["folders"]))
    assert result["report"] is None and not (soft / "eval.json").exists()
    for name in names:
        maps = [load_probabilities(probability_path(f, name))["probs"] for f in case["folders"]]
        label = read_label(str(soft / "labels" / Path(name).with_suffix(".png")))
        np.testing.assert_array_equal(label, soft_vote(maps).argmax(axis=0))

    # CSVs (256x256): hard vote, ties to the first listed
    csvs = []
    for folder in case["folders"]:
        rows = [
            (n, downsample_label_map(load_probabilities(probability_path(folder, n))["probs"].argmax(axis=0)))
            for n in names
        ]
        csvs.append(case["tmp"] / f"{folder.name}.csv")
        write_submission(csvs[-1], rows)
    hard = case["tmp"] / "hard"
    result = ensemble_crf.run(options(case, hard, csvs, weights=[1, 1, 1], gt=str(case["json"])))
    assert "probabilities" not in result and not (hard / "probs").exists()
    tables = [read_submission(path) for path in csvs]
    for name, label in read_submission(hard / "submission.csv").items():
        np.testing.assert_array_equal(label, hard_vote([t[name] for t in tables], num_classes=5))
    assert "hard vote (weights 0.333 0.333 0.333)" in capsys.readouterr().out
    crf = case["tmp"] / "hard_crf"
    ensemble_crf.run(options(case, crf, csvs, crf=True))
    assert check_submission(crf / "submission.csv", case["json"]) == 3


def test_errors_name_the_input_and_the_image(case: dict, tmp_path: Path) -> None:
    folders = [str(f) for f in case["folders"]]
    names = [image["file_name"] for image in json.loads(case["json"].read_text())["images"]]

    def refused(inputs: list, out: str, match: str, with_json: bool = True, **extra) -> None:
        chosen = options(case, tmp_path / out, inputs, **extra)
        if not with_json:
            chosen.json = chosen.cache_dir = None
        with pytest.raises(UserError, match=match):
            ensemble_crf.run(chosen)
        assert not (tmp_path / out / "submission.csv").exists()

    # another class list in one folder
    renamed = tmp_path / "renamed"
    shutil.copytree(folders[1], renamed)
    meta = json.loads((renamed / "meta.json").read_text())
    meta["class_names"][2] = "Cardboard"
    (renamed / "meta.json").write_text(json.dumps(meta))
    refused([folders[0], renamed], "o1", rf"{renamed}: classes .*Cardboard.* differ from {case['json']}")
    refused([folders[0], renamed], "o1b", rf"{renamed}: classes .*Cardboard.* differ from {folders[0]}'s", False)

    # an image missing from one folder
    partial = tmp_path / "partial"
    shutil.copytree(folders[2], partial)
    probability_path(partial, names[1]).unlink()
    refused([folders[0], partial], "o2", rf"{partial}: no prediction for image '{names[1]}'")
    refused([folders[0], partial], "o2b", rf"{partial}: no prediction for image '{names[1]}'", False)
    refused([partial, folders[0]], "o2c", r"has no counterpart in", False)

    # maps of another size: an error naming both, unless --size resizes them
    small = tmp_path / "small"
    for image in json.loads(case["json"].read_text())["images"]:
        data = load_probabilities(probability_path(folders[0], image["file_name"]))
        probs = resize_probabilities(data["probs"], 24, 32)
        save_probabilities(small, image["file_name"], image["id"], probs, 48, 64, data["class_names"])
    refused([folders[0], small], "o3", rf"{names[0]}: {small} has 32x24 probability maps.*--size")
    assert not (tmp_path / "o3" / "labels").exists()  # found before the first image was written
    ensemble_crf.run(options(case, tmp_path / "o3b", [folders[0], small], size=32))
    assert read_label(str(tmp_path / "o3b" / "labels" / Path(names[0]).with_suffix(".png"))).shape == (32, 32)

    # a CSV whose row is not 256x256
    good = tmp_path / "good.csv"
    write_submission(good, [(n, np.zeros((256, 256), np.uint8)) for n in names])
    bad = tmp_path / "bad.csv"
    lines = good.read_text().splitlines()
    lines[2] = f"{names[1]}," + " ".join(["0"] * 100)
    bad.write_text("\n".join(lines) + "\n")
    refused([good, bad], "o4", rf"bad.csv: line 3 \({names[1]}\): PredictionString has 100 values")
    # a CSV without one image, and values outside the classes
    write_submission(tmp_path / "short.csv", [(n, np.zeros((256, 256), np.uint8)) for n in names[:2]])
    refused([good, tmp_path / "short.csv"], "o5", rf"short.csv: no row for image '{names[2]}'")
    write_submission(tmp_path / "high.csv", [(n, np.full((256, 256), 7, np.uint8)) for n in names])
    refused([good, tmp_path / "high.csv"], "o6", rf"high.csv: image {names[0]}: values 7..7 outside \[0, 4\]")

    refused([folders[0], good], "o7", "mix prediction folders and CSV")
    refused(folders, "o8", "1 weight", weights=[1])
    refused(folders, "o9", "--crf reads the RGB images", False, crf=True)
    refused([folders[0], tmp_path / "nowhere"], "o10", "input not found")
    refused(folders, "o10b", r"CRF sxy \(--sxy\) 0: must be > 0", crf=True, sxy=0.0)
    refused(folders, "o10c", r"--size -1: must be >= 0", size=-1)
    # a missing RGB image is named
    (case["json"].parent / names[2]).unlink()
    refused(folders, "o11", rf"{names[2]}: cannot read image .*{names[2]}.*the CRF reads the images", crf=True)


@pytest.mark.subprocess
def test_nan_in_a_probability_file_stops_the_cli_naming_it_before_anything_is_written(case: dict) -> None:
    """The last image's file of one input holds a NaN: one line naming that file, exit 2, no output, inputs kept;
    tune_crf refuses it the same way."""
    names = [image["file_name"] for image in json.loads(case["json"].read_text())["images"]]
    broken = probability_path(case["folders"][1], names[-1])
    data = load_probabilities(broken)
    probs = data["probs"].copy()
    probs[2, 10, 10] = np.nan
    write_raw_npz(broken, probs, names[-1], data["class_names"])
    inputs_before = tree_hashes(case["tmp"] / "preds", case["json"].parent)

    out = case["tmp"] / "ens"
    folders = [str(f) for f in case["folders"]]
    result = run_cli("ensemble_crf.py", *folders, "--json", case["json"], "--out", out, "--crf", "--workers", "2")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"{broken} (image {names[-1]}): probabilities hold NaN" in lines[0] and "predict it again" in lines[0]
    assert not out.exists()  # the inputs are checked before OUT is made
    assert tree_hashes(case["tmp"] / "preds", case["json"].parent) == inputs_before

    with pytest.raises(ProbabilityFileError, match=rf"{broken} \(image {names[-1]}\): probabilities hold NaN"):
        tune_crf(TuneOptions(inputs=folders, gt=str(case["json"]), cache_dir=str(case["cache"])))
    assert tree_hashes(case["tmp"] / "preds", case["json"].parent) == inputs_before


def test_output_folder_is_never_an_input(case: dict, tmp_path: Path) -> None:
    folders = case["folders"]
    inputs_before = tree_hashes(tmp_path / "preds", case["json"].parent)
    names = [image["file_name"] for image in json.loads(case["json"].read_text())["images"]]

    def refused(inputs: list, out: Path, match: str, **extra) -> None:
        with pytest.raises(EnsembleError, match=match):
            ensemble_crf.run(options(case, out, inputs, **extra))
        assert tree_hashes(tmp_path / "preds", case["json"].parent) == inputs_before  # no log.txt added either

    refused(folders, folders[1], rf"--out {folders[1]} is the input folder {folders[1]}: its predictions would")
    refused(folders, folders[0] / "probs", rf"--out {folders[0] / 'probs'} lies inside the input folder {folders[0]}")
    refused(folders, case["json"].parent, r"is the image folder .*give another --out")
    refused(folders, case["json"], r"is a file: give a folder")
    # a CSV input where OUT/submission.csv goes: a rerun on the previous ensemble's own output
    previous = tmp_path / "prev"
    ensemble_crf.run(options(case, previous, folders))
    refused([previous / "submission.csv", previous / "submission.csv"], previous, r"would overwrite the input")
    (previous / "probs" / "x").mkdir()
    refused([folders[0], previous / "probs" / "x"], previous, r"would write into the input folder")
    assert tree_hashes(previous / "labels") and (previous / "submission.csv").is_file()

    # an image file_name that climbs out of the folder is refused before anything is written
    data = json.loads(case["json"].read_text())
    data["images"][0]["file_name"] = "../" + names[0]
    climbing = tmp_path / "climbing.json"
    climbing.write_text(json.dumps(data))
    with pytest.raises(UserError, match=rf"{climbing}: .*climbs out"):  # the json reader refuses it
        ensemble_crf.run(options(case, tmp_path / "o_climb", folders, json=str(climbing)))
    assert not (tmp_path / "o_climb" / "labels").exists()

    # tune_crf's table never replaces the ground truth or goes into an input folder
    gt_before = case["json"].read_bytes()
    tune = {"inputs": [str(f) for f in folders], "gt": str(case["json"]), "cache_dir": str(case["cache"])}
    with pytest.raises(EnsembleError, match="is the --gt json"):
        tune_crf(TuneOptions(**tune, out=str(case["json"])))
    with pytest.raises(EnsembleError, match="lies inside the input folder"):
        tune_crf(TuneOptions(**tune, out=str(folders[0] / "table.md")))
    assert case["json"].read_bytes() == gt_before
    assert tree_hashes(tmp_path / "preds", case["json"].parent) == inputs_before


@pytest.mark.slow
@pytest.mark.subprocess
def test_cli_user_error_is_one_line_and_help_documents_the_defaults(case: dict, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_cli("ensemble_crf.py", case["folders"][0], tmp_path / "nowhere", "--out", out)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [f"ensemble_crf.py: input not found: {tmp_path / 'nowhere'}"]
    assert not out.exists()
    result = run_cli("tune_crf.py", tmp_path / "nowhere", "--gt", case["json"], "--cache-dir", case["cache"])
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"tune_crf.py: input not found: {tmp_path / 'nowhere'}"

    result = run_cli("ensemble_crf.py", "--help")
    assert result.returncode == 0
    text = result.stdout
    assert "sxy 20, srgb 5, compat 10, 5 iterations" in text and "--consensus" in text and "--workers" in text


def test_tune_crf_scores_each_setting_as_ensemble_crf_does(case: dict, capsys) -> None:
    folders = [str(f) for f in case["folders"]]
    rows = tune_crf(
        TuneOptions(inputs=folders, gt=str(case["json"]), cache_dir=str(case["cache"]), sxy=[10, 30], compat=[3, 10])
    )
    assert len(rows) == 4 and [r["crf"] for r in rows] == sorted((r["crf"] for r in rows), reverse=True)
    table = capsys.readouterr().out
    assert "soft vote of 3 inputs" in table and table.count("\n| ") == 2 + 4  # header, rule, a row per setting
    for sxy, compat in [(10.0, 3.0), (30.0, 10.0)]:  # the same numbers as ensemble_crf's --gt table
        out = case["tmp"] / f"ens_{sxy}_{compat}"
        report = ensemble_crf.run(
            options(case, out, folders, crf=True, consensus=True, sxy=sxy, compat=compat, gt=str(case["json"]))
        )["report"]
        row = next(r for r in rows if (r["sxy"], r["compat"]) == (sxy, compat))
        assert row["crf"] == pytest.approx(report["stages"][-2]["mIoU"])
        assert row["consensus"] == pytest.approx(report["stages"][-1]["mIoU"])
    capsys.readouterr()
