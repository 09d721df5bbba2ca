"""The one reader and the one writer of weights files: read errors that name the file and what it is not, NaN/Inf
refused at load (whole models and backbones), detectron2 .pkl files read without running pickled code (every other
global refused, naming it), keys matched by name as detectron2 does, atomic Lightning saves under a full disk,
resume candidates."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import pickle
import re
import struct
import subprocess
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from mask2former.engine.lightning_checkpoints import AtomicCheckpointIO, ResumeError, find_resume_point
from mask2former.errors import UserError
from mask2former.io import checkpoints
from mask2former.io.checkpoints import (
    CheckpointMismatchError,
    CheckpointReadError,
    CheckpointSaveError,
    NonFiniteCheckpointError,
    UnsafePickleError,
    read_checkpoint,
    read_checkpoint_with_metadata,
)
from mask2former.modeling.backbone.swin import D2SwinTransformer, load_swin_pretrained
from mask2former.modeling.weights import align_checkpoint_keys, load_checkpoint_into


def _digest(folder: Path) -> dict[str, str]:
    files = [p for p in folder.rglob("*") if p.is_file()]
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _state() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {"backbone.a": torch.randn(64, 64, generator=generator), "head.b": torch.randn(300, generator=generator)}


def _torch_bytes(data: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(data, buffer)
    return buffer.getvalue()


def _safetensors_bytes(tmp_path: Path) -> bytes:
    path = tmp_path / "scratch.safetensors"
    save_file(_state(), str(path))
    data = path.read_bytes()
    path.unlink()
    return data


@pytest.mark.parametrize(
    ("name", "make", "expected"),
    [
        ("text.pth", lambda tmp: b"these are not weights\nsecond line\n", r'is a text file \(it starts "these are not'),
        ("empty.pth", lambda tmp: b"", r"is empty \(0 bytes\), not a checkpoint"),
        (
            "truncated.pth",
            lambda tmp: _torch_bytes({"model": _state()})[:9000],
            r"is a truncated or damaged PyTorch checkpoint \(9000 bytes; its zip archive has no closing directory\)",
        ),
        ("random.pth", lambda tmp: os.urandom(4096), r"is binary data of another kind .*not a PyTorch checkpoint"),
        ("text.ckpt", lambda tmp: b'{"global_step": 3}', r"is a text file .*not a PyTorch checkpoint"),
        ("random.safetensors", lambda tmp: b"\x07" * 8 + os.urandom(4096), r"not a safetensors file"),
        ("text.safetensors", lambda tmp: b"hello", r"not a safetensors file \(a text file"),
        ("empty.safetensors", lambda tmp: b"", r"is empty \(0 bytes\)"),
        ("truncated.safetensors", lambda tmp: _safetensors_bytes(tmp)[:5000], r"a truncated safetensors file"),
    ],
)
def test_unreadable_weights_files_are_named(tmp_path: Path, name: str, make, expected: str) -> None:
    path = tmp_path / name
    path.write_bytes(make(tmp_path))
    before = _digest(tmp_path)
    with pytest.raises(CheckpointReadError, match=expected) as error:
        read_checkpoint(path)
    message = str(error.value)
    assert isinstance(error.value, UserError)
    assert str(path) in message and "\n" not in message
    assert _digest(tmp_path) == before  # nothing written, the input unchanged


def test_non_finite_checkpoints_are_refused_naming_the_first_key(tmp_path: Path) -> None:
    state = _state()
    state["head.b"][7] = float("inf")
    torch.save({"model": state}, tmp_path / "inf.pth")
    with pytest.raises(NonFiniteCheckpointError, match=r"inf.pth: tensor head.b holds Inf \(1 of 300 values\)"):
        read_checkpoint(tmp_path / "inf.pth")
    state["backbone.a"][0, :3] = float("nan")
    lightning = {"state_dict": {f"model.{k}": v for k, v in state.items()}, "global_step": 9}
    torch.save(lightning, tmp_path / "nan.ckpt")
    with pytest.raises(NonFiniteCheckpointError, match=r"tensor backbone.a holds NaN \(3 of 4096 values\)"):
        read_checkpoint(tmp_path / "nan.ckpt")
    save_file(state, str(tmp_path / "nan.safetensors"))
    with pytest.raises(NonFiniteCheckpointError, match="backbone.a holds NaN"):
        load_checkpoint_into(torch.nn.Linear(2, 2), tmp_path / "nan.safetensors")


def _tiny_swin() -> D2SwinTransformer:
    return D2SwinTransformer(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1), window_size=4)


def test_backbone_weights_go_through_the_one_reader(tmp_path: Path) -> None:
    """MODEL.BACKBONE.WEIGHTS files get the same checks as MODEL.WEIGHTS: named read errors, NaN refused."""
    (tmp_path / "swin.pth").write_text("not weights")
    with pytest.raises(CheckpointReadError, match=r"swin.pth is a text file"):
        load_swin_pretrained(_tiny_swin(), tmp_path / "swin.pth")
    state = {k: v.clone() for k, v in _tiny_swin().state_dict().items()}
    state["patch_embed.proj.weight"][0] = float("nan")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "swin.safetensors"))
    with pytest.raises(NonFiniteCheckpointError, match="patch_embed.proj.weight holds NaN"):
        load_swin_pretrained(_tiny_swin(), tmp_path / "swin.safetensors")


def _failing_write(after_bytes: int):
    def write(data: object, handle) -> None:
        handle.write(_torch_bytes(data)[:after_bytes])
        raise OSError(errno.ENOSPC, "No space left on device")

    return write


def test_a_full_disk_during_a_checkpoint_save_keeps_the_previous_file(tmp_path: Path, monkeypatch) -> None:
    io_plugin = AtomicCheckpointIO()
    target = tmp_path / "checkpoints" / "last.ckpt"
    io_plugin.save_checkpoint({"state_dict": _state(), "global_step": 2}, target)
    good = target.read_bytes()
    monkeypatch.setattr(checkpoints, "_write", _failing_write(after_bytes=5000))
    with pytest.raises(CheckpointSaveError, match=r"saving .*last.ckpt .*the previous last.ckpt is intact"):
        io_plugin.save_checkpoint({"state_dict": _state(), "global_step": 4}, target)
    assert target.read_bytes() == good
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]  # no temporary file left


@pytest.fixture
def small_tmpfs(tmp_path: Path):
    """A 1 MiB tmpfs (needs the right to mount; skipped where the platform does not allow it)."""
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip() or result.returncode})")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


def test_a_really_full_disk_keeps_the_previous_checkpoint(small_tmpfs: Path) -> None:
    io_plugin = AtomicCheckpointIO()
    target = small_tmpfs / "last.ckpt"
    small = {"state_dict": {"w": torch.zeros(100_000)}, "global_step": 2}  # 400 kB
    io_plugin.save_checkpoint(small, target)
    with pytest.raises(CheckpointSaveError, match="no space left on the disk while saving"):
        io_plugin.save_checkpoint({"state_dict": {"w": torch.ones(200_000)}, "global_step": 4}, target)  # 800 kB
    assert torch.load(target, weights_only=True)["global_step"] == 2
    assert [p.name for p in small_tmpfs.iterdir()] == ["last.ckpt"]


def _lightning_ckpt(path: Path, step: int) -> None:
    torch.save({"state_dict": {"model.w": torch.full((4,), float(step))}, "global_step": step}, path)


def test_resume_falls_back_from_a_truncated_last_ckpt(tmp_path: Path, caplog) -> None:
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    assert find_resume_point(folder) is None  # nothing to resume: start anew
    for step in (2, 4, 6):
        _lightning_ckpt(folder / f"model_{step:07d}.ckpt", step)
    _lightning_ckpt(folder / "last.ckpt", 6)
    assert find_resume_point(folder).path.name == "last.ckpt"
    data = (folder / "last.ckpt").read_bytes()
    (folder / "last.ckpt").write_bytes(data[: len(data) // 2])
    (folder / "model_0000006.ckpt").write_bytes(b"")
    with caplog.at_level("WARNING"):
        point = find_resume_point(folder)
    assert (point.path.name, point.step) == ("model_0000004.ckpt", 4)
    assert "last.ckpt is a truncated or damaged PyTorch checkpoint" in caplog.text
    assert "model_0000006.ckpt is empty" in caplog.text
    assert "continuing from" in caplog.text and "model_0000004.ckpt (iteration 4)" in caplog.text
    for step in (2, 4):
        (folder / f"model_{step:07d}.ckpt").write_text("gone")
    with pytest.raises(ResumeError, match=r"no intact checkpoint in .*checkpoints: .*last.ckpt is a truncated"):
        find_resume_point(folder)


# ---- detectron2 .pkl files: numpy arrays without running pickled code ---------------------------------------------


class _Net(torch.nn.Module):
    """A model in the official layout: backbone.* (with an int64 buffer) and a head."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.backbone = torch.nn.ModuleDict({"stem": torch.nn.Conv2d(3, 4, 3), "res2": torch.nn.BatchNorm2d(4)})
        self.sem_seg_head = torch.nn.Linear(4, classes)


def _arrays(model: torch.nn.Module) -> dict[str, np.ndarray]:
    generator = torch.Generator().manual_seed(3)
    return {
        k: (torch.randn(v.shape, generator=generator) if v.is_floating_point() else v + 5).numpy()
        for k, v in model.state_dict().items()
    }


def _py2_pickle(obj: object) -> bytes:
    """A pickle as Python 2 wrote detectron2's model zoo: protocol 2, byte strings (SHORT_BINSTRING / BINSTRING),
    numpy.core names, the array bytes as a byte string; read back only with encoding='latin1'."""

    def string(data: bytes) -> bytes:
        return b"U" + bytes([len(data)]) + data if len(data) < 256 else b"T" + struct.pack("<i", len(data)) + data

    def emit(value: object) -> bytes:
        if isinstance(value, bool):
            return b"\x88" if value else b"\x89"
        if isinstance(value, int):
            return b"J" + struct.pack("<i", value)
        if value is None:
            return b"N"
        if isinstance(value, str):
            return string(value.encode("latin1"))
        if isinstance(value, tuple):
            return b"(" + b"".join(emit(item) for item in value) + b"t"
        if isinstance(value, dict):
            return b"}" + b"".join(emit(k) + emit(v) + b"s" for k, v in value.items())
        if isinstance(value, np.ndarray):
            order, code = value.dtype.str[0], value.dtype.str[1:]
            dtype = b"cnumpy\ndtype\n" + emit((code, 0, 1)) + b"R" + emit((3, order, None, None, None, -1, -1, 0))
            array = b"cnumpy.core.multiarray\n_reconstruct\n(cnumpy\nndarray\n" + emit((0,)) + string(b"b") + b"tR"
            state = b"(" + emit(1) + emit(value.shape) + dtype + b"b" + emit(False) + string(value.tobytes()) + b"t"
            return array + state + b"b"
        raise TypeError(type(value))

    return b"\x80\x02" + emit(obj) + b"."


@pytest.mark.parametrize("protocol", [2, 4, 5, "python2"])
def test_a_detectron2_pkl_loads_without_allow_pickle(tmp_path: Path, protocol) -> None:
    arrays = _arrays(_Net())
    data = {"model": arrays, "__author__": "Detectron2 Model Zoo", "matching_heuristics": False}
    path = tmp_path / "model_final.pkl"
    if protocol == "python2":
        path.write_bytes(_py2_pickle(data))
        with pytest.raises(UnicodeDecodeError):  # the array bytes are not ASCII: only latin1 reads them
            pickle.loads(path.read_bytes())
    else:
        path.write_bytes(pickle.dumps(data, protocol=protocol))
    checkpoint = read_checkpoint_with_metadata(path)
    assert (checkpoint.author, checkpoint.matching_heuristics) == ("Detectron2 Model Zoo", False)
    model = _Net()
    report = load_checkpoint_into(model, path)
    assert report.loaded == len(arrays) and not report.missing and not report.unexpected
    for key, value in model.state_dict().items():
        assert value.dtype == torch.from_numpy(arrays[key]).dtype and np.array_equal(value.numpy(), arrays[key]), key


class _Payload:
    def __init__(self, call: object, argument: object) -> None:
        self.call, self.argument = call, argument

    def __reduce__(self):
        return self.call, (self.argument,)


def _global_opcodes(module: str, name: str, argument: str) -> bytes:
    """{"model": {}, "x": module.name(argument)} written with pickle opcodes."""
    return (
        b"\x80\x02}U\x05model}sU\x01xc"
        + f"{module}\n{name}\n".encode()
        + b"X"
        + struct.pack("<I", len(argument))
        + argument.encode()
        + b"\x85Rs."
    )


def _payloads(marker: Path) -> list[tuple[str, bytes, str]]:
    touch = f"touch {marker}"
    arrays = {"w": np.zeros(3, np.float32)}
    system = f"{os.system.__module__}.system"  # posix.system: what a pickle of os.system names
    return [
        ("os.system p2", pickle.dumps({"model": arrays, "x": _Payload(os.system, touch)}, protocol=2), system),
        ("os.system p4", pickle.dumps({"model": {**arrays, "x": _Payload(os.system, touch)}}, protocol=4), system),
        (
            "subprocess.Popen",
            pickle.dumps({"model": arrays, "x": _Payload(subprocess.Popen, ["touch", str(marker)])}),
            "subprocess.Popen",
        ),
        ("builtins.eval", _global_opcodes("builtins", "eval", f"__import__('os').system('{touch}')"), "builtins.eval"),
        ("os.system opcodes", _global_opcodes("os", "system", touch), "os.system"),
        (
            "numpy, not arrays",
            _global_opcodes("numpy.testing._private.utils", "runstring", touch),
            "numpy.testing._private.utils.runstring",
        ),
    ]


def test_a_pickle_naming_another_global_is_refused_before_it_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    for label, data, name in _payloads(marker):
        path = tmp_path / "evil.pkl"
        path.write_bytes(data)
        with pytest.raises(UnsafePickleError) as error:
            read_checkpoint(path)
        message = str(error.value)
        assert isinstance(error.value, PermissionError) and isinstance(error.value, UserError), label
        assert f"refused to unpickle {name}:" in message and str(path) in message, label
        assert "MODEL.ALLOW_PICKLE True" in message and "\n" not in message, label
        with pytest.raises(UnsafePickleError, match=re.escape(name)):
            load_checkpoint_into(_Net(), path)
        assert not marker.exists(), f"{label}: the payload ran"


def test_torch_tensors_pickled_in_a_pkl_are_refused_with_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "tensors.pkl"
    with path.open("wb") as handle:
        pickle.dump({"model": _Net().state_dict()}, handle)
    with pytest.raises(UnsafePickleError) as error:
        read_checkpoint(path)
    message = str(error.value)
    assert "holds PyTorch objects pickled with pickle (it names torch._utils._rebuild_tensor_v2)" in message
    assert "tools/convert_checkpoint.py IN OUT.safetensors --allow-pickle" in message
    assert "MODEL.ALLOW_PICKLE True" in message
    assert set(read_checkpoint(path, allow_pickle=True)) == set(_Net().state_dict())  # the user trusts it


def test_allow_pickle_still_reads_arrays_safely_and_opts_in_for_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "paths.pkl"
    path.write_bytes(pickle.dumps({"model": _arrays(_Net()), "where": PurePosixPath("/data")}))
    with pytest.raises(UnsafePickleError, match="refused to unpickle pathlib.PurePosixPath"):
        read_checkpoint(path)
    assert set(read_checkpoint(path, allow_pickle=True)) == set(_Net().state_dict())


def test_damaged_and_odd_pickles_are_named(tmp_path: Path) -> None:
    path = tmp_path / "cut.pkl"
    path.write_bytes(pickle.dumps({"model": _arrays(_Net())}, protocol=2)[:300])
    with pytest.raises(CheckpointReadError, match=r"cut.pkl is a truncated or damaged pickle"):
        read_checkpoint(path)
    path = tmp_path / "codec.pkl"  # _codecs.encode is admitted for latin1 bytes only
    path.write_bytes(_global_opcodes("_codecs", "encode", "x").replace(b"\x85R", b"X\x05\x00\x00\x00rot13\x86R"))
    with pytest.raises(CheckpointReadError, match=r"damaged pickle \(_codecs.encode called with 'rot13'"):
        read_checkpoint(path)
    path = tmp_path / "legacy.pkl"  # torch's legacy format under a .pkl name
    torch.save({"model": _Net().state_dict()}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointReadError, match=r"legacy.pkl is a PyTorch file of torch.s legacy format.*\.pth"):
        read_checkpoint(path)
    assert set(read_checkpoint(path.rename(tmp_path / "legacy.pth"))) == set(_Net().state_dict())
    path = tmp_path / "strings.pkl"
    path.write_bytes(pickle.dumps({"model": {"w": np.array(["a", "b"])}}))
    with pytest.raises(CheckpointReadError, match=r"strings.pkl: w is a numpy array of <U1, not numbers"):
        read_checkpoint(path)


# ---- matching keys by name (detectron2's matching heuristics) ------------------------------------------------------


def test_align_takes_the_longest_whole_part_suffix() -> None:
    model = {
        "backbone.stem.conv1.weight": (4, 3),
        "backbone.res2.0.conv1.weight": (4, 4),
        "backbone.res2.0.xconv1.weight": (4, 4),
        "sem_seg_head.norm.weight": (8,),
    }
    checkpoint = {"stem.conv1.weight": (4, 3), "res2.0.conv1.weight": (4, 4), "conv1.weight": (4, 4)}
    assert align_checkpoint_keys(model, checkpoint, matching_heuristics=True) == {
        "stem.conv1.weight": "backbone.stem.conv1.weight",
        "res2.0.conv1.weight": "backbone.res2.0.conv1.weight",  # not conv1.weight; xconv1 matches nothing
    }
    assert align_checkpoint_keys(model, checkpoint) == {}  # without the flag names are kept


def test_align_skips_other_shapes_keeps_exact_names_and_refuses_ambiguity() -> None:
    model = {"backbone.norm.weight": (16,), "head.adapter.norm.weight": (4,), "head.layer.norm.weight": (4,)}
    checkpoint = {"norm.weight": (16,), "head.class.weight": (5, 2)}
    assert align_checkpoint_keys(model, checkpoint, True) == {"norm.weight": "backbone.norm.weight"}
    exact = {"head.class.weight": (3, 2)}
    assert align_checkpoint_keys(exact, {"head.class.weight": (5, 2)}, True) == {}  # the loader reports the shape
    with pytest.raises(CheckpointMismatchError) as error:
        align_checkpoint_keys(model, {"norm.weight": (4,)}, True, source="swin.pkl")
    assert "swin.pkl: its key norm.weight matches two model keys" in str(error.value)
    assert "head.adapter.norm.weight and head.layer.norm.weight" in str(error.value)


def test_align_prefixes_a_backbone_saved_alone() -> None:
    model = {"backbone.stem.weight": (2,), "backbone.res2.weight": (2,), "head.weight": (2,)}
    alone = {"stem.weight": (2,), "res2.weight": (2,), "blocks.0.attn.relative_position_index": (4,)}
    assert align_checkpoint_keys(model, alone) == {
        "stem.weight": "backbone.stem.weight",
        "res2.weight": "backbone.res2.weight",
    }
    assert align_checkpoint_keys(model, {"stem.weight": (2,), "fc.weight": (2,)}) == {}  # not every key
    assert align_checkpoint_keys(model, {"head.weight": (2,), "backbone.stem.weight": (2,)}) == {}


def test_a_backbone_pkl_with_matching_heuristics_loads_by_suffix(tmp_path: Path) -> None:
    """R-50.pkl as detectron2's convert-torchvision-to-d2.py writes it: backbone keys without `backbone.`, the
    classifier as stem.fc.*, matching_heuristics True."""
    backbone_state = {k.removeprefix("backbone."): v for k, v in _arrays(_Net()).items() if k.startswith("backbone.")}
    data = {
        "model": {**backbone_state, "stem.fc.weight": np.ones((10, 4), np.float32)},
        "__author__": "torchvision",
        "matching_heuristics": True,
    }
    path = tmp_path / "R-50.pkl"
    path.write_bytes(pickle.dumps(data, protocol=2))
    model = _Net()
    head = model.sem_seg_head.weight.clone()
    report = load_checkpoint_into(model, path, fresh_head_ok=True)
    assert report.loaded == report.renamed == len(backbone_state) and report.backbone_only and not report.missing
    assert report.unexpected == ["stem.fc.weight"] and "(ignored)" in report.summary()
    assert sorted(report.head_fresh) == ["sem_seg_head.bias", "sem_seg_head.weight"]
    assert np.array_equal(model.backbone.stem.weight.detach().numpy(), backbone_state["stem.weight"])
    assert torch.equal(model.sem_seg_head.weight, head)
    with pytest.raises(CheckpointMismatchError, match=r"R-50.pkl holds backbone weights only .*not a trained model"):
        load_checkpoint_into(_Net(), path)  # to predict with, a backbone is not enough
    data["matching_heuristics"] = False
    path.write_bytes(pickle.dumps(data, protocol=2))
    with pytest.raises(CheckpointMismatchError, match=r"does not fit this model"):
        load_checkpoint_into(_Net(), path, fresh_head_ok=True)


def test_official_swin_pkl_loads_into_the_model_by_suffix(tmp_path: Path) -> None:
    """A Swin .pkl as Mask2Former's convert-pretrained-swin-model-to-d2.py writes it (classification keys, final
    norm and head, matching_heuristics True) into a model whose pixel decoder has norms too (of another width)."""
    swin = _tiny_swin()
    state = {
        k: v.numpy() for k, v in swin.state_dict().items() if not k.startswith(("norm0", "norm1", "norm2", "norm3"))
    }
    state.update({"norm.weight": np.ones(128, np.float32), "norm.bias": np.zeros(128, np.float32)})
    state["head.weight"] = np.ones((5, 128), np.float32)
    path = tmp_path / "swin_tiny.pkl"
    path.write_bytes(pickle.dumps({"model": state, "__author__": "third_party", "matching_heuristics": True}))

    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = _tiny_swin()
            self.sem_seg_head = torch.nn.ModuleDict({"adapter": torch.nn.ModuleDict({"norm": torch.nn.LayerNorm(8)})})

    model = Model()
    report = load_checkpoint_into(model, path, fresh_head_ok=True)
    assert report.loaded == len(state) - 3 and report.backbone_init
    assert sorted(report.unexpected) == ["head.weight", "norm.bias", "norm.weight"]
    assert sorted(report.missing) == sorted(k for k in model.state_dict() if k.startswith("backbone.norm"))
    assert torch.equal(model.backbone.patch_embed.proj.weight, swin.patch_embed.proj.weight)
