"""PNG mask datasets (`--from png-masks`): one mask per image, single-channel (grey), indexed (palette) or colour
with a label map of colours.

Layouts, found in this order under SRC:
- Pascal VOC and CVAT's "Segmentation mask 1.1": `JPEGImages/`, `SegmentationClass/*.png`, and the splits listed
  in `ImageSets/Segmentation/<split>.txt` (CVAT's `default.txt` is train; `trainval.txt` only without train/val);
- an image folder and a mask folder (`images/` or `img/`; `masks/`, `labels/`, `annotations/` or
  `SegmentationClass/`), each with the same split sub-folders (`train/`, `val/` or `valid/`, `test/`) or none
  (one split, train); or `<split>/images/` and `<split>/masks/`.
A mask is found by its image's relative path with the extension `.png`. A test split without any mask is a split
without labels; elsewhere an image without its mask is an error.

Classes, in the order of the mask values: `--classes`, else `labelmap.txt` (CVAT: `name:r,g,b:parts:actions`, the
colours of colour masks), else `classes.txt` (one name a line), in SRC or the mask folder (or a split's own
folder, where every split must then give the same list), else the 21 VOC names for a VOC tree.

Values: a single-channel or indexed mask holds class indices (an indexed PNG's indices, never its colours). The
value `--background` (default 0) is label 0, the other classes follow in their order as labels 1..K; the values
in `--ignore` (default 255) are IGNORE_LABEL; `--reduce-zero-label` makes 0 ignore and v label v - 1 (the class
list then names the values 1..K). A colour mask is mapped through the label map's colours (its first entry is
label 0). A value or colour outside the class list, an RGB mask where indices are expected, or a mask of another
size than its image is one error naming the file and the pixel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ...io.images import IMAGE_EXTENSIONS
from .base import (
    IGNORE_LABEL,
    SPLIT_NAMES,
    FormatError,
    FormatOptions,
    SourceDataset,
    SourceImage,
    image_size,
    register_format,
)
from .checks import same_class_lists

BACKGROUND_NAMES = {"background", "_background_", "bg", "void", "unlabeled", "unlabelled"}
VOC_CLASSES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
IMAGE_FOLDERS = ("JPEGImages", "images", "img", "imgs", "image")
MASK_FOLDERS = ("SegmentationClass", "masks", "labels", "annotations", "mask", "label", "gt")


@dataclass(frozen=True)
class ClassList:
    """Class names in the order of the mask values, the label map's colours where it gives them, and the file."""

    names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...] | None
    source: str


@register_format("png-masks")
def read_png_masks(source: Path, options: FormatOptions) -> SourceDataset:
    """The PNG-mask dataset under the folder `source` (layouts above)."""
    if not source.is_dir():
        raise FormatError(f"{source}: give the dataset's folder (images and masks under it)")
    pairs, layout = find_pairs(source)
    class_list = find_class_list(source, pairs, options, voc=layout == "voc")
    mapping = MaskMapping.build(class_list, options)
    dataset = SourceDataset(
        format="png-masks", source=source, classes=mapping.classes, splits={}, conventions=mapping.conventions()
    )
    dataset.conventions.insert(0, f"layout: {layout}; classes from {class_list.source}")
    if class_list.names == VOC_CLASSES and class_list.source.startswith("the Pascal VOC"):
        dataset.warnings.append(
            f"{source}: no labelmap.txt or classes.txt: the masks are read with the 21 Pascal VOC class names; give "
            "--classes (background first, in mask-value order) if they are not VOC's"
        )
    for split, items in pairs.items():
        labelled = any(mask is not None and mask.is_file() for _, _, mask in items)
        images = []
        for name, image_path, mask_path in items:
            found = mask_path is not None and mask_path.is_file()
            if not found and (labelled or split != "test"):
                expected = mask_path or f"a mask folder ({', '.join(MASK_FOLDERS)})"
                raise FormatError(
                    f"{image_path}: no mask for this image (expected {expected}): add it or drop the image"
                )
            images.append(source_image(image_path, f"{split}/{name}", mask_path if found else None, mapping))
        if not labelled:
            dataset.conventions.append(f"split {split}: no masks, written without labels")
        dataset.splits[split] = images
    return dataset


def source_image(image_path: Path, name: str, mask_path: Path | None, mapping: MaskMapping) -> SourceImage:
    height, width = image_size(image_path)
    image = SourceImage(path=image_path, name=name, height=height, width=width, label_path=mask_path)
    if mask_path is not None:
        image.label_map = lambda: mapping.label_map(mask_path, (height, width))
    return image


# ---- layout ---------------------------------------------------------------------------------------------------


Pairs = dict[str, list[tuple[str, Path, Path | None]]]  # split -> (relative name, image, where its mask belongs)


def find_pairs(source: Path) -> tuple[Pairs, str]:
    """(split -> its (name, image, mask) triples, the layout's name)."""
    voc_sets = source / "ImageSets" / "Segmentation"
    if (source / "SegmentationClass").is_dir() and voc_sets.is_dir():
        return _voc_pairs(source, voc_sets), "voc"
    image_dir = _first_dir(source, IMAGE_FOLDERS)
    mask_dir = _first_dir(source, MASK_FOLDERS)
    if image_dir is not None and mask_dir is not None:
        splits = [d.name for d in sorted(image_dir.iterdir()) if d.is_dir() and d.name.lower() in SPLIT_NAMES]
        if splits:
            pairs = {}
            for folder in splits:
                pairs[SPLIT_NAMES[folder.lower()]] = folder_pairs(image_dir / folder, mask_dir / folder)
            return pairs, f"{image_dir.name}/<split>/ and {mask_dir.name}/<split>/"
        return {"train": folder_pairs(image_dir, mask_dir)}, f"{image_dir.name}/ and {mask_dir.name}/"
    split_first = [d for d in sorted(source.iterdir()) if d.is_dir() and d.name.lower() in SPLIT_NAMES]
    pairs = {}
    for folder in split_first:
        images, masks = _first_dir(folder, IMAGE_FOLDERS), _first_dir(folder, MASK_FOLDERS)
        if images is not None:
            pairs[SPLIT_NAMES[folder.name.lower()]] = folder_pairs(images, masks)
    if pairs:
        return pairs, "<split>/images/ and <split>/masks/"
    raise FormatError(
        f"{source}: no images and masks found: give a folder with JPEGImages/ + SegmentationClass/ + "
        f"ImageSets/Segmentation/, or an image folder ({', '.join(IMAGE_FOLDERS)}) and a mask folder "
        f"({', '.join(MASK_FOLDERS)})"
    )


def _first_dir(folder: Path, names: Sequence[str]) -> Path | None:
    return next((folder / name for name in names if (folder / name).is_dir()), None)


def folder_pairs(image_dir: Path, mask_dir: Path | None) -> list[tuple[str, Path, Path | None]]:
    """(relative name, image, where its mask belongs: the image's relative path with .png under `mask_dir`) for
    every image under `image_dir`."""
    images = sorted(p for p in image_dir.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not images:
        raise FormatError(f"{image_dir}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    pairs = []
    for path in images:
        name = path.relative_to(image_dir).as_posix()
        mask = None if mask_dir is None else mask_dir / Path(name).with_suffix(".png")
        pairs.append((name, path, mask))
    return pairs


def _voc_pairs(source: Path, voc_sets: Path) -> Pairs:
    lists = {path.stem: path for path in sorted(voc_sets.glob("*.txt"))}
    if not lists:
        raise FormatError(f"{voc_sets}: no split lists (train.txt, val.txt, ...)")
    chosen: dict[str, Path] = {}
    for stem, path in lists.items():
        if stem.lower() in SPLIT_NAMES:
            chosen[SPLIT_NAMES[stem.lower()]] = path
    if not chosen and "default" in lists:
        chosen["train"] = lists["default"]  # CVAT's export
    if "trainval" in lists and not {"train", "val"} & set(chosen):
        chosen["train"] = lists["trainval"]
    if not chosen:
        raise FormatError(f"{voc_sets}: split lists {sorted(lists)}; expected train.txt, val.txt, test.txt")
    images_dir = source / "JPEGImages"
    pairs: Pairs = {}
    for split, list_file in chosen.items():
        items = []
        for number, line in enumerate(list_file.read_text(encoding="utf-8").splitlines(), start=1):
            item = line.split()[0] if line.split() else ""
            if not item:
                continue
            image = next(
                (images_dir / f"{item}{e}" for e in _extensions() if (images_dir / f"{item}{e}").is_file()), None
            )
            if image is None:
                raise FormatError(f"{list_file}:{number}: no image {item}.* in {images_dir}")
            items.append((f"{item}{image.suffix}", image, source / "SegmentationClass" / f"{item}.png"))
        pairs[split] = items
    return pairs


def _extensions() -> list[str]:
    return [*IMAGE_EXTENSIONS, *(ext.upper() for ext in IMAGE_EXTENSIONS)]


# ---- classes --------------------------------------------------------------------------------------------------


def find_class_list(source: Path, pairs: Pairs, options: FormatOptions, voc: bool) -> ClassList:
    """The class list (see the module): --classes, labelmap.txt, classes.txt, or VOC's names."""
    if options.classes:
        return ClassList(tuple(options.classes), None, "--classes")
    roots = {_split_root(mask, name) for items in pairs.values() for name, _, mask in items[:1] if mask is not None}
    folders = list(dict.fromkeys([source, *sorted({root.parent for root in roots}), *sorted(roots)]))
    found = [(path, read_class_file(path)) for folder in folders for path in _class_files(folder)]
    if found:
        same_class_lists((str(path), list(class_list.names)) for path, class_list in found)
        return found[0][1]
    if voc:
        return ClassList(VOC_CLASSES, None, "the Pascal VOC class names (no labelmap.txt)")
    raise FormatError(
        f"{source}: no class list: give --classes (background first, in mask-value order), or put a labelmap.txt "
        "(name:r,g,b per line) or a classes.txt (one name a line) beside the masks"
    )


def _split_root(mask: Path, name: str) -> Path:
    """The mask folder of a split: `mask` less the image's relative `name`."""
    return Path(*mask.parts[: len(mask.parts) - len(Path(name).parts)])


def _class_files(folder: Path) -> list[Path]:
    return [path for path in (folder / "labelmap.txt", folder / "classes.txt") if path.is_file()][:1]


def read_class_file(path: Path) -> ClassList:
    """A labelmap.txt (`name:r,g,b:...` lines, '#' comments) or a classes.txt (one name a line)."""
    names, colors = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if path.name == "labelmap.txt":
            name, _, rest = line.partition(":")
            color = rest.split(":")[0]
            try:
                rgb = tuple(int(v) for v in color.split(","))
            except ValueError:
                rgb = ()
            if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
                raise FormatError(f"{path}:{number}: expected 'name:r,g,b:...', got {line!r}")
            colors.append(rgb)
            names.append(name)
        else:
            names.append(line)
    if len(names) < 2:
        raise FormatError(f"{path}: {len(names)} class(es); give the background and a class at least")
    if len(set(colors)) != len(colors):
        raise FormatError(f"{path}: two classes share a colour; each class needs its own")
    return ClassList(tuple(names), tuple(colors) if colors else None, str(path))


# ---- values -> labels -----------------------------------------------------------------------------------------


@dataclass
class MaskMapping:
    """How a mask becomes a label map: a 256-entry table for indices (256 = not a class), the colours of colour
    masks, and the dataset's class names by label."""

    classes: list[str]
    table: np.ndarray  # uint16[256]: mask value -> label, 256 where the value is no class
    colors: dict[tuple[int, int, int], int] | None
    description: list[str]

    @classmethod
    def build(cls, class_list: ClassList, options: FormatOptions) -> MaskMapping:
        try:
            return build_mapping(list(class_list.names), options, class_list.colors)
        except FormatError as error:
            raise FormatError(f"{error} (class list from {class_list.source})") from None

    def conventions(self) -> list[str]:
        return list(self.description)

    def label_map(self, path: Path, shape: tuple[int, int]) -> np.ndarray:
        values, kind = read_mask(path)
        if values.shape[:2] != shape:
            raise FormatError(
                f"{path}: mask is {values.shape[1]}x{values.shape[0]}, its image is {shape[1]}x{shape[0]}"
            )
        if kind == "rgb":
            return self._colour_labels(path, values)
        labels = self.table[values]
        bad = labels == 256
        if bad.any():
            y, x = np.argwhere(bad)[0]
            raise FormatError(
                f"{path}: value {int(values[y, x])} at pixel x={x}, y={y} is no class of the {len(self.classes)} "
                f"(values {self._valid_values()}): fix the mask, or give --classes / --ignore"
            )
        return labels.astype(np.uint8)

    def _valid_values(self) -> str:
        values = np.flatnonzero(self.table != 256).tolist()
        return ", ".join(map(str, values)) if len(values) <= 12 else f"{values[0]}..{values[-1]}"

    def _colour_labels(self, path: Path, rgb: np.ndarray) -> np.ndarray:
        if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
            return self.label_map_of_values(path, rgb[..., 0])
        if self.colors is None:
            y, x = np.argwhere((rgb[..., 0] != rgb[..., 1]) | (rgb[..., 0] != rgb[..., 2]))[0]
            colour = tuple(rgb[y, x].tolist())
            raise FormatError(
                f"{path}: an RGB mask where class indices are expected (pixel x={x}, y={y} is {colour}): save it as an "
                "indexed (palette) or single-channel PNG, or give a labelmap.txt with the colours"
            )
        packed = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
        keys = np.array([(r << 16) | (g << 8) | b for r, g, b in self.colors], dtype=np.int32)
        order = np.argsort(keys)
        position = np.clip(np.searchsorted(keys[order], packed), 0, len(keys) - 1)
        found = keys[order][position] == packed
        if not found.all():
            y, x = np.argwhere(~found)[0]
            raise FormatError(
                f"{path}: colour {tuple(rgb[y, x].tolist())} at pixel x={x}, y={y} is not in the label map: add it to "
                "labelmap.txt or fix the mask"
            )
        labels_of_keys = np.array(list(self.colors.values()), dtype=np.uint8)
        return labels_of_keys[order][position]

    def label_map_of_values(self, path: Path, values: np.ndarray) -> np.ndarray:
        labels = self.table[values]
        if (labels == 256).any():
            y, x = np.argwhere(labels == 256)[0]
            raise FormatError(f"{path}: grey value {int(values[y, x])} at pixel x={x}, y={y} is no class")
        return labels.astype(np.uint8)


def build_mapping(
    names: list[str], options: FormatOptions, colors: Sequence[tuple[int, int, int]] | None = None
) -> MaskMapping:
    """The mapping of mask values (and colours) to labels under `options` (see the module)."""
    table = np.full(256, 256, dtype=np.uint16)
    ignore = set(options.ignore)
    if options.reduce_zero_label:
        if len(names) > 254:
            raise FormatError(f"{len(names)} classes with --reduce-zero-label: 254 at most")
        if names[0].strip().lower() in BACKGROUND_NAMES:
            raise FormatError(
                f"--reduce-zero-label: the class list starts with {names[0]!r}, but mask value 0 is then ignore and "
                f"value 1 is the first class ({names[0]!r} would name value 1's pixels): leave {names[0]!r} out of "
                "the list, or leave --reduce-zero-label out"
            )
        table[1 : len(names) + 1] = np.arange(len(names))
        table[0] = IGNORE_LABEL
        for value in ignore:
            table[value] = IGNORE_LABEL
        description = [
            f"reduce zero label: mask value 0 is ignore, value v (1..{len(names)}) is label v - 1 "
            f"({names[0]!r} is label 0)",
        ]
        classes = list(names)
    else:
        background = options.background
        if not 0 <= background < len(names):
            raise FormatError(f"--background {background}: the class list has values 0..{len(names) - 1}")
        order = [background, *[v for v in range(len(names)) if v != background]]
        for label, value in enumerate(order):
            table[value] = label
        for value in ignore:
            if value < len(names) and value != background:
                raise FormatError(f"--ignore {value} is also the class {names[value]!r}: give one or the other")
            table[value] = IGNORE_LABEL
        classes = [names[v] for v in order]
        description = [
            f"mask value {background} ({names[background]!r}) is label 0 (background)"
            + (", the other values follow in order as labels 1..K" if background else "; value v is label v"),
        ]
    description.append(f"mask value(s) {sorted(ignore)} are ignore ({IGNORE_LABEL})")
    colour_labels = None
    if colors is not None:
        colour_labels = {tuple(c): int(table[i]) for i, c in enumerate(colors) if table[i] != 256}
        description.append("colour masks: the colours of the label map, in its order, are the values 0, 1, ...")
    if len(classes) > 255:
        raise FormatError(f"{len(classes)} classes: the label maps hold 255 at most (255 is ignore)")
    return MaskMapping(classes, table, colour_labels, description)


def read_mask(path: Path) -> tuple[np.ndarray, str]:
    """(values, kind) of a mask PNG: kind "index" (single-channel, or an indexed PNG's indices) with uint8 H x W,
    or "rgb" with uint8 H x W x 3; FormatError naming the file for anything else."""
    try:
        with Image.open(path) as image:
            mode = image.mode
            if mode == "P" or mode == "L":
                return np.asarray(image, dtype=np.uint8), "index"
            if mode == "1":
                return np.asarray(image, dtype=np.uint8), "index"
            if mode in ("I", "I;16", "I;16B", "I;16L"):
                values = np.asarray(image)
                if values.max(initial=0) > 255:
                    raise FormatError(f"{path}: a 16-bit mask with values up to {values.max()}; 255 at most")
                return values.astype(np.uint8), "index"
            if mode in ("RGB", "RGBA", "LA"):
                array = np.asarray(image.convert("RGB"))
                return array, "rgb"
    except FileNotFoundError:
        raise FormatError(f"{path}: mask not found") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise FormatError(f"{path}: not a readable PNG mask ({error})") from None
    raise FormatError(f"{path}: a mask of PIL mode {mode}; give a single-channel, indexed or RGB PNG")
