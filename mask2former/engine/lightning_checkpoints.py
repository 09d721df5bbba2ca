"""Lightning's checkpoints: every save goes through the atomic writer (`mask2former.io.checkpoints.save_atomic`),
and `--resume` picks the newest checkpoint that reads back whole.

A save writes a temporary file beside the target, fsyncs it and renames it over the target, so a full disk or a
kill during a save leaves the previous checkpoint of that name intact and no partial file under the final name.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning.pytorch.plugins.io import TorchCheckpointIO

from ..errors import UserError
from ..io.checkpoints import CheckpointReadError, read_checkpoint_file, save_atomic

logger = logging.getLogger(__name__)

LAST = "last.ckpt"
_PERIODIC = re.compile(r"model_(\d+)(?:-v\d+)?\.ckpt")


class ResumeError(UserError):
    """`--resume` found checkpoints but none that reads back whole; the message names each and its problem."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint I/O with the save through the atomic writer (`save_atomic`)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        save_atomic(checkpoint, path)


@dataclass(frozen=True)
class ResumePoint:
    path: Path
    step: int
    metrics_row: dict | None = None  # the metrics.csv row of the iteration the checkpoint ends (if it logs one)


def find_resume_point(checkpoint_dir: str | Path) -> ResumePoint | None:
    """The checkpoint `--resume` continues from: of last.ckpt and the model_XXXXXXX.ckpt files, the one with the
    highest iteration that reads back whole (last.ckpt on a tie); each damaged file is logged with its problem.
    None when the folder holds no checkpoint; ResumeError when it holds some but none is intact."""
    folder = Path(checkpoint_dir)
    periodic = sorted(p for p in folder.glob("model_*.ckpt") if _PERIODIC.fullmatch(p.name))
    candidates = ([folder / LAST] if (folder / LAST).is_file() else []) + periodic
    intact: list[ResumePoint] = []
    problems: list[str] = []
    for path in candidates:
        try:
            data = read_checkpoint_file(path, mmap=True)
            step = data.get("global_step") if isinstance(data, dict) else None
            if not isinstance(step, int) or "state_dict" not in data:
                raise CheckpointReadError(f"{path} is not a Lightning training checkpoint (no global_step/state_dict)")
        except (CheckpointReadError, PermissionError) as error:
            problems.append(str(error))
            logger.warning("--resume: skipped a damaged checkpoint: %s", error)
            continue
        row = data.get("metrics_row")
        intact.append(ResumePoint(path, step, row if isinstance(row, dict) else None))
    if not intact:
        if problems:
            raise ResumeError(
                f"--resume: no intact checkpoint in {folder}: {'; '.join(problems)}. Start anew without --resume "
                "(in another OUTPUT_DIR to keep these files)"
            )
        return None
    best = max(intact, key=lambda point: point.step)  # max keeps the first of equals: last.ckpt
    if problems:
        logger.warning("--resume: continuing from %s (iteration %d), the newest intact one", best.path, best.step)
    return best
