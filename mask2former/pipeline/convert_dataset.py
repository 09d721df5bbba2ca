"""The logic of tools/convert_dataset.py: read a dataset in another format (`--from`, a reader of
`mask2former.data.formats`), check it (`formats/checks.py`: one line per problem; errors, and under --strict
warnings, stop it before anything is written) and write it in the competition layout (`formats/write_layout.py`:
images hard-linked or copied, a COCO json per split, report.json and report.txt)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data import formats  # noqa: F401  (registers every reader in DATASET_FORMATS)
from ..data.formats.base import FormatOptions, read_dataset
from ..data.formats.checks import check_dataset
from ..data.formats.write_layout import REPORT_FILES, TOOL, write_layout
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

    def format_options(self) -> FormatOptions:
        defaults = FormatOptions()
        for value in [*(self.ignore or []), *([] if self.background is None else [self.background])]:
            if not 0 <= value <= 255:
                raise UserError(f"--ignore/--background {value}: mask values are 0..255")
        return FormatOptions(
            classes=tuple(self.classes),
            ignore=defaults.ignore if self.ignore is None else tuple(self.ignore),
            background=defaults.background if self.background is None else self.background,
            reduce_zero_label=self.reduce_zero_label,
            images=Path(self.images).expanduser().resolve() if self.images else None,
        )

    def job(self) -> dict[str, Any]:
        """What OUT is claimed for: a folder made with other settings is refused (or, --overwrite, redone)."""
        return {
            "format": self.format,
            "source": str(Path(self.source).expanduser().resolve()),
            "classes": list(self.classes),
            "ignore": self.ignore,
            "background": self.background,
            "reduce_zero_label": self.reduce_zero_label,
            "link": not self.copy,
            "images": str(Path(self.images).expanduser().resolve()) if self.images else None,
        }


def run(options: ConvertOptions) -> dict[str, Any]:
    """Read, check, write; returns the report. A problem with the input is one UserError line naming the file."""
    source = Path(options.source).expanduser().resolve()
    out = Path(options.out).expanduser().resolve()
    if out == source or out.is_relative_to(source) or source.is_relative_to(out):
        raise UserError(f"--out {out}: give a folder outside the dataset {source} (and not holding it)")
    job = options.job()
    check_claim(out, TOOL, job, writes=REPORT_FILES, overwrite=options.overwrite)  # refused before any reading
    dataset = read_dataset(options.format, source, options.format_options())
    checks = check_dataset(dataset, duplicates=options.duplicates)
    checks.log()
    checks.raise_if_failed(options.strict)
    report = write_layout(dataset, out, link=not options.copy, checks=checks, job=job, overwrite=options.overwrite)
    for split, info in report["splits"].items():
        print(f"{split}: {info['images']} images, {info['annotations']} annotations -> {out / info['json']}")
    print(
        f"{len(dataset.classes)} classes {dataset.classes}; {report['checks']['errors']} error(s), "
        f"{report['checks']['warnings']} warning(s); report: {out / 'report.txt'}"
    )
    return report
