"""Tiny datasets written in other formats for tests/test_formats.py and tests/test_convert_dataset.py: a
Roboflow-style YOLO-seg export, a Pascal VOC tree, a CVAT "Segmentation mask 1.1" export, grey masks with a
classes.txt, Cityscapes and ADE20K mini trees. Each writer returns what it drew (label maps in the project's
convention), so a test compares the converted dataset with it."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

W, H = 40, 30
VOC_PALETTE = [(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0)] + [(0, 0, 0)] * 251 + [(224, 224, 192)]
CVAT_COLORS = {"background": (0, 0, 0), "bag": (250, 50, 83), "bottle": (51, 221, 255)}


def photo(seed: int, height: int = H, width: int = W) -> np.ndarray:
    """A random BGR photo (no two seeds alike, nor near-alike)."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def write_photo(path: Path, seed: int, height: int = H, width: int = W) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), photo(seed, height, width))


def blocks(seed: int, values: list[int], height: int = H, width: int = W) -> np.ndarray:
    """A label map of rectangles of the given values over 0 (seeded)."""
    rng = np.random.default_rng(seed)
    label = np.zeros((height, width), dtype=np.uint8)
    for value in values:
        y0, x0 = int(rng.integers(0, height - 8)), int(rng.integers(0, width - 8))
        label[y0 : y0 + int(rng.integers(4, 12)), x0 : x0 + int(rng.integers(4, 14))] = value
    return label


def write_indexed(path: Path, label: np.ndarray, palette: list[tuple[int, int, int]] = VOC_PALETTE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(label, mode="P")
    image.putpalette([c for color in palette for c in color])
    image.save(path)


def write_grey(path: Path, label: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(label, mode="L").save(path)


def write_rgb(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb, mode="RGB").save(path)


# ---- YOLO-seg --------------------------------------------------------------------------------------------------

YOLO_NAMES = ["bag", "bottle"]


def yolo_objects(seed: int) -> list[tuple[int, list[float]]]:
    """Two or three objects of one image: (YOLO class, normalised polygon)."""
    rng = np.random.default_rng(seed)
    objects = []
    for _ in range(int(rng.integers(2, 4))):
        x0, y0 = rng.uniform(0.0, 0.6), rng.uniform(0.0, 0.6)
        x1, y1 = x0 + rng.uniform(0.15, 0.4), y0 + rng.uniform(0.15, 0.4)
        objects.append((int(rng.integers(0, 2)), [x0, y0, x1, y0, (x0 + x1) / 2, y1, x0, (y0 + y1) / 2]))
    return objects


def write_yolo(
    root: Path, names_as_dict: bool = False, counts: dict[str, int] | None = None, unlabelled: int = 1
) -> dict[str, dict[str, list[tuple[int, list[float]]]]]:
    """A Roboflow-style YOLO-seg export: data.yaml (../train/images etc.), train/ valid/ test/ with images/ and
    labels/; the first `unlabelled` train images have no .txt. Returns {split folder: {image name: objects}}."""
    counts = counts or {"train": 4, "valid": 2, "test": 1}
    drawn: dict[str, dict[str, list]] = {}
    seed = 0
    for split, count in counts.items():
        drawn[split] = {}
        for index in range(count):
            seed += 1
            name = f"{split}_{index:02d}.jpg"
            write_photo(root / split / "images" / name, seed)
            objects = [] if split == "train" and index < unlabelled else yolo_objects(seed)
            drawn[split][name] = objects
            if not (split == "train" and index < unlabelled):
                lines = [f"{c} " + " ".join(f"{v:.6f}" for v in coords) for c, coords in objects]
                (root / split / "labels").mkdir(parents=True, exist_ok=True)
                (root / split / "labels" / f"{Path(name).stem}.txt").write_text("\n".join(lines) + "\n")
    names = "\n".join(f"  {i}: {n}" for i, n in enumerate(YOLO_NAMES)) if names_as_dict else str(YOLO_NAMES)
    yaml = [f"train: ../train/images\nval: ../valid/images\ntest: ../test/images\nnc: {len(YOLO_NAMES)}"]
    yaml.append(f"names:\n{names}" if names_as_dict else f"names: {names}")
    yaml.append("roboflow:\n  workspace: test\n  version: 1")
    (root / "data.yaml").write_text("\n".join(yaml) + "\n")
    return drawn


# ---- PNG masks -------------------------------------------------------------------------------------------------


def write_voc(root: Path, splits: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """A Pascal VOC tree: JPEGImages/, indexed SegmentationClass/ (classes 1..3, a 255 border), ImageSets lists.
    Returns {item: label map} (the border as 255)."""
    splits = splits or {"train": 3, "val": 2}
    drawn, seed = {}, 100
    for split, count in splits.items():
        items = []
        for _ in range(count):
            seed += 1
            item = f"2007_{seed:06d}"
            write_photo(root / "JPEGImages" / f"{item}.jpg", seed)
            label = blocks(seed, [1, 2, 3])
            label[0, :] = 255  # VOC's border pixels
            write_indexed(root / "SegmentationClass" / f"{item}.png", label)
            drawn[item] = label
            items.append(item)
        (root / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(items) + "\n")
    return drawn


def write_cvat_masks(root: Path, count: int = 3) -> dict[str, np.ndarray]:
    """CVAT's "Segmentation mask 1.1" export: labelmap.txt, colour SegmentationClass/ PNGs, JPEGImages/,
    ImageSets/Segmentation/default.txt. Returns {item: label map}."""
    lines = ["# label:color_rgb:parts:actions"] + [f"{n}:{r},{g},{b}::" for n, (r, g, b) in CVAT_COLORS.items()]
    root.mkdir(parents=True, exist_ok=True)
    (root / "labelmap.txt").write_text("\n".join(lines) + "\n")
    colors = np.array(list(CVAT_COLORS.values()), dtype=np.uint8)
    drawn = {}
    for index in range(count):
        item = f"frame_{index:06d}"
        write_photo(root / "JPEGImages" / f"{item}.jpg", 200 + index)
        label = blocks(200 + index, [1, 2])
        write_rgb(root / "SegmentationClass" / f"{item}.png", colors[label])
        drawn[item] = label
    (root / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Segmentation" / "default.txt").write_text("\n".join(drawn) + "\n")
    return drawn


def write_grey_masks(root: Path, splits: tuple[str, ...] = ("train", "val"), classes: list[str] | None = None):
    """images/<split>/*.png and masks/<split>/*.png (grey, values 0..2), masks/classes.txt. Returns
    {split/name: label map}."""
    classes = classes or ["background", "bag", "bottle"]
    drawn, seed = {}, 300
    for split in splits:
        for index in range(2):
            seed += 1
            name = f"{split}/img_{index}.png"
            write_photo(root / "images" / name, seed)
            label = blocks(seed, [1, 2])
            write_grey(root / "masks" / name, label)
            drawn[name] = label
    (root / "masks" / "classes.txt").write_text("\n".join(classes) + "\n")
    return drawn


# ---- benchmark trees -------------------------------------------------------------------------------------------


def write_cityscapes(root: Path) -> dict[str, np.ndarray]:
    """leftImg8bit/{train,val,test}/<city>/ and gtFine/{train,val}/<city>/*_gtFine_labelIds.png holding ids 0
    (unlabeled), 7 (road), 26 (car) and 24 (person). Returns {split/city/name: the trainId label map}."""
    drawn, seed = {}, 400
    for split, city in (("train", "aachen"), ("val", "lindau"), ("test", "berlin")):
        seed += 1
        stem = f"{city}_000000_{seed:06d}"
        write_photo(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", seed)
        ids = blocks(seed, [7, 26, 24])
        if split != "test":
            write_grey(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", ids)
        train_ids = np.full_like(ids, 255)
        for label_id, train_id in ((7, 0), (26, 13), (24, 11)):
            train_ids[ids == label_id] = train_id
        drawn[f"{split}/{city}/{stem}_leftImg8bit.png"] = train_ids
    return drawn


def write_ade20k(root: Path) -> dict[str, np.ndarray]:
    """ADEChallengeData2016/images/{training,validation}/*.jpg and annotations/ (values 0, 1, 13, 150).
    Returns {split/name: the annotation as stored}."""
    drawn, seed = {}, 500
    data = root / "ADEChallengeData2016"
    for folder, split in (("training", "train"), ("validation", "val")):
        for _ in range(2):
            seed += 1
            name = f"ADE_{folder[:5]}_{seed:08d}"
            write_photo(data / "images" / folder / f"{name}.jpg", seed)
            annotation = blocks(seed, [1, 13, 150])
            write_grey(data / "annotations" / folder / f"{name}.png", annotation)
            drawn[f"{split}/{name}.jpg"] = annotation
    return drawn
