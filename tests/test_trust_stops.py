"""Issue 22, points 3 and 5: every stop is clean, and file-system errors are one line.

Stops, with real processes: a single-process train_net.py stopped by SIGTERM or Ctrl-C exits 2 with the line that
says how to resume (as a multi-process run does); predict.py's workers die with their parent (SIGTERM or kill -9)
and write nothing after it, and the parent's lock on OUT covers them while they live (`start_child`).

File systems: a full disk (ENOSPC), a read-only one (EROFS), a name too long (ENAMETOOLONG), a symlink loop (ELOOP)
and a read-only label cache are one line naming the path and what to do, from the one writer, the readers and the
tools; real tmpfs mounts where this machine allows them (root), a patched writer everywhere."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch
from conftest import REPO, TINY_MODEL, tiny_run_argv

from mask2former.config import load_config
from mask2former.data.coco_semantic import load_sem_seg_dataset
from mask2former.data.label_cache import LabelCacheError
from mask2former.errors import FileSystemError, user_message
from mask2former.io import files as io_utils
from mask2former.io.coco_json import read_coco_json
from mask2former.io.files import atomic_write_text
from mask2former.io.images import ReadError, read_image
from mask2former.modeling.build import build_model
from mask2former.utils.processes import Terminated, start_child, stop_cause
from mask2former.utils.run_lock import OutputDirInUseError, OutputDirLock

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
CONFIG = str(REPO / "configs" / "quickstart.yaml")
SIZES = ["INPUT.MIN_SIZE_TEST", "64", "MODEL.DEVICE", "cpu"]
IMAGES = 120  # predict.py's workers are killed after the first 4 of these, with about 20 s of work left


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under root (symlinks followed), by relative path."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def wait_for(condition, timeout: float, process: subprocess.Popen | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if process is not None and process.poll() is not None:
            return condition()
        time.sleep(0.05)
    return condition()


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


def spawned_children(parent: int) -> list[int]:
    """The multiprocessing 'spawn' children of `parent` (not its resource tracker)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and b"spawn_main" in command:
            found.append(int(entry.name))
    return found


# ---- 3a: single-process train_net.py, SIGTERM and Ctrl-C ---------------------------------------------------------
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "ctrl-c"])
@pytest.mark.slow
@pytest.mark.subprocess
def test_single_process_training_stopped_by_a_signal_says_how_to_resume(
    sample_root: Path, tmp_path: Path, signum: int
) -> None:
    """One process (--num-gpus 0), stopped after its first checkpoint: exit status 2, as a multi-process run, and
    one last line naming the checkpoint and --resume; no final model, no half-written file, the lock released, the
    inputs untouched."""
    out = tmp_path / "run"
    inputs = tree_hashes(sample_root)
    config = Path(CONFIG).read_bytes()
    argv = [sys.executable, str(REPO / "train_net.py"), *tiny_run_argv(sample_root, out, max_iter=400, period=2)]
    run = subprocess.Popen(argv, env=ENV, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        checkpoint = out / "checkpoints" / "model_0000002.ckpt"
        assert wait_for(checkpoint.exists, 240, run), "no checkpoint was written"
        os.kill(run.pid, signum)
        _, stderr = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
    how = "stopped by SIGTERM" if signum == signal.SIGTERM else r"interrupted \(Ctrl-C\)"
    last = stderr.strip().splitlines()[-1]
    assert run.returncode == 2, stderr[-3000:]
    assert_matches(
        rf"train_net\.py(: | ERROR\] ){how}: the run was stopped\. Continue from {out}/checkpoints/\S+\.ckpt "
        r"\(iteration \d+\): the same command with --resume\.$",
        last,
    )
    assert "Traceback" not in stderr
    assert not (out / "model_final.pth").exists()
    assert not list(out.rglob("*.tmp")) and not (out / ".lock").exists()
    assert torch.load(checkpoint, weights_only=True, map_location="cpu")["global_step"] == 2
    assert tree_hashes(sample_root) == inputs and Path(CONFIG).read_bytes() == config


def assert_matches(pattern: str, text: str) -> None:
    assert re.search(pattern, text), f"{text!r} does not match {pattern!r}"


def test_stop_cause_sees_lightnings_exits() -> None:
    """Lightning turns Ctrl-C into sys.exit(1) inside its handler: still a stop; a plain SystemExit is not."""
    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            sys.exit(1)
    except SystemExit as error:
        assert stop_cause(error) == "interrupted (Ctrl-C)"
    assert stop_cause(Terminated()) == "stopped by SIGTERM"
    assert stop_cause(SystemExit(1)) is None and stop_cause(ValueError()) is None
    try:  # SIGTERM inside torch.save: its zip writer fails on the way out, and that failure is the stop
        try:
            raise Terminated
        except Terminated:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos") from None
    except RuntimeError as error:
        assert stop_cause(error) is None  # `from None` hides the context: not a stop
    try:
        try:
            raise Terminated
        except Terminated:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos")  # noqa: B904
    except RuntimeError as error:
        assert stop_cause(error) == "stopped by SIGTERM"


# ---- 3b: predict.py's workers die with their parent, and the lock covers them ------------------------------------
@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    torch.manual_seed(0)
    cfg = load_config(CONFIG, TINY_MODEL + SIZES, freeze=False)
    torch.save({"model": build_model(cfg).eval().state_dict()}, path)
    return path


def many_images(sample_root: Path, folder: Path, count: int) -> Path:
    """A json of `count` images (links to the sample test images), enough to keep two workers busy for a while."""
    data = json.loads((sample_root / "test.json").read_text())
    originals = data["images"]
    images = []
    (folder / "images").mkdir(parents=True)
    for index in range(count):
        source = originals[index % len(originals)]
        name = f"images/{index:04d}.jpg"
        (folder / name).symlink_to(sample_root / source["file_name"])
        images.append({**source, "id": index + 1, "file_name": name})
    data["images"] = images
    (folder / "test.json").write_text(json.dumps(data))
    return folder / "test.json"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "kill-9"])
@pytest.mark.slow
@pytest.mark.subprocess
def test_predict_workers_die_with_their_parent(
    sample_root: Path, tiny_checkpoint: Path, tmp_path: Path, signum: int
) -> None:
    """predict.py --num-workers 2, its parent killed mid-run: both workers are gone within seconds, nothing under
    OUT changes afterwards, the inputs are untouched, and a second run on the same OUT then completes."""
    json_path = many_images(sample_root, tmp_path / "data", IMAGES)
    inputs = tree_hashes(tmp_path / "data")
    out = tmp_path / "out"
    argv = [
        sys.executable,
        str(REPO / "tools" / "predict.py"),
        "--config-file",
        CONFIG,
        "--weights",
        str(tiny_checkpoint),
        "--json",
        str(json_path),
        "--out",
        str(out),
        "--num-workers",
        "2",
        "--threads",
        "1",
        "--overlays",
        "0",
        *TINY_MODEL,
        *SIZES,
    ]
    run = subprocess.Popen(argv, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO)
    workers: list[int] = []
    try:
        assert wait_for(lambda: len(list((out / "probs").rglob("*.npz"))) >= 4, 240, run), "no worker wrote"
        workers = spawned_children(run.pid)
        assert len(workers) == 2
        os.kill(run.pid, signum)
        run.communicate(timeout=60)
        # gone at once, with most of their shards still to do (about 20 s of work)
        assert wait_for(lambda: not any(alive(pid) for pid in workers), 3), "a worker outlived its parent"
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
        for pid in [pid for pid in workers if alive(pid)]:  # the test failed: leave no process behind
            os.kill(pid, signal.SIGKILL)
    left = tree_hashes(out)
    assert len([name for name in left if name.endswith(".npz")]) < IMAGES // 2
    time.sleep(1.5)
    assert tree_hashes(out) == left  # nobody writes there any more
    assert tree_hashes(tmp_path / "data") == inputs
    if signum == signal.SIGKILL:  # a second run takes the dead run's lock over and completes the job
        again = subprocess.run(argv, env=ENV, capture_output=True, text=True, cwd=REPO, timeout=300)
        assert again.returncode == 0, again.stderr[-3000:]
        assert "taking over the stale lock" in again.stderr
        assert len(list((out / "probs").rglob("*.npz"))) == IMAGES
        assert not list(out.rglob("*.tmp"))
    else:
        with OutputDirLock(out, "--out"):  # free: no worker of the first run holds it
            pass


def _sleep_forever() -> None:
    time.sleep(300)


def test_a_child_holds_its_parents_lock_until_it_is_gone(tmp_path: Path) -> None:
    """The parent's lock file is shared with its child: with the parent's own descriptor closed (as when it is
    killed), the folder stays locked while the child lives, and is free once it is gone."""
    import multiprocessing as mp

    out = tmp_path / "out"
    lock = OutputDirLock(out, "--out")
    lock.acquire()
    child = start_child(mp.get_context("spawn"), _sleep_forever, (), "sleeper")
    try:
        time.sleep(0.5)  # started (the descriptor is passed at start, before this returns)
        os.close(lock._fd)  # the parent's hold ends, as a kill -9 would end it
        lock._fd = None
        with pytest.raises(OutputDirInUseError, match=r"--out .* is in use by another run"):
            OutputDirLock(out, "--out").acquire()
    finally:
        child.kill()
        child.join()
        from mask2former.utils import run_lock

        run_lock._held.clear()
    second = OutputDirLock(out, "--out")
    second.acquire()  # free now, taken over as a dead run's lock
    second.release()


_ORPHAN_PARENT = """
import multiprocessing as mp, sys, time
from mask2former.utils.processes import start_child
if __name__ == "__main__":
    child = start_child(mp.get_context("spawn"), time.sleep, (300,), "orphan")
    print(child.pid, flush=True)
    time.sleep(300)
"""


def test_a_child_dies_when_its_parent_is_killed(tmp_path: Path) -> None:
    """kill -9 of the parent: the kernel ends its child too (no orphan left running). train_net.py's launcher starts
    its ranks with the same start_child."""
    script = tmp_path / "parent.py"
    script.write_text(_ORPHAN_PARENT)
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, cwd=REPO, env=ENV)
    try:
        child = int(parent.stdout.readline())
        assert alive(child)
        parent.kill()
        parent.wait(timeout=30)
        assert wait_for(lambda: not alive(child), 10), "the child outlived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()
        parent.stdout.close()


# ---- 5: file-system errors are one line --------------------------------------------------------------------------
@pytest.fixture
def mounts(tmp_path: Path):
    """A 64 KiB tmpfs and a read-only one (needs the right to mount: skipped where the platform does not allow it)."""
    made = []

    def mount(name: str, options: str) -> Path:
        point = tmp_path / name
        point.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({result.stderr.decode().strip() or result.returncode})")
        made.append(point)
        return point

    yield mount
    for point in made:
        subprocess.run(["umount", str(point)], check=False)


class _FailingOs(types.SimpleNamespace):
    """The writer's `os` with one call failing as the file system would."""


def failing_writer(monkeypatch, call: str, code: int) -> None:
    """The one writer's `os.<call>` raises OSError(code) (a disk that fills up, a read-only remount)."""

    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    fake = _FailingOs(**{name: getattr(os, name) for name in dir(os) if not name.startswith("__")})
    setattr(fake, call, fail)
    monkeypatch.setattr(io_utils, "os", fake)


@pytest.mark.parametrize(
    ("call", "code", "expected"),
    [
        ("fsync", errno.ENOSPC, r"no space left on the disk while writing {path}: free some space and run again$"),
        ("replace", errno.EROFS, r"{path} is on a read-only file system: give a folder on a writable one$"),
        ("fsync", errno.EDQUOT, r"disk quota exceeded while writing {path}: free some space"),
    ],
)
def test_the_writer_names_the_file_and_what_to_do(tmp_path: Path, monkeypatch, call, code, expected) -> None:
    target = tmp_path / "meta.json"
    target.write_text("before")
    failing_writer(monkeypatch, call, code)
    with pytest.raises(FileSystemError, match=expected.format(path=target)) as error:
        atomic_write_text(target, "after")
    assert error.value.errno == code and "\n" not in str(error.value)
    assert target.read_text() == "before" and sorted(p.name for p in tmp_path.iterdir()) == ["meta.json"]


def test_real_full_and_read_only_disks(mounts) -> None:
    small, read_only = mount_pair(mounts)
    with pytest.raises(FileSystemError, match=rf"no space left on the disk while writing {small}/big.bin: free some"):
        io_utils.atomic_write_bytes(small / "big.bin", b"x" * 200_000)
    assert list(small.iterdir()) == []
    with pytest.raises(FileSystemError, match=rf"{read_only}/a.txt is on a read-only file system"):
        atomic_write_text(read_only / "a.txt", "x")


def mount_pair(mounts) -> tuple[Path, Path]:
    return mounts("small", "size=64k"), mounts("ro", "ro,size=64k")


def test_names_too_long_and_symlink_loops(tmp_path: Path) -> None:
    """A real 300-byte name and a real symlink loop, to the writer and the readers."""
    long_name = tmp_path / ("n" * 300)
    with pytest.raises(FileSystemError, match=r"file name too long: .*n{300} \(a part of 300 bytes, 255 at most\)"):
        atomic_write_text(long_name, "x")
    with pytest.raises(ReadError, match=r"image file name too long: .*n{300}"):
        read_image(long_name)
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    loop = r": too many levels of symbolic links \(a symlink loop\): fix or remove the link$"
    with pytest.raises(FileSystemError, match=rf"{tmp_path}/a{loop}"):
        atomic_write_text(tmp_path / "a" / "x.txt", "x")
    with pytest.raises(ReadError, match=rf"image {tmp_path}/a{loop}"):
        read_image(tmp_path / "a")
    with pytest.raises(ReadError, match=rf"COCO json {tmp_path}/a{loop}"):
        read_coco_json(tmp_path / "a")
    with pytest.raises(FileSystemError, match=rf"{tmp_path}/a{loop}"):
        OutputDirLock(tmp_path / "a", "--out").acquire()
    # a name that fits, whose temporary name would not, is written
    fits = tmp_path / ("m" * 250)
    atomic_write_text(fits, "ok")
    assert fits.read_text() == "ok"


def test_pathlib_symlink_loop_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "a").symlink_to(tmp_path / "a")
    try:
        (tmp_path / "a").resolve()
    except RuntimeError as error:  # Python < 3.13
        assert user_message(error) == f"{tmp_path}/a: too many levels of symbolic links (a symlink loop): fix or " + (
            "remove the link"
        )


def test_a_read_only_label_cache_is_one_line(tiny_coco: Path, tmp_path: Path, monkeypatch) -> None:
    cache = tmp_path / "cache"
    failing_writer(monkeypatch, "replace", errno.EROFS)
    with pytest.raises(
        LabelCacheError,
        match=rf"cannot write the label cache {cache}/\S+ \(read-only file system\): "
        r"set DATASETS.LABEL_CACHE_DIR \(or \$TRASH_CACHE\) to a writable folder$",
    ):
        load_sem_seg_dataset(tiny_coco, tiny_coco.parent, cache_dir=cache)


def test_a_real_read_only_label_cache(tiny_coco: Path, mounts) -> None:
    read_only = mounts("ro", "ro,size=64k")
    with pytest.raises(
        LabelCacheError, match=rf"cannot write the label cache {read_only}/\S+ \(read-only file system\)"
    ):
        load_sem_seg_dataset(tiny_coco, tiny_coco.parent, cache_dir=read_only)


# ---- 5, through the tools: exit status 2 and one line ------------------------------------------------------------
def predict_argv(json_path: Path, out: Path, weights: Path) -> list[str]:
    return [
        "--config-file", CONFIG, "--weights", str(weights), "--json", str(json_path), "--out", str(out),
        "--overlays", "1", *TINY_MODEL, *SIZES,
    ]  # fmt: skip


def run_predict(argv: list[str], capsys) -> tuple[int, list[str]]:
    """tools/predict.py's main in this process; (exit status, stderr lines)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("predict_tool", REPO / "tools" / "predict.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    with pytest.raises(SystemExit) as stop:
        tool.main(argv)
    return stop.value.code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("case", ["enospc", "erofs", "out-too-long", "out-loop", "json-loop", "weights-loop"])
def test_predict_file_system_errors_are_one_line(
    sample_root: Path, tiny_checkpoint: Path, tmp_path: Path, monkeypatch, capsys, case: str
) -> None:
    json_path, out, weights = sample_root / "test.json", tmp_path / "out", tiny_checkpoint
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    if case == "enospc":
        failing_writer(monkeypatch, "fsync", errno.ENOSPC)
        expected = rf"no space left on the disk while writing {out}/\S+: free some space and run again"
    elif case == "erofs":
        failing_writer(monkeypatch, "replace", errno.EROFS)
        expected = rf"{out}/\S+ is on a read-only file system"
    elif case == "out-too-long":
        out = tmp_path / ("o" * 300)
        expected = r"file name too long: .*o{300} \(a part of 300 bytes, 255 at most\): give a shorter name"
    elif case == "out-loop":
        out = loop
        expected = rf"{loop}\S*: too many levels of symbolic links \(a symlink loop\)"
    elif case == "json-loop":
        json_path = loop
        expected = rf"{loop}: too many levels of symbolic links \(a symlink loop\)"
    else:
        weights = loop
        expected = rf"{loop}: too many levels of symbolic links \(a symlink loop\)"
    inputs = tree_hashes(sample_root)
    status, lines = run_predict(predict_argv(json_path, out, weights), capsys)
    assert status == 2, lines
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    assert_matches(rf"predict\.py(: | ERROR\] ).*{expected}", lines[0])
    assert tree_hashes(sample_root) == inputs
    if os.path.isdir(out):
        assert not list(out.rglob("*.tmp"))


def test_predict_on_a_real_read_only_out(sample_root: Path, tiny_checkpoint: Path, mounts, capsys) -> None:
    read_only = mounts("ro", "ro,size=64k")
    status, lines = run_predict(predict_argv(sample_root / "test.json", read_only / "out", tiny_checkpoint), capsys)
    assert status == 2 and len(lines) == 1, lines
    assert_matches(
        rf"predict\.py(: | ERROR\] ){read_only}/out is on a read-only file system: give a writable --out$", lines[0]
    )


def test_train_net_with_a_read_only_label_cache(sample_root: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    from mask2former.engine.launch import main

    failing_writer(monkeypatch, "replace", errno.EROFS)
    argv = tiny_run_argv(sample_root, tmp_path / "run", "DATASETS.LABEL_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(SystemExit) as stop:
        main(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2
    assert_matches(r"cannot write the label cache .*\(read-only file system\): set DATASETS.LABEL_CACHE_DIR", lines[-1])
    assert "Traceback" not in "\n".join(lines)


# ---- every tool: Ctrl-C and SIGTERM end through run_tool as one line, status 2, the lock released ----------------
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "ctrl-c"])
def test_run_tool_ends_a_stopped_tool_with_one_line_and_its_lock_released(tmp_path: Path, signum: int) -> None:
    """A tool (in a child process: the signal must not reach the test runner) stopped by SIGTERM or Ctrl-C inside
    its output folder: one line, exit status 2, the line in its log.txt, the lock released; with --debug the
    stop's traceback instead."""
    out = tmp_path / "out"
    script = f"""
import os, signal, sys, time
from mask2former.utils.cli import run_tool
from mask2former.utils.logger import logging_to
from mask2former.utils.output_folder import owned_output_folder

def work():
    with owned_output_folder({str(out)!r}, "tool.py", {{}}), logging_to({str(out)!r}):
        os.kill(os.getpid(), {int(signum)})
        time.sleep(30)  # the signal ends the wait

handler = signal.getsignal(signal.SIGTERM)
try:
    run_tool("tool.py", work, argv=sys.argv[1:])
finally:
    assert signal.getsignal(signal.SIGTERM) is handler
"""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    how = "stopped by SIGTERM" if signum == signal.SIGTERM else "interrupted (Ctrl-C)"
    expected = f"tool.py: {how}: the run was stopped; run the same command again to finish it"
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [expected], done.stderr
    assert expected.removeprefix("tool.py: ") in (out / "log.txt").read_text()
    assert not (out / ".lock").exists()
    debug = subprocess.run(
        [sys.executable, "-c", script.replace(repr(str(out)), repr(str(tmp_path / "debug"))), "--debug"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert debug.returncode != 0 and "Traceback" in debug.stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "ctrl-c"])
@pytest.mark.slow
@pytest.mark.subprocess
def test_predict_stopped_by_a_signal_says_so_and_resumes(
    sample_root: Path, tiny_checkpoint: Path, tmp_path: Path, signum: int
) -> None:
    """predict.py in one process, stopped mid-run: status 2, one last line and no traceback, the lock released;
    the same command then finishes the job."""
    json_path = many_images(sample_root, tmp_path / "data", 40)
    out = tmp_path / "out"
    argv = [sys.executable, str(REPO / "tools" / "predict.py"), "--config-file", CONFIG, "--weights"]
    argv += [str(tiny_checkpoint), "--json", str(json_path), "--out", str(out), "--overlays", "0", "--threads", "1"]
    argv += [*TINY_MODEL, *SIZES]
    run = subprocess.Popen(argv, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert wait_for(lambda: len(list((out / "probs").rglob("*.npz"))) >= 2, 240, run), "nothing was predicted"
        os.kill(run.pid, signum)
        _, stderr = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    how = "stopped by SIGTERM" if signum == signal.SIGTERM else r"interrupted \(Ctrl-C\)"
    assert run.returncode == 2, stderr[-3000:]
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert_matches(rf"^predict\.py: {how}: the run was stopped; run the same command again to finish it$", last)
    assert not (out / ".lock").exists() and not list(out.rglob("*.tmp"))
    again = subprocess.run(argv, env=ENV, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(list((out / "probs").rglob("*.npz"))) == 40
