"""The logic of tools/tune_crf.py: a grid search of ensemble_crf's DenseCRF settings on images with ground truth.

Each image's soft vote is made once (mask2former/pipeline/ensemble_images.py `load_inputs` + voting.py `soft_vote`, the
same reading and
checks as ensemble_crf); every setting then runs `dense_crf` and `consensus_write_back` exactly as
`process_image` does, and is scored against the ground truth at the maps' size with the same confusion matrices
as ensemble_crf's --gt table. `run(TuneOptions(...))` returns one row per setting ({..., "crf": the CRF's mIoU,
"consensus": with --consensus}), best CRF mIoU first (ensemble_crf's default final output).
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ..io.files import atomic_write_text
from ..io.probabilities import probability_key, read_prediction_folder
from ..utils.output_folder import refuse_foreign_file
from ..utils.progress import Progress
from .crf import CRF_DEFAULTS, check_crf_parameters, dense_crf
from .ensemble_images import EnsembleJob, load_inputs, read_rgb
from .voting import EnsembleError, consensus_write_back, normalize_weights, soft_vote

GRID_KEYS = ("sxy", "srgb", "compat", "iters", "gaussian_sxy", "gaussian_compat")


def _default(key: str):
    return field(default_factory=lambda: [CRF_DEFAULTS[key]])


@dataclass
class TuneOptions:
    """The flags of tools/tune_crf.py: the prediction folders, the ground truth, and the values of each CRF
    setting to try (a setting not listed keeps ensemble_crf's default)."""

    inputs: list[str]
    gt: str
    image_root: str | None = None
    weights: list[float] | None = None
    cache_dir: str | None = None
    sxy: list[float] = _default("sxy")
    srgb: list[float] = _default("srgb")
    compat: list[float] = _default("compat")
    iters: list[int] = _default("iters")
    gaussian_sxy: list[float] = _default("gaussian_sxy")
    gaussian_compat: list[float] = _default("gaussian_compat")
    workers: int = 1
    out: str | None = None


def settings_grid(options: TuneOptions) -> list[dict]:
    """Every combination of the listed values (each checked: EnsembleError naming the flag)."""
    values = [getattr(options, key) for key in GRID_KEYS]
    grid = [dict(zip(GRID_KEYS, combo, strict=True)) for combo in itertools.product(*values)]
    for setting in grid:
        check_crf_parameters(**setting)
    return grid


def check_folders(options: TuneOptions, names: list[str]) -> None:
    """Every input is a finished prediction folder (`read_prediction_folder`) holding every --gt image."""
    for folder in map(Path, options.inputs):
        if not folder.exists():
            raise EnsembleError(f"input not found: {folder}")
        predictions = read_prediction_folder(folder)
        missing = [name for name in names if probability_key(name) not in predictions.files]
        if missing:
            raise EnsembleError(f"{folder} has no prediction for {len(missing)} image(s), e.g. {missing[0]!r}")


TABLE_MARK = "<!-- written by tune_crf.py -->"


def _first_line(path: Path) -> str:
    with open(path, encoding="utf-8", errors="replace") as handle:
        return handle.readline().rstrip("\n")


def refuse_unsafe_out(options: TuneOptions) -> None:
    """The table never replaces an input: not the --gt json, nothing inside an input folder, not a folder."""
    if not options.out:
        return
    out = Path(options.out).resolve()
    if out.is_dir():
        raise EnsembleError(f"--out {options.out} is a folder: give the file to write the table to")
    if out == Path(options.gt).resolve():
        raise EnsembleError(f"--out {options.out} is the --gt json: give another file for the table")
    for folder in options.inputs:
        if out.is_relative_to(Path(folder).resolve()):
            raise EnsembleError(f"--out {options.out} lies inside the input folder {folder}: give another file")
    refuse_foreign_file(options.out, "tune_crf.py", lambda path: _first_line(path) == TABLE_MARK)


def score_image(task: tuple) -> np.ndarray:
    """Confusion matrices [vote, (crf, final) per setting] of one image."""
    from ..evaluation.sem_seg import confusion_matrix
    from ..io.images import read_label_at

    job, file_name, gt_path, settings = task
    cv2.setNumThreads(1)
    maps, _ = load_inputs(job, file_name)
    inputs = [p.argmax(axis=0).astype(np.uint8) for p in maps]
    vote_probs = soft_vote(maps, job.weights)
    num_classes = len(job.class_names)
    height, width = inputs[0].shape
    gt = read_label_at(gt_path, (height, width))
    # resized once here rather than by dense_crf at every setting (the same INTER_AREA resize)
    image = cv2.resize(read_rgb(job.image_root, file_name), (width, height), interpolation=cv2.INTER_AREA)
    matrices = [confusion_matrix(gt, vote_probs.argmax(axis=0), num_classes)]
    for setting in settings:
        crf = dense_crf(vote_probs, image, return_labels=True, **setting)
        matrices.append(confusion_matrix(gt, crf, num_classes))
        matrices.append(confusion_matrix(gt, consensus_write_back(crf, inputs), num_classes))
    return np.stack(matrices)


def score_all(tasks: list[tuple], workers: int, desc: str) -> np.ndarray:
    """The summed confusion matrices of every image, in this process or in a pool of spawned workers."""
    total = None
    with Progress(len(tasks), desc, unit="img") as meter:
        if workers > 1 and len(tasks) > 1:
            with mp.get_context("spawn").Pool(min(workers, len(tasks))) as pool:
                for matrices in pool.imap_unordered(score_image, tasks):
                    total = matrices if total is None else total + matrices
                    meter.update(1)
        else:
            for task in tasks:
                matrices = score_image(task)
                total = matrices if total is None else total + matrices
                meter.update(1)
    assert total is not None
    return total


def run(options: TuneOptions) -> list[dict]:
    """The whole command: prints the table (and writes it to --out); returns the rows, best CRF mIoU first."""
    from ..data.coco_semantic import ground_truth_label_paths
    from ..evaluation.sem_seg import metrics_from_confusion

    if not options.inputs:
        raise EnsembleError("no inputs: give the prediction folders of the --gt images")
    settings = settings_grid(options)
    weights = tuple(float(w) for w in normalize_weights(options.weights, len(options.inputs)))
    refuse_unsafe_out(options)
    gt_json = Path(options.gt)
    root = Path(options.image_root) if options.image_root else gt_json.parent
    gt_paths, class_names = ground_truth_label_paths(gt_json, root, options.cache_dir)
    names = list(gt_paths)
    check_folders(options, names)
    job = EnsembleJob("probs", tuple(options.inputs), weights, tuple(class_names), out="", image_root=str(root))
    tasks = [(job, name, gt_paths[name], settings) for name in names]
    total = score_all(tasks, options.workers, f"{len(settings)} CRF settings")
    vote = metrics_from_confusion(total[0])["mIoU"]
    rows = []
    for index, setting in enumerate(settings):
        crf = metrics_from_confusion(total[1 + 2 * index])["mIoU"]
        final = metrics_from_confusion(total[2 + 2 * index])["mIoU"]
        rows.append({**setting, "crf": crf, "consensus": final})
    rows.sort(key=lambda row: -row["crf"])
    lines = [f"{len(names)} images of {gt_json}; soft vote of {len(options.inputs)} inputs: mIoU {vote:.4f}", ""]
    lines.append("| " + " | ".join(GRID_KEYS) + " | CRF mIoU (final, the default) | with --consensus |")
    lines.append("|" + " --- |" * (len(GRID_KEYS) + 2))
    for row in rows:
        cells = [f"{row[key]:g}" for key in GRID_KEYS] + [f"{row['crf']:.4f}", f"{row['consensus']:.4f}"]
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    if options.out:
        atomic_write_text(options.out, f"{TABLE_MARK}\n{table}\n")
    return rows
