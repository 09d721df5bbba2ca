"""The test lanes: registered markers, strict marker checking, and the Makefile targets that select them."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LANE_MARKERS = {"slow", "subprocess", "browser", "gpu"}


def _pytest_options() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]


def _make_recipe(target: str) -> str:
    """The recipe lines of a Makefile target, with $(NAME) variables of the Makefile filled in."""
    text = (REPO / "Makefile").read_text()
    variables = dict(re.findall(r"^([A-Z_]+) = (.*)$", text, flags=re.M))
    recipe = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n)+)", text, flags=re.M)
    assert recipe, f"Makefile has no target {target}"
    return re.sub(r"\$\(([A-Z_]+)\)", lambda m: variables.get(m[1], m[0]), recipe[1])


def test_lane_markers_are_registered_with_a_meaning_and_checked_strictly() -> None:
    options = _pytest_options()
    assert "--strict-markers" in options["addopts"].split()
    registered = {line.split(":", 1)[0]: line.split(":", 1)[1].strip() for line in options["markers"]}
    assert set(registered) >= LANE_MARKERS
    assert all(registered[name] for name in LANE_MARKERS)


def test_an_unregistered_marker_fails_collection(tmp_path: Path) -> None:
    module = tmp_path / "test_marked.py"
    module.write_text("import pytest\n\n\n@pytest.mark.slw\ndef test_one():\n    pass\n")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", str(REPO / "pyproject.toml")]
    result = subprocess.run(
        [*command, "--rootdir", str(tmp_path), str(module)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert "'slw' not found in `markers` configuration option" in result.stdout + result.stderr


def test_make_test_fast_leaves_out_every_lane_marker_and_make_test_lists_durations() -> None:
    fast = _make_recipe("test-fast")
    expression = re.search(r'-m "([^"]+)"', fast)
    assert expression, fast
    assert set(re.findall(r"not (\w+)", expression[1])) == LANE_MARKERS
    assert re.fullmatch(r"not \w+( and not \w+)*", expression[1])
    full = _make_recipe("test")
    assert "--durations=25" in full
    assert not re.search(r"pytest\b.* -m ", full), "make test runs every test, whatever its markers"
