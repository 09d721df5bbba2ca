"""The logic of tools/convert_dataset.py: read a dataset in another format (`--from`, a reader of
`mask2former.data.formats`), check it (`formats/checks.py`: one line per problem; errors, and under --strict
warnings, stop it before anything is written) and write it in the competition layout (`formats/write_layout.py`:
images hard-linked or copied, a COCO json per split, report.json and report.txt)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ..data import formats  # noqa: F401  (registers every reader in DATASET_FORMATS)
from ..data.formats.base import FormatOptions, read_dataset
from ..data.formats.checks import check_dataset
from ..data.formats.png_masks import read_class_file
from ..data.formats.write_layout import REPORT_FILES, TOOL, placed_images, write_layout
from ..errors import UserError
from ..utils.output_folder import check_claim

logger = logging.getLogger(__name__)


@dataclass
class ConvertOptions:
    """The flags of tools/convert_dataset.py."""

    format: str
    source: str
    out: str
    classes: list[str] = field(default_factory=list)
    ignore: list[int] | None = None
    background: int | None = None
    reduce_zero_label: bool | None = None
    copy: bool = False
    strict: bool = False
    overwrite: bool = False
    duplicates: bool = True
    images: str | None = None
    classes_file: str | None = None

    def class_names(self) -> tuple[str, ...]:
        """--classes, or the names of --classes-file (a labelmap.txt or a classes.txt: `read_class_file`)."""
        if self.classes_file is None:
            return tuple(self.classes)
        if self.classes:
            raise UserError("--classes and --classes-file: give one of them")
        path = Path(self.classes_file).expanduser()
        if not path.is_file():
            raise UserError(f"--classes-file {self.classes_file}: no such file: give a labelmap.txt or a classes.txt")
        return read_class_file(path).names

    def format_options(self) -> FormatOptions:
        defaults = FormatOptions()
        for value in [*(self.ignore or []), *([] if self.background is None else [self.background])]:
            if not 0 <= value <= 255:
                raise UserError(f"--ignore/--background {value}: mask values are 0..255")
        return FormatOptions(
            classes=self.class_names(),
            ignore=defaults.ignore if self.ignore is None else tuple(self.ignore),
            background=defaults.background if self.background is None else self.background,
            reduce_zero_label=self.reduce_zero_label,
            images=Path(self.images).expanduser().resolve() if self.images else None,
        )

    def inputs(self) -> dict[str, str | None]:
        """What the conversion reads ({option: path}): OUT may neither hold nor lie inside any of it."""
        return {"SRC": self.source, "--images": self.images}

    def job(self) -> dict[str, Any]:
        """What OUT is claimed for: a folder made with other settings is refused (or, --overwrite, redone)."""
        return {
            "format": self.format,
            "source": str(Path(self.source).expanduser().resolve()),
            "classes": list(self.class_names()),
            "ignore": self.ignore,
            "background": self.background,
            "reduce_zero_label": self.reduce_zero_label,
            "link": not self.copy,
            "images": str(Path(self.images).expanduser().resolve()) if self.images else None,
        }


def run(options: ConvertOptions) -> dict[str, Any]:
    """Read, check, write; returns the report. A problem with the input is one UserError line naming the file."""
    if options.format.lower() == "coco":
        raise UserError(
            "--from coco: a COCO json needs no conversion: train on it as it is (DATASETS.ROOT, or DATASETS.REGISTER "
            "[name, json, image_root]); tools/inspect_dataset.py --json checks it"
        )
    source = Path(options.source).expanduser().resolve()
    out = Path(options.out).expanduser().resolve()
    job = options.job()
    inputs = options.inputs()
    # refused before any reading: the image folders an earlier run placed images in are known from its list; this
    # dataset's are known only after reading, and checked again then
    earlier = sorted({PurePosixPath(name).parts[0] for name in placed_images(out)})
    check_claim(out, TOOL, job, writes=[*REPORT_FILES, *earlier], overwrite=options.overwrite, inputs=inputs)
    dataset = read_dataset(options.format, source, options.format_options())
    checks = check_dataset(dataset, duplicates=options.duplicates)
    checks.log(options.strict)
    checks.raise_if_failed(options.strict)
    report = write_layout(
        dataset, out, link=not options.copy, checks=checks, job=job, overwrite=options.overwrite, inputs=inputs
    )
    for split, info in report["splits"].items():
        print(f"{split}: {info['images']} images, {info['annotations']} annotations -> {out / info['json']}")
    print(
        f"{len(dataset.classes)} classes {dataset.classes}; {report['checks']['errors']} error(s), "
        f"{report['checks']['warnings']} warning(s); report: {out / 'report.txt'}"
    )
    return report
