"""Reading checkpoints safely and loading them into a model with a clear report.

Accepted: this project's Lightning checkpoints (.ckpt) and model files (.pth), official Mask2Former
.pth files, safetensors, and detectron2 .pkl files (pickled numpy arrays) only when the user opts
in with `allow_pickle`, because unpickling runs code. Keys follow the official layout (backbone.*,
sem_seg_head.pixel_decoder.*, sem_seg_head.predictor.*, criterion.empty_weight). When only the
class count differs, the class head is re-initialised; any other mismatch is an error that lists
the keys, unless `strict=False`.
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import UserError

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


class CheckpointMismatchError(UserError, RuntimeError):
    """The checkpoint does not fit the model; the message lists the mismatched keys."""


@dataclass
class LoadReport:
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatch: list[str] = field(default_factory=list)
    reinitialised: list[str] = field(default_factory=list)
    loaded: int = 0

    def summary(self) -> str:
        parts = [f"loaded {self.loaded} tensors"]
        if self.reinitialised:
            parts.append(f"re-initialised the class head ({', '.join(self.reinitialised)}): the class count differs")
        for title, keys in (
            ("missing", self.missing),
            ("unexpected", self.unexpected),
            ("shape-mismatched", self.shape_mismatch),
        ):
            if keys:
                parts.append(f"{len(keys)} {title}: {_short_list(keys)}")
        return "; ".join(parts)


def _short_list(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def read_checkpoint(path: str | Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The model state dict inside a checkpoint file, with official key names."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if path.suffix == ".pkl":
        if not allow_pickle:
            raise PermissionError(
                f"{path} is a pickle (detectron2 format); unpickling runs code from the file. If you trust it, "
                "set MODEL.ALLOW_PICKLE True (tools/predict.py: --allow-pickle)."
            )
        with path.open("rb") as handle:
            data = pickle.load(handle, encoding="latin1")  # noqa: S301 (explicit opt-in above)
    else:
        try:
            data = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
        except pickle.UnpicklingError as error:
            raise PermissionError(
                f"{path} holds objects other than tensors and plain containers, so it was not loaded "
                f"({str(error).splitlines()[0]}). If you trust the file, set MODEL.ALLOW_PICKLE True."
            ) from None
    return _model_state(data, path)


def _model_state(data: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(data, dict) and "state_dict" in data and isinstance(data["state_dict"], dict):
        state = {k.removeprefix("model."): v for k, v in data["state_dict"].items()}  # Lightning
    elif isinstance(data, dict) and "model" in data and isinstance(data["model"], dict):
        state = data["model"]  # detectron2 / official / this project's .pth
    elif isinstance(data, dict):
        state = data
    else:
        raise CheckpointMismatchError(f"{path}: expected a dict of tensors, found {type(data).__name__}")
    tensors = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(np.ascontiguousarray(value))
        if isinstance(value, torch.Tensor):
            tensors[key] = value
    if not tensors:
        raise CheckpointMismatchError(f"{path}: no tensors found")
    return tensors


def load_model_weights(
    model: nn.Module, state_dict: dict[str, torch.Tensor], strict: bool = True, source: str = "checkpoint"
) -> LoadReport:
    """Load what fits; re-initialise the class head on a class-count change; fail on other mismatches if strict."""
    own = model.state_dict()
    report = LoadReport()
    to_load = {}
    for key, value in state_dict.items():
        if key not in own:
            if not key.endswith(_DERIVED_SUFFIXES):
                report.unexpected.append(key)
        elif own[key].shape != value.shape:
            class_dependent = key in CLASS_HEAD_KEYS or key.endswith(_CLASS_DEPENDENT_SUFFIXES)
            (report.reinitialised if class_dependent else report.shape_mismatch).append(
                key if class_dependent else f"{key} {tuple(value.shape)} vs {tuple(own[key].shape)}"
            )
        else:
            to_load[key] = value
    report.missing = [key for key in own if key not in state_dict and not key.endswith(_DERIVED_SUFFIXES)]
    if strict and (report.missing or report.unexpected or report.shape_mismatch):
        raise CheckpointMismatchError(
            f"{source} does not fit this model (a checkpoint of another architecture or size?). "
            f"{report.summary()}. Load with strict=False (MODEL.LOAD_STRICT False) to take what fits."
        )
    model.load_state_dict(to_load, strict=False)
    report.loaded = len(to_load)
    logger.info("%s: %s", source, report.summary())
    return report


def load_checkpoint_into(
    model: nn.Module, path: str | Path, allow_pickle: bool = False, strict: bool = True
) -> LoadReport:
    """`read_checkpoint` + `load_model_weights`."""
    return load_model_weights(model, read_checkpoint(path, allow_pickle), strict=strict, source=str(path))
