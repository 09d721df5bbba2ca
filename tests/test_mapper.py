"""The training/test mapper and its pure transforms."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from mask2former.config import ConfigError, get_cfg, load_config
from mask2former.data import transforms as T
from mask2former.data.dataset import MapDataset
from mask2former.data.mapper import SemanticSegMapper

PALETTE_BGR = np.array(
    [[20, 20, 20], [200, 40, 40], [40, 200, 40], [40, 40, 200], [200, 200, 40], [40, 200, 200]],
    dtype=np.uint8,
)


def write_block_sample(folder: Path, size: tuple[int, int] = (384, 512), block: int = 32, seed: int = 0) -> dict:
    """A lossless image whose colour encodes its label: blocks of random classes 0..5."""
    rng = np.random.default_rng(seed)
    height, width = size
    blocks = rng.integers(0, len(PALETTE_BGR), (height // block, width // block))
    label = np.kron(blocks, np.ones((block, block), dtype=np.int64)).astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(folder / "image.png"), PALETTE_BGR[label])
    cv2.imwrite(str(folder / "label.png"), label)
    return {
        "file_name": str(folder / "image.png"),
        "sem_seg_file_name": str(folder / "label.png"),
        "height": height,
        "width": width,
        "image_id": 7,
    }


def train_mapper(**overrides) -> SemanticSegMapper:
    kwargs = dict(
        is_train=True,
        min_size=(256, 384, 512, 768, 1024),
        max_size=4096,
        crop_size=(256, 256),
        flip=True,
        color_jitter=None,
        image_format="BGR",
    )
    kwargs.update(overrides)
    return SemanticSegMapper(**kwargs)


def test_resize_scale_and_cap() -> None:
    assert T.resize_scale(512, 512, 1024, 4096) == 2.0
    assert T.resize_scale(400, 800, 200, 4096) == 0.5
    assert T.resize_scale(400, 800, 400, 600) == 0.75  # the long side cap wins


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_crop_flip_matrix_matches_resize_then_crop(flip: bool, scale: float) -> None:
    rng = np.random.default_rng(0)
    label = rng.integers(0, 250, (60, 80)).astype(np.uint8)
    resized = np.repeat(np.repeat(label, int(scale), axis=0), int(scale), axis=1)
    top, left, crop_h, crop_w = 7, 11, 40, 50
    expected = resized[top : top + crop_h, left : left + crop_w]
    if flip:
        expected = expected[:, ::-1]
    matrix = T.crop_flip_matrix(scale, top, left, crop_w, flip)
    out = T.warp_crop(label, matrix, (crop_h, crop_w), (crop_h, crop_w), cv2.INTER_NEAREST, 255)
    np.testing.assert_array_equal(out, expected)


def test_warp_pads_outside_the_valid_window() -> None:
    label = np.ones((10, 10), dtype=np.uint8)
    out = T.warp_crop(label, T.crop_flip_matrix(1.0, 0, 0, 10, False), (16, 12), (10, 10), cv2.INTER_NEAREST, 255)
    assert (out[:10, :10] == 1).all() and (out[10:] == 255).all() and (out[:, 10:] == 255).all()


def test_color_matrix_rules() -> None:
    rng = np.random.default_rng(0)
    assert np.allclose(T.color_jitter_matrix(rng, prob=0.0), np.eye(4))
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    grey = T.color_jitter_matrix(
        rng,
        prob=1.0,
        brightness_delta=0.0,
        contrast_range=(1.0, 1.0),
        saturation_range=(0.0, 0.0),
        hue_delta=0.0,
    )
    out = T.apply_color_transform(image, grey, "RGB").astype(int)
    assert np.abs(out[..., 0] - out[..., 1]).max() <= 1 and np.abs(out[..., 1] - out[..., 2]).max() <= 1
    rotation = T.hue_rotation(0.7)
    assert np.allclose(rotation @ np.ones(3), np.ones(3))  # greys keep their value
    assert np.allclose(rotation @ rotation.T, np.eye(3))  # a rotation: saturation and brightness kept
    jitter = T.color_jitter_matrix(np.random.default_rng(3), prob=1.0)
    rgb = T.apply_color_transform(image, jitter, "RGB")
    bgr = T.apply_color_transform(image, jitter, "BGR")
    np.testing.assert_array_equal(rgb, bgr[..., ::-1])
    np.testing.assert_array_equal(T.apply_color_transform(image, None, "RGB"), image[..., ::-1])


def test_image_and_label_stay_aligned_through_augmentation(tmp_path: Path) -> None:
    record = write_block_sample(tmp_path)
    dataset = MapDataset([record] * 12, train_mapper(), seed=5)
    flipped_or_scaled = 0
    for index in range(len(dataset)):
        sample = dataset[index]
        image = sample["image"].permute(1, 2, 0).numpy().astype(int)
        label = sample["sem_seg"].numpy()
        # interior pixels: the 9x9 neighbourhood (> 2 source px at 2.7x) has one class, so bilinear gives its colour
        interior = (
            cv2.erode(
                (label != 255).astype(np.uint8),
                np.ones((9, 9), np.uint8),
                borderType=cv2.BORDER_CONSTANT,
                borderValue=0,
            )
            > 0
        )
        uniform = cv2.erode(label.astype(np.uint8), np.ones((9, 9), np.uint8)) == cv2.dilate(
            label.astype(np.uint8), np.ones((9, 9), np.uint8)
        )
        check = interior & uniform
        assert check.sum() > 1000
        colour_error = np.abs(image[check] - PALETTE_BGR[label[check]].astype(int)).max()
        assert colour_error <= 2, f"sample {index}: image and label disagree by {colour_error}"
        flipped_or_scaled += int((label == 255).any() or not np.array_equal(label[:32, :32], label[:32, :32].T))
    assert flipped_or_scaled > 0


def test_training_output_and_size_divisibility_padding(tmp_path: Path) -> None:
    # Mask2Former's semantic mapper: with SIZE_DIVISIBILITY the sample is padded bottom/right to SIZE x SIZE (image
    # 128 after the colour jitter, label ignore); without it, the crop keeps its own size when the image is smaller
    record = write_block_sample(tmp_path, size=(256, 256))
    jitter = dict(prob=1.0, brightness_delta=60.0, contrast_range=(0.5, 0.6))
    unpadded = train_mapper(min_size=(128,), crop_size=(200, 160), color_jitter=jitter, image_format="RGB")
    sample = unpadded(record, np.random.default_rng(0))
    assert sample["image"].shape == (3, 128, 128) and sample["sem_seg"].shape == (128, 128)
    assert (sample["sem_seg"] != 255).all()

    mapper = train_mapper(
        min_size=(128,), crop_size=(200, 160), color_jitter=jitter, image_format="RGB", size_divisibility=200
    )
    padded = mapper(record, np.random.default_rng(0))
    assert padded["image"].shape == (3, 200, 200) and padded["image"].dtype == torch.uint8
    assert padded["sem_seg"].shape == (200, 200) and padded["sem_seg"].dtype == torch.int64
    assert torch.equal(padded["image"][:, :128, :128], sample["image"])  # the same draws, then padding
    assert torch.equal(padded["sem_seg"][:128, :128], sample["sem_seg"])
    assert (padded["sem_seg"][128:] == 255).all() and (padded["sem_seg"][:, 128:] == 255).all()
    assert (padded["image"][:, 128:] == 128).all() and (padded["image"][:, :, 128:] == 128).all()
    assert padded["image_id"] == 7 and padded["height"] == 256

    test_mapper = SemanticSegMapper(
        is_train=False, min_size=(128,), max_size=4096, crop_size=None, size_divisibility=200
    )
    assert test_mapper(record)["image"].shape == (3, 128, 128)  # training only, as in Mask2Former


def test_size_divisibility_from_config_and_refusals(tmp_path: Path) -> None:
    record = write_block_sample(tmp_path, size=(256, 256))
    cfg = get_cfg()
    cfg.merge_from_list(
        ["INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.CROP.SIZE", "(160, 160)", "INPUT.COLOR_AUG_SSD", "False"]
    )
    shapes = {}
    for divisibility, pad in ((-1, 128), (192, 128), (192, 7)):
        cfg.merge_from_list(["INPUT.SIZE_DIVISIBILITY", str(divisibility), "INPUT.PAD_VALUE", str(pad)])
        sample = SemanticSegMapper.from_config(cfg, is_train=True)(record, np.random.default_rng(0))
        shapes[divisibility] = tuple(sample["image"].shape)
        if divisibility > 0:
            assert (sample["image"][:, 128:] == pad).all() and (sample["sem_seg"][128:] == 255).all()
    assert shapes == {-1: (3, 128, 128), 192: (3, 192, 192)}
    cfg.merge_from_list(["INPUT.SIZE_DIVISIBILITY", "32"])  # read as a multiple, it would cut every crop
    with pytest.raises(
        ConfigError, match=r"INPUT.SIZE_DIVISIBILITY 32 with INPUT.CROP.SIZE \(160, 160\).*not a multiple"
    ):
        SemanticSegMapper.from_config(cfg, is_train=True)
    cfg.merge_from_list(["INPUT.SIZE_DIVISIBILITY", "512", "INPUT.CROP.ENABLED", "False"])
    with pytest.raises(ConfigError, match=r"INPUT.SIZE_DIVISIBILITY 512 with no crop"):
        SemanticSegMapper.from_config(cfg, is_train=True)
    assert SemanticSegMapper.from_config(cfg, is_train=False).size_divisibility == -1


def test_reproducible_for_a_seed(tmp_path: Path) -> None:
    record = write_block_sample(tmp_path)
    mapper = train_mapper(color_jitter=dict(prob=0.5))
    first = MapDataset([record] * 4, mapper, seed=11)
    again = MapDataset([record] * 4, mapper, seed=11)
    other = MapDataset([record] * 4, mapper, seed=12)
    for index in range(4):
        assert torch.equal(first[index]["image"], again[index]["image"])
        assert torch.equal(first[index]["sem_seg"], again[index]["sem_seg"])
    assert any(not torch.equal(first[i]["image"], other[i]["image"]) for i in range(4))
    before = first[0]["image"]
    first.set_epoch(1)
    assert not torch.equal(before, first[0]["image"])


def test_single_category_max_area_retries_crops(tmp_path: Path) -> None:
    label = np.zeros((512, 512), dtype=np.uint8)
    label[20:120, 20:120] = 1  # one small object in a corner
    cv2.imwrite(str(tmp_path / "label.png"), label)
    cv2.imwrite(str(tmp_path / "image.png"), PALETTE_BGR[label])
    record = {"file_name": str(tmp_path / "image.png"), "sem_seg_file_name": str(tmp_path / "label.png")}

    def share_with_object(max_area: float) -> float:
        mapper = train_mapper(min_size=(512,), crop_size=(128, 128), flip=False, single_category_max_area=max_area)
        hits = [(mapper(record, np.random.default_rng(s))["sem_seg"] == 1).any().item() for s in range(60)]
        return sum(hits) / len(hits)

    unconstrained, constrained = share_with_object(1.0), share_with_object(0.95)
    assert unconstrained < 0.2 and constrained > 0.5


def test_test_mapper_resizes_only(tmp_path: Path) -> None:
    record = write_block_sample(tmp_path, size=(384, 512))
    cfg = get_cfg()
    cfg.merge_from_list(["INPUT.MIN_SIZE_TEST", "192", "INPUT.FORMAT", "BGR"])
    sample = SemanticSegMapper.from_config(cfg, is_train=False)(record)
    assert sample["image"].shape == (3, 192, 256) and sample["sem_seg"].shape == (192, 256)
    expected = cv2.resize(cv2.imread(record["file_name"]), (256, 192), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(sample["image"].permute(1, 2, 0).numpy(), expected)


def test_from_config_and_bad_inputs(tmp_path: Path) -> None:
    cfg = get_cfg()
    mapper = SemanticSegMapper.from_config(cfg, is_train=True)
    assert mapper.crop_size == (512, 512) and mapper.flip and mapper.color_jitter["hue_delta"] == 18.0
    with pytest.raises(ValueError, match="needs an rng"):
        mapper({"file_name": "x"})
    with pytest.raises(OSError, match=r"cannot read image .*missing.jpg"):
        mapper({"file_name": str(tmp_path / "missing.jpg")}, np.random.default_rng(0))
    with pytest.raises(ConfigError, match="INPUT.CROP.TYPE is 'relative': only 'absolute' is supported"):
        load_config(None, ["INPUT.CROP.TYPE", "relative"])  # one value only: compatibility.py
