"""tools/convert_checkpoint.py (mask2former/pipeline/convert_checkpoint.py): every supported weights file into a plain
safetensors file: as it is (no config), or in the layout of a config's model (a whole model or a backbone through
its own conversion), with the load report; and its refusals (unsafe pickles, OUT = IN, an existing OUT)."""

from __future__ import annotations

import hashlib
import importlib.util
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from conftest import REPO, TINY_MODEL, doc_commands
from safetensors import safe_open
from safetensors.torch import save_file

from mask2former.config import load_config
from mask2former.engine.trainer import load_backbone_weights
from mask2former.io.checkpoints import CheckpointMismatchError, UnsafePickleError, read_checkpoint
from mask2former.modeling.backbone.swin import load_swin_pretrained
from mask2former.modeling.build import build_model
from mask2former.modeling.weights import load_checkpoint_into
from mask2former.pipeline.convert_checkpoint import ConvertError, ConvertOptions, run
from mask2former.utils.output_folder import OutputFolderError

QUICKSTART = str(REPO / "configs" / "quickstart.yaml")
SECTION = "Converting checkpoints"  # in docs/models.md


def _tool():
    spec = importlib.util.spec_from_file_location("convert_checkpoint_tool", REPO / "tools" / "convert_checkpoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tiny(*extra: str, config: str = QUICKSTART) -> torch.nn.Module:
    return build_model(load_config(config, [*TINY_MODEL, *extra]))


@pytest.fixture(scope="module")
def tiny_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return _tiny().state_dict()


def _timm_swin(window: int = 7) -> torch.nn.Module:
    """timm's Swin at TINY_MODEL's widths (patch merging at the start of a stage, a classifier, window 7)."""
    torch.manual_seed(1)
    return timm.create_model(
        "swin_tiny_patch4_window7_224",
        pretrained=False,
        embed_dim=16,
        depths=(1, 1, 2, 1),
        num_heads=(1, 1, 2, 2),
        window_size=window,
    )


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata()


def test_a_model_pth_to_safetensors_and_back(tmp_path: Path, tiny_state, capsys) -> None:
    torch.save({"model": tiny_state, "iteration": 7}, tmp_path / "model_final.pth")
    result = run(ConvertOptions(str(tmp_path / "model_final.pth"), str(tmp_path / "plain.safetensors")))
    assert (result.kind, result.tensors) == ("tensors", len(tiny_state))
    with_config = ConvertOptions(
        str(tmp_path / "model_final.pth"), str(tmp_path / "model.safetensors"), QUICKSTART, list(TINY_MODEL)
    )
    result = run(with_config)
    out = capsys.readouterr().out
    assert result.kind == "model" and result.report.loaded == len(tiny_state) and not result.report.missing
    assert f"as a whole model of {QUICKSTART}: loaded {len(tiny_state)} tensors\n" in out
    assert f"wrote {tmp_path / 'model.safetensors'}: {len(tiny_state)} tensors" in out
    for name in ("plain.safetensors", "model.safetensors"):
        back = read_checkpoint(tmp_path / name)
        assert back.keys() == tiny_state.keys()
        assert all(torch.equal(back[k], v) and back[k].dtype == v.dtype for k, v in tiny_state.items()), name
        report = load_checkpoint_into(_tiny(), tmp_path / name)
        assert report.loaded == len(tiny_state) and not (report.missing or report.unexpected or report.reinitialised)
    assert _metadata(tmp_path / "model.safetensors")["kind"] == "model"


def test_a_detectron2_pkl_converts_without_any_flag(tmp_path: Path) -> None:
    """Numpy arrays of a d2 .pkl become tensors; its matching_heuristics flag travels in the metadata, so OUT loads
    by name suffix as the .pkl does."""
    state = _tiny().state_dict()
    backbone = {k.removeprefix("backbone."): v.numpy() for k, v in state.items() if k.startswith("backbone.layers")}
    data = {"model": backbone, "__author__": "third_party", "matching_heuristics": True}
    (tmp_path / "swin.pkl").write_bytes(pickle.dumps(data, protocol=2))
    _tool().main([str(tmp_path / "swin.pkl"), str(tmp_path / "swin.safetensors")])
    metadata = _metadata(tmp_path / "swin.safetensors")
    assert metadata["matching_heuristics"] == "True" and metadata["__author__"] == "third_party"
    assert metadata["converted_from"] == "swin.pkl"
    tensors = read_checkpoint(tmp_path / "swin.safetensors")
    assert all(np.array_equal(tensors[k].numpy(), v) for k, v in backbone.items()) and tensors.keys() == backbone.keys()
    for name in ("swin.pkl", "swin.safetensors"):
        report = load_checkpoint_into(_tiny(), tmp_path / name, fresh_head_ok=True)
        assert report.loaded == report.renamed == len(backbone) and report.heuristics, name


def test_names_ambiguous_by_suffix_go_through_the_backbone_conversion(tmp_path: Path) -> None:
    """The backbone's output norms (norm1: 32 channels) have the suffix of the pixel decoder's norm1 (32 channels
    at TINY_MODEL's widths): detectron2's rule cannot place them; the converter's backbone conversion can."""
    state = _tiny().state_dict()
    backbone = {k.removeprefix("backbone."): v.numpy() for k, v in state.items() if k.startswith("backbone.")}
    data = {"model": backbone, "__author__": "third_party", "matching_heuristics": True}
    (tmp_path / "swin.pkl").write_bytes(pickle.dumps(data, protocol=4))
    with pytest.raises(CheckpointMismatchError, match=r"its key norm1.bias matches two model keys .*MODEL.BACKBONE"):
        load_checkpoint_into(_tiny(), tmp_path / "swin.pkl", fresh_head_ok=True)
    result = run(ConvertOptions(str(tmp_path / "swin.pkl"), str(tmp_path / "bb.safetensors"), QUICKSTART, TINY_MODEL))
    assert result.kind == "backbone" and result.report.loaded == len(backbone) and not result.report.missing
    report = load_checkpoint_into(_tiny(), tmp_path / "bb.safetensors", fresh_head_ok=True)
    assert report.loaded == len(backbone) and not report.missing and not report.renamed


def test_a_timm_swin_backbone_converts_for_the_config(tmp_path: Path, capsys) -> None:
    reference = _timm_swin()
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, tmp_path / "timm_swin.safetensors")
    argv = [str(tmp_path / "timm_swin.safetensors"), str(tmp_path / "backbone.safetensors"), "--config-file"]
    result = _tool().main([*argv, QUICKSTART, *TINY_MODEL])
    out = capsys.readouterr().out
    assert result.kind == "backbone" and result.report.backbone_init
    assert sorted(result.report.missing) == [f"backbone.norm{i}.{p}" for i in range(4) for p in ("bias", "weight")]
    assert "a backbone checkpoint: the rest of the model" in out and "it keeps its initialisation (expected)" in out
    assert "MODEL.BACKBONE.WEIGHTS OUT" in out

    written = read_checkpoint(tmp_path / "backbone.safetensors")
    assert written and all(key.startswith("backbone.") for key in written)
    direct = _tiny()  # the backbone's own loader on the timm file: the same tensors
    load_swin_pretrained(direct.backbone, tmp_path / "timm_swin.safetensors")
    own = direct.state_dict()
    assert all(torch.equal(value, own[key]) for key, value in written.items())
    table = "backbone.layers.0.blocks.0.attn.relative_position_bias_table"
    assert written[table].shape == (49, 1) and reference.state_dict()[table.removeprefix("backbone.")].shape == (169, 1)

    for loader in ("MODEL.WEIGHTS", "MODEL.BACKBONE.WEIGHTS"):
        model = _tiny()
        if loader == "MODEL.WEIGHTS":
            report = load_checkpoint_into(model, tmp_path / "backbone.safetensors", fresh_head_ok=True)
            assert report.loaded == len(written) and report.backbone_only and not report.unexpected
        else:
            load_backbone_weights(model, str(tmp_path / "backbone.safetensors"))
        assert all(torch.equal(model.state_dict()[k], v) for k, v in written.items()), loader


def test_another_class_count_keeps_the_class_head_for_the_loader(tmp_path: Path) -> None:
    """An ADE20K-like model (150 classes) for the trash config: OUT holds its class head as it is, and each load
    re-initialises it and says so; everything else loads."""
    ade = _tiny("MODEL.SEM_SEG_HEAD.NUM_CLASSES", "150").state_dict()
    arrays = {k: v.numpy() for k, v in ade.items()}
    (tmp_path / "ade.pkl").write_bytes(pickle.dumps({"model": arrays, "__author__": "Detectron2 Model Zoo"}))
    result = run(ConvertOptions(str(tmp_path / "ade.pkl"), str(tmp_path / "ade.safetensors"), QUICKSTART, TINY_MODEL))
    assert result.kind == "model" and len(result.report.reinitialised) == 3
    assert "re-initialised the class head" in result.lines[0]
    written = read_checkpoint(tmp_path / "ade.safetensors")
    assert written.keys() == ade.keys() and written["sem_seg_head.predictor.class_embed.weight"].shape[0] == 151
    report = load_checkpoint_into(_tiny(), tmp_path / "ade.safetensors")
    assert len(report.reinitialised) == 3 and not report.missing and report.loaded == len(ade) - 3


def test_a_file_of_another_model_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    torch.save({"model": {"encoder.weight": torch.ones(3, 3)}}, tmp_path / "other.pth")
    options = ConvertOptions(str(tmp_path / "other.pth"), str(tmp_path / "out.safetensors"), QUICKSTART, TINY_MODEL)
    with pytest.raises(CheckpointMismatchError, match=r"other.pth does not fit this model.*unexpected: encoder"):
        run(options)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.pth"]


def test_an_unsafe_pickle_is_refused_and_its_payload_never_runs(tmp_path: Path, capsys) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return subprocess.call, (["touch", str(marker)],)

    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"model": {"w": np.zeros(2)}, "x": Payload()}, protocol=4))
    with pytest.raises(UnsafePickleError, match=r"refused to unpickle subprocess.call"):
        run(ConvertOptions(str(tmp_path / "evil.pkl"), str(tmp_path / "out.safetensors")))
    with pytest.raises(SystemExit) as exit_info:
        _tool().main([str(tmp_path / "evil.pkl"), str(tmp_path / "out.safetensors")])
    assert exit_info.value.code == 2
    assert "refused to unpickle subprocess.call" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "out.safetensors").exists()


def test_output_rules(tmp_path: Path, tiny_state) -> None:
    source = tmp_path / "m.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_state.items()}, source)
    target = tmp_path / "out.safetensors"
    target.write_bytes(b"the user's file")
    with pytest.raises(FileExistsError, match=r"out.safetensors exists: give --overwrite"):
        run(ConvertOptions(str(source), str(target)))
    assert target.read_bytes() == b"the user's file"
    with pytest.raises(OutputFolderError, match=r"out.safetensors exists and was not written by convert_checkpoint"):
        run(ConvertOptions(str(source), str(target), overwrite=True))  # --overwrite replaces only its own files
    assert target.read_bytes() == b"the user's file"
    save_file({k: v.contiguous() for k, v in tiny_state.items()}, target)  # a safetensors file of the user's
    with pytest.raises(OutputFolderError, match=r"was not written by convert_checkpoint.py"):
        run(ConvertOptions(str(source), str(target), overwrite=True))
    target.unlink()
    run(ConvertOptions(str(source), str(target)))
    run(ConvertOptions(str(source), str(target), overwrite=True))  # its own file: replaced
    assert read_checkpoint(target).keys() == tiny_state.keys()
    before = _digest(source)
    with pytest.raises(ConvertError, match=r"is IN: the input is never overwritten"):
        run(ConvertOptions(str(source), str(tmp_path / "." / "m.safetensors"), overwrite=True))
    (tmp_path / "link.safetensors").symlink_to(source)
    with pytest.raises(ConvertError, match=r"is IN"):
        run(ConvertOptions(str(source), str(tmp_path / "link.safetensors"), overwrite=True))
    assert _digest(source) == before
    with pytest.raises(ConvertError, match=r"must end with .safetensors"):
        run(ConvertOptions(str(source), str(tmp_path / "out.pth")))
    with pytest.raises(ConvertError, match=r"KEY VALUE overrides .* need --config-file"):
        run(ConvertOptions(str(source), str(tmp_path / "new.safetensors"), opts=["MODEL.SWIN.EMBED_DIM", "16"]))
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        run(ConvertOptions(str(tmp_path / "nope.pth"), str(tmp_path / "new.safetensors")))
    assert not (tmp_path / "new.safetensors").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def _readme_commands() -> list[list[str]]:
    return [argv for argv in doc_commands(SECTION) if "tools/convert_checkpoint.py" in argv]


@pytest.mark.slow
@pytest.mark.subprocess
def test_the_readme_commands_run_as_written(tmp_path: Path) -> None:
    """The documented commands (docs/models.md), with tiny files under their names and TINY_MODEL after a
    --config-file: the first in a child process exactly as a user types it, the others through the tool's main."""
    commands = _readme_commands()
    assert len(commands) == 3 and commands[0][:2] == ["python", "tools/convert_checkpoint.py"]
    r50 = {"stem.conv1.weight": np.ones((4, 3, 7, 7), np.float32), "res2.0.conv1.norm.running_var": np.ones(4)}
    (tmp_path / "R-50.pkl").write_bytes(
        pickle.dumps({"model": r50, "__author__": "torchvision", "matching_heuristics": True}, protocol=2)
    )
    torch.save(_timm_swin().state_dict(), tmp_path / "swin_large_patch4_window12_384_22k.pth")
    ade = {k: v.numpy() for k, v in _tiny("MODEL.SEM_SEG_HEAD.NUM_CLASSES", "150").state_dict().items()}
    (tmp_path / "m2f_swin_l_ade20k.pkl").write_bytes(pickle.dumps({"model": ade, "__author__": "Detectron2 Model Zoo"}))
    (tmp_path / "configs").symlink_to(REPO / "configs")
    (tmp_path / "tools").symlink_to(REPO / "tools")

    first = [sys.executable if commands[0][0] == "python" else commands[0][0], *commands[0][1:]]
    done = subprocess.run(first, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"wrote {commands[0][3]}: 2 tensors" in done.stdout
    assert read_checkpoint(tmp_path / commands[0][3]).keys() == r50.keys()

    tool = _tool()
    kinds = []
    for argv in commands[1:]:
        assert argv[:2] == ["python", "tools/convert_checkpoint.py"] and "--config-file" in argv
        with pytest.MonkeyPatch.context() as patch:
            patch.chdir(tmp_path)
            kinds.append(tool.main([*argv[2:], *TINY_MODEL]).kind)
        assert (tmp_path / argv[3]).is_file()
    assert kinds == ["backbone", "model"]
