"""A `SourceDataset` written in the competition layout: its images under OUT (hard-linked, else copied; never
moved), a COCO json per split (train.json, val.json, test.json, and train_all.json = train + val when both exist)
and a report (report.json, report.txt).

The json's categories are ids 1..K = `classes[1:]`; label 0 is background (no annotation). Polygons stay polygons;
masks and label maps become compressed RLEs (pycocotools), one annotation per region, and for a label map one per
class present in the image. Ignore pixels (IGNORE_LABEL) are one annotation per image with `"iscrowd": 1` and
`"ignore": 1`, which the COCO loader always paints as ignore, so a label map comes back exactly, 255 included.

OUT follows the output-folder contract (docs/output_folders.md): a foreign non-empty folder is refused; a folder
this tool made for the same job is brought up to date (images already in place kept, others linked or copied
again, jsons and report rewritten atomically); the report is deleted first and written last, so a folder with
report.json is complete. PLACED_FILE lists every image the tool placed, written before it places one: only those
are ever removed (an image no longer in the source, or all of them under --overwrite); a file put in an image
folder by someone else is left where it is and named in the report.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from ...io.files import (
    UnsafePathError,
    atomic_write_json,
    atomic_write_text,
    output_path,
    safe_relative_name,
)
from ...utils.output_folder import OWNER_FILE, OutputFolderError, check_claim, owned_output_folder, read_owner
from .base import IGNORE_LABEL, FormatError, Region, SourceDataset, SourceImage
from .checks import DatasetCheck, check_dataset

TOOL = "convert_dataset.py"
REPORT_FILES = ("report.json", "report.txt")
PLACED_FILE = ".placed_images.json"  # the images this tool placed under OUT: the only images it removes
SPLIT_ORDER = ("train", "val", "test")


def write_layout(
    dataset: SourceDataset,
    out: str | Path,
    link: bool = True,
    *,
    checks: DatasetCheck | None = None,
    job: dict | None = None,
    overwrite: bool = False,
    inputs: dict[str, str | None] | None = None,
) -> dict[str, Any]:
    """Write `dataset` in the competition layout under `out`; returns the report (also OUT/report.json).

    `checks`: the dataset's `check_dataset` result (run here, and its errors raised, when None). `job`: what the
    output folder is claimed for (default: the format, source, class list and `link`); a folder this tool made
    for another job is refused unless `overwrite`, which first deletes what the tool wrote there. `inputs`:
    {option: path} of what the conversion reads (default: the dataset's source), which OUT may neither hold at a
    name it writes nor lie inside."""
    out = Path(out)
    splits = _ordered_splits(dataset)
    names = _checked_names(dataset, splits)
    if checks is None:
        checks = check_dataset(dataset)
        checks.raise_if_failed()
    cocos, skipped = build_cocos(dataset, splits)
    json_names = [f"{split}.json" for split in cocos]
    folders = sorted({PurePosixPath(name).parts[0] for name in names})
    files = [*json_names, *REPORT_FILES, PLACED_FILE]
    job = job or {"format": dataset.format, "source": str(dataset.source), "classes": dataset.classes, "link": link}
    inputs = inputs if inputs is not None else {"the source": str(dataset.source)}
    sources = {f"{image.path} (image)": image.path for images in dataset.splits.values() for image in images}
    claim = {"writes": [*files, *folders], "overwrite": overwrite, "inputs": {**inputs, **sources}}
    earlier = placed_images(out)  # read before an --overwrite forgets them
    check_claim(out, TOOL, job, **claim)  # a foreign folder is refused as such before its files are looked at
    _refuse_files_in_the_way(out, names, earlier)
    with owned_output_folder(out, TOOL, job, **claim) as folder:
        folder.remove_recorded(keep=[*files, *folders])  # what an earlier run wrote that this dataset no longer has
        folder.record(*files)
        for name in REPORT_FILES:
            (out / name).unlink(missing_ok=True)  # written last: present means complete
        atomic_write_json(out / PLACED_FILE, sorted(earlier | set(names)))  # before any is placed
        placed = place_images(dataset, out, link)
        removed, foreign = _remove_stale(out, earlier - set(names), folders, set(names))
        atomic_write_json(out / PLACED_FILE, sorted(names))
        for json_name, coco in zip(json_names, cocos.values(), strict=True):
            atomic_write_json(out / json_name, coco)
        report = _report(dataset, out, cocos, checks, placed, removed, skipped, link)
        report["images"]["not_placed_here"] = foreign
        atomic_write_text(out / "report.txt", format_report(report))
        atomic_write_json(out / "report.json", report, indent=2)
    return report


def _ordered_splits(dataset: SourceDataset) -> list[str]:
    return [*[s for s in SPLIT_ORDER if s in dataset.splits], *[s for s in dataset.splits if s not in SPLIT_ORDER]]


def _checked_names(dataset: SourceDataset, splits: list[str]) -> list[str]:
    """Every image's output name: relative, inside OUT, in a sub-folder (so it cannot replace a json or the
    report), and given once; FormatError naming the image otherwise."""
    seen: dict[str, Path] = {}
    for split in splits:
        for image in dataset.splits[split]:
            try:
                name = safe_relative_name(image.name, "image name").as_posix()
            except UnsafePathError as error:
                raise FormatError(f"{image.path}: {error}") from None
            if len(PurePosixPath(name).parts) < 2 or PurePosixPath(name).parts[0] in (OWNER_FILE, ".lock"):
                raise FormatError(f"{image.path}: its output name {name!r} must lie in a sub-folder of the layout")
            if name in seen:
                raise FormatError(
                    f"{image.path} and {seen[name]} would both be written as {name}: give images distinct names"
                )
            seen[name] = image.path
    return list(seen)


def build_cocos(dataset: SourceDataset, splits: list[str] | None = None) -> tuple[dict[str, dict], list[str]]:
    """({split: its COCO json}, plus "train_all" when train and val both exist; the lines of regions left out
    because they cover no pixel). Image and annotation ids are unique over the whole dataset."""
    splits = splits or _ordered_splits(dataset)
    if len(dataset.classes) < 2:
        raise FormatError(f"{dataset.source}: the class list {dataset.classes} needs a background and a class at least")
    categories = [
        {"id": label, "name": name, "supercategory": name} for label, name in enumerate(dataset.classes) if label
    ]
    labelled = set(dataset.labelled_splits())
    cocos: dict[str, dict] = {}
    skipped: list[str] = []
    image_id, ann_id = 0, 0
    for split in splits:
        images, annotations = [], []
        for image in dataset.splits[split]:
            images.append({"id": image_id, "file_name": image.name, "height": image.height, "width": image.width})
            if split in labelled:
                for ann in image_annotations(image, len(dataset.classes), skipped):
                    ann_id += 1
                    annotations.append({"id": ann_id, "image_id": image_id, **ann})
            image_id += 1
        cocos[split] = {"images": images, "annotations": annotations, "categories": categories}
    if "train" in cocos and "val" in cocos:
        cocos["train_all"] = {
            "images": cocos["train"]["images"] + cocos["val"]["images"],
            "annotations": cocos["train"]["annotations"] + cocos["val"]["annotations"],
            "categories": categories,
        }
    return cocos, skipped


def image_annotations(image: SourceImage, num_labels: int, skipped: list[str]) -> list[dict]:
    """The COCO annotations (without ids) of one image: one per region, or one per label of its label map."""
    if image.label_map is not None:
        label = image.label_map()
        if label.shape != (image.height, image.width):
            raise FormatError(f"{image.label_path or image.path}: label map of another size than its image")
        anns = []
        for value in np.flatnonzero(np.bincount(label.ravel(), minlength=256)).tolist():
            if value == 0:
                continue
            if value >= num_labels and value != IGNORE_LABEL:
                raise FormatError(f"{image.label_path or image.path}: label {value} outside the class list")
            anns.append(_mask_annotation(label == value, value))
        return anns
    anns = []
    for index, region in enumerate(image.regions):
        ann = _region_annotation(region, image.height, image.width)
        if ann["area"] <= 0:
            skipped.append(f"{region.where or f'{image.path}: region {index}'}: covers no pixel, left out")
            continue
        anns.append(ann)
    return anns


def _region_annotation(region: Region, height: int, width: int) -> dict:
    if region.mask is not None:
        return _mask_annotation(np.asarray(region.mask, dtype=bool), region.label)
    rle = mask_utils.merge(mask_utils.frPyObjects(region.polygons, height, width))
    polygons = [[float(v) for v in polygon] for polygon in region.polygons]
    return _annotation(polygons, rle, region.label)


def _mask_annotation(mask: np.ndarray, label: int) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return _annotation({"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}, rle, label)


def _annotation(segmentation: Any, rle: dict, label: int) -> dict:
    ann = {
        "category_id": 1 if label == IGNORE_LABEL else int(label),
        "segmentation": segmentation,
        "area": float(mask_utils.area(rle)),
        "bbox": [round(float(v), 2) for v in mask_utils.toBbox(rle)],
        "iscrowd": 0,
    }
    if label == IGNORE_LABEL:
        ann.update(iscrowd=1, ignore=1)
    return ann


def place_images(dataset: SourceDataset, out: Path, link: bool) -> dict[str, Any]:
    """Each image at OUT/<name>: hard-linked (`link`; copied where the file system refuses a link), else copied;
    one already in place (the same file, or a copy of its size and time) is kept. Counts and why links failed."""
    placed: dict[str, Any] = {"linked": 0, "copied": 0, "kept": 0, "link_refused": ""}
    for images in dataset.splits.values():
        for image in images:
            target = output_path(out, image.name)
            if _in_place(image.path, target, link):
                placed["kept"] += 1
                continue
            if link and not placed["link_refused"]:
                try:
                    _replace_with(target, lambda tmp, src=image.path: os.link(src, tmp))
                    placed["linked"] += 1
                    continue
                except OSError as error:
                    if error.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES):
                        raise
                    placed["link_refused"] = f"{error.strerror} ({image.path} -> {target})"
            _replace_with(target, lambda tmp, src=image.path: shutil.copy2(src, tmp))
            placed["copied"] += 1
    return placed


def _in_place(source: Path, target: Path, link: bool) -> bool:
    if not target.is_file() or target.is_symlink():
        return False
    if link:
        return os.path.samefile(source, target)
    a, b = source.stat(), target.stat()
    return a.st_size == b.st_size and a.st_mtime_ns == b.st_mtime_ns and not os.path.samefile(source, target)


def _replace_with(target: Path, make) -> None:  # noqa: ANN001  (make: a function writing the file at a path)
    """`make(tmp)` beside `target`, then os.replace: a killed run leaves no half file under the final name."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{secrets.token_hex(4)}.tmp"
    try:
        make(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def placed_images(out: Path) -> set[str]:
    """The names of the images this tool placed under `out`: PLACED_FILE's; for a folder the tool made before it
    kept that list, every file under the folders its owner record lists; empty where it placed none."""
    path = out / PLACED_FILE
    if not path.is_file() or path.is_symlink():
        record = read_owner(out) if out.is_dir() else None
        if record is None or record.get("tool") != TOOL:
            return set()
        folders = [out / name for name in record["entries"] if (out / name).is_dir()]
        return {p.relative_to(out).as_posix() for folder in folders for p in folder.rglob("*") if not p.is_dir()}
    try:
        names = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        names = None
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise FormatError(f"{path}: not a list of image names: delete it (the images it lists are then kept)")
    return set(names)


def _refuse_files_in_the_way(out: Path, names: list[str], placed: set[str]) -> None:
    """A file at an image's output name that this tool did not place is the user's: refused, never replaced."""
    in_the_way = [name for name in names if name not in placed and ((out / name).exists() or (out / name).is_symlink())]
    if in_the_way:
        more = f" (and {len(in_the_way) - 1} more)" if len(in_the_way) > 1 else ""
        raise OutputFolderError(
            f"--out {out}: {out / in_the_way[0]}{more} was not placed there by {TOOL}, and the dataset's image "
            f"{in_the_way[0]} goes there: move it away, or give another --out"
        )


def _remove_stale(out: Path, stale: set[str], folders: list[str], names: set[str]) -> tuple[int, list[str]]:
    """Delete the images the tool placed that are no longer in the dataset (`stale`) and the folders left empty
    by that; returns how many, and the files under the image `folders` that the tool did not place (kept)."""
    removed = 0
    for name in sorted(stale):
        path = out / name
        if path.is_file() or path.is_symlink():
            path.unlink()
            removed += 1
        for parent in path.parents:
            if parent == out or not parent.is_dir() or any(parent.iterdir()):
                break
            parent.rmdir()
    foreign = sorted(
        path.relative_to(out).as_posix()
        for folder in folders
        for path in (out / folder).rglob("*")
        if not path.is_dir() and path.relative_to(out).as_posix() not in names
    )
    return removed, foreign


def _report(
    dataset: SourceDataset,
    out: Path,
    cocos: dict[str, dict],
    checks: DatasetCheck,
    placed: dict,
    removed: int,
    skipped: list[str],
    link: bool,
) -> dict[str, Any]:
    splits = {
        split: {
            "json": f"{split}.json",
            "images": len(coco["images"]),
            "annotations": len(coco["annotations"]),
            "images_without_labels": checks.unlabelled.get(split, 0),
        }
        for split, coco in cocos.items()
    }
    return {
        "format": dataset.format,
        "source": str(dataset.source),
        "out": str(out),
        "classes": list(dataset.classes),
        "categories": "category id k is label k (1..K, classes[1:]); label 0 (classes[0]) has no annotation",
        "conventions": list(dataset.conventions),
        "splits": splits,
        "images": {**placed, "removed_stale": removed, "mode": "hard links" if link else "copies"},
        "left_out": skipped,
        "checks": checks.as_dict(),
        "complete": True,
    }


def _not_placed_lines(names: list[str]) -> list[str]:
    if not names:
        return []
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    return [f"{len(names)} file(s) in the image folders this tool did not place, left as they are: {shown}"]


def format_report(report: dict[str, Any]) -> str:
    """The report as text: splits, conventions, per-class pixels and images, problems."""
    lines = [f"{report['format']} dataset {report['source']} -> {report['out']}", "", "splits:"]
    for info in report["splits"].values():
        lines.append(
            f"  {info['json']}: {info['images']} images, {info['annotations']} annotations, "
            f"{info['images_without_labels']} image(s) without labels"
        )
    images = report["images"]
    lines += [
        "",
        f"images: {images['linked']} linked, {images['copied']} copied, {images['kept']} already in place, "
        f"{images['removed_stale']} stale removed"
        + (f" (links refused: {images['link_refused']})" if images["link_refused"] else ""),
        *_not_placed_lines(images.get("not_placed_here", [])),
        "",
        "conventions:",
        f"  {report['categories']}",
        *[f"  {line}" for line in report["conventions"]],
    ]
    for split, rows in report["checks"]["classes"].items():
        total = sum(row["pixels"] for row in rows) or 1
        lines += ["", f"classes in {split}: label, name, pixels (share), images"]
        lines += [
            f"  {row['label']:>3}  {row['name']:<24} {row['pixels']:>12} ({100 * row['pixels'] / total:5.1f}%) "
            f"{row['images']:>6}"
            for row in rows
        ]
    problems = report["checks"]["problems"]
    lines += ["", f"problems: {report['checks']['errors']} error(s), {report['checks']['warnings']} warning(s)"]
    lines += [f"  {p['severity']}: {p['message']}" for p in problems]
    lines += [f"  left out: {line}" for line in report["left_out"]]
    return "\n".join(lines) + "\n"
