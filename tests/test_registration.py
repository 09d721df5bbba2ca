"""Registration of the competition splits and custom datasets; real and generated data render cleanly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TRASHBAGS

from mask2former.config import get_cfg
from mask2former.data import (
    TRASH_CLASSES,
    TRASH_PALETTE,
    DatasetCatalog,
    MetadataCatalog,
    register_coco_semantic,
    register_datasets_from_config,
    register_trash_datasets,
)
from mask2former.data.coco_semantic import load_with_manifest


def test_trash_splits_register_and_render_without_skips(sample_root: Path, cache_dir: Path) -> None:
    names = register_trash_datasets(sample_root, cache_dir=cache_dir)
    assert names == ["trash_train_all", "trash_train", "trash_val", "trash_test"]
    train_all, train, val = (DatasetCatalog.get(n) for n in names[:3])
    assert len(train) + len(val) == len(train_all) == 20
    assert all(Path(d["sem_seg_file_name"]).is_file() for d in train_all)
    meta = MetadataCatalog.get("trash_train")
    assert tuple(meta.stuff_classes) == TRASH_CLASSES
    assert [tuple(c) for c in meta.stuff_colors] == list(TRASH_PALETTE)
    assert meta.ignore_label == 255 and meta.evaluator_type == "sem_seg"
    test = DatasetCatalog.get("trash_test")
    assert len(test) == 6 and all("sem_seg_file_name" not in d for d in test)
    for split in ("train_all", "train", "val", "test"):
        _, manifest = load_with_manifest(sample_root / f"{split}.json", sample_root, cache_dir)
        assert manifest["skipped"]["skipped_images"] == 0 and manifest["skipped"]["skipped_annotations"] == 0


@pytest.mark.skipif(not TRASHBAGS.is_dir(), reason="shared/data/trashbags is not beside this checkout")
@pytest.mark.slow
def test_real_trashbag_photos_register_and_render_without_skips(cache_dir: Path) -> None:
    register_coco_semantic("trashbags", TRASHBAGS / "train_all.json", TRASHBAGS, cache_dir=cache_dir)
    dicts = DatasetCatalog.get("trashbags")
    assert len(dicts) == 300
    assert MetadataCatalog.get("trashbags").stuff_classes == [
        "Background",
        "general_trashbag",
        "other_trashbag",
    ]
    _, manifest = load_with_manifest(TRASHBAGS / "train_all.json", TRASHBAGS, cache_dir)
    assert manifest["skipped"]["skipped_images"] == 0 and manifest["skipped"]["skipped_annotations"] == 0


def test_register_from_config_root_env_and_custom(sample_root: Path, cache_dir: Path, monkeypatch) -> None:
    cfg = get_cfg()
    cfg.DATASETS.LABEL_CACHE_DIR = str(cache_dir)
    cfg.DATASETS.REGISTER = [["my_val", str(sample_root / "val.json"), str(sample_root)]]
    cfg.DATASETS.TRAIN = ("trash_train",)
    cfg.DATASETS.TEST = ("my_val",)
    monkeypatch.setenv("TRASH_DATA", str(sample_root))
    names = register_datasets_from_config(cfg)
    assert names == ["trash_train_all", "trash_train", "trash_val", "trash_test", "my_val"]
    assert MetadataCatalog.get("trash_train").json_file == str((sample_root / "train.json").resolve())
    assert len(DatasetCatalog.get("my_val")) == len(DatasetCatalog.get("trash_val"))
    register_datasets_from_config(cfg)  # registering the same thing again is a no-op


def test_config_naming_an_unregistered_dataset(monkeypatch) -> None:
    monkeypatch.delenv("TRASH_DATA", raising=False)
    cfg = get_cfg()
    with pytest.raises(KeyError, match=r"'trash_train' is named in the config but not registered.*TRASH_DATA"):
        register_datasets_from_config(cfg)
    cfg.DATASETS.REGISTER = [["only_two", "x.json"]]
    with pytest.raises(ValueError, match=r"\[name, json_file, image_root\]"):
        register_datasets_from_config(cfg)


def test_reregistering_a_name_with_other_files_fails(sample_root: Path) -> None:
    register_coco_semantic("custom", sample_root / "train.json", sample_root)
    with pytest.raises(KeyError, match="already registered with .*train.json.*refusing.*val.json"):
        register_coco_semantic("custom", sample_root / "val.json", sample_root)


def test_class_list_comes_from_the_json(tmp_path: Path, sample_root: Path, cache_dir: Path) -> None:
    data = json.loads((sample_root / "val.json").read_text())
    data["categories"] = [{"id": c["id"], "name": c["name"].upper()} for c in data["categories"]]
    (sample_root / "val_upper.json").write_text(json.dumps(data))
    register_coco_semantic("upper", sample_root / "val_upper.json", sample_root, cache_dir=cache_dir)
    DatasetCatalog.get("upper")
    meta = MetadataCatalog.get("upper")
    assert meta.stuff_classes[1] == "GENERAL TRASH"
    assert [tuple(c) for c in meta.stuff_colors] == list(TRASH_PALETTE)  # names match case-insensitively
    (sample_root / "val_upper.json").unlink()
