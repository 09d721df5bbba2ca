"""Training and --eval-only evaluation in one process (a whole run, or one rank of it): what the run says at its
start, the fit, the final model and metrics."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import lightning as L
import torch
from fvcore.common.config import CfgNode

from ..config import ConfigError, config_yaml
from ..io.checkpoints import save_atomic
from ..io.files import atomic_write_json
from .callbacks import plot_loss_curve
from .devices import accelerator_and_devices
from .distributed import Place, gather
from .lightning_checkpoints import ResumePoint, find_resume_point
from .run_folder import EVAL_ONLY_FOLDER
from .tracking import finish_tracking
from .trainer import build_module, build_trainer, load_weights

if TYPE_CHECKING:
    from .lightning_module import MaskFormerModule

logger = logging.getLogger("mask2former.engine.launch")  # train_net's log lines keep one name

# Models up to this size (configs/quickstart.yaml: 1.8M parameters) train on the CPU in minutes and are meant to
# start from scratch; a full-size one (DiNAT-L: 220M) takes minutes per iteration there and needs its weights.
CPU_SIZED_PARAMETERS = 10_000_000


def start_notes(cfg: CfgNode, args: argparse.Namespace, model: torch.nn.Module, fresh: bool) -> list[tuple[int, str]]:
    """(level, line) for what a run should say at start: the CPU taken because no GPU is available (when the config
    and --num-gpus asked for one), and a training run (`fresh`: not resumed) that starts from random initialisation.
    Warnings for a full-size model, plain information for one sized for the CPU."""
    parameters = sum(parameter.numel() for parameter in model.parameters())
    large = parameters > CPU_SIZED_PARAMETERS
    level = logging.WARNING if large else logging.INFO
    size = f"{parameters / 1e6:.0f}M" if parameters >= 10e6 else f"{parameters / 1e6:.1f}M"
    notes = []
    accelerator, per_machine = accelerator_and_devices(cfg, args)
    if accelerator == "cpu" and cfg.MODEL.DEVICE in ("auto", "cuda") and args.num_gpus >= 1:
        verb = "evaluates" if args.eval_only else "trains"
        threads = torch.get_num_threads()
        how = f"{threads} CPU thread{'' if threads == 1 else 's'}"
        if per_machine > 1:
            how = f"--num-gpus {args.num_gpus}: {per_machine} processes on the CPU (gloo), {how} each"
        line = f"no GPU is available, so this run {verb} on the CPU ({how})"
        if large:
            line += (
                f": a {size}-parameter model takes minutes per iteration there; run it on a machine with a GPU, or "
                "try configs/quickstart.yaml on the CPU (MODEL.DEVICE cpu says the CPU is meant)"
            )
        notes.append((level, line))
    if fresh and not args.eval_only and not cfg.MODEL.WEIGHTS and not cfg.MODEL.BACKBONE.WEIGHTS:
        line = f"MODEL.WEIGHTS and MODEL.BACKBONE.WEIGHTS are empty: the {size}-parameter model starts from random "
        if large:
            line += (
                "initialisation, and its results will be far from the recipe's: give the backbone's pretrained "
                "weights (MODEL.BACKBONE.WEIGHTS /path/to/file, docs/models.md: Weights)"
            )
        else:
            line += "initialisation"
        notes.append((level, line))
    return notes


def log_start_notes(
    cfg: CfgNode, args: argparse.Namespace, model: torch.nn.Module, place: Place | None, fresh: bool
) -> None:
    """`start_notes` into the log, once per run (by its first process)."""
    if place is None or place.rank == 0:
        for level, line in start_notes(cfg, args, model, fresh):
            logger.log(level, line)


def train(cfg: CfgNode, args: argparse.Namespace, callbacks: list | None = None, place: Place | None = None) -> dict:
    """Train (or resume) for SOLVER.MAX_ITER iterations; evaluates at the end; returns the final results."""
    resume = find_resume_point(Path(cfg.OUTPUT_DIR) / "checkpoints") if args.resume else None
    if place is not None:
        _agree_on_resume(cfg, resume)
    if args.resume and resume is None:
        logger.info("--resume: no checkpoint in %s yet: starting a new run", Path(cfg.OUTPUT_DIR) / "checkpoints")
    trainer, batch_size = build_trainer(cfg, args, callbacks, resume, place)
    module = build_module(cfg, batch_size)
    log_start_notes(cfg, args, module.model, place, fresh=resume is None)
    ckpt_path = None
    if resume is not None:
        ckpt_path = str(resume.path)
        logger.info("resuming from %s (iteration %d)", resume.path, resume.step)
    elif cfg.MODEL.WEIGHTS:
        load_weights(module.model, cfg, training=True)
    try:
        trainer.fit(module, ckpt_path=ckpt_path, weights_only=True)
        if module.last_eval_step != trainer.global_step:
            trainer.validate(module, verbose=False)
    finally:
        finish_tracking(trainer.loggers)
    if trainer.is_global_zero:
        write_final_results(cfg, trainer, module)
    return module.last_results


def write_final_results(cfg: CfgNode, trainer: L.Trainer, module: MaskFormerModule) -> None:
    """What a finished run leaves in OUTPUT_DIR: model_final.pth (the weights, the iteration, the config and the
    training classes), final_metrics.json and loss_curve.png."""
    output_dir = Path(cfg.OUTPUT_DIR)
    final = output_dir / "model_final.pth"
    from .lightning_module import check_dataset_classes

    save_atomic(
        {
            "model": module.model.state_dict(),
            "iteration": trainer.global_step,
            "config_yaml": config_yaml(cfg),
            "class_names": check_dataset_classes(cfg, list(cfg.DATASETS.TRAIN)),  # compared when predicting
        },
        final,
    )
    atomic_write_json(
        output_dir / "final_metrics.json",
        {"iteration": trainer.global_step, "results": module.last_results},
        indent=2,
    )
    if plot_loss_curve(output_dir / "metrics.csv", output_dir / "loss_curve.png"):
        logger.info("loss curve: %s", output_dir / "loss_curve.png")
    logger.info("final model: %s", final)


def evaluate_only(cfg: CfgNode, args: argparse.Namespace, place: Place | None = None) -> dict:
    """Evaluate MODEL.WEIGHTS on DATASETS.TEST (sharded over the processes of a multi-process run); with
    TEST.AUG.ENABLED over the TTA views of each image (inference/tta.py, as tools/predict.py --tta)."""
    if not cfg.MODEL.WEIGHTS:
        raise ConfigError("--eval-only needs MODEL.WEIGHTS <checkpoint>")
    trainer, batch_size = build_trainer(cfg, args, place=place)
    module = build_module(cfg, batch_size, eval_folder=EVAL_ONLY_FOLDER)
    module.tta = bool(cfg.TEST.AUG.ENABLED)  # as Mask2Former's train_net.py: --eval-only with TTA when enabled
    log_start_notes(cfg, args, module.model, place, fresh=False)
    load_weights(module.model, cfg, training=False)
    trainer.validate(module, verbose=False)
    if trainer.is_global_zero:
        atomic_write_json(
            Path(cfg.OUTPUT_DIR) / "eval_metrics.json",
            {"weights": cfg.MODEL.WEIGHTS, "results": module.last_results},
            indent=2,
        )
        for name, result in module.last_results.items():
            print(json.dumps({"dataset": name, "mIoU": result["mIoU"]}))
    return module.last_results


def _agree_on_resume(cfg: CfgNode, resume: ResumePoint | None) -> None:
    """--resume under several processes: every rank must continue from the same iteration (OUTPUT_DIR is one
    folder all machines share, or a copy of its checkpoints)."""
    steps = gather(resume.step if resume else None)
    if len(set(steps)) > 1:
        shown = ", ".join(
            f"rank {rank}: {'none' if step is None else f'iteration {step}'}" for rank, step in enumerate(steps)
        )
        raise ConfigError(
            f"--resume: the processes found different checkpoints in {Path(cfg.OUTPUT_DIR) / 'checkpoints'} "
            f"({shown}): OUTPUT_DIR must be a folder every machine shares (or holds a copy of machine 0's checkpoints)"
        )
