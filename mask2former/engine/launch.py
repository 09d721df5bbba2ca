"""train_net.py's entry point and the coordination of a run's processes: `main` and `run`, this machine's
processes started and watched, each rank joined and agreeing with rank 0, a stop turned into one line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import yaml
from fvcore.common.config import CfgNode

from ..config import ConfigError
from ..errors import UserError
from ..utils.cli import run_tool, strip_debug
from ..utils.output_folder import check_claim
from ..utils.processes import sigterm_raises, stop_cause
from .arguments import default_argument_parser
from .devices import accelerator_and_devices, process_group_backend, processes_per_machine
from .distributed import (
    DistributedError,
    Place,
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
from .run_config import build_config, check_datasets, leaf_differences, plain_value
from .run_folder import TOOL, claimed_output_dir, made_by_train_net, prepare_output_dir, resume_hint, run_outputs
from .training import evaluate_only, train

logger = logging.getLogger(__name__)


def setup(args: argparse.Namespace) -> CfgNode:
    """`build_config` + `prepare_output_dir` (without the output-folder lock `run` holds)."""
    cfg = build_config(args)
    check_datasets(cfg, args)
    prepare_output_dir(cfg, args)
    return cfg


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
            process_group_backend(cfg, args),
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
    if accelerator_and_devices(cfg, args)[0] == "gpu":
        torch.cuda.set_device(place.local_rank)
    init_process_group(place, process_group_backend(cfg, args), args.dist_timeout)
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
            f"{key} {plain_value(old)} (rank 0) vs {plain_value(new)}"
            for key, old, new in leaf_differences(everyone[0], CfgNode(theirs))
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


def main(argv: list[str] | None = None) -> dict:
    """train_net.py: a user error (bad config, missing file, folder in use, diverged run) is one line on stderr
    and exit status 2; `--debug` shows its traceback."""
    argv = sys.argv[1:] if argv is None else list(argv)
    return run_tool("train_net.py", lambda: run(default_argument_parser().parse_args(strip_debug(argv))), argv)
