#!/usr/bin/env python
"""Everything GPU-specific in one command, with a time budget: the first thing to run on a machine with a GPU.

    python benchmarks/gpu_check.py                                    # full check, table into benchmarks/RESULTS.md
    python benchmarks/gpu_check.py --results /tmp/gpu.md --checks kernels,train
    python benchmarks/gpu_check.py --smoke --results /tmp/smoke.md    # CPU: the same code paths, tiny models

Checks, in this order:
1. kernels: the Triton deformable attention and the flex_attention neighborhood attention against their PyTorch
   references (values and the gradients of every input, fp32 and bf16), at the shapes the kernels are called with in
   m2f_swin_l.yaml and m2f_dinat_l.yaml on a 512x512 input, recorded from the models' own forward pass (so the
   DiNAT-L maps are those after its small-map padding), at the training batch. Error = max |fast - reference| over
   the tensor, relative = that / max |reference| (the reference runs in fp32 on the same, rounded, inputs); a case
   passes when every tensor's relative error is within the tolerance (fp32 1e-4, bf16 2e-2). The bf16
   neighborhood cases keep the position bias in fp32, as a model's parameter under autocast.
2. train: 20 training steps (forward, losses, backward, AdamW) of m2f_swin_l, m2f_dinat_l, semask_swin_l and
   eomt_dinov2_l_512 (EoMT: no custom kernel) at batch 8 on random 512x512 images (benchmarks/train_step.py's batch
   and timing, random weights, nothing read from disk), bf16 autocast and fp32: images/s (median step), peak GPU
   memory, every loss of every step finite.
3. predict: TTA prediction (TEST.AUG as in each config: its MIN_SIZES x FLIP, turned on) of generated sample
   images through the prediction tool's inference (benchmarks/predict.py's timing), bf16: images/s.
4. ddp: train_net.py (the real entry point, a subprocess) with --num-gpus 2 on generated sample data, a few
   iterations of configs/quickstart.yaml: success and images/s from its log; skipped, with the reason, on fewer
   than 2 GPUs.

Budget: --budget seconds in all (default 450, so the run stays under 8 minutes with start-up). Each check gets a
share of what is left (SHARES; a check that finishes early or is skipped leaves its time to the next ones), split
evenly over its runs; a run that overruns is stopped with an "over budget" row, and a check is not started when
nothing is left. Training runs as many of the 20 steps as its part allows (the row says so when fewer).
Exit status: 0 all passed, 1 a row FAILED, 3 nothing failed but rows were cut by the budget (not verified; rerun
them with --checks), 2 a usage error (no CUDA without --smoke); a DDP check skipped on one GPU is not a failure.
The table (device, torch and Triton versions, date) replaces the section between `<!-- gpu_check:begin -->` and
`<!-- gpu_check:end -->` of --results (appended with the markers when absent), written atomically after every
check so an interrupted run keeps what it measured. The first run compiles the Triton and flex kernels (torch's
and Triton's on-disk caches make a second run on the same machine faster).

--smoke runs the same code on the CPU: the same configs narrowed to tiny widths (SMOKE_OPTS), 64 px images,
batch 2, 2 timed steps in fp32, kernel checks at batch 1 in fp32 and bf16 with the Triton kernels in Triton's
interpreter (TRITON_INTERPRET=1, as the tests run them) and the flex path eager, and train_net.py as one CPU
process instead of the 2-GPU run. It needs --results.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import torch

# benchmarks/ modules, beside this file (the script's folder is on sys.path); triton_interpret first: --smoke's
# TRITON_INTERPRET must be set before the imports below import Triton
import triton_interpret  # noqa: F401
from ms_deform_attn import TOLERANCE
from ms_deform_attn import make_inputs as deform_inputs
from ms_deform_attn import reference_errors as deform_reference_errors
from predict import time_setting
from train_step import make_step, peak_memory_gib, random_batch, time_steps

import mask2former.modeling.register_all  # noqa: F401  (every model family's config keys and classes)
import semask  # noqa: F401  (the SeMask plug-in: its config keys, backbone and meta architecture)
from mask2former.config import load_config
from mask2former.errors import UserError
from mask2former.io.files import atomic_write_text
from mask2former.modeling.build import build_model
from mask2former.utils.cli import run_tool, strip_debug

REPO = Path(__file__).resolve().parents[1]

BEGIN, END = "<!-- gpu_check:begin -->", "<!-- gpu_check:end -->"
EXIT_FAILED, EXIT_OVER_BUDGET = 1, 3  # 2: a usage error (run_tool)
DEFAULT_RESULTS = REPO / "benchmarks" / "RESULTS.md"
CHECKS = ("kernels", "train", "predict", "ddp")
TRAIN_CONFIGS = (
    "configs/m2f_swin_l.yaml",
    "configs/m2f_dinat_l.yaml",
    "configs/semask_swin_l.yaml",
    "configs/eomt_dinov2_l_512.yaml",
)
KERNEL_CONFIGS = ("configs/m2f_swin_l.yaml", "configs/m2f_dinat_l.yaml")
# DiNAT-L last: its test-time scales compile new flex kernels, it gets the time the others leave
PREDICT_CONFIGS = (
    "configs/m2f_swin_l.yaml",
    "configs/semask_swin_l.yaml",
    "configs/eomt_dinov2_l_512.yaml",
    "configs/m2f_dinat_l.yaml",
)
DDP_CONFIG = "configs/quickstart.yaml"
PRECISIONS = {"bf16": torch.bfloat16, "fp32": torch.float32}
# relative shares of the budget (flex_attention compiles one kernel per map size and dilation: the DiNAT-L
# cases of kernels, train and predict pay for it)
SHARES = {"kernels": 0.25, "train": 0.40, "predict": 0.20, "ddp": 0.15}

# Tiny widths for every model of TRAIN_CONFIGS (quickstart.yaml's kind of narrowing, smaller still): the same
# classes and code. The DiNAT dilations are larger than the 64 px smoke maps allow, so its small-map padding runs.
SMOKE_OPTS = [
    *("MODEL.SWIN.EMBED_DIM", "16", "MODEL.SWIN.DEPTHS", "[1, 1, 2, 1]", "MODEL.SWIN.NUM_HEADS", "[1, 1, 2, 2]"),
    *("MODEL.SWIN.WINDOW_SIZE", "4", "MODEL.SWIN.SEM_WINDOW_SIZE", "4", "MODEL.SWIN.DROP_PATH_RATE", "0.0"),
    *("MODEL.DINAT.EMBED_DIM", "16", "MODEL.DINAT.DEPTHS", "[2, 1, 2, 1]", "MODEL.DINAT.NUM_HEADS", "[1, 1, 2, 2]"),
    *("MODEL.DINAT.KERNEL_SIZE", "3", "MODEL.DINAT.DILATIONS", "[[1, 7], [3], [1, 2], [1]]"),
    *("MODEL.DINAT.DROP_PATH_RATE", "0.0"),
    *("MODEL.SEM_SEG_HEAD.CONVS_DIM", "32", "MODEL.SEM_SEG_HEAD.MASK_DIM", "32"),
    *("MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", "1"),
    *("MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_DIM_FEEDFORWARD", "64"),
    *("MODEL.MASK_FORMER.HIDDEN_DIM", "32", "MODEL.MASK_FORMER.NHEADS", "2", "MODEL.MASK_FORMER.DEC_LAYERS", "3"),
    *("MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "6", "MODEL.MASK_FORMER.DIM_FEEDFORWARD", "64"),
    *("MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "256"),
    *("MODEL.EOMT.EMBED_DIM", "32", "MODEL.EOMT.DEPTH", "3", "MODEL.EOMT.NUM_HEADS", "2"),
    *("MODEL.EOMT.NUM_QUERIES", "6", "MODEL.EOMT.NUM_BLOCKS", "2"),
]


@dataclass(frozen=True)
class Settings:
    """What differs between the full check and the CPU smoke run."""

    device: str
    cpu_threads: int | None  # torch's CPU threads (None: its default), also OMP_NUM_THREADS of train_net.py
    size: int  # training / recording image side, px
    batch: int  # training batch
    kernel_batch: int  # the kernel checks' batch (the training batch on the GPU: the compiled kernels are shared)
    steps: int  # timed training steps
    precisions: tuple[str, ...]
    predict_images: int
    predict_batch: int  # views per forward pass
    predict_amp: bool
    model_opts: tuple[str, ...]  # config overrides for every model
    tta_sizes: str | None  # TEST.AUG.MIN_SIZES override (None: the config's)
    sample_train: int  # generated labelled images (train + val)
    sample_test: int  # generated unlabelled images, the prediction inputs
    ddp_gpus: int  # --num-gpus of the train_net run
    ddp_batch: int  # its SOLVER.IMS_PER_BATCH (over all processes)
    ddp_opts: tuple[str, ...]


FULL = Settings(
    device="cuda",
    cpu_threads=None,
    size=512,
    batch=8,
    kernel_batch=8,
    steps=20,
    precisions=("bf16", "fp32"),
    predict_images=8,
    predict_batch=8,
    predict_amp=True,
    model_opts=(),
    tta_sizes=None,
    sample_train=40,
    sample_test=8,
    ddp_gpus=2,
    ddp_batch=8,
    ddp_opts=("SOLVER.MAX_ITER", "20", "SOLVER.LOG_PERIOD", "10"),  # the rate of iterations 10..20
)
SMOKE = Settings(
    device="cpu",
    # tiny models gain nothing from a second thread, and OpenMP threads waiting for each other on a busy machine
    # made a step 100 times slower
    cpu_threads=1,
    size=64,
    batch=2,
    kernel_batch=1,
    steps=2,
    precisions=("fp32",),  # bf16 autocast on a CPU is emulated (slow) where it lacks AVX512-BF16
    predict_images=2,
    predict_batch=8,
    predict_amp=False,
    model_opts=tuple(SMOKE_OPTS),
    tta_sizes="(48, 64)",
    sample_train=10,
    sample_test=2,
    ddp_gpus=0,
    ddp_batch=2,
    ddp_opts=(
        *SMOKE_OPTS,
        *("SOLVER.MAX_ITER", "2", "SOLVER.LOG_PERIOD", "1"),
        *("INPUT.CROP.SIZE", "(64, 64)", "INPUT.MIN_SIZE_TRAIN", "(64, 96)", "INPUT.MIN_SIZE_TEST", "64"),
        *("DATALOADER.NUM_WORKERS", "0"),
    ),
)


class GpuCheckError(UserError):
    """A usage problem of this tool (no CUDA, missing --results, malformed markers)."""


class OverBudget(BaseException):
    """Raised by the alarm when a check has used its share of the budget (a BaseException, so that no
    `except Exception` inside torch's compilers swallows it)."""


@dataclass
class Row:
    check: str
    case: str
    status: str  # "pass", "FAIL", "skipped", "over budget"
    figures: str = ""
    criterion: str = ""
    seconds: float | None = None

    def cells(self) -> list[str]:
        seconds = "" if self.seconds is None else f"{self.seconds:.1f}"
        return [self.check, self.case, self.status, self.figures, self.criterion, seconds]


@dataclass
class Report:
    header: str
    rows: list[Row] = field(default_factory=list)

    def with_status(self, status: str) -> list[Row]:
        return [row for row in self.rows if row.status == status]


# ---------------------------------------------------------------- budget


class Budget:
    """The whole run's deadline and each check's share of it."""

    def __init__(self, seconds: float) -> None:
        self.start = time.monotonic()
        self.deadline = self.start + seconds
        self.seconds = seconds

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def share(self, check: str, pending: Sequence[str]) -> float:
        """Seconds for `check` now: what is left, split in proportion to SHARES over it and the `pending` checks
        after it (so a check that finishes early, or a skipped one, leaves its time to the others)."""
        return self.left() * SHARES[check] / sum(SHARES[name] for name in {check, *pending})


@contextmanager
def alarm(seconds: float) -> Iterator[None]:
    """Raise OverBudget in the main thread after `seconds` (between Python steps; a running kernel finishes)."""

    def ring(signum, frame):
        raise OverBudget(f"over its budget of {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def progress(budget: Budget, message: str) -> None:
    print(f"[{budget.elapsed():5.0f} s] {message}", flush=True)


def free_memory(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


# ---------------------------------------------------------------- kernels


@dataclass(frozen=True)
class DeformCase:
    levels: tuple[tuple[int, int], ...]
    queries: int
    heads: int
    dim: int
    points: int

    def label(self, batch: int) -> str:
        levels = ",".join(f"{h}x{w}" for h, w in self.levels)
        total = sum(h * w for h, w in self.levels)
        return f"deform attn {levels} S{total} Q{self.queries} N{batch} H{self.heads} P{self.points} D{self.dim}"


@dataclass(frozen=True)
class NeighborhoodCase:
    height: int
    width: int
    heads: int
    dim: int
    kernel: int
    dilation: int
    scale: float | None
    bias: bool

    def label(self, batch: int) -> str:
        bias = "" if self.bias else " no bias"
        return (
            f"neighborhood attn {self.height}x{self.width} N{batch} H{self.heads} D{self.dim} "
            f"kernel {self.kernel} dilation {self.dilation}{bias}"
        )


def record_kernel_cases(cfg, size: int, device: str) -> list[DeformCase | NeighborhoodCase]:
    """The argument shapes of every deformable / neighborhood attention call in one forward of the model on a
    size x size image, in order of first call. The calls are answered with zeros (nothing is computed or
    compiled); the rest of the model runs as usual, so the DiNAT small-map padding decides the maps."""
    from mask2former.modeling.backbone import dinat
    from mask2former.modeling.ops import ms_deform_attn as deform_module

    seen: dict = {}

    def deform(value, shapes, starts, locations, weights, **_):
        levels = tuple((int(h), int(w)) for h, w in shapes.tolist())
        case = DeformCase(levels, locations.shape[1], value.shape[2], value.shape[3], locations.shape[4])
        seen.setdefault(case, None)
        return value.new_zeros(value.shape[0], locations.shape[1], value.shape[2] * value.shape[3])

    def neighborhood(query, key, value, kernel_size, dilation=1, rpb=None, scale=None, **_):
        _, heads, height, width, dim = query.shape
        seen.setdefault(NeighborhoodCase(height, width, heads, dim, kernel_size, dilation, scale, rpb is not None))
        return torch.zeros_like(value)

    model = build_model(cfg).to(device).eval()
    image = {"image": torch.zeros(3, size, size, dtype=torch.uint8, device=device), "height": size, "width": size}
    with (
        mock.patch.object(deform_module, "ms_deform_attn", deform),
        mock.patch.object(dinat, "neighborhood_attention", neighborhood),
        torch.no_grad(),
    ):
        model([image])
    del model
    free_memory(device)
    return list(seen)


def tensor_errors(ours: Sequence[torch.Tensor], reference: Sequence[torch.Tensor]) -> list[tuple[float, float]]:
    """(max abs error, that / max |reference|) per tensor pair."""
    out = []
    for mine, ref in zip(ours, reference, strict=True):
        diff = (mine.float() - ref.float()).abs().max().item()
        out.append((diff, diff / max(ref.abs().max().item(), 1e-12)))
    return out


def deform_errors(case: DeformCase, batch: int, dtype: torch.dtype, device: str) -> dict[str, tuple[float, float]]:
    """benchmarks/ms_deform_attn.py's errors of the Triton kernel (through the models' dispatch) vs the reference."""
    from mask2former.modeling.ops.ms_deform_attn import ms_deform_attn

    def triton(*inputs):
        return ms_deform_attn(*inputs, implementation="triton")

    inputs = deform_inputs(list(case.levels), batch, case.queries, case.heads, case.points, case.dim, dtype, device)
    errors = deform_reference_errors(triton, inputs, dtype)
    return {name: (diff, diff / max(scale, 1e-12)) for name, (diff, scale) in errors.items()}


@contextmanager
def flex_backward_on_cpu(device: str) -> Iterator[None]:
    """flex_attention refuses autograd on CPU tensors by a device guard although its eager path computes the
    gradients (tests/test_neighborhood_attention.py lifts it the same way); the smoke run needs them."""
    if device != "cpu":
        yield
        return
    import torch.nn.attention.flex_attention as flex_module

    with mock.patch.object(flex_module, "_validate_device", lambda *args: None):
        yield


def neighborhood_errors(
    case: NeighborhoodCase, batch: int, dtype: torch.dtype, device: str
) -> dict[str, tuple[float, float]]:
    """The flex path (compiled on CUDA) vs the reference in fp32 on the same rounded inputs: output and the
    gradients of query, key, value and position bias. The bias stays fp32 (a parameter under autocast)."""
    from mask2former.modeling.ops.neighborhood_attention import neighborhood_attention

    generator = torch.Generator(device=device).manual_seed(0)
    shape = (batch, case.heads, case.height, case.width, case.dim)
    qkv = [torch.randn(shape, device=device, dtype=dtype, generator=generator) for _ in range(3)]
    table = 2 * case.kernel - 1
    rpb = torch.randn(case.heads, table, table, device=device, generator=generator) * 0.02 if case.bias else None
    grad_out = torch.randn(shape, device=device, dtype=dtype, generator=generator)
    results = []
    for implementation, cast in (("flex", lambda t: t), ("reference", lambda t: t.float())):
        leaves = [cast(t).detach().requires_grad_() for t in (*qkv, *([rpb] if case.bias else []))]
        bias = leaves[3] if case.bias else None
        # bf16: under autocast, as the model's bf16 training runs it (and so the same compiled kernels)
        amp = implementation == "flex" and dtype != torch.float32
        with flex_backward_on_cpu(device), torch.autocast(device, dtype=torch.bfloat16, enabled=amp):
            out = neighborhood_attention(
                *leaves[:3], case.kernel, case.dilation, bias, case.scale, implementation=implementation
            )
            grads = torch.autograd.grad(out, leaves, cast(grad_out))
        results.append([t.detach() for t in (out, *grads)])
        del out, grads, leaves
    names = ("out", "grad_query", "grad_key", "grad_value", "grad_rpb")[: len(results[0])]
    return dict(zip(names, tensor_errors(*results), strict=True))


def crash_row(check: str, case: str, error: Exception) -> Row:
    """A FAIL row for an exception (its traceback goes to stderr), so that the other runs still run."""
    traceback.print_exc()
    message = (str(error).strip().splitlines() or [""])[0][:300]
    return Row(check, case, "FAIL", f"{type(error).__name__}: {message}")


def error_row(label: str, dtype_name: str, errors: dict[str, tuple[float, float]]) -> Row:
    tolerance = TOLERANCE[PRECISIONS[dtype_name]]
    worst = max(rel for _, rel in errors.values())
    finite = all(math.isfinite(abs_) for abs_, _ in errors.values())
    figures = "; ".join(f"{name} {abs_:.1e} ({rel:.1e})" for name, (abs_, rel) in errors.items())
    status = "pass" if finite and worst <= tolerance else "FAIL"
    criterion = f"max abs error (relative to max abs reference); relative <= {tolerance:g}"
    return Row("kernels", label, status, figures, criterion)


def kernel_cases(settings: Settings) -> list[DeformCase | NeighborhoodCase]:
    cases: list = []
    for config in KERNEL_CONFIGS:
        cfg = load_config(str(REPO / config), list(settings.model_opts))
        cases += [case for case in record_kernel_cases(cfg, settings.size, settings.device) if case not in cases]
    return cases


def check_kernels(
    settings: Settings, report: Report, budget: Budget, write: Callable[[], None], seconds: float
) -> None:
    """A row per recorded case and precision, all within `seconds` (then an "over budget" row)."""
    from mask2former.modeling.ops import ms_deform_attn_triton as triton_ops

    if not triton_ops.TRITON_AVAILABLE:
        report.rows.append(Row("kernels", "Triton", "FAIL", "triton is not importable"))
        return
    try:
        with alarm(seconds):
            cases = kernel_cases(settings)
            progress(budget, f"kernels: {len(cases)} shapes from {', '.join(KERNEL_CONFIGS)} at {settings.size} px")
            for case in cases:
                for dtype_name in ("fp32", "bf16"):
                    label = f"{case.label(settings.kernel_batch)} {dtype_name}"
                    begin = time.monotonic()
                    check = deform_errors if isinstance(case, DeformCase) else neighborhood_errors
                    try:
                        errors = check(case, settings.kernel_batch, PRECISIONS[dtype_name], settings.device)
                        row = error_row(label, dtype_name, errors)
                    except Exception as error:  # one broken case must not hide the others
                        row = crash_row("kernels", label, error)
                    row.seconds = time.monotonic() - begin
                    report.rows.append(row)
                    progress(budget, f"  {row.case}: {row.status}: {row.figures}")
                    free_memory(settings.device)
                write()
    except OverBudget as error:
        report.rows.append(Row("kernels", "remaining cases", "over budget", f"stopped: {error}"))
        progress(budget, f"kernels: stopped, {error}")


# ---------------------------------------------------------------- training


def train_rate(cfg, settings: Settings, precision: str, seconds: float) -> tuple[Row, list[float]]:
    """Up to settings.steps timed training steps within `seconds`; (row, losses of every step)."""
    device, amp = settings.device, precision == "bf16"
    torch.manual_seed(0)
    model = build_model(cfg).to(device).train()
    data = random_batch(settings.batch, settings.size, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, device)
    losses: list[torch.Tensor] = []
    step = make_step(model, data, device, amp, losses)
    deadline = time.monotonic() + seconds
    times = time_steps(step, 1, device)  # one warm-up (compilation, autotuning), one timed step
    # each further call of time_steps costs one more warm-up step; 10% margin for the spread between steps
    fits = int((deadline - time.monotonic()) / (1.1 * times[0])) - 1
    more = max(0, min(settings.steps - 1, fits))
    if more:
        times += time_steps(step, more, device)
    values = torch.stack(losses).flatten().tolist()
    memory = peak_memory_gib(device)
    seconds_per_step = statistics.median(times)
    finite = all(math.isfinite(v) for v in values)
    rate = settings.batch / seconds_per_step
    where = "GPU peak allocated" if device == "cuda" else "process peak RSS"
    figures = (
        f"{rate:.2f} img/s ({seconds_per_step:.3f} s/step, median of {len(times)}), {memory:.2f} GiB {where}, "
        f"losses {'finite' if finite else 'NOT FINITE'}"
    )
    cut = f"; {len(times)} of {settings.steps} steps: budget" if len(times) < settings.steps else ""
    criterion = f"batch {settings.batch}, {settings.size}x{settings.size}, all losses finite{cut}"
    row = Row("train", "", "pass" if finite else "FAIL", figures, criterion)
    return row, values


def check_train(settings: Settings, report: Report, budget: Budget, write: Callable[[], None], seconds: float) -> None:
    """A row per config and precision, each run within its part of `seconds`."""
    share_end = time.monotonic() + seconds
    runs = [(config, precision) for config in TRAIN_CONFIGS for precision in settings.precisions]
    for index, (config, precision) in enumerate(runs):
        part = (share_end - time.monotonic()) / (len(runs) - index)
        case = f"{Path(config).stem} {precision}"
        begin = time.monotonic()
        progress(budget, f"train: {case}, {settings.steps} steps within {part:.0f} s")
        try:
            with alarm(part):
                cfg = load_config(str(REPO / config), list(settings.model_opts))
                row, _ = train_rate(cfg, settings, precision, part)
        except OverBudget as error:
            row = Row("train", "", "over budget", f"stopped: {error}", "")
        except Exception as error:  # out of memory, a kernel error: the other runs still run
            row = crash_row("train", "", error)
        row.case, row.seconds = case, time.monotonic() - begin
        report.rows.append(row)
        progress(budget, f"  {case}: {row.status}: {row.figures}")
        free_memory(settings.device)
        write()


# ---------------------------------------------------------------- prediction


def sample_images(root: Path, count: int) -> list:
    """The first `count` generated test images, listed and read as the prediction tool does (BGR uint8)."""
    from mask2former.io.images import read_image
    from mask2former.pipeline.predict import read_image_list

    images, _ = read_image_list(root / "test.json", root, 11)
    return [read_image(image["path"]) for image in images[:count]]


def check_predict(
    settings: Settings, report: Report, budget: Budget, write: Callable[[], None], seconds: float, images: list
) -> None:
    """A row per config, each within its part of `seconds`."""
    import cv2

    if settings.size != images[0].shape[0]:  # the smoke run's small images
        images = [cv2.resize(image, (settings.size, settings.size), interpolation=cv2.INTER_AREA) for image in images]
    share_end = time.monotonic() + seconds
    for index, config in enumerate(PREDICT_CONFIGS):
        part = (share_end - time.monotonic()) / (len(PREDICT_CONFIGS) - index)
        case = Path(config).stem
        begin = time.monotonic()
        progress(budget, f"predict: {case} with TTA, {len(images)} images within {part:.0f} s")
        try:
            with alarm(part):
                opts = [*settings.model_opts, "TEST.AUG.ENABLED", "True"]
                if settings.tta_sizes:
                    opts += ["TEST.AUG.MIN_SIZES", settings.tta_sizes]
                cfg = load_config(str(REPO / config), opts)
                torch.manual_seed(0)
                model = build_model(cfg).to(settings.device).eval()
                batch = settings.predict_batch
                elapsed, views = time_setting([model], images, cfg, batch, settings.device, settings.predict_amp)
                del model
                precision = "bf16" if settings.predict_amp else "fp32"
                sizes = ", ".join(str(s) for s in cfg.TEST.AUG.MIN_SIZES)
                row = Row(
                    "predict",
                    case,
                    "pass",
                    f"{len(images) / elapsed:.2f} img/s ({views} views per image)",
                    f"TEST.AUG sizes ({sizes}) x flip {cfg.TEST.AUG.FLIP}, {batch} views per pass, {precision}",
                )
        except OverBudget as error:
            row = Row("predict", case, "over budget", f"stopped: {error}")
        except Exception as error:
            row = crash_row("predict", case, error)
        row.seconds = time.monotonic() - begin
        report.rows.append(row)
        progress(budget, f"  {case}: {row.status}: {row.figures}")
        free_memory(settings.device)
        write()


# ---------------------------------------------------------------- DDP through train_net.py


def ddp_command(settings: Settings, data: Path, output: Path) -> list[str]:
    opts = [
        *("DATASETS.ROOT", str(data), "DATASETS.LABEL_CACHE_DIR", str(output.parent / "label_cache")),
        *("SOLVER.WARMUP_ITERS", "0", "SOLVER.CHECKPOINT_PERIOD", "1000", "TEST.EVAL_PERIOD", "0"),
        *("OUTPUT_DIR", str(output), "SEED", "0", "SOLVER.IMS_PER_BATCH", str(settings.ddp_batch)),
        *settings.ddp_opts,
    ]
    entry = [sys.executable, str(REPO / "train_net.py"), "--config-file", str(REPO / DDP_CONFIG)]
    return [*entry, "--num-gpus", str(settings.ddp_gpus), *opts]


def last_rate(log: str) -> float | None:
    """it/s of train_net's last progress line ("iter 20/20  loss ...  12.34 it/s  eta ...")."""
    rates = re.findall(r"iter \d+/\d+ .*?([0-9.]+) it/s", log)
    return float(rates[-1]) if rates else None


def ddp_skip_reason(settings: Settings) -> str | None:
    if settings.device == "cuda" and torch.cuda.device_count() < 2:
        return f"{torch.cuda.device_count()} GPU on this machine; the DDP check needs 2"
    return None


def check_ddp(settings: Settings, report: Report, budget: Budget, seconds: float, data: Path, work: Path) -> None:
    """One row: train_net.py in a subprocess, killed (its whole process group) after `seconds`."""
    case = f"train_net.py {Path(DDP_CONFIG).name} --num-gpus {settings.ddp_gpus}"
    reason = ddp_skip_reason(settings)
    if reason:
        report.rows.append(Row("ddp", case, "skipped", reason))
        progress(budget, f"ddp: skipped: {reason}")
        return
    if settings.device == "cpu":
        case += " (smoke: one CPU process; DDP needs 2 GPUs)"
    output = work / "ddp_run"
    command = ddp_command(settings, data, output)
    progress(budget, f"ddp: {case}, within {seconds:.0f} s")
    begin = time.monotonic()
    env = None if settings.cpu_threads is None else {**os.environ, "OMP_NUM_THREADS": str(settings.cpu_threads)}
    process = subprocess.Popen(
        command,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        log, _ = process.communicate(timeout=max(seconds, 1))
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # train_net's DDP workers are in the group this call started
        process.communicate()
        report.rows.append(Row("ddp", case, "over budget", f"stopped after {seconds:.0f} s", "", seconds))
        progress(budget, "  ddp: over budget")
        return
    rate, batch = last_rate(log), settings.ddp_batch
    done = process.returncode == 0 and (output / "final_metrics.json").is_file()
    if done and rate is not None:
        row = Row("ddp", case, "pass", f"{rate * batch:.2f} img/s (global batch {batch}, {rate:.2f} it/s)")
    else:
        tail = " | ".join(line.strip() for line in log.strip().splitlines()[-3:])
        row = Row("ddp", case, "FAIL", f"exit status {process.returncode}: {tail}"[:400])
    row.criterion = "exit status 0, final_metrics.json written, a progress line"
    row.seconds = time.monotonic() - begin
    report.rows.append(row)
    progress(budget, f"  ddp: {row.status}: {row.figures}")


# ---------------------------------------------------------------- the results file


def render(report: Report) -> str:
    lines = [
        BEGIN,
        report.header,
        "",
        "| check | case | result | figures | criterion | s |",
        "|---|---|---|---|---|--:|",
    ]
    for row in report.rows:
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row.cells()) + " |")
    lines.append(END)
    return "\n".join(lines) + "\n"


def replace_section(text: str, section: str, where: str = "the results file") -> str:
    """`text` with the part from BEGIN to END (markers included) replaced by `section`, or `section` appended."""
    begin, end = text.count(BEGIN), text.count(END)
    if begin == 0 and end == 0:
        return text + ("\n" if text and not text.endswith("\n") else "") + ("\n" if text else "") + section
    if begin != 1 or end != 1 or text.index(BEGIN) > text.index(END):
        raise GpuCheckError(
            f"{where}: expected one {BEGIN} followed by one {END}, found {begin} and {end}: fix the markers"
        )
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    return head + section.rstrip("\n") + tail


def write_results(path: Path, report: Report) -> None:
    text = path.read_text() if path.is_file() else ""
    atomic_write_text(path, replace_section(text, render(report), str(path)))


# ---------------------------------------------------------------- main


def describe_machine(settings: Settings, command: str, budget: float) -> str:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    if settings.device == "cuda":
        count = torch.cuda.device_count()
        # fp32 rows run with torch's defaults, stated because they decide what "fp32" means on this GPU
        matmul, cudnn = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
        tf32 = f"fp32 matmul precision {matmul}, cuDNN TF32 {cudnn}"
        device = f"{torch.cuda.get_device_name()} x{count}, CUDA {torch.version.cuda} ({tf32})"
    else:
        threads = torch.get_num_threads()
        device = f"CPU, {threads} thread{'s' * (threads > 1)} (smoke run: tiny models, Triton interpreter)"
    return (
        f"`{command}` on {device}; torch {torch.__version__}, Triton {triton_version}; "
        f"{datetime.date.today().isoformat()}; budget {budget:.0f} s."
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="CPU smoke run: tiny models and shapes")
    parser.add_argument("--results", type=Path, help=f"markdown file for the table (default: {DEFAULT_RESULTS})")
    parser.add_argument("--budget", type=float, default=450.0, help="seconds for all checks (default: 450)")
    parser.add_argument("--checks", default=",".join(CHECKS), help=f"comma-separated, of {','.join(CHECKS)}")
    args = parser.parse_args(argv)
    unknown = set(args.checks.split(",")) - set(CHECKS)
    if unknown:
        parser.error(f"--checks: unknown {', '.join(sorted(unknown))}; choose from {', '.join(CHECKS)}")
    return args


def run(args: argparse.Namespace, argv: list[str]) -> int:
    if args.smoke:
        if args.results is None:
            raise GpuCheckError("--smoke writes its table only to --results PATH (not RESULTS.md): give one")
        # as triton_interpret.py does for the command line, for a call of main(): the kernels, imported later, are
        # decorated under it (Triton's own helpers only when nothing imported Triton before)
        os.environ["TRITON_INTERPRET"] = "1"
        settings = SMOKE
    else:
        if not torch.cuda.is_available():
            raise GpuCheckError(
                "no CUDA device (torch.cuda.is_available() is False): the full check needs a GPU; "
                "for the CPU smoke run give --smoke --results PATH"
            )
        if os.environ.get("TRITON_INTERPRET") == "1":
            raise GpuCheckError("TRITON_INTERPRET=1 is set: unset it, the GPU check compiles the Triton kernels")
        settings = FULL
    if settings.cpu_threads:
        torch.set_num_threads(settings.cpu_threads)
    results = args.results or DEFAULT_RESULTS
    checks = [name for name in CHECKS if name in args.checks.split(",")]
    budget = Budget(args.budget)
    command = " ".join(["python benchmarks/gpu_check.py", *argv])
    report = Report(describe_machine(settings, command, args.budget))

    def write() -> None:
        write_results(results, report)

    from mask2former.data.sample_dataset import make_sample_dataset

    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        work = Path(tmp)
        data = work / "sample"
        if {"predict", "ddp"} & set(checks):
            make_sample_dataset(data, settings.sample_train, settings.sample_test, seed=0)
            progress(budget, f"generated sample data: {settings.sample_train} labelled, {settings.sample_test} test")
        # a DDP check that will be skipped leaves its share to the others
        timed = [name for name in checks if name != "ddp" or ddp_skip_reason(settings) is None]
        for name in checks:
            if budget.left() < 5:
                report.rows.append(Row(name, "all", "over budget", f"not run: the {budget.seconds:.0f} s were used"))
                progress(budget, f"{name}: not run, over budget")
                continue
            begin = time.monotonic()
            seconds = budget.share(name, timed[timed.index(name) + 1 :]) if name in timed else 0.0
            if name == "kernels":
                check_kernels(settings, report, budget, write, seconds)
            elif name == "train":
                check_train(settings, report, budget, write, seconds)
            elif name == "predict":
                images = sample_images(data, settings.predict_images)
                check_predict(settings, report, budget, write, seconds, images)
            else:
                check_ddp(settings, report, budget, seconds, data, work)
            free_memory(settings.device)
            progress(budget, f"{name}: done in {time.monotonic() - begin:.0f} s")
            write()
    failed, cut = report.with_status("FAIL"), report.with_status("over budget")
    if failed:
        verdict = f"{len(failed)} of {len(report.rows)} rows FAILED"
    elif cut:
        verdict = f"nothing failed, {len(cut)} rows cut by the budget (not verified)"
    else:
        verdict = "all checks passed"
    report.header += f" Total {budget.elapsed():.0f} s: {verdict}."
    write()
    progress(budget, f"{verdict}; table in {results}")
    for row in failed + cut:
        print(f"  {row.status}: {row.check} {row.case}: {row.figures}", flush=True)
    return EXIT_FAILED if failed else EXIT_OVER_BUDGET if cut else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    return run_tool("gpu_check.py", lambda: run(parse_args(strip_debug(argv)), argv), argv)


if __name__ == "__main__":
    sys.exit(main())
