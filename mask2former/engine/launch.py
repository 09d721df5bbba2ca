"""What train_net.py does: parse detectron2's arguments, build the config, train or evaluate."""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from datetime import timedelta
from pathlib import Path

import lightning as L
import torch
import yaml
from fvcore.common.config import CfgNode
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

from ..config import ConfigError, load_config, read_config_yaml
from ..data.trash import register_datasets_from_config
from ..errors import UserError
from ..io.checkpoints import recorded_class_names, save_atomic
from ..io.files import atomic_write_json, atomic_write_text, remove_stale_temporaries
from ..modeling import register_all  # noqa: F401  (every model family's config keys and classes)
from ..modeling.weights import LoadReport, check_same_classes, load_checkpoint_into
from ..utils.cli import run_tool, strip_debug
from ..utils.logger import logging_to, quiet_library_chatter, setup_logging
from ..utils.output_folder import OWNER_FILE, check_claim, claim_output_folder
from ..utils.processes import sigterm_raises, stop_cause
from ..utils.run_lock import OutputDirLock
from .callbacks import IterationProgress, plot_loss_curve
from .distributed import (
    DEFAULT_TIMEOUT_S,
    DistributedError,
    Place,
    check_dist_url,
    cluster_environment,
    destroy_process_group,
    external_place,
    first_words,
    gather,
    init_process_group,
    local_places,
    log_file_name,
    lost_peer,
    main_address,
    run_processes,
    set_threads,
)
from .lightning_checkpoints import AtomicCheckpointIO, ResumePoint, find_resume_point
from .metrics_log import MetricsCSVLogger
from .optimizer import build_gradient_clipper
from .tracking import TrackingRuns, build_tracking_loggers, finish_tracking

logger = logging.getLogger(__name__)

# Where --eval-only puts its evaluation files (a training run's own evaluations are under eval/).
EVAL_ONLY_FOLDER = "eval_only"
TOOL = "train_net.py"
# What a finished run leaves: never replaced by a new run, nor by a --resume with nothing to resume from.
_RUN_RESULTS = ("model_final.pth", "final_metrics.json", "metrics.csv")
# What a run writes into OUTPUT_DIR through the atomic writer (besides checkpoints/).
_RUN_FILES = (
    "config.yaml",
    "eval_config.yaml",
    "metrics.csv",
    "model_final.pth",
    "final_metrics.json",
    "eval_metrics.json",
    "loss_curve.png",
)
_RANK_LOG = re.compile(r"^log\.txt\.rank\d+$")
_RUN_OUTPUTS = (*_RUN_FILES, "log.txt", "checkpoints", "eval", EVAL_ONLY_FOLDER, "tensorboard")


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
    parser.add_argument(
        "--num-gpus",
        type=int,
        default=1,
        help="processes per machine, one per GPU; without GPUs (or MODEL.DEVICE cpu) N CPU processes (0: one)",
    )
    parser.add_argument("--num-machines", type=int, default=1, help="machines taking part")
    parser.add_argument("--machine-rank", type=int, default=0, help="the rank of this machine (0 .. machines - 1)")
    parser.add_argument(
        "--dist-url",
        default="auto",
        help="tcp://HOST:PORT of machine 0 (the same on every machine) for multi-machine runs; 'auto' on one machine",
    )
    parser.add_argument(
        "--dist-timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        metavar="SECONDS",
        help="how long a process waits for the others (start-up, each step) before the run stops (default %(default)s)",
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
    if args.num_gpus < 0:
        raise ConfigError(
            f"--num-gpus {args.num_gpus}: give the processes per machine (one per GPU; 0 or 1: one process)"
        )
    if args.num_machines < 1 or not 0 <= args.machine_rank < args.num_machines:
        raise ConfigError(
            f"--machine-rank {args.machine_rank} with --num-machines {args.num_machines}: give a rank from 0 to "
            f"{max(args.num_machines, 1) - 1} (machine 0 is the one --dist-url names)"
        )
    if args.dist_timeout <= 0:
        raise ConfigError(f"--dist-timeout {args.dist_timeout:g}: give the seconds to wait (> 0)")
    _world_size(cfg, args)
    check_dist_url(args.dist_url, args.num_machines)
    build_gradient_clipper(cfg)  # refuses bad SOLVER.CLIP_GRADIENTS settings
    if cfg.SOLVER.MAX_ITER < 1:
        raise ConfigError(f"SOLVER.MAX_ITER is {cfg.SOLVER.MAX_ITER}: give the number of iterations (>= 1)")


class EarlierRunError(ConfigError):
    """OUTPUT_DIR holds the checkpoints of an earlier run and the command did not say --resume."""


def refuse_earlier_run(cfg: CfgNode, args: argparse.Namespace) -> None:
    """A new training run never replaces an earlier run's checkpoints or results: --resume continues that run
    (from a checkpoint: a finished run whose checkpoints are gone cannot be continued); starting over takes another
    OUTPUT_DIR (or removing the earlier files by hand)."""
    if args.eval_only:
        return
    output_dir = Path(cfg.OUTPUT_DIR)
    checkpoints = sorted((output_dir / "checkpoints").glob("*.ckpt"))
    results = [output_dir / name for name in _RUN_RESULTS if (output_dir / name).is_file()]
    if args.resume:
        if results and not checkpoints:
            shown = ", ".join(path.name for path in results)
            raise EarlierRunError(
                f"--resume: OUTPUT_DIR {output_dir} holds a run's results ({shown}) but no checkpoint to continue "
                f"from ({output_dir / 'checkpoints'} is empty or gone): give another OUTPUT_DIR to train again (its "
                "files are never replaced)"
            )
        return
    found = [path for path in results if path.name == "model_final.pth"] + checkpoints
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
        saved = read_config_yaml(str(saved_file))
    except (OSError, ConfigError):
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


def prepare_output_dir(
    cfg: CfgNode, args: argparse.Namespace, write_config: bool = True, log_file: str = "log.txt"
) -> None:
    """Logging to OUTPUT_DIR/log.txt (`log_file`), config.yaml written (by the run's first process only), datasets
    registered."""
    output_dir = Path(cfg.OUTPUT_DIR)
    output_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(output_dir, file_name=log_file)
    logger.info("command line: %s", vars(args))
    if write_config:
        # --eval-only keeps a training run's config.yaml (OUTPUT_DIR may be the run it evaluates)
        config_file = output_dir / ("eval_config.yaml" if args.eval_only else "config.yaml")
        if config_file.resolve() == Path(args.config_file).resolve():  # an input is never replaced
            logger.info("%s is this run's --config-file: left as it is (seed %d)", config_file, cfg.SEED)
        else:
            atomic_write_text(config_file, cfg.dump())
            logger.info("config written to %s (seed %d)", config_file, cfg.SEED)
    logger.info(cpu_numerics())
    register_datasets_from_config(cfg)


# The settings a CPU run's numbers depend on besides the seed, as `make demo` pins them (see the Makefile).
CPU_NUMERICS_ENV = ("OMP_NUM_THREADS", "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR")


def cpu_numerics() -> str:
    """One log line: torch's thread count and kernel instruction set, and the environment that sets them."""
    # Same seed, other machine: sums split over another number of threads, or AVX2 kernels where AVX-512 ran
    # (torch, oneDNN, MKL), round differently, and a long training drifts apart (docs/getting_started.md).
    settings = " ".join(f"{name}={os.environ.get(name, 'unset')}" for name in CPU_NUMERICS_ENV)
    return (
        f"CPU numerics: torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{torch.backends.cpu.get_cpu_capability()} kernels ({settings})"
    )


def setup(args: argparse.Namespace) -> CfgNode:
    """`build_config` + `prepare_output_dir` (without the output-folder lock `run` holds)."""
    cfg = build_config(args)
    check_datasets(cfg, args)
    prepare_output_dir(cfg, args)
    return cfg


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
    # no GPU (or MODEL.DEVICE cpu): --num-gpus N is N processes on the CPU, as detectron2's launcher starts them
    return "cpu", max(1, args.num_gpus)


def _world_size(cfg: CfgNode, args: argparse.Namespace) -> int:
    _, devices = _accelerator(cfg, args)
    world = devices * args.num_machines
    if cfg.SOLVER.IMS_PER_BATCH % world:
        raise ConfigError(
            f"SOLVER.IMS_PER_BATCH {cfg.SOLVER.IMS_PER_BATCH} is not divisible by {world} processes "
            f"({devices} per machine x {args.num_machines} machines): give a multiple of {world}"
        )
    return world


def _backend(cfg: CfgNode, args: argparse.Namespace) -> str:
    return "nccl" if _accelerator(cfg, args)[0] == "gpu" else "gloo"


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
    accelerator, per_machine = _accelerator(cfg, args)
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


def build_trainer(
    cfg: CfgNode,
    args: argparse.Namespace,
    callbacks: list | None = None,
    resume: ResumePoint | None = None,
    place: Place | None = None,
) -> tuple[L.Trainer, int]:
    """A Lightning Trainer for the config; returns it with the per-device batch size. `resume`: the checkpoint a
    resumed run continues from (metrics.csv keeps the rows before its iteration, TensorBoard drops the events from
    it on). `place`: this process's rank in a multi-process run (its process group is already set up)."""
    quiet_library_chatter()
    accelerator, devices = _accelerator(cfg, args)
    world = _world_size(cfg, args)
    strategy: object = "auto"
    if world > 1:
        from lightning.pytorch.strategies import DDPStrategy

        strategy = DDPStrategy(
            cluster_environment=cluster_environment(place),
            process_group_backend=_backend(cfg, args),
            timeout=timedelta(seconds=args.dist_timeout),
            broadcast_buffers=False,  # as Mask2Former's train_net: no buffer broadcast before every forward
        )
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
    trackers = [] if args.eval_only else build_tracking_loggers(cfg, resume is not None)
    eval_period = cfg.TEST.EVAL_PERIOD if 0 < cfg.TEST.EVAL_PERIOD <= cfg.SOLVER.MAX_ITER else cfg.SOLVER.MAX_ITER
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=devices,
        num_nodes=args.num_machines,
        strategy=strategy,
        sync_batchnorm=cfg.MODEL.SYNC_BN and world > 1,
        precision=precision,
        max_steps=cfg.SOLVER.MAX_ITER,
        max_epochs=-1,
        val_check_interval=eval_period,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        # --eval-only logs no training history (OUTPUT_DIR may hold the run it evaluates: its metrics.csv stays)
        logger=False
        if args.eval_only
        else [
            MetricsCSVLogger(cfg.OUTPUT_DIR, resume_step, resume.metrics_row if resume else None),
            # the resumed run logs from the iteration after resume_step on (steps count iterations done)
            TensorBoardLogger(
                cfg.OUTPUT_DIR, name="tensorboard", version="", purge_step=None if resume is None else resume.step + 1
            ),
            *trackers,
        ],
        plugins=[AtomicCheckpointIO()],
        log_every_n_steps=cfg.SOLVER.LOG_PERIOD,
        callbacks=[
            periodic,
            best,
            IterationProgress(cfg.SOLVER.MAX_ITER, cfg.SOLVER.LOG_PERIOD),
            *([TrackingRuns(cfg, trackers)] if trackers else []),
            *(callbacks or []),
        ],
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        deterministic=False,
        default_root_dir=cfg.OUTPUT_DIR,
    )
    return trainer, cfg.SOLVER.IMS_PER_BATCH // world


def build_module(cfg: CfgNode, batch_size: int, eval_folder: str = "eval"):
    from .lightning_module import MaskFormerModule

    L.seed_everything(cfg.SEED, workers=True, verbose=False)
    module = MaskFormerModule(cfg, batch_size_per_device=batch_size, eval_folder=eval_folder)
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
    the backbone and the head starts fresh; for evaluation the file must hold a whole model of the config's class
    count (a re-initialised class head would score random predictions)."""
    report = load_checkpoint_into(
        model, cfg.MODEL.WEIGHTS, cfg.MODEL.ALLOW_PICKLE, cfg.MODEL.LOAD_STRICT, fresh_head_ok=training
    )
    if not training:
        check_same_classes(report, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, cfg.MODEL.WEIGHTS)
    return report


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
    output_dir = Path(cfg.OUTPUT_DIR)
    if trainer.is_global_zero:
        final = output_dir / "model_final.pth"
        from .lightning_module import check_dataset_classes

        save_atomic(
            {
                "model": module.model.state_dict(),
                "iteration": trainer.global_step,
                "config_yaml": cfg.dump(),
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
    return module.last_results


def evaluate_only(cfg: CfgNode, args: argparse.Namespace, place: Place | None = None) -> dict:
    """Evaluate MODEL.WEIGHTS on DATASETS.TEST (sharded over the processes of a multi-process run)."""
    if not cfg.MODEL.WEIGHTS:
        raise ConfigError("--eval-only needs MODEL.WEIGHTS <checkpoint>")
    trainer, batch_size = build_trainer(cfg, args, place=place)
    module = build_module(cfg, batch_size, eval_folder=EVAL_ONLY_FOLDER)
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


@contextmanager
def claimed_output_dir(cfg: CfgNode, args: argparse.Namespace, owner: bool, log_file: str) -> Iterator[None]:
    """The run's hold on OUTPUT_DIR, logging to OUTPUT_DIR/`log_file`. The owner (the run's first process) checks
    that the folder is new, empty or train_net's own (docs/output_folders.md) and that nothing an earlier run
    made would be replaced, before anything is written there; then takes its lock (one run per folder), claims it
    and removes a killed run's half-written files. Every process refuses what would replace an earlier run."""
    output_dir = Path(cfg.OUTPUT_DIR)
    if owner:
        check_claim(output_dir, TOOL, {}, what="OUTPUT_DIR", writes=run_outputs(cfg, args), adopt=made_by_train_net)
        refuse_earlier_run(cfg, args)
        refuse_other_model_on_resume(cfg, args)
    with OutputDirLock(output_dir, "OUTPUT_DIR") if owner else nullcontext() as lock:
        if lock is not None:
            owned = claim_output_folder(
                output_dir, TOOL, {}, what="OUTPUT_DIR", writes=run_outputs(cfg, args), adopt=made_by_train_net
            )
            owned.record(*_RUN_OUTPUTS)
            # half-written files of a killed run (the lock says no other run is writing)
            remove_stale_temporaries(output_dir / "checkpoints")
            for name in _RUN_FILES:
                remove_stale_temporaries(output_dir, name)
        with logging_to(output_dir, log_file):
            if lock is not None:
                lock.log_takeover()
            refuse_earlier_run(cfg, args)
            refuse_other_model_on_resume(cfg, args)
            yield


def run_outputs(cfg: CfgNode, args: argparse.Namespace) -> list[str]:
    """What a run writes in OUTPUT_DIR, less config.yaml when that is the --config-file (an input is never
    replaced, so it is not named as a file that would be)."""
    own_config = Path(cfg.OUTPUT_DIR, "config.yaml").resolve()
    given = bool(args.config_file) and Path(args.config_file).resolve() == own_config
    return [name for name in _RUN_OUTPUTS if not (given and name == "config.yaml")]


def made_by_train_net(folder: Path) -> bool:
    """A folder this tool's processes wrote before the owner record: only the logs of a run's other ranks (they
    may start writing before the first rank claims the folder), or a run folder of this project made before owner
    records existed (its config.yaml and a log.txt that starts with the project's first line)."""
    if all(_RANK_LOG.match(entry.name) for entry in folder.iterdir() if entry.name not in (".lock", OWNER_FILE)):
        return True
    log = folder / "log.txt"
    if not ((folder / "config.yaml").is_file() and log.is_file()):
        return False
    with open(log, encoding="utf-8", errors="replace") as handle:
        return "command line: " in handle.read(4096)


def processes_per_machine(cfg: CfgNode, args: argparse.Namespace) -> int:
    return _accelerator(cfg, args)[1]


def run(args: argparse.Namespace) -> dict:
    """Config, then train or evaluate: in this process, or in the --num-gpus x --num-machines processes this
    machine's share of which it starts (or torchrun / srun started)."""
    cfg = build_config(args)
    per_machine = processes_per_machine(cfg, args)
    place = external_place(per_machine, args.num_machines)
    # a folder of someone else's (checked by the process that will own it), then a data error: one line each,
    # before OUTPUT_DIR is touched
    if args.machine_rank == 0 and (place is None or place.rank == 0):
        check_claim(cfg.OUTPUT_DIR, TOOL, {}, what="OUTPUT_DIR", writes=run_outputs(cfg, args), adopt=made_by_train_net)
    check_datasets(cfg, args)
    if place is None and per_machine * args.num_machines > 1:
        return launch_processes(cfg, args, per_machine)
    with stopped_cleanly(cfg, args):
        return run_process(cfg, args, place)


def launch_processes(cfg: CfgNode, args: argparse.Namespace, per_machine: int) -> dict:
    """This machine's processes of a multi-process run, started and watched from here. Machine 0's launcher owns
    OUTPUT_DIR (lock, config.yaml); the datasets are read (and their label maps cached) once, before the processes
    start."""
    owner = args.machine_rank == 0
    first_rank = args.machine_rank * per_machine
    with claimed_output_dir(cfg, args, owner, log_file_name(first_rank)):
        host, port = main_address(args.dist_url, args.num_machines, args.machine_rank, args.dist_timeout)
        prepare_output_dir(cfg, args, write_config=owner, log_file=log_file_name(first_rank))
        places = local_places(host, port, per_machine, args.num_machines, args.machine_rank)
        logger.info(
            "%d processes x %d machines (%s), rendezvous tcp://%s:%d",
            per_machine,
            args.num_machines,
            _backend(cfg, args),
            host,
            port,
        )
        return run_processes(
            _run_started_process, (cfg, args), places, lambda: resume_hint(cfg, args), Path(cfg.OUTPUT_DIR)
        )


def _run_started_process(place: Place, payload: tuple[CfgNode, argparse.Namespace]) -> dict:
    cfg, args = payload
    return run_tool("train_net.py", lambda: run_process(cfg, args, place))


def run_process(cfg: CfgNode, args: argparse.Namespace, place: Place | None) -> dict:
    """Train or evaluate in this process: the whole run, or one rank of a multi-process run (`place`)."""
    rank = place.rank if place is not None else 0
    # the run's first process owns OUTPUT_DIR, unless a launcher here started this one (the launcher owns it then)
    owner = place is None or (place.launcher != "train_net" and rank == 0)
    log_file = log_file_name(rank)
    with claimed_output_dir(cfg, args, owner, log_file):
        try:
            if place is not None:
                cfg = join_run(cfg, args, place)
            prepare_output_dir(cfg, args, write_config=owner, log_file=log_file)
            return evaluate_only(cfg, args, place) if args.eval_only else train(cfg, args, place=place)
        except RuntimeError as error:
            if place is None or not lost_peer(error):
                raise
            raise DistributedError(
                f"rank {rank} of {place.world_size}: another process of the run stopped answering "
                f"({first_words(error)}): see the other ranks' logs (log.txt.rankN) and machines. "
                f"{resume_hint(cfg, args)}"
            ) from None
        finally:
            destroy_process_group()


def join_run(cfg: CfgNode, args: argparse.Namespace, place: Place) -> CfgNode:
    """One rank's start: its share of the cores, its log (rank > 0: warnings only on the terminal, all in its own
    log file), the process group joined, and the config agreed with rank 0."""
    if place.rank > 0:
        for handler in logging.getLogger().handlers:
            if getattr(handler, "_trashseg", False):
                handler.setLevel(logging.WARNING)
    threads = set_threads(place.local_world_size)
    logger.info(
        "rank %d of %d (machine %d, local rank %d, pid %d, %d CPU threads, started by %s), rendezvous %s",
        place.rank,
        place.world_size,
        place.node_rank,
        place.local_rank,
        os.getpid(),
        threads,
        place.launcher,
        place.url,
    )
    if _accelerator(cfg, args)[0] == "gpu":
        torch.cuda.set_device(place.local_rank)
    init_process_group(place, _backend(cfg, args), args.dist_timeout)
    return agree_on_config(cfg, place)


# Keys that may differ between machines: where files are on each (the model and the data must be the same).
_KEYS_LOCAL_TO_A_MACHINE = {"OUTPUT_DIR", "DATASETS.ROOT", "MODEL.WEIGHTS", "MODEL.BACKBONE.WEIGHTS", "SEED"}


def agree_on_config(cfg: CfgNode, place: Place) -> CfgNode:
    """Every rank runs rank 0's config: another value elsewhere is an error naming the key and the rank; the seed
    is rank 0's (a drawn seed, SEED -1, differs between machines)."""
    mine = yaml.safe_load(cfg.dump())
    everyone = gather(mine)
    for other_rank, theirs in enumerate(everyone):
        changed = [
            f"{key} {_plain(old)} (rank 0) vs {_plain(new)}"
            for key, old, new in _leaf_differences(everyone[0], CfgNode(theirs))
            if key not in _KEYS_LOCAL_TO_A_MACHINE
        ]
        if changed:
            raise ConfigError(
                f"rank {other_rank} of {place.world_size} runs another config than rank 0 ({'; '.join(changed[:3])}"
                f"{'; ...' if len(changed) > 3 else ''}): give every machine the same --config-file and overrides"
            )
    seed = everyone[0]["SEED"]
    if seed != cfg.SEED:
        cfg = cfg.clone()
        cfg.defrost()
        cfg.SEED = seed
        cfg.freeze()
    return cfg


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


class RunStoppedError(UserError):
    """SIGTERM or Ctrl-C stopped the run; the message says how to continue."""


@contextmanager
def stopped_cleanly(cfg: CfgNode, args: argparse.Namespace) -> Iterator[None]:
    """SIGTERM and Ctrl-C stop a run in this process as they stop a multi-process one: RunStoppedError, one line
    saying how to continue (exit status 2). Lightning alone would end a SIGTERM'd fit with status 0 (it stops at the
    next step and raises its SIGTERMException, a SystemExit) and a Ctrl-C'd one with 1, without a word."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    try:
        with sigterm_raises():
            yield
    except BaseException as stop:
        cause = "stopped by SIGTERM" if isinstance(stop, SIGTERMException) else stop_cause(stop)
        if cause is None:
            raise
        what_next = "Nothing was written: run the same command again." if args.eval_only else resume_hint(cfg, args)
        raise RunStoppedError(f"{cause}: the run was stopped. {what_next}") from None


def resume_hint(cfg: CfgNode, args: argparse.Namespace) -> str:
    """What to do after a stopped or failed run: resume from its last checkpoint, when it saved one (the same
    command, with --resume unless it has it already, as `make demo`'s has)."""
    point = find_resume_point(Path(cfg.OUTPUT_DIR) / "checkpoints")
    if point is None:
        return "No checkpoint was saved yet: run the command again to start over."
    how = "the same command again" if args.resume else "the same command with --resume"
    return f"Continue from {point.path} (iteration {point.step}): {how}."


def check_datasets(cfg: CfgNode, args: argparse.Namespace) -> None:
    """The run's datasets registered and read (their label maps rendered into the label cache), and their classes
    checked against MODEL.SEM_SEG_HEAD.NUM_CLASSES: a data error is one line before anything is written into
    OUTPUT_DIR, and a multi-process run's processes read the cache. The evaluation sets must hold the training
    set's classes, name for name, and --eval-only's those its checkpoint records (when it records them)."""
    from ..data.coco_semantic import check_class_lists
    from .lightning_module import check_dataset_classes

    register_datasets_from_config(cfg)
    read_datasets(cfg, args)
    classes = check_dataset_classes(cfg, [*([] if args.eval_only else cfg.DATASETS.TRAIN), *cfg.DATASETS.TEST])
    recorded = recorded_class_names(cfg.MODEL.WEIGHTS, cfg.MODEL.ALLOW_PICKLE) if args.eval_only else None
    if recorded is not None and classes:
        check_class_lists(
            classes,
            f"dataset {cfg.DATASETS.TEST[0]}",
            recorded,
            f"MODEL.WEIGHTS {cfg.MODEL.WEIGHTS} (the classes it was trained on)",
            "evaluate on a json of the model's class list, or give the model trained on this one",
        )


def read_datasets(cfg: CfgNode, args: argparse.Namespace) -> None:
    """Read the datasets the run uses (rendering and caching their label maps), so that a data error is one line
    here and the processes read the cache."""
    from ..data.catalog import DatasetCatalog

    names = list(cfg.DATASETS.TEST) if args.eval_only else [*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST]
    for name in dict.fromkeys(names):
        DatasetCatalog.get(name)


def main(argv: list[str] | None = None) -> dict:
    """train_net.py: a user error (bad config, missing file, folder in use, diverged run) is one line on stderr
    and exit status 2; `--debug` shows its traceback."""
    argv = sys.argv[1:] if argv is None else list(argv)
    return run_tool("train_net.py", lambda: run(default_argument_parser().parse_args(strip_debug(argv))), argv)
