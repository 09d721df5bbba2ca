"""The documentation stays true: README.md is short, every relative link in README.md, CHANGELOG.md and docs/*.md
leads to a file (and heading) that exists, docs/architecture.md names exactly the modules of both packages, and
the README's own commands run as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
from conftest import REPO, TINY_MODEL, doc_commands, doc_headings, doc_pages, tiny_training_opts

README_LIMIT = 8 * 1024
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
MODULE = re.compile(r"`((?:mask2former|semask)/[\w/]+\.py)`")
CODE_PATH = re.compile(
    r"(?<![\w./-])((?:mask2former|semask|tools|benchmarks|tests|configs)/[\w/.-]*\w\.(?:py|yaml|md))\b"
)
PACKAGES = ("mask2former", "semask")
EXAMPLE_PATHS = {"configs/my.yaml"}  # a user's file in an example error message


def linked_pages() -> list[Path]:
    return [*doc_pages(), REPO / "CHANGELOG.md"]


def anchors(page: Path) -> set[str]:
    """GitHub's anchors of the page's headings: lower case, punctuation dropped, spaces as hyphens, repeats
    numbered."""
    counts: dict[str, int] = {}
    found = set()
    for _, _, title in doc_headings(page.read_text()):
        slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
        found.add(slug if slug not in counts else f"{slug}-{counts[slug]}")
        counts[slug] = counts.get(slug, 0) + 1
    return found


def outside_code(text: str) -> str:
    """The text without fenced code blocks and inline code spans (links there are not links)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def test_readme_is_short() -> None:
    size = len((REPO / "README.md").read_bytes())
    assert size < README_LIMIT, f"README.md is {size} bytes; move details to docs/ (limit {README_LIMIT})"


@pytest.mark.parametrize("page", linked_pages(), ids=lambda page: str(page.relative_to(REPO)))
def test_relative_links_lead_to_existing_files_and_headings(page: Path) -> None:
    broken = []
    for target in LINK.findall(outside_code(page.read_text())):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not checked here
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.is_relative_to(REPO) or not resolved.exists():
            broken.append(f"{target}: no such file in the repository")
        elif anchor and anchor not in anchors(resolved):
            broken.append(f"{target}: {resolved.relative_to(REPO)} has no heading with the anchor #{anchor}")
    assert not broken, f"{page.relative_to(REPO)}: " + "; ".join(broken)


def test_readme_has_no_links_outside_a_clone() -> None:
    text = (REPO / "README.md").read_text()
    assert "../shared" not in text and "<!--" not in text


def test_architecture_map_names_every_module_and_only_existing_ones() -> None:
    named = set(MODULE.findall((REPO / "docs" / "architecture.md").read_text()))
    modules = {
        path.relative_to(REPO).as_posix()
        for package in PACKAGES
        for path in (REPO / package).rglob("*.py")
        if path.name != "__init__.py"
    }
    absent = sorted(path for path in named if not (REPO / path).is_file())
    assert not absent, f"docs/architecture.md names modules that do not exist: {absent}"
    assert not modules - named, f"docs/architecture.md does not name these modules: {sorted(modules - named)}"


def test_every_file_path_in_the_docs_exists() -> None:
    """A file of the repository named in README.md or docs/*.md (`mask2former/io/checkpoints.py: ...`,
    `tools/predict.py --out ...`, `configs/m2f_swin_l.yaml`) exists: a moved module or config fails here."""
    missing = []
    for page in doc_pages():
        for path in set(CODE_PATH.findall(page.read_text())):
            if path not in EXAMPLE_PATHS and not (REPO / path).exists():
                missing.append(f"{page.relative_to(REPO)}: {path}")
    assert not missing, "the docs name files that do not exist: " + "; ".join(sorted(missing))


def test_readme_two_commands_are_make_targets() -> None:
    assert doc_commands("Two commands") == [["make", "test"], ["make", "demo"]]
    targets = re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), re.M)
    assert {"test", "demo"} <= set(targets)


def test_readme_own_data_recipe_runs_as_written(sample_root: Path, tmp_path: Path) -> None:
    """README "Train on your own data": the four commands in child processes with DATA -> the generated sample
    data, output/ -> a temporary folder, python -> this interpreter; train_net and predict get tiny widths and a
    two-iteration schedule appended, nothing else changes."""
    inspect, train, predict, evaluate = doc_commands("Train on your own data")
    assert [argv[:2] for argv in (inspect, train, predict, evaluate)] == [
        ["python", "tools/inspect_dataset.py"],
        ["python", "train_net.py"],
        ["python", "tools/predict.py"],
        ["python", "tools/evaluate.py"],
    ]
    output = tmp_path / "output"
    env = {**os.environ, "TRASH_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}

    def localised(argv: list[str]) -> list[str]:
        out = [sys.executable]
        for arg in argv[1:]:
            if arg == "DATA" or arg.startswith("DATA/"):
                arg = str(sample_root) + arg.removeprefix("DATA")
            elif arg.startswith("output/"):
                arg = str(output / arg.removeprefix("output/"))
            out.append(arg)
        return out

    def run(argv: list[str]) -> str:
        done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{argv[1]} failed:\n{done.stderr[-4000:]}"
        return done.stdout

    cpu = ["MODEL.DEVICE", "cpu"]
    schedule = ["SOLVER.MAX_ITER", "2", "SOLVER.CHECKPOINT_PERIOD", "2", "TEST.EVAL_PERIOD", "2"]
    run(localised(inspect))
    run(localised(train) + tiny_training_opts(sample_root, tmp_path / "cache") + schedule + cpu)
    run(localised(predict) + TINY_MODEL + cpu + ["INPUT.MIN_SIZE_TEST", "64"])
    report = run(localised(evaluate))
    assert re.search(r"mIoU: \d\.\d{4}", report), report
    mine = output / "mine"
    assert (mine / "inspect" / "stats.json").is_file() and (mine / "train" / "model_final.pth").is_file()
    assert (mine / "val" / "submission.csv").is_file()
    put_the_model_to_work(localised, run, tmp_path, sample_root)


def put_the_model_to_work(localised, run, tmp_path: Path, sample_root: Path) -> None:
    """README "Put a model to work", after the own-data recipe trained output/mine/train: export a package (the
    tiny widths and a 64 px view appended), predict a folder of photos (one not square) with its model.onnx, serve
    it (on any free port: --port 0 appended) and ask its /health."""
    export, predict, serve = doc_commands("Put a model to work")
    photos = tmp_path / "photos"
    photos.mkdir()
    for image in sorted((sample_root / "batch_03").glob("*.jpg"))[:2]:
        (photos / image.name).write_bytes(image.read_bytes())
    wide = cv2.imread(str(image))[:300]  # a photo of another shape: the package is a dynamic-size export
    assert cv2.imwrite(str(photos / "wide.png"), wide)

    def with_photos(argv: list[str]) -> list[str]:
        return [str(photos) if arg == "PHOTOS" else arg for arg in argv]

    run(localised(export) + TINY_MODEL + ["MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", "64"])
    package = tmp_path / "output" / "mine" / "package"
    assert {"model.onnx", "model.safetensors", "config.yaml", "classes.json", "README.md"} <= {
        path.name for path in package.iterdir()
    }
    run(with_photos(localised(predict)))
    labels = sorted(path.name for path in (tmp_path / "output" / "mine" / "photos" / "labels").iterdir())
    assert labels == sorted(path.with_suffix(".png").name for path in photos.iterdir()), labels
    server = subprocess.Popen(
        [*localised(serve), "--port", "0"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        line = server.stdout.readline()
        assert " on http://127.0.0.1:" in line, line + server.stderr.read()
        url = line.split(" on ")[1].split(" ")[0]
        import httpx

        health = httpx.get(f"{url}/health", timeout=30).json()
        assert health["status"] == "ok" and len(health["classes"]) == 11, health
    finally:
        server.terminate()
        server.wait(timeout=30)
