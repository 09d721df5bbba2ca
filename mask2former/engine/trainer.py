"""The Lightning Trainer for a run's config (strategy, precision, checkpoints, loggers, callbacks), and the module
it fits with its starting weights."""

from __future__ import annotations

import argparse
import logging
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import lightning as L
import torch
from fvcore.common.config import CfgNode
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

from ..config import ConfigError
from ..modeling.weights import LoadReport, check_same_classes, load_checkpoint_into
from ..utils.logger import quiet_library_chatter
from .callbacks import IterationProgress
from .devices import accelerator_and_devices, process_group_backend, world_size
from .distributed import Place, cluster_environment
from .lightning_checkpoints import AtomicCheckpointIO, ResumePoint
from .metrics_log import MetricsCSVLogger
from .tracking import TrackingRuns, build_tracking_loggers

if TYPE_CHECKING:
    from .lightning_module import MaskFormerModule

logger = logging.getLogger("mask2former.engine.launch")  # train_net's log lines keep one name


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
    accelerator, devices = accelerator_and_devices(cfg, args)
    world = world_size(cfg, args)
    strategy = _ddp_strategy(cfg, args, place) if world > 1 else "auto"
    mixed = cfg.SOLVER.AMP.ENABLED and (accelerator == "gpu" or cfg.SOLVER.AMP.ON_CPU)
    precision = "bf16-mixed" if mixed else "32-true"
    checkpoints = _checkpoint_callbacks(cfg)
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
        logger=False if args.eval_only else _training_loggers(cfg, resume, trackers),
        plugins=[AtomicCheckpointIO()],
        log_every_n_steps=cfg.SOLVER.LOG_PERIOD,
        callbacks=[
            *checkpoints,
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


def _ddp_strategy(cfg: CfgNode, args: argparse.Namespace, place: Place | None) -> object:
    """Lightning's DDP over the run's processes: the cluster `place` describes (Lightning starts none itself), the
    backend for the accelerator, --dist-timeout for every collective."""
    from lightning.pytorch.strategies import DDPStrategy

    return DDPStrategy(
        cluster_environment=cluster_environment(place),
        process_group_backend=process_group_backend(cfg, args),
        timeout=timedelta(seconds=args.dist_timeout),
        broadcast_buffers=False,  # as Mask2Former's train_net: no buffer broadcast before every forward
    )


def _checkpoint_callbacks(cfg: CfgNode) -> list[ModelCheckpoint]:
    """The checkpoints in OUTPUT_DIR/checkpoints: every SOLVER.CHECKPOINT_PERIOD iterations (the newest
    SOLVER.CHECKPOINT_KEEP kept, and last.ckpt), and model_best.ckpt by sem_seg/mIoU."""
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
    return [periodic, best]


def _training_loggers(cfg: CfgNode, resume: ResumePoint | None, trackers: list) -> list:
    """A training run's history: OUTPUT_DIR/metrics.csv, OUTPUT_DIR/tensorboard and the experiment trackers. A
    resumed run keeps the metrics.csv rows before its iteration and drops the TensorBoard events from it on."""
    resume_step = resume.step if resume else None
    return [
        MetricsCSVLogger(cfg.OUTPUT_DIR, resume_step, resume.metrics_row if resume else None),
        # the resumed run logs from the iteration after resume_step on (steps count iterations done)
        TensorBoardLogger(
            cfg.OUTPUT_DIR, name="tensorboard", version="", purge_step=None if resume is None else resume.step + 1
        ),
        *trackers,
    ]


def build_module(cfg: CfgNode, batch_size: int, eval_folder: str = "eval") -> MaskFormerModule:
    """The LightningModule for the config, built after seeding with SEED, with MODEL.BACKBONE.WEIGHTS loaded."""
    from .lightning_module import MaskFormerModule

    L.seed_everything(cfg.SEED, workers=True, verbose=False)
    module = MaskFormerModule(cfg, batch_size_per_device=batch_size, eval_folder=eval_folder)
    if cfg.MODEL.BACKBONE.WEIGHTS:
        load_backbone_weights(module.model, cfg.MODEL.BACKBONE.WEIGHTS)
    return module


def load_backbone_weights(model: torch.nn.Module, path: str) -> None:
    """ImageNet / timm backbone weights through the backbone's key conversion (the model's own
    `load_backbone_pretrained` first: EoMT's encoder is a timm model without one)."""
    own = getattr(model, "load_backbone_pretrained", None)
    if own is not None:
        report = own(path)
        logger.info("backbone weights from %s: %s", path, report)
        return
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
