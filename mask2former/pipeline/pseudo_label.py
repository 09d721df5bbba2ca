"""The pseudo-label loop behind tools/pseudo_label.py: rounds of predict -> label -> retrain, kept by val mIoU.

Round r (1..rounds), starting from the best model so far (round 0: the given weights, scored on val first):
  1. predict: tools/predict.py with that model on the unlabelled images -> OUT/round_r/predict. Round 1 takes
     the `init_probs` prediction folder instead when given (tools/predict.py or tools/ensemble_crf.py output).
  2. label: per image, `mask2former.pipeline.pseudo_label_maps.pseudo_label_map` at the image's size ->
  OUT/round_r/labels/
     <file_name>.png and OUT/round_r/pseudo.json (a label-map dataset registered as pseudo_round_r), a few overlays
     in OUT/round_r/overlays. Probabilities stored at any size (256x256 by default) are resized bilinearly to the
     image's size and renormalised over the classes (the resize of ensemble_crf.py --size) before thresholding.
  3. train: train_net.py from that model on DATASETS.TRAIN + pseudo_round_r -> OUT/round_r/train (its final
     evaluation scores DATASETS.TEST[0], val); with `control`, the same training without the pseudo-labels ->
     OUT/round_r/control.
  4. keep the round only if val mIoU rose by more than `min_gain`; otherwise the loop stops.

Each stage is one of the project's own commands in a child process, run in the caller's working folder (so
relative paths mean what they mean to the caller), with its output logged under OUT/round_r. Every child gets
`num_gpus` as --num-gpus (evaluation, training and prediction alike): N processes, on GPUs when there are, else on
the CPU (0: the CPU, one process). OUT/state.json records every finished stage: rerunning the same command resumes
(prediction and training resume by themselves); other settings are refused unless `overwrite`, which deletes
what the tool recorded in OUT (docs/output_folders.md) and starts again. OUT/rounds.md holds
the table of rounds. OUT/.lock keeps a second run off OUT while one is live (mask2former/utils/run_lock.py; a dead
run's lock is taken over).

Inputs are checked before anything is computed: the prediction folder of `init_probs` (every image present, its
classes, finite non-negative probabilities: a file with NaN is refused naming it), the unlabelled images' file
names (a name that is absolute, climbs out with '..', or shares its label PNG with another image is refused), and
OUT itself (a folder holding files that are not a pseudo-label run's is refused; --overwrite never deletes an
input). Everything the loop writes lies under OUT and goes through the atomic writer (mask2former/io/files.py);
the children's logs are appended as they run.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from ..config import CfgNode, load_config
from ..config.plugins import environment_with_plugins
from ..data.catalog import MetadataCatalog
from ..data.classes import palette_for
from ..data.coco_semantic import class_names_from_categories
from ..data.trash import register_datasets_from_config
from ..errors import UserError
from ..io.coco_json import read_coco_json
from ..io.files import atomic_write_bytes, atomic_write_json, atomic_write_text, output_path
from ..io.images import IMAGE_EXTENSIONS, read_image, read_label, write_label_png
from ..io.probabilities import load_probabilities, probability_path, read_prediction_folder
from ..modeling import register_all  # noqa: F401  (every model family's config keys and classes)
from ..utils.output_folder import check_claim
from ..utils.progress import progress
from ..utils.visualize import overlay
from .output_job import output_job
from .pseudo_label_maps import (
    ignored_share,
    keeps_round,
    label_png_name,
    label_png_path,
    pseudo_label_map,
    write_pseudo_dataset,
)

logger = logging.getLogger("pseudo_label")

# the children: train_net.py's and tools/predict.py's commands as `python -m` entry points of the package
TRAIN_NET = [sys.executable, "-m", "mask2former.commands.train_net"]
PREDICT = [sys.executable, "-m", "mask2former.commands.predict"]
TOOL = "pseudo_label.py"
# what a pseudo-label run puts in OUT besides its round_<r> folders
OUTPUTS = ("state.json", "rounds.md", "unlabeled.json", "log.txt")
_OWN_FOLDER = re.compile(r"^round_\d+$")


class PseudoLabelError(UserError):
    """A problem with the loop's inputs, its output folder or a failed stage; the message says which (and where
    the stage's log is)."""


@dataclass(frozen=True)
class LoopOptions:
    """What tools/pseudo_label.py's flags set (see its --help)."""

    config_file: str
    weights: str
    unlabeled: str
    out: str
    image_root: str | None = None
    rounds: int = 3
    threshold: float = 0.9
    min_gain: float = 0.0
    iters: int = 0
    tta: bool = False
    control: bool = False
    init_probs: str | None = None
    batch_size: int = 1
    num_gpus: int = 1
    overlays: int = 8
    overwrite: bool = False
    opts: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.rounds < 1 or not 0.0 <= self.threshold <= 1.0 or self.iters < 0:
            raise PseudoLabelError("--rounds must be >= 1, --threshold in [0, 1] and --iters >= 0")
        if len(self.opts) % 2:
            raise PseudoLabelError(f"config overrides come in KEY VALUE pairs, got {list(self.opts)}")
        if self.num_gpus < 0 or self.batch_size < 1:
            raise PseudoLabelError(
                f"--num-gpus must be >= 0 and --batch-size >= 1, got {self.num_gpus}, {self.batch_size}"
            )


def _resolved(path: str | Path) -> Path:
    return Path(path).expanduser().resolve()


# ---- inputs --------------------------------------------------------------------------------------------------------


def check_output_folder(options: LoopOptions) -> Path:
    """OUT (resolved), refused before anything is written when it is not this tool's folder for these settings
    (docs/output_folders.md: a new or empty folder, or one a pseudo-label run with the same settings made; with
    --overwrite also one made with other settings), lies inside the unlabelled image folder, or when --overwrite
    would delete an input kept in one of its rounds."""
    out = _resolved(options.out)
    check_claim(out, TOOL, settings_of(options), writes=OUTPUTS, overwrite=options.overwrite)
    unlabeled = _resolved(options.unlabeled)
    if unlabeled.is_dir() and out.is_relative_to(unlabeled):
        raise PseudoLabelError(
            f"--out {out} lies inside the image folder --unlabeled {unlabeled} (its outputs would be taken for "
            "images): give a folder outside it"
        )
    if options.overwrite:
        inputs = {"--weights": options.weights, "--init-probs": options.init_probs, "--unlabeled": options.unlabeled}
        for flag, value in inputs.items():
            if value is None:
                continue
            path = _resolved(value)
            if path.is_relative_to(out) and path != out and _OWN_FOLDER.match(path.relative_to(out).parts[0]):
                raise PseudoLabelError(
                    f"--overwrite would delete {flag} {path} (it lies in {out / path.relative_to(out).parts[0]}): "
                    "copy it out of --out first, or use another --out"
                )
    return out


def loop_config(options: LoopOptions) -> CfgNode:
    cfg = load_config(options.config_file, list(options.opts))
    if not cfg.DATASETS.TEST:
        raise PseudoLabelError(f"{options.config_file} has no DATASETS.TEST: rounds are kept by their val mIoU")
    return cfg


def training_categories(cfg: CfgNode) -> list[dict]:
    """The categories of the first training dataset's json (the pseudo-labels get the same classes)."""
    register_datasets_from_config(cfg)
    json_file = MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).get("json_file")
    if not json_file:
        raise PseudoLabelError(f"dataset {cfg.DATASETS.TRAIN[0]} has no json to take the classes from")
    return read_coco_json(json_file)["categories"]


def image_folder_images(folder: Path) -> list[dict]:
    """{id, file_name, height, width} of every image under `folder` (sorted), for a folder given as --unlabeled."""
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not paths:
        raise PseudoLabelError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {folder}")
    images = []
    for index, path in enumerate(paths):
        try:
            with Image.open(path) as image:
                width, height = image.size
        except OSError as error:
            raise PseudoLabelError(f"cannot read image {path} ({error})") from None
        images.append({"id": index, "file_name": path.relative_to(folder).as_posix(), "height": height, "width": width})
    return images


def check_images(json_path: Path, images: list[dict]) -> None:
    """Every image has id, file_name, height, width and its own label PNG (a.jpg and a.png would share one);
    read_coco_json has refused file_names that are absolute or climb out with '..'."""
    owners: dict[str, dict] = {}
    for image in images:
        missing = [key for key in ("id", "file_name", "height", "width") if key not in image]
        if missing:
            raise PseudoLabelError(f"{json_path}: image {image} lacks {', '.join(missing)}")
        name = label_png_name(image["file_name"])
        if name in owners:
            first = owners[name]
            raise PseudoLabelError(
                f"{json_path}: images {first['id']} ({first['file_name']}) and {image['id']} ({image['file_name']}) "
                f"would share the pseudo-label {name}: rename one"
            )
        owners[name] = image


def unlabeled_images(options: LoopOptions, categories: list[dict]) -> tuple[Path | None, Path, list[dict]]:
    """(json, image root, images) of the unlabelled set, checked, without writing anything; the json is None for
    a folder given as --unlabeled (the loop lists it into OUT/unlabeled.json). Its classes must be the training
    set's."""
    source = _resolved(options.unlabeled)
    if source.is_dir():
        images = image_folder_images(source)
        check_images(source, images)
        return None, source, images
    image_root = _resolved(options.image_root) if options.image_root else source.parent
    data = read_coco_json(source)
    if not data["images"]:
        raise PseudoLabelError(f"{source} lists no images")
    theirs, ours = class_names_from_categories(data["categories"]), class_names_from_categories(categories)
    if theirs != ours:
        raise PseudoLabelError(f"{source} has the classes {theirs}, the training data {ours}")
    check_images(source, data["images"])
    return source, image_root, data["images"]


def read_prediction(folder: Path, image: dict, class_names: list[str]) -> np.ndarray:
    """The K x h x w probabilities of one image from a prediction folder, at whatever size they were stored; an
    error naming the file when it is missing, of another image or other classes, or when the reader refuses it
    (unreadable, NaN/Inf, negative or not summing to 1: mask2former/io/probabilities.py)."""
    path = probability_path(folder, image["file_name"])

    def refuse(detail: str) -> PseudoLabelError:
        return PseudoLabelError(
            f"{folder}: no usable prediction for image {image['id']} ({image['file_name']}): {detail}"
        )

    if not path.is_file():
        raise refuse(f"{path} is missing")
    try:
        data = load_probabilities(path)
    except ValueError as error:  # ProbabilityFileError: names the file and what is wrong with it
        raise refuse(str(error)) from None
    if data["file_name"] != image["file_name"]:
        raise refuse(f"{path} holds {data['file_name']!r}")
    if data["class_names"] != list(class_names):
        raise refuse(f"{path} has the classes {data['class_names']}, the training data {list(class_names)}")
    return data["probs"]


def check_prediction_folder(folder: Path, images: list[dict], class_names: list[str]) -> None:
    """Every image has a usable prediction of these classes in `folder` (e.g. --init-probs), else an error naming
    the image and the file; a folder whose run did not finish is refused (`read_prediction_folder`)."""
    read_prediction_folder(folder)
    for image in progress(images, desc="checking --init-probs", unit="img", logger=logger):
        read_prediction(folder, image, class_names)


# ---- stages ---------------------------------------------------------------------------------------------------------


def run_command(stage: str, command: list[str], log: Path) -> None:
    """Run one of the project's commands, with this process's plug-ins; its output goes to stderr and is appended
    to `log` as it comes."""
    log.parent.mkdir(parents=True, exist_ok=True)
    logger.info("%s: %s", stage, " ".join(command))
    with open(log, "ab") as sink:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=environment_with_plugins()
        )
        assert process.stdout is not None
        for line in process.stdout:
            sink.write(line)
            sink.flush()
            sys.stderr.buffer.write(line)
            sys.stderr.flush()
        code = process.wait()
    if code != 0:
        raise PseudoLabelError(f"{stage} failed (exit code {code}); its log: {log}")


def _processes(options: LoopOptions) -> list[str]:
    """--num-gpus for every child: train_net.py and tools/predict.py read it alike (N processes, on GPUs when there
    are, else on the CPU; 0: the CPU), so evaluation, training and prediction run on the same processes."""
    return ["--num-gpus", str(options.num_gpus)]


def _train_net(options: LoopOptions) -> list[str]:
    return [*TRAIN_NET, "--config-file", str(_resolved(options.config_file))]


def evaluate_command(options: LoopOptions, weights: str, folder: Path) -> list[str]:
    """train_net.py --eval-only of `weights` into `folder`."""
    command = _train_net(options) + ["--eval-only", *_processes(options), *options.opts]
    return command + ["MODEL.WEIGHTS", weights, "OUTPUT_DIR", str(folder)]


def predict_command(options: LoopOptions, weights: str, json_path: Path, image_root: Path, folder: Path) -> list[str]:
    """tools/predict.py of `weights` on the unlabelled images into `folder` (no overlays: the loop draws its own)."""
    command = [*PREDICT, "--config-file", str(_resolved(options.config_file))]
    command += ["--weights", weights, "--json", str(json_path), "--image-root", str(image_root), "--out", str(folder)]
    command += ["--batch-size", str(options.batch_size), "--overlays", "0", *_processes(options)]
    return command + (["--tta"] if options.tta else []) + list(options.opts)


def train_command(
    options: LoopOptions, cfg: CfgNode, weights: str, folder: Path, pseudo: tuple[str, Path, Path] | None
) -> list[str]:
    """train_net.py --resume from `weights` into `folder` on DATASETS.TRAIN plus, when given, the pseudo-labelled
    set (name, json, image root)."""
    command = _train_net(options) + ["--resume", *_processes(options), *options.opts]
    command += ["MODEL.WEIGHTS", weights, "OUTPUT_DIR", str(folder)]
    if pseudo is not None:
        name, pseudo_json, image_root = pseudo
        register = [list(entry) for entry in cfg.DATASETS.REGISTER] + [[name, str(pseudo_json), str(image_root)]]
        command += ["DATASETS.REGISTER", repr(register), "DATASETS.TRAIN", repr((*cfg.DATASETS.TRAIN, name))]
    if options.iters:
        command += ["SOLVER.MAX_ITER", str(options.iters)]
    return command


def val_miou(metrics_file: Path, dataset: str) -> float:
    results = json.loads(metrics_file.read_text())["results"]
    if dataset not in results:
        raise PseudoLabelError(f"{metrics_file} has no result for {dataset} (has {', '.join(results)})")
    return float(results[dataset]["mIoU"])


def evaluate(options: LoopOptions, cfg: CfgNode, weights: str, folder: Path) -> float:
    """Val mIoU of a checkpoint (train_net.py --eval-only into folder/evaluate, its own OUTPUT_DIR; its output in
    folder/evaluate.log), cached in folder/evaluate/eval_metrics.json."""
    run_dir = folder / "evaluate"
    metrics = run_dir / "eval_metrics.json"
    if not metrics.is_file():
        run_command("evaluate", evaluate_command(options, weights, run_dir), folder / "evaluate.log")
    return val_miou(metrics, cfg.DATASETS.TEST[0])


def predict(options: LoopOptions, weights: str, json_path: Path, image_root: Path, folder: Path) -> Path:
    """tools/predict.py into folder (it resumes by itself); returns the prediction folder."""
    command = predict_command(options, weights, json_path, image_root, folder)
    run_command("predict", command, folder.parent / "predict.log")
    return folder


def write_labels(
    probs_dir: Path,
    images: list[dict],
    folder: Path,
    threshold: float,
    image_root: Path,
    overlays: int,
    class_names: list[str],
) -> dict:
    """Pseudo-label PNGs for every image (those already written are kept), a few overlays, pseudo.json; returns
    {"images", "ignored_share"} (the share of ignored pixels over all images)."""
    palette = palette_for(class_names)
    ignored_pixels, total_pixels, written = 0, 0, 0
    for image in progress(images, desc="pseudo-labels", unit="img", logger=logger):
        target = label_png_path(folder, image["file_name"])
        label = _finished_label(target, image)
        if label is None:
            probs = read_prediction(probs_dir, image, class_names)
            label = pseudo_label_map(probs, image["height"], image["width"], threshold)
            write_label_png(target, label)
        ignored_pixels += round(ignored_share(label) * label.size)
        total_pixels += label.size
        if written < overlays:
            bgr = read_image(str(image_root / image["file_name"]))
            if bgr.shape[:2] == label.shape:
                ok, encoded = cv2.imencode(".png", np.hstack([bgr, overlay(bgr, label, palette)]))
                if ok:
                    atomic_write_bytes(output_path(folder / "overlays", image["file_name"], ".png"), encoded.tobytes())
                    written += 1
    return {"images": len(images), "ignored_share": ignored_pixels / max(1, total_pixels)}


def _finished_label(path: Path, image: dict) -> np.ndarray | None:
    """The label map a previous (interrupted) run wrote for this image, or None when it must be made."""
    if not path.is_file():
        return None
    try:
        return read_label(str(path), (image["height"], image["width"]))
    except (OSError, ValueError):
        return None


def train(
    options: LoopOptions, cfg: CfgNode, weights: str, folder: Path, pseudo: tuple[str, Path, Path] | None
) -> None:
    """train_net.py from `weights` on DATASETS.TRAIN plus, when given, the pseudo-labelled set (name, json, image
    root); --resume: an interrupted round continues from its last checkpoint."""
    command = train_command(options, cfg, weights, folder, pseudo)
    run_command("train" if pseudo is not None else "control", command, folder.parent / f"{folder.name}.log")


def trained(folder: Path) -> bool:
    return (folder / "final_metrics.json").is_file() and (folder / "model_final.pth").is_file()


# ---- the loop -------------------------------------------------------------------------------------------------------


def settings_of(options: LoopOptions) -> dict:
    return {
        "config_file": str(_resolved(options.config_file)),
        "opts": list(options.opts),
        "weights": str(_resolved(options.weights)),
        "unlabeled": str(_resolved(options.unlabeled)),
        "image_root": str(_resolved(options.image_root)) if options.image_root else None,
        "threshold": options.threshold,
        "tta": options.tta,
        "iters": options.iters,
        "init_probs": str(_resolved(options.init_probs)) if options.init_probs else None,
        "control": options.control,
    }


def existing_state(out: Path, overwrite: bool) -> dict | None:
    """The state of the run in OUT (a folder this tool made for the same settings: `check_output_folder`); None
    when there is none yet (or with --overwrite). Rounds the state calls finished must still have their model."""
    path = out / "state.json"
    if overwrite:
        return None
    if not path.is_file():
        if any(_OWN_FOLDER.match(entry.name) for entry in out.glob("round_*")):
            raise PseudoLabelError(
                f"{out} holds rounds but no state.json (deleted?): use another --out, or --overwrite to delete them "
                "and start again"
            )
        return None
    try:
        state = json.loads(path.read_text())
        state["settings"], state["rounds"]
    except (ValueError, KeyError, TypeError):
        raise PseudoLabelError(f"{path} is not a pseudo-label state file: use another --out, or --overwrite") from None
    finished = [entry for entry in state["rounds"] if "kept" in entry]
    for entry in finished:
        if not Path(entry["weights"]).is_file():
            raise PseudoLabelError(
                f"{path}: round {entry['round']} finished, but its model {entry['weights']} is missing: restore it, or "
                "--overwrite to run every round again"
            )
    return state


def fresh_state(settings: dict) -> dict:
    return {"settings": settings, "rounds": [], "baseline": None, "best": None, "stopped": False}


def save_state(out: Path, state: dict) -> None:
    atomic_write_json(out / "state.json", state, indent=2)


def rounds_table(state: dict) -> str:
    """A Markdown table: one row for the starting model and one per round."""
    control = any("control_mIoU" in entry for entry in state["rounds"])
    extra = " control: no pseudo-labels |" if control else ""
    lines = [
        "| round | started from | pseudo-labelled images | ignored pixels | val mIoU | kept |" + extra,
        "| --- | --- | --- | --- | --- | --- |" + (" --- |" if control else ""),
    ]
    if state["baseline"]:
        lines.append(
            f"| 0 | --weights | - | - | {state['baseline']['mIoU']:.4f} | (start) |" + (" - |" if control else "")
        )
    for entry in state["rounds"]:
        images = entry.get("images", "-")
        ignored = f"{100 * entry['ignored_share']:.1f}%" if "ignored_share" in entry else "-"
        miou = f"{entry['mIoU']:.4f}" if "mIoU" in entry else "-"
        kept = {True: "yes", False: "no"}.get(entry.get("kept"), "(interrupted)")
        row = f"| {entry['round']} | round {entry['start_round']} | {images} | {ignored} | {miou} | {kept} |"
        if control:
            row += f" {entry['control_mIoU']:.4f} |" if "control_mIoU" in entry else " - |"
        lines.append(row)
    return "\n".join(lines)


def run_loop(options: LoopOptions) -> dict:
    """Run (or resume) the rounds; prints the table of rounds and returns OUT/state.json's content."""
    out = check_output_folder(options)
    cfg = loop_config(options)
    weights = str(_resolved(options.weights))
    if not Path(weights).is_file():
        raise PseudoLabelError(f"checkpoint not found: {weights}")
    if options.init_probs and not Path(options.init_probs).is_dir():
        raise PseudoLabelError(f"--init-probs {options.init_probs} is not a folder")
    settings = settings_of(options)
    state = existing_state(out, options.overwrite) if out.is_dir() else None
    categories = training_categories(cfg)
    class_names = class_names_from_categories(categories)
    json_path, image_root, images = unlabeled_images(options, categories)
    labelled = state is not None and any("ignored_share" in entry for entry in state["rounds"])
    if options.init_probs and not labelled:  # before anything is computed, written or deleted
        check_prediction_folder(_resolved(options.init_probs), images, class_names)
    # a second run on OUT stops here, naming the first; --overwrite deletes what this tool recorded there
    rounds = [f"round_{number}" for number in range(options.rounds + 1)]
    with output_job(out, TOOL, settings, OUTPUTS, options.overwrite, start_over=options.overwrite, also_records=rounds):
        began = time.perf_counter()
        state = existing_state(out, options.overwrite) or fresh_state(settings)
        save_state(out, state)
        if json_path is None:
            json_path = out / "unlabeled.json"
            atomic_write_json(json_path, {"images": images, "annotations": [], "categories": categories})
        loop = Loop(options, cfg, out, (json_path, image_root, images), categories, class_names)
        state = loop.run(weights, state)
        logger.info("pseudo-label loop finished in %.1f s", time.perf_counter() - began)
    return state


@dataclass(frozen=True)
class Loop:
    """What every round uses: the options, the config, OUT, the unlabelled set (json, image root, images), its
    categories and class names."""

    options: LoopOptions
    cfg: CfgNode
    out: Path
    unlabeled: tuple[Path, Path, list[dict]]
    categories: list[dict]
    class_names: list[str]

    def run(self, weights: str, state: dict) -> dict:
        """Score the starting model (round 0), then run the rounds until --rounds are kept or one is not; writes
        OUT/rounds.md, prints the table and returns the state."""
        if state["baseline"] is None:
            logger.info("round 0: scoring %s on %s", weights, self.cfg.DATASETS.TEST[0])
            miou = evaluate(self.options, self.cfg, weights, self.out / "round_0")
            state["baseline"] = {"weights": weights, "mIoU": miou}
            state["best"] = {"round": 0, **state["baseline"]}
            save_state(self.out, state)
        logger.info("round 0: val mIoU %.4f", state["baseline"]["mIoU"])
        while not state["stopped"] and len([r for r in state["rounds"] if "kept" in r]) < self.options.rounds:
            entry = self.current_round(state)
            if "ignored_share" not in entry:
                self.label(entry)
                save_state(self.out, state)
            self.train_and_judge(entry, state)
            save_state(self.out, state)
        table = rounds_table(state)
        atomic_write_text(self.out / "rounds.md", table + "\n")
        print(table)
        best = state["best"]
        print(f"best: round {best['round']}, val mIoU {best['mIoU']:.4f}, {best['weights']}")
        return state

    def current_round(self, state: dict) -> dict:
        """The state's entry of the round to run: an interrupted one, or a new one from the best model so far."""
        number = len([entry for entry in state["rounds"] if "kept" in entry]) + 1
        if state["rounds"] and "kept" not in state["rounds"][-1]:
            entry = state["rounds"][-1]
        else:
            entry = {"round": number, "start_round": state["best"]["round"], "start_weights": state["best"]["weights"]}
            state["rounds"].append(entry)
            save_state(self.out, state)
        logger.info("round %d: from round %d (%s)", number, entry["start_round"], entry["start_weights"])
        return entry

    def label(self, entry: dict) -> None:
        """Predict the unlabelled images with the round's starting model (round 1: --init-probs when given) and
        write their pseudo-labels and pseudo.json; their statistics go into `entry`."""
        number, options = entry["round"], self.options
        folder = self.out / f"round_{number}"
        json_path, image_root, images = self.unlabeled
        if number == 1 and options.init_probs:
            probs_dir = _resolved(options.init_probs)
        else:
            probs_dir = predict(options, entry["start_weights"], json_path, image_root, folder / "predict")
        stats = write_labels(
            probs_dir, images, folder, options.threshold, image_root, options.overlays, self.class_names
        )
        pseudo_json = write_pseudo_dataset(folder, images, self.categories)
        entry.update(stats, pseudo_json=str(pseudo_json))
        logger.info(
            "round %d: %d pseudo-labelled images, %.1f%% of pixels ignored (confidence < %.2f)",
            number,
            stats["images"],
            100 * stats["ignored_share"],
            options.threshold,
        )

    def train_and_judge(self, entry: dict, state: dict) -> None:
        """Train the round (and its control with --control), then keep it when its val mIoU beats the best so far;
        otherwise the loop stops."""
        number, options, cfg = entry["round"], self.options, self.cfg
        folder = self.out / f"round_{number}"
        val = cfg.DATASETS.TEST[0]
        train_dir = folder / "train"
        if not trained(train_dir):
            pseudo = (f"pseudo_round_{number}", Path(entry["pseudo_json"]), self.unlabeled[1])
            train(options, cfg, entry["start_weights"], train_dir, pseudo)
        miou = val_miou(train_dir / "final_metrics.json", val)
        if options.control:
            control_dir = folder / "control"
            if not trained(control_dir):
                train(options, cfg, entry["start_weights"], control_dir, None)
            entry["control_mIoU"] = val_miou(control_dir / "final_metrics.json", val)
            logger.info("round %d: the control (no pseudo-labels) reached val mIoU %.4f", number, entry["control_mIoU"])
        kept = keeps_round(miou, state["best"]["mIoU"], options.min_gain)
        entry.update(weights=str(train_dir / "model_final.pth"), mIoU=miou, kept=kept)
        if kept:
            state["best"] = {"round": number, "weights": entry["weights"], "mIoU": miou}
            logger.info("round %d: val mIoU %.4f, kept", number, miou)
            return
        state["stopped"] = True
        logger.info(
            "round %d: val mIoU %.4f, not above %.4f: not kept; the loop stops (another round would "
            "start from the same model and labels)",
            number,
            miou,
            state["best"]["mIoU"],
        )
