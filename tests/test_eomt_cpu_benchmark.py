"""benchmarks/eomt_cpu.py: every config measured in a child process, and the table of fastest rounds and ratios."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO, benchmark_module


@pytest.fixture(scope="module")
def eomt_cpu():
    with benchmark_module("eomt_cpu") as module:
        yield module


def test_table_gives_the_fastest_round_and_ratios_to_the_first(eomt_cpu) -> None:
    def run(seconds: float, rate: float, memory: float = 1.0) -> dict:
        return {"parameters": 2e6, "train_s_per_step": seconds, "peak_rss_gib": memory, "inference_images_per_s": rate}

    results = {
        "configs/a.yaml": [run(5.0, 1.0), run(6.0, 2.0, memory=1.5), run(4.0, 1.5)],
        "configs/b.yaml": [run(2.0, 3.0), run(3.0, 8.0), run(2.5, 6.0)],
    }
    rows = eomt_cpu.table(results)
    assert rows[2] == "| a | 2.0M | 4.00 | 1.00x | 1.50 | 2.000 | 1.00x |"
    assert rows[3] == "| b | 2.0M | 2.00 | 2.00x | 1.00 | 8.000 | 4.00x |"


@pytest.mark.slow
@pytest.mark.subprocess
def test_tiny_run_prints_a_row_per_config() -> None:
    configs = ["configs/quickstart.yaml", "configs/quickstart_eomt.yaml"]
    args = ["--configs", *configs, "--size", "64", "--steps", "1", "--images", "1", "--threads", "1"]
    run = subprocess.run(
        [sys.executable, "benchmarks/eomt_cpu.py", *args, "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "256"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    rows = [line.split("|")[1:-1] for line in run.stdout.splitlines() if line.startswith("| quickstart")]
    assert [row[0].strip() for row in rows] == ["quickstart", "quickstart_eomt"]
    assert rows[0][3].strip() == "1.00x" and rows[0][6].strip() == "1.00x"
    for row in rows:
        assert float(row[1].strip().rstrip("M")) > 0.1  # parameters, millions
        assert float(row[2]) > 0 and float(row[5]) > 0  # s/step, images/s
