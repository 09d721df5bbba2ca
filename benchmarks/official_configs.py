#!/usr/bin/env python
"""Do official config files build the published models? Each YAML under the given folders, unchanged, is loaded
with the project's `load_config` and built on the meta device (no memory, no weights), and its parameters counted
against the published size for 150 classes.

    python benchmarks/official_configs.py /path/to/Mask2Former/configs/ade20k/semantic-segmentation
    python benchmarks/official_configs.py tests/data/official_like --markdown

Published sizes (model-zoo tables of Mask2Former, NAT and SeMask): R50 44M, R101 63M, Swin-T 47M, Swin-S 69M,
Swin-B 107M, Swin-L 216M, DiNAT-L 220M, SeMask-Swin-L 222M, with FaPN 227M, with MSFaPN 224M. `Base-*` files hold
only data and solver keys and are skipped; a file that fails to build is reported with the reason. Exit status 1
when a file that names a published model is more than --tolerance away from it or fails to build.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

import mask2former.modeling.register_all  # noqa: F401  (every model family's config keys and classes)
import semask  # noqa: F401  (the SeMask plug-in: its config keys, backbone and meta architecture)
from mask2former.config import load_config
from mask2former.errors import UserError
from mask2former.modeling.build import build_model

# (pattern on the file name, published millions of parameters); the first match wins.
PUBLISHED: tuple[tuple[str, float], ...] = (
    (r"msfapn.*semask_swin_large", 224.0),
    (r"fapn.*semask_swin_large", 227.0),
    (r"semask_swin_large", 222.0),
    (r"dinat_large", 220.0),
    (r"swin_large", 216.0),
    (r"swin_base", 107.0),
    (r"swin_small", 69.0),
    (r"swin_tiny", 47.0),
    (r"(?<![a-z])r101", 63.0),
    (r"(?<![a-z])r50", 44.0),
)


@dataclass(frozen=True)
class Row:
    path: Path
    published: float | None
    millions: float | None
    problem: str = ""
    tolerance: float = 0.01
    is_base: bool = False  # another file of the set names it as its _BASE_

    @property
    def status(self) -> str:
        if self.problem:
            return "base of others, not a model alone" if self.is_base else "error"
        if self.published is None:
            return "built"
        return "ok" if self.within else "off"

    @property
    def within(self) -> bool:
        return self.millions is not None and self.published is not None and self.relative_error <= self.tolerance

    @property
    def relative_error(self) -> float:
        return abs(self.millions - self.published) / self.published


def published_size(path: Path) -> float | None:
    name = path.stem.lower()
    for pattern, millions in PUBLISHED:
        if re.search(pattern, name):
            return millions
    return None


def count_parameters(config_file: Path, opts: list[str]) -> float:
    """Millions of parameters of the model `config_file` builds (on the meta device: nothing is allocated)."""
    cfg = load_config(str(config_file), opts)
    with torch.device("meta"):
        model = build_model(cfg)
    return sum(parameter.numel() for parameter in model.parameters()) / 1e6


def config_files(folders: list[Path]) -> list[Path]:
    files = []
    for folder in folders:
        found = [folder] if folder.is_file() else sorted(folder.rglob("*.yaml"))
        files += [path for path in found if not path.name.startswith("Base-")]
    return files


def base_files(files: list[Path]) -> set[Path]:
    """The files that some file of `files` names in its `_BASE_` line."""
    bases = set()
    for path in files:
        match = re.search(r"^_BASE_:\s*[\"']?([^\"'#\s]+)", path.read_text(), flags=re.MULTILINE)
        if match:
            bases.add((path.parent / match.group(1)).resolve())
    return bases


def check(files: list[Path], opts: list[str], tolerance: float = 0.01) -> list[Row]:
    rows = []
    bases = base_files(files)
    for path in files:
        common = {"published": published_size(path), "tolerance": tolerance, "is_base": path.resolve() in bases}
        try:
            rows.append(Row(path, millions=count_parameters(path, opts), **common))
        except (UserError, KeyError, ValueError, TypeError) as error:
            rows.append(Row(path, millions=None, problem=f"{type(error).__name__}: {error}", **common))
    return rows


def format_table(rows: list[Row], root: Path | None) -> str:
    lines = ["| config | parameters | published | status |", "|---|---:|---:|---|"]
    for row in rows:
        name = row.path.relative_to(root) if root and row.path.is_relative_to(root) else row.path
        count = f"{row.millions:.1f}M" if row.millions is not None else "-"
        published = f"{row.published:.0f}M" if row.published is not None else "-"
        status = row.status if not row.problem else f"{row.status}: {row.problem.splitlines()[0][:160]}"
        if row.status in ("ok", "off"):
            status += f" ({100 * row.relative_error:.1f}%)"
        lines.append(f"| {name} | {count} | {published} | {status} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path, help="folders of YAML configs (searched recursively) or files")
    parser.add_argument("--tolerance", type=float, default=0.01, help="allowed relative difference (default 1%%)")
    parser.add_argument("--num-classes", type=int, default=150, help="MODEL.SEM_SEG_HEAD.NUM_CLASSES (default 150)")
    args = parser.parse_args(argv)
    files = config_files(args.folders)
    if not files:
        print(f"no YAML files under {', '.join(map(str, args.folders))}", file=sys.stderr)
        return 2
    rows = check(files, ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", str(args.num_classes)], args.tolerance)
    root = args.folders[0] if len(args.folders) == 1 and args.folders[0].is_dir() else None
    print(format_table(rows, root))
    failed = [row for row in rows if row.status == "off" or row.status == "error" and row.published is not None]
    print(f"\n{len(rows)} files: {sum(row.status == 'ok' for row in rows)} at the published size, {len(failed)} not")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
