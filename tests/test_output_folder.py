"""The output-folder contract (docs/output_folders.md): the helper's rules, every writing tool refusing a folder
of the user's (hashing every file before and after), and the cases of issue 22 where a tool replaced a user's
file or reused a stale result."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import REPO, TINY_MODEL, tiny_run_argv, tree_hashes

from mask2former.config import load_config
from mask2former.engine.launch import main as train_net
from mask2former.io.probabilities import ProbabilityFileError, probability_path, read_prediction_folder
from mask2former.modeling.build import build_model
from mask2former.pipeline import pseudo_label as loop
from mask2former.pipeline.predict import parse_args, predict
from mask2former.utils.output_folder import (
    OWNER_FILE,
    OutputFolderError,
    claim_output_folder,
    file_sha1,
    owned_output_folder,
    read_owner,
    refuse_input_overlap,
)

CONFIG = str(REPO / "configs" / "quickstart.yaml")
SIZES = ["INPUT.MIN_SIZE_TEST", "64", "MODEL.DEVICE", "cpu"]


def tool_main(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_tool", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def one_line_refusal(capsys, call) -> str:
    """Run a tool's main, which must exit 2 with one line on stderr (no traceback); returns that line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        call()
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line]
    assert stop.value.code == 2 and "Traceback" not in err, err
    assert len(lines) == 1, err
    return lines[0]


# ---- the helper's rules -------------------------------------------------------------------------------------------


def test_new_and_empty_folders_become_the_tools_and_the_same_job_resumes(tmp_path: Path) -> None:
    new = claim_output_folder(tmp_path / "new", "tool.py", {"a": 1})
    assert not new.resumed and read_owner(tmp_path / "new")["tool"] == "tool.py"
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".lock").write_text("")  # a killed run's lock does not make a folder someone's
    assert not claim_output_folder(tmp_path / "empty", "tool.py", {"a": 1}).resumed
    new.record("result.txt", tmp_path / "new" / "sub")
    again = claim_output_folder(tmp_path / "new", "tool.py", {"a": 1})
    assert again.resumed and again.entries == ["result.txt", "sub"]


def test_other_jobs_other_tools_and_foreign_folders_are_refused(tmp_path: Path) -> None:
    owned = claim_output_folder(tmp_path / "out", "tool.py", {"json": "val.json", "size": 256})
    owned.record("probs", "meta.json")
    (tmp_path / "out" / "probs").mkdir()
    (tmp_path / "out" / "probs" / "a.npz").write_bytes(b"x")
    (tmp_path / "out" / "meta.json").write_text("{}")
    (tmp_path / "out" / "notes.txt").write_text("the user's")  # not recorded: never deleted
    before = tree_hashes(tmp_path)
    with pytest.raises(OutputFolderError) as error:
        claim_output_folder(tmp_path / "out", "tool.py", {"json": "test.json", "size": 256})
    assert str(error.value) == (
        f"--out {tmp_path / 'out'} holds tool.py's outputs made with other settings (json: val.json before, "
        "test.json now): use another --out"
    )
    with pytest.raises(OutputFolderError, match=r"or --overwrite to replace them$"):
        claim_output_folder(tmp_path / "out", "tool.py", {"json": "test.json", "size": 256}, overwrite=False)
    with pytest.raises(OutputFolderError, match=r"holds the outputs of tool.py \(made .*\), which other.py would"):
        claim_output_folder(tmp_path / "out", "other.py", {"json": "val.json", "size": 256})
    assert tree_hashes(tmp_path) == before
    # --overwrite: what the tool recorded is deleted, nothing else
    again = claim_output_folder(tmp_path / "out", "tool.py", {"json": "test.json", "size": 256}, overwrite=True)
    assert not again.resumed and again.entries == []
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [OWNER_FILE, "notes.txt"]
    assert read_owner(tmp_path / "out")["job"] == {"json": "test.json", "size": 256}

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "submission.csv").write_text("mine")
    (mine / "other.txt").write_text("mine")
    with pytest.raises(OutputFolderError) as error:
        claim_output_folder(mine, "predict.py", {}, writes=["meta.json", "submission.csv"], overwrite=True)
    assert str(error.value) == (
        f"--out {mine} is not a folder predict.py made ({mine / 'submission.csv'} would be replaced): give a new or "
        "empty folder"
    )
    with pytest.raises(OutputFolderError, match=r"\(it holds other.txt, submission.csv\)"):
        claim_output_folder(mine, "evaluate.py", {}, writes=["stats.json"])
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputFolderError, match="is a file: give a folder"):
        claim_output_folder(tmp_path / "file", "tool.py", {})
    assert not (mine / OWNER_FILE).exists() and (tmp_path / "file").read_text() == "x"


def test_a_refused_folder_is_not_even_locked(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "a.txt").write_text("mine")
    with pytest.raises(OutputFolderError), owned_output_folder(mine, "tool.py", {}):
        pass
    assert sorted(p.name for p in mine.iterdir()) == ["a.txt"]


# ---- every writing tool, a folder (or file) of the user's ---------------------------------------------------------


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_model(load_config(CONFIG, TINY_MODEL + SIZES, freeze=False))
    path = tmp_path_factory.mktemp("weights") / "tiny.pth"
    torch.save({"model": model.state_dict()}, path)
    return path


def predict_argv(json_path: Path, out: Path, weights: Path, *flags: str) -> list[str]:
    argv = ["--config-file", CONFIG, "--weights", str(weights), "--json", str(json_path), "--out", str(out)]
    return [*argv, "--overlays", "1", *flags, *TINY_MODEL, *SIZES]


@pytest.fixture(scope="module")
def val_predictions(sample_root: Path, weights: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("val") / "preds"
    predict(parse_args(predict_argv(sample_root / "val.json", out, weights)))
    return out


def _argv(tool: str, sample_root: Path, weights: Path, preds: Path, out: Path) -> list[str]:
    """Each writing tool's command line with `out` as its output (a folder, or the file of a one-file tool)."""
    val, test = str(sample_root / "val.json"), str(sample_root / "test.json")
    return {
        "predict": predict_argv(Path(test), out, weights),
        "ensemble_crf": [str(preds), "--json", val, "--out", str(out)],
        "pseudo_label": ["--config-file", CONFIG, "--weights", str(weights), "--unlabeled", test, "--out", str(out)],
        "evaluate": ["--gt", val, "--pred", str(preds / "submission.csv"), "--out", str(out)],
        "inspect_dataset": ["--json", val, "--out", str(out), "--num", "2"],
        "split_folds": ["--json", str(sample_root / "train_all.json"), "--folds", "2", "--out", str(out)],
        "make_sample_dataset": ["--out", str(out), "--num-train", "2", "--num-test", "1", "--overwrite"],
        "copy_paste_preview": [
            "--config-file",
            CONFIG,
            "--out",
            str(out),
            "--num",
            "1",
            "DATASETS.ROOT",
            str(sample_root),
        ],
        "convert_checkpoint": [str(weights), str(out), "--overwrite"],
        "tune_crf": [str(preds), "--gt", val, "--out", str(out), "--sxy", "3"],
    }[tool]


# (tool, the user's file in --out that the tool would write, or None for a one-file tool's own OUT)
WRITERS = [
    ("predict", "submission.csv"),
    ("ensemble_crf", "meta.json"),
    ("pseudo_label", "rounds.md"),
    ("evaluate", "sem_seg_metrics.json"),
    ("inspect_dataset", "stats.json"),
    ("split_folds", "train_fold0.json"),
    ("make_sample_dataset", "train.json"),
    ("copy_paste_preview", "notes.txt"),
    ("convert_checkpoint", None),
    ("tune_crf", None),
]


@pytest.mark.parametrize(("tool", "clash"), WRITERS, ids=[tool for tool, _ in WRITERS])
def test_a_users_file_in_out_is_never_replaced(
    tool: str, clash: str | None, sample_root, weights, val_predictions, tmp_path, capsys
) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    if clash is None:  # a one-file tool: OUT is a file of the user's
        out = mine / ("model.safetensors" if tool == "convert_checkpoint" else "table.md")
        out.write_text("the user's own file\n")
    else:
        out = mine
        (mine / clash).write_text("the user's own file\n")
    before = tree_hashes(tmp_path, sample_root, val_predictions, weights.parent)
    line = one_line_refusal(capsys, lambda: tool_main(tool)(_argv(tool, sample_root, weights, val_predictions, out)))
    assert f"{tool}.py" in line and str(out) in line, line
    if clash is not None:
        assert "is not a folder" in line and "give a new or empty folder" in line, line
    else:
        assert "exists and was not written by" in line, line
    assert tree_hashes(tmp_path, sample_root, val_predictions, weights.parent) == before


def test_train_net_refuses_a_users_folder_and_never_replaces_its_config(sample_root, tmp_path, capsys) -> None:
    """The issue's case: --config-file out/config.yaml OUTPUT_DIR out replaced the user's commented config and
    metrics.csv, exit 0."""
    out = tmp_path / "out"
    out.mkdir()
    config = out / "config.yaml"
    config.write_text(f"# my notes\n_BASE_: {CONFIG}\n")
    (out / "metrics.csv").write_text("my,numbers\n")
    before = tree_hashes(out)
    argv = tiny_run_argv(sample_root, out)
    argv[argv.index("--config-file") + 1] = str(config)
    line = one_line_refusal(capsys, lambda: train_net(argv))
    assert line.endswith(
        f"OUTPUT_DIR {out} is not a folder train_net.py made ({out / 'metrics.csv'} would be replaced): give a new "
        "or empty folder"  # config.yaml is the --config-file: an input, never replaced, so not the one named
    ), line
    assert tree_hashes(out) == before


@pytest.mark.slow
def test_train_net_resume_keeps_the_given_config_and_refuses_a_run_without_checkpoints(
    sample_root, tmp_path, capsys
) -> None:
    out = tmp_path / "run"
    train_net(tiny_run_argv(sample_root, out, max_iter=2, period=1))
    assert read_owner(out)["tool"] == "train_net.py"
    config = out / "config.yaml"
    config.write_text("# my comment\n" + config.read_text())  # the run's config, annotated by its user
    argv = tiny_run_argv(sample_root, out, "SOLVER.MAX_ITER", "3", max_iter=2, period=1)
    argv[argv.index("--config-file") + 1] = str(config)
    train_net(["--resume", *argv])
    assert config.read_text().startswith("# my comment\n")  # an input is never replaced
    # --resume after checkpoints/ was deleted: the finished run's files are kept, nothing starts over
    shutil.rmtree(out / "checkpoints")
    before = tree_hashes(out)
    line = one_line_refusal(capsys, lambda: train_net(["--resume", *argv]))
    assert (
        f"--resume: OUTPUT_DIR {out} holds a run's results (model_final.pth, final_metrics.json, metrics.csv) but no "
        "checkpoint to continue from"
    ) in line, line
    assert tree_hashes(out) == before


def test_predict_into_a_symlink_to_a_users_folder_is_refused(sample_root, weights, tmp_path, capsys) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "meta.json").write_text('{"mine": true}')
    (tmp_path / "link").symlink_to(mine)
    before = tree_hashes(mine)
    argv = predict_argv(sample_root / "test.json", tmp_path / "link", weights)
    line = one_line_refusal(capsys, lambda: tool_main("predict")(argv))
    assert "is not a folder predict.py made" in line and "meta.json would be replaced" in line, line
    assert tree_hashes(mine) == before


def test_pseudo_label_overwrite_never_deletes_a_users_round_folder(sample_root, weights, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    (out / "round_1").mkdir(parents=True)
    (out / "round_1" / "notes.txt").write_text("my round")
    before = tree_hashes(out)
    argv = ["--config-file", CONFIG, "--weights", str(weights), "--unlabeled", str(sample_root / "test.json")]
    line = one_line_refusal(capsys, lambda: tool_main("pseudo_label")([*argv, "--out", str(out), "--overwrite"]))
    assert f"--out {out} is not a folder pseudo_label.py made (it holds round_1)" in line, line
    assert tree_hashes(out) == before


# ---- nothing stale reused -----------------------------------------------------------------------------------------


def test_predict_redoes_a_changed_image_and_refuses_another_image_list(sample_root, weights, tmp_path) -> None:
    data = tmp_path / "data"
    shutil.copytree(sample_root, data)
    out = tmp_path / "pred"
    predict(parse_args(predict_argv(data / "test.json", out, weights)))
    images = json.loads((data / "test.json").read_text())["images"]
    first = probability_path(out, images[0]["file_name"]).read_bytes()
    # the same name, another photo: predicted again, not reported as done
    changed = data / images[0]["file_name"]
    cv2.imwrite(str(changed), np.full((512, 512, 3), 255, np.uint8))
    predict(parse_args(predict_argv(data / "test.json", out, weights)))
    meta = json.loads((out / "meta.json").read_text())
    assert (meta["skipped"], meta["predicted"], meta["redone"]) == (len(images) - 1, 1, 1)
    assert probability_path(out, images[0]["file_name"]).read_bytes() != first
    # the same OUT for another json: refused; --overwrite deletes the old job's files first
    with pytest.raises(OutputFolderError, match=r"made with other settings \(json: .*test.json before, .*val.json now"):
        predict(parse_args(predict_argv(data / "val.json", out, weights)))
    predict(parse_args(predict_argv(data / "val.json", out, weights, "--overwrite")))
    val_names = {image["file_name"] for image in json.loads((data / "val.json").read_text())["images"]}
    left = {p.relative_to(out / "probs").with_suffix(".jpg").as_posix() for p in (out / "probs").rglob("*.npz")}
    assert left == val_names


def test_an_unfinished_or_mixed_prediction_folder_is_read_as_what_its_run_made(val_predictions, tmp_path) -> None:
    folder = tmp_path / "preds"
    shutil.copytree(val_predictions, folder)
    meta = json.loads((folder / "meta.json").read_text())
    listed = read_prediction_folder(folder)
    assert listed.file_names == meta["file_names"] and len(listed.files) == len(meta["file_names"])
    # an npz of another job left in probs/: not one of the folder's images
    stray = folder / "probs" / "stray" / "x.npz"
    stray.parent.mkdir()
    shutil.copy(next(iter(listed.files.values())), stray)
    assert "stray/x.npz" not in read_prediction_folder(folder).files
    # a run that did not finish: refused, naming its meta.json
    (folder / "meta.json").write_text(json.dumps({**meta, "complete": False}))
    with pytest.raises(ProbabilityFileError, match=r"meta.json says its run did not finish \(complete: false\)"):
        read_prediction_folder(folder)


def test_ensemble_without_json_refuses_an_unfinished_folder(val_predictions, tmp_path, capsys) -> None:
    folder = tmp_path / "preds"
    shutil.copytree(val_predictions, folder)
    meta = json.loads((folder / "meta.json").read_text())
    (folder / "meta.json").write_text(json.dumps({**meta, "complete": False}))
    line = one_line_refusal(capsys, lambda: tool_main("ensemble_crf")([str(folder), "--out", str(tmp_path / "ens")]))
    assert "did not finish (complete: false)" in line, line
    assert not (tmp_path / "ens").exists()


def test_a_resumed_pseudo_label_run_checks_its_finished_rounds_still_exist(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    model = out / "round_1" / "train" / "model_final.pth"
    entry = {"round": 1, "start_round": 0, "weights": str(model), "mIoU": 0.5, "kept": True}
    (out / "state.json").write_text(json.dumps({"settings": {}, "rounds": [entry], "best": {"round": 1}}))
    with pytest.raises(loop.PseudoLabelError, match=r"round 1 finished, but its model .*model_final.pth is missing"):
        loop.existing_state(out, overwrite=False)
    model.parent.mkdir(parents=True)
    model.write_bytes(b"weights")
    assert loop.existing_state(out, overwrite=False)["rounds"] == [entry]


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


def test_ensemble_refuses_predictions_of_an_image_that_changed_since(sample_root, weights, tmp_path, capsys) -> None:
    data = tmp_path / "data"
    shutil.copytree(sample_root, data)
    preds = tmp_path / "preds"
    predict(parse_args(predict_argv(data / "test.json", preds, weights)))
    name = json.loads((data / "test.json").read_text())["images"][1]["file_name"]
    cv2.imwrite(str(data / name), np.full((512, 512, 3), 40, np.uint8))  # another photo under the same name
    argv = [str(preds), "--json", str(data / "test.json"), "--out", str(tmp_path / "ens")]
    line = one_line_refusal(capsys, lambda: tool_main("ensemble_crf")(argv))
    assert f"{probability_path(preds, name)} was predicted from another version of {data / name}" in line, line
    assert not (tmp_path / "ens").exists()


def test_a_summary_and_an_error_reach_the_terminal_once_and_the_log_file_too(sample_root, weights, tmp_path, capsys):
    out = tmp_path / "pred"
    capsys.readouterr()
    tool_main("predict")(predict_argv(sample_root / "test.json", out, weights))
    captured = capsys.readouterr()
    summary = [line for line in captured.out.splitlines() if line.startswith("predict.py: ")]
    assert len(summary) == 1 and summary[0] not in captured.err, captured.err
    assert summary[0] in (out / "log.txt").read_text()
    # a refusal after the run's logging was set up: `tool.py: message` on the terminal, and in no other form
    line = one_line_refusal(capsys, lambda: tool_main("predict")(predict_argv(sample_root / "val.json", out, weights)))
    assert line.startswith(f"predict.py: --out {out} holds predict.py's outputs made with other settings"), line


def test_a_claim_that_holds_no_output_yet_is_taken_for_another_job(tmp_path: Path) -> None:
    """A run that failed before its first output left only its log, empty folders and an unfinished job record:
    a run with other settings takes the folder without --overwrite (the log kept); one output there refuses it."""
    out = tmp_path / "out"
    failed = claim_output_folder(out, "tool.py", {"weights": "bad.pth"})
    failed.record("log.txt", "meta.json", "probs", "submission.csv")
    (out / "log.txt").write_text("the failed run's log\n")
    (out / "meta.json").write_text(json.dumps({"complete": False}))
    (out / "probs" / "deeper").mkdir(parents=True)
    (out / "notes.txt").write_text("the user's")
    again = claim_output_folder(out, "tool.py", {"weights": "good.pth"})
    assert not again.resumed and read_owner(out)["job"] == {"weights": "good.pth"}
    assert sorted(p.name for p in out.iterdir()) == [OWNER_FILE, "log.txt", "notes.txt"]
    assert (out / "log.txt").read_text() == "the failed run's log\n"

    for output in ("probs/deeper/a.npz", "meta.json", "submission.csv"):  # any one output, or a finished record
        again.record("log.txt", "meta.json", "probs", "submission.csv")
        (out / "probs" / "deeper").mkdir(parents=True, exist_ok=True)
        (out / "meta.json").write_text(json.dumps({"complete": False}))
        (out / output).write_text(json.dumps({"complete": True}))
        with pytest.raises(OutputFolderError, match="made with other settings"):
            claim_output_folder(out, "tool.py", {"weights": "other.pth"})
        (out / output).unlink()
        assert claim_output_folder(out, "tool.py", {"weights": "good.pth"}).resumed


def test_predict_failing_on_its_weights_leaves_out_free_for_the_corrected_run(
    sample_root, weights, tmp_path, capsys
) -> None:
    """The weights fail inside the run (after OUT was claimed): `predict.py: ...`, status 2, and the same command
    with the right weights then runs in that OUT."""
    bad = tmp_path / "bad.pth"
    bad.write_bytes(bytes(range(100)))
    out = tmp_path / "pred"
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        tool_main("predict")(predict_argv(sample_root / "test.json", out, bad))
    err = capsys.readouterr().err
    line = err.strip().splitlines()[-1]
    assert stop.value.code == 2 and "Traceback" not in err and err.count(f"{bad} is binary") == 1, err
    assert line.startswith(f"predict.py: {bad} is binary data of another kind"), line
    assert line.removeprefix("predict.py: ") in (out / "log.txt").read_text()
    tool_main("predict")(predict_argv(sample_root / "test.json", out, weights))
    assert json.loads((out / "meta.json").read_text())["complete"] is True
    assert read_owner(out)["job"]["weights_sha1"] != [file_sha1(bad)]


def test_an_output_folder_never_holds_nor_lies_in_an_input(tmp_path: Path) -> None:
    data, out = tmp_path / "data", tmp_path / "out"
    (data / "sub").mkdir(parents=True)
    (out / "probs").mkdir(parents=True)
    (out / "mine.yaml").write_text("x")
    names = ["probs", "meta.json"]
    refuse_input_overlap(
        out, "t.py", {"--json": data / "a.json", "--config": out / "mine.yaml", "--x": None}, names=names
    )
    with pytest.raises(OutputFolderError, match=r"^--out .*/data is the input --data .*: give t.py another --out$"):
        refuse_input_overlap(data, "t.py", {"--data": data}, names=names)
    with pytest.raises(OutputFolderError, match=r"lies inside the input --data .*: give a folder outside it$"):
        refuse_input_overlap(data / "sub" / "out", "t.py", {"--data": data}, names=names)
    for given, where in ((out / "probs", "is"), (out / "probs" / "a.npz", "lies in")):
        with pytest.raises(OutputFolderError, match=rf"^--in {given} {where} {out / 'probs'}, which t.py writes in"):
            refuse_input_overlap(out, "t.py", {"--in": given}, names=names)
