"""What train_net.py does: parse detectron2's arguments, build the config, train or evaluate."""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
from contextlib import nullcontext
from pathlib import Path
from urllib.parse import urlparse

import lightning as L
import torch
import yaml
from fvcore.common.config import CfgNode
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

from ..config import ConfigError, load_config
from ..data.trash import register_datasets_from_config
from ..utils.cli import run_tool, strip_debug
from ..utils.io import atomic_write_json, atomic_write_text, remove_stale_temporaries
from ..utils.logger import logging_to, setup_logging
from .callbacks import IterationProgress, plot_loss_curve
from .checkpoint import LoadReport, load_checkpoint_into
from .checkpoint_io import AtomicCheckpointIO, ResumePoint, find_resume_point, save_atomic
from .metrics_log import MetricsCSVLogger
from .optimizer import build_gradient_clipper
from .run_lock import OutputDirLock

logger = logging.getLogger(__name__)

# What a run writes into OUTPUT_DIR through the atomic writer (besides checkpoints/).
_RUN_FILES = (
    "config.yaml",
    "metrics.csv",
    "model_final.pth",
    "final_metrics.json",
    "eval_metrics.json",
    "loss_curve.png",
)


def default_argument_parser() -> argparse.ArgumentParser:
    """detectron2's train_net arguments."""
    parser = argparse.ArgumentParser(
        description="Train or evaluate Mask2Former on recycling-trash photos.",
        epilog="Example: python train_net.py --config-file configs/quickstart.yaml SOLVER.MAX_ITER 500",
    )
    parser.add_argument("--config-file", default="", metavar="FILE", help="path to the config file")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUTPUT_DIR/checkpoints/last.ckpt if it exists (else start anew)",
    )
    parser.add_argument("--eval-only", action="store_true", help="evaluate MODEL.WEIGHTS on DATASETS.TEST and exit")
    parser.add_argument("--num-gpus", type=int, default=1, help="GPUs per machine (0 or none present: CPU)")
    parser.add_argument("--num-machines", type=int, default=1, help="machines taking part")
    parser.add_argument("--machine-rank", type=int, default=0, help="the rank of this machine")
    parser.add_argument(
        "--dist-url",
        default="auto",
        help="tcp://HOST:PORT of machine 0 for multi-machine runs; 'auto' on one machine",
    )
    parser.add_argument(
        "opts",
        default=None,
        nargs=argparse.REMAINDER,
        help="KEY VALUE pairs that override the config, e.g. SOLVER.BASE_LR 0.0002",
    )
    return parser


def build_config(args: argparse.Namespace) -> CfgNode:
    """The merged config (file, then overrides), seed drawn if negative, checked, frozen; writes nothing."""
    cfg = load_config(args.config_file or None, args.opts or [], freeze=False)
    if cfg.SEED < 0:
        cfg.SEED = random.randrange(2**31)
    cfg.freeze()
    check_config(cfg, args)
    return cfg


def check_config(cfg: CfgNode, args: argparse.Namespace) -> None:
    """The user errors that can be seen before anything is built or written (ConfigError naming the key)."""
    for key, path in (("MODEL.WEIGHTS", cfg.MODEL.WEIGHTS), ("MODEL.BACKBONE.WEIGHTS", cfg.MODEL.BACKBONE.WEIGHTS)):
        if "://" in path:
            raise ConfigError(
                f"{key} {path}: a URL (detectron2 downloads these); nothing is downloaded here: fetch the file "
                f"yourself and give its local path ({key} /path/to/{Path(path).name})"
            )
        if path and not Path(path).expanduser().is_file():
            raise ConfigError(
                f"{key} {path}: no such file; give the path of a checkpoint (.pth, .ckpt, .safetensors, .pkl)"
            )
    if args.eval_only and not cfg.MODEL.WEIGHTS:
        raise ConfigError("--eval-only needs MODEL.WEIGHTS <checkpoint>")
    _world_size(cfg, args)
    build_gradient_clipper(cfg)  # refuses bad SOLVER.CLIP_GRADIENTS settings
    if cfg.SOLVER.MAX_ITER < 1:
        raise ConfigError(f"SOLVER.MAX_ITER is {cfg.SOLVER.MAX_ITER}: give the number of iterations (>= 1)")


class EarlierRunError(ConfigError):
    """OUTPUT_DIR holds the checkpoints of an earlier run and the command did not say --resume."""


def refuse_earlier_run(cfg: CfgNode, args: argparse.Namespace) -> None:
    """A new training run never replaces an earlier run's checkpoints or final model: --resume continues that
    run; starting over takes another OUTPUT_DIR (or removing the earlier files by hand)."""
    if args.resume or args.eval_only:
        return
    output_dir = Path(cfg.OUTPUT_DIR)
    found = [output_dir / "model_final.pth"] if (output_dir / "model_final.pth").is_file() else []
    found += sorted((output_dir / "checkpoints").glob("*.ckpt"))
    if found:
        shown = ", ".join(str(path.relative_to(output_dir)) for path in found[:3])
        raise EarlierRunError(
            f"OUTPUT_DIR {output_dir} holds an earlier run ({shown}{', ...' if len(found) > 3 else ''}): add --resume "
            "to continue it, or give another OUTPUT_DIR to start a new one (its files are never replaced)"
        )


def refuse_other_model_on_resume(cfg: CfgNode, args: argparse.Namespace) -> None:
    """--resume continues the run OUTPUT_DIR/config.yaml describes: a MODEL.* value that differs from it would
    load checkpoints into another architecture (and config.yaml would no longer describe them), so it is refused;
    other keys (a longer SOLVER.MAX_ITER, another TEST.EVAL_PERIOD) may change."""
    saved_file = Path(cfg.OUTPUT_DIR) / "config.yaml"
    if not args.resume or args.eval_only or not saved_file.is_file():
        return
    try:
        saved = yaml.safe_load(saved_file.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return  # unreadable: the checkpoint load decides
    changed = [
        f"MODEL.{key} {_plain(old)} -> {_plain(new)}"
        for key, old, new in _leaf_differences(saved.get("MODEL", {}), cfg.MODEL)
        if key not in _MODEL_KEYS_FREE_ON_RESUME
    ]
    if changed:
        raise EarlierRunError(
            f"--resume: OUTPUT_DIR {cfg.OUTPUT_DIR} holds a run of another model ({'; '.join(changed[:4])}"
            f"{'; ...' if len(changed) > 4 else ''}, against its config.yaml): resume with the run's own config "
            f"(--config-file {saved_file}), or give another OUTPUT_DIR for the new model"
        )


# MODEL keys that say where weights come from or how to run, not what the model is.
_MODEL_KEYS_FREE_ON_RESUME = {"WEIGHTS", "BACKBONE.WEIGHTS", "DEVICE", "ALLOW_PICKLE", "LOAD_STRICT"}


def _leaf_differences(saved: dict, current: CfgNode, prefix: str = "") -> list[tuple[str, object, object]]:
    differences = []
    for key, value in current.items():
        if key not in saved:
            continue
        if isinstance(value, CfgNode):
            if isinstance(saved[key], dict):
                differences += _leaf_differences(saved[key], value, f"{prefix}{key}.")
        elif _plain(saved[key]) != _plain(value):
            differences.append((f"{prefix}{key}", saved[key], value))
    return differences


def _plain(value: object) -> object:
    return [_plain(item) for item in value] if isinstance(value, list | tuple) else value


def prepare_output_dir(cfg: CfgNode, args: argparse.Namespace) -> None:
    """Logging to OUTPUT_DIR/log.txt, config.yaml written (main process), datasets registered."""
    output_dir = Path(cfg.OUTPUT_DIR)
    output_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(output_dir)
    logger.info("command line: %s", vars(args))
    if _is_main_process(args):
        atomic_write_text(output_dir / "config.yaml", cfg.dump())
    logger.info("config written to %s (seed %d)", output_dir / "config.yaml", cfg.SEED)
    logger.info(cpu_numerics())
    register_datasets_from_config(cfg)


# The settings a CPU run's numbers depend on besides the seed, as `make demo` pins them (see the Makefile).
CPU_NUMERICS_ENV = ("OMP_NUM_THREADS", "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR")


def cpu_numerics() -> str:
    """One log line: torch's thread count and kernel instruction set, and the environment that sets them."""
    # Same seed, other machine: sums split over another number of threads, or AVX2 kernels where AVX-512 ran
    # (torch, oneDNN, MKL), round differently, and a long training drifts apart (README: make demo).
    settings = " ".join(f"{name}={os.environ.get(name, 'unset')}" for name in CPU_NUMERICS_ENV)
    return (
        f"CPU numerics: torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{torch.backends.cpu.get_cpu_capability()} kernels ({settings})"
    )


def setup(args: argparse.Namespace) -> CfgNode:
    """`build_config` + `prepare_output_dir` (without the output-folder lock `run` holds)."""
    cfg = build_config(args)
    prepare_output_dir(cfg, args)
    return cfg


def _is_main_process(args: argparse.Namespace) -> bool:
    return args.machine_rank == 0 and int(os.environ.get("LOCAL_RANK", "0")) == 0


def _accelerator(cfg: CfgNode, args: argparse.Namespace) -> tuple[str, int]:
    wants_gpu = cfg.MODEL.DEVICE in ("auto", "cuda") and args.num_gpus > 0
    if wants_gpu and torch.cuda.is_available():
        if torch.cuda.device_count() < args.num_gpus:
            raise ConfigError(f"--num-gpus {args.num_gpus}: this machine has {torch.cuda.device_count()} GPU(s)")
        return "gpu", args.num_gpus
    if cfg.MODEL.DEVICE == "cuda":
        if args.num_gpus < 1:
            raise ConfigError("MODEL.DEVICE is 'cuda' but --num-gpus is 0: give --num-gpus 1 or MODEL.DEVICE cpu")
        raise ConfigError("MODEL.DEVICE is 'cuda' but no GPU is available: set MODEL.DEVICE cpu (or auto)")
    return "cpu", 1


def _world_size(cfg: CfgNode, args: argparse.Namespace) -> int:
    _, devices = _accelerator(cfg, args)
    world = devices * args.num_machines
    if cfg.SOLVER.IMS_PER_BATCH % world:
        raise ConfigError(
            f"SOLVER.IMS_PER_BATCH {cfg.SOLVER.IMS_PER_BATCH} is not divisible by {world} processes "
            f"({devices} per machine x {args.num_machines} machines): give a multiple of {world}"
        )
    return world


def build_trainer(
    cfg: CfgNode, args: argparse.Namespace, callbacks: list | None = None, resume: ResumePoint | None = None
) -> tuple[L.Trainer, int]:
    """A Lightning Trainer for the config; returns it with the per-device batch size. `resume`: the checkpoint a
    resumed run continues from (metrics.csv keeps the rows before its iteration, TensorBoard drops the events from
    it on)."""
    accelerator, devices = _accelerator(cfg, args)
    world = _world_size(cfg, args)
    if args.dist_url != "auto":
        url = urlparse(args.dist_url)
        os.environ.setdefault("MASTER_ADDR", url.hostname or "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(url.port or 29500))
    os.environ.setdefault("NODE_RANK", str(args.machine_rank))
    mixed = cfg.SOLVER.AMP.ENABLED and (accelerator == "gpu" or cfg.SOLVER.AMP.ON_CPU)
    precision = "bf16-mixed" if mixed else "32-true"
    checkpoint_dir = Path(cfg.OUTPUT_DIR) / "checkpoints"
    periodic = ModelCheckpoint(
        dirpath=checkpoint_dir,
        filename="model_{step:07d}",
        every_n_train_steps=max(1, cfg.SOLVER.CHECKPOINT_PERIOD),
        save_top_k=cfg.SOLVER.CHECKPOINT_KEEP,
        monitor="step",
        mode="max",
        save_last=True,
        auto_insert_metric_name=False,
    )
    best = ModelCheckpoint(
        dirpath=checkpoint_dir,
        filename="model_best",
        monitor="sem_seg/mIoU",
        mode="max",
        save_top_k=1,
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )
    resume_step = resume.step if resume else None
    eval_period = cfg.TEST.EVAL_PERIOD if 0 < cfg.TEST.EVAL_PERIOD <= cfg.SOLVER.MAX_ITER else cfg.SOLVER.MAX_ITER
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=devices,
        num_nodes=args.num_machines,
        strategy="ddp" if world > 1 else "auto",
        sync_batchnorm=cfg.MODEL.SYNC_BN and world > 1,
        precision=precision,
        max_steps=cfg.SOLVER.MAX_ITER,
        max_epochs=-1,
        val_check_interval=eval_period,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        logger=[
            MetricsCSVLogger(cfg.OUTPUT_DIR, resume_step, resume.metrics_row if resume else None),
            TensorBoardLogger(cfg.OUTPUT_DIR, name="tensorboard", version="", purge_step=resume_step),
        ],
        plugins=[AtomicCheckpointIO()],
        log_every_n_steps=cfg.SOLVER.LOG_PERIOD,
        callbacks=[
            periodic,
            best,
            IterationProgress(cfg.SOLVER.MAX_ITER, cfg.SOLVER.LOG_PERIOD),
            *(callbacks or []),
        ],
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        deterministic=False,
        default_root_dir=cfg.OUTPUT_DIR,
    )
    return trainer, cfg.SOLVER.IMS_PER_BATCH // world


def build_module(cfg: CfgNode, batch_size: int):
    from .lightning_module import MaskFormerModule

    L.seed_everything(cfg.SEED, workers=True, verbose=False)
    module = MaskFormerModule(cfg, batch_size_per_device=batch_size)
    if cfg.MODEL.BACKBONE.WEIGHTS:
        load_backbone_weights(module.model, cfg.MODEL.BACKBONE.WEIGHTS)
    return module


def load_backbone_weights(model: torch.nn.Module, path: str) -> None:
    """ImageNet / timm backbone weights through the backbone's key conversion."""
    loader = getattr(type(model.backbone), "load_pretrained", None)
    if loader is None:
        raise ConfigError(f"backbone {type(model.backbone).__name__} cannot load MODEL.BACKBONE.WEIGHTS")
    report = loader(model.backbone, path)
    logger.info("backbone weights from %s: %s", path, report)


def load_weights(model: torch.nn.Module, cfg: CfgNode, training: bool) -> LoadReport:
    """MODEL.WEIGHTS into the whole model, read as MODEL.ALLOW_PICKLE and matched as MODEL.LOAD_STRICT say. For
    training, a backbone-only file (the official configs put ImageNet `R-50.pkl` or Swin weights there) loads into
    the backbone and the head starts fresh; for evaluation the file must hold a whole model."""
    return load_checkpoint_into(
        model, cfg.MODEL.WEIGHTS, cfg.MODEL.ALLOW_PICKLE, cfg.MODEL.LOAD_STRICT, fresh_head_ok=training
    )


def train(cfg: CfgNode, args: argparse.Namespace, callbacks: list | None = None) -> dict:
    """Train (or resume) for SOLVER.MAX_ITER iterations; evaluates at the end; returns the final results."""
    resume = find_resume_point(Path(cfg.OUTPUT_DIR) / "checkpoints") if args.resume else None
    if args.resume and resume is None:
        logger.warning("--resume: no checkpoint in %s: starting a new run", Path(cfg.OUTPUT_DIR) / "checkpoints")
    trainer, batch_size = build_trainer(cfg, args, callbacks, resume)
    module = build_module(cfg, batch_size)
    ckpt_path = None
    if resume is not None:
        ckpt_path = str(resume.path)
        logger.info("resuming from %s (iteration %d)", resume.path, resume.step)
    elif cfg.MODEL.WEIGHTS:
        load_weights(module.model, cfg, training=True)
    trainer.fit(module, ckpt_path=ckpt_path, weights_only=True)
    if module.last_eval_step != trainer.global_step:
        trainer.validate(module, verbose=False)
    output_dir = Path(cfg.OUTPUT_DIR)
    if trainer.is_global_zero:
        final = output_dir / "model_final.pth"
        save_atomic(
            {"model": module.model.state_dict(), "iteration": trainer.global_step, "config_yaml": cfg.dump()}, final
        )
        atomic_write_json(
            output_dir / "final_metrics.json",
            {"iteration": trainer.global_step, "results": module.last_results},
            indent=2,
        )
        if plot_loss_curve(output_dir / "metrics.csv", output_dir / "loss_curve.png"):
            logger.info("loss curve: %s", output_dir / "loss_curve.png")
        logger.info("final model: %s", final)
    return module.last_results


def evaluate_only(cfg: CfgNode, args: argparse.Namespace) -> dict:
    """Evaluate MODEL.WEIGHTS on DATASETS.TEST."""
    if not cfg.MODEL.WEIGHTS:
        raise ConfigError("--eval-only needs MODEL.WEIGHTS <checkpoint>")
    trainer, batch_size = build_trainer(cfg, args)
    module = build_module(cfg, batch_size)
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


def run(args: argparse.Namespace) -> dict:
    """Config, then, holding OUTPUT_DIR's lock (one run per folder), train or evaluate."""
    cfg = build_config(args)
    main_process = _is_main_process(args)
    with OutputDirLock(cfg.OUTPUT_DIR) if main_process else nullcontext() as lock, logging_to(cfg.OUTPUT_DIR):
        if lock is not None:
            lock.log_takeover()
            # half-written files of a killed run (the lock says no other run is writing)
            remove_stale_temporaries(Path(cfg.OUTPUT_DIR) / "checkpoints")
            for name in _RUN_FILES:
                remove_stale_temporaries(cfg.OUTPUT_DIR, name)
        refuse_earlier_run(cfg, args)
        refuse_other_model_on_resume(cfg, args)
        prepare_output_dir(cfg, args)
        return evaluate_only(cfg, args) if args.eval_only else train(cfg, args)


def main(argv: list[str] | None = None) -> dict:
    """train_net.py: a user error (bad config, missing file, folder in use, diverged run) is one line on stderr
    and exit status 2; `--debug` shows its traceback."""
    argv = sys.argv[1:] if argv is None else list(argv)
    return run_tool("train_net.py", lambda: run(default_argument_parser().parse_args(strip_debug(argv))), argv)
