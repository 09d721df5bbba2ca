"""tools/predict.py --input PATH: the images a run predicts without a COCO json, the class names it labels them
with, and what it writes besides the probabilities (label maps as indexed PNGs; for a video, its frames and an
overlay video).

--input is one of (outputs are named by `file_name`, the path relative to the input):
  an image          its file name
  a folder          every image under it, sub-folders included (IMAGE_EXTENSIONS, any case), sorted by relative
                    path; other files are ignored and counted in the log; an --out inside it, and any sub-folder
                    that is an output folder of this project's tools (it holds their owner record), are not read
                    (counted in the log)
  a glob pattern    (quoted: 'photos/**/*.jpg') the images it matches, relative to the pattern's folder (the part
                    before the first wildcard); other matches are ignored and counted; an --out inside, and matches
                    inside an output folder of this project's tools, are not read
  a .txt list       one path per line, relative to the list's folder (or absolute, inside it); blank lines and lines
                    starting with '#' are skipped; a path outside that folder or without an image extension is
                    refused, naming the line
  a video           (VIDEO_EXTENSIONS) frames 0, N, 2N, ... (--every N), stored losslessly as
                    OUT/frames/<video stem>/frame_000123.png (123: the frame's index in the video) and named so

A resume over a listing that changed is refused naming the first images added and removed (the job holds the
listing's sha1, the folder's meta.json its `file_names`).

Class names: those the checkpoints record (a model_final.pth trained here), else those of the config's training
dataset (DATASETS.TRAIN[0], registered from the config: its json's categories); the log says which.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from fvcore.common.config import CfgNode

from ..data.classes import palette_for
from ..data.coco_semantic import set_class_metadata
from ..data.trash import register_datasets_from_config
from ..errors import UserError
from ..io.files import atomic_write_bytes, output_path, safe_relative_name
from ..io.images import IMAGE_EXTENSIONS, read_image, read_label, write_indexed_label_png
from ..io.probabilities import load_probabilities, probability_path
from ..io.video import VIDEO_EXTENSIONS, open_video, read_frames, write_video
from ..utils.output_folder import OWNER_FILE, describe_changes_of, file_sha1
from ..utils.processes import usable_cpus
from ..utils.visualize import overlay, shrink_for_overlay

logger = logging.getLogger("predict")

LABELS_FOLDER = "labels"
FRAMES_FOLDER = "frames"
OVERLAY_VIDEO = "overlay.mp4"  # .avi where this OpenCV build cannot write mp4v (mask2former/io/video.py)
# what an --input run writes in OUT besides predict's other outputs
INPUT_OUTPUTS = (LABELS_FOLDER, FRAMES_FOLDER, OVERLAY_VIDEO, "overlay.avi")
_GLOB_CHARACTERS = frozenset("*?[")


class InputError(UserError):
    """An --input that lists no usable images, or names them so that their outputs would collide."""


@dataclass
class InputListing:
    """What --input names: its kind ("image", "folder", "glob", "list" or "video"), the images as predict lists
    them ({"id", "file_name", "path"}; a video's are its frames, known once `take_frames` has stored them)."""

    spec: str
    kind: str
    images: list[dict] = field(default_factory=list)
    ignored: int = 0  # files that are not images (folder, glob)
    excluded_out: bool = False  # --out lies inside the folder or under the pattern: not read
    output_folders: list[str] = field(default_factory=list)  # tools' output folders inside it, not read
    every: int = 1
    fps: float = 0.0  # a video's frame rate
    video_sha1: str = ""
    class_source: str = ""  # where the class names come from (`input_class_names`), for the log

    def identity(self) -> dict:
        """The input as a job names it: the path and a content fingerprint of the listing (the images' names, or
        the video's bytes and --every)."""
        content = [self.video_sha1, self.every] if self.kind == "video" else [im["file_name"] for im in self.images]
        digest = hashlib.sha1(json.dumps([self.kind, content]).encode()).hexdigest()
        if self.kind != "video":
            _LISTED[digest] = [image["file_name"] for image in self.images]
        path = Path(self.spec).expanduser()
        where = os.path.abspath(path) if self.kind == "glob" else str(path.resolve())  # a pattern: not resolved
        return {"input": where, "input_kind": self.kind, "listing_sha1": digest}


def list_inputs(spec: str, out: Path, every: int = 1) -> InputListing:
    """The listing of --input `spec` (see the module), checked, reading no image: InputError for a missing path,
    an unknown kind of file, no images, --every on anything but a video, or two images with the same output name."""
    if every < 1:
        raise InputError(f"--every {every}: give a frame step >= 1 (1: every frame)")
    path = Path(spec).expanduser()
    suffix = path.suffix.lower()
    if not path.exists() and _GLOB_CHARACTERS & set(spec):
        listing = _list_glob(spec, out)
    elif path.is_dir():
        listing = _list_folder(path, out)
    elif not path.is_file():
        raise InputError(
            f"--input {spec}: no such file or folder; give an image, a folder, a glob pattern (quoted), "
            "a .txt list of paths or a video"
        )
    elif suffix in VIDEO_EXTENSIONS:
        return InputListing(spec, "video", every=every, fps=open_video(path), video_sha1=file_sha1(path))
    elif suffix == ".txt":
        listing = _list_text_file(path)
    elif suffix in IMAGE_EXTENSIONS:
        listing = InputListing(spec, "image", [{"file_name": path.name, "path": str(path)}])
    else:
        raise InputError(
            f"--input {spec}: {suffix or 'a file without an extension'} is not an image ({' '.join(IMAGE_EXTENSIONS)}),"
            f" a video ({' '.join(VIDEO_EXTENSIONS)}) or a .txt list of paths"
        )
    if every != 1:
        raise InputError(f"--every {every} takes frames of a video; --input {spec} is a {listing.kind}")
    if not listing.images:
        others = f" ({listing.ignored} other file(s) ignored)" if listing.ignored else ""
        raise InputError(f"--input {spec} holds no image ({' '.join(IMAGE_EXTENSIONS)}){others}")
    _number_and_check_names(listing)
    return listing


def _list_folder(folder: Path, out: Path) -> InputListing:
    listing = InputListing(str(folder), "folder")
    inside = _resolved(out)
    found = []
    for parent, folders, files in os.walk(folder, onerror=_unreadable_folder):
        here = Path(parent)
        if inside in [_resolved(here / name) for name in folders]:
            folders.remove(next(name for name in folders if _resolved(here / name) == inside))
            listing.excluded_out = True
        for name in [name for name in folders if (here / name / OWNER_FILE).is_file()]:
            folders.remove(name)
            listing.output_folders.append((here / name).relative_to(folder).as_posix())
        for name in files:
            if Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                found.append(((here / name).relative_to(folder).as_posix(), here / name))
            else:
                listing.ignored += 1
    listing.images = [{"file_name": name, "path": str(path)} for name, path in sorted(found)]
    return listing


def _unreadable_folder(error: OSError) -> None:
    raise InputError(f"cannot read the folder {error.filename}: {error.strerror or error}; check its permissions")


def _list_glob(pattern: str, out: Path) -> InputListing:
    listing = InputListing(pattern, "glob")
    parts = Path(pattern).expanduser().parts
    fixed = next(index for index, part in enumerate(parts) if _GLOB_CHARACTERS & set(part))
    base = Path(*parts[:fixed]) if fixed else Path(".")
    inside = _resolved(out)
    found = []
    owned: dict[Path, bool] = {}  # folder -> whether it, or one of its folders up to `base`, is a tool's output
    for match in glob.glob(str(Path(pattern).expanduser()), recursive=True):
        path = Path(match)
        if not path.is_file():
            continue
        if _resolved(path).is_relative_to(inside):
            listing.excluded_out = True
        elif (tool_folder := _output_folder_above(path, base, owned)) is not None:
            name = tool_folder.relative_to(base).as_posix()
            if name not in listing.output_folders:
                listing.output_folders.append(name)
        elif path.suffix.lower() in IMAGE_EXTENSIONS:
            found.append((path.relative_to(base).as_posix(), path))
        else:
            listing.ignored += 1
    listing.images = [{"file_name": name, "path": str(path)} for name, path in sorted(found)]
    return listing


def _output_folder_above(path: Path, base: Path, owned: dict[Path, bool]) -> Path | None:
    """The outermost folder between `base` (excluded) and `path` that holds a tool's owner record, or None."""
    found = None
    for folder in reversed(path.parents):
        if folder == base or not folder.is_relative_to(base):
            continue
        if folder not in owned:
            owned[folder] = (folder / OWNER_FILE).is_file()
        if owned[folder]:
            found = found or folder
    return found


def _list_text_file(list_file: Path) -> InputListing:
    try:
        lines = list_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read the list {list_file}: {error}") from None
    folder = Path(os.path.abspath(list_file.parent))
    images = []
    for number, line in enumerate(lines, 1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        where = f"{list_file} line {number}: {entry}"
        path = Path(os.path.abspath(folder / Path(entry).expanduser()))
        if not path.is_relative_to(folder):
            raise InputError(
                f"{where} is outside the list's folder {folder}: outputs are named by the path relative to it; "
                "put the list in a folder above every image"
            )
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            raise InputError(f"{where} is not an image ({' '.join(IMAGE_EXTENSIONS)}): remove the line")
        images.append({"file_name": path.relative_to(folder).as_posix(), "path": str(path)})
    return InputListing(str(list_file), "list", images)


def _resolved(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _number_and_check_names(listing: InputListing) -> None:
    """Give each image an id (its position) and refuse two whose outputs would be the same files (a.jpg, a.png)."""
    seen: dict[object, str] = {}
    for position, image in enumerate(listing.images):
        image["id"] = position
        key = safe_relative_name(image["file_name"], f"--input {listing.spec}: image").with_suffix("")
        if key in seen:
            raise InputError(
                f"--input {listing.spec}: {seen[key]} and {image['file_name']} map to the same output files "
                f"({key}.npz, {key}.png): rename one"
            )
        seen[key] = image["file_name"]


def take_frames(listing: InputListing, out: Path) -> list[dict]:
    """A video's frames as images: each taken frame stored as OUT/frames/<stem>/frame_NNNNNN.png (a frame already
    there, from an earlier run of this job, is kept: the same video gives the same bytes)."""
    stem = Path(listing.spec).stem
    images = []
    for index, frame in read_frames(Path(listing.spec).expanduser(), listing.every):
        name = f"{stem}/frame_{index:06d}.png"
        path = output_path(out / FRAMES_FOLDER, name)
        if not path.is_file():
            ok, encoded = cv2.imencode(".png", frame)
            if not ok:
                raise OSError(f"could not encode frame {index} of {listing.spec} as PNG")
            atomic_write_bytes(path, encoded.tobytes())
        images.append({"id": len(images), "file_name": name, "path": str(path)})
    return images


def ready_listing(listing: InputListing, out: Path) -> list[dict]:
    """The images to predict, a video's frames taken (`take_frames`, in OUT: run under OUT's lock), and the log's
    account of what --input listed."""
    if listing.kind == "video":
        listing.images = take_frames(listing, out)
    what = {"video": f"frame(s) of the video (every {listing.every})"}.get(listing.kind, "image(s)")
    logger.info(
        "--input %s (%s): %d %s; class names %s",
        listing.spec,
        listing.kind,
        len(listing.images),
        what,
        listing.class_source,
    )
    if listing.ignored:
        logger.info("--input %s: %d file(s) that are not images ignored", listing.spec, listing.ignored)
    if listing.excluded_out:
        logger.info("--out %s lies inside --input %s: its files are not read as inputs", out, listing.spec)
    if listing.output_folders:
        shown = ", ".join(listing.output_folders[:3]) + (", ..." if len(listing.output_folders) > 3 else "")
        logger.info(
            "--input %s: %d output folder(s) of this project's tools skipped (%s): their files are not photos",
            listing.spec,
            len(listing.output_folders),
            shown,
        )
    return listing.images


# the image names of the listings this process fingerprinted, by listing sha1: what a refused resume names
_LISTED: dict[str, list[str]] = {}
_SHOWN = 3


def _listing_change(folder: Path, old: object, new: object) -> str | None:
    """'the images of --input changed: N added (a.jpg, ...), M removed (...)', from OUT/meta.json's `file_names`
    (the earlier run's) and this run's listing; None when either is not known."""
    before, now = _earlier_file_names(folder), _LISTED.get(str(new))
    if before is None or now is None:
        return None
    added = sorted(set(now) - set(before))
    removed = sorted(set(before) - set(now))
    return f"the images of --input changed: {_some('added', added)}, {_some('removed', removed)}"


def _earlier_file_names(folder: Path) -> list[str] | None:
    try:
        names = json.loads((folder / "meta.json").read_text(encoding="utf-8")).get("file_names")
    except (OSError, ValueError, UnicodeDecodeError, AttributeError):
        return None
    return names if isinstance(names, list) and all(isinstance(name, str) for name in names) else None


def _some(what: str, names: list[str]) -> str:
    if not names:
        return f"none {what}"
    more = ", ..." if len(names) > _SHOWN else ""
    return f"{len(names)} {what} ({', '.join(names[:_SHOWN])}{more})"


describe_changes_of("listing_sha1", _listing_change)


def input_class_names(
    cfg: CfgNode, weights: list[str], recorded_of: Callable[[str], list[str] | None]
) -> tuple[list[str], str]:
    """The class names an --input run labels with and where they come from (see the module): those the weights
    record (`recorded_of(path)`, None for none; all that record names must agree), else the config's training
    dataset's. InputError when neither is known or the count is not the model's."""
    recorded = {path: names for path in weights if (names := recorded_of(path)) is not None}
    if len({tuple(names) for names in recorded.values()}) > 1:
        raise InputError(
            f"the checkpoints record different class lists ({', '.join(recorded)}): ensemble models of one"
        )
    if recorded:
        path, names = next(iter(recorded.items()))
        source = f"recorded in {path}"
    else:
        dataset = cfg.DATASETS.TRAIN[0] if cfg.DATASETS.TRAIN else "(none)"
        try:
            register_datasets_from_config(cfg)
            names = set_class_metadata(dataset)
        except (UserError, OSError, KeyError) as error:
            raise InputError(
                f"no class names for --input: {weights[0]} records none and the config's training dataset {dataset} "
                f"cannot be read ({error}); predict with a model_final.pth trained here, or set DATASETS.ROOT"
            ) from None
        source = f"of the config's training dataset {dataset}"
    if len(names) != cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES:
        raise InputError(
            f"the class names {source} are {len(names)}, the model has {cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES} classes: "
            "a config for another class list?"
        )
    return list(names), source


def label_path(out: Path, file_name: str) -> Path:
    """OUT/labels/<file_name with .png>, refused if it would leave OUT."""
    return output_path(out / LABELS_FOLDER, file_name, ".png")


def planned_input_outputs(out: Path, listing: InputListing) -> Iterator[tuple[Path, str]]:
    """(path, what it is) for the files an --input run writes besides predict's others (to check none is an
    input)."""
    yield out / OVERLAY_VIDEO, "the overlay video"
    yield (out / OVERLAY_VIDEO).with_suffix(".avi"), "the overlay video"
    for image in listing.images:
        yield label_path(out, image["file_name"]), f"the label map of {image['file_name']}"


def write_input_outputs(
    out: Path, listing: InputListing, class_names: list[str], refreshed: set[str], overlays: int, skip_bad: bool
) -> tuple[Path, int, list[str]]:
    """What an --input run writes from the npz files (no CSV): OUT/labels/<name>.png for every image (written when
    missing or predicted this run: `refreshed`), the first `overlays` overlays, and for a video OUT/overlay.mp4
    (made again when a label map changed or it is missing); returns (OUT/labels, label maps, file names without a
    prediction)."""
    palette = palette_for(class_names)

    def label_of(image: dict) -> bool:
        return _write_label(out, image, palette, image["file_name"] in refreshed, skip_bad)

    with ThreadPoolExecutor(max_workers=min(8, usable_cpus() + 2)) as pool:
        written = list(pool.map(label_of, listing.images))
    labelled = [image for image, done in zip(listing.images, written, strict=True) if done is not None]
    missing = [image["file_name"] for image, done in zip(listing.images, written, strict=True) if done is None]
    for image in labelled[:overlays]:
        bgr = shrink_for_overlay(read_image(image["path"]))  # a huge photo: a bounded picture
        label = cv2.resize(
            read_label(label_path(out, image["file_name"])),
            (bgr.shape[1], bgr.shape[0]),
            interpolation=cv2.INTER_NEAREST,
        )
        ok, encoded = cv2.imencode(".png", np.hstack([bgr, overlay(bgr, label, palette)]))
        atomic_write_bytes(output_path(out / "overlays", image["file_name"], ".png"), encoded.tobytes())
    if listing.kind == "video" and labelled:
        current = [out / OVERLAY_VIDEO, (out / OVERLAY_VIDEO).with_suffix(".avi")]
        if any(written) or not any(path.is_file() for path in current):
            frames = (
                overlay(read_image(im["path"]), read_label(label_path(out, im["file_name"])), palette)
                for im in labelled
            )
            video = write_video(out / OVERLAY_VIDEO, frames, listing.fps / listing.every)
            logger.info(
                "overlay video: %s (%d frames at %.3g frames/s)", video, len(labelled), listing.fps / listing.every
            )
    return out / LABELS_FOLDER, len(labelled), missing


def _write_label(out: Path, image: dict, palette: list, refresh: bool, skip_bad: bool) -> bool | None:
    """Write the image's label map (the argmax of its npz, resized to the image's size by nearest neighbour) when
    `refresh` or missing; True when written, False when kept, None when the image has no prediction."""
    npz = probability_path(out, image["file_name"])
    if not npz.is_file():
        if not skip_bad:
            raise InputError(f"no prediction for {image['file_name']} ({npz} missing)")
        return None
    target = label_path(out, image["file_name"])
    if target.is_file() and not refresh:
        return False
    record = load_probabilities(npz)
    label = record["probs"].argmax(axis=0).astype(np.uint8)
    if label.shape != (record["height"], record["width"]):
        label = cv2.resize(label, (record["width"], record["height"]), interpolation=cv2.INTER_NEAREST)
    write_indexed_label_png(target, label, palette)
    return True
