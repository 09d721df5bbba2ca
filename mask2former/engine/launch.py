"""What train_net.py does: parse detectron2's arguments, build the config, train or evaluate."""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
from pathlib import Path
from urllib.parse import urlparse

import lightning as L
import torch
from fvcore.common.config import CfgNode
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from ..config import get_cfg
from ..data.trash import register_datasets_from_config
from ..utils.io import atomic_write_json, atomic_write_text
from ..utils.logger import setup_logging
from .callbacks import IterationProgress, plot_loss_curve
from .checkpoint import load_checkpoint_into

logger = logging.getLogger(__name__)


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


def setup(args: argparse.Namespace) -> CfgNode:
    """Merged config (file, then overrides), frozen; logging, seed and datasets set up; config.yaml written."""
    cfg = get_cfg()
    if args.config_file:
        cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts or [])
    if cfg.SEED < 0:
        cfg.SEED = random.randrange(2**31)
    cfg.freeze()
    output_dir = Path(cfg.OUTPUT_DIR)
    output_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(output_dir)
    logger.info("command line: %s", vars(args))
    if _is_main_process(args):
        atomic_write_text(output_dir / "config.yaml", cfg.dump())
    logger.info("config written to %s (seed %d)", output_dir / "config.yaml", cfg.SEED)
    register_datasets_from_config(cfg)
    return cfg


def _is_main_process(args: argparse.Namespace) -> bool:
    return args.machine_rank == 0 and int(os.environ.get("LOCAL_RANK", "0")) == 0


def _accelerator(cfg: CfgNode, args: argparse.Namespace) -> tuple[str, int]:
    wants_gpu = cfg.MODEL.DEVICE in ("auto", "cuda") and args.num_gpus > 0
    if wants_gpu and torch.cuda.is_available():
        return "gpu", args.num_gpus
    if cfg.MODEL.DEVICE == "cuda":
        raise RuntimeError("MODEL.DEVICE is 'cuda' but no GPU is available")
    return "cpu", 1


def build_trainer(cfg: CfgNode, args: argparse.Namespace, callbacks: list | None = None) -> tuple[L.Trainer, int]:
    """A Lightning Trainer for the config; returns it with the per-device batch size."""
    accelerator, devices = _accelerator(cfg, args)
    world = devices * args.num_machines
    if cfg.SOLVER.IMS_PER_BATCH % world:
        raise ValueError(f"SOLVER.IMS_PER_BATCH {cfg.SOLVER.IMS_PER_BATCH} is not divisible by {world} processes")
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
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if clip.ENABLED and clip.CLIP_TYPE not in ("full_model", "norm", "value"):
        raise ValueError(f"SOLVER.CLIP_GRADIENTS.CLIP_TYPE {clip.CLIP_TYPE!r}: use full_model, norm or value")
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
        gradient_clip_val=clip.CLIP_VALUE if clip.ENABLED else None,
        gradient_clip_algorithm="value" if clip.CLIP_TYPE == "value" else "norm",
        logger=[
            CSVLogger(cfg.OUTPUT_DIR, name="", version=""),
            TensorBoardLogger(cfg.OUTPUT_DIR, name="tensorboard", version=""),
        ],
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
        raise ValueError(f"backbone {type(model.backbone).__name__} cannot load MODEL.BACKBONE.WEIGHTS")
    report = loader(model.backbone, path)
    logger.info("backbone weights from %s: %s", path, report)


def train(cfg: CfgNode, args: argparse.Namespace, callbacks: list | None = None) -> dict:
    """Train (or resume) for SOLVER.MAX_ITER iterations; evaluates at the end; returns the final results."""
    trainer, batch_size = build_trainer(cfg, args, callbacks)
    module = build_module(cfg, batch_size)
    last = Path(cfg.OUTPUT_DIR) / "checkpoints" / "last.ckpt"
    ckpt_path = None
    if args.resume and last.is_file():
        ckpt_path = str(last)
        logger.info("resuming from %s", last)
    elif cfg.MODEL.WEIGHTS:
        load_checkpoint_into(module.model, cfg.MODEL.WEIGHTS, cfg.MODEL.ALLOW_PICKLE, cfg.MODEL.LOAD_STRICT)
    trainer.fit(module, ckpt_path=ckpt_path, weights_only=True)
    if module.last_eval_step != trainer.global_step:
        trainer.validate(module, verbose=False)
    output_dir = Path(cfg.OUTPUT_DIR)
    if trainer.is_global_zero:
        final = output_dir / "model_final.pth"
        tmp = final.with_name(".model_final.pth.tmp")
        torch.save(
            {"model": module.model.state_dict(), "iteration": trainer.global_step, "config_yaml": cfg.dump()},
            tmp,
        )
        tmp.replace(final)
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
        raise ValueError("--eval-only needs MODEL.WEIGHTS <checkpoint>")
    trainer, batch_size = build_trainer(cfg, args)
    module = build_module(cfg, batch_size)
    load_checkpoint_into(module.model, cfg.MODEL.WEIGHTS, cfg.MODEL.ALLOW_PICKLE, cfg.MODEL.LOAD_STRICT)
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


def main(argv: list[str] | None = None) -> dict:
    args = default_argument_parser().parse_args(argv)
    cfg = setup(args)
    return evaluate_only(cfg, args) if args.eval_only else train(cfg, args)
