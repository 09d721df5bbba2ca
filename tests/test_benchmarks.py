"""The GPU benchmark scripts run: without a GPU they say so and exit 0; their CPU smoke modes print a table."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import REPO


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
