"""Every number and value checked (issue 22, point 4) and the label cache's own check (point 2): weights of the
wrong dtype, class counts and class lists, config and command-line values that cannot work, hostile YAML,
`area: 0` annotations, an edited cached label map. Each refusal is one line (exit status 2 from a tool) and
changes no file."""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import logging
import re
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import REPO, TINY_MODEL, tiny_coco_dict, tiny_run_argv, write_tiny_coco

from mask2former.config import ConfigError, load_config
from mask2former.data import coco_semantic
from mask2former.data.coco_semantic import ClassListError, load_sem_seg_dataset
from mask2former.engine import launch
from mask2former.errors import UserError
from mask2former.inference.predictor import load_prediction_model
from mask2former.io.checkpoints import CheckpointDtypeError, CheckpointMismatchError, read_checkpoint
from mask2former.io.coco_json import DataError
from mask2former.modeling.build import build_model
from mask2former.modeling.weights import load_checkpoint_into, load_model_weights
from mask2former.pipeline import evaluate as evaluate_pipeline

QUICKSTART = str(REPO / "configs" / "quickstart.yaml")
CPU = ["MODEL.DEVICE", "cpu"]


def tree_hashes(*roots: Path) -> dict[str, str]:
    """sha1 of every file under `roots` (a file root: itself)."""
    hashes = {}
    for root in roots:
        for path in [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()):
            hashes[str(path)] = hashlib.sha1(path.read_bytes()).hexdigest()
    return hashes


def tool(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_tool", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def refused(capsys, call, tool_name: str, message: str) -> str:
    """Run a tool's main; assert exit status 2 and ONE stderr line `<tool>: ...` matching `message`."""
    with pytest.raises(SystemExit) as stop:
        call()
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    # `tool: message` before logging is set up, `[time tool ERROR] message` (also in log.txt) after
    lines = [line for line in err if line.startswith(f"{tool_name}: ") or f" {tool_name} ERROR] " in line]
    assert len(lines) == 1, err
    text = re.sub(rf"^\[[^]]* {re.escape(tool_name)} ERROR\] ", f"{tool_name}: ", lines[0])
    assert re.search(message, text), text
    return text


def tiny_cfg(config: str = QUICKSTART, *opts: str):
    return load_config(config, [*TINY_MODEL, *CPU, *opts])


@pytest.fixture(scope="module")
def tiny_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return build_model(tiny_cfg()).state_dict()


# ---- 1. weights stored as integers or booleans ------------------------------------------------------------------


def test_integer_and_bool_weights_are_refused_naming_file_and_key(tiny_state, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    key = "sem_seg_head.predictor.class_embed.weight"
    as_int = dict(tiny_state, **{key: tiny_state[key].to(torch.int64)})
    pth = tmp_path / "int.pth"
    torch.save({"model": as_int}, pth)
    as_bool = {k: v.contiguous() for k, v in tiny_state.items()}
    as_bool["sem_seg_head.predictor.class_embed.bias"] = tiny_state["sem_seg_head.predictor.class_embed.bias"] > 0
    st = tmp_path / "bool.safetensors"
    save_file(as_bool, str(st))
    before = tree_hashes(tmp_path)

    model = build_model(tiny_cfg())
    with pytest.raises(CheckpointDtypeError, match=rf"^{pth}: {key} is stored as torch\.int64, .*float: a damaged or "):
        load_checkpoint_into(model, pth)
    with pytest.raises(CheckpointDtypeError, match=r"bool\.safetensors: .*class_embed\.bias is stored as torch\.bool"):
        read_checkpoint(st)
    # a state dict handed to the loader: every key compared with the model's dtype
    empty = dict(tiny_state, **{"criterion.empty_weight": tiny_state["criterion.empty_weight"].to(torch.int32)})
    with pytest.raises(
        CheckpointDtypeError,
        match=r"^x\.pth: criterion\.empty_weight is stored as torch\.int32, the model's parameter is float: a damaged "
        "or wrongly converted checkpoint",
    ):
        load_model_weights(model, empty, source="x.pth")
    assert tree_hashes(tmp_path) == before


def test_legitimate_integer_buffers_still_load(tiny_state, tmp_path: Path) -> None:
    # official Swin checkpoints carry their int64 relative_position_index buffers (the model recomputes them)
    index = "backbone.layers.0.blocks.0.attn.relative_position_index"
    path = tmp_path / "ok.pth"
    torch.save({"model": dict(tiny_state, **{index: torch.zeros(16, 16, dtype=torch.int64)})}, path)
    report = load_checkpoint_into(build_model(tiny_cfg()), path)
    assert report.fits() and not report.reinitialised
    # BatchNorm's num_batches_tracked (int64) through the R-50 model
    r50 = build_model(tiny_cfg(str(REPO / "configs" / "quickstart_r50.yaml")))
    state = r50.state_dict()
    assert any(key.endswith("num_batches_tracked") for key in state)
    torch.save({"model": state}, tmp_path / "r50.pth")
    assert load_checkpoint_into(r50, tmp_path / "r50.pth").fits()


# ---- 2. the class count a checkpoint was trained for ------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "trained", "configured"),
    [("quickstart.yaml", 5, 11), ("quickstart.yaml", 11, 7), ("quickstart_fpn.yaml", 5, 11)],
)
def test_class_count_message_counts_right(tmp_path: Path, config: str, trained: int, configured: int) -> None:
    """Mask2Former's class head has K + 1 rows (no object), a per-pixel classifier K: both say K."""
    path = str(REPO / "configs" / config)
    torch.manual_seed(0)
    model = build_model(tiny_cfg(path, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", str(trained)))
    checkpoint = tmp_path / "k.pth"
    torch.save({"model": model.state_dict()}, checkpoint)
    cfg = tiny_cfg(path, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", str(configured))
    with pytest.raises(
        CheckpointMismatchError,
        match=rf"^{checkpoint} was trained for {trained} classes, the config has {configured} "
        r"\(MODEL\.SEM_SEG_HEAD\.NUM_CLASSES; ",
    ):
        load_prediction_model(cfg, str(checkpoint), "cpu")


def test_class_head_of_another_width_is_no_class_count_change(tmp_path: Path) -> None:
    """Only the class rows differing is a class-count change; a class head of another width is another model."""
    torch.manual_seed(0)
    wide = build_model(tiny_cfg(QUICKSTART, "MODEL.MASK_FORMER.HIDDEN_DIM", "64"))
    checkpoint = tmp_path / "wide.pth"
    torch.save({"model": wide.state_dict()}, checkpoint)
    with pytest.raises(CheckpointMismatchError) as error:
        load_prediction_model(tiny_cfg(), str(checkpoint), "cpu")
    message = str(error.value)
    assert "does not fit this model" in message and "shape-mismatched" in message
    assert "class count" not in message and "re-initialised" not in message and "trained for" not in message


# ---- 3. config values that cannot work --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("opts", "message"),
    [
        (["SOLVER.IMS_PER_BATCH", "0"], r"SOLVER\.IMS_PER_BATCH is 0, which cannot work: give the images per"),
        (["SOLVER.BASE_LR", "-1"], r"SOLVER\.BASE_LR is -1\.0, which cannot work: give a learning rate >= 0"),
        (
            ["MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "0"],
            r"MODEL\.MASK_FORMER\.NUM_OBJECT_QUERIES is 0, which cannot work: give the queries",
        ),
        (["DATALOADER.NUM_WORKERS", "-1"], r"DATALOADER\.NUM_WORKERS is -1, which cannot work: give data-loading"),
        (["INPUT.MIN_SIZE_TRAIN", "()"], r"INPUT\.MIN_SIZE_TRAIN is \[\], which cannot work: give one or more"),
        (
            ["TEST.AUG.ENABLED", "True", "TEST.AUG.MIN_SIZES", "[]"],
            r"TEST\.AUG\.MIN_SIZES is \[\], which cannot work: give one or more short sides .*--tta",
        ),
    ],
)
def test_config_values_that_cannot_work_are_one_line(capsys, tmp_path: Path, opts: list[str], message: str) -> None:
    out = tmp_path / "run"
    argv = ["--config-file", QUICKSTART, *CPU, "OUTPUT_DIR", str(out), *opts]
    refused(capsys, lambda: launch.main(argv), "train_net.py", rf"^train_net\.py: {message}")
    assert not out.exists()
    with pytest.raises(ConfigError, match=message):
        load_config(QUICKSTART, opts)


def test_predict_tta_without_sizes_is_one_line(capsys, sample_root: Path, tmp_path: Path) -> None:
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"unused: the config is refused first")
    before = tree_hashes(sample_root, weights)
    argv = ["--config-file", QUICKSTART, "--weights", str(weights), "--json", str(sample_root / "test.json")]
    argv += ["--out", str(tmp_path / "out"), "--tta", "TEST.AUG.MIN_SIZES", "[]", *CPU]
    refused(capsys, lambda: tool("predict").main(argv), "predict.py", r"TEST\.AUG\.MIN_SIZES is \[\], which cannot")
    assert not (tmp_path / "out").exists() and tree_hashes(sample_root, weights) == before


# ---- 4. command-line values --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--overlays", "-3", r"--overlays -3: give a number >= 0 of overlay PNGs"),
        ("--threads", "-2", r"--threads -2: give a number >= 0 of torch CPU threads"),
    ],
)
def test_predict_negative_counts_are_refused(
    capsys, sample_root: Path, tmp_path: Path, tiny_state, option: str, value: str, message: str
) -> None:
    weights = tmp_path / "w.pth"
    torch.save({"model": tiny_state}, weights)
    before = tree_hashes(sample_root, weights)
    argv = ["--config-file", QUICKSTART, "--weights", str(weights), "--json", str(sample_root / "test.json")]
    argv += ["--out", str(tmp_path / "out"), option, value, *TINY_MODEL, *CPU]
    refused(capsys, lambda: tool("predict").main(argv), "predict.py", rf"^predict\.py: {message}")
    assert not (tmp_path / "out").exists() and tree_hashes(sample_root, weights) == before


@pytest.mark.parametrize("option", ["--num-train", "--num-test"])
def test_make_sample_dataset_negative_counts_are_refused(capsys, tmp_path: Path, option: str) -> None:
    out = tmp_path / "sample"
    argv = ["--out", str(out), option, "-5"]
    refused(
        capsys,
        lambda: tool("make_sample_dataset").main(argv),
        "make_sample_dataset.py",
        rf"^make_sample_dataset\.py: {option} -5: give a number of images >= 0$",
    )
    assert not out.exists()


# ---- 5. hostile YAML ---------------------------------------------------------------------------------------------

BILLION_LAUGHS = """\
INPUT:
  MIN_SIZE_TRAIN: &a [512, 512, 512, 512, 512, 512, 512, 512, 512, 512]
  MAX_SIZE_TRAIN: 4096
TEST:
  AUG:
    MIN_SIZES: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]
DATASETS:
  TRAIN: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]
  TEST: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]
SOLVER:
  BETAS: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]
MODEL:
  PIXEL_MEAN: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]
  PIXEL_STD: [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]
"""


def test_yaml_aliases_that_expand_hugely_are_refused_before_expansion(capsys, tmp_path: Path) -> None:
    config = tmp_path / "laughs.yaml"
    config.write_text(BILLION_LAUGHS)
    before = tree_hashes(tmp_path)
    start = time.perf_counter()
    line = refused(
        capsys,
        lambda: launch.main(["--config-file", str(config), "OUTPUT_DIR", str(tmp_path / "run")]),
        "train_net.py",
        rf"^train_net\.py: {config}: its aliases \(\*name\) expand to more than 100000 values",
    )
    assert time.perf_counter() - start < 10 and len(line) < 400
    assert tree_hashes(tmp_path) == before


def test_yaml_alias_to_itself_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "loop.yaml"
    config.write_text("INPUT:\n  MIN_SIZE_TRAIN: &a [512, *a]\n")
    with pytest.raises(ConfigError, match=rf"^{config}, line 2: an alias refers to the block that contains it"):
        load_config(str(config))


def test_small_aliases_still_load(tmp_path: Path) -> None:
    config = tmp_path / "ok.yaml"
    config.write_text("INPUT:\n  MIN_SIZE_TRAIN: &sizes [256, 320]\nTEST:\n  AUG:\n    MIN_SIZES: *sizes\n")
    cfg = load_config(str(config))
    assert list(cfg.INPUT.MIN_SIZE_TRAIN) == list(cfg.TEST.AUG.MIN_SIZES) == [256, 320]


@pytest.mark.parametrize(
    ("text", "where", "key"),
    [
        ("SOLVER:\n  BASE_LR: 0.001\nINPUT:\n  MIN_SIZE_TEST: 256\nSOLVER:\n  MAX_ITER: 10\n", 5, "SOLVER"),
        ("SOLVER:\n  BASE_LR: 0.001\n  BASE_LR: 0.01\n", 3, "BASE_LR"),
    ],
)
def test_yaml_key_set_twice_is_an_error_naming_it(capsys, tmp_path: Path, text: str, where: int, key: str) -> None:
    config = tmp_path / "twice.yaml"
    config.write_text(text)
    before = tree_hashes(tmp_path)
    refused(
        capsys,
        lambda: launch.main(["--config-file", str(config), "OUTPUT_DIR", str(tmp_path / "run")]),
        "train_net.py",
        rf"^train_net\.py: {config}, line {where}: {key} is set a second time in the same block \(first at line",
    )
    assert tree_hashes(tmp_path) == before


def test_yaml_merge_keys_may_override(tmp_path: Path) -> None:
    config = tmp_path / "merge.yaml"
    config.write_text("SOLVER: &s\n  BASE_LR: 0.001\nTEST:\n  AUG:\n    <<: {MAX_SIZE: 100}\n    MAX_SIZE: 200\n")
    assert load_config(str(config)).TEST.AUG.MAX_SIZE == 200


# ---- 6. class lists ----------------------------------------------------------------------------------------------


def _swapped(data: dict) -> dict:
    data = copy.deepcopy(data)
    names = {c["id"]: c["name"] for c in data["categories"]}
    first, second = sorted(names)[:2]
    for category in data["categories"]:
        if category["id"] in (first, second):
            category["name"] = names[second if category["id"] == first else first]
    return data


def test_val_json_with_swapped_names_is_refused_naming_both(capsys, tmp_path: Path) -> None:
    root = tmp_path / "data"
    train = write_tiny_coco(root, name="train.json")
    val = write_tiny_coco(root, _swapped(tiny_coco_dict()), name="val.json")
    before = tree_hashes(root)
    register = f"[['mine_train', '{train}', '{root}'], ['mine_val', '{val}', '{root}']]"
    argv = ["--config-file", QUICKSTART, *CPU, "OUTPUT_DIR", str(tmp_path / "run"), "DATASETS.REGISTER", register]
    argv += ["DATASETS.TRAIN", "('mine_train',)", "DATASETS.TEST", "('mine_val',)"]
    argv += ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", "5", "DATASETS.LABEL_CACHE_DIR", str(tmp_path / "cache")]
    refused(
        capsys,
        lambda: launch.main(argv),
        "train_net.py",
        rf"dataset mine_val \({val}\): classes .* differ from dataset mine_train \({train}\)'s .*\(label 1 is "
        r"'Paper' there and 'General trash' in",
    )
    assert tree_hashes(root) == before and not (tmp_path / "run" / "model_final.pth").exists()


def test_model_recording_other_class_names_is_refused_by_predict(
    capsys, sample_root: Path, tmp_path: Path, tiny_state
) -> None:
    names = ["Background", *[c["name"] for c in json.loads((sample_root / "test.json").read_text())["categories"]]]
    names[1], names[2] = names[2], names[1]
    weights = tmp_path / "model_final.pth"
    torch.save({"model": tiny_state, "class_names": names}, weights)
    before = tree_hashes(sample_root, weights)
    argv = ["--config-file", QUICKSTART, "--weights", str(weights), "--json", str(sample_root / "test.json")]
    argv += ["--out", str(tmp_path / "out"), *TINY_MODEL, *CPU]
    refused(
        capsys,
        lambda: tool("predict").main(argv),
        "predict.py",
        rf"test\.json: classes .* differ from {weights} \(the classes it was trained on\)'s .*label 1 is",
    )
    assert not (tmp_path / "out").exists() and tree_hashes(sample_root, weights) == before


def test_evaluate_refuses_predictions_made_for_other_class_names(tmp_path: Path, tiny_coco: Path, cache_dir) -> None:
    preds = tmp_path / "preds"
    preds.mkdir()
    names = coco_semantic.class_names_from_categories(_swapped(tiny_coco_dict())["categories"])
    (preds / "meta.json").write_text(json.dumps({"class_names": names}))
    before = tree_hashes(preds, tiny_coco)
    options = evaluate_pipeline.EvaluateOptions(gt=str(tiny_coco), pred=str(preds), cache_dir=str(cache_dir))
    with pytest.raises(ClassListError, match=rf"^{preds / 'meta.json'}: classes .* differ from {tiny_coco}'s"):
        evaluate_pipeline.run(options)
    assert tree_hashes(preds, tiny_coco) == before


def test_trained_model_records_its_classes_and_eval_only_compares_them(
    capsys, sample_root: Path, tmp_path: Path
) -> None:
    """model_final.pth and the training checkpoints record the training set's class names; --eval-only on a json
    of the same count with swapped names is refused naming the json's dataset and the checkpoint."""
    from mask2former.io.checkpoints import recorded_class_names

    run = tmp_path / "run"
    assert launch.main(tiny_run_argv(sample_root, run, max_iter=2, period=2)) is not None
    names = coco_semantic.class_names_from_categories(
        json.loads((sample_root / "train.json").read_text())["categories"]
    )
    assert recorded_class_names(run / "model_final.pth") == names
    assert recorded_class_names(run / "checkpoints" / "last.ckpt") == names
    swapped = tmp_path / "swapped_val.json"
    swapped.write_text(json.dumps(_swapped(json.loads((sample_root / "val.json").read_text()))))
    before = tree_hashes(run, swapped)
    argv = tiny_run_argv(sample_root, tmp_path / "eval", "MODEL.WEIGHTS", str(run / "model_final.pth"))
    argv += [
        "DATASETS.REGISTER",
        f"[['swapped_val', '{swapped}', '{sample_root}']]",
        "DATASETS.TEST",
        "('swapped_val',)",
    ]
    refused(
        capsys,
        lambda: launch.main(["--eval-only", *argv]),
        "train_net.py",
        rf"dataset swapped_val: classes .* differ from MODEL\.WEIGHTS {run / 'model_final.pth'} \(the classes it "
        r"was trained on\)'s .*label 1 is 'Paper' there and 'General trash' in",
    )
    assert tree_hashes(run, swapped) == before


def test_record_of_class_names_in_a_training_checkpoint(tiny_state, tmp_path: Path) -> None:
    from mask2former.io.checkpoints import recorded_class_names

    torch.save({"model": tiny_state, "class_names": ["Background", "A"]}, tmp_path / "a.pth")
    torch.save({"model": tiny_state}, tmp_path / "old.pth")
    assert recorded_class_names(tmp_path / "a.pth") == ["Background", "A"]
    assert recorded_class_names(tmp_path / "old.pth") is None


@pytest.mark.parametrize("area", [0, 0.0, -3, "12"])
def test_annotation_area_zero_is_named(tmp_path: Path, cache_dir: Path, area) -> None:
    data = tiny_coco_dict()
    data["annotations"][2]["area"] = area  # id 12 on image 0: painted last, over the others
    json_path = write_tiny_coco(tmp_path, data)
    before = tree_hashes(tmp_path)
    with pytest.raises(
        DataError,
        match=rf"^{json_path}: image 'batch_01_vt/0000\.jpg' \(id 0\), annotation 12: area is {area!r}; .*set area "
        "to the object's pixel count",
    ):
        load_sem_seg_dataset(json_path, tmp_path, cache_dir)
    assert tree_hashes(tmp_path) == before
    # skipped on request, the others still painted
    dicts = load_sem_seg_dataset(json_path, tmp_path, cache_dir, skip_bad=True)
    assert len(dicts) == 3


# ---- 7. the label cache checks what it reads ---------------------------------------------------------------------


def test_edited_cached_label_map_is_rendered_again(tmp_path: Path, cache_dir: Path, caplog) -> None:
    json_path = write_tiny_coco(tmp_path)
    dicts = load_sem_seg_dataset(json_path, tmp_path, cache_dir)
    label = Path(dicts[0]["sem_seg_file_name"])
    original = label.read_bytes()
    ok, encoded = cv2.imencode(".png", np.zeros((48, 64), np.uint8))  # all background: mIoU 0 if trusted
    label.write_bytes(encoded.tobytes())
    removed = Path(dicts[1]["sem_seg_file_name"])
    removed.unlink()
    inputs = tree_hashes(json_path, tmp_path / "batch_01_vt")
    with caplog.at_level(logging.WARNING, logger="mask2former.data.coco_semantic"):
        again = load_sem_seg_dataset(json_path, tmp_path, cache_dir)
    assert again == dicts
    assert label.read_bytes() == original and removed.is_file()
    assert any(
        "2 label map(s) changed or vanished" in r.getMessage() and "rendering them again" in r.getMessage()
        for r in caplog.records
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mask2former.data.coco_semantic"):
        load_sem_seg_dataset(json_path, tmp_path, cache_dir)  # intact now: read as cached, silently
    assert not any("changed" in r.getMessage() for r in caplog.records)
    assert tree_hashes(json_path, tmp_path / "batch_01_vt") == inputs


def test_edited_given_label_map_is_checked_again(tmp_path: Path, cache_dir: Path) -> None:
    """A json that gives its label PNGs: a map edited after it was checked is checked again (values too)."""
    labels = tmp_path / "labels"
    labels.mkdir()
    data = tiny_coco_dict()
    data["annotations"] = []
    for image in data["images"]:
        cv2.imwrite(str(labels / f"{image['id']}.png"), np.ones((48, 64), np.uint8))
        image["sem_seg_file_name"] = f"labels/{image['id']}.png"
    json_path = write_tiny_coco(tmp_path, data, name="given.json")
    load_sem_seg_dataset(json_path, tmp_path, cache_dir)
    cv2.imwrite(str(labels / "0.png"), np.full((48, 64), 77, np.uint8))
    with pytest.raises(UserError, match=r"label map .*0\.png holds \[77\], outside 0\.\.4"):
        load_sem_seg_dataset(json_path, tmp_path, cache_dir)
