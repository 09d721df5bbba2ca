"""Point sampling, Hungarian matching and the set criterion."""

from __future__ import annotations

import pytest
import torch

from mask2former.config import get_cfg
from mask2former.modeling.criterion import SetCriterion, build_criterion
from mask2former.modeling.matcher import HungarianMatcher
from mask2former.modeling.point_sampling import (
    calculate_uncertainty,
    get_uncertain_point_coords_with_randomness,
    point_sample,
)


def test_point_sample_at_pixel_centres() -> None:
    image = torch.arange(12.0).view(1, 1, 3, 4)
    points = torch.tensor([[[(1 + 0.5) / 4, (2 + 0.5) / 3], [0.5 / 4, 0.5 / 3]]])
    torch.testing.assert_close(point_sample(image, points), torch.tensor([[[9.0, 0.0]]]))


def test_uncertain_points_concentrate_where_logits_are_near_zero() -> None:
    logits = torch.full((1, 1, 32, 32), 10.0)
    logits[..., :, 16:] = 0.0  # the right half is uncertain
    torch.manual_seed(0)
    coords = get_uncertain_point_coords_with_randomness(logits, calculate_uncertainty, 100, 3.0, 0.75)
    assert coords.shape == (1, 100, 2)
    assert (coords[0, :75, 0] > 0.5 - 1 / 32).all()


def _targets() -> list[dict]:
    masks = torch.zeros(2, 16, 16)
    masks[0, :8] = 1
    masks[1, 8:] = 1
    return [{"labels": torch.tensor([3, 1]), "masks": masks}]


def _perfect_outputs(queries: int = 4, classes: int = 5) -> dict:
    logits = torch.full((1, queries, classes + 1), -10.0)
    logits[0, :, classes] = 10.0  # no object by default
    masks = torch.full((1, queries, 16, 16), -20.0)
    target = _targets()[0]
    for query, index in ((2, 0), (0, 1)):  # query 2 <- target 0 (class 3), query 0 <- target 1 (class 1)
        logits[0, query] = -10.0
        logits[0, query, target["labels"][index]] = 10.0
        masks[0, query] = target["masks"][index] * 40 - 20
    return {"pred_logits": logits, "pred_masks": masks}


def test_matcher_finds_the_perfect_assignment() -> None:
    rows, cols = HungarianMatcher(num_points=200)(_perfect_outputs(), _targets())[0]
    assert dict(zip(rows.tolist(), cols.tolist(), strict=True)) == {2: 0, 0: 1}
    empty = HungarianMatcher(num_points=10)(
        _perfect_outputs(), [{"labels": torch.zeros(0, dtype=torch.long), "masks": torch.zeros(0, 16, 16)}]
    )
    assert empty[0][0].numel() == 0


def _criterion(**kwargs) -> SetCriterion:
    return SetCriterion(
        5,
        HungarianMatcher(num_points=200),
        {"loss_ce": 2.0, "loss_mask": 5.0, "loss_dice": 5.0},
        num_points=200,
        **kwargs,
    )


def test_perfect_predictions_have_near_zero_losses() -> None:
    torch.manual_seed(0)
    # uniform points: only the few on a mask edge (bilinear between pixels) cost anything
    losses = _criterion(importance_sample_ratio=0.0)(_perfect_outputs(), _targets())
    assert losses["loss_mask"] < 0.5 and losses["loss_dice"] < 0.05 and losses["loss_ce"] < 1e-3
    wrong = _perfect_outputs()
    wrong["pred_masks"] = torch.roll(wrong["pred_masks"], 4, dims=2)  # a quarter of each mask misplaced
    worse = _criterion(importance_sample_ratio=0.0)(wrong, _targets())
    assert worse["loss_mask"] > 5 * losses["loss_mask"] and worse["loss_dice"] > 5 * losses["loss_dice"]


def test_losses_decrease_when_optimised() -> None:
    torch.manual_seed(0)
    logits = torch.zeros(1, 4, 6, requires_grad=True)
    masks = torch.zeros(1, 4, 16, 16, requires_grad=True)
    criterion = _criterion()
    optimizer = torch.optim.Adam([logits, masks], lr=0.3)
    first = None
    for _ in range(30):
        total = criterion.weighted_total(criterion({"pred_logits": logits, "pred_masks": masks}, _targets()))
        first = float(total.detach()) if first is None else first
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    assert float(total) < 0.2 * first


def test_deep_supervision_keys_and_weighted_total() -> None:
    cfg = get_cfg()
    cfg.MODEL.MASK_FORMER.DEC_LAYERS = 3
    cfg.MODEL.MASK_FORMER.TRAIN_NUM_POINTS = 100
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 5
    criterion = build_criterion(cfg)
    assert criterion.empty_weight.tolist() == pytest.approx([1, 1, 1, 1, 1, 0.1])
    outputs = _perfect_outputs()
    outputs["aux_outputs"] = [_perfect_outputs(), _perfect_outputs()]
    losses = criterion(outputs, _targets())
    assert {"loss_ce", "loss_mask_0", "loss_dice_1"} <= set(losses) and len(losses) == 9
    manual = sum(v * {"ce": 2.0, "mask": 5.0, "dice": 5.0}[k.split("_")[1]] for k, v in losses.items())
    assert criterion.weighted_total(losses) == pytest.approx(float(manual))
    cfg.MODEL.MASK_FORMER.DEEP_SUPERVISION = False
    assert len(build_criterion(cfg)(outputs, _targets())) == 3


def test_normalised_by_the_number_of_masks() -> None:
    outputs = _perfect_outputs()
    outputs["pred_masks"] = outputs["pred_masks"] * 0.1  # soft masks: non-trivial mask losses
    criterion = _criterion(importance_sample_ratio=0.0)
    torch.manual_seed(1)
    single = criterion(outputs, _targets())
    doubled = {k: torch.cat([v, v]) for k, v in outputs.items()}
    torch.manual_seed(1)
    double = criterion(doubled, _targets() * 2)
    assert double["loss_ce"] == pytest.approx(float(single["loss_ce"]), rel=1e-5)
    assert double["loss_dice"] == pytest.approx(float(single["loss_dice"]), rel=0.1)
