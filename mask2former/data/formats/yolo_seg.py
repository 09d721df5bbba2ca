"""YOLO-seg datasets, as Ultralytics and Roboflow export them (`--from yolo-seg`).

A `data.yaml` names the classes (`names`: a list, or a dict {index: name}; `nc` if given must agree) and the
splits (`train`, `val`, `test`: an image folder, a list of them, or a .txt listing images; relative to `path`
when given, else to the yaml's folder; Roboflow's `../train/images` is also found beside the yaml). Without split
keys that lead anywhere, the folders `train`, `valid` (or `val`) and `test` beside the yaml are taken. Each image
`.../images/<name>.jpg` has its labels in `.../labels/<name>.txt`: one object a line, `class x1 y1 x2 y2 ...`,
the vertices normalised to 0..1 by the image's width and height (a line of 4 numbers is a box `cx cy w h`, taken
as a rectangle, with a warning).

Convention: YOLO class c is label c + 1 (`names[c]`); label 0 is background, the pixels no polygon covers. The
split "valid" is "val". An image without a .txt is an image without objects (counted in the report); an empty
.txt says so explicitly.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from ...io.images import IMAGE_EXTENSIONS, describe_orientation
from .base import (
    SPLIT_NAMES,
    FormatError,
    FormatOptions,
    Region,
    SourceDataset,
    SourceImage,
    image_header,
    register_format,
)

BACKGROUND = "Background"


@register_format("yolo-seg")
def read_yolo_seg(source: Path, options: FormatOptions) -> SourceDataset:
    """The YOLO-seg dataset at `source` (its data.yaml, or the folder holding it)."""
    yaml_path = find_data_yaml(source)
    config = _read_yaml(yaml_path)
    names = class_names(config, yaml_path)
    if options.classes and list(options.classes[1:]) != names:
        raise FormatError(
            f"{yaml_path}: names {names} differ from --classes {list(options.classes[1:])} (background first): "
            "leave --classes out for YOLO-seg, data.yaml names the classes"
        )
    dataset = SourceDataset(
        format="yolo-seg",
        source=yaml_path.parent,
        classes=[options.classes[0] if options.classes else BACKGROUND, *names],
        splits={},
        conventions=[
            f"YOLO class c is label c + 1 (names[c] of {yaml_path.name}); label 0 is background: the pixels no "
            "polygon covers",
            "the split 'valid' is written as 'val'",
        ],
    )
    without_txt = 0
    for split, folders in split_image_folders(config, yaml_path, dataset.conventions).items():
        images = []
        for folder, path in _listed_images(folders, yaml_path):
            image = _read_image(path, folder, split, names, dataset.warnings)
            without_txt += image.label_path is None
            images.append(image)
        if not images:
            raise FormatError(f"{yaml_path}: split {split} ({', '.join(map(str, folders))}) holds no image")
        dataset.splits.setdefault(split, []).extend(images)
    if not dataset.splits:
        raise FormatError(f"{yaml_path}: no split found: give train/val/test in data.yaml or the folders beside it")
    dataset.conventions.append(
        f"{without_txt} image(s) have no .txt in labels/: taken as images without objects (all background)"
    )
    return dataset


def find_data_yaml(source: Path) -> Path:
    """`source` if it is a yaml file, else its data.yaml (or its one *.yaml)."""
    if source.is_file():
        return source
    if (source / "data.yaml").is_file():
        return source / "data.yaml"
    found = sorted(source.glob("*.yaml")) + sorted(source.glob("*.yml"))
    if len(found) == 1:
        return found[0]
    raise FormatError(
        f"{source}: no data.yaml here ({len(found)} other yaml files): give the YOLO-seg export's folder or its "
        "data.yaml"
    )


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise FormatError(f"{path}: not valid YAML ({error})") from None
    if not isinstance(config, dict):
        raise FormatError(f"{path}: a YOLO data.yaml is a mapping with 'names' and the splits")
    return config


def class_names(config: dict[str, Any], yaml_path: Path) -> list[str]:
    """data.yaml's class names, index order: a list, or a dict {0: name, 1: name, ...} without gaps."""
    names = config.get("names")
    if isinstance(names, dict):
        try:
            indices = sorted(int(key) for key in names)
        except (TypeError, ValueError):
            raise FormatError(f"{yaml_path}: names' keys must be class indices 0, 1, ..., got {list(names)}") from None
        if indices != list(range(len(indices))):
            raise FormatError(f"{yaml_path}: names' indices {indices} must be 0..{len(indices) - 1} without gaps")
        names = [names[key] for key in sorted(names, key=int)]
    if not isinstance(names, list) or not names:
        raise FormatError(f"{yaml_path}: 'names' must list the class names (a list, or a dict index -> name)")
    names = [str(name) for name in names]
    count = config.get("nc")
    if count is not None and count != len(names):
        raise FormatError(f"{yaml_path}: nc is {count} but names lists {len(names)} classes: make them agree")
    return names


def split_image_folders(
    config: dict[str, Any], yaml_path: Path, notes: list[str] | None = None
) -> dict[str, list[Path]]:
    """{split: its image folders or .txt lists}, from data.yaml's keys, else the folders beside it; a test entry
    that leads nowhere is left out, with a line in `notes`."""
    root = yaml_path.parent
    base = root / str(config["path"]) if config.get("path") else root
    splits: dict[str, list[Path]] = {}
    for key in ("train", "val", "valid", "test"):
        value = config.get(key)
        if not value:
            continue
        for entry in value if isinstance(value, list) else [value]:
            found = _resolve(str(entry), base, root)
            if found is None:
                if key == "test":  # Roboflow names a test folder it did not export
                    if notes is not None:
                        notes.append(f"{yaml_path.name} test: {entry} is not there: no test split written")
                    continue
                raise FormatError(f"{yaml_path}: {key}: {entry} is neither under {base} nor beside the yaml")
            splits.setdefault(SPLIT_NAMES[key], []).append(found)
    if not splits:
        for folder in ("train", "valid", "val", "test"):
            images = root / folder / "images"
            if images.is_dir():
                splits.setdefault(SPLIT_NAMES[folder], []).append(images)
    return splits


def _resolve(entry: str, base: Path, root: Path) -> Path | None:
    """The folder or list an entry of data.yaml names: under `base`, beside the yaml, or beside it with the
    leading '../' dropped (Roboflow writes '../train/images' for the folder next to data.yaml)."""
    stripped = Path(*[part for part in Path(entry).parts if part not in ("..", ".")] or ["."])
    for candidate in (base / entry, root / entry, root / stripped):
        if candidate.exists():
            return candidate.resolve()
    return None


def _listed_images(folders: list[Path], yaml_path: Path) -> list[tuple[Path, Path]]:
    """(the folder it was listed from, image path) for every image of the split, sorted."""
    listed = []
    for folder in folders:
        if folder.is_file():  # a .txt listing one image a line
            for line in folder.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    path = Path(line.strip())
                    path = path if path.is_absolute() else (folder.parent / path)
                    listed.append((path.parent, path))
        else:
            files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
            listed += [(folder, path) for path in files]
    return listed


def label_file(image: Path) -> Path:
    """The .txt of an image: the last 'images' folder of its path replaced by 'labels' (Ultralytics' rule)."""
    parts = list(image.parts)
    for index in range(len(parts) - 2, -1, -1):
        if parts[index] == "images":
            parts[index] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def _read_image(path: Path, folder: Path, split: str, names: list[str], warnings: list[str]) -> SourceImage:
    height, width, orientation = image_header(path)
    if orientation in (5, 6, 7, 8):
        warnings.append(
            f"{path}: carries {describe_orientation(orientation)}; YOLO tools read its polygons on the rotated "
            "photo, this project on the stored pixels: check its labels (or rotate the pixels and drop the tag)"
        )
    relative = path.relative_to(folder).as_posix() if path.is_relative_to(folder) else path.name
    image = SourceImage(path=path, name=f"{split}/{relative}", height=height, width=width)
    txt = label_file(path)
    if txt.is_file():
        image.label_path = txt
        image.regions = read_label_file(txt, height, width, len(names), warnings)
    return image


def read_label_file(txt: Path, height: int, width: int, num_classes: int, warnings: list[str]) -> list[Region]:
    """The regions of one YOLO-seg .txt in pixel coordinates; FormatError naming the file and line for a class
    beyond the names or a line that is not `class x1 y1 x2 y2 ...`."""
    regions = []
    for number, line in enumerate(txt.read_text(encoding="utf-8").splitlines(), start=1):
        values = line.split()
        if not values:
            continue
        where = f"{txt}:{number}"
        try:
            class_id = int(values[0])
            coords = [float(value) for value in values[1:]]
        except ValueError:
            raise FormatError(f"{where}: not 'class x1 y1 x2 y2 ...' ({line.strip()[:60]!r})") from None
        if not 0 <= class_id < num_classes:
            raise FormatError(
                f"{where}: class {class_id} is beyond the {num_classes} names of data.yaml (0..{num_classes - 1}): "
                "fix the label or add the class to names"
            )
        if not all(math.isfinite(value) for value in coords):
            raise FormatError(f"{where}: coordinates that are not finite numbers")
        if len(coords) == 4:
            cx, cy, w, h = coords
            coords = [cx - w / 2, cy - h / 2, cx + w / 2, cy - h / 2, cx + w / 2, cy + h / 2, cx - w / 2, cy + h / 2]
            warnings.append(f"{where}: a box (4 numbers) in a segmentation dataset: taken as a rectangle")
        elif len(coords) % 2 or len(coords) < 6:
            raise FormatError(f"{where}: {len(coords)} coordinates; a polygon needs x y pairs, 3 points at least")
        pixels = [value * (width if index % 2 == 0 else height) for index, value in enumerate(coords)]
        regions.append(Region(label=class_id + 1, polygons=[pixels], where=where))
    return regions
