"""EoMT: output shapes, a training step through Mask2Former's criterion, the masked-attention annealing against a
direct computation, no mask at inference, and a tiny EoMT through train_net, --eval-only, an exact resume,
prediction with TTA and an ensemble with a Mask2Former (export: tests/test_export.py's every-config test)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from conftest import REPO, TINY_MODEL, Changes, ConfigKeyCheck, CoveredBy, make_tiny, tiny_run_argv

from mask2former.config import get_cfg, load_config
from mask2former.engine.arguments import default_argument_parser
from mask2former.engine.launch import setup
from mask2former.engine.training import evaluate_only, train
from mask2former.io.checkpoints import read_checkpoint
from mask2former.modeling.build import build_model
from mask2former.modeling.eomt.meta_arch import EoMT, mask_probability
from mask2former.pipeline import ensemble_crf
from mask2former.pipeline import predict as predict_pipeline
from mask2former.pipeline.ensemble_crf import EnsembleOptions


def tiny(*opts: str) -> EoMT:
    cfg = get_cfg()
    cfg.merge_from_file(str(REPO / "configs" / "quickstart_eomt.yaml"))
    make_tiny(cfg)
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", *opts])
    torch.manual_seed(0)
    return build_model(cfg)


def image(height: int = 64, width: int = 96, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, height, width), generator=generator, dtype=torch.uint8)


def labelled(height: int = 64, width: int = 96) -> dict:
    label = torch.zeros(height, width, dtype=torch.long)
    label[: height // 2, : width // 3] = 3
    label[height // 2 :, width // 2 :] = 7
    return {"image": image(height, width), "sem_seg": label}


def test_outputs_have_mask2formers_shapes_and_a_prediction_per_block() -> None:
    model = tiny().train()
    images = torch.randn(2, 3, 64, 96)
    outputs = model.mask_outputs(images)
    queries, classes = model.num_q, model.num_classes + 1
    assert outputs["pred_logits"].shape == (2, queries, classes)
    assert outputs["pred_masks"].shape == (2, queries, 16, 24)  # patch 16, two x2 upscales: stride 4
    assert len(outputs["aux_outputs"]) == model.num_blocks == 2
    for aux in outputs["aux_outputs"]:
        assert aux["pred_logits"].shape == (2, queries, classes) and aux["pred_masks"].shape == (2, queries, 16, 24)
    with torch.no_grad():
        evaluated = model.eval().mask_outputs(images)
    assert "aux_outputs" not in evaluated and evaluated["pred_masks"].shape == (2, queries, 16, 24)
    result = model([{"image": image(40, 72), "height": 60, "width": 100}])
    assert result[0]["sem_seg"].shape == (model.num_classes, 60, 100)


def test_position_embedding_is_resized_to_the_input_grid_with_register_tokens() -> None:
    model = tiny("MODEL.EOMT.ENCODER_NAME", "vit_small_patch14_reg4_dinov2").eval()
    vit = model.backbone
    assert vit.num_prefix_tokens == 5  # class token + 4 registers
    images = torch.randn(1, 3, 48, 80)  # a 3 x 5 grid; the position embedding holds IMG_SIZE 64 / 16 = 4 x 4
    with torch.no_grad():
        tokens = vit._pos_embed(vit.patch_embed(images))
        assert vit.no_embed_class  # the registers' variant: patches only carry a position
        grid = vit.pos_embed.reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
        resized = F.interpolate(grid, size=(3, 5), mode="bicubic", antialias=True, align_corners=False)
        patches = F.conv2d(images, vit.patch_embed.proj.weight, vit.patch_embed.proj.bias, stride=16)
        expected = (patches + resized).flatten(2).transpose(1, 2)
        torch.testing.assert_close(tokens[:, 5:], expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(tokens[:, :5], torch.cat((vit.cls_token, vit.reg_token), dim=1))
        outputs = model.mask_outputs(images)
    assert outputs["pred_masks"].shape == (1, model.num_q, 12, 20)


def test_a_training_step_through_the_criterion_reaches_every_parameter() -> None:
    model = tiny().train()
    model.attn_mask_probs.fill_(0.5)  # masks kept for some queries only: the random path runs
    torch.manual_seed(1)
    losses = model([labelled(), labelled()])
    assert {"loss_ce", "loss_mask", "loss_dice", "loss_ce_0", "loss_dice_1"} <= set(losses)
    total = model.criterion.weighted_total(losses)
    assert torch.isfinite(total)
    total.backward()
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    assert not [name for name, p in trainable.items() if p.grad is None]
    assert all(torch.isfinite(p.grad).all() for p in trainable.values())


def test_mask_probability_follows_the_official_schedule() -> None:
    # the official ADE20K semantic recipe: 4 blocks, 32600 iterations, start/end steps 6520 apart, power 0.9
    starts, ends = [6520, 13040, 19560, 26080], [13040, 19560, 26080, 32600]
    for block, (start, end) in enumerate(zip(starts, ends, strict=True)):
        for iteration in (0, start - 1, start, start + 1, (start + end) // 2, end - 1, end, 32599, 40000):
            if iteration < start:
                expected = 1.0
            elif iteration >= end:
                expected = 0.0
            else:
                expected = (1.0 - (iteration - start) / (end - start)) ** 0.9
            assert mask_probability(block, iteration, 4, 32600, 0.9) == pytest.approx(expected, abs=1e-12)
    assert mask_probability(0, 50, 1, 100, 2.0) == pytest.approx(1.0)
    assert mask_probability(0, 75, 1, 100, 2.0) == pytest.approx(0.25)


def test_set_iteration_anneals_each_block_and_honours_the_keys() -> None:
    # MODEL.EOMT.POLY_POWER and MODEL.EOMT.ATTN_MASK_ANNEALING_ENABLED, with SOLVER.MAX_ITER 90 and 2 blocks
    model = tiny("SOLVER.MAX_ITER", "90", "MODEL.EOMT.POLY_POWER", "2.0")
    model.set_iteration(45)  # block 0 anneals over [30, 60), block 1 over [60, 90)
    assert model.attn_mask_probs.tolist() == pytest.approx([0.25, 1.0])
    model.set_iteration(75)
    assert model.attn_mask_probs.tolist() == pytest.approx([0.0, 0.25])
    frozen = tiny("SOLVER.MAX_ITER", "90", "MODEL.EOMT.ATTN_MASK_ANNEALING_ENABLED", "False")
    frozen.set_iteration(75)
    assert frozen.attn_mask_probs.tolist() == [1.0, 1.0]


def test_masked_attention_changes_training_outputs_but_inference_has_no_mask() -> None:
    model = tiny().train()
    for block in model.backbone.blocks:  # DINOv2's layer scale starts at 1e-5: let attention show
        block.ls1.gamma.data.fill_(1.0)
    images = torch.randn(1, 3, 64, 64)
    masked = model.mask_outputs(images)["pred_logits"]
    model.attn_mask_probs.zero_()  # annealed away: the same as no mask
    unmasked = model.mask_outputs(images)["pred_logits"]
    assert not torch.allclose(masked, unmasked)
    model.masked_attn_enabled = False
    assert torch.allclose(model.mask_outputs(images)["pred_logits"], unmasked, atol=1e-6)
    model.eval()
    with torch.no_grad():
        first = model.mask_outputs(images)["pred_logits"]
        model.attn_mask_probs.fill_(1.0)
        assert torch.equal(model.mask_outputs(images)["pred_logits"], first)


def run_args(sample_root: Path, output: Path, *extra: str) -> argparse.Namespace:
    return default_argument_parser().parse_args(
        tiny_run_argv(sample_root, output, *extra, max_iter=4, period=2, config="quickstart_eomt.yaml")
    )


@pytest.fixture(scope="module")
def eomt_run(sample_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny EoMT trained for 4 iterations through train_net's engine (the folder of the run)."""
    run = tmp_path_factory.mktemp("eomt") / "run"
    args = run_args(sample_root, run)
    train(setup(args), args)
    return run


class Kill(L.Callback):
    """Simulates a crash at the start of an iteration."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        if trainer.global_step == self.at_step:
            raise KeyboardInterrupt("killed")


@pytest.mark.slow
def test_a_tiny_eomt_trains_and_evaluates_through_the_engine(sample_root: Path, eomt_run: Path, tmp_path: Path) -> None:
    final = json.loads((eomt_run / "final_metrics.json").read_text())["results"]["trash_val"]
    header = (eomt_run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"loss_ce", "loss_mask", "loss_dice"} <= set(header)
    # SOLVER.MAX_ITER 4, 2 blocks: block 0 anneals over [1, 2), block 1 over [2, 4); the last step ran at iteration 3
    weights = read_checkpoint(eomt_run / "model_final.pth")
    assert weights["attn_mask_probs"].tolist() == pytest.approx([0.0, 0.5**0.9])
    eval_args = run_args(sample_root, tmp_path / "eval", "MODEL.WEIGHTS", str(eomt_run / "model_final.pth"))
    eval_args.eval_only = True
    again = evaluate_only(setup(eval_args), eval_args)["trash_val"]
    assert again["mIoU"] == pytest.approx(final["mIoU"], abs=1e-9)


@pytest.mark.slow
def test_a_killed_eomt_run_resumes_exactly(sample_root: Path, eomt_run: Path, tmp_path: Path) -> None:
    args = run_args(sample_root, tmp_path / "killed")
    with pytest.raises((KeyboardInterrupt, SystemExit)):
        train(setup(args), args, callbacks=[Kill(at_step=3)])  # iteration 3 drops query masks at random
    args = run_args(sample_root, tmp_path / "killed")
    args.resume = True
    train(setup(args), args)
    whole = read_checkpoint(eomt_run / "model_final.pth")
    resumed = read_checkpoint(tmp_path / "killed" / "model_final.pth")
    assert set(resumed) == set(whole)
    for key, value in whole.items():
        torch.testing.assert_close(resumed[key], value, rtol=0, atol=1e-6, msg=key)


@pytest.mark.slow
def test_a_tiny_eomt_predicts_with_tta_and_ensembles_with_a_mask2former(
    sample_root: Path, eomt_run: Path, tmp_path: Path
) -> None:
    val = sample_root / "val.json"
    tiny_opts = [*TINY_MODEL, "INPUT.MIN_SIZE_TEST", "64", "TEST.AUG.MIN_SIZES", "(64, 96)", "MODEL.DEVICE", "cpu"]

    def predict(config: str, weights: Path, out: Path, *flags: str) -> None:
        argv = ["--config-file", str(REPO / "configs" / config), "--weights", str(weights), "--json", str(val)]
        predict_pipeline.predict(predict_pipeline.parse_args([*argv, "--out", str(out), *flags, *tiny_opts]))

    predict("quickstart_eomt.yaml", eomt_run / "model_final.pth", tmp_path / "eomt", "--tta")
    meta = json.loads((tmp_path / "eomt" / "meta.json").read_text())
    assert meta["tta"] and len(meta["views"]) == 4  # 2 scales x flip
    torch.manual_seed(0)
    m2f = tmp_path / "m2f.pth"
    torch.save(
        {"model": build_model(load_config(str(REPO / "configs" / "quickstart.yaml"), TINY_MODEL)).state_dict()}, m2f
    )
    predict("quickstart.yaml", m2f, tmp_path / "m2f")
    folders = [tmp_path / "eomt", tmp_path / "m2f"]
    soft = ensemble_crf.run(EnsembleOptions(inputs=[str(f) for f in folders], out=str(tmp_path / "soft"), gt=str(val)))
    images = json.loads(val.read_text())["images"]
    assert soft["images"] == len(images)
    stages = soft["report"]["stages"]
    assert "eomt" in stages[0]["stage"] and "m2f" in stages[1]["stage"]
    assert all(0.0 <= stage["mIoU"] <= 1.0 for stage in stages)


# ---- what each of the family's config keys does (tests/test_config_keys.py collects and runs these) -----------------

_EOMT = ("MODEL.META_ARCHITECTURE", "EoMT")
_ANNEALING = "tests/test_eomt.py::test_set_iteration_anneals_each_block_and_honours_the_keys"

CONFIG_KEY_CHECKS: dict[str, ConfigKeyCheck] = {
    "MODEL.EOMT.ENCODER_NAME": Changes("'vit_base_patch16_224'", "model", _EOMT),
    "MODEL.EOMT.PATCH_SIZE": Changes("8", "model", _EOMT),
    "MODEL.EOMT.IMG_SIZE": Changes("32", "model", _EOMT),
    "MODEL.EOMT.EMBED_DIM": Changes("16", "model", _EOMT),
    "MODEL.EOMT.DEPTH": Changes("4", "model", _EOMT),
    "MODEL.EOMT.NUM_HEADS": Changes("4", "eval", _EOMT),
    "MODEL.EOMT.NUM_QUERIES": Changes("4", "model", _EOMT),
    "MODEL.EOMT.NUM_BLOCKS": Changes("1", "losses", _EOMT),
    "MODEL.EOMT.MASKED_ATTN_ENABLED": Changes("False", "losses", _EOMT),
    "MODEL.EOMT.ATTN_MASK_ANNEALING_ENABLED": CoveredBy(_ANNEALING),
    "MODEL.EOMT.POLY_POWER": CoveredBy(_ANNEALING),
}
