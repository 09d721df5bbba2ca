"""ADE20K's scene-parsing benchmark, ADEChallengeData2016 (`--from ade20k`): `images/training/*.jpg` with
`annotations/training/*.png`, and `images/validation/`, `annotations/validation/` (and `images/testing/`, without
labels, where present).

Convention: by default the benchmark's, "reduce zero label": annotation value 0 ("other objects", not labelled)
is ignore and value v (1..150) is label v - 1, 150 classes (label 0 is wall, not a background).
`--no-reduce-zero-label` keeps value 0 as label 0, a background class "other", and the 150 classes as labels
1..150. Class names: objectInfo150.txt or .csv beside images/ when present (its Name column, the first name of
each), else the benchmark's names built in.
"""

from __future__ import annotations

import csv
from pathlib import Path

from .base import FormatError, FormatOptions, SourceDataset, SourceImage, image_size, register_format
from .png_masks import build_mapping

# the 150 classes of objectInfo150, in index order (1..150), by their first name
CLASSES = """wall building sky floor tree ceiling road bed windowpane grass cabinet sidewalk person earth door table
mountain plant curtain chair car water painting sofa shelf house sea mirror rug field armchair seat fence desk rock
wardrobe lamp bathtub railing cushion base box column signboard chest_of_drawers counter sand sink skyscraper
fireplace refrigerator grandstand path stairs runway case pool_table pillow screen_door stairway river bridge
bookcase blind coffee_table toilet flower book hill bench countertop stove palm kitchen_island computer swivel_chair
boat bar arcade_machine hovel bus towel light truck tower chandelier awning streetlight booth television_receiver
airplane dirt_track apparel pole land bannister escalator ottoman bottle buffet poster stage van ship fountain
conveyer_belt canopy washer plaything swimming_pool stool barrel basket waterfall tent bag minibike cradle oven ball
food step tank trade_name microwave pot animal bicycle lake dishwasher screen blanket sculpture hood sconce vase
traffic_light tray ashcan fan pier crt_screen plate monitor bulletin_board shower radiator glass clock flag"""
CLASSES = [name.replace("_", " ") for name in CLASSES.split()]
SPLITS = {"training": "train", "validation": "val", "testing": "test"}


@register_format("ade20k")
def read_ade20k(source: Path, options: FormatOptions) -> SourceDataset:
    """ADEChallengeData2016 at `source` (or the folder holding it)."""
    root = source / "ADEChallengeData2016" if (source / "ADEChallengeData2016").is_dir() else source
    if not (root / "images").is_dir() or not (root / "annotations").is_dir():
        raise FormatError(f"{source}: no images/ and annotations/: give the ADEChallengeData2016 folder")
    if options.classes:
        raise FormatError("--from ade20k: the class names come from objectInfo150 (or the built-in list)")
    names, names_from = class_names(root)
    reduce = options.reduce_zero_label is not False
    mapping = (
        build_mapping(names, FormatOptions(reduce_zero_label=True))
        if reduce
        else build_mapping(["other", *names], FormatOptions(reduce_zero_label=False))
    )
    dataset = SourceDataset(
        format="ade20k",
        source=root,
        classes=mapping.classes,
        splits={},
        conventions=[f"class names from {names_from}", *mapping.conventions()],
    )
    for folder, split in SPLITS.items():
        image_dir = root / "images" / folder
        if not image_dir.is_dir():
            continue
        images = []
        for path in sorted(p for p in image_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")):
            height, width = image_size(path)
            image = SourceImage(path=path, name=f"{split}/{path.name}", height=height, width=width)
            if split != "test":
                mask = root / "annotations" / folder / f"{path.stem}.png"
                if not mask.is_file():
                    raise FormatError(f"{path}: no annotation {mask}: add it or drop the image")
                image.label_path = mask
                image.label_map = lambda p=mask, s=(height, width): mapping.label_map(p, s)
            images.append(image)
        dataset.splits[split] = images
    if not dataset.splits:
        raise FormatError(f"{root / 'images'}: no training/ or validation/ folder")
    return dataset


def class_names(root: Path) -> tuple[list[str], str]:
    """(the 150 names, where they came from): objectInfo150.txt/.csv (tab- or comma-separated, with a Name
    column) beside images/, else the built-in list."""
    for path in (root / "objectInfo150.txt", root / "objectInfo150.csv"):
        if path.is_file():
            text = path.read_text(encoding="utf-8").splitlines()
            delimiter = "\t" if "\t" in text[0] else ","
            rows = list(csv.DictReader(text, delimiter=delimiter))
            if len(rows) != len(CLASSES) or "Name" not in rows[0]:
                raise FormatError(f"{path}: expected 150 rows with a Name column, got {len(rows)}")
            return [row["Name"].split(";")[0].strip() for row in rows], str(path)
    return list(CLASSES), "the built-in objectInfo150 names"
