#!/usr/bin/env python
"""Pixel-level ensemble of predictions, DenseCRF refinement and consensus write-back.

    # soft vote of prediction folders (tools/predict.py outputs), weighted, with the CRF, scored on val:
    python tools/ensemble_crf.py output/pred_a output/pred_b output/pred_c --weights 2 1 1 --crf \\
        --json DATA/val.json --gt DATA/val.json --out output/ens --workers 2
    # hard vote of submission CSVs (the class list comes from --json):
    python tools/ensemble_crf.py a.csv b.csv c.csv --weights 1 1 1 --json DATA/test.json --out output/ens_csv

Inputs: N prediction folders (probs/<file_name>.npz, see mask2former/prediction_io.py) are combined by a soft
vote, the weighted mean of their probabilities (--weights, normalised; default equal). N submission CSVs are
combined by a hard vote: per pixel the class with the largest total weight, ties to the first-listed input.
Every input must hold the same classes and the same images: the --json's (else the --gt's) images when given
(predictions of other images are then ignored), otherwise the first input's, which every input must match.
Maps must have one size, unless --size S (folders) resizes all of them to S x S (bilinear, renormalised).

--crf refines the vote with a fully connected CRF (pydensecrf2, mask2former/ensemble.py dense_crf): a Gaussian
kernel (--gauss-sxy, --gauss-compat) and a bilateral kernel on position and colour (--sxy, --srgb, --compat),
--iters mean-field steps. It reads the RGB images under --image-root (default: the --json's or --gt's folder)
and resizes them to the maps' size: --sxy is in pixels of the maps (256x256 by default). For CSVs the unary is
the vote shares mixed with a uniform distribution (confidence 0.8). Consensus write-back (on with --crf;
--no-consensus turns it off): pixels on which all inputs agree keep that class after the CRF, which alone erases
small objects. The defaults (sxy 10, srgb 5, compat 10, 5 iterations, Gaussian sxy 3 / compat 3) are the best of
a grid search with tools/tune_crf.py (sxy 5/10/20/40 x srgb 3/5/13 x compat 3/5/10) on the sample val set (48
images) with three tiny models' TTA predictions (256x256): soft vote 0.5888 mIoU, CRF 0.6090, with consensus
0.5979, against 0.5878 for the best single model (benchmarks/RESULTS.md).

Outputs, written atomically: OUT/labels/<file_name>.png (final label map at the maps' size); for folder inputs
OUT/probs/<file_name>.npz in the same format, so OUT feeds the next tool (the CRF's probabilities, the vote's on
consensus pixels or without --crf); OUT/submission.csv (256x256, nearest; json or first-input order);
OUT/meta.json. Resuming: images whose outputs exist are skipped; a rerun with other settings is refused unless
--overwrite. --gt prints one table (mIoU of each input, the vote, the CRF, the final output, scored at the maps'
size) and writes it to OUT/eval.json. --workers N processes N images at a time in worker processes.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import multiprocessing as mp
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from mask2former.ensemble import (
    CRF_DEFAULTS,
    HARD_VOTE_CONFIDENCE,
    EnsembleError,
    EnsembleJob,
    init_worker,
    label_path,
    normalize_weights,
    process_image,
    process_in_worker,
)
from mask2former.prediction_io import probability_path, read_probability_field
from mask2former.submission import SUBMISSION_SIZE, downsample_label_map, read_submission
from mask2former.utils.io import atomic_write_bytes, atomic_write_json
from mask2former.utils.resume import changed_settings

# mask2former.data and .evaluation import torch: they are imported where needed, so that the spawned workers
# (which import this file as their __main__) start quickly.

logger = logging.getLogger("ensemble_crf")

SETTINGS = ("kind", "inputs", "weights", "class_names", "size", "crf", "consensus")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="prediction folders (soft vote) or submission CSVs (hard vote)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--weights", nargs="+", type=float, metavar="W", help="one weight per input (default equal)")
    parser.add_argument("--json", help="COCO json listing the images (their order; its folder holds the images)")
    parser.add_argument("--image-root", help="folder that file_name is relative to (default: the json's folder)")
    parser.add_argument("--gt", help="COCO json with ground truth: print and save the mIoU of every stage")
    parser.add_argument("--cache-dir", help="where rendered ground-truth label maps are cached")
    parser.add_argument("--size", type=int, default=0, help="resize every input's maps to SIZE x SIZE (folders)")
    crf = parser.add_argument_group("DenseCRF")
    crf.add_argument("--crf", action="store_true", help="refine the vote with a DenseCRF")
    crf.add_argument("--sxy", type=float, default=CRF_DEFAULTS["sxy"], help="bilateral kernel: position std, px")
    crf.add_argument("--srgb", type=float, default=CRF_DEFAULTS["srgb"], help="bilateral kernel: colour std")
    crf.add_argument("--compat", type=float, default=CRF_DEFAULTS["compat"], help="bilateral kernel: weight")
    crf.add_argument("--gauss-sxy", type=float, default=CRF_DEFAULTS["gaussian_sxy"], help="Gaussian kernel: std")
    crf.add_argument(
        "--gauss-compat", type=float, default=CRF_DEFAULTS["gaussian_compat"], help="Gaussian kernel: weight"
    )
    crf.add_argument("--iters", type=int, default=CRF_DEFAULTS["iters"], help="mean-field iterations")
    crf.add_argument(
        "--no-consensus", action="store_true", help="keep the CRF's labels where all inputs agree on another class"
    )
    parser.add_argument("--workers", type=int, default=1, help="worker processes (1: in this process)")
    parser.add_argument("--overwrite", action="store_true", help="process every image again, even with other settings")
    args = parser.parse_args(argv)
    for name in ("sxy", "srgb", "gauss_sxy"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be > 0")
    if args.compat < 0 or args.gauss_compat < 0 or args.iters < 0 or args.size < 0:
        parser.error("--compat, --gauss-compat, --iters and --size must be >= 0")
    return args


def input_kind(paths: list[str]) -> str:
    """ "probs" when every input is a folder, "labels" when every input is a CSV file."""
    kinds = []
    for path in map(Path, paths):
        if path.is_dir():
            kinds.append("probs")
        elif path.is_file():
            kinds.append("labels")
        else:
            raise EnsembleError(f"input not found: {path}")
    if len(set(kinds)) > 1:
        raise EnsembleError("inputs mix prediction folders and CSV files: give only folders or only CSVs")
    return kinds[0]


def _npz_field(path: Path, key: str):
    try:
        return read_probability_field(path, key)
    except ValueError as error:  # names the file
        raise EnsembleError(str(error)) from None


def folder_npz_files(folder: Path) -> dict[str, Path]:
    """Relative npz path -> path, for every prediction in folder/probs."""
    root = folder / "probs"
    if not root.is_dir():
        raise EnsembleError(f"{folder}: not a prediction folder (no probs/ inside)")
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*.npz"))}


def folder_class_names(folder: Path, files: dict[str, Path] | None = None) -> list[str]:
    """The class names of a prediction folder: its meta.json's, else its first npz's."""
    meta = folder / "meta.json"
    if meta.is_file():
        try:
            names = json.loads(meta.read_text()).get("class_names")
        except (OSError, ValueError):
            names = None
        if names:
            return [str(name) for name in names]
    files = folder_npz_files(folder) if files is None else files
    if not files:
        raise EnsembleError(f"{folder}: no predictions in {folder / 'probs'}")
    return [str(name) for name in _npz_field(next(iter(files.values())), "class_names")]


def list_images(args: argparse.Namespace) -> tuple[list[str], list[str] | None, Path | None]:
    """(file names from --json or --gt, their class names, the image root) or ([], None, root) without a json."""
    from mask2former.data.coco_semantic import class_names_from_categories, read_coco_json

    listing = args.json or args.gt
    root = Path(args.image_root) if args.image_root else (Path(listing).parent if listing else None)
    if not listing:
        return [], None, root
    data = read_coco_json(listing)
    names = [image.get("file_name") for image in data["images"]]
    if not names or any(not isinstance(name, str) for name in names):
        raise EnsembleError(f"{listing}: lists no images, or an image without a file_name")
    return names, class_names_from_categories(data["categories"]), root


def check_folders(
    folders: list[Path], names: list[str], class_names: list[str] | None, listing: str | None
) -> tuple[list[str], list[str]]:
    """Checks prediction folders against each other (and the json): the same classes, every image present.
    Returns (file names, class names)."""
    indexes = [folder_npz_files(folder) for folder in folders]
    reference, source = class_names, listing
    for folder, files in zip(folders, indexes, strict=True):
        names_here = folder_class_names(folder, files)
        if reference is None:
            reference, source = names_here, str(folder)
        elif names_here != reference:
            raise EnsembleError(f"{folder}: classes {names_here} differ from {source}'s {reference}")
    if not names:  # no json: the first folder's images, and every folder holds exactly those
        if not indexes[0]:
            raise EnsembleError(f"{folders[0]}: no predictions in {folders[0] / 'probs'}")
        names = [str(_npz_field(path, "file_name")) for path in indexes[0].values()]
        for folder, files in zip(folders[1:], indexes[1:], strict=True):
            extra = sorted(set(files) - set(indexes[0]))
            if extra:
                raise EnsembleError(f"{folder}: prediction {extra[0]} has no counterpart in {folders[0]}")
    for folder, files in zip(folders, indexes, strict=True):
        for name in names:
            key = probability_path("", name).relative_to("probs").as_posix()
            if key not in files:
                path = probability_path(folder, name)
                raise EnsembleError(f"{folder}: no prediction for image {name!r} ({path} is missing)")
    assert reference is not None
    return names, reference


def read_csvs(paths: list[Path], names: list[str], num_classes: int) -> tuple[list[str], list[dict[str, np.ndarray]]]:
    """Every CSV's label maps (uint8), checked: values in [0, num_classes), every image present."""
    tables = []
    for path in paths:
        rows = read_submission(path)  # a wrong row length raises, naming the file, line and image
        table = {}
        for image_id, label in rows.items():
            if label.min() < 0 or label.max() >= num_classes:
                raise EnsembleError(
                    f"{path}: image {image_id}: values {label.min()}..{label.max()} outside [0, {num_classes - 1}]"
                )
            table[image_id] = label.astype(np.uint8)
        tables.append(table)
    if not names:
        names = list(tables[0])
        if not names:
            raise EnsembleError(f"{paths[0]}: no rows")
        for path, table in zip(paths[1:], tables[1:], strict=True):
            extra = [name for name in table if name not in tables[0]]
            if extra:
                raise EnsembleError(f"{path}: image {extra[0]!r} has no row in {paths[0]}")
    for path, table in zip(paths, tables, strict=True):
        for name in names:
            if name not in table:
                raise EnsembleError(f"{path}: no row for image {name!r}")
    return names, [{name: table[name] for name in names} for table in tables]


def check_resume(meta_path: Path, settings: dict) -> None:
    """Refuse to mix outputs made with other settings into OUT."""
    if not meta_path.is_file():
        return
    try:
        old = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return
    detail = changed_settings(old, settings, SETTINGS)
    if detail:
        raise EnsembleError(
            f"{meta_path.parent} holds outputs made with other settings ({detail}). "
            "Use another --out, or --overwrite to process every image again."
        )


def confusion_path(out: Path, name: str) -> Path:
    """OUT/eval/images/<file_name>.npy: one image's confusion matrices, one per stage (for resuming --gt)."""
    return out / "eval" / "images" / Path(name).with_suffix(".npy")


def is_done(out: Path, name: str, kind: str, with_gt: bool) -> bool:
    if not label_path(out, name).is_file():
        return False
    if kind == "probs" and not probability_path(out, name).is_file():
        return False
    return not with_gt or confusion_path(out, name).is_file()


def run_images(job: EnsembleJob, items: list[dict], workers: int) -> Iterator[dict]:
    """process_image over `items`, in this process or in a pool of spawned workers (results in any order)."""
    if workers <= 1 or len(items) <= 1:
        for item in items:
            yield process_image(job, item)
        return
    context = mp.get_context("spawn")  # no fork: the parent holds threads (tqdm) and maybe torch
    with context.Pool(min(workers, len(items)), initializer=init_worker, initargs=(job,)) as pool:
        yield from pool.imap_unordered(process_in_worker, items, chunksize=1)


def stage_names(inputs: list[str], kind: str, weights: list[float], crf: bool, consensus: bool) -> list[str]:
    vote = "soft vote" if kind == "probs" else "hard vote"
    names = [f"input: {path}" for path in inputs]
    names.append(f"{vote} (weights {' '.join(f'{w:.3g}' for w in weights)})")
    if crf:
        names.append("DenseCRF")
        names.append("final: CRF + consensus write-back" if consensus else "final (= CRF)")
    else:
        names.append("final (= vote)")
    return names


def stage_table(names: list[str], metrics: list[dict]) -> str:
    """One markdown table: a row per stage."""
    width = max(len(name) for name in names)
    lines = [
        f"| {'stage':<{width}} | mIoU   | fwIoU  | pACC   | mACC   |",
        f"| {'-' * width} | -----: | -----: | -----: | -----: |",
    ]
    for name, m in zip(names, metrics, strict=True):
        lines.append(f"| {name:<{width}} | {m['mIoU']:.4f} | {m['fwIoU']:.4f} | {m['pACC']:.4f} | {m['mACC']:.4f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    from mask2former.data.coco_semantic import DataError
    from mask2former.submission import SubmissionError
    from mask2former.utils.logger import logging_to

    with logging_to(args.out):
        try:
            return ensemble(args)
        except (EnsembleError, DataError, SubmissionError, FileNotFoundError, PermissionError) as error:
            logger.error("%s", error)
            sys.exit(f"ensemble_crf.py: {error}")


def ensemble(args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    out = Path(args.out)
    kind = input_kind(args.inputs)
    inputs = [str(Path(path).resolve()) for path in args.inputs]
    weights = [float(w) for w in normalize_weights(args.weights, len(inputs))]
    names, json_classes, image_root = list_images(args)
    listing = args.json or args.gt
    if kind == "probs":
        names, class_names = check_folders([Path(p) for p in inputs], names, json_classes, listing)
        labels_of: list[dict[str, np.ndarray]] = []
    else:
        if json_classes is None:
            raise EnsembleError("CSV inputs need --json or --gt for the class list")
        if args.size:
            raise EnsembleError("--size resizes prediction folders; CSV label maps are 256x256")
        class_names = json_classes
        names, labels_of = read_csvs([Path(p) for p in inputs], names, len(class_names))
    if len(set(names)) != len(names):
        raise EnsembleError(f"{listing or inputs[0]}: an image is listed twice")
    if args.crf and image_root is None:
        raise EnsembleError("--crf reads the RGB images: pass --image-root (or --json, whose folder is the default)")
    consensus = args.crf and not args.no_consensus
    if consensus and len(inputs) == 1:
        logger.warning("one input agrees with itself everywhere: consensus write-back would undo the CRF; off")
        consensus = False
    crf = (
        {
            "sxy": args.sxy,
            "srgb": args.srgb,
            "compat": args.compat,
            "iters": args.iters,
            "gaussian_sxy": args.gauss_sxy,
            "gaussian_compat": args.gauss_compat,
        }
        if args.crf
        else None
    )
    gt_labels = load_ground_truth(args, names) if args.gt else None

    settings = {
        "kind": kind,
        "inputs": inputs,
        "weights": weights,
        "class_names": class_names,
        "size": args.size,
        "crf": crf,
        "consensus": consensus,
    }
    meta_path = out / "meta.json"
    done = [] if args.overwrite else [n for n in names if is_done(out, n, kind, gt_labels is not None)]
    if done:
        check_resume(meta_path, settings)
    meta = {
        **settings,
        "hard_vote_confidence": HARD_VOTE_CONFIDENCE if kind == "labels" else None,
        "json": args.json,
        "image_root": str(image_root) if image_root else None,
        "gt": args.gt,
        "complete": False,
    }
    atomic_write_json(meta_path, meta, indent=2)
    done_set = set(done)
    pending = [n for n in names if n not in done_set]
    logger.info(
        "%d images: %d done before, %d to process (%s of %d input(s)%s) with %d worker(s)",
        len(names),
        len(done),
        len(pending),
        "soft vote" if kind == "probs" else "hard vote",
        len(inputs),
        ", DenseCRF" + (" + consensus" if consensus else "") if crf else "",
        max(1, args.workers),
    )
    job = EnsembleJob(
        kind=kind,
        inputs=tuple(inputs),
        weights=tuple(weights),
        class_names=tuple(class_names),
        out=str(out),
        image_root=str(image_root) if image_root else None,
        size=args.size,
        crf=crf,
        consensus=consensus,
        keep_stages=gt_labels is not None,
    )
    items = [{"file_name": n, "labels": [table[n] for table in labels_of] or None} for n in pending]
    num_stages = len(inputs) + (3 if crf else 2)  # inputs, vote, [crf,] final
    total = np.zeros((num_stages, len(class_names), len(class_names)), dtype=np.int64)
    began = time.perf_counter()
    with tqdm(total=len(items), desc="ensemble", unit="img", dynamic_ncols=True, smoothing=0.1) as bar:
        for result in run_images(job, items, args.workers):
            if gt_labels is not None:
                total += score_image(out, result, gt_labels, len(class_names))
            bar.update(1)
    seconds = time.perf_counter() - began
    if gt_labels is not None:
        for name in done:
            total += np.load(confusion_path(out, name))

    csv = write_csv(out, names)
    report = None
    if gt_labels is not None:
        report = write_report(out, stage_names(args.inputs, kind, weights, bool(crf), consensus), total, class_names)
    rate = len(pending) / seconds if pending and seconds > 0 else 0.0
    meta.update(
        complete=True,
        images=len(names),
        processed=len(pending),
        skipped=len(done),
        workers=max(1, args.workers),
        seconds=round(seconds, 3),
        images_per_second=round(rate, 4),
    )
    atomic_write_json(meta_path, meta, indent=2)
    summary = (
        f"ensemble_crf.py: {len(names)} images: {len(pending)} processed in {seconds:.1f} s ({rate:.2f} images/s, "
        f"{max(1, args.workers)} worker(s)), {len(done)} done before; {time.perf_counter() - start:.1f} s in all"
    )
    logger.info(summary)
    print(summary)
    result = {"submission": str(csv), "labels": str(out / "labels"), "images": len(names)}
    if kind == "probs":
        result["probabilities"] = str(out / "probs")
    if report is not None:
        result["eval"] = str(out / "eval.json")
        result["mIoU"] = report["stages"][-1]["mIoU"]
    print(json.dumps(result))
    return {**result, "processed": len(pending), "skipped": len(done), "report": report}


def load_ground_truth(args: argparse.Namespace, names: list[str]) -> dict[str, str]:
    """file name -> rendered ground-truth label map (PNG path) for every image to score."""
    from mask2former.data.coco_semantic import ground_truth_label_paths

    gt_json = Path(args.gt)
    paths, _ = ground_truth_label_paths(gt_json, args.image_root or gt_json.parent, args.cache_dir)
    missing = [name for name in names if name not in paths]
    if missing:
        raise EnsembleError(f"{gt_json}: no ground truth for {len(missing)} image(s), e.g. {missing[0]!r}")
    return {name: paths[name] for name in names}


def score_image(out: Path, result: dict, gt_labels: dict[str, str], num_classes: int) -> np.ndarray:
    """Confusion matrices of every stage of one image (ground truth resized, nearest, to the maps' size);
    saved for resuming."""
    from mask2former.data.mapper import read_label_at
    from mask2former.evaluation.sem_seg import confusion_matrix

    name = result["file_name"]
    stages = list(result["stages"].values())
    gt = read_label_at(gt_labels[name], stages[0].shape)
    matrices = np.stack([confusion_matrix(gt, stage, num_classes) for stage in stages])
    buffer = io.BytesIO()
    np.save(buffer, matrices)
    atomic_write_bytes(confusion_path(out, name), buffer.getvalue())
    return matrices


def write_csv(out: Path, names: list[str]) -> Path:
    """OUT/submission.csv from every image's label PNG, in `names` order."""
    from mask2former.submission import write_submission

    def read(name: str) -> np.ndarray:
        path = label_path(out, name)
        label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if label is None:
            raise EnsembleError(f"cannot read the label map {path}")
        return downsample_label_map(label, SUBMISSION_SIZE, "nearest")

    with ThreadPoolExecutor(max_workers=4) as pool:
        rows = zip(names, pool.map(read, names), strict=True)
        write_submission(out / "submission.csv", rows)
    return out / "submission.csv"


def write_report(out: Path, names: list[str], totals: np.ndarray, class_names: list[str]) -> dict:
    """Print the stage table and write OUT/eval.json."""
    from mask2former.evaluation.sem_seg import metrics_from_confusion

    metrics = [metrics_from_confusion(matrix) for matrix in totals]
    print(stage_table(names, metrics))
    report = {
        "class_names": class_names,
        "pixels": int(totals[0].sum()),
        "stages": [{"stage": name, **m} for name, m in zip(names, metrics, strict=True)],
    }
    atomic_write_json(out / "eval.json", report, indent=2)
    return report


if __name__ == "__main__":
    main()
