"""Geometric and photometric augmentation as pure functions of (inputs, random draws).

The training crop is done in one resampling: the short-side resize, the crop window and the flip
are folded into one affine map from output pixels to source pixels, so an image jittered to a
1024 short side is never materialised at 1024. Photometric jitter (brightness, contrast,
saturation, hue) is likewise folded into one 3x4 colour matrix applied in one pass; clipping to
0..255 happens once at the end rather than after each step.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

# Luminance weights (ITU-R BT.601) in RGB order.
_LUMA_RGB = np.array([0.299, 0.587, 0.114])
_BGR_TO_RGB = np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]], dtype=np.float64)


def resize_scale(height: int, width: int, short_side: int, max_size: int) -> float:
    """Scale that brings the short side to `short_side` without the long side passing `max_size`."""
    scale = short_side / min(height, width)
    if max_size > 0 and max(height, width) * scale > max_size:
        scale = max_size / max(height, width)
    return scale


def resized_shape(height: int, width: int, scale: float) -> tuple[int, int]:
    return max(1, int(round(height * scale))), max(1, int(round(width * scale)))


def sample_short_side(rng: np.random.Generator, sizes: tuple[int, ...] | list[int], sampling: str) -> int:
    """One short-side length: one of `sizes` ("choice") or uniform in [min, max] ("range")."""
    if sampling == "choice":
        return int(sizes[rng.integers(len(sizes))])
    if sampling == "range":
        if len(sizes) != 2:
            raise ValueError(f"MIN_SIZE_TRAIN_SAMPLING 'range' needs two sizes [min, max], got {list(sizes)}")
        return int(rng.integers(min(sizes), max(sizes) + 1))
    raise ValueError(f"unknown MIN_SIZE_TRAIN_SAMPLING {sampling!r}; use 'choice' or 'range'")


def single_category_ok(label_window: np.ndarray, max_area: float, ignore_label: int) -> bool:
    """detectron2's crop rule: more than one class and none covering `max_area` or more of the window."""
    counts = np.bincount(label_window.ravel(), minlength=256)
    counts[ignore_label] = 0
    counts = counts[counts > 0]
    return len(counts) > 1 and counts.max() < max_area * counts.sum()


def sample_crop(
    rng: np.random.Generator,
    image_hw: tuple[int, int],
    scale: float,
    crop_hw: tuple[int, int],
    label: np.ndarray | None = None,
    single_category_max_area: float = 1.0,
    ignore_label: int = 255,
    max_tries: int = 10,
) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a crop in the resized image's pixels.

    The crop is at most `crop_hw` and at most the resized image. With `single_category_max_area < 1`
    it is redrawn up to `max_tries` times until no class covers that share of it; the class shares
    are read from the source label window the crop maps to, which equals the resized crop's shares
    up to boundary pixels.
    """
    out_h, out_w = resized_shape(image_hw[0], image_hw[1], scale)
    crop_h, crop_w = min(crop_hw[0], out_h), min(crop_hw[1], out_w)
    for _ in range(max(1, max_tries)):
        top = int(rng.integers(out_h - crop_h + 1))
        left = int(rng.integers(out_w - crop_w + 1))
        if label is None or single_category_max_area >= 1.0:
            break
        y0, x0 = int(top / scale), int(left / scale)
        y1, x1 = math.ceil((top + crop_h) / scale), math.ceil((left + crop_w) / scale)
        if single_category_ok(label[y0:y1, x0:x1], single_category_max_area, ignore_label):
            break
    return top, left, crop_h, crop_w


def crop_flip_matrix(scale: float, top: int, left: int, crop_w: int, flip: bool) -> np.ndarray:
    """2x3 affine map from output pixel (u, v) to source pixel (x, y), pixel centres aligned."""
    if flip:
        # output column u shows resized column left + crop_w - 1 - u
        return np.array(
            [
                [-1.0 / scale, 0.0, (left + crop_w - 0.5) / scale - 0.5],
                [0.0, 1.0 / scale, (top + 0.5) / scale - 0.5],
            ]
        )
    return np.array([[1.0 / scale, 0.0, (left + 0.5) / scale - 0.5], [0.0, 1.0 / scale, (top + 0.5) / scale - 0.5]])


def warp_crop(
    array: np.ndarray,
    matrix: np.ndarray,
    out_hw: tuple[int, int],
    valid_hw: tuple[int, int],
    interpolation: int,
    pad_value: int,
) -> np.ndarray:
    """Resample `array` through `matrix` into `out_hw`; pixels outside `valid_hw` get `pad_value`."""
    out = cv2.warpAffine(
        array,
        matrix,
        (out_hw[1], out_hw[0]),
        flags=interpolation | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REPLICATE,
    )
    out[valid_hw[0] :, :] = pad_value
    out[:, valid_hw[1] :] = pad_value
    return out


def pad_bottom_right(array: np.ndarray, size_hw: tuple[int, int], value: int) -> np.ndarray:
    """`array` (H x W or H x W x C) padded below and to the right to `size_hw` with `value`; never smaller than
    it was (the array itself when it already has that size)."""
    height, width = array.shape[:2]
    out_h, out_w = max(height, size_hw[0]), max(width, size_hw[1])
    if (out_h, out_w) == (height, width):
        return array
    out = np.full((out_h, out_w, *array.shape[2:]), value, dtype=array.dtype)
    out[:height, :width] = array
    return out


def color_jitter_matrix(
    rng: np.random.Generator,
    prob: float = 0.5,
    brightness_delta: float = 32.0,
    contrast_range: tuple[float, float] = (0.5, 1.5),
    saturation_range: tuple[float, float] = (0.5, 1.5),
    hue_delta: float = 18.0,
) -> np.ndarray:
    """A 4x4 affine colour transform in RGB: brightness, contrast, saturation, hue, each with `prob`.

    Hue is a rotation about the grey axis by up to `hue_delta` OpenCV hue units (2 degrees each).
    """
    transform = np.eye(4)
    if rng.random() < prob:
        transform = _affine(np.eye(3), rng.uniform(-brightness_delta, brightness_delta)) @ transform
    if rng.random() < prob:
        factor = rng.uniform(*contrast_range)
        transform = _affine(factor * np.eye(3), (1.0 - factor) * 127.5) @ transform
    if rng.random() < prob:
        factor = rng.uniform(*saturation_range)
        linear = factor * np.eye(3) + (1.0 - factor) * np.outer(np.ones(3), _LUMA_RGB)
        transform = _affine(linear, 0.0) @ transform
    if rng.random() < prob:
        transform = _affine(hue_rotation(math.radians(2.0 * rng.uniform(-hue_delta, hue_delta))), 0.0) @ transform
    return transform


def hue_rotation(angle: float) -> np.ndarray:
    """3x3 rotation of RGB colours about the grey axis (1, 1, 1) by `angle` radians."""
    axis = np.ones(3) / math.sqrt(3.0)
    cross = np.array([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
    return math.cos(angle) * np.eye(3) + math.sin(angle) * cross + (1.0 - math.cos(angle)) * np.outer(axis, axis)


def _affine(linear: np.ndarray, offset: float) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = linear
    out[:3, 3] = offset
    return out


def apply_color_transform(image_bgr: np.ndarray, rgb_transform: np.ndarray | None, output_format: str) -> np.ndarray:
    """Apply a 4x4 RGB colour transform to a BGR uint8 image and return it in `output_format` order."""
    if output_format not in ("RGB", "BGR"):
        raise ValueError(f"INPUT.FORMAT must be 'RGB' or 'BGR', got {output_format!r}")
    if rgb_transform is None:
        return cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB) if output_format == "RGB" else image_bgr
    # x_rgb = P x_bgr; out = T x_rgb (RGB) or P T x_rgb (BGR)
    matrix = rgb_transform[:3, :]
    linear, offset = matrix[:, :3] @ _BGR_TO_RGB, matrix[:, 3]
    if output_format == "BGR":
        linear, offset = _BGR_TO_RGB @ linear, _BGR_TO_RGB @ offset
    return cv2.transform(image_bgr, np.hstack([linear, offset[:, None]]).astype(np.float32))


# ---- test time: the one resize that validation (SemanticSegMapper, is_train=False) and prediction share ----------


def shape_for_test(height: int, width: int, short_side: int, max_size: int) -> tuple[int, int]:
    """The test-time size of a height x width image: short side `short_side` (0: unchanged), long side at most
    `max_size` (0: no cap)."""
    if short_side <= 0:
        return height, width
    return resized_shape(height, width, resize_scale(height, width, short_side, max_size))


def resize_for_test(
    array: np.ndarray, short_side: int, max_size: int, interpolation: int = cv2.INTER_LINEAR
) -> np.ndarray:
    """An image (bilinear) or a label map (`cv2.INTER_NEAREST`) at its `shape_for_test` size; the array itself
    when that size is its own. Validation and tools/predict.py both see images through this function."""
    height, width = array.shape[:2]
    new_h, new_w = shape_for_test(height, width, short_side, max_size)
    if (new_h, new_w) == (height, width):
        return array
    return cv2.resize(array, (new_w, new_h), interpolation=interpolation)


def view_for_test(image_bgr: np.ndarray, short_side: int, max_size: int, flip: bool, image_format: str) -> np.ndarray:
    """One test-time view of a BGR uint8 image as the model takes it (HxWx3, `image_format` channel order):
    `resize_for_test`, then a horizontal flip if asked, then the channel order (as the validation mapper)."""
    view = resize_for_test(image_bgr, short_side, max_size)
    if flip:
        view = view[:, ::-1]
    return apply_color_transform(np.ascontiguousarray(view), None, image_format)
