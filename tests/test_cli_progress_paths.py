"""The shared pieces every tool uses: one-line user errors, progress into logs, output names, config loading."""

from __future__ import annotations

import io
import logging

import pytest

from mask2former.config import ConfigError, load_config
from mask2former.errors import UserError
from mask2former.io.files import UnsafePathError, output_path, safe_relative_name
from mask2former.utils.cli import EXIT_USER_ERROR, run_tool, strip_debug
from mask2former.utils.progress import Progress, progress


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_user_error_is_one_line_and_exit_2(capsys):
    def fail():
        raise UserError("data/train.json: image 'a.jpg' is missing; fix the path")

    with pytest.raises(SystemExit) as exit_info:
        run_tool("tool.py", fail, argv=[])
    assert exit_info.value.code == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "a.jpg" in err and "Traceback" not in err


def test_debug_shows_the_traceback_and_bugs_keep_theirs():
    def fail():
        raise UserError("bad input")

    with pytest.raises(UserError):
        run_tool("tool.py", fail, argv=["--debug"])
    with pytest.raises(ZeroDivisionError):
        run_tool("tool.py", lambda: 1 / 0, argv=[])
    assert strip_debug(["--out", "x", "--debug"]) == ["--out", "x"]


def test_progress_into_a_pipe_writes_periodic_lines_with_rate_and_eta(caplog):
    clock, stream = _Clock(), io.StringIO()
    with (
        caplog.at_level(logging.INFO, logger="progress"),
        Progress(100, "predict", "img", interval=10, stream=stream, clock=clock) as meter,
    ):
        for _ in range(100):
            clock.now += 1.0
            meter.update(1)
    lines = [record.getMessage() for record in caplog.records]
    assert stream.getvalue() == ""  # no bar, no carriage returns
    assert len(lines) == 11  # every 10 s of 100 s, and the closing line
    assert lines[0] == "predict: 10/100 img (10%), 1.00 img/s, elapsed 00:10, ETA 01:30"
    assert lines[-1].endswith("(finished)")


def test_progress_iterates_everything():
    assert list(progress(range(5), desc="x", stream=io.StringIO())) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("name", ["/etc/passwd", "../up.jpg", "a/../../b.jpg", "", "C:\\photos\\a.jpg", "a\\..\\..\\b"])
def test_unsafe_names_are_refused(name, tmp_path):
    with pytest.raises(UnsafePathError):
        output_path(tmp_path, name, ".npz")


def test_safe_names_stay_under_the_root(tmp_path):
    assert safe_relative_name("./batch_01/0001.jpg").as_posix() == "batch_01/0001.jpg"
    assert output_path(tmp_path / "probs", "batch_01/0001.jpg", ".npz") == tmp_path / "probs/batch_01/0001.npz"


def test_a_symlinked_subfolder_cannot_lead_outside(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "out" / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UnsafePathError, match="outside the output folder"):
        output_path(tmp_path / "out", "link/a.png")


def test_load_config_errors_name_the_file_and_key(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("MODEL:\n  NOT_A_KEY: 1\n")
    with pytest.raises(ConfigError, match="MODEL.NOT_A_KEY") as error:
        load_config(str(bad))
    assert str(bad) in str(error.value)
    with pytest.raises(ConfigError, match="SOLVER.BASE_LRR"):
        load_config(None, ["SOLVER.BASE_LRR", "1"])
    cfg = load_config(None, ["SOLVER.BASE_LR", "0.5"])
    assert cfg.SOLVER.BASE_LR == 0.5 and cfg.is_frozen()


def test_a_user_error_inside_a_run_reaches_its_log_once(tmp_path, capsys):
    from mask2former.utils.logger import logging_to

    def fail():
        with logging_to(tmp_path / "out"):
            raise UserError("images/x.jpg: unreadable; fix or remove it")

    with pytest.raises(SystemExit):
        run_tool("tool.py", fail, argv=[])
    assert (tmp_path / "out" / "log.txt").read_text().count("images/x.jpg: unreadable") == 1
    assert capsys.readouterr().err.count("images/x.jpg: unreadable") == 1


def test_atomic_writes_get_the_mode_a_plain_write_gets(tmp_path):
    import os

    from mask2former.io.files import atomic_write_text

    (tmp_path / "plain.txt").write_text("x")
    atomic_write_text(tmp_path / "atomic.txt", "x")
    assert os.stat(tmp_path / "atomic.txt").st_mode == os.stat(tmp_path / "plain.txt").st_mode
