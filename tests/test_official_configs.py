"""Config files in the official repositories' form build the published models through the project, unchanged."""

from __future__ import annotations

import subprocess
import sys

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
