"""OUTPUT_DIR, a training run's folder: what a run writes there, claiming it (lock, owner record, a killed run's
half-written files), the refusals that keep an earlier run's checkpoints and results, the run's log and
config.yaml, and how to continue after a stop."""

from __future__ import annotations

import argparse
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

from fvcore.common.config import CfgNode

from ..config import ConfigError, config_yaml, read_config_yaml
from ..data.trash import register_datasets_from_config
from ..io.files import atomic_write_text, remove_stale_temporaries
from ..utils.logger import logging_to, setup_logging
from ..utils.output_folder import OWNER_FILE, check_claim, claim_output_folder
from ..utils.run_lock import OutputDirLock
from .devices import cpu_numerics
from .lightning_checkpoints import find_resume_point
from .run_config import leaf_differences, plain_value

logger = logging.getLogger("mask2former.engine.launch")  # train_net's log lines keep one name

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
        f"MODEL.{key} {plain_value(old)} -> {plain_value(new)}"
        for key, old, new in leaf_differences(saved.get("MODEL", {}), cfg.MODEL)
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
            atomic_write_text(config_file, config_yaml(cfg))
            logger.info("config written to %s (seed %d)", config_file, cfg.SEED)
    logger.info(cpu_numerics())
    register_datasets_from_config(cfg)


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


def resume_hint(cfg: CfgNode, args: argparse.Namespace) -> str:
    """What to do after a stopped or failed run: resume from its last checkpoint, when it saved one (the same
    command, with --resume unless it has it already, as `make demo`'s has)."""
    point = find_resume_point(Path(cfg.OUTPUT_DIR) / "checkpoints")
    if point is None:
        return "No checkpoint was saved yet: run the command again to start over."
    how = "the same command again" if args.resume else "the same command with --resume"
    return f"Continue from {point.path} (iteration {point.step}): {how}."
