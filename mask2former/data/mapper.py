"""Dataset dict -> model input: {"image": uint8 CxHxW, "sem_seg": int64 HxW, ...}.

Training: short-side jitter (INPUT.MIN_SIZE_TRAIN) capped by INPUT.MAX_SIZE_TRAIN, a random crop of at most
INPUT.CROP.SIZE (smaller where the resized image is) that retries while one class covers more than
SINGLE_CATEGORY_MAX_AREA of it, horizontal flip, photometric jitter, optionally copy-paste of rare-class objects
onto the crop (INPUT.COPY_PASTE, `copy_paste.py`), then, with INPUT.SIZE_DIVISIBILITY > 0, padding bottom/right to
SIZE_DIVISIBILITY x SIZE_DIVISIBILITY (image: INPUT.PAD_VALUE, label: ignore) after the photometric jitter, as
Mask2Former's MaskFormerSemanticDatasetMapper does. Test: short-side resize only.

Every random draw comes from the `rng` handed to `__call__`, so a sample is a pure function of
(dataset dict, rng state): `MapDataset` derives that state from (seed, epoch, index).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import torch
from fvcore.common.config import CfgNode

from ..config import ConfigError
from ..io.images import read_image, read_label, read_label_at  # noqa: F401  (read_label_at: re-exported for old importers)
from . import transforms as T

if TYPE_CHECKING:  # imported only when copy-paste is on (from_config)
    from .copy_paste import CopyPaste


_PASSED_THROUGH = ("file_name", "image_id", "height", "width", "sem_seg_file_name")


class SemanticSegMapper:
    """Reads and augments one dataset dict; build with keywords or `from_config(cfg, is_train)`."""

    def __init__(
        self,
        *,
        is_train: bool,
        min_size: tuple[int, ...],
        max_size: int,
        min_size_sampling: str = "choice",
        crop_size: tuple[int, int] | None = (512, 512),
        single_category_max_area: float = 1.0,
        crop_max_tries: int = 10,
        flip: bool = True,
        color_jitter: dict[str, Any] | None = None,
        image_format: str = "RGB",
        pad_value: int = 128,
        ignore_label: int = 255,
        size_divisibility: int = -1,
        copy_paste: CopyPaste | None = None,
    ) -> None:
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT must be 'RGB' or 'BGR', got {image_format!r}")
        if is_train and size_divisibility > 0 and (crop_size is None or max(crop_size) > size_divisibility):
            # Mask2Former pads to SIZE x SIZE with F.pad, which cuts a larger sample instead: refused here
            crop = f"INPUT.CROP.SIZE {tuple(crop_size)}" if crop_size else "no crop (INPUT.CROP.ENABLED False)"
            raise ConfigError(
                f"INPUT.SIZE_DIVISIBILITY {size_divisibility} with {crop}: training samples are padded to "
                f"{size_divisibility} x {size_divisibility} (a size, not a multiple), so they must not be larger; "
                "set it to the crop size (Mask2Former's configs do) or -1"
            )
        self.is_train = is_train
        self.min_size = tuple(min_size)
        self.max_size = max_size
        self.min_size_sampling = min_size_sampling
        self.crop_size = tuple(crop_size) if crop_size else None
        self.single_category_max_area = single_category_max_area
        self.crop_max_tries = crop_max_tries
        self.flip = flip
        self.color_jitter = color_jitter
        self.image_format = image_format
        self.pad_value = pad_value
        self.ignore_label = ignore_label
        self.size_divisibility = size_divisibility if is_train else -1
        self.copy_paste = copy_paste if is_train else None

    @classmethod
    def from_config(
        cls, cfg: CfgNode, is_train: bool = True, dataset_dicts: list[dict] | None = None
    ) -> SemanticSegMapper:
        """The mapper the config describes.

        With INPUT.COPY_PASTE.ENABLED (training only) the object bank is built here, from `dataset_dicts`
        or, by default, from the registered DATASETS.TRAIN.
        """
        _check_input_config(cfg)
        common = dict(
            image_format=cfg.INPUT.FORMAT,
            pad_value=cfg.INPUT.PAD_VALUE,
            ignore_label=cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,  # the label the model ignores pads and crops
        )
        if not is_train:
            return cls(
                is_train=False,
                min_size=(cfg.INPUT.MIN_SIZE_TEST,),
                max_size=cfg.INPUT.MAX_SIZE_TEST,
                crop_size=None,
                flip=False,
                color_jitter=None,
                **common,
            )
        copy_paste = _built_copy_paste(cfg, dataset_dicts)
        return cls(
            is_train=True,
            min_size=tuple(cfg.INPUT.MIN_SIZE_TRAIN),
            max_size=cfg.INPUT.MAX_SIZE_TRAIN,
            min_size_sampling=cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING,
            crop_size=tuple(cfg.INPUT.CROP.SIZE) if cfg.INPUT.CROP.ENABLED else None,
            single_category_max_area=cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA,
            crop_max_tries=cfg.INPUT.CROP.MAX_TRIES,
            flip=cfg.INPUT.RANDOM_FLIP == "horizontal",
            color_jitter=_color_jitter(cfg),
            size_divisibility=cfg.INPUT.SIZE_DIVISIBILITY,
            copy_paste=copy_paste,
            **common,
        )

    def __call__(self, dataset_dict: dict, rng: np.random.Generator | None = None) -> dict:
        if self.is_train and rng is None:
            raise ValueError("the training mapper needs an rng (MapDataset passes one per sample)")
        image = read_image(dataset_dict["file_name"])
        label = None
        if "sem_seg_file_name" in dataset_dict:
            label = read_label(dataset_dict["sem_seg_file_name"], image.shape[:2])
        if self.is_train:
            image, label, transform = self._augment(image, label, rng)
        else:
            image, label = self._resize(image, label)
            transform = None
        image = T.apply_color_transform(image, transform, self.image_format)
        if self.size_divisibility > 0:
            size = (self.size_divisibility, self.size_divisibility)
            image = T.pad_bottom_right(image, size, self.pad_value)
            if label is not None:
                label = T.pad_bottom_right(label, size, self.ignore_label)
        out = {key: dataset_dict[key] for key in _PASSED_THROUGH if key in dataset_dict}
        out["image"] = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if label is not None:
            out["sem_seg"] = torch.from_numpy(label.astype(np.int64))
        return out

    def _resize(self, image: np.ndarray, label: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        # the test-time resize tools/predict.py uses too (transforms.resize_for_test)
        short = self.min_size[0]
        if label is not None:
            label = T.resize_for_test(label, short, self.max_size, cv2.INTER_NEAREST)
        return T.resize_for_test(image, short, self.max_size), label

    def _augment(
        self, image: np.ndarray, label: np.ndarray | None, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        height, width = image.shape[:2]
        short = T.sample_short_side(rng, self.min_size, self.min_size_sampling)
        scale = T.resize_scale(height, width, short, self.max_size)
        resized_h, resized_w = T.resized_shape(height, width, scale)
        if self.crop_size is None:
            top, left, crop_h, crop_w = 0, 0, resized_h, resized_w
        else:
            top, left, crop_h, crop_w = T.sample_crop(
                rng,
                (height, width),
                scale,
                self.crop_size,
                label,
                self.single_category_max_area,
                self.ignore_label,
                self.crop_max_tries,
            )
        flip = self.flip and rng.random() < 0.5
        matrix = T.crop_flip_matrix(scale, top, left, crop_w, flip)
        image = T.warp_crop(image, matrix, (crop_h, crop_w), (crop_h, crop_w), cv2.INTER_LINEAR, self.pad_value)
        if label is not None:
            label = T.warp_crop(label, matrix, (crop_h, crop_w), (crop_h, crop_w), cv2.INTER_NEAREST, self.ignore_label)
        transform = T.color_jitter_matrix(rng, **self.color_jitter) if self.color_jitter else None
        if self.copy_paste is not None and label is not None:
            # drawn last: the crop and jitter of a sample are the same with and without copy-paste;
            # pasted objects get the crop's colour jitter (applied by the caller)
            image, label, _ = self.copy_paste(image, label, rng, base_scale=scale)
        return image, label, transform


def _check_input_config(cfg: CfgNode) -> None:
    """ConfigError for a flip this mapper does not implement (the crop type and the mapper name have one value,
    which load_config checks: mask2former/config/compatibility.py)."""
    if cfg.INPUT.RANDOM_FLIP not in ("horizontal", "none"):
        raise ConfigError(f"INPUT.RANDOM_FLIP must be 'horizontal' or 'none', got {cfg.INPUT.RANDOM_FLIP!r}")


def _color_jitter(cfg: CfgNode) -> dict[str, Any] | None:
    """The photometric jitter's settings (INPUT.COLOR_AUG), None without INPUT.COLOR_AUG_SSD."""
    if not cfg.INPUT.COLOR_AUG_SSD:
        return None
    jitter = cfg.INPUT.COLOR_AUG
    return dict(
        prob=jitter.PROB,
        brightness_delta=jitter.BRIGHTNESS_DELTA,
        contrast_range=tuple(jitter.CONTRAST_RANGE),
        saturation_range=tuple(jitter.SATURATION_RANGE),
        hue_delta=jitter.HUE_DELTA,
    )


def _built_copy_paste(cfg: CfgNode, dataset_dicts: list[dict] | None) -> CopyPaste | None:
    """The copy-paste step with its object bank built (INPUT.COPY_PASTE.ENABLED), else None."""
    if not cfg.INPUT.COPY_PASTE.ENABLED:
        return None
    from .copy_paste import CopyPaste

    copy_paste = CopyPaste.from_config(cfg, dataset_dicts)
    copy_paste.build()  # now, once, so that DataLoader workers inherit the bank instead of each building it
    return copy_paste
