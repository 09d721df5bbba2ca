"""Copy-paste of rare classes: the object bank, the paste itself, the mapper hook and the preview tool."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import REPO

from mask2former.config import get_cfg
from mask2former.data.classes import TRASH_CLASSES
from mask2former.data.coco_semantic import load_sem_seg_dataset
from mask2former.data.copy_paste import CopyPaste, build_object_bank, paste_objects, resolve_class_ids
from mask2former.data.dataset import MapDataset
from mask2former.data.mapper import SemanticSegMapper
from mask2former.data.trash import register_datasets_from_config
from mask2former.pipeline import copy_paste_preview

BATTERY, CLOTHING = TRASH_CLASSES.index("Battery"), TRASH_CLASSES.index("Clothing")
DRAWS = 200


@pytest.fixture(scope="module")
def train_dicts(sample_root: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    return load_sem_seg_dataset(
        sample_root / "train.json", sample_root, tmp_path_factory.mktemp("cp_cache"), progress=False
    )


def train_mapper(copy_paste: CopyPaste | None = None) -> SemanticSegMapper:
    return SemanticSegMapper(
        is_train=True,
        min_size=(384, 448, 512, 576, 640),
        max_size=4096,
        crop_size=(256, 256),
        color_jitter=dict(prob=0.5),
        image_format="BGR",
        copy_paste=copy_paste,
    )


def write_source(folder: Path, constant_color: tuple[int, int, int] | None = None) -> dict:
    """A 64x80 source: noise (or one colour) with an L-shaped Battery, a 2 px speck of Battery and some Paper."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
    if constant_color is not None:
        image[:] = constant_color
    label = np.zeros((64, 80), dtype=np.uint8)
    label[10:30, 20:45] = BATTERY
    label[10:20, 35:45] = 0  # the notch of the L
    label[50:52, 70] = BATTERY  # below MIN_AREA: not an object
    label[40:60, 5:30] = 2
    cv2.imwrite(str(folder / "image.png"), image)
    cv2.imwrite(str(folder / "label.png"), label)
    return {
        "file_name": str(folder / "image.png"),
        "sem_seg_file_name": str(folder / "label.png"),
        "height": 64,
        "width": 80,
    }


def rare_presence(mapper: SemanticSegMapper, dicts: list[dict]) -> np.ndarray:
    """(DRAWS, 2) booleans: does draw i contain Battery / Clothing."""
    present = np.zeros((DRAWS, 2), dtype=bool)
    for i in range(DRAWS):
        label = mapper(dicts[i % len(dicts)], np.random.default_rng([3, i]))["sem_seg"].numpy()
        present[i] = (label == BATTERY).any(), (label == CLOTHING).any()
    return present


def copy_paste_for(dicts: list[dict], class_ids: list[int], prob: float, max_objects: int = 1) -> CopyPaste:
    return CopyPaste(
        class_ids=class_ids, dataset_dicts=dicts, class_names=TRASH_CLASSES, prob=prob, max_objects=max_objects
    )


@pytest.mark.slow
def test_rare_class_share_rises_by_prob(train_dicts: list[dict]) -> None:
    plain = rare_presence(train_mapper(), train_dicts)
    assert plain.mean(axis=0).max() < 0.5  # rare without copy-paste
    for column, class_id in enumerate((BATTERY, CLOTHING)):
        pasted = rare_presence(train_mapper(copy_paste_for(train_dicts, [class_id], prob=0.5)), train_dicts)
        # the same crops (the paste is drawn last): a class present without copy-paste stays present
        assert not (plain[:, column] & ~pasted[:, column]).any()
        gained = (pasted[:, column] & ~plain[:, column]).mean()
        expected = 0.5 * (1 - plain[:, column].mean())
        # binomial sd of `gained` over 200 draws is about 0.035; allow 3 sd
        assert abs(gained - expected) < 0.1, (TRASH_CLASSES[class_id], gained, expected)

    every = rare_presence(train_mapper(copy_paste_for(train_dicts, [BATTERY, CLOTHING], 1.0, 3)), train_dicts)
    assert every.any(axis=1).mean() >= 0.98
    assert (every.mean(axis=0) > plain.mean(axis=0) + 0.25).all()


def test_prob_zero_changes_nothing(train_dicts: list[dict]) -> None:
    plain, zero = train_mapper(), train_mapper(copy_paste_for(train_dicts, [BATTERY, CLOTHING], 0.0))
    for i in range(5):
        a, b = plain(train_dicts[i], np.random.default_rng(i)), zero(train_dicts[i], np.random.default_rng(i))
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["sem_seg"], b["sem_seg"])


def test_paste_is_an_exact_copy_of_the_source_object(tmp_path: Path) -> None:
    record = write_source(tmp_path / "src")
    bank = build_object_bank([record], [BATTERY])
    assert len(bank) == 1 and bank.mask(0).sum() == 20 * 25 - 10 * 10  # the speck is skipped
    source = cv2.imread(record["file_name"])
    object_mask = np.zeros((64, 80), dtype=bool)
    object_mask[10:30, 20:45] = True
    object_mask[10:20, 35:45] = False
    ys, xs = np.nonzero(object_mask)

    target = np.full((48, 56, 3), (50, 60, 70), dtype=np.uint8)
    target_label = np.zeros((48, 56), dtype=np.uint8)
    target_label[:, 28:] = 255
    partial = onto_ignore = 0
    for seed in range(30):
        image, label, pasted = paste_objects(
            target,
            target_label,
            bank,
            np.random.default_rng(seed),
            class_ids=[BATTERY],
            num_objects=1,
            scale_range=(1.0, 1.0),
            rotation=0.0,
            flip=False,
        )
        assert len(pasted) == 1
        (tx, ty) = pasted[0].matrix[:, 2].astype(int)
        np.testing.assert_array_equal(pasted[0].matrix[:, :2], np.eye(2))
        qx, qy = xs + tx, ys + ty
        inside = (qx >= 0) & (qx < 56) & (qy >= 0) & (qy < 48)
        expected_label, expected_image = target_label.copy(), target.copy()
        expected_label[qy[inside], qx[inside]] = BATTERY
        expected_image[qy[inside], qx[inside]] = source[ys[inside], xs[inside]]
        np.testing.assert_array_equal(label, expected_label)
        np.testing.assert_array_equal(image, expected_image)
        assert pasted[0].pixels == inside.sum()
        partial += int(not inside.all())
        onto_ignore += int((target_label[qy[inside], qx[inside]] == 255).any())
    assert partial > 0 and onto_ignore > 0
    assert (target_label[:, 28:] == 255).all() and (target == (50, 60, 70)).all()  # inputs untouched


def test_warped_paste_labels_exactly_the_object_pixels(tmp_path: Path) -> None:
    red = (0, 0, 255)
    record = write_source(tmp_path / "src", constant_color=red)
    bank = build_object_bank([record], [BATTERY])
    target = np.full((96, 96, 3), 90, dtype=np.uint8)
    target_label = np.full((96, 96), 3, dtype=np.uint8)
    for seed in range(10):
        image, label, pasted = paste_objects(
            target,
            target_label,
            bank,
            np.random.default_rng(seed),
            class_ids=[BATTERY],
            num_objects=2,
            scale_range=(0.6, 1.8),
            rotation=45.0,
            flip=True,
        )
        where = label == BATTERY
        assert where.sum() > 0 and not np.allclose(pasted[0].matrix[:, :2], np.eye(2))
        # the source is red everywhere, so exactly the pasted pixels are red; elsewhere nothing changed
        np.testing.assert_array_equal((image == red).all(axis=2), where)
        assert (label[~where] == 3).all() and (image[~where] == 90).all()


def test_same_rng_same_output(train_dicts: list[dict]) -> None:
    copy_paste = copy_paste_for(train_dicts, [BATTERY, CLOTHING], 1.0, 3)
    first = MapDataset(train_dicts, train_mapper(copy_paste), seed=4)
    again = MapDataset(train_dicts, train_mapper(copy_paste), seed=4)
    other = MapDataset(train_dicts, train_mapper(copy_paste), seed=5)
    for index in range(4):
        assert torch.equal(first[index]["image"], again[index]["image"])
        assert torch.equal(first[index]["sem_seg"], again[index]["sem_seg"])
    assert any(not torch.equal(first[i]["sem_seg"], other[i]["sem_seg"]) for i in range(4))

    crop = np.full((128, 128, 3), 128, dtype=np.uint8), np.zeros((128, 128), dtype=np.uint8)
    kwargs = dict(class_ids=[BATTERY, CLOTHING], num_objects=3)
    a = paste_objects(*crop, copy_paste.bank, np.random.default_rng(9), **kwargs)
    b = paste_objects(*crop, copy_paste.bank, np.random.default_rng(9), **kwargs)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert [p.index for p in a[2]] == [p.index for p in b[2]]


def test_class_names_and_missing_objects(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert resolve_class_ids(["battery", "Clothing", "Battery"], TRASH_CLASSES) == [BATTERY, CLOTHING]
    with pytest.raises(ValueError, match=r"unknown class 'Batery'.*General trash, .*Battery, Clothing"):
        resolve_class_ids(["Batery"], TRASH_CLASSES)
    with pytest.raises(ValueError, match="cannot be pasted"):
        resolve_class_ids(["Background"], TRASH_CLASSES)

    record = write_source(tmp_path / "src")
    cfg = get_cfg()
    cfg.merge_from_list(["INPUT.COPY_PASTE.ENABLED", "True", "INPUT.COPY_PASTE.CLASSES", "['Batery']"])
    with pytest.raises(ValueError, match="unknown class 'Batery'"):
        SemanticSegMapper.from_config(cfg, is_train=True, dataset_dicts=[record])
    cfg.merge_from_list(["INPUT.COPY_PASTE.CLASSES", "['Battery']", "DATASETS.TRAIN", "('nowhere',)"])
    with pytest.raises(KeyError, match=r"DATASETS.TRAIN \['nowhere'\] is not registered"):
        SemanticSegMapper.from_config(cfg, is_train=True)
    assert SemanticSegMapper.from_config(cfg, is_train=False).copy_paste is None  # test mappers never paste

    # no object of any chosen class: an error; of some of them: a warning, and the others are pasted
    with pytest.raises(ValueError, match=r"no objects of Clothing .*in the 1 training label maps"):
        CopyPaste(class_ids=[CLOTHING], dataset_dicts=[record], class_names=TRASH_CLASSES).build()
    with caplog.at_level(logging.WARNING, logger="mask2former.data.copy_paste"):
        copy_paste = CopyPaste(class_ids=[BATTERY, CLOTHING], dataset_dicts=[record], class_names=TRASH_CLASSES)
        copy_paste.build()
    assert "no objects of Clothing" in caplog.text and "it is not pasted" in caplog.text
    crop = np.zeros((64, 64, 3), dtype=np.uint8), np.zeros((64, 64), dtype=np.uint8)
    _, label, pasted = paste_objects(*crop, copy_paste.bank, np.random.default_rng(0), class_ids=[9, 10], num_objects=3)
    assert len(pasted) == 3 and set(np.unique(label)) == {0, BATTERY}

    with pytest.raises(ValueError, match="PROB must be in"):
        CopyPaste(class_ids=[BATTERY], dataset_dicts=[record], prob=1.5)


def test_from_config_uses_the_registered_training_sets(sample_root: Path, tmp_path: Path) -> None:
    cfg = get_cfg()
    cfg.merge_from_list(
        [
            "DATASETS.ROOT",
            str(sample_root),
            "DATASETS.LABEL_CACHE_DIR",
            str(tmp_path / "cache"),
            "INPUT.COPY_PASTE.ENABLED",
            "True",
        ]
    )
    register_datasets_from_config(cfg)
    mapper = SemanticSegMapper.from_config(cfg, is_train=True)
    copy_paste = mapper.copy_paste
    assert copy_paste.class_ids == [BATTERY, CLOTHING] and copy_paste.class_names[BATTERY] == "Battery"
    assert copy_paste.bank.count(BATTERY) > 0 and copy_paste.bank.count(CLOTHING) > 0
    assert copy_paste.bank.table[:, 6].min() >= cfg.INPUT.COPY_PASTE.MIN_AREA
    assert (copy_paste.prob, copy_paste.max_objects, copy_paste.rotation) == (0.5, 3, 30.0)


def test_preview_tool_writes_n_pictures(sample_root: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "preview"
    opts = ["DATASETS.ROOT", str(sample_root), "DATASETS.LABEL_CACHE_DIR", str(tmp_path / "cache")]
    written = copy_paste_preview.run(
        copy_paste_preview.PreviewOptions(
            str(REPO / "configs" / "quickstart.yaml"), str(out), num=3, opts=opts + ["INPUT.COPY_PASTE.PROB", "1.0"]
        )
    )
    assert sorted(out.glob("*.png")) == sorted(written) and len(written) == 3
    picture = cv2.imread(str(written[0]))
    assert picture.shape[1] > 2 * 256 and picture.shape[0] >= 256
    text = capsys.readouterr().out
    assert "[3/3]" in text and "pasted: nothing" not in text
