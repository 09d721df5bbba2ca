"""OUTPUT_DIR/metrics.csv: one row per logged step (losses, lr, mIoU), written through the atomic writer.

A row's step is the iteration its numbers belong to, counted as log.txt counts them: the losses of "iter 20/40" are
step 20, an evaluation after 40 iterations is step 40 (final_metrics.json's "iteration").

A fresh run starts a new file. A resumed run keeps the rows up to the iteration it resumes from (those of the
killed run after it are redone, so they are dropped rather than duplicated) and appends its own.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only

from ..io.files import atomic_write_text

logger = logging.getLogger(__name__)

METRICS_NAME = "metrics.csv"


def read_metrics(path: str | Path) -> list[dict[str, str]]:
    """The rows of a metrics.csv ([] when there is none)."""
    path = Path(path)
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


class MetricsCSVLogger(Logger):
    """Lightning logger for OUTPUT_DIR/metrics.csv; `resume_step`: the iteration a resumed run continues after (the
    existing rows with step <= it are kept); `resume_row`: the row of that iteration (stored in the checkpoint),
    added if the file lacks it."""

    def __init__(self, output_dir: str | Path, resume_step: int | None = None, resume_row: dict | None = None) -> None:
        super().__init__()
        self.path = Path(output_dir) / METRICS_NAME
        self.resume_step = resume_step
        self.resume_row = resume_row
        self.rows: list[dict[str, Any]] | None = None  # loaded on first use, on rank zero only
        self.keys: list[str] = []
        self._unsaved = False

    @property
    def name(self) -> str:
        return ""

    @property
    def version(self) -> str:
        return ""

    @property
    def save_dir(self) -> str:
        return str(self.path.parent)

    @property
    def log_dir(self) -> str:
        return str(self.path.parent)

    def _history(self) -> list[dict[str, Any]]:
        if self.rows is None:
            self.rows = []
            if self.resume_step is not None:
                old = read_metrics(self.path)
                self.rows = [row for row in old if _step(row) is not None and _step(row) <= self.resume_step]
                row = self.resume_row
                if row is not None and not any(_step(r) == _step(row) and r.get("total_loss") for r in self.rows):
                    self.rows.append(dict(row))  # killed between the checkpoint and the row's write
                self.keys = sorted(set().union(*self.rows))
                if len(old) != len(self.rows):
                    logger.info(
                        "metrics.csv: kept the %d rows up to iteration %d, dropped %d the resumed run redoes",
                        len(self.rows),
                        self.resume_step,
                        len(old) - len(self.rows),
                    )
        return self.rows

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass  # the run's settings are OUTPUT_DIR/config.yaml

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        rows = self._history()
        row = {key: value.item() if hasattr(value, "item") else value for key, value in metrics.items()}
        row["step"] = len(rows) if step is None else int(step)
        rows.append(row)
        self.keys.extend(sorted(set(row) - set(self.keys)))
        self._unsaved = True

    @rank_zero_only
    def save(self) -> None:
        """Called by Lightning after each logged step: the whole file is rewritten atomically, so a kill leaves
        either the previous or the new version, never a torn row (a few thousand rows: cheap)."""
        self.flush()

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.flush()

    def flush(self) -> None:
        if not self._unsaved:
            return
        rows = self._history()
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=sorted(self.keys), restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.path, text.getvalue())
        self._unsaved = False


def _step(row: dict[str, Any]) -> int | None:
    try:
        return int(float(row.get("step", "")))
    except (TypeError, ValueError):
        return None
