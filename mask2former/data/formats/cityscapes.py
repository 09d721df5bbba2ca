"""Cityscapes (`--from cityscapes`): `leftImg8bit/<split>/<city>/*_leftImg8bit.png` with their labels in
`gtFine/<split>/<city>/*_gtFine_labelIds.png` (or, where only those were made, `*_gtFine_labelTrainIds.png`).

Convention: the official evaluation's 19 classes, label = trainId (0 road .. 18 bicycle): every label id is
mapped by the official id -> trainId table, the ids without a trainId (unlabeled, ego vehicle, rectification
border, out of roi, static, dynamic, ground, parking, rail track, guard rail, bridge, tunnel, polegroup, caravan,
trailer, license plate) are ignore (255). Label 0 is road, not a background. The test split's labels carry no
classes (the benchmark keeps them), so test is written without labels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import IGNORE_LABEL, FormatError, FormatOptions, SourceDataset, SourceImage, image_size, register_format
from .png_masks import MaskMapping

# label id -> (name, trainId) of the 19 evaluated classes; every other id 0..33 is ignore
TRAIN_IDS = {
    7: ("road", 0),
    8: ("sidewalk", 1),
    11: ("building", 2),
    12: ("wall", 3),
    13: ("fence", 4),
    17: ("pole", 5),
    19: ("traffic light", 6),
    20: ("traffic sign", 7),
    21: ("vegetation", 8),
    22: ("terrain", 9),
    23: ("sky", 10),
    24: ("person", 11),
    25: ("rider", 12),
    26: ("car", 13),
    27: ("truck", 14),
    28: ("bus", 15),
    31: ("train", 16),
    32: ("motorcycle", 17),
    33: ("bicycle", 18),
}
NUM_LABEL_IDS = 34  # ids 0..33 (license plate, -1, is never stored in a labelIds PNG)
CLASSES = [name for name, _ in sorted(TRAIN_IDS.values(), key=lambda item: item[1])]
SPLITS = {"train": "train", "val": "val", "test": "test"}


def id_mapping() -> MaskMapping:
    """labelIds value -> trainId (ids without one, and 255, -> ignore; other values are no class)."""
    table = np.full(256, 256, dtype=np.uint16)
    table[:NUM_LABEL_IDS] = IGNORE_LABEL
    for label_id, (_, train_id) in TRAIN_IDS.items():
        table[label_id] = train_id
    table[IGNORE_LABEL] = IGNORE_LABEL
    return MaskMapping(list(CLASSES), table, None, [])


def train_id_mapping() -> MaskMapping:
    """labelTrainIds value -> itself (0..18, 255 ignore)."""
    table = np.full(256, 256, dtype=np.uint16)
    table[: len(CLASSES)] = np.arange(len(CLASSES))
    table[IGNORE_LABEL] = IGNORE_LABEL
    return MaskMapping(list(CLASSES), table, None, [])


@register_format("cityscapes")
def read_cityscapes(source: Path, options: FormatOptions) -> SourceDataset:
    """The Cityscapes tree at `source` (holding leftImg8bit/ and gtFine/)."""
    images_root, labels_root = source / "leftImg8bit", source / "gtFine"
    if not images_root.is_dir():
        raise FormatError(f"{source}: no leftImg8bit/ folder: give the Cityscapes root (leftImg8bit/ and gtFine/)")
    if options.classes or options.reduce_zero_label:
        raise FormatError("--from cityscapes: the 19 classes and their ids are fixed; leave --classes and co. out")
    by_ids, by_train_ids = id_mapping(), train_id_mapping()
    dataset = SourceDataset(
        format="cityscapes",
        source=source,
        classes=list(CLASSES),
        splits={},
        conventions=[
            "the official label id -> trainId table: 19 classes, label = trainId (label 0 is road, not a "
            "background); ids without a trainId are ignore (255)",
            "the test split is written without labels (its official labels carry no classes)",
        ],
    )
    for folder in sorted(p for p in images_root.iterdir() if p.is_dir()):
        split = SPLITS.get(folder.name)
        if split is None:
            continue
        images = []
        for path in sorted(folder.glob("*/*_leftImg8bit.png")):
            stem = path.name.removesuffix("_leftImg8bit.png")
            height, width = image_size(path)
            image = SourceImage(path=path, name=f"{split}/{path.parent.name}/{path.name}", height=height, width=width)
            if split != "test":
                image.label_path, mapping = _label_file(labels_root / folder.name / path.parent.name, stem, path)
                chosen, label_path = (by_ids if mapping == "ids" else by_train_ids), image.label_path
                image.label_map = lambda m=chosen, p=label_path, s=(height, width): m.label_map(p, s)
            images.append(image)
        if not images:
            raise FormatError(f"{folder}: no <city>/*_leftImg8bit.png images")
        dataset.splits[split] = images
    if not dataset.splits:
        raise FormatError(f"{images_root}: no train/, val/ or test/ folder")
    return dataset


def _label_file(folder: Path, stem: str, image: Path) -> tuple[Path, str]:
    for suffix, kind in (("_gtFine_labelIds.png", "ids"), ("_gtFine_labelTrainIds.png", "train ids")):
        if (folder / f"{stem}{suffix}").is_file():
            return folder / f"{stem}{suffix}", kind
    raise FormatError(f"{image}: no label {folder / (stem + '_gtFine_labelIds.png')}: add it or drop the image")
