"""Several processes on the CPU (gloo), for real: train_net.py --num-gpus 2, two machines on loopback, torchrun and
SLURM's variables, a rank killed with -9 and the run resumed, sharded evaluation; and the start-up errors.

Every run here is the tiny quickstart model, a few iterations, one CPU thread per process (OMP_NUM_THREADS=1, so
that runs of the same world size are bit-for-bit comparable whatever the machine's core count)."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, doc_commands, tiny_run_argv

from mask2former.engine import distributed
from mask2former.engine.launch import main
from mask2former.utils import processes

ITERATIONS = 6
PERIOD = 2
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
TRAIN_NET = [sys.executable, str(REPO / "train_net.py")]
# the weights comparison of 1 vs 2 processes: SGD (AdamW turns the float-rounding difference of a near-zero gradient
# into a whole +-lr step, which says nothing about the run)
SGD = ["SOLVER.OPTIMIZER", "SGD", "SOLVER.BASE_LR", "0.01"]
SECTION = "Several processes and machines"
README_PORT = "29511"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def data_root(sample_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample data with a val split of 5 images (not divisible by 2 processes)."""
    root = tmp_path_factory.mktemp("dist_data")
    for entry in sample_root.iterdir():
        if entry.is_dir():
            (root / entry.name).symlink_to(entry)
        else:
            (root / entry.name).write_bytes(entry.read_bytes())
    data = json.loads((sample_root / "train_all.json").read_text())
    keep = {image["id"] for image in data["images"][:5]}
    data["images"] = [image for image in data["images"] if image["id"] in keep]
    data["annotations"] = [ann for ann in data["annotations"] if ann["image_id"] in keep]
    (root / "val.json").write_text(json.dumps(data))
    return root


def tiny_opts(data_root: Path, *extra: str) -> list[str]:
    """The tiny-run KEY VALUE overrides (data, sizes, SGD, 6 iterations, a checkpoint every 2), without OUTPUT_DIR."""
    opts = tiny_run_argv(data_root, data_root / "unused", *SGD, *extra, max_iter=ITERATIONS, period=PERIOD)[4:]
    at = opts.index("OUTPUT_DIR")
    return opts[:at] + opts[at + 2 :]


def run_argv(data_root: Path, out: Path, gpus: int, *extra: str) -> list[str]:
    config = str(REPO / "configs" / "quickstart.yaml")
    return ["--config-file", config, "--num-gpus", str(gpus), *tiny_opts(data_root, *extra), "OUTPUT_DIR", str(out)]


def readme_commands() -> list[list[str]]:
    return doc_commands(SECTION)


def localised(argv: list[str], data_root: Path, output: Path, port: int) -> list[str]:
    """A README command as run here: python -> this interpreter, torchrun -> `python -m torch.distributed.run` on a
    free port, output/ -> a temporary folder, the README's port -> a free one; then the tiny-run overrides."""
    out: list[str] = []
    if "=" in argv[0]:  # NAME=VALUE ... as a shell reads it
        out.append("env")
    for arg in argv:
        if arg == "python":
            out.append(sys.executable)
        elif arg == "torchrun":
            out += [sys.executable, "-m", "torch.distributed.run", "--master-port", str(port)]
        elif arg.startswith(("train_net.py", "configs/")):
            out.append(str(REPO / arg))
        elif arg.startswith("output/"):
            out.append(str(output / arg.removeprefix("output/")))
        else:
            out.append(arg.replace(README_PORT, str(port)))
    return out + tiny_opts(data_root)


def output_of(argv: list[str]) -> Path:
    return Path(argv[len(argv) - 1 - argv[::-1].index("OUTPUT_DIR") + 1])


def train_net(*argv: str, env: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    return run_command([*TRAIN_NET, *argv], env=env, timeout=timeout)


def run_command(command: list[str], env: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    result = subprocess.run(command, env=env or ENV, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "model_final.pth", weights_only=True, map_location="cpu")["model"]


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())


def first_loss(out: Path) -> float:
    with open(out / "metrics.csv") as rows:
        return float(next(row["total_loss"] for row in csv.DictReader(rows) if row["total_loss"]))


def confusion(out: Path, folder: str = "eval") -> list[list[int]]:
    return json.loads((out / folder / "trash_val" / "confusion_matrix.json").read_text())["matrix"]


def test_the_readme_commands() -> None:
    commands = readme_commands()
    programs = [next(arg for arg in argv if "=" not in arg) for argv in commands]
    assert programs == ["python", "python", "python", "python", "torchrun"]
    assert "--resume" in commands[1] and commands[1][:6] == commands[0][:6]
    assert [command[command.index("--machine-rank") + 1] for command in commands[2:4]] == ["0", "1"]


@pytest.fixture(scope="module")
def two_processes(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The README's first command: 2 processes on this machine."""
    command = localised(readme_commands()[0], data_root, tmp_path_factory.mktemp("readme"), free_port())
    run_command(command)
    return output_of(command)


@pytest.mark.slow
@pytest.mark.subprocess
def test_two_processes_train_as_one(data_root: Path, two_processes: Path, tmp_path: Path) -> None:
    """The same global batch (images, augmentation, loss normalisation, loss points) in 1 and 2 processes: the same
    first loss and, after 6 SGD steps, the same weights, up to float rounding (sums split differently)."""
    one = tmp_path / "one"
    train_net(*run_argv(data_root, one, 0))
    assert first_loss(two_processes) == pytest.approx(first_loss(one), rel=1e-5)
    assert max_difference(weights(one), weights(two_processes)) < 1e-5
    log = (two_processes / "log.txt.rank1").read_text()
    assert "rank 1 of 2" in log and "1 CPU threads" in log


@pytest.mark.slow
@pytest.mark.subprocess
def test_only_rank_zero_writes_and_each_rank_logs(two_processes: Path) -> None:
    names = sorted(path.name for path in two_processes.iterdir())
    assert names == [
        ".trashseg-owner.json",
        "checkpoints",
        "config.yaml",
        "eval",
        "final_metrics.json",
        "log.txt",
        "log.txt.rank1",
        "loss_curve.png",
        "metrics.csv",
        "model_final.pth",
        "tensorboard",
    ]
    assert "rank 0 of 2" in (two_processes / "log.txt").read_text()
    with open(two_processes / "metrics.csv") as rows:
        steps = [int(row["step"]) for row in csv.DictReader(rows) if row["total_loss"]]
    assert steps == list(range(1, ITERATIONS + 1))  # one row per iteration, written once
    evaluation = json.loads((two_processes / "eval" / "trash_val" / "sem_seg_metrics.json").read_text())
    assert evaluation["num_images"] == 5


@pytest.mark.slow
@pytest.mark.subprocess
def test_sharded_evaluation_is_one_process_confusion_matrix(
    data_root: Path, two_processes: Path, tmp_path: Path
) -> None:
    """5 val images over 2 processes (3 + 2): the summed confusion matrix is exactly the one process's. --eval-only
    into the training run's own folder (what the README's evaluation command does) leaves that run's files as they
    were and writes eval_config.yaml, eval_metrics.json and eval_only/ beside them."""
    fresh, run = tmp_path / "fresh", tmp_path / "run"
    train_net("--eval-only", *run_argv(data_root, fresh, 0, "MODEL.WEIGHTS", str(two_processes / "model_final.pth")))
    shutil.copytree(two_processes, run)
    before = {path: path.read_bytes() for path in run.rglob("*") if path.is_file()}
    train_net("--eval-only", *run_argv(data_root, run, 2, "MODEL.WEIGHTS", str(run / "model_final.pth")))
    for path, data in before.items():
        now = path.read_bytes()
        assert now.startswith(data) if path.name.startswith("log.txt") else now == data, path
    added = {str(path.relative_to(run)) for path in run.rglob("*") if path.is_file() and path not in before}
    assert {"eval_config.yaml", "eval_metrics.json", "eval_only/trash_val/confusion_matrix.json"} <= added
    assert all(name.startswith(("eval_", "eval_only/")) for name in added)
    for out in (fresh, run):
        assert confusion(out, "eval_only") == confusion(two_processes)
        assert json.loads((out / "eval_metrics.json").read_text())["results"]["trash_val"]["mIoU"] >= 0


@pytest.mark.slow
@pytest.mark.subprocess
def test_two_machines_on_loopback(data_root: Path, two_processes: Path, tmp_path: Path) -> None:
    """The README's two machine commands, started independently (machine 1 first: it waits for machine 0): the run of
    2 processes on one machine, bit for bit."""
    port = free_port()
    commands = [localised(argv, data_root, tmp_path, port) for argv in readme_commands()[2:4]]
    second = subprocess.Popen(commands[1], env=ENV, stderr=subprocess.PIPE, text=True, cwd=REPO)
    time.sleep(2)
    first = subprocess.Popen(commands[0], env=ENV, stderr=subprocess.PIPE, text=True, cwd=REPO)
    errors = [process.communicate(timeout=240)[1] for process in (first, second)]
    assert (first.returncode, second.returncode) == (0, 0), errors[0][-2000:] + errors[1][-2000:]
    out = output_of(commands[0])
    assert max_difference(weights(out), weights(two_processes)) == 0
    assert (out / "log.txt.rank1").is_file() and not (out / "log.txt.rank2").exists()
    assert "waiting for machine 0" in (out / "log.txt.rank1").read_text()


@pytest.mark.slow
@pytest.mark.subprocess
def test_torchrun(data_root: Path, two_processes: Path, tmp_path: Path) -> None:
    command = localised(readme_commands()[4], data_root, tmp_path, free_port())
    run_command(command)
    out = output_of(command)
    assert max_difference(weights(out), weights(two_processes)) == 0
    assert "started by torchrun" in (out / "log.txt.rank1").read_text()


@pytest.mark.slow
@pytest.mark.subprocess
def test_slurm_tasks(data_root: Path, two_processes: Path, tmp_path: Path) -> None:
    """What srun --ntasks-per-node 2 sets for each task (the processes are started here as srun would)."""
    out, port = tmp_path / "slurm", free_port()
    slurm = {"SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_NNODES": "1", "SLURM_NODEID": "0"}
    slurm |= {"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "trashseg", "SLURM_NODELIST": "127.0.0.1"}
    tasks = []
    for rank in range(2):
        env = {**ENV, **slurm, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank), "MASTER_PORT": str(port)}
        argv = run_argv(data_root, out, 2)
        tasks.append(subprocess.Popen([*TRAIN_NET, *argv], env=env, stderr=subprocess.PIPE, text=True, cwd=REPO))
    errors = [task.communicate(timeout=240)[1] for task in tasks]
    assert [task.returncode for task in tasks] == [0, 0], errors[0][-2000:] + errors[1][-2000:]
    assert max_difference(weights(out), weights(two_processes)) == 0
    assert "started by slurm" in (out / "log.txt.rank1").read_text()


@pytest.mark.slow
@pytest.mark.subprocess
def test_killed_rank_stops_the_run_and_resume_continues_exactly(
    data_root: Path, two_processes: Path, tmp_path: Path
) -> None:
    """kill -9 of rank 1 after the first checkpoint: the launcher stops rank 0 within seconds and says how to
    resume; the README's --resume command then ends with the uninterrupted run's weights."""
    start, resume = (localised(argv, data_root, tmp_path, free_port()) for argv in readme_commands()[:2])
    out = output_of(start)
    run = subprocess.Popen(start, env=ENV, stderr=subprocess.PIPE, text=True, cwd=REPO)
    checkpoint = out / "checkpoints" / f"model_{PERIOD:07d}.ckpt"
    deadline = time.monotonic() + 180
    while not checkpoint.exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    log = (out / "log.txt.rank1").read_text()
    rank1 = int(log.split("pid ")[1].split(",")[0])
    os.kill(rank1, signal.SIGKILL)
    killed = time.monotonic()
    _, stderr = run.communicate(timeout=60)
    assert time.monotonic() - killed < 30
    assert run.returncode == 2
    last_line = stderr.strip().splitlines()[-1]
    assert "rank 1 of 2" in last_line and "SIGKILL" in last_line and "--resume" in last_line
    assert not (out / "model_final.pth").exists()
    run_command(resume)
    assert max_difference(weights(out), weights(two_processes)) == 0


@pytest.mark.slow
@pytest.mark.subprocess
def test_ctrl_c_stops_every_process(data_root: Path, tmp_path: Path) -> None:
    """SIGINT to the launcher's process group (Ctrl-C on a terminal): one line, exit 2, no process left behind."""
    start = localised(readme_commands()[0], data_root, tmp_path, free_port())
    out = output_of(start)
    run = subprocess.Popen(start, env=ENV, stderr=subprocess.PIPE, text=True, cwd=REPO, start_new_session=True)
    deadline = time.monotonic() + 180
    while not (out / "checkpoints" / f"model_{PERIOD:07d}.ckpt").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    pids = [
        int(pid)
        for pid in re.findall(r"pid (\d+),", (out / "log.txt").read_text() + (out / "log.txt.rank1").read_text())
    ]
    os.killpg(run.pid, signal.SIGINT)
    _, stderr = run.communicate(timeout=60)
    assert run.returncode == 2
    assert "interrupted (Ctrl-C): the 2 processes on this machine were stopped" in stderr.strip().splitlines()[-1]
    assert len(pids) == 2
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_machine_whose_peer_dies_stops_within_seconds(data_root: Path, tmp_path: Path) -> None:
    """Two machines; kill -9 of machine 1's process: machine 0's rank finds its peer gone in the next collective and
    stops with a line that says so (not a 30-minute gloo/NCCL wait); machine 1's launcher names the killed rank."""
    port = free_port()
    commands = [localised(argv, data_root, tmp_path, port) for argv in readme_commands()[2:4]]
    out = output_of(commands[0])
    machines = [subprocess.Popen(c, env=ENV, stderr=subprocess.PIPE, text=True, cwd=REPO) for c in commands]
    checkpoint = out / "checkpoints" / f"model_{PERIOD:07d}.ckpt"
    deadline = time.monotonic() + 180
    while not checkpoint.exists() and machines[0].poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    rank1 = int(re.search(r"rank 1 of 2 \(.*?pid (\d+)", (out / "log.txt.rank1").read_text()).group(1))
    os.kill(rank1, signal.SIGKILL)
    killed = time.monotonic()
    errors = [machine.communicate(timeout=90)[1] for machine in machines]
    assert time.monotonic() - killed < 60
    assert [machine.returncode for machine in machines] == [2, 2]
    assert "another process of the run stopped answering" in errors[0] and "--resume" in errors[0]
    assert "rank 1 of 2" in errors[1].strip().splitlines()[-1] and "SIGKILL" in errors[1]


@pytest.mark.slow
@pytest.mark.subprocess
def test_machines_with_other_configs_are_refused(data_root: Path, tmp_path: Path) -> None:
    """Machine 1 given another model value: both machines stop at start-up naming the key and the rank."""
    port = free_port()
    commands = [localised(argv, data_root, tmp_path, port) for argv in readme_commands()[2:4]]
    commands[1] += ["MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "7"]
    machines = [subprocess.Popen(c, env=ENV, stderr=subprocess.PIPE, text=True, cwd=REPO) for c in commands]
    errors = [machine.communicate(timeout=120)[1] for machine in machines]
    assert [machine.returncode for machine in machines] == [2, 2]
    for error in errors:
        assert (
            "rank 1 of 2 runs another config than rank 0 (MODEL.MASK_FORMER.NUM_OBJECT_QUERIES 6 (rank 0) vs 7" in error
        )
    assert not (output_of(commands[0]) / "checkpoints").exists()


# ---- start-up errors: one line, exit status 2, before any process starts ------------------------------------------
def _refused(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_port_in_use_is_refused(data_root: Path, tmp_path: Path, capsys) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = ["--dist-url", f"tcp://127.0.0.1:{port}", *run_argv(data_root, tmp_path / "out", 2)]
        line = _refused(capsys, argv)
    assert f"port {port} is in use" in line and "another port" in line


def test_unreachable_machine_zero_is_an_error_after_the_timeout(data_root: Path, tmp_path: Path, capsys) -> None:
    url = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    argv = ["--num-machines", "2", "--machine-rank", "1", "--dist-url", url, *run_argv(data_root, tmp_path / "out", 1)]
    begin = time.monotonic()
    line = _refused(capsys, ["--dist-timeout", "2", *argv])
    assert time.monotonic() - begin < 30
    assert f"--dist-url {url}: machine 0 did not answer within 2 s" in line


@pytest.mark.slow
def test_machine_zero_elsewhere_and_a_foreign_server_are_refused(data_root: Path, tmp_path: Path, capsys) -> None:
    """Machine 0 given an address that is not its own; another machine pointed at a port where some other program
    listens (it accepts the connection but is no rendezvous)."""
    argv = run_argv(data_root, tmp_path / "out", 1)
    flags = ["--num-machines", "2", "--dist-timeout", "3"]
    line = _refused(capsys, [*flags, "--machine-rank", "0", "--dist-url", "tcp://192.0.2.1:29600", *argv])
    assert "192.0.2.1 is not an address of this machine" in line
    with socket.socket() as other_program:
        other_program.bind(("127.0.0.1", 0))
        other_program.listen()
        url = f"tcp://127.0.0.1:{other_program.getsockname()[1]}"
        line = _refused(capsys, [*flags, "--machine-rank", "1", "--dist-url", url, *argv])
    assert f"--dist-url {url}: something answers there, but not a train_net.py run's rendezvous" in line


@pytest.mark.parametrize(
    ("flags", "opts", "expected"),
    [
        ([], ["SOLVER.IMS_PER_BATCH", "3"], "SOLVER.IMS_PER_BATCH 3 is not divisible by 2 processes"),
        (["--num-gpus", "1", "--num-machines", "2"], [], "--num-machines 2 needs --dist-url tcp://"),
        (["--machine-rank", "1"], [], "--machine-rank 1 with --num-machines 1"),
        (["--num-gpus", "-1"], [], "--num-gpus -1: give the processes per machine"),
        (["--dist-url", "localhost:1234"], [], "give tcp://HOST:PORT"),
        (["--dist-url", "tcp://no-such-host.invalid:1234"], [], "no machine is called 'no-such-host.invalid'"),
    ],
)
def test_bad_process_settings_are_refused(data_root: Path, tmp_path: Path, capsys, flags, opts, expected) -> None:
    argv = run_argv(data_root, tmp_path / "out", 2, *opts)
    assert expected in _refused(capsys, [*argv[:4], *flags, *argv[4:]])  # after the --num-gpus 2 of argv
    assert not (tmp_path / "out" / "config.yaml").exists()  # refused before anything is written


def test_torchrun_with_another_process_count_is_refused(data_root: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    environment = {"TORCHELASTIC_RUN_ID": "x", "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "4"}
    environment |= {"LOCAL_WORLD_SIZE": "4", "GROUP_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    line = _refused(capsys, run_argv(data_root, tmp_path / "out", 2))
    assert "torchrun started 4 processes" in line and "--num-gpus 2 x --num-machines 1 = 2" in line


def test_threads_are_shared_out(monkeypatch) -> None:
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.setattr(processes, "usable_cpus", lambda: 16)
        assert distributed.set_threads(4) == 4 and torch.get_num_threads() == 4
        assert distributed.set_threads(32) == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        assert distributed.set_threads(4) == 3
    finally:
        torch.set_num_threads(before)
