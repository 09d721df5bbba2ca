"""A deterministic, procedural imitation of the competition data, in exactly its layout.

Scenes of 3..12 objects of the ten trash classes on textured floors with unlabelled clutter. Each
class has its own shape, texture and colour family with per-instance variation; colours of some
classes overlap so shape and texture matter. Objects are drawn in turn, so later ones occlude
earlier ones; annotations are polygons of each object's visible part (several when it is split).
Classes are drawn with probability proportional to the square root of the real counts, so Battery
and Clothing stay rare but present. Same seed, same bytes. The output folder follows the
output-folder contract (docs/output_folders.md): new or empty, or one the generator made for the same arguments
(interrupted runs included); `overwrite=True` starts over in one it made for other arguments; a user's folder is
never written.
"""

from __future__ import annotations

import json
import math
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..errors import UserError
from ..io.files import atomic_write_bytes, atomic_write_text
from ..utils.output_folder import owned_output_folder
from ..utils.progress import Progress
from .classes import TRASH_CLASSES

TRASH_CATEGORY_NAMES: tuple[str, ...] = TRASH_CLASSES[1:]
# Per-class object counts of the real train_all.json (classes 1..10).
REAL_COUNTS = np.array([2782, 9311, 659, 562, 610, 3090, 1343, 7643, 63, 177], dtype=np.float64)
CLASS_PROBS = np.sqrt(REAL_COUNTS) / np.sqrt(REAL_COUNTS).sum()
# Object size range (px, long side) per class 1..10.
SIZE_RANGE = {
    1: (30, 110),
    2: (40, 140),
    3: (40, 120),
    4: (25, 80),
    5: (40, 120),
    6: (40, 130),
    7: (35, 120),
    8: (90, 250),
    9: (15, 40),
    10: (90, 240),
}
FOLDERS = ("batch_01_vt", "batch_02_vt", "batch_03")
MIN_VISIBLE_AREA = 30
MIN_FRAGMENT_AREA = 16


TOOL = "make_sample_dataset.py"
# What the generator writes; `make demo` adds its key and the fold jsons (split_folds.py's own folder).
OUTPUTS = ("train_all.json", "train.json", "val.json", "test.json", *FOLDERS)
# The marker of the folders it made before owner records existed (docs/output_folders.md).
_OLD_MARKER = ".sample_dataset"


class SampleCountError(UserError, ValueError):
    """An image count that cannot be generated (negative); the message names the option."""


def _made_before_owner_records(out: Path) -> bool:
    return (out / _OLD_MARKER).is_file() and all(
        entry.name in {*OUTPUTS, _OLD_MARKER, "folds", ".demo-key"} for entry in out.iterdir()
    )


def _blob(rng: np.random.Generator, vertices: int, roughness: float, smooth: int) -> np.ndarray:
    """A closed star-shaped outline of unit size with a random, smoothed radius."""
    angles = np.linspace(0, 2 * np.pi, vertices, endpoint=False)
    radius = 1.0 + roughness * rng.standard_normal(vertices)
    if smooth:
        kernel = np.ones(smooth) / smooth
        radius = np.convolve(np.concatenate([radius[-smooth:], radius, radius[:smooth]]), kernel, "same")[
            smooth:-smooth
        ]
    radius = np.clip(radius, 0.35, 1.6)
    return np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1) / 2


def _rounded_rect(width: float, height: float, corner: float, per_corner: int = 5) -> np.ndarray:
    points = []
    for cx, cy, start in (
        (width / 2 - corner, height / 2 - corner, 0),
        (-width / 2 + corner, height / 2 - corner, 90),
        (-width / 2 + corner, -height / 2 + corner, 180),
        (width / 2 - corner, -height / 2 + corner, 270),
    ):
        for a in np.linspace(math.radians(start), math.radians(start + 90), per_corner):
            points.append((cx + corner * math.cos(a), cy + corner * math.sin(a)))
    return np.array(points)


def _outline(category: int, rng: np.random.Generator) -> np.ndarray:
    """The unit-scale outline (N x 2, about [-0.5, 0.5]) of an object of `category`."""
    if category == 1:  # general trash: crumpled irregular blob
        return _blob(rng, 18, 0.25, 2)
    if category == 2:  # paper: a sheet
        aspect = rng.uniform(0.6, 0.85)
        return np.array([[-0.5, -aspect / 2], [0.5, -aspect / 2], [0.5, aspect / 2], [-0.5, aspect / 2]]) + rng.normal(
            0, 0.02, (4, 2)
        )
    if category == 3:  # paper pack: carton, a box with a cut corner
        aspect = rng.uniform(0.45, 0.8)
        return np.array(
            [
                [-0.5, -aspect / 2],
                [0.3, -aspect / 2],
                [0.5, -aspect / 2 + 0.15],
                [0.5, aspect / 2],
                [-0.5, aspect / 2],
            ]
        )
    if category == 4:  # metal: can seen from above or the side
        angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        aspect = rng.uniform(0.5, 1.0)
        return np.stack([0.5 * np.cos(angles), 0.5 * aspect * np.sin(angles)], axis=1)
    if category == 5:  # glass: bottle with a neck
        w = rng.uniform(0.14, 0.2)
        return np.array(
            [
                [-0.5, -w + 0.04],
                [-0.45, -w],
                [0.15, -w],
                [0.25, -0.06],
                [0.5, -0.06],
                [0.5, 0.06],
                [0.25, 0.06],
                [0.15, w],
                [-0.45, w],
                [-0.5, w - 0.04],
            ]
        )
    if category == 6:  # plastic: rounded bottle
        return _rounded_rect(1.0, rng.uniform(0.3, 0.45), 0.12)
    if category == 7:  # styrofoam: block with bumpy edges
        square = _rounded_rect(1.0, rng.uniform(0.5, 0.9), 0.05, per_corner=3)
        t = np.linspace(0, 1, 60)
        index = np.minimum((t * len(square)).astype(int), len(square) - 1)
        points = (
            square[index] + 0.5 * (square[(index + 1) % len(square)] - square[index]) * ((t * len(square)) % 1)[:, None]
        )
        return points * (1 + 0.04 * np.sin(np.arange(60) * 2.2)[:, None])
    if category == 8:  # plastic bag: large wavy blob
        return _blob(rng, 28, 0.22, 4)
    if category == 9:  # battery: small cylinder
        return _rounded_rect(1.0, 0.4, 0.08)
    return _blob(rng, 22, 0.3, 3)  # clothing: large irregular shape


def _noise(rng: np.random.Generator, height: int, width: int, cells: int, amplitude: float) -> np.ndarray:
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)[..., None] * amplitude


def _texture(
    category: int, rng: np.random.Generator, height: int, width: int, angle: float
) -> tuple[np.ndarray, float]:
    """A BGR float32 texture for an object's bounding box and its opacity."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    along = xx * math.cos(angle) + yy * math.sin(angle)
    across = -xx * math.sin(angle) + yy * math.cos(angle)
    jitter = rng.uniform(-18, 18, 3).astype(np.float32)
    fine = rng.standard_normal((height, width, 1)).astype(np.float32)
    surface = _Surface(rng, height, width, along, across, jitter, fine)
    return _TEXTURES.get(category, _clothing_texture)(surface)


@dataclass(frozen=True)
class _Surface:
    """What every class's texture starts from: the rng, the box size, coordinates along and across the object's
    direction, a per-instance colour jitter (3,) and fine pixel noise (H, W, 1)."""

    rng: np.random.Generator
    height: int
    width: int
    along: np.ndarray
    across: np.ndarray
    jitter: np.ndarray
    fine: np.ndarray


def _general_trash_texture(s: _Surface) -> tuple[np.ndarray, float]:
    base = np.array(s.rng.choice([[90, 100, 110], [60, 80, 110], [110, 110, 110]]), np.float32)
    tex = base + s.jitter + _noise(s.rng, s.height, s.width, 6, 35) + 10 * s.fine
    return tex, 1.0


def _paper_texture(s: _Surface) -> tuple[np.ndarray, float]:
    tex = np.full((s.height, s.width, 3), 235, np.float32) + s.jitter / 3 + 4 * s.fine
    lines = ((s.across % 9) < 1.6) & ((s.along % 37) > 6)
    tex[lines] = (70, 70, 80)
    return tex, 1.0


def _paper_pack_texture(s: _Surface) -> tuple[np.ndarray, float]:
    base = np.array([70, 120, 165], np.float32) + s.jitter
    stripes = ((s.along // 14) % 2)[..., None] * np.array([-35, -20, 25], np.float32)
    tex = base + stripes + 6 * s.fine
    tex[np.abs(s.across - s.across.mean()) < 1.5] = (40, 70, 110)
    return tex, 1.0


def _metal_texture(s: _Surface) -> tuple[np.ndarray, float]:
    gradient = 0.5 + 0.5 * np.sin(s.across / max(4.0, s.height / 5))
    tex = (110 + 110 * gradient)[..., None] * np.array([1.0, 0.97, 0.92], np.float32) + 5 * s.fine
    tex[np.abs(s.along % 60 - 30) < 2] = (240, 240, 240)
    return tex, 1.0


def _glass_texture(s: _Surface) -> tuple[np.ndarray, float]:
    base = np.array(s.rng.choice([[60, 140, 50], [30, 90, 150], [80, 150, 90]]), np.float32)
    tex = base + s.jitter + 60 * (np.abs(s.across % 23 - 11) < 2)[..., None] + 4 * s.fine
    return tex, 0.65


def _plastic_texture(s: _Surface) -> tuple[np.ndarray, float]:
    base = np.array(s.rng.choice([[230, 200, 170], [235, 225, 215], [220, 180, 140]]), np.float32)
    tex = base + s.jitter / 2 + 30 * (np.abs(s.across % 31 - 8) < 3)[..., None] + 4 * s.fine
    return tex, 0.8


def _styrofoam_texture(s: _Surface) -> tuple[np.ndarray, float]:
    tex = np.full((s.height, s.width, 3), 245, np.float32) + 12 * s.fine
    tex[s.rng.random((s.height, s.width)) < 0.04] = (200, 205, 210)
    return tex, 1.0


def _plastic_bag_texture(s: _Surface) -> tuple[np.ndarray, float]:
    base = np.array(
        s.rng.choice([[200, 90, 60], [60, 60, 200], [220, 220, 225], [40, 170, 60], [20, 20, 20]]),
        np.float32,
    )
    wrinkles = 35 * np.sin(s.along / 6 + 3 * _noise(s.rng, s.height, s.width, 4, 1.0)[..., 0])[..., None]
    return base + s.jitter + wrinkles + 6 * s.fine, 0.6


def _battery_texture(s: _Surface) -> tuple[np.ndarray, float]:
    tex = np.full((s.height, s.width, 3), 35, np.float32) + 5 * s.fine
    band = np.array(s.rng.choice([[0, 140, 255], [40, 200, 40], [200, 60, 20]]), np.float32)
    position = (s.along - s.along.min()) / max(1.0, float(s.along.max() - s.along.min()))
    tex[(position > 0.45) & (position < 0.7)] = band
    tex[position > 0.9] = (190, 190, 190)
    return tex, 1.0


def _clothing_texture(s: _Surface) -> tuple[np.ndarray, float]:
    along, across = s.along, s.across
    base = (
        np.array(
            s.rng.choice([[150, 60, 40], [40, 40, 150], [60, 130, 60], [140, 140, 40], [90, 40, 120]]),
            np.float32,
        )
        + s.jitter
    )
    pattern = s.rng.integers(3)
    if pattern == 0:
        checks = (((along // 10) + (across // 10)) % 2)[..., None]
    elif pattern == 1:
        checks = ((along // 7) % 2)[..., None]
    else:
        checks = ((np.abs(along % 16 - 8) < 3) | (np.abs(across % 16 - 8) < 3))[..., None].astype(np.float32)
    return base + 70 * checks + 10 * s.fine, 1.0


# Category 1..10 -> its texture (any other category: clothing's).
_TEXTURES = {
    1: _general_trash_texture,
    2: _paper_texture,
    3: _paper_pack_texture,
    4: _metal_texture,
    5: _glass_texture,
    6: _plastic_texture,
    7: _styrofoam_texture,
    8: _plastic_bag_texture,
    9: _battery_texture,
    10: _clothing_texture,
}


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    grid = rng.uniform(40, 190, (4, 4, 3)).astype(np.float32)
    grid = grid * 0.6 + grid.mean(axis=(0, 1)) * 0.4
    floor = cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)
    floor += _noise(rng, size, size, 24, 10) + rng.standard_normal((size, size, 1)).astype(np.float32) * 7
    for _ in range(rng.integers(2, 6)):
        p1, p2 = rng.integers(0, size, 2), rng.integers(0, size, 2)
        shade = float(rng.uniform(-40, 40))
        cv2.line(
            floor,
            tuple(int(v) for v in p1),
            tuple(int(v) for v in p2),
            (shade + 100,) * 3,
            int(rng.integers(1, 4)),
        )
    for _ in range(rng.integers(3, 8)):  # unlabelled clutter
        center = tuple(int(v) for v in rng.integers(0, size, 2))
        axes = tuple(int(v) for v in rng.integers(4, 22, 2))
        color = tuple(float(c) for c in rng.choice([[70, 80, 90], [50, 70, 100], [120, 120, 120], [40, 50, 60]]))
        cv2.ellipse(floor, center, axes, float(rng.uniform(0, 180)), 0, 360, color, -1)
    return floor


def render_sample_scene(
    rng: np.random.Generator, size: int = 512, forced_class: int | None = None
) -> tuple[np.ndarray, list[dict], np.ndarray]:
    """One BGR uint8 image, its objects [{"category_id", "polygons", "area", "bbox"}] and its visible-class map."""
    image = _background(rng, size)
    count = int(rng.integers(3, 13))
    classes = list(rng.choice(np.arange(1, 11), size=count, p=CLASS_PROBS))
    if forced_class is not None:
        classes[int(rng.integers(count))] = forced_class
    owner = _paint_objects(image, classes, rng, size)
    image = np.clip(image, 0, 255).astype(np.uint8)
    objects, label_map = _visible_objects(classes, owner, size)
    return image, objects, label_map


def _paint_objects(image: np.ndarray, classes: list, rng: np.random.Generator, size: int) -> np.ndarray:
    """Paint the objects of `classes` in turn onto the float `image` (later ones occlude earlier ones); the map of
    which object owns each pixel (-1: none)."""
    owner = np.full((size, size), -1, np.int16)
    for index, category in enumerate(classes):
        low, high = SIZE_RANGE[int(category)]
        scale = float(rng.uniform(low, high))
        angle = float(rng.uniform(0, 2 * np.pi))
        outline = _outline(int(category), rng) * scale
        rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        center = rng.uniform(0.05 * size, 0.95 * size, 2)
        points = outline @ rotation.T + center
        polygon = np.round(points).astype(np.int32)
        x0, y0 = np.clip(polygon.min(axis=0), 0, size - 1)
        x1, y1 = np.clip(polygon.max(axis=0) + 1, 1, size)
        if x1 - x0 < 3 or y1 - y0 < 3:
            continue
        mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
        cv2.fillPoly(mask, [polygon - [x0, y0]], 1)
        inside = mask.astype(bool)
        texture, alpha = _texture(int(category), rng, y1 - y0, x1 - x0, angle)
        region = image[y0:y1, x0:x1]
        region[inside] = alpha * texture[inside] + (1 - alpha) * region[inside]
        owner[y0:y1, x0:x1][inside] = index
    return owner


def _visible_objects(classes: list, owner: np.ndarray, size: int) -> tuple[list[dict], np.ndarray]:
    """The objects with enough visible pixels, as polygons of their visible parts, and the visible-class map."""
    objects, label_map = [], np.zeros((size, size), np.uint8)
    for index, category in enumerate(classes):
        visible = (owner == index).astype(np.uint8)
        area = int(visible.sum())
        if area < MIN_VISIBLE_AREA:
            continue
        polygons = _visible_polygons(visible, size)
        if not polygons:
            continue
        x, y, w, h = cv2.boundingRect(visible)
        objects.append(
            {
                "category_id": int(category),
                "polygons": polygons,
                "area": float(area),
                "bbox": [float(x), float(y), float(w), float(h)],
            }
        )
        label_map[visible.astype(bool)] = category
    return objects, label_map


def _visible_polygons(visible: np.ndarray, size: int) -> list[list[float]]:
    """The outlines of a visible mask's parts (fragments under MIN_FRAGMENT_AREA left out), flat [x, y, ...]."""
    contours, _ = cv2.findContours(visible, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polygons = []
    for contour in contours:
        if cv2.contourArea(contour) < MIN_FRAGMENT_AREA:
            continue
        approx = cv2.approxPolyDP(contour, 0.7, True).reshape(-1, 2).astype(np.float64) + 0.5
        if len(approx) >= 3:
            polygons.append([round(float(v), 1) for v in np.clip(approx, 0, size).ravel()])
    return polygons


def _coco(images: list[dict], annotations: list[dict]) -> dict:
    return {
        "info": {
            "description": "procedural sample of the recycling-trash segmentation data",
            "version": "1.0",
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": i + 1, "name": name, "supercategory": name} for i, name in enumerate(TRASH_CATEGORY_NAMES)
        ],
    }


def _subset(entries: list[tuple[dict, list[dict]]]) -> dict:
    """Images re-indexed 0.. with their annotations re-indexed 0.. (each json stands alone)."""
    images, annotations = [], []
    for image_id, (image, objects) in enumerate(entries):
        images.append({**image, "id": image_id})
        for obj in objects:
            annotations.append(
                {
                    "id": len(annotations),
                    "image_id": image_id,
                    "category_id": obj["category_id"],
                    "segmentation": obj["polygons"],
                    "area": obj["area"],
                    "bbox": obj["bbox"],
                    "iscrowd": 0,
                }
            )
    return _coco(images, annotations)


def make_sample_dataset(
    out_dir: str | Path,
    num_train: int = 240,
    num_test: int = 60,
    seed: int = 0,
    val_fraction: float = 0.2,
    progress: bool = False,
    overwrite: bool = False,
) -> dict:
    """Write train_all/train/val/test json and the JPEGs under `out_dir` (new, empty, or the generator's own for
    the same arguments; with `overwrite` also its own for other arguments: docs/output_folders.md); returns a
    summary. A negative image count raises SampleCountError before anything is written."""
    for option, count in (("--num-train", num_train), ("--num-test", num_test)):
        if count < 0:
            raise SampleCountError(f"{option} {count}: give a number of images >= 0")
    job = {"num_train": num_train, "num_test": num_test, "seed": seed, "val_fraction": val_fraction}
    with owned_output_folder(
        out_dir, TOOL, job, writes=OUTPUTS, overwrite=overwrite, adopt=_made_before_owner_records
    ) as owned:
        owned.record(*OUTPUTS)
        return _generate(Path(out_dir), num_train, num_test, seed, val_fraction, progress)


def _generate(out: Path, num_train: int, num_test: int, seed: int, val_fraction: float, progress: bool) -> dict:
    rng = np.random.default_rng(seed)
    per_folder = [0, 0, 0]
    labelled: list[tuple[dict, list[dict]]] = []
    unlabelled: list[tuple[dict, list[dict]]] = []
    total = num_train + num_test
    with Progress(total, "sample images", "img") if progress else nullcontext() as meter:
        for index in range(total):
            forced = (index % 10) + 1 if index < 20 and index < num_train else None
            image, objects, _ = render_sample_scene(rng, 512, forced)
            folder = index % len(FOLDERS)
            file_name = f"{FOLDERS[folder]}/{per_folder[folder]:04d}.jpg"
            per_folder[folder] += 1
            ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
            if not ok:
                raise OSError(f"could not encode {file_name}")
            atomic_write_bytes(out / file_name, encoded.tobytes())
            entry = {"file_name": file_name, "height": 512, "width": 512}
            (labelled if index < num_train else unlabelled).append((entry, objects))
            if meter is not None:
                meter.update(1)
    order = rng.permutation(len(labelled))
    num_val = int(round(len(labelled) * val_fraction))
    val_ids = set(order[:num_val].tolist())
    train = [entry for i, entry in enumerate(labelled) if i not in val_ids]
    val = [entry for i, entry in enumerate(labelled) if i in val_ids]
    test = [(entry, []) for entry, _ in unlabelled]
    for name, entries in (("train_all", labelled), ("train", train), ("val", val), ("test", test)):
        atomic_write_text(out / f"{name}.json", json.dumps(_subset(entries), separators=(",", ":")))

    counts = {name: 0 for name in TRASH_CATEGORY_NAMES}
    for _, objects in labelled:
        for obj in objects:
            counts[TRASH_CATEGORY_NAMES[obj["category_id"] - 1]] += 1
    return {
        "num_train": len(train),
        "num_val": len(val),
        "num_test": len(test),
        "annotations_per_class": counts,
    }
