"""Reading checkpoints safely and loading them into a model with a clear report.

Accepted: this project's Lightning checkpoints (.ckpt) and model files (.pth), official Mask2Former
.pth files, safetensors, and detectron2 .pkl files (pickled numpy arrays: the model zoo's, the ImageNet
`R-50.pkl`, converted Swin weights). A .pkl is read by a restricted unpickler that admits only numpy's array
reconstruction and plain containers, so no code from the file runs; any other global is refused, naming it
(`MODEL.ALLOW_PICKLE` opts in to a full unpickling, as it does for full-pickle torch checkpoints). Keys follow
the official layout (backbone.*, sem_seg_head.pixel_decoder.*, sem_seg_head.predictor.*, criterion.empty_weight);
files that say `matching_heuristics` (detectron2's flag) are matched by name suffix, as detectron2 does. When only
the class count differs, the class head is re-initialised; any other mismatch is an error that lists the keys,
unless `strict=False`.
"""

from __future__ import annotations

import collections
import logging
import pickle
import struct
import zipfile
from collections.abc import Mapping, Sequence
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


def model_class_head_keys(model: nn.Module) -> set[str]:
    """The model's state keys that depend on the class count: what the model names (`class_head_keys()`, as
    PerPixelSegmentor does), else Mask2Former's class head and SeMask's per-class layers."""
    own = getattr(model, "class_head_keys", None)
    if own is not None:
        return set(own())
    return {key for key in model.state_dict() if key in CLASS_HEAD_KEYS or key.endswith(_CLASS_DEPENDENT_SUFFIXES)}


class CheckpointMismatchError(UserError, RuntimeError):
    """The checkpoint does not fit the model; the message lists the mismatched keys."""


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

    def summary(self) -> str:
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
                parts.append(f"{len(keys)} {title}: {_short_list(keys)}")
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


class CheckpointReadError(UserError):
    """A weights file that cannot be read: empty, truncated, a text file, not the format its name says; the
    message names the file and what it is not."""


class NonFiniteCheckpointError(CheckpointReadError):
    """A checkpoint holding NaN or Inf values: its numbers cannot be trusted; the message names the first key."""


class CheckpointDtypeError(CheckpointReadError):
    """A weight that is floating point in every model stored as integers or booleans (a damaged or wrongly
    converted file: loaded, it would give the same scores for every class); the message names the file and key."""


_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = 0x80  # the first byte of a pickle of protocol 2 or later (torch's legacy format, detectron2 .pkl)
_REDO = "an interrupted save or copy? Copy the file again or use another checkpoint"


@dataclass(frozen=True)
class Checkpoint:
    """A weights file's tensors (official key names, finite) and what the file says about them."""

    tensors: dict[str, torch.Tensor]
    matching_heuristics: bool = False  # detectron2's flag: match the keys to the model's by name suffix
    author: str | None = None  # detectron2's `__author__` (e.g. "torchvision", "third_party"), if any


def read_checkpoint(path: str | Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The model state dict inside a weights file (official key names), every tensor finite.

    The one reader of .pth / .ckpt / .safetensors / .pkl weights, for whole models and backbones alike: a file
    it cannot read raises CheckpointReadError naming the file and what it is not; NaN or Inf values raise
    NonFiniteCheckpointError naming the first such key; a weight, bias or embedding stored as integers or booleans
    raises CheckpointDtypeError naming it (`plan_weights` checks every key against the model's dtypes).
    `read_checkpoint_with_metadata` adds detectron2's `matching_heuristics` and `__author__`."""
    return read_checkpoint_with_metadata(path, allow_pickle).tensors


def read_checkpoint_with_metadata(path: str | Path, allow_pickle: bool = False) -> Checkpoint:
    """`read_checkpoint`'s tensors with the file's `matching_heuristics` and `__author__`: the top-level keys of a
    .pkl / .pth dict, or the metadata of a .safetensors file (as tools/convert_checkpoint.py writes them).

    A detectron2 .pkl follows detectron2's rule: a model-zoo dict (`model` and `__author__`) says itself whether to
    match by name; a .pkl without `model` is an older Caffe2-style file (`blobs`), always matched by name (its
    Caffe2 names are not translated: such a file fits only a model with the same names)."""
    path = Path(path).expanduser()
    data = read_checkpoint_file(path, allow_pickle)
    heuristics, author = False, None
    if path.suffix == ".safetensors":
        metadata = _safetensors_metadata(path)
        heuristics = metadata.get("matching_heuristics") == "True"
        author = metadata.get("__author__")
    elif isinstance(data, dict):
        if path.suffix == ".pkl" and "model" not in data:
            blobs = data.get("blobs", data)
            if isinstance(blobs, dict):
                data = {"model": {k: v for k, v in blobs.items() if not str(k).endswith("_momentum")}}
            heuristics, author = True, "Caffe2"
        else:
            heuristics = data.get("matching_heuristics") is True
            author = data["__author__"] if isinstance(data.get("__author__"), str) else None
    tensors = _model_state(data, path)
    check_finite(tensors, path)
    check_float_names(tensors, path)
    return Checkpoint(tensors, heuristics, author)


def read_checkpoint_file(path: str | Path, allow_pickle: bool = False, mmap: bool = False) -> object:
    """What a weights file holds, as loaded (a dict of tensors / numpy arrays and plain containers), or
    CheckpointReadError. `mmap=True` maps a torch zip file instead of reading it (cheap: `--resume` checks
    candidates with it). A .pkl is read by `read_pickle` (numpy arrays only, no code runs) unless
    `allow_pickle`, which falls back to a full unpickling for what it refuses."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointReadError(f"{path} is empty (0 bytes), not a checkpoint: {_REDO}")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    head = _head(path)
    if path.suffix == ".pkl":
        if not head or head[0] != _PICKLE_PROTO:
            raise CheckpointReadError(f"{path} is {_describe(head)}, not a pickle (detectron2 .pkl weights)")
        try:
            return read_pickle(path)
        except UnsafePickleError:
            if not allow_pickle:
                raise
        try:
            with path.open("rb") as handle:
                return pickle.load(handle, encoding="latin1")  # noqa: S301 (MODEL.ALLOW_PICKLE: the user trusts it)
        except _PICKLE_DAMAGE as error:
            raise CheckpointReadError(
                f"{path} is a truncated or damaged pickle ({_first_line(error)}): {_REDO}"
            ) from None
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


def recorded_class_names(path: str | Path, allow_pickle: bool = False) -> list[str] | None:
    """The class names a checkpoint of this project records (`class_names` of model_final.pth and of training
    .ckpt files), read through a memory map; None when it records none (older files, official ones, .pkl and
    .safetensors files)."""
    path = Path(path).expanduser()
    if path.suffix not in (".pth", ".ckpt") or not path.is_file() or not _is_zip(_head(path)):
        return None
    data = read_checkpoint_file(path, allow_pickle, mmap=True)
    names = data.get("class_names") if isinstance(data, dict) else None
    if isinstance(names, list) and names and all(isinstance(name, str) for name in names):
        return names
    return None


# ---- detectron2 .pkl files: pickled numpy arrays, read without running code from the file -------------------------


class UnsafePickleError(CheckpointReadError, PermissionError):
    """A .pkl that names a global other than numpy's array reconstruction: loading it would run code from the
    file; the message names the file and the global."""


def _latin1_bytes(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    # Python 3 pickles of protocol <= 2 spell a bytes object as _codecs.encode(text, "latin1"); nothing else.
    if not isinstance(text, str) or encoding.lower().replace("-", "") != "latin1" or errors != "strict":
        raise pickle.UnpicklingError(f"_codecs.encode called with {encoding!r}: only latin1 text is bytes")
    return text.encode("latin1")


def _empty_bytes(*args: object) -> bytes:
    # ... and an empty one as bytes().
    if args:
        raise pickle.UnpicklingError("builtins.bytes called with arguments: only bytes() is admitted")
    return b""


def _numpy_globals() -> dict[tuple[str, str], object]:
    """The globals numpy's pickles of arrays, dtypes and scalars name, at protocols 0..5, written by numpy 1
    (`numpy.core`) or numpy 2 (`numpy._core`), checked with pickletools: nothing else is needed to rebuild them."""
    try:
        from numpy._core import multiarray, numeric  # numpy >= 2
    except ImportError:  # pragma: no cover (numpy 1)
        from numpy.core import multiarray, numeric
    admitted: dict[tuple[str, str], object] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for package in ("numpy.core", "numpy._core"):
        admitted[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        admitted[(f"{package}.multiarray", "scalar")] = multiarray.scalar
        admitted[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer  # protocol 5
    admitted[("collections", "OrderedDict")] = collections.OrderedDict
    admitted[("_codecs", "encode")] = _latin1_bytes
    admitted[("builtins", "bytes")] = admitted[("__builtin__", "bytes")] = _empty_bytes
    return admitted


_ADMITTED_GLOBALS = _numpy_globals()


class _RefusedGlobal(pickle.UnpicklingError):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class _PersistentId(pickle.UnpicklingError):
    pass


class _NumpyUnpickler(pickle.Unpickler):
    """Resolves only `_ADMITTED_GLOBALS` (find_class runs before anything a global could call is called)."""

    def find_class(self, module: str, name: str) -> object:
        try:
            return _ADMITTED_GLOBALS[(module, name)]
        except KeyError:
            raise _RefusedGlobal(f"{module}.{name}") from None

    def persistent_load(self, pid: object) -> object:
        raise _PersistentId(repr(pid)[:60])


_PICKLE_DAMAGE = (
    EOFError,
    pickle.UnpicklingError,
    ValueError,
    IndexError,
    KeyError,
    TypeError,
    AttributeError,
    struct.error,
    OverflowError,
    MemoryError,
)


def read_pickle(path: str | Path) -> object:
    """A .pkl file's content, rebuilt with only numpy's array reconstruction and plain containers (dict, list,
    tuple, str, numbers, OrderedDict); Python 2 pickles (detectron2's model zoo: protocol 2, byte strings) are
    read as latin1. Any other global is refused before it can run: UnsafePickleError naming it."""
    path = Path(path).expanduser()
    legacy = CheckpointReadError(
        f"{path} is a PyTorch file of torch's legacy format, not a detectron2 .pkl: rename it to .pth, which "
        "torch's weights-only reader loads"
    )
    try:
        with path.open("rb") as handle:
            data = _NumpyUnpickler(handle, encoding="latin1").load()
    except _RefusedGlobal as refused:
        raise UnsafePickleError(_refused_global_message(path, refused.name)) from None
    except _PersistentId:
        raise legacy from None
    except _PICKLE_DAMAGE as error:
        raise CheckpointReadError(f"{path} is a truncated or damaged pickle ({_first_line(error)}): {_REDO}") from None
    if isinstance(data, int) and data == _TORCH_LEGACY_MAGIC:  # the first of the pickles torch's legacy format holds
        raise legacy
    return data


_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def _refused_global_message(path: Path, name: str) -> str:
    trusted = (
        "If you trust the file, convert it once with tools/convert_checkpoint.py IN OUT.safetensors --allow-pickle "
        "and use OUT.safetensors, or set MODEL.ALLOW_PICKLE True (tools/predict.py: --allow-pickle)"
    )
    if name.split(".")[0] == "torch":
        return (
            f"{path} holds PyTorch objects pickled with pickle (it names {name}), not the numpy arrays of a "
            f"detectron2 .pkl, and reading them means unpickling, which runs code from the file; not loaded. {trusted}"
        )
    return (
        f"{path}: refused to unpickle {name}: a detectron2 .pkl holds only numpy arrays, and loading anything else "
        f"would run code from the file; not loaded. {trusted}"
    )


def check_finite(tensors: dict[str, torch.Tensor], path: str | Path) -> None:
    """NonFiniteCheckpointError naming the first tensor that holds NaN or Inf."""
    bad = first_non_finite(tensors)
    if bad:
        raise NonFiniteCheckpointError(
            f"{path}: tensor {bad}; weights that are not finite cannot be trusted (saved from a diverged run?): "
            "use an earlier checkpoint of that run (checkpoints/model_*.ckpt)"
        )


# Last parts of key names that are floating point in every model (weights, biases, norm statistics, embeddings,
# position tables); integer state such as num_batches_tracked or relative_position_index is named otherwise.
_FLOAT_NAMES = ("weight", "bias", "running_mean", "running_var", "rpb")
_FLOAT_NAME_ENDINGS = ("_weight", "_bias", "_table", "_embed", "_token")
_DTYPE_ADVICE = "a damaged or wrongly converted checkpoint: use the original file, or convert it again keeping floats"


def check_float_names(tensors: dict[str, torch.Tensor], path: str | Path) -> None:
    """CheckpointDtypeError naming the first weight, bias, norm statistic or embedding stored as integers or booleans
    (such a model gives every class the same score); `check_stored_dtypes` checks every key against a model."""
    for key, value in tensors.items():
        name = key.rsplit(".", 1)[-1]
        if (name in _FLOAT_NAMES or name.endswith(_FLOAT_NAME_ENDINGS)) and not _is_float(value):
            raise CheckpointDtypeError(
                f"{path}: {key} is stored as {value.dtype}, a model's {name} is float: {_DTYPE_ADVICE}"
            )


def check_stored_dtypes(
    own: Mapping[str, torch.Tensor], state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint"
) -> None:
    """CheckpointDtypeError for the first key whose model tensor is floating point and whose stored tensor is not
    (integers or booleans); integer model state (num_batches_tracked, index buffers) may be stored as integers."""
    for key, value in state_dict.items():
        mine = own.get(key)
        if mine is not None and _is_float(mine) and not _is_float(value):
            raise CheckpointDtypeError(
                f"{source}: {key} is stored as {value.dtype}, the model's parameter is float: {_DTYPE_ADVICE}"
            )


def _is_float(value: torch.Tensor) -> bool:
    return value.is_floating_point() or value.is_complex()


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


def _safetensors_metadata(path: Path) -> dict[str, str]:
    """The string metadata of a safetensors header ({} when it has none)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
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
        key = str(key).removeprefix("module.")
        if isinstance(value, np.ndarray):
            value = _array_to_tensor(value, key, path)
        if isinstance(value, torch.Tensor):
            tensors[key] = value
    if not tensors:
        raise CheckpointMismatchError(f"{path}: no tensors found")
    return tensors


def _array_to_tensor(array: np.ndarray, key: str, path: Path) -> torch.Tensor:
    """A numpy array of a .pkl as a tensor of its own memory (native byte order, contiguous, writable)."""
    if array.dtype.kind not in "biufc":
        raise CheckpointReadError(f"{path}: {key} is a numpy array of {array.dtype}, not numbers: not a weights file?")
    array = np.require(array.astype(array.dtype.newbyteorder("="), copy=False), requirements=("C", "W"))
    try:
        return torch.from_numpy(array)
    except TypeError as error:  # a dtype torch has no tensor for
        raise CheckpointReadError(f"{path}: {key}: {_first_line(error)}") from None


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


def check_fits(report: LoadReport, source: str = "checkpoint") -> None:
    """CheckpointMismatchError (listing the keys) unless a strict load accepts `report`."""
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
    else:
        advice = "Load with strict=False (MODEL.LOAD_STRICT False) to take what fits."
    raise CheckpointMismatchError(
        f"{source} does not fit this model (a checkpoint of another architecture or size?). "
        f"{report.summary()}. {advice}"
    )


def load_model_weights(
    model: nn.Module,
    state_dict: dict[str, torch.Tensor],
    strict: bool = True,
    source: str = "checkpoint",
    matching_heuristics: bool = False,
    fresh_head_ok: bool = False,
) -> LoadReport:
    """Load what fits; re-initialise the class head on a class-count change; fail on other mismatches if strict.

    Keys are matched as `align_checkpoint_keys` says (by name suffix when the file says `matching_heuristics`).
    A checkpoint holding only backbone weights is refused when strict unless `fresh_head_ok` (training from it:
    the head keeps its initialisation, keys the file lacks or has in excess are listed, not fatal)."""
    plan = plan_weights(
        model.state_dict(), state_dict, matching_heuristics, fresh_head_ok, source, model_class_head_keys(model)
    )
    if strict:
        check_fits(plan.report, source)
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
