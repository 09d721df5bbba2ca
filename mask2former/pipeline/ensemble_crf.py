"""The logic of tools/ensemble_crf.py: N prediction folders (soft vote) or N submission CSVs (hard vote) ->
optional DenseCRF -> consensus write-back -> OUT/labels, OUT/probs, OUT/submission.csv, OUT/meta.json, and with
ground truth a table of every stage's mIoU (OUT/eval.json). The tool's docstring is the user's manual.

`run(EnsembleOptions(...))` is the whole command (the options are its flags). Order of work, so that a bad input
leaves nothing behind: the options, the output folder (never an input folder, never where an input file lies),
the inputs against each other and the json, then every input file of every image to process is read and checked
(probabilities via mask2former/io/probabilities.py: a NaN, negative or unnormalised map is refused naming the file),
and only then is anything written. The per-image step (vote, CRF, consensus, writes) is
mask2former/pipeline/ensemble_images.py's `process_image`, in this process or in a pool of spawned workers.

mask2former.data and .evaluation import torch: they are imported where needed, so that the spawned workers (which
import the tool, and so this module, as their __main__) start quickly.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import multiprocessing as mp
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..io.files import atomic_write_bytes, atomic_write_json, output_path
from ..io.probabilities import (
    PROBS_FOLDER,
    PredictionFolder,
    probability_key,
    probability_path,
    read_prediction_folder,
    read_probability_field,
)
from ..io.submission import SUBMISSION_SIZE, downsample_label_map, read_submission
from ..utils.output_folder import check_claim, file_sha1
from ..utils.processes import usable_cpus
from ..utils.progress import Progress, progress
from .crf import CRF_DEFAULTS, check_crf_parameters
from .ensemble_images import EnsembleJob, check_inputs, init_worker, label_path, process_image, process_in_worker
from .output_job import JobRecord, announce, output_job, rate
from .voting import HARD_VOTE_CONFIDENCE, EnsembleError, normalize_weights

logger = logging.getLogger("ensemble_crf")

SETTINGS = ("kind", "inputs", "weights", "class_names", "size", "crf", "consensus")
# what a run writes directly in OUT, and the folders it fills
OUTPUT_FILES = ("submission.csv", "meta.json", "eval.json", "log.txt")
OUTPUT_FOLDERS = ("labels", "probs", "eval")


@dataclass
class EnsembleOptions:
    """The flags of tools/ensemble_crf.py (same names, same defaults)."""

    inputs: list[str]
    out: str
    weights: list[float] | None = None
    json: str | None = None
    image_root: str | None = None
    gt: str | None = None
    cache_dir: str | None = None
    size: int = 0
    crf: bool = False
    sxy: float = CRF_DEFAULTS["sxy"]
    srgb: float = CRF_DEFAULTS["srgb"]
    compat: float = CRF_DEFAULTS["compat"]
    gauss_sxy: float = CRF_DEFAULTS["gaussian_sxy"]
    gauss_compat: float = CRF_DEFAULTS["gaussian_compat"]
    iters: int = int(CRF_DEFAULTS["iters"])
    consensus: bool = False  # after the CRF, the inputs' class where all agree (--consensus)
    workers: int = 1
    overwrite: bool = False

    def crf_settings(self) -> dict:
        """The keyword arguments of `dense_crf`."""
        return {
            "sxy": self.sxy,
            "srgb": self.srgb,
            "compat": self.compat,
            "iters": self.iters,
            "gaussian_sxy": self.gauss_sxy,
            "gaussian_compat": self.gauss_compat,
        }

    def listing(self) -> str | None:
        """The json that lists the images: --json, else --gt."""
        return self.json or self.gt

    def image_folder(self) -> Path | None:
        """--image-root, else the listing json's folder."""
        if self.image_root:
            return Path(self.image_root)
        listing = self.listing()
        return Path(listing).parent if listing else None


def check_options(options: EnsembleOptions) -> None:
    if not options.inputs:
        raise EnsembleError("no inputs: give prediction folders or submission CSVs")
    check_crf_parameters(**options.crf_settings())
    if options.size < 0:
        raise EnsembleError(f"--size {options.size}: must be >= 0 (0: the maps keep their size)")


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


def refuse_unsafe_out(options: EnsembleOptions, kind: str) -> None:
    """OUT is never an input prediction folder (its npz files, meta.json and submission.csv would be replaced) nor
    inside one (its outputs would become predictions of that folder), nor the image folder (OUT/labels could be
    the dataset's label PNGs), and no input file lies where the run writes."""
    if Path(options.out).exists() and not Path(options.out).is_dir():
        raise EnsembleError(f"--out {options.out} is a file: give a folder for the outputs")
    out = Path(options.out).resolve()
    written = {out / name for name in OUTPUT_FILES}
    folders = [out / name for name in OUTPUT_FOLDERS]
    if kind == "probs":
        for folder in options.inputs:
            resolved = Path(folder).resolve()
            if any(resolved.is_relative_to(output) for output in folders):
                raise EnsembleError(f"--out {options.out} would write into the input folder {folder}: give another one")
            if out == resolved or out.is_relative_to(resolved):
                where = "is" if out == resolved else "lies inside"
                raise EnsembleError(
                    f"--out {options.out} {where} the input folder {folder}: its predictions would be overwritten; "
                    "give another --out"
                )
    image_folder = options.image_folder()
    if image_folder is not None and out == image_folder.resolve():
        raise EnsembleError(
            f"--out {options.out} is the image folder {image_folder}: give another --out (outputs never go beside "
            "the data)"
        )
    files = [*(options.inputs if kind == "labels" else []), options.json, options.gt]
    for file in filter(None, files):
        resolved = Path(file).resolve()
        if resolved in written or any(resolved.is_relative_to(folder) for folder in folders):
            raise EnsembleError(f"--out {options.out} would overwrite the input {file}: give another --out")


def folder_class_names(folder: PredictionFolder) -> list[str]:
    """The class names of a prediction folder: its meta.json's, else its first npz's."""
    names = folder.meta.get("class_names")
    if isinstance(names, list) and names:
        return [str(name) for name in names]
    if not folder.files:
        raise EnsembleError(f"{folder.path}: no predictions in {folder.path / PROBS_FOLDER}")
    return [str(name) for name in read_probability_field(next(iter(folder.files.values())), "class_names")]


def list_images(options: EnsembleOptions) -> tuple[list[str], list[str] | None]:
    """(file names from --json or --gt, their class names) or ([], None) without a json."""
    from ..data.coco_semantic import class_names_from_categories
    from ..io.coco_json import read_coco_json

    listing = options.listing()
    if not listing:
        return [], None
    data = read_coco_json(listing)
    names = [image.get("file_name") for image in data["images"]]
    if not names or any(not isinstance(name, str) for name in names):
        raise EnsembleError(f"{listing}: lists no images, or an image without a file_name")
    return names, class_names_from_categories(data["categories"])


def check_folders(
    folders: list[PredictionFolder], names: list[str], class_names: list[str] | None, listing: str | None
) -> tuple[list[str], list[str]]:
    """Checks prediction folders (read by `read_prediction_folder`: finished runs only) against each other and
    the json: the same classes, every image present. Returns (file names, class names)."""
    from ..data.coco_semantic import check_class_lists

    reference, source = class_names, listing
    for folder in folders:
        names_here = folder_class_names(folder)
        if reference is None:
            reference, source = names_here, str(folder.path)
        else:
            check_class_lists(names_here, str(folder.path), reference, str(source))
    if not names:  # no json: the first folder's images, and every folder holds exactly those
        first = folders[0]
        if first.file_names:
            names = list(first.file_names)
        else:
            names = [str(read_probability_field(path, "file_name")) for path in first.files.values()]
        if not names:
            raise EnsembleError(f"{first.path}: no predictions in {first.path / PROBS_FOLDER}")
        for folder in folders[1:]:
            extra = sorted(set(folder.files) - set(first.files))
            if extra:
                raise EnsembleError(f"{folder.path}: prediction {extra[0]} has no counterpart in {first.path}")
    for folder in folders:
        for name in names:
            if probability_key(name) not in folder.files:
                path = probability_path(folder.path, name)
                raise EnsembleError(f"{folder.path}: no prediction for image {name!r} ({path} is missing)")
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


def confusion_path(out: Path, name: str) -> Path:
    """OUT/eval/images/<file_name>.npy: one image's confusion matrices, one per stage (for resuming --gt)."""
    return output_path(out / "eval" / "images", name, ".npy")


def read_confusion(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """A saved image's confusion matrices (this run's own file); an error naming it if it is not what we wrote."""
    try:
        matrices = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise EnsembleError(f"{path}: unreadable ({error}); delete it, or run again with --overwrite") from None
    if matrices.shape != shape:
        raise EnsembleError(f"{path}: matrices of shape {matrices.shape}, expected {shape}; run with --overwrite")
    return matrices


def is_done(out: Path, name: str, kind: str, with_gt: bool) -> bool:
    if not label_path(out, name).is_file():
        return False
    if kind == "probs" and not probability_path(out, name).is_file():
        return False
    return not with_gt or confusion_path(out, name).is_file()


def check_all_inputs(job: EnsembleJob, names: list[str]) -> None:
    """`check_inputs` for every image, in threads (npz decompression releases the GIL); the first bad file stops
    it, before anything is written."""
    if not names:
        return
    pool = ThreadPoolExecutor(max_workers=min(8, usable_cpus(), len(names)))
    try:
        checked = pool.map(lambda name: check_inputs(job, name), names)
        for _ in progress(checked, total=len(names), desc="checking inputs", unit="img", logger=logger):
            pass
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def run_images(job: EnsembleJob, items: list[dict], workers: int) -> Iterator[dict]:
    """process_image over `items`, in this process or in a pool of spawned workers (results in any order)."""
    if workers <= 1 or len(items) <= 1:
        for item in items:
            yield process_image(job, item)
        return
    context = mp.get_context("spawn")  # no fork: the parent holds threads (progress bar, pools) and maybe torch
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


def run(options: EnsembleOptions) -> dict:
    """The whole command. Returns {submission, labels, images, [probabilities], [eval, mIoU], processed, skipped,
    report}; user errors raise (EnsembleError and the readers' errors, all UserError), before anything is written
    when they concern the options, the inputs or OUT."""
    check_options(options)
    kind = input_kind(options.inputs)
    refuse_unsafe_out(options, kind)
    plan = plan_ensemble(options, kind)  # reads and checks everything, writes nothing
    # one run per OUT (a second one stops here); OUT is ensemble_crf's own, for this job, or new
    with output_job(options.out, TOOL, plan.identity, [*OUTPUT_FILES, *OUTPUT_FOLDERS], options.overwrite):
        return ensemble(plan)


TOOL = "ensemble_crf.py"


@dataclass
class EnsemblePlan:
    """A checked command: the per-image job, the images (done before and pending), the ground truth, what
    identifies the run's job (`identity`), and meta.json's first version."""

    options: EnsembleOptions
    job: EnsembleJob
    names: list[str]
    done: list[str]
    pending: list[str]
    labels_of: list[dict[str, np.ndarray]]
    gt_labels: dict[str, str] | None
    identity: dict
    meta: dict


def input_identities(options: EnsembleOptions, kind: str, folders: list[PredictionFolder]) -> dict:
    """What the job's results depend on besides the settings, by content: each input's predictions
    (`PredictionFolder.identity`) or CSV bytes, the listing json's and the ground truth's bytes."""
    if kind == "probs":
        inputs = [folder.identity() for folder in folders]
    else:
        inputs = [file_sha1(path) for path in options.inputs]
    return {
        "input_ids": inputs,
        "json_sha1": file_sha1(options.json) if options.json else None,
        "gt_sha1": file_sha1(options.gt) if options.gt else None,
    }


def refuse_stale_predictions(folders: list[PredictionFolder], names: list[str], image_root: Path) -> None:
    """EnsembleError when an input's prediction of an image was made from another version of the image file than
    the one under `image_root` (the sha1 predict recorded in the npz; files without one are not checked)."""

    def check(name: str) -> str | None:
        image = image_root / name
        if not image.is_file():
            return None  # the CRF names a missing image; without --crf the image is not needed
        current = file_sha1(image)
        for folder in folders:
            path = folder.files[probability_key(name)]
            recorded = str(read_probability_field(path, "source_sha1"))
            if recorded and recorded != current:
                return (
                    f"{path} was predicted from another version of {image} (the image changed since): predict "
                    f"{folder.path} again (the same predict.py command redoes such images)"
                )
        return None

    if not names:
        return
    with ThreadPoolExecutor(max_workers=min(8, usable_cpus() + 2)) as pool:
        for problem in pool.map(check, names):
            if problem is not None:
                raise EnsembleError(problem)


def plan_ensemble(options: EnsembleOptions, kind: str) -> EnsemblePlan:
    """Read and check the inputs against each other, the json and OUT (`check_claim`); what is done already and
    what is pending; every pending input file checked. Writes nothing."""
    out = Path(options.out)
    inputs = [str(Path(path).resolve()) for path in options.inputs]
    weights = [float(w) for w in normalize_weights(options.weights, len(inputs))]
    image_root = options.image_folder()
    folders, labels_of, names, class_names = read_inputs(options, kind, inputs)
    for name in names:  # every output name stays under OUT (UnsafePathError names the image otherwise)
        label_path(out, name)
    if options.crf and image_root is None:
        raise EnsembleError("--crf reads the RGB images: pass --image-root (or --json, whose folder is the default)")
    crf = options.crf_settings() if options.crf else None
    gt_labels = load_ground_truth(options, names) if options.gt else None
    settings = {
        "kind": kind,
        "inputs": inputs,
        "weights": weights,
        "class_names": class_names,
        "size": options.size,
        "crf": crf,
        "consensus": consensus_wanted(options, inputs),
    }
    identity = {**settings, **input_identities(options, kind, folders)}
    record, _ = check_claim(out, TOOL, identity, writes=[*OUTPUT_FILES, *OUTPUT_FOLDERS], overwrite=options.overwrite)
    resumable = record is not None and not options.overwrite
    done = [n for n in names if is_done(out, n, kind, gt_labels is not None)] if resumable else []
    job = EnsembleJob(
        kind=kind,
        inputs=tuple(inputs),
        weights=tuple(weights),
        class_names=tuple(class_names),
        out=str(out),
        image_root=str(image_root) if image_root else None,
        size=options.size,
        crf=crf,
        consensus=settings["consensus"],
        keep_stages=gt_labels is not None,
    )
    done_set = set(done)
    pending = [n for n in names if n not in done_set]
    if kind == "probs":
        check_all_inputs(job, pending)
        if image_root is not None:
            refuse_stale_predictions(folders, pending, image_root)
    meta = {
        **settings,
        "hard_vote_confidence": HARD_VOTE_CONFIDENCE if kind == "labels" else None,
        "json": options.json,
        "image_root": str(image_root) if image_root else None,
        "gt": options.gt,
        "file_names": names,
    }
    return EnsemblePlan(options, job, names, done, pending, labels_of, gt_labels, identity, meta)


def read_inputs(
    options: EnsembleOptions, kind: str, inputs: list[str]
) -> tuple[list[PredictionFolder], list[dict[str, np.ndarray]], list[str], list[str]]:
    """(prediction folders, CSV label maps, image names, class names) of the inputs, checked against each other
    and the listing json."""
    names, json_classes = list_images(options)
    listing = options.listing()
    folders: list[PredictionFolder] = []
    labels_of: list[dict[str, np.ndarray]] = []
    if kind == "probs":
        folders = [read_prediction_folder(path) for path in inputs]
        names, class_names = check_folders(folders, names, json_classes, listing)
    else:
        if json_classes is None:
            raise EnsembleError("CSV inputs need --json or --gt for the class list")
        if options.size:
            raise EnsembleError("--size resizes prediction folders; CSV label maps are 256x256")
        class_names = json_classes
        names, labels_of = read_csvs([Path(p) for p in inputs], names, len(class_names))
    if len(set(names)) != len(names):
        raise EnsembleError(f"{listing or inputs[0]}: an image is listed twice")
    return folders, labels_of, names, class_names


def consensus_wanted(options: EnsembleOptions, inputs: list[str]) -> bool:
    """--consensus with --crf, except for one input (it agrees with itself everywhere: it would undo the CRF)."""
    consensus = options.crf and options.consensus
    if consensus and len(inputs) == 1:
        logger.warning("one input agrees with itself everywhere: consensus write-back would undo the CRF; off")
        consensus = False
    return consensus


def ensemble(plan: EnsemblePlan) -> dict:
    """Process the pending images of `plan` into OUT, then write the CSV, the report and meta.json."""
    start = time.perf_counter()
    options, job, names, done, pending = plan.options, plan.job, plan.names, plan.done, plan.pending
    out, gt_labels = Path(options.out), plan.gt_labels
    workers = max(1, options.workers)
    record = JobRecord(out, plan.meta)
    record.begin()
    logger.info(
        "%d images: %d done before, %d to process (%s of %d input(s)%s) with %d worker(s)",
        len(names),
        len(done),
        len(pending),
        "soft vote" if job.kind == "probs" else "hard vote",
        len(job.inputs),
        ", DenseCRF" + (" + consensus" if job.consensus else "") if job.crf else "",
        workers,
    )
    began = time.perf_counter()
    total = process_pending(plan, workers)
    seconds = time.perf_counter() - began
    if gt_labels is not None:
        for name in done:
            total += read_confusion(confusion_path(out, name), total.shape)
    csv = write_csv(out, names)
    report = None
    if gt_labels is not None:
        stages = stage_names(options.inputs, job.kind, job.weights, bool(job.crf), job.consensus)
        report = write_report(out, stages, total, job.class_names)
    record.finish(
        predictions_id=hashlib.sha1(json.dumps(plan.identity, sort_keys=True).encode()).hexdigest(),
        images=len(names),
        processed=len(pending),
        skipped=len(done),
        workers=workers,
        seconds=round(seconds, 3),
        images_per_second=round(rate(len(pending), seconds), 4),
    )
    summary = (
        f"ensemble_crf.py: {len(names)} images: {len(pending)} processed in {seconds:.1f} s "
        f"({rate(len(pending), seconds):.2f} images/s, {workers} worker(s)), {len(done)} done before; "
        f"{time.perf_counter() - start:.1f} s in all"
    )
    result = {"submission": str(csv), "labels": str(out / "labels"), "images": len(names)}
    if job.kind == "probs":
        result["probabilities"] = str(out / "probs")
    if report is not None:
        result["eval"] = str(out / "eval.json")
        result["mIoU"] = report["stages"][-1]["mIoU"]
    announce(logger, summary, result)
    return {**result, "processed": len(pending), "skipped": len(done), "report": report}


def process_pending(plan: EnsemblePlan, workers: int) -> np.ndarray:
    """Every pending image through the per-image step, with a progress bar; the confusion matrices of each stage
    summed over them (zeros without ground truth)."""
    job, out, gt_labels = plan.job, Path(plan.options.out), plan.gt_labels
    items = [{"file_name": n, "labels": [table[n] for table in plan.labels_of] or None} for n in plan.pending]
    num_stages = len(job.inputs) + (3 if job.crf else 2)  # inputs, vote, [crf,] final
    num_classes = len(job.class_names)
    total = np.zeros((num_stages, num_classes, num_classes), dtype=np.int64)
    with Progress(len(items), "ensemble", unit="img", logger=logger) as meter:
        for result in run_images(job, items, workers):
            if gt_labels is not None:
                total += score_image(out, result, gt_labels, num_classes)
            meter.update(1)
    return total


def load_ground_truth(options: EnsembleOptions, names: list[str]) -> dict[str, str]:
    """file name -> rendered ground-truth label map (PNG path) for every image to score."""
    from ..data.coco_semantic import ground_truth_label_paths

    gt_json = Path(options.gt)
    paths, _ = ground_truth_label_paths(gt_json, options.image_root or gt_json.parent, options.cache_dir)
    missing = [name for name in names if name not in paths]
    if missing:
        raise EnsembleError(f"{gt_json}: no ground truth for {len(missing)} image(s), e.g. {missing[0]!r}")
    return {name: paths[name] for name in names}


def score_image(out: Path, result: dict, gt_labels: dict[str, str], num_classes: int) -> np.ndarray:
    """Confusion matrices of every stage of one image (ground truth resized, nearest, to the maps' size);
    saved for resuming."""
    from ..evaluation.sem_seg import confusion_matrix
    from ..io.images import read_label_at

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
    from ..io.images import LabelMapError, ReadError, read_label
    from ..io.submission import write_submission

    def read(name: str) -> np.ndarray:
        path = label_path(out, name)
        try:
            label = read_label(path)
        except (ReadError, LabelMapError) as error:
            raise EnsembleError(f"{error}: delete it and run again, which remakes it") from None
        return downsample_label_map(label, SUBMISSION_SIZE, "nearest")

    with ThreadPoolExecutor(max_workers=4) as pool:
        rows = zip(names, pool.map(read, names), strict=True)
        write_submission(out / "submission.csv", rows)
    return out / "submission.csv"


def write_report(out: Path, names: list[str], totals: np.ndarray, class_names: list[str]) -> dict:
    """Print the stage table and write OUT/eval.json."""
    from ..evaluation.sem_seg import metrics_from_confusion

    metrics = [metrics_from_confusion(matrix) for matrix in totals]
    print(stage_table(names, metrics))
    report = {
        "class_names": class_names,
        "pixels": int(totals[0].sum()),
        "stages": [{"stage": name, **m} for name, m in zip(names, metrics, strict=True)],
    }
    atomic_write_json(out / "eval.json", report, indent=2)
    return report
