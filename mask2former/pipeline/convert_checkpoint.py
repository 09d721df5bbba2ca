"""The logic of tools/convert_checkpoint.py: any weights file the project reads, written as a plain safetensors file.

Without a config the tensors are written as they are: unwrapped from `model` / `state_dict` and the `module.`
prefix, numpy arrays as tensors, each contiguous and of its own memory, NaN / Inf refused; detectron2's
`matching_heuristics` and `__author__` go into the safetensors metadata, so OUT loads exactly as IN did.

With a config the file is matched against the model the config builds, by the rules MODEL.WEIGHTS uses
(`modeling/weights.py`: exact names, detectron2's name-suffix matching when the file says so, a backbone saved
alone, the model's own other layouts: EoMT's official and transformers checkpoints), or, when that gives fewer
tensors, as a backbone checkpoint through the backbone's own key conversion (`convert_pretrained`: official or timm
Swin, DiNAT, ...; EoMT's `convert_backbone_checkpoint`: its timm encoder). OUT then holds, under the model's keys:
- for a whole model: every tensor that fits the model (the class head kept as it is when only the class count
  differs: each load re-initialises it and says so), so `MODEL.WEIGHTS OUT` loads with nothing missing when IN
  does;
- for a backbone: the converted backbone tensors under `backbone.` (the head is not in it: expected).
A file that does not fit is refused as MODEL.WEIGHTS refuses it (MODEL.LOAD_STRICT False takes what fits).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import UserError
from ..io.checkpoints import Checkpoint, CheckpointMismatchError, read_checkpoint_with_metadata
from ..io.files import atomic_write_bytes
from ..modeling import register_all  # noqa: F401  (every model family's config keys and classes)
from ..modeling.weights import (
    BACKBONE_PREFIX,
    LoadReport,
    WeightsPlan,
    check_fits,
    model_class_head_keys,
    model_layout,
    plan_weights,
)
from ..utils.output_folder import refuse_foreign_file

SUFFIX = ".safetensors"


class ConvertError(UserError, ValueError):
    """A conversion that cannot be done as asked; the message names the file or option and what to do."""


@dataclass
class ConvertOptions:
    """The arguments of tools/convert_checkpoint.py."""

    input: str
    output: str
    config_file: str | None = None
    opts: list[str] = field(default_factory=list)
    overwrite: bool = False
    allow_pickle: bool = False


@dataclass
class ConvertResult:
    """What was written: `kind` is "tensors" (no config), "model" or "backbone"; `report` the load report (with a
    config)."""

    output: Path
    kind: str
    tensors: int
    report: LoadReport | None = None
    lines: list[str] = field(default_factory=list)


def run(options: ConvertOptions) -> ConvertResult:
    """Convert, write OUT atomically and print what was loaded and written."""
    source, target = Path(options.input).expanduser(), Path(options.output).expanduser()
    check_paths(source, target, options.overwrite)
    if options.opts and not options.config_file:
        raise ConvertError(
            f"KEY VALUE overrides ({' '.join(options.opts[:2])} ...) need --config-file: without a config the "
            "tensors are written as they are"
        )
    cfg = None
    if options.config_file:
        from ..config import load_config

        cfg = load_config(options.config_file, options.opts)
    allow_pickle = options.allow_pickle or bool(cfg is not None and cfg.MODEL.ALLOW_PICKLE)
    checkpoint = read_checkpoint_with_metadata(source, allow_pickle)
    if cfg is None:
        tensors, kind, report = checkpoint.tensors, "tensors", None
        metadata = _plain_metadata(checkpoint)
        lines = [f"{source}: {len(tensors)} tensors, written as they are (no --config-file: keys unchanged)"]
    else:
        tensors, kind, report = _convert_for_model(cfg, checkpoint, str(source))
        metadata = {"kind": kind, "config": str(options.config_file)}
        lines = [f"{source} as a {'whole model' if kind == 'model' else 'backbone'} of {options.config_file}: "]
        lines[0] += report.summary()
    metadata.update({"format": "pt", "converted_from": source.name})
    data = serialise(tensors, metadata)
    atomic_write_bytes(target, data)
    lines.append(f"wrote {target}: {len(tensors)} tensors, {len(data) / 2**20:.1f} MiB ({_what(kind)})")
    for line in lines:
        print(line)
    return ConvertResult(target, kind, len(tensors), report, lines)


def check_paths(source: Path, target: Path, overwrite: bool) -> None:
    """Refuse, before anything is read: a missing IN, an OUT not ending in .safetensors, OUT naming IN (even
    through a link), an existing OUT without `overwrite` (or with it, one this tool did not write), an OUT that is
    a folder."""
    if not source.is_file():
        raise FileNotFoundError(f"checkpoint not found: {source}")
    if target.suffix != SUFFIX:
        raise ConvertError(f"OUT {target} must end with {SUFFIX}: the converter writes safetensors files only")
    if target.resolve() == source.resolve() or (target.exists() and os.path.samefile(source, target)):
        raise ConvertError(f"OUT {target} is IN: the input is never overwritten; give another OUT")
    if target.is_dir():
        raise IsADirectoryError(f"OUT {target} is a folder: give a file name ending with {SUFFIX}")
    if target.exists() and not overwrite:
        raise FileExistsError(f"OUT {target} exists: give --overwrite to replace it, or another OUT")
    refuse_foreign_file(target, "convert_checkpoint.py", written_by_this_tool, "OUT")


def written_by_this_tool(path: Path) -> bool:
    """True for a safetensors file whose metadata says it was converted here (`converted_from`)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return "converted_from" in (handle.metadata() or {})
    except Exception:  # not a safetensors file at all: not ours  # noqa: BLE001
        return False


def serialise(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """safetensors bytes of `tensors`, each detached, contiguous and of its own memory (safetensors refuses
    tensors that share storage), in key order."""
    from safetensors.torch import save

    own = {key: tensors[key].detach().clone(memory_format=torch.contiguous_format) for key in sorted(tensors)}
    return save(own, metadata=metadata)


def _plain_metadata(checkpoint: Checkpoint) -> dict[str, str]:
    metadata = {"kind": "tensors"}
    if checkpoint.matching_heuristics:
        metadata["matching_heuristics"] = "True"
    if checkpoint.author:
        metadata["__author__"] = checkpoint.author
    return metadata


def _convert_for_model(cfg, checkpoint: Checkpoint, source: str) -> tuple[dict[str, torch.Tensor], str, LoadReport]:
    from ..modeling.build import build_model

    model = build_model(cfg)
    own = model.state_dict()
    converter = _backbone_converter(model, source)
    tensors = model_layout(model, checkpoint.tensors, source)
    try:
        plan = plan_weights(own, tensors, checkpoint.matching_heuristics, True, source, model_class_head_keys(model))
    except CheckpointMismatchError:  # names ambiguous by suffix: the backbone's own conversion may know them
        if converter is None:
            raise
        plan = None
    if converter is not None and (plan is None or plan.report.loaded == 0 or plan.report.backbone_only):
        converted = converter(dict(checkpoint.tensors))
        prefixed = {BACKBONE_PREFIX + key: value for key, value in converted.items()}
        backbone = plan_weights(
            own, prefixed, fresh_head_ok=True, source=source, class_keys=model_class_head_keys(model)
        )
        if plan is None or (backbone.report.loaded > 0 and backbone.report.loaded >= plan.report.loaded):
            plan = backbone
    if cfg.MODEL.LOAD_STRICT:
        check_fits(plan.report, source)
    kind = "backbone" if plan.report.backbone_only else "model"
    return _fitting_tensors(plan), kind, plan.report


def _backbone_converter(model: torch.nn.Module, source: str) -> Callable[[dict], dict] | None:
    """tensors -> backbone tensors under the backbone's keys: the model's own `convert_backbone_checkpoint` (EoMT's
    timm encoder), else the backbone class's `convert_pretrained`; None when neither exists."""
    own = getattr(model, "convert_backbone_checkpoint", None)
    if own is not None:
        return lambda tensors: own(tensors, source)
    hook = getattr(type(getattr(model, "backbone", None)), "convert_pretrained", None)
    return None if hook is None else (lambda tensors: hook(tensors, model.backbone))


def _fitting_tensors(plan: WeightsPlan) -> dict[str, torch.Tensor]:
    """What fits the model, and the class-count dependent tensors as they are (re-initialised at each load)."""
    tensors = dict(plan.to_load)
    tensors.update({key: plan.mapped[key] for key in plan.report.reinitialised})
    return tensors


def _what(kind: str) -> str:
    if kind == "tensors":
        return "the keys of IN; MODEL.WEIGHTS loads it as it loads IN"
    if kind == "model":
        return "a whole model in this project's layout: MODEL.WEIGHTS OUT"
    return "backbone weights under backbone.: MODEL.BACKBONE.WEIGHTS OUT, the head starts fresh"
