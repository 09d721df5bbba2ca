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
import zipfile
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


class CheckpointReadError(UserError):
    """A weights file that cannot be read: empty, truncated, a text file, not the format its name says; the
    message names the file and what it is not."""


class NonFiniteCheckpointError(CheckpointReadError):
    """A checkpoint holding NaN or Inf values: its numbers cannot be trusted; the message names the first key."""


_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = 0x80  # the first byte of a pickle of protocol 2 or later (torch's legacy format, detectron2 .pkl)
_REDO = "an interrupted save or copy? Copy the file again or use another checkpoint"


def read_checkpoint(path: str | Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The model state dict inside a weights file (official key names), every tensor finite.

    The one reader of .pth / .ckpt / .safetensors / .pkl weights, for whole models and backbones alike: a file
    it cannot read raises CheckpointReadError naming the file and what it is not; NaN or Inf values raise
    NonFiniteCheckpointError naming the first such key."""
    path = Path(path).expanduser()
    tensors = _model_state(read_checkpoint_file(path, allow_pickle), path)
    check_finite(tensors, path)
    return tensors


def read_checkpoint_file(path: str | Path, allow_pickle: bool = False, mmap: bool = False) -> object:
    """What a weights file holds, as loaded (a dict of tensors and plain containers), or CheckpointReadError.
    `mmap=True` maps a torch zip file instead of reading it (cheap: `--resume` checks candidates with it)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointReadError(f"{path} is empty (0 bytes), not a checkpoint: {_REDO}")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    head = _head(path)
    if path.suffix == ".pkl":
        if not allow_pickle:
            raise PermissionError(
                f"{path} is a pickle (detectron2 format); unpickling runs code from the file. If you trust it, "
                "set MODEL.ALLOW_PICKLE True (tools/predict.py: --allow-pickle)."
            )
        if not head or head[0] != _PICKLE_PROTO:
            raise CheckpointReadError(f"{path} is {_describe(head)}, not a pickle (detectron2 .pkl weights)")
        try:
            with path.open("rb") as handle:
                return pickle.load(handle, encoding="latin1")  # noqa: S301 (explicit opt-in above)
        except (EOFError, pickle.UnpicklingError, ValueError, IndexError) as error:
            problem = f"a truncated or damaged pickle ({_first_line(error)})"
            raise CheckpointReadError(f"{path} is {problem}: {_REDO}") from None
    if not head.startswith(_ZIP_MAGIC) and head[:1] != bytes([_PICKLE_PROTO]):
        raise CheckpointReadError(
            f"{path} is {_describe(head)}, not a PyTorch checkpoint (torch.save writes a zip archive): "
            "give a .pth/.ckpt written by torch.save, or a .safetensors file"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=not allow_pickle, mmap=mmap and _is_zip(head))
    except pickle.UnpicklingError as error:
        if "weights only load failed" not in str(error).lower():
            problem = f"a damaged PyTorch checkpoint ({_first_line(error)})"
            raise CheckpointReadError(f"{path} is {problem}: {_REDO}") from None
        raise PermissionError(
            f"{path} holds objects other than tensors and plain containers, so it was not loaded "
            f"({_weights_only_reason(error)}). If you trust the file, set MODEL.ALLOW_PICKLE True."
        ) from None
    except (EOFError, OSError, RuntimeError, ValueError, IndexError, KeyError) as error:
        size = path.stat().st_size
        why = "its zip archive has no closing directory" if _is_zip(head) and not zipfile.is_zipfile(path) else None
        raise CheckpointReadError(
            f"{path} is a truncated or damaged PyTorch checkpoint ({size} bytes; {why or _first_line(error)}): {_REDO}"
        ) from None


def check_finite(tensors: dict[str, torch.Tensor], path: str | Path) -> None:
    """NonFiniteCheckpointError naming the first tensor that holds NaN or Inf."""
    bad = first_non_finite(tensors)
    if bad:
        raise NonFiniteCheckpointError(
            f"{path}: tensor {bad}; weights that are not finite cannot be trusted (saved from a diverged run?): "
            "use an earlier checkpoint of that run (checkpoints/model_*.ckpt)"
        )


def first_non_finite(tensors: dict[str, torch.Tensor]) -> str | None:
    """'KEY holds NaN (n of m values)' for the first floating-point tensor with NaN or Inf values; None if all are
    finite."""
    for key, value in tensors.items():
        if isinstance(value, torch.Tensor) and (value.is_floating_point() or value.is_complex()):
            finite = torch.isfinite(value)
            if not bool(finite.all()):
                bad = value[~finite]
                kind = "NaN" if bool(torch.isnan(bad).any()) else "Inf"
                return f"{key} holds {kind} ({bad.numel()} of {value.numel()} values)"
    return None


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except SafetensorError as error:
        raise CheckpointReadError(f"{path}: {_safetensors_problem(path, error)}") from None


def _safetensors_problem(path: Path, error: Exception) -> str:
    """What is wrong with a file safetensors refused, in words."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(9)
    announced = int.from_bytes(head[:8], "little") if len(head) >= 8 else 0
    if len(head) < 9 or head[8:9] != b"{":
        return (
            f"not a safetensors file ({_describe(head)}; a safetensors file starts with its header length and a "
            "JSON header): give the file its real extension, or a .safetensors written by safetensors"
        )
    if announced + 8 > size:
        return f"a truncated safetensors file (its header alone needs {announced + 8} bytes, it has {size}): {_REDO}"
    if "not fully covered" in str(error) or "incomplete" in str(error):
        return f"a truncated safetensors file ({size} bytes, fewer than its header lists): {_REDO}"
    return f"a damaged safetensors file ({_first_line(error)}): {_REDO}"


def _head(path: Path, size: int = 64) -> bytes:
    with path.open("rb") as handle:
        return handle.read(size)


def _is_zip(head: bytes) -> bool:
    return head.startswith(_ZIP_MAGIC)


def _describe(head: bytes) -> str:
    """'a text file ("hello ...")' or 'binary data of another kind' from a file's first bytes."""
    if not head:
        return "empty"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and all(char.isprintable() or char in "\t\r\n" for char in text):
        shown = " ".join(text.split())[:40]
        return f'a text file (it starts "{shown}")'
    return f"binary data of another kind (it starts {head[:8].hex(' ')})"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _weights_only_reason(error: BaseException) -> str:
    """The line of torch's weights-only refusal that names what was refused (its first lines are advice)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        if line.startswith(("WeightsUnpickler error", "Unsupported global")):
            return line.split(" Please use")[0]
    return lines[0] if lines else type(error).__name__


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
