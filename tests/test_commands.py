"""The commands the pipeline starts as child processes are `python -m` entry points of the package
(mask2former/commands/), never files of the checkout, and they get the parent's plug-ins."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import semask  # noqa: F401  (the parent of a child command has the plug-in, as the tools do)
from mask2former.config.plugins import PLUGINS_VARIABLE, environment_with_plugins, loaded_plugins
from mask2former.pipeline import pseudo_label as loop

PROBE = "import sys, mask2former.commands.{name}; print('semask' in sys.modules)"


def run_probe(name: str, env: dict[str, str], cwd: Path) -> str:
    code = PROBE.format(name=name)
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True, check=True)


def test_the_loaded_plugins_are_named_for_children() -> None:
    assert loaded_plugins() == ["semask"]
    assert environment_with_plugins()[PLUGINS_VARIABLE] == "semask"


@pytest.mark.subprocess
def test_a_child_command_imports_the_parents_plugins_and_only_those(tmp_path: Path) -> None:
    """From a folder outside the checkout: with the parent's environment the entry point imports semask; without
    the variable the core imports no plug-in (it never names one)."""
    bare = {key: value for key, value in os.environ.items() if key != PLUGINS_VARIABLE}
    for name in ("train_net", "predict"):
        assert run_probe(name, environment_with_plugins(), tmp_path).stdout.strip() == "True", name
        assert run_probe(name, bare, tmp_path).stdout.strip() == "False", name


def test_the_loops_children_name_no_file_of_the_checkout() -> None:
    assert [sys.executable, "-m", "mask2former.commands.train_net"] == loop.TRAIN_NET
    assert [sys.executable, "-m", "mask2former.commands.predict"] == loop.PREDICT


@pytest.mark.subprocess
def test_the_entry_points_run_from_anywhere(tmp_path: Path) -> None:
    """`python -m mask2former.commands.train_net --help` (and predict's) from a folder outside the checkout."""
    for name, expected in (("train_net", "--config-file"), ("predict", "--weights")):
        result = subprocess.run(
            [sys.executable, "-m", f"mask2former.commands.{name}", "--help"],
            cwd=tmp_path,
            env=environment_with_plugins(),
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0 and expected in result.stdout, result.stderr
