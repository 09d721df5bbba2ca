"""Config files in the official repositories' form build the published models through the project, unchanged."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO

from mask2former.modeling.backbone.base import BACKBONE_REGISTRY
from mask2former.modeling.meta_arch import META_ARCH_REGISTRY, SEM_SEG_HEADS_REGISTRY
from mask2former.modeling.pixel_decoder.base import PIXEL_DECODER_REGISTRY
from mask2former.modeling.transformer_decoder.base import TRANSFORMER_DECODER_REGISTRY

OFFICIAL_LIKE = REPO / "tests" / "data" / "official_like"


def test_the_official_registered_names_exist() -> None:
    from mask2former.modeling import register_all  # noqa: F401

    expected = {
        BACKBONE_REGISTRY: ("D2SwinTransformer", "D2DiNAT", "D2SeMaskSwinTransformer", "build_resnet_backbone"),
        SEM_SEG_HEADS_REGISTRY: ("MaskFormerHead", "BranchMaskFormerHead"),
        META_ARCH_REGISTRY: ("MaskFormer", "SeMaskMaskFormer"),
        PIXEL_DECODER_REGISTRY: ("MSDeformAttnPixelDecoder", "PixelFANDecoder", "MSDeformAttnPixelFANDecoder"),
        TRANSFORMER_DECODER_REGISTRY: ("MultiScaleMaskedTransformerDecoder",),
    }
    for registry, names in expected.items():
        missing = [name for name in names if name not in registry]
        assert not missing, f"{registry._name} lacks {missing}"


@pytest.mark.slow
@pytest.mark.subprocess
def test_official_form_configs_build_at_the_published_sizes() -> None:
    result = subprocess.run(
        [sys.executable, "benchmarks/official_configs.py", str(OFFICIAL_LIKE)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {line.split("|")[1].strip(): line for line in result.stdout.splitlines() if line.startswith("| ")}
    for name in (
        "r50_like.yaml",
        "r101_like.yaml",
        "swin/swin_tiny_like.yaml",
        "swin/swin_base_like.yaml",
        "swin/swin_large_like.yaml",
        "dinat/dinat_large_like.yaml",
        "semask_swin/semask_swin_large_like.yaml",
        "semask_swin/fapn_semask_swin_large_like.yaml",
        "semask_swin/msfapn_semask_swin_large_like.yaml",
    ):
        assert "| ok (" in rows[name], rows[name]


@pytest.mark.slow
@pytest.mark.subprocess
def test_the_readme_official_config_commands_run(sample_root, tmp_path) -> None:
    """docs/configs.md "Official config files and checkpoints": the train_net command with the official R50 file's
    form (this repository's copy in tests/data/official_like, which has the same _BASE_ chain and constructs), the
    data, a detectron2-style R-50.pkl and the GPU count replaced, tiny widths and a two-iteration schedule appended;
    the official_configs command as written."""
    import pickle

    from conftest import TINY_MODEL, doc_commands, tiny_run_argv

    from mask2former.config import load_config
    from mask2former.modeling.build import build_model

    train, report = doc_commands("Official config files and checkpoints")
    assert train[:2] == ["python", "train_net.py"] and report[:2] == ["python", "benchmarks/official_configs.py"]

    official = OFFICIAL_LIKE / "r50_like.yaml"
    torch_model = build_model(load_config(str(official), TINY_MODEL))
    weights = tmp_path / "R-50.pkl"
    with weights.open("wb") as handle:
        arrays = {name: value.numpy() for name, value in torch_model.backbone.state_dict().items()}
        pickle.dump({"model": arrays, "matching_heuristics": True, "__author__": "test"}, handle)
    changes = {train[train.index("--config-file") + 1]: str(official), "/data": str(sample_root)}
    changes |= {"/weights/R-50.pkl": str(weights), train[train.index("--num-gpus") + 1]: "0"}
    argv = [sys.executable if arg == "python" else changes.get(arg, arg) for arg in train]
    tiny = tiny_run_argv(sample_root, tmp_path / "run", max_iter=2)[4:]  # after --config-file X --num-gpus 0
    result = subprocess.run(argv + tiny, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "run" / "model_final.pth").is_file()

    result = subprocess.run([sys.executable, *report[1:]], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and "0 not" in result.stdout, result.stdout + result.stderr
