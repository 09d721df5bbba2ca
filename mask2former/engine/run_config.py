"""A training run's config: built from train_net's arguments and checked (settings, processes, datasets) before
anything is written; the differences between two configs (a saved run's, another rank's)."""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from fvcore.common.config import CfgNode

from ..config import ConfigError, load_config
from ..data.trash import register_datasets_from_config
from ..io.checkpoints import recorded_class_names
from ..modeling import register_all  # noqa: F401  (every model family's config keys and classes)
from .devices import world_size
from .distributed import check_dist_url
from .optimizer import build_gradient_clipper


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
    world_size(cfg, args)
    check_dist_url(args.dist_url, args.num_machines)
    build_gradient_clipper(cfg)  # refuses bad SOLVER.CLIP_GRADIENTS settings
    if cfg.SOLVER.MAX_ITER < 1:
        raise ConfigError(f"SOLVER.MAX_ITER is {cfg.SOLVER.MAX_ITER}: give the number of iterations (>= 1)")


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


def leaf_differences(saved: dict, current: CfgNode, prefix: str = "") -> list[tuple[str, object, object]]:
    """(dotted key, saved value, current value) for each leaf of `current` whose value differs in `saved`; keys
    missing from `saved` are not differences."""
    differences = []
    for key, value in current.items():
        if key not in saved:
            continue
        if isinstance(value, CfgNode):
            if isinstance(saved[key], dict):
                differences += leaf_differences(saved[key], value, f"{prefix}{key}.")
        elif plain_value(saved[key]) != plain_value(value):
            differences.append((f"{prefix}{key}", saved[key], value))
    return differences


def plain_value(value: object) -> object:
    """A config value with its tuples as lists, so that a YAML-read value compares equal to a CfgNode's."""
    return [plain_value(item) for item in value] if isinstance(value, list | tuple) else value
