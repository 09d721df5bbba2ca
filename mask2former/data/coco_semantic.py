"""COCO json + images -> semantic label maps (PNG, cached) -> dataset dicts.

Label values: 0 is background, 1..K are the json's categories in id order, 255 is ignore.
Annotations are painted largest area first, so smaller objects win overlaps (the competition
baseline's rule; `rasterize.py`). Bad annotations and images raise `DataError` naming the json, the image and
the annotation; with `skip_bad=True` they are skipped instead and a summary is logged at the end (`coco_checks.py`).

A json may instead give its label maps: every image then has `sem_seg_file_name`, a PNG relative to the json's
folder (the pseudo-labels of tools/pseudo_label.py are such a json), and `annotations` is empty; the maps are
checked once (size, values 0..K-1 or 255) and used as they are.

Images are in the stored pixel frame (`mask2former.io.images`): the json's width/height must be the stored
image's size, and photos whose EXIF orientation tag would rotate them are counted and logged per json (the tag
is not applied, to pixels or labels). An image file_name that is absolute or climbs out of the image root
with '..' is refused (`read_coco_json`). Asked for ground truth (`has_gt=True`), a json none of whose images
carries an annotation (a test json) is refused instead of scoring against all-background maps.

Rendered maps are cached under `<cache>/<json stem>-<hash of json bytes and options>/`, one PNG per
image, written atomically; a manifest written last marks the cache complete and records each label map's
SHA-1, so later loads neither re-validate nor re-rasterise, only check the bytes: a label map edited, replaced
or removed since is logged and rendered (a given one: checked) again. An interrupted render is finished
(`label_cache.py`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..io.coco_json import DataError, read_coco_json
from ..io.files import UnsafePathError, output_path
from ..io.images import describe_orientation, require_file
from ..utils.progress import progress as with_progress
from .catalog import DatasetCatalog, DatasetNameError, MetadataCatalog
from .coco_checks import (
    SkipReport,
    checked_annotations,
    checked_images,
    checked_label_maps,
    describe_image,
    has_label_maps,
)
from .label_cache import (
    MANIFEST_NAME,
    cache_folder,
    changed_label_maps,
    complete_manifest,
    default_cache_dir,
    dicts_from_manifest,
    file_sha1,
    manifest_entry,
    write_label_map,
    write_manifest,
)
from .rasterize import IGNORE_LABEL, render_label_map

logger = logging.getLogger(__name__)


def class_names_from_categories(categories: list[dict]) -> list[str]:
    """["Background", then the category names in id order]."""
    return ["Background"] + [c["name"] for c in sorted(categories, key=lambda c: c["id"])]


class ClassListError(DataError):
    """Two class lists that should be one differ (in count, order or names); the message names both sources."""


def check_class_lists(
    names: list[str], source: str, reference: list[str], reference_source: str, advice: str = ""
) -> None:
    """ClassListError unless `names` (from `source`: a json, a model, a prediction folder) is `reference` (from
    `reference_source`), name for name in label order: the same ids with swapped names would score each class
    against another one. The one comparison of class lists, for every tool."""
    names, reference = [str(name) for name in names], [str(name) for name in reference]
    if names == reference:
        return
    if len(names) != len(reference):
        detail = f"{len(names)} classes against {len(reference)}"
    else:
        index = next(i for i, (a, b) in enumerate(zip(names, reference, strict=True)) if a != b)
        detail = f"label {index} is {names[index]!r} there and {reference[index]!r} in {reference_source}"
    what = advice or "give files of one class list (the same categories, ids and names)"
    raise ClassListError(f"{source}: classes {names} differ from {reference_source}'s {reference} ({detail}): {what}")


def category_to_label(categories: list[dict]) -> dict[int, int]:
    """Category id -> label value (1..K in id order)."""
    return {c["id"]: index + 1 for index, c in enumerate(sorted(categories, key=lambda c: c["id"]))}


def load_sem_seg_dataset(
    json_file: str | Path,
    image_root: str | Path,
    cache_dir: str | Path | None = None,
    skip_bad: bool = False,
    crowd_as_ignore: bool = False,
    has_gt: bool | None = None,
    progress: bool = True,
) -> list[dict]:
    """Dataset dicts {file_name, image_id, height, width[, sem_seg_file_name]} for a COCO json.

    `has_gt=None` means: ground truth if the json has any annotation. Label maps are rendered on
    the first call and read from the cache afterwards.
    """
    dicts, _ = load_with_manifest(json_file, image_root, cache_dir, skip_bad, crowd_as_ignore, has_gt, progress)
    return dicts


def ground_truth_label_paths(
    json_file: str | Path, image_root: str | Path, cache_dir: str | Path | None = None
) -> tuple[dict[str, str], list[str]]:
    """(file_name as in the json -> its rendered label PNG, the class names) for a json with ground truth."""
    root = Path(image_root).resolve()
    dicts, manifest = load_with_manifest(json_file, root, cache_dir, has_gt=True)
    paths = {Path(d["file_name"]).relative_to(root).as_posix(): d["sem_seg_file_name"] for d in dicts}
    return paths, list(manifest["class_names"])


def load_with_manifest(
    json_file: str | Path,
    image_root: str | Path,
    cache_dir: str | Path | None = None,
    skip_bad: bool = False,
    crowd_as_ignore: bool = False,
    has_gt: bool | None = None,
    progress: bool = True,
) -> tuple[list[dict], dict[str, Any]]:
    """`load_sem_seg_dataset` plus the cache manifest (class names, skip summary)."""
    require_file(json_file, "COCO json")
    json_file, image_root = Path(json_file).resolve(), Path(image_root).resolve()
    if not json_file.is_file():
        raise FileNotFoundError(f"COCO json not found: {json_file}")
    folder = cache_folder(
        json_file, json_file.read_bytes(), Path(cache_dir or default_cache_dir()), crowd_as_ignore, skip_bad
    )
    manifest = complete_manifest(folder / MANIFEST_NAME)
    stale: set[str] = set()  # cached label maps whose bytes differ from what the manifest recorded
    if manifest is not None and manifest.get("image_root") == str(image_root) and has_gt in (None, manifest["has_gt"]):
        stale = _stale_label_maps(manifest, folder, json_file)
        if not stale:
            _log_oriented(json_file, manifest["oriented"])
            return dicts_from_manifest(manifest, image_root, folder, json_file), manifest
    manifest = _build_manifest(json_file, image_root, folder, stale, has_gt, skip_bad, crowd_as_ignore, progress)
    write_manifest(folder, manifest)
    _log_oriented(json_file, manifest["oriented"])
    return dicts_from_manifest(manifest, image_root, folder, json_file), manifest


def _stale_label_maps(manifest: dict, folder: Path, json_file: Path) -> set[str]:
    """The label maps of a complete cache whose bytes changed since (logged); DataError for a cache of a json
    without ground truth used as ground truth."""
    if manifest["has_gt"] and not manifest["given_label_maps"] and manifest["num_annotations"] == 0:
        raise DataError(_no_ground_truth_message(json_file, len(manifest["images"])))
    stale = set(changed_label_maps(manifest, folder))
    changed = sorted(stale)
    if changed:
        logger.warning(
            "%s: %d label map(s) changed or vanished since they were checked and cached (e.g. %s): %s",
            json_file,
            len(changed),
            changed[0],
            "checking them again" if manifest["given_label_maps"] else f"rendering them again into {folder}",
        )
    return stale


def _build_manifest(
    json_file: Path,
    image_root: Path,
    folder: Path,
    stale: set[str],
    has_gt: bool | None,
    skip_bad: bool,
    crowd_as_ignore: bool,
    progress: bool,
) -> dict[str, Any]:
    """Read and check the json and its images, render (or check the given) label maps into the cache `folder`
    (those missing or in `stale`), log what was skipped; the manifest."""
    data = read_coco_json(json_file)
    labels = category_to_label(data["categories"])
    given_maps = has_label_maps(data, json_file)
    if has_gt is None:
        has_gt = given_maps or len(data["annotations"]) > 0
    if has_gt and not given_maps and not data["annotations"]:
        raise DataError(_no_ground_truth_message(json_file, len(data["images"])))
    report = SkipReport(str(json_file))
    images, skipped_ids, oriented = checked_images(data["images"], json_file, image_root, report, skip_bad)
    anns_by_image = checked_annotations(data["annotations"], images, skipped_ids, labels, json_file, report, skip_bad)
    num_annotations = sum(len(anns) for anns in anns_by_image.values())
    if has_gt and not given_maps and num_annotations == 0:
        raise DataError(_no_ground_truth_message(json_file, len(images), skipped=len(data["annotations"])))

    if given_maps and has_gt:
        checked = checked_label_maps(images, json_file, len(labels) + 1, report, skip_bad)
        entries = [{**manifest_entry(image), "label": str(path), "sha1": file_sha1(path)} for image, path in checked]
    else:
        entries = _rendered_entries(
            images, anns_by_image, labels, json_file, folder, stale, has_gt, crowd_as_ignore, progress
        )
    _log_skipped(report)
    return {
        "json_file": str(json_file),
        "image_root": str(image_root),
        "has_gt": has_gt,
        "given_label_maps": bool(given_maps and has_gt),
        "num_annotations": num_annotations,
        "class_names": class_names_from_categories(data["categories"]),
        "skipped": report.as_dict(),
        "oriented": oriented,
        "images": entries,
    }


def _rendered_entries(
    images: dict[int, dict],
    anns_by_image: dict[int, list[dict]],
    labels: dict[int, int],
    json_file: Path,
    folder: Path,
    stale: set[str],
    has_gt: bool,
    crowd_as_ignore: bool,
    progress: bool,
) -> list[dict]:
    """Manifest entries of the checked images; with ground truth each names its label map in the cache `folder`,
    rendered unless an intact one (not in `stale`) is there."""
    entries = []
    shown = images.values()
    for image in with_progress(shown, desc=f"render {json_file.name}", unit="img") if progress else shown:
        entry = manifest_entry(image)
        if has_gt:
            label_name = f"{image['id']}.png"
            try:
                label_path = output_path(folder, label_name)
            except UnsafePathError as error:
                raise DataError(
                    f"{describe_image(json_file, image)}: its id cannot name a label file ({error})"
                ) from None
            if str(label_path) in stale or not label_path.is_file():
                label_map = render_label_map(image, anns_by_image.get(image["id"], []), labels, crowd_as_ignore)
                write_label_map(folder, label_path, label_map, describe_image(json_file, image))
            entry["label"] = label_name
            entry["sha1"] = file_sha1(label_path)
        entries.append(entry)
    return entries


def _log_skipped(report: SkipReport) -> None:
    if report.messages:
        for message in report.messages:
            logger.warning("skipped: %s", message)
        logger.warning(report.summary())


def _no_ground_truth_message(json_file: Path, num_images: int, skipped: int = 0) -> str:
    why = f"all {skipped} of its annotations were skipped as bad" if skipped else "none of them has an annotation"
    return (
        f"{json_file}: used as ground truth, but {why} ({num_images} image(s)): scored against it every image "
        "would be all background. Give a json with annotations (e.g. val.json, not test.json), or label PNGs "
        "(sem_seg_file_name)"
    )


def _log_oriented(json_file: Path, oriented: dict) -> None:
    if oriented.get("count"):
        logger.warning(
            "%s: %d image(s) carry an EXIF orientation tag (e.g. %s: %s); images, labels and the json's sizes "
            "are all used in the stored pixel frame (the COCO convention), the tag is ignored",
            json_file,
            oriented["count"],
            oriented["example"],
            describe_orientation(oriented["tag"]),
        )


def register_coco_semantic(
    name: str,
    json_file: str | Path,
    image_root: str | Path,
    cache_dir: str | Path | None = None,
    skip_bad: bool = False,
    crowd_as_ignore: bool = False,
    has_gt: bool | None = None,
    described_as: str | None = None,
) -> None:
    """Register a COCO json as a semantic-segmentation dataset (loaded lazily on first use).

    Registering the same name again with the same files is a no-op; with other files, an error. `described_as`
    names the dataset in the loader's error lines instead of the json (for a json the project wrote itself).
    """
    json_file, image_root = (
        str(Path(json_file).expanduser().resolve()),
        str(Path(image_root).expanduser().resolve()),
    )
    if name in DatasetCatalog:
        meta = MetadataCatalog.get(name)
        if (meta.get("json_file"), meta.get("image_root")) == (json_file, image_root):
            return
        raise DatasetNameError(
            f"dataset '{name}' is already registered with {meta.get('json_file')} (images under "
            f"{meta.get('image_root')}); refusing to re-register it with {json_file}"
        )

    def load() -> list[dict]:
        try:
            dicts, manifest = load_with_manifest(json_file, image_root, cache_dir, skip_bad, crowd_as_ignore, has_gt)
        except UserError as error:
            if described_as is None or json_file not in str(error):
                raise
            raise type(error)(str(error).replace(json_file, described_as)) from None
        _set_classes(name, manifest["class_names"])
        return dicts

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(
        json_file=json_file,
        image_root=image_root,
        evaluator_type="sem_seg",
        ignore_label=IGNORE_LABEL,
        cache_dir=str(cache_dir) if cache_dir else None,
    )


def set_class_metadata(name: str) -> list[str]:
    """Set (once) and return the dataset's class names and palette, read from its json's categories."""
    meta = MetadataCatalog.get(name)
    if meta.get("stuff_classes") is None:
        _set_classes(name, class_names_from_categories(read_coco_json(meta.json_file)["categories"]))
    return list(meta.stuff_classes)


def _set_classes(name: str, classes: list[str]) -> None:
    from .classes import palette_for

    MetadataCatalog.get(name).set(stuff_classes=list(classes), stuff_colors=palette_for(classes))
