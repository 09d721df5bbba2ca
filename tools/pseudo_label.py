#!/usr/bin/env python
"""The pseudo-label loop: label the unlabelled images, retrain on train + pseudo-labels, keep what helps, repeat.

    python tools/pseudo_label.py --config-file configs/m2f_swin_l.yaml --weights output/m2f_swin_l/model_final.pth \\
        --unlabeled DATA/test.json --out output/pseudo --rounds 3 --threshold 0.9 --tta [KEY VALUE ...]
    # round 1 from the CRF ensemble's probabilities (tools/ensemble_crf.py OUT, folder inputs) instead of the model:
    python tools/pseudo_label.py ... --init-probs output/ens_test

Round r (1..--rounds), starting from the best model so far (round 0: --weights, scored on val first):
  1. predict: tools/predict.py with that model on the unlabelled images (a COCO json such as test.json, or a
     folder of images) -> OUT/round_r/predict (class probabilities; --tta, --batch-size as in predict.py). Round 1
     takes --init-probs instead when given.
  2. label: per image, the class of highest probability where it reaches --threshold, 255 (ignored) elsewhere,
     at the image's size -> OUT/round_r/labels/<file_name>.png and OUT/round_r/pseudo.json, a dataset
     registered as pseudo_round_r (mask2former/pseudo_label.py); a few overlays in OUT/round_r/overlays.
  3. train: train_net.py from that model (MODEL.WEIGHTS) on DATASETS.TRAIN + pseudo_round_r for --iters iterations
     (default SOLVER.MAX_ITER) -> OUT/round_r/train, then its final evaluation on DATASETS.TEST[0] (val).
  4. keep the round only if val mIoU rose by more than --min-gain; otherwise the loop stops there (the next round
     would start from the same model and the same labels).
With --control, every round also trains the same iterations from the same model on DATASETS.TRAIN alone
(OUT/round_r/control) and the table shows its val mIoU beside the round's: what the pseudo-labels add beyond the
extra training (a round is still kept by its own mIoU).
Every stage is one of the project's own commands in a child process (their logs under OUT/round_r), so the loop
adds nothing to how models are trained, predicted or scored. KEY VALUE overrides go to predict and training alike.

Resuming: OUT/state.json records every finished stage. Rerunning the same command after an interruption, between
or inside a round, goes on from there: prediction skips images already written, labelling skips maps already
written, training resumes from its last checkpoint (train_net.py --resume). A rerun with other settings is refused
unless --overwrite. At the end a table of the rounds is printed and written to OUT/rounds.md; OUT/state.json names
the best weights.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from mask2former.config import get_cfg
from mask2former.data.catalog import MetadataCatalog
from mask2former.data.coco_semantic import DataError, class_names_from_categories, read_coco_json
from mask2former.data.mapper import read_image
from mask2former.data.trash import palette_for, register_datasets_from_config
from mask2former.ensemble import write_label_png
from mask2former.prediction_io import check_probabilities, load_probabilities, probability_path
from mask2former.pseudo_label import (
    ignored_share,
    keeps_round,
    label_png_name,
    pseudo_label_map,
    write_pseudo_dataset,
)
from mask2former.utils.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from mask2former.utils.logger import logging_to
from mask2former.utils.resume import changed_settings
from mask2former.utils.visualize import overlay

logger = logging.getLogger("pseudo_label")

REPO = Path(__file__).resolve().parents[1]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# state.json keys that must agree for a run to resume into an existing folder
SETTINGS = (
    "config_file", "opts", "weights", "unlabeled", "image_root", "threshold", "tta", "iters", "init_probs", "control"
)  # fmt: skip
_CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")


class PseudoLabelError(RuntimeError):
    """A problem with the inputs or a failed stage; the message says which (and where its log is)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, help="the model's config (its DATASETS.TRAIN and TEST)")
    parser.add_argument("--weights", required=True, help="the checkpoint to start from (round 0)")
    parser.add_argument("--unlabeled", required=True, help="COCO json of the unlabelled images, or a folder of images")
    parser.add_argument("--image-root", help="folder that the json's file_name is relative to (default: its folder)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--rounds", type=int, default=3, help="most rounds to run (default %(default)s)")
    parser.add_argument(
        "--threshold", type=float, default=0.9, help="confidence below which a pixel is ignored (default %(default)s)"
    )
    parser.add_argument("--min-gain", type=float, default=0.0, help="val mIoU gain a round needs to be kept")
    parser.add_argument("--iters", type=int, default=0, help="training iterations per round (0: SOLVER.MAX_ITER)")
    parser.add_argument("--tta", action="store_true", help="predict with TEST.AUG (flip and scales)")
    parser.add_argument(
        "--control",
        action="store_true",
        help="each round also trains the same iterations from the same model without pseudo-labels, and shows it",
    )
    parser.add_argument("--init-probs", help="round 1's probabilities: a prediction folder (predict / ensemble_crf)")
    parser.add_argument("--batch-size", type=int, default=1, help="predict.py --batch-size")
    parser.add_argument("--num-gpus", type=int, default=1, help="GPUs for training and prediction (0: CPU)")
    parser.add_argument("--overlays", type=int, default=8, help="pseudo-label overlay PNGs per round (0: none)")
    parser.add_argument("--overwrite", action="store_true", help="start again, discarding OUT's rounds")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides (last)")
    args = parser.parse_args(argv)
    args.opts = list(args.opts or [])
    if args.opts and not _CONFIG_KEY.match(args.opts[0]):
        parser.error(f"unrecognised argument {args.opts[0]!r} (config overrides are KEY VALUE pairs, last)")
    if len(args.opts) % 2:
        parser.error(f"config overrides come in KEY VALUE pairs, got {args.opts}")
    if args.rounds < 1 or not 0.0 <= args.threshold <= 1.0 or args.iters < 0:
        parser.error("--rounds must be >= 1, --threshold in [0, 1] and --iters >= 0")
    return args


# ---- inputs --------------------------------------------------------------------------------------------------------


def load_config(args: argparse.Namespace):
    cfg = get_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    if not cfg.DATASETS.TEST:
        raise PseudoLabelError("the config has no DATASETS.TEST: rounds are kept by their val mIoU")
    cfg.freeze()
    return cfg


def training_categories(cfg) -> list[dict]:
    """The categories of the first training dataset's json (the pseudo-labels get the same classes)."""
    register_datasets_from_config(cfg)
    json_file = MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).get("json_file")
    if not json_file:
        raise PseudoLabelError(f"dataset {cfg.DATASETS.TRAIN[0]} has no json to take the classes from")
    return read_coco_json(json_file)["categories"]


def image_folder_json(folder: Path, categories: list[dict], out: Path) -> Path:
    """OUT/unlabeled.json listing every image under `folder` (sorted), for a folder given as --unlabeled."""
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise PseudoLabelError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {folder}")
    images = []
    for index, path in enumerate(paths):
        try:
            with Image.open(path) as image:
                width, height = image.size
        except OSError as error:
            raise PseudoLabelError(f"cannot read image {path} ({error})") from None
        images.append({"id": index, "file_name": str(path.relative_to(folder)), "height": height, "width": width})
    target = out / "unlabeled.json"
    atomic_write_json(target, {"images": images, "annotations": [], "categories": categories})
    return target


def unlabeled_images(args: argparse.Namespace, categories: list[dict], out: Path) -> tuple[Path, Path, list[dict]]:
    """(json, image root, images) of the unlabelled set; its classes must be the training set's."""
    source = Path(args.unlabeled).expanduser().resolve()
    if source.is_dir():
        json_path, image_root = image_folder_json(source, categories, out), source
    else:
        json_path = source
        image_root = Path(args.image_root).expanduser().resolve() if args.image_root else source.parent
    data = read_coco_json(json_path)
    if not data["images"]:
        raise PseudoLabelError(f"{json_path} lists no images")
    theirs, ours = class_names_from_categories(data["categories"]), class_names_from_categories(categories)
    if theirs != ours:
        raise PseudoLabelError(f"{json_path} has the classes {theirs}, the training data {ours}")
    for image in data["images"]:
        missing = [key for key in ("id", "file_name", "height", "width") if key not in image]
        if missing:
            raise PseudoLabelError(f"{json_path}: image {image} lacks {', '.join(missing)}")
    return json_path, image_root, data["images"]


# ---- stages ---------------------------------------------------------------------------------------------------------


def run_command(stage: str, command: list[str], log: Path) -> None:
    """Run one of the project's commands; its output goes to the terminal and to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    logger.info("%s: %s", stage, " ".join(command))
    with open(log, "ab") as sink:
        process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for line in process.stdout:
            sink.write(line)
            sys.stderr.buffer.write(line)
            sys.stderr.flush()
        code = process.wait()
    if code != 0:
        raise PseudoLabelError(f"{stage} failed (exit code {code}); its log: {log}")


def evaluate(args: argparse.Namespace, cfg, weights: str, folder: Path) -> float:
    """Val mIoU of a checkpoint (train_net.py --eval-only), cached in folder/eval_metrics.json."""
    metrics = folder / "eval_metrics.json"
    if not metrics.is_file():
        command = [sys.executable, str(REPO / "train_net.py"), "--config-file", args.config_file, "--eval-only"]
        command += ["--num-gpus", str(args.num_gpus), *args.opts, "MODEL.WEIGHTS", weights, "OUTPUT_DIR", str(folder)]
        run_command("evaluate", command, folder / "evaluate.log")
    return val_miou(metrics, cfg.DATASETS.TEST[0])


def val_miou(metrics_file: Path, dataset: str) -> float:
    results = json.loads(metrics_file.read_text())["results"]
    if dataset not in results:
        raise PseudoLabelError(f"{metrics_file} has no result for {dataset} (has {', '.join(results)})")
    return float(results[dataset]["mIoU"])


def predict(args: argparse.Namespace, weights: str, json_path: Path, image_root: Path, folder: Path) -> Path:
    """tools/predict.py into folder (it resumes by itself); returns the prediction folder."""
    command = [sys.executable, str(REPO / "tools" / "predict.py"), "--config-file", args.config_file]
    command += ["--weights", weights, "--json", str(json_path), "--image-root", str(image_root), "--out", str(folder)]
    command += ["--batch-size", str(args.batch_size), "--overlays", "0"]
    if args.num_gpus > 1:
        command += ["--num-gpus", str(args.num_gpus)]
    if args.tta:
        command.append("--tta")
    run_command("predict", command + args.opts, folder.parent / "predict.log")
    return folder


def check_prediction_folder(folder: Path, images: list[dict], class_names: list[str]) -> None:
    """Every image has a valid npz of these classes in `folder` (e.g. --init-probs), else an error naming it."""
    for image in images:
        path = probability_path(folder, image["file_name"])
        problem = "missing" if not path.is_file() else check_probabilities(path, image["file_name"], class_names)
        if problem is not None:
            raise PseudoLabelError(
                f"{folder}: no usable prediction for image {image['id']} ({image['file_name']}): "
                f"{path} {problem if problem != 'missing' else 'is missing'}"
            )


def write_labels(
    probs_dir: Path, images: list[dict], folder: Path, threshold: float, image_root: Path, overlays: int, palette
) -> dict:
    """Pseudo-label PNGs for every image (those already written are kept), a few overlays, pseudo.json; returns
    {"images", "ignored_share"} (the share of ignored pixels over all images)."""
    ignored_pixels, total_pixels, written = 0, 0, 0
    for image in tqdm(images, desc="pseudo-labels", unit="img", dynamic_ncols=True):
        target = folder / label_png_name(image["file_name"])
        label = cv2.imread(str(target), cv2.IMREAD_UNCHANGED) if target.is_file() else None
        if label is None or label.shape != (image["height"], image["width"]):
            data = load_probabilities(probability_path(probs_dir, image["file_name"]))
            label = pseudo_label_map(data["probs"], image["height"], image["width"], threshold)
            write_label_png(target, label)
        ignored_pixels += round(ignored_share(label) * label.size)
        total_pixels += label.size
        if written < overlays:
            bgr = read_image(str(image_root / image["file_name"]))
            ok, encoded = cv2.imencode(".png", np.hstack([bgr, overlay(bgr, label, palette)]))
            atomic_write_bytes(folder / "overlays" / Path(image["file_name"]).with_suffix(".png"), encoded.tobytes())
            written += 1
    return {"images": len(images), "ignored_share": ignored_pixels / max(1, total_pixels)}


def train(args: argparse.Namespace, cfg, weights: str, folder: Path, pseudo: tuple[str, Path, Path] | None) -> None:
    """train_net.py from `weights` on DATASETS.TRAIN plus, when given, the pseudo-labelled set (name, json, image
    root); --resume: an interrupted round continues from its last checkpoint."""
    command = [sys.executable, str(REPO / "train_net.py"), "--config-file", args.config_file, "--resume"]
    command += ["--num-gpus", str(args.num_gpus), *args.opts]
    command += ["MODEL.WEIGHTS", weights, "OUTPUT_DIR", str(folder)]
    if pseudo is not None:
        name, pseudo_json, image_root = pseudo
        register = [list(entry) for entry in cfg.DATASETS.REGISTER] + [[name, str(pseudo_json), str(image_root)]]
        command += ["DATASETS.REGISTER", repr(register), "DATASETS.TRAIN", repr((*cfg.DATASETS.TRAIN, name))]
    if args.iters:
        command += ["SOLVER.MAX_ITER", str(args.iters)]
    run_command("train" if pseudo is not None else "control", command, folder.parent / f"{folder.name}.log")


def trained(folder: Path) -> bool:
    return (folder / "final_metrics.json").is_file() and (folder / "model_final.pth").is_file()


# ---- the loop -------------------------------------------------------------------------------------------------------


def settings_of(args: argparse.Namespace) -> dict:
    return {
        "config_file": str(Path(args.config_file).resolve()),
        "opts": args.opts,
        "weights": str(Path(args.weights).expanduser().resolve()),
        "unlabeled": str(Path(args.unlabeled).expanduser().resolve()),
        "image_root": str(Path(args.image_root).resolve()) if args.image_root else None,
        "threshold": args.threshold,
        "tta": args.tta,
        "iters": args.iters,
        "init_probs": str(Path(args.init_probs).resolve()) if args.init_probs else None,
        "control": args.control,
    }


def load_state(out: Path, settings: dict, overwrite: bool) -> dict:
    path = out / "state.json"
    if path.is_file() and not overwrite:
        state = json.loads(path.read_text())
        detail = changed_settings(state["settings"], settings, SETTINGS)
        if detail:
            raise PseudoLabelError(
                f"{out} holds rounds run with other settings ({detail}); use another --out, or "
                "--overwrite to start again"
            )
        return state
    if overwrite:
        for old in out.glob("round_*"):
            shutil.rmtree(old)
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


def run(args: argparse.Namespace) -> dict:
    began = time.perf_counter()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    cfg = load_config(args)
    weights = str(Path(args.weights).expanduser().resolve())
    if not Path(weights).is_file():
        raise PseudoLabelError(f"checkpoint not found: {weights}")
    if args.init_probs and not Path(args.init_probs).is_dir():
        raise PseudoLabelError(f"--init-probs {args.init_probs} is not a folder")
    state = load_state(out, settings_of(args), args.overwrite)
    save_state(out, state)
    categories = training_categories(cfg)
    class_names = class_names_from_categories(categories)
    json_path, image_root, images = unlabeled_images(args, categories, out)
    palette = palette_for(class_names)
    val = cfg.DATASETS.TEST[0]

    if state["baseline"] is None:
        logger.info("round 0: scoring %s on %s", weights, val)
        state["baseline"] = {"weights": weights, "mIoU": evaluate(args, cfg, weights, out / "round_0")}
        state["best"] = {"round": 0, **state["baseline"]}
        save_state(out, state)
    logger.info("round 0: val mIoU %.4f", state["baseline"]["mIoU"])

    while not state["stopped"] and len([r for r in state["rounds"] if "kept" in r]) < args.rounds:
        done = [entry for entry in state["rounds"] if "kept" in entry]
        number = len(done) + 1
        if state["rounds"] and "kept" not in state["rounds"][-1]:
            entry = state["rounds"][-1]  # an interrupted round
        else:
            entry = {"round": number, "start_round": state["best"]["round"], "start_weights": state["best"]["weights"]}
            state["rounds"].append(entry)
            save_state(out, state)
        folder = out / f"round_{number}"
        logger.info("round %d: from round %d (%s)", number, entry["start_round"], entry["start_weights"])

        if "ignored_share" not in entry:
            if number == 1 and args.init_probs:
                probs_dir = Path(args.init_probs).resolve()
                check_prediction_folder(probs_dir, images, class_names)
            else:
                probs_dir = predict(args, entry["start_weights"], json_path, image_root, folder / "predict")
            stats = write_labels(probs_dir, images, folder, args.threshold, image_root, args.overlays, palette)
            pseudo_json = write_pseudo_dataset(folder, images, categories)
            entry.update(stats, pseudo_json=str(pseudo_json))
            save_state(out, state)
            logger.info(
                "round %d: %d pseudo-labelled images, %.1f%% of pixels ignored (confidence < %.2f)",
                number,
                stats["images"],
                100 * stats["ignored_share"],
                args.threshold,
            )

        train_dir = folder / "train"
        if not trained(train_dir):
            pseudo = (f"pseudo_round_{number}", Path(entry["pseudo_json"]), image_root)
            train(args, cfg, entry["start_weights"], train_dir, pseudo)
        miou = val_miou(train_dir / "final_metrics.json", val)
        if args.control:
            control_dir = folder / "control"
            if not trained(control_dir):
                train(args, cfg, entry["start_weights"], control_dir, None)
            entry["control_mIoU"] = val_miou(control_dir / "final_metrics.json", val)
            logger.info("round %d: the control (no pseudo-labels) reached val mIoU %.4f", number, entry["control_mIoU"])
        kept = keeps_round(miou, state["best"]["mIoU"], args.min_gain)
        entry.update(weights=str(train_dir / "model_final.pth"), mIoU=miou, kept=kept)
        if kept:
            state["best"] = {"round": number, "weights": entry["weights"], "mIoU": miou}
            logger.info("round %d: val mIoU %.4f, kept", number, miou)
        else:
            state["stopped"] = True
            logger.info(
                "round %d: val mIoU %.4f, not above %.4f: not kept; the loop stops (another round would "
                "start from the same model and labels)",
                number,
                miou,
                state["best"]["mIoU"],
            )
        save_state(out, state)
    table = rounds_table(state)
    atomic_write_text(out / "rounds.md", table + "\n")
    print(table)
    print(f"best: round {state['best']['round']}, val mIoU {state['best']['mIoU']:.4f}, {state['best']['weights']}")
    logger.info("pseudo-label loop finished in %.1f s", time.perf_counter() - began)
    return state


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    with logging_to(args.out):
        try:
            return run(args)
        except (PseudoLabelError, DataError, FileNotFoundError, ValueError) as error:
            logger.error("%s", error)
            sys.exit(f"pseudo_label.py: {error}")


if __name__ == "__main__":
    main()
