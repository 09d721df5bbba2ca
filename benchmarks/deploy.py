#!/usr/bin/env python
"""Deployment on the CPU: images/s and peak memory of PyTorch eager, onnxruntime fp32, OpenVINO fp32 and
onnxruntime INT8, side by side in one run.

    python benchmarks/deploy.py                                  # the five models of issue 24 at 512x512
    python benchmarks/deploy.py --models quickstart m2f_r50 --size 512 --repeats 3 --threads 2

For each model (configs/<name>.yaml, random weights: the configs name no pretrained file), a child process
builds it (torch.manual_seed(0)), saves its weights, exports them with tools/export.py's `export_onnx` at a fixed
SIZE x SIZE (checked against PyTorch on one random image with no tolerance: the largest difference is reported)
and quantizes the file with `quantize_onnx` (calibrated on --calibration-images random images). Then each backend
runs in a child process of its own: one warm-up, then --repeats timed runs on one random SIZE x SIZE image, with
--threads intra-op threads. Timed: PyTorch eager: the exported computation itself (export/graph.py's ScoresGraph: input
normalisation, model, semantic inference) under torch.no_grad; the others: one session run / infer request of the
exported file. Peak memory: the child's resident peak (ru_maxrss), imports included (the PyTorch child imports
torch and the project; the runtime children import only their runtime and numpy). A model that cannot be
exported or quantized gets one line saying why and rows for what did run. KEY VALUE config overrides given last
apply to every model (tests use them for tiny models).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODELS = ("quickstart", "m2f_r50", "m2f_swin_l", "fpn_efficientnet_b6", "upernet_convnext_xl")
BACKENDS = ("pytorch", "onnxruntime", "openvino", "onnxruntime-int8")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), help="config names under configs/")
    parser.add_argument("--size", type=int, default=512, help="the square input side (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per backend, after one warm-up")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of every backend")
    parser.add_argument(
        "--calibration-images", type=int, default=4, help="random images the INT8 file is calibrated on"
    )
    parser.add_argument("--work", help="folder for the exported files (default: a temporary one, removed)")
    parser.add_argument("--worker", nargs=3, metavar=("TASK", "MODEL", "FOLDER"), help=argparse.SUPPRESS)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides (last)")
    return parser.parse_args(argv)


# ---- children -----------------------------------------------------------------------------------------------------


def _image(size: int):
    import numpy as np

    return (np.random.default_rng(0).random((1, 3, size, size)) * 255).astype(np.float32)


def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _config(args: argparse.Namespace, model: str):
    import mask2former.modeling.register_all  # noqa: F401  (every model family's config keys and classes)
    import semask  # noqa: F401  (the SeMask plug-in)
    from mask2former.config import load_config

    opts = ["INPUT.MIN_SIZE_TEST", str(args.size), *[item for item in args.opts if item != "--"]]
    return load_config(str(REPO / "configs" / f"{model}.yaml"), opts)


def export_task(args: argparse.Namespace, model: str, folder: Path) -> dict:
    """Build, save, export (fp32, checked on one random image) and quantize (INT8) `model`; what happened."""
    import numpy as np
    import torch

    from mask2former.errors import UserError
    from mask2former.export.onnx_file import export_onnx
    from mask2former.export.quantize import quantize_onnx
    from mask2former.modeling.build import build_model

    torch.set_num_threads(args.threads)
    cfg = _config(args, model)
    torch.manual_seed(0)
    built = build_model(cfg).eval()
    weights = folder / "model.pth"
    torch.save({"model": built.state_dict()}, weights)
    report = {"params_m": sum(p.numel() for p in built.parameters()) / 1e6}
    del built
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8) for _ in range(args.calibration_images)]
    begin = time.perf_counter()
    try:
        size = (args.size, args.size)
        result = export_onnx(cfg, str(weights), folder / "model.onnx", size=size, images=images[:1], tolerance=1e9)
    except UserError as error:
        return {**report, "export_error": str(error)}
    report.update(export_s=time.perf_counter() - begin, max_abs_diff=result.max_abs_diff)
    begin = time.perf_counter()
    try:
        quantize_onnx(folder / "model.onnx", folder / "model_int8.onnx", images)
    except UserError as error:
        return {**report, "quantize_error": str(error)}
    report["quantize_s"] = time.perf_counter() - begin
    return report


def _pytorch_runner(args: argparse.Namespace, model: str, folder: Path):
    import torch

    from mask2former.export.graph import ScoresGraph
    from mask2former.inference.predictor import load_prediction_model

    torch.set_num_threads(args.threads)
    graph = ScoresGraph(load_prediction_model(_config(args, model), str(folder / "model.pth"), "cpu"))
    image = torch.from_numpy(_image(args.size))

    def run() -> None:
        with torch.no_grad():
            graph(image)

    return run


def _onnxruntime_runner(args: argparse.Namespace, file: Path):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
    session = onnxruntime.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])
    image = _image(args.size)
    return lambda: session.run(None, {"image": image})


def _openvino_runner(args: argparse.Namespace, file: Path):
    import openvino

    config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": str(args.threads)}
    request = openvino.Core().compile_model(str(file), "CPU", config).create_infer_request()
    image = _image(args.size)
    return lambda: request.infer({"image": image})


def time_task(args: argparse.Namespace, backend: str, model: str, folder: Path) -> dict:
    """One warm-up and args.repeats timed runs of `backend`; images/s and the process's peak memory."""
    if backend == "pytorch":
        run = _pytorch_runner(args, model, folder)
    elif backend == "openvino":
        run = _openvino_runner(args, folder / "model.onnx")
    else:
        run = _onnxruntime_runner(args, folder / ("model_int8.onnx" if backend.endswith("int8") else "model.onnx"))
    run()
    times = []
    for _ in range(args.repeats):
        begin = time.perf_counter()
        run()
        times.append(time.perf_counter() - begin)
    seconds = sum(times) / len(times)
    return {"images_per_s": 1 / seconds, "s_per_image": seconds, "peak_rss_mib": _peak_rss_mib()}


def worker(args: argparse.Namespace) -> None:
    task, model, name = args.worker
    folder = Path(name)
    result = export_task(args, model, folder) if task == "export" else time_task(args, task, model, folder)
    print("RESULT " + json.dumps(result))


# ---- the parent ---------------------------------------------------------------------------------------------------


def child(args: argparse.Namespace, task: str, model: str, folder: Path) -> dict:
    """Run one task in a child process; its RESULT dict, or {"error": its last line}."""
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", task, model, str(folder)]
    command += ["--size", str(args.size), "--repeats", str(args.repeats), "--threads", str(args.threads)]
    command += ["--calibration-images", str(args.calibration_images), *args.opts]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    lines = [line for line in done.stderr.splitlines() if line.strip()] or [f"exit status {done.returncode}"]
    return {"error": lines[-1][:300]}


def benchmark_model(args: argparse.Namespace, model: str, folder: Path) -> tuple[list[str], list[str]]:
    """(table rows, notes) of one model."""
    begin = time.perf_counter()
    made = child(args, "export", model, folder)
    notes = []
    problem = made.get("error") or made.get("export_error") or made.get("quantize_error")
    if "max_abs_diff" in made:
        notes.append(
            f"{model}: {made['params_m']:.1f}M parameters; exported in {made['export_s']:.0f} s, onnxruntime vs "
            f"PyTorch largest probability difference {made['max_abs_diff']:.2g}"
            + (f"; quantized in {made['quantize_s']:.0f} s" if "quantize_s" in made else "")
        )
    if problem:
        notes.append(f"{model}: {problem}")
    usable = {"pytorch"}
    if "max_abs_diff" in made:
        usable |= {"onnxruntime", "openvino"}
    if "quantize_s" in made:
        usable.add("onnxruntime-int8")
    rows, eager = [], None
    for backend in BACKENDS:
        if backend not in usable:
            rows.append(f"| {model} | {backend} | - | - | - | - |")
            continue
        result = child(args, backend, model, folder)
        if "error" in result:
            notes.append(f"{model}, {backend}: {result['error']}")
            rows.append(f"| {model} | {backend} | failed | - | - | - |")
            continue
        eager = result["images_per_s"] if backend == "pytorch" else eager
        ratio = f"{result['images_per_s'] / eager:.2f}x" if eager else "-"
        rows.append(
            f"| {model} | {backend} | {result['images_per_s']:.3f} | {result['s_per_image']:.3f} | {ratio} "
            f"| {result['peak_rss_mib']:.0f} |"
        )
        print(rows[-1], flush=True)
    notes.append(f"{model}: {time.perf_counter() - begin:.0f} s in all")
    return rows, notes


def cpu_name() -> str:
    """The CPU's model name (as lscpu shows it), else the platform's machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return
    with tempfile.TemporaryDirectory(prefix="deploy-bench-") as scratch:
        root = Path(args.work) if args.work else Path(scratch)
        table, notes = [], []
        for model in args.models:
            folder = root / model
            folder.mkdir(parents=True, exist_ok=True)
            rows, model_notes = benchmark_model(args, model, folder)
            table += rows
            notes += model_notes
    machine = f"{cpu_name()}, {os.cpu_count()} cores, {args.threads} threads per backend"
    print(f"\n{args.size}x{args.size}, {args.repeats} timed run(s) after a warm-up, {machine}\n")
    print("| model | backend | images/s | s/image | vs PyTorch eager | peak RSS (MiB) |")
    print("| --- | --- | --- | --- | --- | --- |")
    print("\n".join(table))
    print()
    print("\n".join(f"- {note}" for note in notes))


if __name__ == "__main__":
    main()
