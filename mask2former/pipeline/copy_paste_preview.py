"""The logic of tools/copy_paste_preview.py: training-mapper draws with copy-paste (INPUT.COPY_PASTE) as pictures.

Each PNG shows the augmented crop and its label overlay side by side, with a legend; pasted objects are outlined
in yellow on the overlay and their classes are named in the caption. Copy-paste is switched on even where the
config has it off; PROB and the other keys are the config's. The pasted pixels are found by drawing the same
sample again without copy-paste (the mapper draws the paste last, so the crop is the same). Pictures are named
OUT/<number>_<image stem>.png.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ..config import load_config
from ..data.catalog import DatasetCatalog
from ..data.classes import palette_for
from ..data.mapper import SemanticSegMapper
from ..data.trash import register_datasets_from_config
from ..errors import UserError
from ..io.files import atomic_write_bytes, output_path
from ..modeling import register_all  # noqa: F401  (every model family's config keys and classes)
from ..utils.output_folder import check_claim, owned_output_folder
from ..utils.visualize import legend, overlay, with_legend

logger = logging.getLogger(__name__)
OUTLINE_BGR = (0, 255, 255)
TOOL = "copy_paste_preview.py"


@dataclass
class PreviewOptions:
    """The flags of tools/copy_paste_preview.py."""

    config_file: str
    out: str
    num: int = 16
    seed: int = 0
    opts: list[str] = field(default_factory=list)


def run(options: PreviewOptions) -> list[Path]:
    """Write `num` pictures under OUT; returns their paths."""
    if options.num < 1:
        raise UserError(f"--num must be at least 1, got {options.num}")
    job = {"config_file": str(Path(options.config_file).resolve()), "opts": list(options.opts)}
    job.update(num=options.num, seed=options.seed)
    check_claim(options.out, TOOL, job)  # a folder of someone else's: refused before any work
    cfg = load_config(options.config_file, options.opts or [], freeze=False)
    if not cfg.INPUT.COPY_PASTE.ENABLED:
        print("INPUT.COPY_PASTE.ENABLED is off in the config; switched on for the preview")
        cfg.INPUT.COPY_PASTE.ENABLED = True
    cfg.INPUT.FORMAT = "BGR"  # pictures are drawn in OpenCV's order
    register_datasets_from_config(cfg)
    dicts = [d for name in cfg.DATASETS.TRAIN for d in DatasetCatalog.get(name) if "sem_seg_file_name" in d]
    if not dicts:
        raise UserError(f"DATASETS.TRAIN {list(cfg.DATASETS.TRAIN)} has no labelled images to preview")
    inputs = {Path(d["file_name"]).resolve() for d in dicts} | {Path(d["sem_seg_file_name"]).resolve() for d in dicts}

    mapper = SemanticSegMapper.from_config(cfg, is_train=True, dataset_dicts=dicts)
    plain = copy.copy(mapper)
    plain.copy_paste = None
    with owned_output_folder(options.out, TOOL, job) as owned:
        return write_pictures(Path(options.out), dicts, inputs, mapper, plain, options, owned.record)


def write_pictures(
    out: Path,
    dicts: list[dict],
    inputs: set[Path],
    mapper: SemanticSegMapper,
    plain: SemanticSegMapper,
    options: PreviewOptions,
    record_output: Callable[[str], None],
) -> list[Path]:
    """The pictures, each recorded in OUT's owner record (`record_output`) before it is written."""
    class_names = mapper.copy_paste.class_names
    palette = palette_for(class_names)
    key = legend(class_names, palette)
    picks = np.random.default_rng(options.seed).choice(len(dicts), options.num, replace=options.num > len(dicts))
    written = []
    for number, index in enumerate(picks):  # one line per picture: its own progress
        record = dicts[int(index)]
        sample = mapper(record, np.random.default_rng([options.seed, number]))
        base = plain(record, np.random.default_rng([options.seed, number]))
        image = np.ascontiguousarray(sample["image"].permute(1, 2, 0).numpy())
        label = sample["sem_seg"].numpy().astype(np.uint8)
        pasted = (label != base["sem_seg"].numpy()) | (image != base["image"].permute(1, 2, 0).numpy()).any(axis=2)
        shown = overlay(image, label, palette)
        contours, _ = cv2.findContours(pasted.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(shown, contours, -1, OUTLINE_BGR, 1)
        names = [class_names[c] for c in np.unique(label[pasted]) if c < len(class_names)]
        caption = f"{Path(record['file_name']).name}  pasted: {', '.join(names) if names else 'nothing'}"
        picture = with_legend(_captioned(np.hstack([image, shown]), caption), key)
        path = output_path(out, f"{number:04d}_{Path(record['file_name']).stem}.png")
        if path.resolve() in inputs:
            raise UserError(f"--out {out}: {path} would replace an input image or label map; choose another folder")
        record_output(path.name)
        _write_png(path, picture)
        written.append(path)
        print(f"[{number + 1}/{options.num}] {path} ({caption})", flush=True)
    return written


def _captioned(picture: np.ndarray, caption: str) -> np.ndarray:
    bar = np.full((24, picture.shape[1], 3), 255, dtype=np.uint8)
    cv2.putText(bar, caption, (6, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([bar, picture])


def _write_png(path: Path, image: np.ndarray) -> None:
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise OSError(f"could not encode {path}")
    atomic_write_bytes(path, encoded.tobytes())
