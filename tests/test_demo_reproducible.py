"""`make demo` gives every machine the README's numbers: the CPU thread count pinned, the sample data generated
again when the generator or its arguments change, and no resuming into a run folder of other code or settings.

The Makefile's demo steps run here on a 4 + 2 image sample (SAMPLE_ARGS) in a scratch folder."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mask2former.engine.devices import CPU_NUMERICS_ENV

ROOT = Path(__file__).resolve().parents[1]
SMALL = "--num-train 4 --num-test 2 --seed 0"

pytestmark = [pytest.mark.subprocess, pytest.mark.skipif(shutil.which("make") is None, reason="needs make")]


def make(*args: str) -> subprocess.CompletedProcess:
    command = ["make", "--no-print-directory", "-C", str(ROOT), f"PY={sys.executable}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def tree(folder: Path) -> dict[str, tuple[str, int]]:
    """relative path -> (sha1, mtime_ns) of every file under `folder`."""
    return {
        p.relative_to(folder).as_posix(): (hashlib.sha1(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_sample_data_generated_once_and_again_when_its_key_changes(tmp_path: Path) -> None:
    sample = tmp_path / "sample"
    first = make("demo-data", f"SAMPLE={sample}", f"SAMPLE_ARGS={SMALL}")
    assert first.returncode == 0, first.stderr
    assert "make_sample_dataset.py" in first.stdout
    assert (sample / ".demo-key").read_text().strip().endswith(SMALL)
    generated = tree(sample)
    assert "train_all.json" in generated

    again = make("demo-data", f"SAMPLE={sample}", f"SAMPLE_ARGS={SMALL}")
    assert again.returncode == 0, again.stderr
    assert "make_sample_dataset.py" not in again.stdout
    assert tree(sample) == generated  # nothing written again

    (sample / ".demo-key").write_text("data of another generator version\n")
    regenerated = make("demo-data", f"SAMPLE={sample}", f"SAMPLE_ARGS={SMALL}")
    assert regenerated.returncode == 0, regenerated.stderr
    assert "make_sample_dataset.py" in regenerated.stdout
    now = tree(sample)
    assert now["train_all.json"][1] != generated["train_all.json"][1]  # written again ...
    assert {name: digest for name, (digest, _) in now.items() if name != ".demo-key"} == {
        name: digest for name, (digest, _) in generated.items() if name != ".demo-key"
    }  # ... to the same bytes

    other = make("demo-data", f"SAMPLE={sample}", "SAMPLE_ARGS=--num-train 6 --num-test 2 --seed 0")
    assert other.returncode == 0, other.stderr
    assert len(json.loads((sample / "train_all.json").read_text())["images"]) == 6


def test_sample_data_refuses_a_folder_it_did_not_make(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "train.json").write_text('{"my": "annotations"}')
    (mine / "photo.jpg").write_bytes(b"my photo")
    before = tree(tmp_path)
    result = make("demo-data", f"SAMPLE={mine}", f"SAMPLE_ARGS={SMALL}")
    assert result.returncode == 2
    assert f"--out {mine} is not a folder make_sample_dataset.py made ({mine / 'train.json'} would be replaced)" in (
        result.stderr
    )
    assert (
        f"make demo: could not generate {mine}: move it away, or give another folder (make demo SAMPLE=...)"
        in result.stderr
    )
    assert tree(tmp_path) == before  # nothing written, nothing changed


def test_run_folder_of_other_code_or_settings_is_not_resumed(tmp_path: Path) -> None:
    old = tmp_path / "old_demo"  # a demo run without a key: made before keys, or by other code
    (old / "quickstart" / "checkpoints").mkdir(parents=True)
    (old / "quickstart" / "checkpoints" / "last.ckpt").write_bytes(b"an older run")
    before = tree(tmp_path)
    refused = make("demo-outdir", f"DEMO_OUT={old}")
    assert refused.returncode == 2
    assert (
        f"make demo: {old} holds a demo run made by other code, data or settings, which would be resumed: "
        f"remove it (rm -r {old}) or give another folder (make demo DEMO_OUT=...)"
    ) in refused.stderr
    assert tree(tmp_path) == before

    new = tmp_path / "demo"
    assert make("demo-outdir", f"DEMO_OUT={new}").returncode == 0
    (new / "quickstart").mkdir()  # an interrupted run of the same code and settings: resumed
    assert make("demo-outdir", f"DEMO_OUT={new}").returncode == 0
    key = (new / ".demo-key").read_text()
    for setting in ("DEMO_OPTS=SEED 1", "DEMO_THREADS=4", "DEMO_AVX2=1"):
        result = make("demo-outdir", f"DEMO_OUT={new}", setting)
        assert result.returncode == 2, setting
        assert "holds a demo run made by other code, data or settings" in result.stderr
    assert (new / ".demo-key").read_text() == key


def _demo_commands(*args: str) -> list[list[str]]:
    """The train_net.py and predict.py commands `make -n demo` prints, as words."""
    result = make("-n", "demo", *args)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.replace("\\\n", " ").splitlines()
    return [line.split() for line in lines if "train_net.py" in line or "tools/predict.py" in line]


def _environment_of(command: list[str]) -> dict[str, str]:
    words = command[: command.index(sys.executable)]
    return dict(word.split("=", 1) for word in words)


def test_demo_pins_the_thread_count_of_training_and_prediction() -> None:
    train, predict_val, predict_test = _demo_commands("DEMO_OPTS=SEED 1")
    for command in (train, predict_val, predict_test):
        assert _environment_of(command) == {"OMP_NUM_THREADS": "2"}
    assert train[-4:] == ["OUTPUT_DIR", "output/demo/quickstart", "SEED", "1"]
    for command in (predict_val, predict_test):
        assert command[command.index("--threads") + 1] == "2"  # predict.py sets its own count otherwise
    pinned = _environment_of(_demo_commands("DEMO_AVX2=1")[0])
    assert pinned == {
        "OMP_NUM_THREADS": "2",
        "ATEN_CPU_CAPABILITY": "avx2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "MKL_CBWR": "AVX2",
    }


@pytest.mark.slow
def test_the_pinned_settings_reach_torch() -> None:
    """What train_net.py logs (its CPU numerics line), in a fresh process with the environment make gives it."""
    env = {key: value for key, value in os.environ.items() if key not in CPU_NUMERICS_ENV}
    env.update(_environment_of(_demo_commands("DEMO_AVX2=1")[0]))
    code = "from mask2former.engine.devices import cpu_numerics; print(cpu_numerics())"
    line = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert ", 2 threads, " in line
    assert "(OMP_NUM_THREADS=2 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_CBWR=AVX2)" in line
    if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        assert " AVX2 kernels " in line
