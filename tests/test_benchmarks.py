"""The GPU benchmark scripts run: without a GPU they say so and exit 0; their CPU smoke modes print a table."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import REPO, TINY_MODEL

pytestmark = [pytest.mark.subprocess, pytest.mark.slow]


def run(*args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("script", ["benchmarks/ms_deform_attn.py", "benchmarks/neighborhood_attention.py"])
def test_cpu_smoke_run_prints_a_timing_table(script: str) -> None:
    extra = ["--warmup", "0"] + (["--iters", "1"] if "deform" in script else ["--runs", "1"])
    out = run(script, "--device", "cpu", "--small", *extra)
    rows = [line for line in out.splitlines() if line.startswith("|") and "---" not in line]
    assert len(rows) >= 3 and "reference" in rows[0]
    assert any("bfloat16" in row or "bf16" in row for row in rows[1:])


def test_precision_check_compares_bf16_with_fp32_on_a_tiny_model() -> None:
    args = ["--config-file", "configs/quickstart.yaml", "--batch", "1", "--size", "64", "--threads", "1", "--device"]
    out = run("benchmarks/precision_check.py", *args, "cpu", *TINY_MODEL)
    losses = [line.split("|")[1:4] for line in out.splitlines() if line.startswith("| loss_") or "total" in line]
    assert len(losses) >= 4
    for _, fp32, bf16 in losses:  # bf16 autocast moves the losses, but not far
        assert abs(float(bf16) - float(fp32)) <= 0.1 * abs(float(fp32)) + 1e-3
    whole = next(line for line in out.splitlines() if line.startswith("| whole model"))
    assert 0.9 < float(whole.split("|")[2]) <= 1.0 + 1e-6  # gradient cosine similarity
    assert "all bf16 losses and gradients finite: True" in out


def test_distributed_training_benchmark_compares_process_layouts() -> None:
    """benchmarks/distributed_train.py runs train_net.py in 1 process and in 2 (gloo) and prints images/s of each."""
    sizes = ["INPUT.CROP.SIZE", "(64, 64)", "INPUT.MIN_SIZE_TRAIN", "(64,)", "DATALOADER.NUM_WORKERS", "0"]
    out = run("benchmarks/distributed_train.py", "--layouts", "1x1", "2x1", "--iters", "20", *TINY_MODEL, *sizes)
    rows = {line.split("|")[1].strip(): line.split("|")[2:4] for line in out.splitlines() if line.startswith("| ")}
    assert set(rows) == {"processes x threads", "1 x 1", "2 x 1"}
    assert float(rows["1 x 1"][0]) > 0 and float(rows["2 x 1"][0]) > 0
    assert rows["1 x 1"][1].strip() == "1.00x"
