"""Loud where it matters, quiet elsewhere (issue 22, point 6): a CPU fallback and random initialisation said once at
start, Lightning's and sklearn's chatter gone, metrics.csv's steps and columns as log.txt says, data errors before
OUTPUT_DIR is written, the viewer's missing packages named, overlays of huge photos bounded."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import sys
import tracemalloc
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import REPO, tiny_run_argv

from mask2former.data.folds import FoldError, split_json
from mask2former.engine.launch import main
from mask2former.engine.metrics_log import read_metrics
from mask2former.utils.visualize import overlay
from mask2former.viewer.data import overlay_picture

VIEWER = REPO / "tools" / "viewer.py"
PALETTE = [(0, 0, 0), (200, 10, 10), (10, 200, 10), (10, 10, 200)] + [(i, i, i) for i in range(7)]


def digest(*paths: Path) -> dict[str, str]:
    files = [f for p in paths for f in ([p] if p.is_file() else sorted(p.rglob("*"))) if f.is_file()]
    return {str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def user_error(argv: list[str], capsys) -> str:
    """train_net's main on `argv`: asserts exit status 2 and returns the last line on stderr."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


# ---- d. data errors before anything is written into OUTPUT_DIR ------------------------------------------------


def _broken_json_root(sample_root: Path, tmp_path: Path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(sample_root, root)
    (root / "train.json").write_text('{"images": [')  # cut short
    return root


@pytest.mark.parametrize("case", ["broken json", "NUM_CLASSES"])
def test_a_data_error_leaves_output_dir_unwritten(sample_root: Path, tmp_path: Path, capsys, case: str) -> None:
    out = tmp_path / "run"
    if case == "broken json":
        root = _broken_json_root(sample_root, tmp_path)
        argv = tiny_run_argv(root, out, "DATASETS.ROOT", str(root))
        expected = f"{root / 'train.json'}"
    else:
        root = sample_root
        argv = tiny_run_argv(root, out, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "7")
        expected = "MODEL.SEM_SEG_HEAD.NUM_CLASSES is 7: set it to 11"
    before = digest(root, REPO / "configs")
    line = user_error(argv, capsys)
    assert expected in line, line
    assert not out.exists()  # no config.yaml, log.txt, tensorboard/ or lock
    assert digest(root, REPO / "configs") == before


# ---- a, b. a CPU fallback and random initialisation: one line each at start ------------------------------------


def _notes(monkeypatch, *argv: str, config: str = "m2f_dinat_l.yaml", parameters: int = 220_000_000):
    """start_notes for `train_net.py --config-file configs/<config> argv...` on a machine without a GPU, with a
    model of `parameters` parameters (a stand-in: building DiNAT-L takes seconds)."""
    import torch

    from mask2former.config import load_config
    from mask2former.engine.arguments import default_argument_parser
    from mask2former.engine.devices import processes_per_machine
    from mask2former.engine.training import start_notes

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = default_argument_parser().parse_args(["--config-file", str(REPO / "configs" / config), *argv])
    cfg = load_config(args.config_file, args.opts)
    model = torch.nn.Module()
    model.weight = torch.nn.Parameter(torch.empty(0))
    monkeypatch.setattr(model.weight, "numel", lambda: parameters)
    resume = argv.count("--resume") > 0
    notes = start_notes(cfg, args, model, fresh=not resume)
    return notes, processes_per_machine(cfg, args)


def test_the_headline_command_without_a_gpu_says_so_once(monkeypatch) -> None:
    """python train_net.py --config-file configs/m2f_dinat_l.yaml --num-gpus 1, no GPU, no weights given."""
    notes, processes = _notes(monkeypatch, "--num-gpus", "1")
    assert processes == 1
    assert [level for level, _ in notes] == [logging.WARNING, logging.WARNING]
    device, weights = (line for _, line in notes)
    assert device.startswith("no GPU is available, so this run trains on the CPU (")
    assert "a 220M-parameter model takes minutes per iteration there" in device
    assert "a machine with a GPU" in device and "configs/quickstart.yaml" in device
    assert weights.startswith("MODEL.WEIGHTS and MODEL.BACKBONE.WEIGHTS are empty: the 220M-parameter model starts ")
    assert "random initialisation" in weights and "far from the recipe's" in weights


def test_num_gpus_2_without_a_gpu_says_what_it_runs(monkeypatch) -> None:
    notes, processes = _notes(monkeypatch, "--num-gpus", "2")
    assert processes == 2  # what run() starts: launch_processes with 2 CPU processes
    assert notes[0][1].startswith(
        "no GPU is available, so this run trains on the CPU (--num-gpus 2: 2 processes on the CPU (gloo), "
    )


def test_notes_only_where_they_matter(monkeypatch, tmp_path: Path) -> None:
    weights = tmp_path / "dinat.pth"
    # the CPU asked for, weights given, a resumed run: nothing to say
    assert _notes(monkeypatch, "--num-gpus", "0", "MODEL.BACKBONE.WEIGHTS", str(weights))[0] == []
    assert _notes(monkeypatch, "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", str(weights))[0] == []
    assert _notes(monkeypatch, "--resume", "--num-gpus", "0")[0] == []
    # --eval-only: the device, no word on initialisation
    notes = _notes(monkeypatch, "--eval-only", "MODEL.WEIGHTS", str(weights))[0]
    assert len(notes) == 1 and notes[0][1].startswith("no GPU is available, so this run evaluates on the CPU")
    # the quickstart, sized for the CPU and meant to start from scratch: information, no advice
    notes = _notes(monkeypatch, config="quickstart.yaml", parameters=1_753_871)[0]
    assert [level for level, _ in notes] == [logging.INFO, logging.INFO]
    assert notes[0][1].startswith("no GPU is available, so this run trains on the CPU (") and ":" not in notes[0][1]
    assert notes[1][1].endswith("the 1.8M-parameter model starts from random initialisation")


# ---- c. a tiny training: the lines that matter, nothing else -------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
@pytest.mark.slow
@pytest.mark.subprocess
def test_a_tiny_training_says_what_matters_and_nothing_else(sample_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = tiny_run_argv(sample_root, out, max_iter=4, period=2)
    argv[argv.index("--num-gpus") + 1] = "1"  # the README's command line: the CPU taken because there is no GPU
    before = digest(sample_root, REPO / "configs")
    result = subprocess.run(
        [sys.executable, str(REPO / "train_net.py"), *argv], capture_output=True, text=True, timeout=600, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    said = result.stdout + result.stderr
    for noise in ("Tip:", "litlogger", "litmodels", "GPU available", "TPU available", "LeafSpec", "`Trainer.fit`"):
        assert noise not in said, noise
    assert "Warning" not in said and "warn(" not in said
    log = (out / "log.txt").read_text()
    for text in (log, result.stderr):
        assert text.count("no GPU is available, so this run trains on the CPU") == 1
        assert text.count("starts from random initialisation") == 1
        assert text.count("iteration 4, trash_val: mIoU") == 1 and text.count("iter 4/4") == 1
    rows = read_metrics(out / "metrics.csv")
    assert set(rows[0]) == {"step", "total_loss", "loss_ce", "loss_mask", "loss_dice", "lr", "sem_seg/mIoU"}
    assert [int(row["step"]) for row in rows if row["total_loss"]] == [1, 2, 3, 4]  # log.txt's "iter N/4"
    final = json.loads((out / "final_metrics.json").read_text())
    evaluations = [row for row in rows if row["sem_seg/mIoU"]]
    assert [int(row["step"]) for row in evaluations] == [final["iteration"]] == [4]
    assert float(evaluations[0]["sem_seg/mIoU"]) == pytest.approx(final["results"]["trash_val"]["mIoU"], rel=1e-6)
    assert digest(sample_root, REPO / "configs") == before


@pytest.mark.slow
def test_a_resumed_run_keeps_the_iterations_once(sample_root: Path, tmp_path: Path) -> None:
    """A run of 4 iterations continued to 6: metrics.csv holds iterations 1..6 once, evaluations at 4 and 6."""
    out = tmp_path / "run"
    main(tiny_run_argv(sample_root, out, max_iter=4, period=2))
    main(["--resume", *tiny_run_argv(sample_root, out, max_iter=6, period=2)])
    rows = read_metrics(out / "metrics.csv")
    assert [int(row["step"]) for row in rows if row["total_loss"]] == [1, 2, 3, 4, 5, 6]
    assert [int(row["step"]) for row in rows if row["sem_seg/mIoU"]] == [4, 6]
    assert json.loads((out / "final_metrics.json").read_text())["iteration"] == 6


# ---- c. the fold split: sklearn's class-count warning, said once in our words ----------------------------------


def test_a_rare_class_in_the_fold_split_is_one_line(sample_root: Path, tmp_path: Path, caplog) -> None:
    before = digest(sample_root)
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        split_json(sample_root / "train_all.json", 7, tmp_path / "folds")
    assert not [w for w in caught if "least populated" in str(w.message)]
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert lines == [
        "fold split: Clothing (6) has fewer annotations than the 7 folds, so some folds' validation sets hold none "
        "of it"
    ]
    assert digest(sample_root) == before


def test_folds_no_class_can_fill_is_one_line(tiny_coco: Path, tmp_path: Path) -> None:
    with pytest.raises(FoldError, match=r"^--folds 2: no class has 2 annotations to share out among the folds "):
        split_json(tiny_coco, 2, tmp_path / "folds")
    assert not (tmp_path / "folds").exists()


# ---- e. the viewer without its packages; overlays of huge photos -----------------------------------------------


@pytest.mark.slow
def test_the_viewer_without_pyarrow_says_what_to_install(sample_root: Path, tmp_path: Path) -> None:
    code = (
        "import sys, runpy; sys.modules['pyarrow'] = None; "
        f"sys.argv = [{str(VIEWER)!r}, '--data-root', {str(sample_root)!r}]; "
        f"runpy.run_path({str(VIEWER)!r}, run_name='__main__')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"viewer.py: the viewer needs pyarrow, not installed for {sys.executable}: install it (pip install pyarrow, "
        "or pip install -r requirements.txt, whose streamlit brings pandas, pyarrow and altair)"
    ]
    assert list(tmp_path.iterdir()) == []


def test_the_viewer_page_without_pandas_says_it_once(monkeypatch, sample_root: Path) -> None:
    pytest.importorskip("streamlit")
    from streamlit import config as st_config
    from streamlit.testing.v1 import AppTest

    monkeypatch.setitem(sys.modules, "pandas", None)
    monkeypatch.setattr(sys, "argv", [str(VIEWER), "--data-root", str(sample_root)])
    previous = st_config.get_option("server.address")
    st_config.set_option("server.address", "127.0.0.1")
    try:
        app = AppTest.from_file(str(VIEWER), default_timeout=60).run()
    finally:
        st_config.set_option("server.address", previous)
    assert [e.value for e in app.error] == [
        f"Cannot start: the viewer needs pandas, not installed for {sys.executable}: install it (pip install pandas, "
        "or pip install -r requirements.txt, whose streamlit brings pandas, pyarrow and altair)"
    ]
    assert not app.exception


def test_an_overlay_of_a_huge_photo_is_bounded() -> None:
    image = np.full((6000, 4500, 3), 90, np.uint8)  # 81 MB
    label = np.zeros((6000, 4500), np.uint8)
    label[1000:5000, 1000:3000] = 3
    tracemalloc.start()
    try:
        picture = overlay(image, label, PALETTE)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert picture.shape == (2048, 1536, 3) and picture.dtype == np.uint8
    assert peak < 100e6  # the shrunk copy and its buffers: tens of MB (the whole-size blend took 2.4 GB)
    assert (picture[1024, 768] == ((90 + np.array(PALETTE[3][::-1])) // 2)).all()  # blended at half alpha

    # the viewer's picture of that photo with a 256x256 prediction
    shown = overlay_picture(image, np.full((256, 256), 2, np.uint8), PALETTE)
    assert shown.shape == (2048, 1536, 3)


def test_predict_overlays_of_a_huge_photo_are_bounded(tmp_path: Path) -> None:
    from mask2former.io.probabilities import save_probabilities
    from mask2former.pipeline.predict import overlay_path, write_outputs

    photo = tmp_path / "data" / "big.jpg"
    photo.parent.mkdir()
    cv2.imwrite(str(photo), np.full((3000, 2400, 3), 128, np.uint8))
    out = tmp_path / "out"
    probs = np.zeros((11, 64, 64), np.float32)
    probs[0] = 1.0
    probs[:, 16:48, 16:48] = np.eye(11, dtype=np.float32)[4][:, None, None]
    names = ["Background", *(f"c{i}" for i in range(1, 11))]
    save_probabilities(out, "big.jpg", 0, probs, 3000, 2400, names)
    images = [{"id": 0, "file_name": "big.jpg", "path": str(photo), "height": 3000, "width": 2400}]
    write_outputs(out, images, names, overlays=1, skip_bad=False)
    picture = cv2.imread(str(overlay_path(out, "big.jpg")))
    assert picture.shape == (2048, 2 * 1638, 3)  # photo and overlay side by side, each at most 2048 long
