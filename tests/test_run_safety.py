"""train_net.py under faults: user errors as one line, a NaN checkpoint, a diverging run, a full disk during a save,
two runs on one folder, kill -9 then --resume (history kept, a truncated last.ckpt skipped), piped progress."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import REPO, TINY_MODEL, tiny_run_argv

from mask2former.config import load_config
from mask2former.engine.arguments import default_argument_parser
from mask2former.engine.launch import main, setup
from mask2former.engine.lightning_module import NonFiniteLossError
from mask2former.engine.metrics_log import read_metrics
from mask2former.engine.training import train
from mask2former.io import checkpoints
from mask2former.io.checkpoints import CheckpointSaveError
from mask2former.modeling.build import build_model
from mask2former.utils.run_lock import OutputDirInUseError, OutputDirLock

CONFIG = str(REPO / "configs" / "quickstart.yaml")
TRAIN_NET = str(REPO / "train_net.py")


def cli(sample_root: Path, output: Path, max_iter: int = 4, period: int = 2, seed: int = 3, *extra: str) -> list[str]:
    """train_net.py's command line for a tiny CPU run into `output`, every checkpoint kept."""
    return tiny_run_argv(
        sample_root, output, "SOLVER.CHECKPOINT_KEEP", "-1", *extra, max_iter=max_iter, period=period, seed=seed
    )


def digest(*paths: Path) -> dict[str, str]:
    files = [f for p in paths for f in ([p] if p.is_file() else sorted(p.rglob("*"))) if f.is_file()]
    return {str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def user_error(argv: list[str], capsys, caplog) -> str:
    """Runs train_net's main; asserts the user-error exit (status 2) and returns what was reported."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err + caplog.text


def wait_for(condition, what: str, timeout: float = 240.0, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the run ended (status {process.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# ---- user errors: one line, status 2, nothing written -----------------------------------------------------------


def _bad_cases(tmp_path: Path) -> list[tuple[list[str], str]]:
    out = ["OUTPUT_DIR", str(tmp_path / "out")]
    return [
        (["--config-file", str(tmp_path / "nope.yaml"), *out], r"config file not found: .*nope.yaml"),
        (["--config-file", CONFIG, "SOLVER.BASE_LRR", "1", *out], r"SOLVER.BASE_LRR"),
        (["--config-file", CONFIG, "SOLVER.MAX_ITER", "many", *out], r"SOLVER.MAX_ITER"),
        (
            ["--config-file", CONFIG, "MODEL.WEIGHTS", str(tmp_path / "missing.pth"), *out],
            r"MODEL.WEIGHTS .*missing.pth: no such file",
        ),
        (
            ["--config-file", CONFIG, "--num-machines", "2", "SOLVER.IMS_PER_BATCH", "3", *out],
            r"SOLVER.IMS_PER_BATCH 3 is not divisible by 2 processes",
        ),
        (["--config-file", CONFIG, "--eval-only", *out], r"--eval-only needs MODEL.WEIGHTS"),
        (["--config-file", CONFIG, "--num-gpus", "0", "MODEL.DEVICE", "cuda", *out], r"--num-gpus is 0"),
        (
            ["--config-file", CONFIG, "MODEL.WEIGHTS", "detectron2://ImageNetPretrained/torchvision/R-50.pkl", *out],
            r"MODEL.WEIGHTS detectron2://.*R-50.pkl: a URL .*nothing is downloaded here.*/path/to/R-50.pkl",
        ),
    ]


@pytest.mark.parametrize("case", range(8))
def test_user_errors_are_one_line_and_status_2(tmp_path: Path, case: int, capsys, caplog) -> None:
    argv, expected = _bad_cases(tmp_path)[case]
    before = digest(REPO / "configs")
    report = user_error(argv, capsys, caplog)
    assert re.search(expected, report), report
    assert "Traceback" not in report
    assert not (tmp_path / "out").exists()  # nothing written
    assert digest(REPO / "configs") == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu_is_a_user_error(tmp_path: Path, capsys, caplog) -> None:
    report = user_error(["--config-file", CONFIG, "MODEL.DEVICE", "cuda", "OUTPUT_DIR", str(tmp_path)], capsys, caplog)
    assert "MODEL.DEVICE is 'cuda' but no GPU is available" in report


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="SOLVER.BASE_LRR"):
        main(["--config-file", CONFIG, "SOLVER.BASE_LRR", "1", "--debug"])


@pytest.mark.slow
@pytest.mark.subprocess
def test_eval_only_refuses_a_nan_checkpoint(sample_root: Path, tmp_path: Path) -> None:
    """python train_net.py --eval-only MODEL.WEIGHTS nan.pth: one line naming the file and the key, status 2."""
    model = build_model(load_config(CONFIG, TINY_MODEL))
    state = model.state_dict()
    state["sem_seg_head.predictor.class_embed.weight"][2, 5] = float("nan")
    weights = tmp_path / "nan.pth"
    torch.save({"model": state}, weights)
    before = digest(weights, REPO / "configs", sample_root)
    out = tmp_path / "eval"
    result = subprocess.run(
        [sys.executable, TRAIN_NET, "--eval-only", *cli(sample_root, out), "MODEL.WEIGHTS", str(weights)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert f"{weights}: tensor sem_seg_head.predictor.class_embed.weight holds NaN (1 of" in last
    assert "mIoU" not in result.stdout and not (out / "eval_metrics.json").exists()
    assert digest(weights, REPO / "configs", sample_root) == before
    assert {p.name for p in tmp_path.iterdir()} <= {"cache", "eval", "nan.pth"}  # nothing else written


# ---- non-finite numbers while training --------------------------------------------------------------------------


def test_a_diverging_run_stops_with_the_non_finite_message(sample_root: Path, tmp_path: Path, capsys, caplog) -> None:
    out = tmp_path / "diverge"
    inputs = digest(REPO / "configs", sample_root)
    report = user_error(cli(sample_root, out, 6, 1, 3, "SOLVER.BASE_LR", "1e12"), capsys, caplog)
    assert digest(REPO / "configs", sample_root) == inputs
    assert {p.name for p in tmp_path.iterdir()} <= {"diverge", "cache"}  # only the output folder and label cache
    match = re.search(r"loss became \S+ at iteration (\d+)", report)
    assert match, report
    assert "invalid numeric entries" not in report and "Traceback" not in report
    assert f"The last good checkpoint stays: {out / 'checkpoints' / 'last.ckpt'}" in report
    assert "Lower SOLVER.BASE_LR" in report
    last = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == int(match.group(1))
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())
    assert not (out / "model_final.pth").exists() and not (out / ".lock").exists()


class PoisonWeights(L.Callback):
    """Makes a weight NaN at the end of the iteration that reaches `at_step` (before its checkpoint is saved)."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.at_step:
            with torch.no_grad():
                pl_module.model.sem_seg_head.predictor.class_embed.bias.fill_(float("nan"))


def test_non_finite_weights_are_never_saved_over_a_good_checkpoint(sample_root: Path, tmp_path: Path) -> None:
    args = default_argument_parser().parse_args(cli(sample_root, tmp_path / "poison", 4, 1))
    refusal = r"weights became non-finite after iteration 2 \(model.sem_seg_head\S+ holds NaN"
    with pytest.raises(NonFiniteLossError, match=refusal):
        train(setup(args), args, callbacks=[PoisonWeights(at_step=2)])
    last = torch.load(tmp_path / "poison" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 1
    assert not (tmp_path / "poison" / "checkpoints" / "model_0000002.ckpt").exists()


# ---- the one writer: a full disk during a Lightning save ---------------------------------------------------------


def test_a_full_disk_during_a_training_save_keeps_the_last_checkpoint(
    sample_root: Path, tmp_path: Path, monkeypatch
) -> None:
    real_write = checkpoints._write

    def write(data, handle) -> None:
        if data.get("global_step") == 4:  # the disk fills up at the second round of saves
            handle.write(b"PK\x03\x04 half a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(data, handle)

    monkeypatch.setattr(checkpoints, "_write", write)
    args = default_argument_parser().parse_args(cli(sample_root, tmp_path / "full", 4, 2))
    with pytest.raises(CheckpointSaveError, match=r"no space left on the disk while saving .*checkpoints"):
        train(setup(args), args)
    folder = tmp_path / "full" / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt", "model_0000002.ckpt"]  # no temporary, no partial
    for path in folder.iterdir():
        assert torch.load(path, weights_only=True)["global_step"] == 2


# ---- one run per folder, history kept ----------------------------------------------------------------------------

_WAITING_MAIN = """
import pathlib, sys, time
import semask  # an entry point takes the plug-in, as train_net.py does
from mask2former.engine.launch import main
go = pathlib.Path(sys.argv[1])
pathlib.Path(sys.argv[2]).touch()
while not go.exists():
    time.sleep(0.02)
main(sys.argv[3:])
"""


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_second_run_on_a_busy_output_folder_is_refused(sample_root: Path, tmp_path: Path) -> None:
    """Two train_net processes on one OUTPUT_DIR: the second stops at once naming the folder and the holder, the
    first finishes with its own config. The second has imported the package already and starts when the first is
    training, so the test does not depend on import times. The first's stderr is a pipe: lines, no '\\r'."""
    out = tmp_path / "run"
    inputs = digest(REPO / "configs", sample_root)
    first = subprocess.Popen(
        [sys.executable, TRAIN_NET, *cli(sample_root, out, 40, 20, 1)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    first_err_chunks: list[str] = []
    reader = threading.Thread(target=lambda: first_err_chunks.append(first.stderr.read()))  # the pipe never fills
    reader.start()
    go, ready = tmp_path / "go", tmp_path / "ready"
    second = subprocess.Popen(
        [sys.executable, "-c", _WAITING_MAIN, str(go), str(ready), *cli(sample_root, out, 40, 20, 2)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        log = out / "log.txt"
        wait_for(lambda: ready.exists() and log.is_file() and "iter 1/40" in log.read_text(), "training", process=first)
        go.touch()
        _, second_err = second.communicate(timeout=300)
        first.wait(timeout=600)
        reader.join(timeout=60)
    finally:
        for process in (first, second):
            if process.poll() is None:
                process.kill()
    first_err = "".join(first_err_chunks)
    assert second.returncode == 2, second_err
    assert f"OUTPUT_DIR {out} is in use by another run (pid {first.pid} on host" in second_err
    assert "Traceback" not in second_err
    assert first.returncode == 0, first_err
    assert load_config(str(out / "config.yaml"), freeze=False).SEED == 1  # the first run's, not the second's
    assert (out / "model_final.pth").is_file() and not (out / ".lock").exists()
    assert not list(out.rglob(".*.tmp"))  # no temporary file of the killed run left behind
    assert log.read_text().count("command line:") == 1  # the second run wrote nothing into the folder
    assert digest(REPO / "configs", sample_root) == inputs
    assert {p.name for p in tmp_path.iterdir()} <= {"run", "cache", "go", "ready"}
    assert "\r" not in first_err
    assert re.search(r"iter 20/40 +loss \d+\.\d+ +lr \S+ +\d+\.\d+ it/s +eta \d+:\d\d:\d\d", first_err), first_err
    last_lr = re.search(r"iter 40/40 +loss \S+ +lr (\S+)", first_err)
    assert last_lr and float(last_lr.group(1)) > 0  # the LR the last iteration ran with, not the next one's (0)


def test_a_stale_lock_is_taken_over_and_a_live_one_refuses(tmp_path: Path, caplog) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock_file = tmp_path / ".lock"
    stale = f'{{"pid": {dead.pid}, "host": "this-host", "started": "2026-01-01 00:00:00 +0000"}}\n'
    lock_file.write_text(stale)
    with caplog.at_level("WARNING"), OutputDirLock(tmp_path) as lock:
        lock.log_takeover()
        assert f"taking over the stale lock {lock_file} of a run that has ended (pid {dead.pid}" in caplog.text
        assert f'"pid": {os.getpid()}' in lock_file.read_text()
        in_use = rf"OUTPUT_DIR {re.escape(str(tmp_path))} is in use by another run \(pid {os.getpid()} on host"
        with pytest.raises(OutputDirInUseError, match=in_use):
            OutputDirLock(tmp_path).acquire()
    assert not lock_file.exists()


@pytest.mark.slow
@pytest.mark.subprocess
def test_kill_9_then_resume_keeps_the_history(sample_root: Path, tmp_path: Path, caplog) -> None:
    """kill -9 mid-run, last.ckpt damaged afterwards (a bad copy): --resume names it, continues from the newest
    intact model_XXXXXXX.ckpt, takes over the stale lock, and metrics.csv keeps the rows before the resumed
    iteration (verbatim) and holds each iteration once."""
    out = tmp_path / "run"
    argv = cli(sample_root, out, 30, 4)
    inputs = digest(REPO / "configs", sample_root)
    killed = subprocess.Popen([sys.executable, TRAIN_NET, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: (out / "checkpoints" / "model_0000008.ckpt").is_file(), "checkpoint 8", process=killed)
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=60)
    finally:
        if killed.poll() is None:
            killed.kill()
    assert killed.returncode == -signal.SIGKILL
    assert (out / ".lock").exists() and not (out / "model_final.pth").exists()
    periodic = sorted((out / "checkpoints").glob("model_*.ckpt"))
    resume_step = int(periodic[-1].stem.split("_")[1])
    last = out / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:100_000])
    kept = [row for row in read_metrics(out / "metrics.csv") if int(row["step"]) <= resume_step]
    assert any(row["total_loss"] for row in kept)
    events_before = set((out / "tensorboard").glob("events.*"))

    with caplog.at_level("INFO"):
        main(["--resume", *argv])
    assert f"taking over the stale lock {out / '.lock'}" in caplog.text
    assert "taking over the stale lock" in (out / "log.txt").read_text()  # in the run's own log
    assert f"skipped a damaged checkpoint: {last} is a truncated or damaged PyTorch checkpoint" in caplog.text
    assert f"continuing from {periodic[-1]} (iteration {resume_step})" in caplog.text
    rows = read_metrics(out / "metrics.csv")
    assert [{k: v for k, v in row.items() if k in kept[0]} for row in rows[: len(kept)]] == kept
    train_steps = [int(row["step"]) for row in rows if row["total_loss"]]
    assert train_steps == list(range(1, 31))  # the rows up to the resume point kept, none of the killed run doubled
    assert events_before and events_before < set((out / "tensorboard").glob("events.*"))  # old events kept
    assert digest(REPO / "configs", sample_root) == inputs
    assert {p.name for p in tmp_path.iterdir()} <= {"run", "cache"}
    assert (out / "model_final.pth").is_file() and not (out / ".lock").exists()
    assert not list(out.rglob(".*.tmp"))  # no temporary file of the killed run left behind


def test_a_new_run_never_replaces_an_earlier_runs_checkpoints(sample_root: Path, tmp_path: Path, capsys, caplog):
    out = tmp_path / "run"
    main(cli(sample_root, out, 2, 1))
    earlier = {path: sha for path, sha in digest(out).items() if not path.endswith("log.txt")}
    assert any(path.endswith("model_final.pth") for path in earlier)
    report = user_error(cli(sample_root, out, 2, 1), capsys, caplog)
    assert f"OUTPUT_DIR {out} holds an earlier run (model_final.pth, checkpoints/" in report
    assert "--resume" in report and "Traceback" not in report
    assert {path: sha for path, sha in digest(out).items() if not path.endswith("log.txt")} == earlier


def test_resume_with_another_model_is_refused_and_config_yaml_kept(sample_root: Path, tmp_path: Path, capsys, caplog):
    out = tmp_path / "run"
    main(cli(sample_root, out, 2, 1))
    saved = (out / "config.yaml").read_text()
    report = user_error(["--resume", *cli(sample_root, out, 4, 1), "MODEL.SWIN.EMBED_DIM", "32"], capsys, caplog)
    assert "holds a run of another model (MODEL.SWIN.EMBED_DIM 16 -> 32" in report and "Traceback" not in report
    assert (out / "config.yaml").read_text() == saved
    main(["--resume", *cli(sample_root, out, 3, 1)])  # a longer run of the same model resumes
    assert "MAX_ITER: 3" in (out / "config.yaml").read_text()
