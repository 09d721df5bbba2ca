"""A resumable job writing into an owned output folder: how predict, ensemble_crf and pseudo_label run.

The three share one shape. A plan is made and checked first, writing nothing. Then `output_job` claims OUT for the
tool and the job (docs/output_folders.md: one run per folder, a folder of another tool or another job refused),
records what the tool writes there and sends the log to OUT/log.txt. A `JobRecord` (meta.json) is written
incomplete before the work and complete after it, so an interrupted run resumes and a reader of the folder can
tell a finished one. `announce` puts the one-line summary on the terminal (stdout) and in the log, once each.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..io.files import atomic_write_json
from ..utils.logger import FILE_ONLY, logging_to
from ..utils.output_folder import OwnedFolder, owned_output_folder


@contextmanager
def output_job(
    out: str | Path,
    tool: str,
    job: dict,
    writes: Iterable[str],
    overwrite: bool,
    start_over: bool = False,
    also_records: Iterable[str] = (),
    inputs: Mapping[str, str | Path | None] | None = None,
) -> Iterator[OwnedFolder]:
    """OUT claimed for `tool` and `job` under its run lock, `writes` (and `also_records`) recorded as the tool's,
    the log going to OUT/log.txt. `start_over` (pseudo_label's --overwrite) first deletes what the tool recorded
    there; the other tools redo their items in place. `inputs` ({option: path}) are what the tool reads: OUT may
    neither lie inside one nor hold one where it writes (`refuse_input_overlap`)."""
    writes = list(writes)
    with owned_output_folder(out, tool, job, writes=writes, overwrite=overwrite, inputs=inputs) as folder:
        if start_over:
            folder.remove_recorded()
        folder.record(*writes, *also_records)
        with logging_to(out):
            yield folder


class JobRecord:
    """OUT/meta.json: how the outputs were made, `complete: false` until `finish` adds the run's results."""

    def __init__(self, out: str | Path, content: dict) -> None:
        self.path = Path(out) / "meta.json"
        self.content = {**content, "complete": False}

    def begin(self) -> None:
        atomic_write_json(self.path, self.content, indent=2)

    def finish(self, **results: Any) -> None:
        self.content.update(complete=True, **results)
        atomic_write_json(self.path, self.content, indent=2)


def rate(count: int, seconds: float) -> float:
    """Items per second, 0 when nothing was done."""
    return count / seconds if count and seconds > 0 else 0.0


def announce(logger: logging.Logger, summary: str, result: dict | None = None, notes: Iterable[str] = ()) -> None:
    """The run's summary line once on the terminal (stdout) and once in the log file, then each of `notes` on the
    terminal, then `result` as one JSON line on stdout for scripts."""
    logger.info(summary, extra=FILE_ONLY)
    print(summary)
    for note in notes:
        print(note)
    if result is not None:
        print(json.dumps(result))
