"""The one checkpoint reader (and writer): files to tensors, read safely and checked.

Accepted: this project's Lightning checkpoints (.ckpt) and model files (.pth), official Mask2Former
.pth files, safetensors, and detectron2 .pkl files (pickled numpy arrays: the model zoo's, the ImageNet
`R-50.pkl`, converted Swin weights). A .pkl is read by a restricted unpickler that admits only numpy's array
reconstruction and plain containers, so no code from the file runs; any other global is refused, naming it
(`MODEL.ALLOW_PICKLE` opts in to a full unpickling, as it does for full-pickle torch checkpoints). Weights that
are not finite, or float names stored as integers, are refused naming the file and the key. `save_atomic` writes a
checkpoint through the atomic writer.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import pickle
import struct
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import FileSystemError, UserError
from .files import atomic_open

logger = logging.getLogger(__name__)


class CheckpointMismatchError(UserError, RuntimeError):
    """The checkpoint does not fit the model; the message lists the mismatched keys."""


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


class CheckpointSaveError(FileSystemError):
    """The disk filled up (or a quota ran out) during a save; the previous file of that name is intact."""


def save_atomic(data: dict[str, Any], path: str | Path) -> None:
    """torch.save through the atomic writer; a full disk raises CheckpointSaveError naming the file (another
    refusal of the file system is the writer's FileSystemError)."""
    path = Path(path)
    try:
        with atomic_open(path, "wb") as handle:
            _write(data, handle)
    except FileSystemError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        full = "disk quota exceeded" if error.errno == errno.EDQUOT else "no space left on the disk"
        kept = f"the previous {path.name} is intact" if path.exists() else f"no partial {path.name} is left"
        raise CheckpointSaveError(
            f"{full} while saving {path} ({os.strerror(error.errno)}): {kept}; free some space (or lower "
            "SOLVER.CHECKPOINT_KEEP) and run again with --resume",
            error.errno,
        ) from error


def _write(data: dict[str, Any], handle: Any) -> None:
    torch.save(data, handle)
