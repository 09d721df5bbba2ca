"""OCRNet's head against the paper's equations computed pixel by pixel, and in the per-pixel model on the tiny
HRNet: its soft object regions are the auxiliary output, trained with their own CE."""

from __future__ import annotations

import torch
from conftest import REPO, make_tiny

from mask2former.config import get_cfg
from mask2former.modeling.build import build_model
from mask2former.modeling.per_pixel.ocr import OCR, ObjectContext, concat_pyramid, region_representations


def test_region_representations_are_the_spatial_softmax_weighted_sums_of_the_pixels() -> None:
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(2, 5, 3, 4, generator=generator)
    logits = torch.randn(2, 3, 3, 4, generator=generator)
    regions = region_representations(pixels, logits)
    assert regions.shape == (2, 5, 3, 1)
    for b in range(2):
        for k in range(3):
            weights = torch.exp(logits[b, k]) / torch.exp(logits[b, k]).sum()  # over the 12 pixels
            expected = (weights[None] * pixels[b]).sum(dim=(1, 2))
            torch.testing.assert_close(regions[b, :, k, 0], expected)


def test_the_context_of_each_pixel_is_its_relation_weighted_sum_of_transformed_regions() -> None:
    torch.manual_seed(0)
    block = ObjectContext(channels=6, key_channels=4).eval()
    for module in block.modules():  # non-trivial BN statistics, so the check sees them
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    pixels, regions = torch.randn(1, 6, 2, 3), torch.randn(1, 6, 3, 1)
    with torch.no_grad():
        context = block(pixels, regions)
        phi, psi = block.phi(pixels)[0], block.psi(regions)[0, :, :, 0]  # d x h x w, d x K
        delta = block.delta(regions)[0, :, :, 0]  # d x K
        for i in range(2):
            for j in range(3):
                relation = torch.softmax(phi[:, i, j] @ psi / 2.0, dim=0)  # over the 3 regions; sqrt(4) = 2
                mixed = (delta * relation[None]).sum(dim=1)
                expected = block.rho(mixed.view(1, 4, 1, 1))[0, :, 0, 0]
                torch.testing.assert_close(context[0, :, i, j], expected)


def test_identical_regions_give_every_pixel_the_same_context() -> None:
    torch.manual_seed(0)
    block = ObjectContext(channels=6, key_channels=4).eval()
    regions = torch.randn(1, 6, 1, 1).expand(1, 6, 3, 1)
    with torch.no_grad():
        context = block(torch.randn(1, 6, 4, 4), regions)
    torch.testing.assert_close(context, context[:, :, :1, :1].expand_as(context))


def test_the_head_reads_the_concatenated_branches_at_stride_4() -> None:
    features = {f"res{level}": torch.randn(1, level, 32 >> level, 32 >> level) for level in (2, 3, 4, 5)}
    joined = concat_pyramid(features)
    assert joined.shape == (1, 2 + 3 + 4 + 5, 8, 8)
    torch.testing.assert_close(joined[:, :2], features["res2"])
    head = OCR(in_channels=14, num_classes=3, channels=8, key_channels=4)
    outputs = head(features)
    assert outputs["logits"].shape == (1, 3, 8, 8)
    assert [aux.shape for aux in outputs["aux_logits"]] == [(1, 3, 8, 8)]


def ocrnet(*opts: str):
    cfg = get_cfg()
    cfg.merge_from_file(str(REPO / "configs" / "ocrnet_hrnet_w48.yaml"))
    make_tiny(cfg)
    cfg.merge_from_list(["MODEL.SEM_SEG_HEAD.NUM_CLASSES", "4", *opts])
    return cfg


def test_ocrnet_on_hrnet_trains_the_soft_regions_with_their_own_weighted_ce() -> None:
    torch.manual_seed(0)
    model = build_model(ocrnet()).train()
    assert model.aux_head is None  # the soft regions are the auxiliary output; no FCN head is added
    assert model.backbone.output_shape()["res2"].stride == 4
    image = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)
    label = torch.randint(0, 4, (64, 64))
    losses = model([{"image": image, "sem_seg": label}, {"image": image.flip(-1), "sem_seg": label.flip(-1)}])
    assert set(losses) == {"loss_ce", "loss_aux_ce_0"}
    assert model.criterion.weight_dict["loss_aux_ce_0"] == 0.4
    model.zero_grad()
    losses["loss_aux_ce_0"].backward(retain_graph=True)
    assert model.sem_seg_head.region_classifier.weight.grad.abs().sum() > 0
    assert model.sem_seg_head.classifier[-1].weight.grad is None  # the region loss does not train the classifier
    model.zero_grad()
    losses["loss_ce"].backward()
    assert model.sem_seg_head.region_classifier.weight.grad.abs().sum() > 0  # f_k depends on the regions
    assert {"sem_seg_head.classifier.1.weight", "sem_seg_head.region_classifier.weight"} <= set(model.class_head_keys())


def test_ocrnet_predicts_probabilities_at_the_image_size() -> None:
    torch.manual_seed(0)
    model = build_model(ocrnet()).eval()
    with torch.no_grad():
        (result,) = model([{"image": torch.randint(0, 256, (3, 64, 96), dtype=torch.uint8), "height": 50, "width": 75}])
    scores = result["sem_seg"]
    assert scores.shape == (4, 50, 75)
    torch.testing.assert_close(scores.sum(0), torch.ones(50, 75))
