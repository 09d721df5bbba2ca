"""The model and engine end to end on tiny configs: every config trains a step, resume, eval-only, checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import REPO, make_tiny, tiny_run_argv

from mask2former.config import get_cfg
from mask2former.engine.arguments import default_argument_parser
from mask2former.engine.launch import main, setup
from mask2former.engine.trainer import build_trainer
from mask2former.engine.training import evaluate_only, train
from mask2former.io.checkpoints import CheckpointMismatchError, read_checkpoint
from mask2former.modeling.build import build_model
from mask2former.modeling.weights import load_checkpoint_into

CONFIGS = sorted(p.name for p in (REPO / "configs").glob("*.yaml") if not p.name.startswith("Base-"))


def tiny_cfg(name: str = "quickstart.yaml"):
    cfg = get_cfg()
    cfg.merge_from_file(str(REPO / "configs" / name))
    make_tiny(cfg)
    return cfg


def fake_batch(cfg, size: int = 64) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    batch = []
    for _ in range(2):
        label = torch.zeros(size, size, dtype=torch.long)
        label[: size // 2, : size // 3] = 2
        label[size // 2 :, size // 2 :] = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES - 1
        label[0, 0] = 255
        image = torch.randint(0, 255, (3, size, size), generator=generator, dtype=torch.uint8)
        batch.append({"image": image, "sem_seg": label, "height": size, "width": size})
    return batch


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_builds_tiny_and_trains_a_step(name: str) -> None:
    cfg = tiny_cfg(name)
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    losses = model(fake_batch(cfg))
    total = model.criterion.weighted_total(losses)
    per_pixel = cfg.MODEL.META_ARCHITECTURE == "PerPixelSegmentor"
    expected = {"loss_ce", "loss_aux_ce_0"} if per_pixel else {"loss_ce", "loss_mask", "loss_dice", "loss_ce_0"}
    if per_pixel and cfg.MODEL.PER_PIXEL.AUX_WEIGHT == 0:
        expected = {"loss_ce"}
    assert torch.isfinite(total) and expected <= set(losses)
    assert all(key in model.criterion.weight_dict for key in losses)  # every term is trained on
    total.backward()
    first = next(p for p in model.backbone.parameters() if p.requires_grad)
    assert first.grad is not None and first.grad.abs().sum() > 0  # reaches the first layer
    head_keys = model.class_head_keys() if per_pixel else ["sem_seg_head.predictor.class_embed.weight"]
    parameters = dict(model.named_parameters())
    assert head_keys and all(parameters[key].grad.abs().sum() > 0 for key in head_keys if key in parameters)
    model.eval()
    with torch.no_grad():
        outputs = model([{**item, "height": 80, "width": 72} for item in fake_batch(cfg)])
    scores = outputs[0]["sem_seg"]
    assert scores.shape == (cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, 80, 72) and torch.isfinite(scores).all()
    if per_pixel:  # softmax probabilities
        torch.testing.assert_close(scores.sum(0), torch.ones(80, 72))
    else:  # per class, a sum over queries of class probability x mask probability
        assert scores.min() >= 0 and scores.max() <= cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES


def run_args(sample_root: Path, output: Path, *extra: str, max_iter: int = 4, config: str = "quickstart.yaml"):
    return default_argument_parser().parse_args(
        tiny_run_argv(sample_root, output, *extra, max_iter=max_iter, config=config)
    )


class Kill(L.Callback):
    """Simulates a crash at the start of an iteration."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.at_step:
            raise KeyboardInterrupt("killed")


class RecordLR(L.Callback):
    def __init__(self) -> None:
        self.lrs: dict[int, float] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.lrs[trainer.global_step] = trainer.optimizers[0].param_groups[0]["lr"]


@pytest.mark.slow
def test_killed_run_resumes_exactly(sample_root: Path, tmp_path: Path) -> None:
    whole_args = run_args(sample_root, tmp_path / "whole")
    whole_lr = RecordLR()
    train(setup(whole_args), whole_args, callbacks=[whole_lr])
    whole = read_checkpoint(tmp_path / "whole" / "model_final.pth")

    args = run_args(sample_root, tmp_path / "killed")
    with pytest.raises((KeyboardInterrupt, SystemExit)):
        train(setup(args), args, callbacks=[Kill(at_step=3)])
    assert (tmp_path / "killed" / "checkpoints" / "last.ckpt").is_file()
    assert not (tmp_path / "killed" / "model_final.pth").exists()

    args = run_args(sample_root, tmp_path / "killed")
    args.resume = True
    resumed_lr = RecordLR()
    train(setup(args), args, callbacks=[resumed_lr])
    assert min(resumed_lr.lrs) == 2  # continued at the last checkpoint's iteration
    assert resumed_lr.lrs[2] == whole_lr.lrs[2] and resumed_lr.lrs[3] == whole_lr.lrs[3]
    resumed = read_checkpoint(tmp_path / "killed" / "model_final.pth")
    for key, value in whole.items():
        torch.testing.assert_close(resumed[key], value, rtol=0, atol=1e-6, msg=key)

    final = json.loads((tmp_path / "whole" / "final_metrics.json").read_text())["results"]["trash_val"]
    eval_args = run_args(sample_root, tmp_path / "eval", "MODEL.WEIGHTS", str(tmp_path / "whole" / "model_final.pth"))
    eval_args.eval_only = True
    again = evaluate_only(setup(eval_args), eval_args)["trash_val"]
    assert again["mIoU"] == pytest.approx(final["mIoU"], abs=1e-9)
    assert (tmp_path / "whole" / "eval" / "trash_val" / "confusion_matrix.png").is_file()
    assert (tmp_path / "whole" / "loss_curve.png").is_file()
    assert (tmp_path / "whole" / "config.yaml").is_file() and (tmp_path / "whole" / "metrics.csv").is_file()


@pytest.mark.slow
def test_headline_command_trains_dinat_on_the_cpu(sample_root: Path, tmp_path: Path) -> None:
    """train_net.py --config-file configs/m2f_dinat_l.yaml --num-gpus 1, at tiny widths on the CPU."""
    args = run_args(sample_root, tmp_path / "dinat", max_iter=2, config="m2f_dinat_l.yaml")
    argv = ["--config-file", args.config_file, "--num-gpus", "0", *args.opts]
    results = main(argv)["trash_val"]
    assert 0.0 <= results["mIoU"] <= 1.0
    saved = get_cfg()
    saved.merge_from_file(str(tmp_path / "dinat" / "config.yaml"))
    assert saved.MODEL.BACKBONE.NAME == "D2DiNAT" and saved.MODEL.DINAT.KERNEL_SIZE == 3
    weights = read_checkpoint(tmp_path / "dinat" / "model_final.pth")
    assert "backbone.levels.2.blocks.1.attn.rpb" in weights


def test_checkpoint_round_trip_class_change_and_refusal(tmp_path: Path) -> None:
    cfg = tiny_cfg()
    model = build_model(cfg)
    torch.save({"model": model.state_dict()}, tmp_path / "model.pth")
    copy = build_model(cfg)
    load_checkpoint_into(copy, tmp_path / "model.pth")
    for key, value in model.state_dict().items():
        assert torch.equal(copy.state_dict()[key], value), key

    cfg5 = tiny_cfg()
    cfg5.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 5
    five = build_model(cfg5)
    report = load_checkpoint_into(five, tmp_path / "model.pth")
    assert sorted(report.reinitialised) == sorted(
        [
            "sem_seg_head.predictor.class_embed.weight",
            "sem_seg_head.predictor.class_embed.bias",
            "criterion.empty_weight",
        ]
    )
    assert torch.equal(
        five.backbone.layers[0].blocks[0].attn.qkv.weight, model.backbone.layers[0].blocks[0].attn.qkv.weight
    )

    wider = tiny_cfg()
    wider.merge_from_list(["MODEL.SEM_SEG_HEAD.CONVS_DIM", "64"])
    with pytest.raises(CheckpointMismatchError, match=r"shape-mismatched: sem_seg_head.pixel_decoder"):
        load_checkpoint_into(build_model(wider), tmp_path / "model.pth")


class PoisonLoss(L.Callback):
    """Makes the loss non-finite from iteration `at_step` on."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.at_step:
            criterion = pl_module.model.criterion
            original = criterion.forward
            criterion.forward = lambda *a, **k: {key: v * float("nan") for key, v in original(*a, **k).items()}


def test_non_finite_loss_stops_naming_the_iteration(sample_root: Path, tmp_path: Path) -> None:
    args = run_args(sample_root, tmp_path / "nan")
    with pytest.raises(FloatingPointError, match=r"loss became nan at iteration 3; losses: \{'loss_ce': nan"):
        train(setup(args), args, callbacks=[PoisonLoss(at_step=3)])
    last = torch.load(tmp_path / "nan" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 2  # the last good checkpoint stays
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())


def test_bf16_autocast_on_the_cpu_only_when_asked(sample_root: Path, tmp_path: Path) -> None:
    for extra, expected in ((("SOLVER.AMP.ENABLED", "True"), "32-true"), (("SOLVER.AMP.ON_CPU", "True"), "bf16-mixed")):
        args = run_args(sample_root, tmp_path / expected, *extra)
        trainer, _ = build_trainer(setup(args), args)
        assert trainer.precision == expected
