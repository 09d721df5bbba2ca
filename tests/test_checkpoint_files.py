"""The one reader and the one writer of weights files: read errors that name the file and what it is not, NaN/Inf
refused at load (whole models and backbones), atomic Lightning saves under a full disk, resume candidates."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mask2former.engine import checkpoint_io
from mask2former.engine.checkpoint import (
    CheckpointReadError,
    NonFiniteCheckpointError,
    load_checkpoint_into,
    read_checkpoint,
)
from mask2former.engine.checkpoint_io import (
    AtomicCheckpointIO,
    CheckpointSaveError,
    ResumeError,
    find_resume_point,
)
from mask2former.errors import UserError
from mask2former.modeling.backbone.swin import D2SwinTransformer, load_swin_pretrained


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
    monkeypatch.setattr(checkpoint_io, "_write", _failing_write(after_bytes=5000))
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
