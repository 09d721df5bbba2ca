"""Copy-paste of rare classes: objects cut from training images, pasted onto training crops.

An object is a connected component (8-connected) of one chosen class in a training label map, at
least `min_area` source pixels. The `ObjectBank` holds all of them in a few flat arrays (one row of
integers per object, every mask bit-packed into one shared buffer), so it pickles fast to spawned
DataLoader workers and is shared copy-on-write by forked ones. Building it reads every label map of
the training set once (the images are not read): about 2 ms per 512x512 map, 5-6 s for 3,000 on two
busy cores; the result is memoised per process. A chosen class with no object in the training set
is logged and left out; if none of the chosen classes has an object, that is an error.

`paste_objects` draws objects, warps each (scale, rotation, flip: one affine map for image and
mask, bilinear / nearest) to a random place whose centre lies in the crop, and pastes it with its
hard mask: the object occludes what was there, and its class replaces the labels under it, the
ignore label included. Every draw comes from the `rng` it is handed, so the result is a pure
function of (inputs, rng state). The object pixels are read from the source image at paste time.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np
from fvcore.common.config import CfgNode

from ..io.images import read_image, read_label

logger = logging.getLogger(__name__)

MIN_OBJECT_AREA = 64  # px at source resolution; smaller fragments (occlusion slivers, noise) are not pasted
_TABLE_COLUMNS = ("source", "class_id", "x", "y", "width", "height", "area")
_BANK_MEMO: dict[str, ObjectBank] = {}


def resolve_class_ids(names: Sequence[str], class_names: Sequence[str]) -> list[int]:
    """Label ids of `names` in `class_names` (case-insensitive); unknown names name the known ones."""
    lookup = {name.lower(): index for index, name in enumerate(class_names)}
    ids = []
    for name in names:
        index = lookup.get(str(name).lower())
        if index is None:
            raise ValueError(
                f"INPUT.COPY_PASTE.CLASSES: unknown class {name!r}; the training classes are: "
                f"{', '.join(class_names[1:])}"
            )
        if index == 0:
            raise ValueError(f"INPUT.COPY_PASTE.CLASSES: {class_names[0]!r} (label 0) cannot be pasted")
        if index not in ids:
            ids.append(index)
    if not ids:
        raise ValueError("INPUT.COPY_PASTE.CLASSES is empty; name at least one class to paste")
    return ids


class ObjectBank:
    """The pastable objects: a (N, 7) int32 table (source, class_id, x, y, width, height, area) and masks."""

    def __init__(
        self,
        sources: list[str],
        table: np.ndarray,
        mask_bits: np.ndarray,
        mask_offsets: np.ndarray,
        num_images: int = 0,
    ) -> None:
        self.sources = sources
        self.table = table
        self.mask_bits = mask_bits
        self.mask_offsets = mask_offsets
        self.num_images = num_images

    def __len__(self) -> int:
        return len(self.table)

    def indices_of(self, class_id: int) -> np.ndarray:
        return np.flatnonzero(self.table[:, 1] == class_id)

    def count(self, class_id: int) -> int:
        return int((self.table[:, 1] == class_id).sum())

    def mask(self, index: int) -> np.ndarray:
        """The object's uint8 0/1 mask over its bounding box."""
        height, width = int(self.table[index, 5]), int(self.table[index, 4])
        bits = self.mask_bits[self.mask_offsets[index] : self.mask_offsets[index + 1]]
        return np.unpackbits(bits, count=height * width).reshape(height, width)

    def source(self, index: int) -> str:
        return self.sources[self.table[index, 0]]

    def nbytes(self) -> int:
        return self.table.nbytes + self.mask_bits.nbytes + self.mask_offsets.nbytes


def _objects_in(
    record: dict, class_ids: Sequence[int], min_area: int
) -> list[tuple[int, int, int, int, int, int, bytes]]:
    hw = (record["height"], record["width"]) if "height" in record and "width" in record else None
    label = read_label(record["sem_seg_file_name"], hw)
    found = []
    for class_id in sorted(set(class_ids)):  # one row order per set of classes, whatever order they were named in
        binary = (label == class_id).astype(np.uint8)
        if not binary.any():
            continue
        count, components, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
        for component in range(1, count):
            x, y, width, height, area = (int(v) for v in stats[component])
            if area < min_area:
                continue
            mask = components[y : y + height, x : x + width] == component
            found.append((class_id, x, y, width, height, area, np.packbits(mask.ravel()).tobytes()))
    return found


def build_object_bank(
    dataset_dicts: Sequence[dict],
    class_ids: Sequence[int],
    min_area: int = MIN_OBJECT_AREA,
    num_threads: int | None = None,
    class_names: Sequence[str] | None = None,
) -> ObjectBank:
    """Scan every label map of `dataset_dicts` once for objects of `class_ids` (memoised per process)."""
    labelled = [d for d in dataset_dicts if "sem_seg_file_name" in d]
    key = hashlib.sha1(
        repr((sorted(class_ids), min_area, [(d["file_name"], d["sem_seg_file_name"]) for d in labelled])).encode()
    ).hexdigest()
    if key in _BANK_MEMO:
        return _BANK_MEMO[key]
    start = time.perf_counter()
    threads = num_threads or min(8, os.cpu_count() or 1)
    # cv2 releases the GIL while decoding PNGs, so threads overlap the reads
    with ThreadPoolExecutor(max_workers=threads) as pool:
        per_image = list(pool.map(lambda d: _objects_in(d, class_ids, min_area), labelled))
    sources: list[str] = []
    rows, masks = [], []
    for record, objects in zip(labelled, per_image, strict=True):
        if objects:
            sources.append(record["file_name"])
        for class_id, x, y, width, height, area, bits in objects:
            rows.append((len(sources) - 1, class_id, x, y, width, height, area))
            masks.append(np.frombuffer(bits, dtype=np.uint8))
    table = np.array(rows, dtype=np.int32).reshape(-1, len(_TABLE_COLUMNS))
    offsets = np.zeros(len(masks) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(m) for m in masks])
    mask_bits = np.concatenate(masks) if masks else np.zeros(0, dtype=np.uint8)
    bank = ObjectBank(sources, table, mask_bits, offsets, num_images=len(labelled))
    logger.info(
        "copy-paste bank: %d objects (%s) from %d label maps in %.1f s, %.1f MB",
        len(bank),
        ", ".join(f"{class_names[c] if class_names else f'class {c}'}: {bank.count(c)}" for c in class_ids),
        len(labelled),
        time.perf_counter() - start,
        bank.nbytes() / 1e6,
    )
    _BANK_MEMO[key] = bank
    return bank


@dataclass(frozen=True)
class PastedObject:
    """One pasted object: its bank row, class, forward 2x3 map (source px -> crop px) and the crop pixels it
    covered when pasted (objects pasted after it may cover some of them)."""

    index: int
    class_id: int
    matrix: np.ndarray
    pixels: int


def paste_objects(
    image: np.ndarray,
    label: np.ndarray,
    bank: ObjectBank,
    rng: np.random.Generator,
    *,
    class_ids: Sequence[int],
    num_objects: int,
    scale_range: tuple[float, float] = (0.5, 1.5),
    rotation: float = 30.0,
    flip: bool = True,
    base_scale: float = 1.0,
    read: Callable[[str], np.ndarray] = read_image,
) -> tuple[np.ndarray, np.ndarray, list[PastedObject]]:
    """Paste `num_objects` objects onto copies of (BGR image, label); later objects occlude earlier ones.

    Each object: a class uniform over `class_ids` (those with no object in the bank are left out), an
    object uniform over that class, a size factor `base_scale` (the crop's resize scale, so objects
    keep the scene's scale) x uniform(scale_range), capped so the object's longer side fits the crop,
    a rotation uniform in [-rotation, rotation] degrees, a horizontal flip with probability 0.5 when
    `flip`, and a centre uniform over the crop (objects near the border are partly outside).
    """
    image, label = image.copy(), label.copy()
    classes = [c for c in class_ids if len(bank.indices_of(c))]
    if not classes:
        return image, label, []
    crop_h, crop_w = label.shape
    sources: dict[str, np.ndarray] = {}
    pasted = []
    for _ in range(num_objects):
        draw = _draw(rng, bank, classes, (crop_h, crop_w), scale_range, rotation, flip)
        _, _, x, y, width, height, _ = (int(v) for v in bank.table[draw.index])
        warp = _warp((x, y, width, height), draw, base_scale, (crop_h, crop_w))
        if warp is None:
            continue
        mask = _warped_mask(bank.mask(draw.index), warp, (x, y))
        if not mask.any():
            continue
        path = bank.source(draw.index)
        if path not in sources:
            sources[path] = read(path)
        patch = _warped_patch(sources[path], warp)
        x0, y0, x1, y1 = warp.window
        image[y0:y1, x0:x1][mask] = patch[mask]
        label[y0:y1, x0:x1][mask] = draw.class_id
        pasted.append(PastedObject(draw.index, draw.class_id, warp.forward, int(mask.sum())))
    return image, label, pasted


@dataclass(frozen=True)
class _Draw:
    """One object's random choices: bank row, class, size factor, rotation (radians), flip, centre in the crop."""

    class_id: int
    index: int
    factor: float
    angle: float
    mirror: bool
    centre_x: int
    centre_y: int


def _draw(
    rng: np.random.Generator,
    bank: ObjectBank,
    classes: Sequence[int],
    crop_shape: tuple[int, int],
    scale_range: tuple[float, float],
    rotation: float,
    flip: bool,
) -> _Draw:
    """The random choices of one object, drawn from `rng` in a fixed order (the flip only when `flip`)."""
    class_id = classes[int(rng.integers(len(classes)))]
    candidates = bank.indices_of(class_id)
    index = int(candidates[rng.integers(len(candidates))])
    factor = float(rng.uniform(*scale_range))
    angle = math.radians(float(rng.uniform(-rotation, rotation)))
    mirror = bool(flip and rng.random() < 0.5)
    centre_y, centre_x = int(rng.integers(crop_shape[0])), int(rng.integers(crop_shape[1]))
    return _Draw(class_id, index, factor, angle, mirror, centre_x, centre_y)


@dataclass(frozen=True)
class _Warp:
    """Where a drawn object lands: the forward 2x3 map (source px -> crop px), the inverse linear part, the
    source position of the window's origin, and the window (x0, y0, x1, y1) of crop pixels it can touch."""

    forward: np.ndarray
    inverse: np.ndarray
    offset: np.ndarray
    window: tuple[int, int, int, int]

    @property
    def size(self) -> tuple[int, int]:
        x0, y0, x1, y1 = self.window
        return (x1 - x0, y1 - y0)


def _warp(box: tuple[int, int, int, int], draw: _Draw, base_scale: float, crop_shape: tuple[int, int]) -> _Warp | None:
    """The warp of the object whose bounding box is `box` (x, y, width, height); None if it misses the crop."""
    x, y, width, height = box
    crop_h, crop_w = crop_shape
    angle = draw.angle
    scale = min(base_scale * draw.factor, min(crop_h, crop_w) / max(width, height))
    # forward map q = t + A (p - c): source pixel p -> crop pixel q, A = scale * rotation * flip
    linear = scale * np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    if draw.mirror:
        linear = linear @ np.diag([-1.0, 1.0])
    # integer centres: with scale 1, no rotation and no flip the paste is an exact pixel copy
    centre_src = np.array([x + width // 2, y + height // 2], dtype=np.float64)
    target = np.array([draw.centre_x, draw.centre_y], dtype=np.float64)
    forward = np.hstack([linear, (target - linear @ centre_src)[:, None]])

    # the window of crop pixels the warped bounding box can touch, clipped to the crop
    left, top, right, bottom = x - 0.5, y - 0.5, x + width - 0.5, y + height - 0.5
    corners = np.array([[left, top], [right, top], [left, bottom], [right, bottom]]) @ linear.T + forward[:, 2]
    x0, y0 = (max(0, math.floor(v)) for v in corners.min(axis=0))
    x1, y1 = (min(limit, math.ceil(v) + 1) for v, limit in zip(corners.max(axis=0), (crop_w, crop_h), strict=True))
    if x1 <= x0 or y1 <= y0:
        return None
    # inverse map for the window [y0:y1, x0:x1]: p = c + A^-1 (q + origin - t)
    inverse = np.linalg.inv(linear)
    offset = centre_src + inverse @ (np.array([x0, y0], dtype=np.float64) - target)
    return _Warp(forward, inverse, offset, (x0, y0, x1, y1))


def _warped_mask(mask: np.ndarray, warp: _Warp, origin: tuple[int, int]) -> np.ndarray:
    """The object's mask (over its bounding box, whose corner is `origin` (x, y)) over the window; bool."""
    mask_matrix = np.hstack([warp.inverse, (warp.offset - list(origin))[:, None]])
    return cv2.warpAffine(
        mask,
        mask_matrix,
        warp.size,
        flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    ).astype(bool)


def _warped_patch(source: np.ndarray, warp: _Warp) -> np.ndarray:
    """The source image's pixels over the window, bilinear."""
    return cv2.warpAffine(
        source,
        np.hstack([warp.inverse, warp.offset[:, None]]),
        warp.size,
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REPLICATE,
    )


class CopyPaste:
    """The mapper's copy-paste step: settings plus a lazily built `ObjectBank` of the training objects.

    With `bank` given it is used as is; otherwise it is built from `dataset_dicts` on first use (the
    mapper's `from_config` forces that at once, before DataLoader workers start). Classes without
    objects are logged and left out; none with objects at all is an error.
    """

    def __init__(
        self,
        *,
        class_ids: Sequence[int],
        dataset_dicts: Sequence[dict] | None = None,
        bank: ObjectBank | None = None,
        class_names: Sequence[str] | None = None,
        prob: float = 0.5,
        max_objects: int = 3,
        scale_range: tuple[float, float] = (0.5, 1.5),
        rotation: float = 30.0,
        flip: bool = True,
        min_area: int = MIN_OBJECT_AREA,
    ) -> None:
        if bank is None and dataset_dicts is None:
            raise ValueError("CopyPaste needs the training dataset dicts (or a built ObjectBank)")
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"INPUT.COPY_PASTE.PROB must be in [0, 1], got {prob}")
        if max_objects < 1:
            raise ValueError(f"INPUT.COPY_PASTE.MAX_OBJECTS must be at least 1, got {max_objects}")
        if len(scale_range) != 2 or not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"INPUT.COPY_PASTE.SCALE_RANGE must be (min, max) with 0 < min <= max, got {scale_range}")
        if rotation < 0:
            raise ValueError(f"INPUT.COPY_PASTE.ROTATION must be >= 0 degrees, got {rotation}")
        self.class_ids = list(class_ids)
        self.class_names = list(class_names) if class_names is not None else None
        self.prob = prob
        self.max_objects = max_objects
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.rotation = float(rotation)
        self.flip = flip
        self.min_area = min_area
        self._dataset_dicts = dataset_dicts
        self._bank = bank
        if bank is not None:
            self._check_bank(bank)

    @classmethod
    def from_config(
        cls, cfg: CfgNode, dataset_dicts: Sequence[dict] | None = None, class_names: Sequence[str] | None = None
    ) -> CopyPaste:
        """From INPUT.COPY_PASTE; dicts and class names default to those of DATASETS.TRAIN (registered)."""
        from .catalog import DatasetCatalog, MetadataCatalog
        from .classes import TRASH_CLASSES

        names = list(cfg.DATASETS.TRAIN)
        if dataset_dicts is None:
            missing = [name for name in names if name not in DatasetCatalog]
            if missing:
                raise KeyError(
                    f"INPUT.COPY_PASTE needs the training images, but DATASETS.TRAIN {missing} is not registered "
                    "(register the datasets first, or pass dataset_dicts)"
                )
            dataset_dicts = [d for name in names for d in DatasetCatalog.get(name)]
        if class_names is None:
            found = [MetadataCatalog.get(n).get("stuff_classes") for n in names if n in MetadataCatalog.list()]
            class_names = next((c for c in found if c), TRASH_CLASSES)
        node = cfg.INPUT.COPY_PASTE
        return cls(
            class_ids=resolve_class_ids(node.CLASSES, class_names),
            dataset_dicts=dataset_dicts,
            class_names=class_names,
            prob=node.PROB,
            max_objects=node.MAX_OBJECTS,
            scale_range=tuple(node.SCALE_RANGE),
            rotation=node.ROTATION,
            flip=node.FLIP,
            min_area=node.MIN_AREA,
        )

    def _name(self, class_id: int) -> str:
        names = self.class_names
        return names[class_id] if names is not None and class_id < len(names) else f"class {class_id}"

    def _check_bank(self, bank: ObjectBank) -> None:
        empty = [c for c in self.class_ids if bank.count(c) == 0]
        where = f"in the {bank.num_images} training label maps" if bank.num_images else "in the object bank"
        if len(empty) == len(self.class_ids):
            raise ValueError(
                f"INPUT.COPY_PASTE: no objects of {', '.join(map(self._name, empty))} (of at least "
                f"{self.min_area} px) {where}; nothing to paste. Disable copy-paste or change CLASSES."
            )
        for class_id in empty:
            logger.warning(
                "INPUT.COPY_PASTE: no objects of %s (of at least %d px) %s; it is not pasted",
                self._name(class_id),
                self.min_area,
                where,
            )

    def build(self) -> ObjectBank:
        """The bank, built (reading every training label map once) if it is not yet."""
        if self._bank is None:
            bank = build_object_bank(self._dataset_dicts, self.class_ids, self.min_area, class_names=self.class_names)
            self._check_bank(bank)
            self._bank, self._dataset_dicts = bank, None
        return self._bank

    @property
    def bank(self) -> ObjectBank:
        return self.build()

    def __call__(
        self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator, base_scale: float = 1.0
    ) -> tuple[np.ndarray, np.ndarray, list[PastedObject]]:
        """With probability `prob`, paste 1..max_objects objects (uniform count); else the inputs unchanged."""
        if rng.random() >= self.prob:
            return image, label, []
        return paste_objects(
            image,
            label,
            self.bank,
            rng,
            class_ids=self.class_ids,
            num_objects=int(rng.integers(1, self.max_objects + 1)),
            scale_range=self.scale_range,
            rotation=self.rotation,
            flip=self.flip,
            base_scale=base_scale,
        )
