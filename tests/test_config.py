"""Config: defaults, _BASE_ inheritance, type-checked overrides, unknown keys with close matches."""

from __future__ import annotations

from pathlib import Path

import pytest

from mask2former.config import flatten_keys, get_cfg


def test_defaults_use_mask2former_key_names() -> None:
    cfg = get_cfg()
    keys = set(flatten_keys(cfg))
    for key in (
        "INPUT.MIN_SIZE_TRAIN",
        "INPUT.MAX_SIZE_TRAIN",
        "INPUT.CROP.SIZE",
        "INPUT.COLOR_AUG_SSD",
        "INPUT.CROP.SINGLE_CATEGORY_MAX_AREA",
        "INPUT.DATASET_MAPPER_NAME",
        "DATASETS.TRAIN",
        "DATASETS.TEST",
        "DATALOADER.NUM_WORKERS",
        "OUTPUT_DIR",
        "SEED",
    ):
        assert key in keys
    assert cfg.INPUT.MIN_SIZE_TRAIN[0] == 256 and cfg.INPUT.MIN_SIZE_TRAIN[-1] == 1024


def test_base_inheritance_and_overrides(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("INPUT:\n  CROP:\n    SIZE: (384, 384)\n  MIN_SIZE_TEST: 256\n")
    (tmp_path / "child.yaml").write_text("_BASE_: base.yaml\nINPUT:\n  MIN_SIZE_TEST: 640\n")
    cfg = get_cfg()
    cfg.merge_from_file(str(tmp_path / "child.yaml"))
    assert tuple(cfg.INPUT.CROP.SIZE) == (384, 384)
    assert cfg.INPUT.MIN_SIZE_TEST == 640
    cfg.merge_from_list(["INPUT.MIN_SIZE_TEST", "512", "DATASETS.TRAIN", "('a', 'b')"])
    assert cfg.INPUT.MIN_SIZE_TEST == 512 and cfg.DATASETS.TRAIN == ("a", "b")


def test_unknown_key_in_file_lists_close_matches(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("INPUT:\n  MIN_SIZE_TESTS: 640\n")
    with pytest.raises(KeyError, match=r"unknown config key 'INPUT.MIN_SIZE_TESTS'.*bad.yaml.*INPUT.MIN_SIZE_TEST"):
        get_cfg().merge_from_file(str(tmp_path / "bad.yaml"))


def test_unknown_key_on_command_line_lists_close_matches() -> None:
    with pytest.raises(KeyError, match=r"'INPUT.CROP.SIZES'.*command line.*INPUT.CROP.SIZE"):
        get_cfg().merge_from_list(["INPUT.CROP.SIZES", "(256, 256)"])
    with pytest.raises(ValueError, match="KEY VALUE pairs"):
        get_cfg().merge_from_list(["SEED"])


def test_override_types_are_checked() -> None:
    with pytest.raises(ValueError):
        get_cfg().merge_from_list(["INPUT.MIN_SIZE_TEST", "'large'"])
