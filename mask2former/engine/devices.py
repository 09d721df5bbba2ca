"""Where a run's processes run: the accelerator, the processes per machine, the world size, the process-group
backend, and the CPU settings a run's numbers depend on."""

from __future__ import annotations

import argparse
import os

import torch
from fvcore.common.config import CfgNode

from ..config import ConfigError


def accelerator_and_devices(cfg: CfgNode, args: argparse.Namespace) -> tuple[str, int]:
    """("gpu" | "cpu", processes on this machine) for MODEL.DEVICE and --num-gpus; ConfigError for a GPU that is not
    there."""
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


def world_size(cfg: CfgNode, args: argparse.Namespace) -> int:
    """The processes of the whole run; ConfigError unless SOLVER.IMS_PER_BATCH splits evenly over them."""
    _, devices = accelerator_and_devices(cfg, args)
    world = devices * args.num_machines
    if cfg.SOLVER.IMS_PER_BATCH % world:
        raise ConfigError(
            f"SOLVER.IMS_PER_BATCH {cfg.SOLVER.IMS_PER_BATCH} is not divisible by {world} processes "
            f"({devices} per machine x {args.num_machines} machines): give a multiple of {world}"
        )
    return world


def process_group_backend(cfg: CfgNode, args: argparse.Namespace) -> str:
    """nccl between GPUs, gloo between CPU processes."""
    return "nccl" if accelerator_and_devices(cfg, args)[0] == "gpu" else "gloo"


def processes_per_machine(cfg: CfgNode, args: argparse.Namespace) -> int:
    """The processes this machine runs (one per GPU, or --num-gpus CPU processes)."""
    return accelerator_and_devices(cfg, args)[1]


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
