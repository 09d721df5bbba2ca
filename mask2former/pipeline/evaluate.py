"""The logic of tools/evaluate.py: score a submission CSV or a folder of label maps against COCO ground truth.

A CSV holds 256x256 maps (the competition's format) and is scored against the ground truth reduced to 256x256
by the submission's documented rule (nearest: every second pixel for 512x512 images). A folder holds one PNG
label map per image at `<folder>/<file_name with .png>`, which must be the ground truth's size: a map of any
other size is an error naming both sizes (scaling the ground truth to the prediction would let a 1x1 map
score). The ground truth must hold annotations (`load_with_manifest(has_gt=True)` refuses a json without
any), and prediction values must be class indices.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data.coco_semantic import check_class_lists, load_with_manifest
from ..errors import UserError
from ..evaluation.sem_seg import SemSegEvaluator
from ..io.coco_json import read_coco_json
from ..io.images import read_label
from ..io.submission import SUBMISSION_SIZE, downsample_label_map, read_submission
from ..utils.output_folder import check_claim, owned_output_folder
from ..utils.progress import progress

TOOL = "evaluate.py"
OUTPUT_FILES = ("sem_seg_metrics.json", "confusion_matrix.json", "confusion_matrix.png")


class EvaluationError(UserError, ValueError):
    """Predictions that cannot be scored against the ground truth; the message names the file and the image."""


@dataclass
class EvaluateOptions:
    """The flags of tools/evaluate.py."""

    gt: str
    pred: str
    image_root: str | None = None
    out: str | None = None
    cache_dir: str | None = None
    skip_bad: bool = False


def run(options: EvaluateOptions) -> dict[str, Any]:
    """Score, print the per-class table and `mIoU: 0.xxxx`, write the reports under --out; returns the metrics
    (`SemSegEvaluator.evaluate()["sem_seg"]`)."""
    gt_json = Path(options.gt)
    image_root = Path(options.image_root) if options.image_root else gt_json.parent
    pred_path = Path(options.pred)
    if not pred_path.exists():
        raise FileNotFoundError(f"prediction not found: {pred_path} (give a submission CSV or a folder of PNGs)")
    dicts, manifest = load_with_manifest(gt_json, image_root, options.cache_dir, skip_bad=options.skip_bad, has_gt=True)
    _check_recorded_classes(pred_path, manifest["class_names"], gt_json)
    root = image_root.resolve()
    names = {d["file_name"]: Path(d["file_name"]).relative_to(root).as_posix() for d in dicts}
    if pred_path.is_dir():
        sources = {name: pred_path / Path(name).with_suffix(".png") for name in names.values()}
        _refuse_missing_maps(sources, pred_path)
        inputs = list(sources.values())
    else:
        predictions = read_submission(pred_path)
        _refuse_mismatched_rows(predictions, list(names.values()), gt_json, pred_path)
        inputs = [pred_path]
    inputs += [gt_json] + [Path(d["sem_seg_file_name"]) for d in dicts]
    _refuse_overwriting_inputs(options.out, inputs)
    job = {"gt": str(gt_json.resolve()), "pred": str(pred_path.resolve())}
    if options.out:  # refused before scoring: a folder of someone else's, or of another evaluation
        check_claim(options.out, TOOL, job, writes=OUTPUT_FILES)

    class_names = manifest["class_names"]
    evaluator = SemSegEvaluator(class_names, output_dir=options.out, log_table=False)
    for record in progress(dicts, desc="evaluate", unit="img"):
        name = names[record["file_name"]]
        gt = read_label(record["sem_seg_file_name"])
        if pred_path.is_dir():
            source = sources[name]
            pred = read_label(source)
            if pred.shape != gt.shape:
                raise EvaluationError(
                    f"{source}: the prediction is {pred.shape[1]}x{pred.shape[0]}, the ground truth of {name} is "
                    f"{gt.shape[1]}x{gt.shape[0]}; write label maps at the image's size (or score the "
                    f"{SUBMISSION_SIZE}x{SUBMISSION_SIZE} submission CSV)"
                )
            where = str(source)
        else:
            pred = predictions[name]
            gt = downsample_label_map(gt, SUBMISSION_SIZE, "nearest")
            where = f"{pred_path}: the row of {name}"
        _check_values(pred, gt, len(class_names), where)
        evaluator.add(gt, pred)

    with owned_output_folder(options.out, TOOL, job, writes=OUTPUT_FILES) if options.out else nullcontext() as owned:
        if owned is not None:
            owned.record(*OUTPUT_FILES)
        result = evaluator.evaluate()["sem_seg"]
    print(evaluator.table)
    print(f"mIoU: {result['mIoU']:.4f}")
    return result


def _check_recorded_classes(pred_path: Path, class_names: list[str], gt_json: Path) -> None:
    """ClassListError when the meta.json a tool wrote with the predictions (predict.py, ensemble_crf.py: beside
    the CSV, or in the folder of label maps) records other class names than the ground truth's."""
    meta_path = (pred_path if pred_path.is_dir() else pred_path.parent) / "meta.json"
    try:
        recorded = json.loads(meta_path.read_text()).get("class_names")
    except (OSError, ValueError, AttributeError):
        return  # no meta.json of a tool: nothing recorded to compare
    if isinstance(recorded, list) and recorded:
        check_class_lists(
            recorded,
            str(meta_path),
            class_names,
            str(gt_json),
            "these predictions were made for another class list: predict with a json of the ground truth's classes",
        )


def _refuse_missing_maps(sources: dict[str, Path], folder: Path) -> None:
    missing = [name for name, path in sources.items() if not path.is_file()]
    if missing:
        first = sources[missing[0]]
        raise EvaluationError(
            f"{folder}: no label map for {len(missing)} ground-truth image(s), e.g. {missing[0]} (expected {first})"
        )


def _refuse_mismatched_rows(predictions: dict[str, np.ndarray], scored: list[str], gt_json: Path, csv: Path) -> None:
    missing = [name for name in scored if name not in predictions]
    if missing:
        raise EvaluationError(f"{csv}: no row for {len(missing)} ground-truth image(s), e.g. {', '.join(missing[:3])}")
    in_json = {image.get("file_name") for image in read_coco_json(gt_json)["images"]}  # skipped images included
    extra = [name for name in predictions if name not in in_json]
    if extra:
        raise EvaluationError(f"{csv}: {len(extra)} row(s) are not in {gt_json}, e.g. {', '.join(extra[:3])}")


def _check_values(pred: np.ndarray, gt: np.ndarray, num_classes: int, where: str) -> None:
    scored = pred[gt < num_classes]  # pixels the ground truth ignores may hold anything
    if scored.size and (scored.min() < 0 or scored.max() >= num_classes):
        bad = scored[(scored < 0) | (scored >= num_classes)]
        raise EvaluationError(f"{where}: holds class {int(bad[0])}; the ground truth has classes 0..{num_classes - 1}")


def _refuse_overwriting_inputs(out: str | None, inputs: list[Path]) -> None:
    if not out:
        return
    read = {path.resolve() for path in inputs}
    for name in OUTPUT_FILES:
        target = (Path(out) / name).resolve()
        if target in read:
            raise EvaluationError(
                f"--out {out}: writing {name} would replace an input ({target}); choose another folder"
            )
