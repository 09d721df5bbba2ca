"""Loading checkpoint tensors into a model, with a clear report.

Keys follow the official layout (backbone.*, sem_seg_head.pixel_decoder.*, sem_seg_head.predictor.*,
criterion.empty_weight); files that say `matching_heuristics` (detectron2's flag) are matched by name suffix, as
detectron2 does. When only the class count differs, the class head is re-initialised; any other mismatch is an
error that lists the keys, unless `strict=False`. Files are read by `mask2former.io.checkpoints`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..io.checkpoints import CheckpointMismatchError, check_stored_dtypes, read_checkpoint_with_metadata

logger = logging.getLogger(__name__)

CLASS_HEAD_KEYS = (
    "sem_seg_head.predictor.class_embed.weight",
    "sem_seg_head.predictor.class_embed.bias",
    "criterion.empty_weight",
)
# SeMask's semantic layers predict one channel per class: re-initialised with the class head.
_CLASS_DEPENDENT_SUFFIXES = (".mlp_cls_q.weight", ".mlp_cls_q.bias", ".mlp_cls_k.weight", ".mlp_cls_k.bias")
# Buffers some upstream checkpoints carry that the model recomputes.
_DERIVED_SUFFIXES = ("relative_position_index", "attn_mask")


def model_class_head_keys(model: nn.Module) -> set[str]:
    """The model's state keys that depend on the class count: what the model names (`class_head_keys()`, as
    PerPixelSegmentor does), else Mask2Former's class head and SeMask's per-class layers."""
    own = getattr(model, "class_head_keys", None)
    if own is not None:
        return set(own())
    return {key for key in model.state_dict() if key in CLASS_HEAD_KEYS or key.endswith(_CLASS_DEPENDENT_SUFFIXES)}


BACKBONE_PREFIX = "backbone."


@dataclass
class LoadReport:
    """What a checkpoint gave a model. `missing` / `unexpected` / `shape_mismatch` / `reinitialised` list keys;
    `renamed` counts the checkpoint keys loaded under another name (detectron2's matching heuristics, or a
    backbone saved alone getting `backbone.`). `backbone_only`: every tensor it gave lies under `backbone.` and
    it holds nothing of the rest of the model, whose keys are then `head_fresh`, not `missing`; `backbone_init`:
    it was loaded as such (a start for training: the head keeps its initialisation, extra keys are ignored)."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatch: list[str] = field(default_factory=list)
    reinitialised: list[str] = field(default_factory=list)
    loaded: int = 0
    renamed: int = 0
    heuristics: bool = False
    backbone_only: bool = False
    backbone_init: bool = False
    head_fresh: list[str] = field(default_factory=list)
    # rows (the class dimension) of the first re-initialised key: (in the checkpoint, in the model)
    class_rows: tuple[int, int] | None = None

    def checkpoint_classes(self, num_classes: int) -> int | None:
        """The class count the checkpoint was trained for, given the model's `num_classes`: the model's count
        plus the difference in rows of a re-initialised class-dependent key (a Mask2Former class head has K + 1
        rows, a per-pixel classifier K: the difference is the same). None when nothing was re-initialised."""
        if self.class_rows is None:
            return None
        theirs, mine = self.class_rows
        return num_classes + theirs - mine

    def summary(self, shown: int = 12) -> str:
        """What the load did, naming up to `shown` keys of each kind."""
        parts = [f"loaded {self.loaded} tensors"]
        if self.renamed:
            how = "by name suffix (detectron2's matching heuristics)" if self.heuristics else "under backbone."
            parts.append(f"{self.renamed} of the file's keys matched {how}")
        if self.backbone_only:
            head = f"a backbone checkpoint: the rest of the model ({len(self.head_fresh)} tensors) is not in it"
            parts.append(head + (", it keeps its initialisation (expected)" if self.backbone_init else ""))
        if self.reinitialised:
            parts.append(f"re-initialised the class head ({', '.join(self.reinitialised)}): the class count differs")
        ignored = " (ignored)" if self.backbone_init else ""
        for title, keys in (
            ("missing" + (" (start fresh)" if self.backbone_init else ""), self.missing),
            ("unexpected" + ignored, self.unexpected),
            ("shape-mismatched", self.shape_mismatch),
        ):
            if keys:
                parts.append(f"{len(keys)} {title}: {_short_list(keys, shown)}")
        return "; ".join(parts)

    def fits(self) -> bool:
        """Whether a strict load accepts it: nothing missing, unexpected or mis-shaped, except that a backbone
        initialisation may leave keys fresh and ignore extras (classifier, final norm)."""
        if self.backbone_init:
            return not self.shape_mismatch
        return not (self.missing or self.head_fresh or self.unexpected or self.shape_mismatch)


def _short_list(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


# ---- matching a checkpoint's keys to the model's ---------------------------------------------------------------------


def align_checkpoint_keys(
    model_shapes: Mapping[str, Sequence[int]],
    checkpoint_shapes: Mapping[str, Sequence[int]],
    matching_heuristics: bool = False,
    source: str = "checkpoint",
) -> dict[str, str]:
    """{checkpoint key: model key} for the checkpoint keys that load under another name (the others keep theirs).

    With `matching_heuristics` (detectron2's flag, which its ImageNet `R-50.pkl` and converted Swin .pkl files
    set), detectron2's rule: each model key takes the longest checkpoint key it ends with, in whole dot-separated
    parts (`backbone.res2.0.conv1.weight` takes `res2.0.conv1.weight` over `conv1.weight`); a suffix match of
    another shape is skipped (the final `norm.weight` of a Swin classifier is no pixel-decoder norm), an exact
    name always matches (a class-count change is the loader's to report); one checkpoint key taken by two model
    keys is ambiguous: CheckpointMismatchError naming the three. Without the flag, a file whose every key is a
    model key less `backbone.` (a backbone saved alone) gets that prefix; any other file keeps its names."""
    if not matching_heuristics:
        keys = [key for key in checkpoint_shapes if not key.endswith(_DERIVED_SUFFIXES)]
        if keys and all(key not in model_shapes and BACKBONE_PREFIX + key in model_shapes for key in keys):
            return {key: BACKBONE_PREFIX + key for key in checkpoint_shapes if BACKBONE_PREFIX + key in model_shapes}
        return {}
    taken: dict[str, str] = {}
    for model_key in sorted(model_shapes):
        parts = model_key.split(".")
        match = next((".".join(parts[i:]) for i in range(len(parts)) if ".".join(parts[i:]) in checkpoint_shapes), None)
        if match is None:
            continue
        if match != model_key and tuple(checkpoint_shapes[match]) != tuple(model_shapes[model_key]):
            continue
        if match in taken:
            raise CheckpointMismatchError(
                f"{source}: its key {match} matches two model keys by name suffix ({taken[match]} and {model_key}), "
                "so which one it is for is ambiguous. A backbone checkpoint: give it as MODEL.BACKBONE.WEIGHTS, or "
                "convert it with tools/convert_checkpoint.py IN OUT.safetensors --config-file CFG (both use the "
                "backbone's own key conversion)"
            )
        taken[match] = model_key
    return {key: model_key for key, model_key in taken.items() if key != model_key}


@dataclass
class WeightsPlan:
    """How a state dict goes into a model: `mapped` is the state dict under the model's key names, `to_load` the
    part that fits (same names and shapes), `report` what was loaded, missing, renamed, re-initialised."""

    mapped: dict[str, torch.Tensor]
    to_load: dict[str, torch.Tensor]
    report: LoadReport


def plan_weights(
    own: Mapping[str, torch.Tensor],
    state_dict: Mapping[str, torch.Tensor],
    matching_heuristics: bool = False,
    fresh_head_ok: bool = False,
    source: str = "checkpoint",
    class_keys: set[str] | frozenset[str] = frozenset(),
) -> WeightsPlan:
    """`load_model_weights` without the loading: `own` is the model's state dict, `class_keys` its keys that depend on
    the class count (`model_class_head_keys`). `fresh_head_ok`: a backbone-only checkpoint is a start for training
    (`LoadReport.backbone_init`)."""
    renames = align_checkpoint_keys(
        {k: tuple(v.shape) for k, v in own.items()},
        {k: tuple(v.shape) for k, v in state_dict.items()},
        matching_heuristics,
        source,
    )
    mapped = {renames.get(key, key): value for key, value in state_dict.items()}
    check_stored_dtypes(own, mapped, source)
    report = LoadReport(renamed=len(renames), heuristics=matching_heuristics)
    to_load = {}
    for key, value in mapped.items():
        if key not in own:
            if not key.endswith(_DERIVED_SUFFIXES):
                report.unexpected.append(key)
        elif own[key].shape != value.shape:
            # a class-count change alters the class dimension (rows) only; any other difference is another size
            if key in class_keys and _differ_in_rows_only(value.shape, own[key].shape):
                report.reinitialised.append(key)
                if report.class_rows is None:
                    report.class_rows = (value.shape[0], own[key].shape[0])
            else:
                report.shape_mismatch.append(f"{key} {tuple(value.shape)} vs {tuple(own[key].shape)}")
        else:
            to_load[key] = value
    report.missing = [key for key in own if key not in mapped and not key.endswith(_DERIVED_SUFFIXES)]
    modules = {key.split(".", 1)[0] for key in own} - {BACKBONE_PREFIX.rstrip(".")}
    report.backbone_only = (
        bool(to_load)
        and bool(modules)
        and all(key.startswith(BACKBONE_PREFIX) for key in to_load)
        and not any(key.split(".", 1)[0] in modules for key in mapped)
    )
    if report.backbone_only:
        report.head_fresh = [key for key in report.missing if not key.startswith(BACKBONE_PREFIX)]
        report.missing = [key for key in report.missing if key.startswith(BACKBONE_PREFIX)]
        report.backbone_init = fresh_head_ok
    report.loaded = len(to_load)
    return WeightsPlan(mapped, to_load, report)


def _differ_in_rows_only(stored: torch.Size, model: torch.Size) -> bool:
    return len(stored) == len(model) >= 1 and stored[1:] == model[1:] and stored[0] != model[0]


def check_same_classes(report: LoadReport, num_classes: int, source: str = "checkpoint") -> None:
    """CheckpointMismatchError when the load re-initialised class-dependent keys: `source` was trained for
    another class count than the config's MODEL.SEM_SEG_HEAD.NUM_CLASSES (`num_classes`), and a model whose class
    head starts fresh predicts nothing it learnt (prediction and evaluation need the trained head)."""
    theirs = report.checkpoint_classes(num_classes)
    if theirs is None:
        return
    raise CheckpointMismatchError(
        f"{source} was trained for {theirs} classes, the config has {num_classes} "
        f"(MODEL.SEM_SEG_HEAD.NUM_CLASSES; {_short_list(report.reinitialised, 3)} differ in shape): give the config "
        "the checkpoint was trained with, or the checkpoint of this class list"
    )


LOOSE_LOAD_ADVICE = "Load with strict=False (MODEL.LOAD_STRICT False) to take what fits."
PREDICTION_ADVICE = (
    "A prediction needs every tensor: give the config the checkpoint was trained with (its run's config.yaml, or "
    "the run folder)."
)


def check_fits(report: LoadReport, source: str = "checkpoint", advice: str = LOOSE_LOAD_ADVICE) -> None:
    """CheckpointMismatchError (listing the keys) unless a strict load accepts `report`; `advice` ends the message
    of a checkpoint of another architecture (what the caller can do about it)."""
    if report.fits():
        return
    if report.backbone_only and not report.backbone_init:
        raise CheckpointMismatchError(
            f"{source} holds backbone weights only (the model's other {len(report.head_fresh)} tensors are not in "
            f"it): a start for training, not a trained model. {report.summary()}"
        )
    missing = set(report.missing)
    as_backbone = sum(f"backbone.{key}" in missing for key in report.unexpected)
    if report.loaded == 0 and report.unexpected and as_backbone * 2 >= len(report.unexpected):
        advice = (
            "most of its keys are this model's backbone keys without 'backbone.': a backbone checkpoint "
            "(ImageNet weights?). "
            "Give it as MODEL.BACKBONE.WEIGHTS (its layout is converted there), or convert it once with "
            "tools/convert_checkpoint.py IN OUT.safetensors --config-file <this config>"
        )
    raise CheckpointMismatchError(
        f"{source} does not fit this model (a checkpoint of another architecture or size?). "
        f"{report.summary(shown=4)}. {advice}"
    )


def model_layout(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint") -> dict:
    """The checkpoint's tensors under the model's key names when the model converts other layouts of its own
    checkpoints (`convert_checkpoint_layout`: EoMT's official and transformers layouts); unchanged otherwise."""
    convert = getattr(model, "convert_checkpoint_layout", None)
    return dict(state_dict) if convert is None else convert(dict(state_dict), source)


def load_model_weights(
    model: nn.Module,
    state_dict: dict[str, torch.Tensor],
    strict: bool = True,
    source: str = "checkpoint",
    matching_heuristics: bool = False,
    fresh_head_ok: bool = False,
    mismatch_advice: str = LOOSE_LOAD_ADVICE,
) -> LoadReport:
    """Load what fits; re-initialise the class head on a class-count change; fail on other mismatches if strict
    (`mismatch_advice`: what the refusal tells the user to do).

    Keys are matched as `align_checkpoint_keys` says (by name suffix when the file says `matching_heuristics`).
    A checkpoint holding only backbone weights is refused when strict unless `fresh_head_ok` (training from it:
    the head keeps its initialisation, keys the file lacks or has in excess are listed, not fatal). A model's own
    other layouts are converted first (`model_layout`)."""
    state_dict = model_layout(model, state_dict, source)
    plan = plan_weights(
        model.state_dict(), state_dict, matching_heuristics, fresh_head_ok, source, model_class_head_keys(model)
    )
    if strict:
        check_fits(plan.report, source, mismatch_advice)
    model.load_state_dict(plan.to_load, strict=False)
    logger.info("%s: %s", source, plan.report.summary())
    return plan.report


def load_checkpoint_into(
    model: nn.Module, path: str | Path, allow_pickle: bool = False, strict: bool = True, fresh_head_ok: bool = False
) -> LoadReport:
    """`read_checkpoint_with_metadata` + `load_model_weights` (with the file's `matching_heuristics`)."""
    checkpoint = read_checkpoint_with_metadata(path, allow_pickle)
    return load_model_weights(
        model,
        checkpoint.tensors,
        strict=strict,
        source=str(path),
        matching_heuristics=checkpoint.matching_heuristics,
        fresh_head_ok=fresh_head_ok,
    )
