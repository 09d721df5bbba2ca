#!/usr/bin/env python
"""Acceptance and speed of tools/convert_dataset.py on real photos: a Roboflow-style YOLO-seg copy of the
trash-bag photos (../shared/data/trashbags, never committed) is written under --work, converted back with
`tools/convert_dataset.py --from yolo-seg`, and its label maps compared pixel by pixel with those the shared
COCO json gives.

    python benchmarks/convert_formats.py --work /tmp/convert_formats

Prints the conversion's wall time and images/s, and the share of equal pixels over all images (the YOLO copy
keeps 6 decimals of the normalised vertices, as Roboflow writes them). Results: benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mask2former.data.coco_semantic import load_sem_seg_dataset  # noqa: E402
from mask2former.io.images import read_label  # noqa: E402

TRASHBAGS = REPO.parent / "shared" / "data" / "trashbags"


def write_yolo_copy(json_file: Path, image_root: Path, out: Path, val_every: int = 5) -> dict[str, int]:
    """A Roboflow-style YOLO-seg export of a COCO json: data.yaml (names, nc, ../train/images, ../valid/images),
    train/ and valid/ with images/ (hard links, else copies) and labels/*.txt (one polygon a line, vertices
    normalised to 6 decimals); every `val_every`-th image goes to valid. Returns the images per split."""
    data = json.loads(json_file.read_text())
    names = [c["name"] for c in sorted(data["categories"], key=lambda c: c["id"])]
    index_of = {c["id"]: i for i, c in enumerate(sorted(data["categories"], key=lambda c: c["id"]))}
    by_image: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    counts = {"train": 0, "valid": 0}
    for number, image in enumerate(sorted(data["images"], key=lambda i: i["id"])):
        split = "valid" if number % val_every == val_every - 1 else "train"
        counts[split] += 1
        source = image_root / image["file_name"]
        target = out / split / "images" / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)
        lines = []
        for ann in by_image.get(image["id"], []):
            for ring in ann["segmentation"]:
                xs = [f"{x / image['width']:.6f}" for x in ring[0::2]]
                ys = [f"{y / image['height']:.6f}" for y in ring[1::2]]
                coords = " ".join(f"{x} {y}" for x, y in zip(xs, ys, strict=True))
                lines.append(f"{index_of[ann['category_id']]} {coords}")
        label = out / split / "labels" / f"{source.stem}.txt"
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("\n".join(lines) + ("\n" if lines else ""))
    yaml_lines = ["train: ../train/images", "val: ../valid/images", f"nc: {len(names)}", f"names: {names}"]
    (out / "data.yaml").write_text("\n".join(yaml_lines) + "\n")
    return counts


def pixel_agreement(reference: list[dict], converted: list[dict]) -> tuple[float, int]:
    """(share of equal pixels, images compared), images matched by file name."""
    by_name = {Path(d["file_name"]).name: d for d in converted}
    equal = total = 0
    for entry in reference:
        other = by_name[Path(entry["file_name"]).name]
        a, b = read_label(entry["sem_seg_file_name"]), read_label(other["sem_seg_file_name"])
        equal += int((a == b).sum())
        total += a.size
    return equal / total, len(reference)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="/tmp/convert_formats", help="folder for the YOLO copy and its conversion")
    parser.add_argument("--data", default=str(TRASHBAGS), help="a COCO dataset: train_all.json and its images")
    args = parser.parse_args()
    work, data = Path(args.work), Path(args.data)
    if work.exists():
        shutil.rmtree(work)
    counts = write_yolo_copy(data / "train_all.json", data, work / "yolo")
    start = time.perf_counter()
    command = [sys.executable, str(REPO / "tools" / "convert_dataset.py"), "--from", "yolo-seg", str(work / "yolo")]
    subprocess.run([*command, "--out", str(work / "converted")], check=True, cwd=REPO)
    seconds = time.perf_counter() - start
    reference = load_sem_seg_dataset(data / "train_all.json", data, cache_dir=work / "cache", progress=False)
    converted = load_sem_seg_dataset(
        work / "converted" / "train_all.json", work / "converted", cache_dir=work / "cache", progress=False
    )
    share, images = pixel_agreement(reference, converted)
    print(f"| YOLO-seg copy | {counts['train']} train + {counts['valid']} valid images |")
    print(f"| convert_dataset.py --from yolo-seg (whole command) | {seconds:.1f} s, {images / seconds:.1f} images/s |")
    print(f"| label maps equal to the COCO json's | {100 * share:.3f} % of pixels over {images} images |")
    classes = np.unique(np.concatenate([np.unique(read_label(d["sem_seg_file_name"])) for d in converted]))
    print(f"| labels in the converted maps | {classes.tolist()} |")


if __name__ == "__main__":
    main()
