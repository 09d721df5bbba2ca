"""PerPixelSegmentor and TimmBackbone: the loss against a direct computation, class-count changes, timm weights,
refusals, and a tiny per-pixel model through train_net and --eval-only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import REPO, TINY_MODEL, Changes, ConfigKeyCheck, make_tiny, tiny_run_argv, tiny_training_opts

from mask2former.config import ConfigError, get_cfg, load_config
from mask2former.engine.arguments import default_argument_parser
from mask2former.engine.launch import setup
from mask2former.engine.training import evaluate_only, train
from mask2former.io.probabilities import load_probabilities, probability_path
from mask2former.modeling.backbone.timm_backbone import TimmBackbone
from mask2former.modeling.build import build_model
from mask2former.modeling.per_pixel.criterion import PerPixelCriterion
from mask2former.modeling.weights import load_model_weights
from mask2former.pipeline import ensemble_crf
from mask2former.pipeline import predict as predict_pipeline
from mask2former.pipeline.ensemble_crf import EnsembleOptions
from mask2former.utils.registry import UnknownNameError


def tiny(name: str = "quickstart_upernet.yaml", *opts: str):
    cfg = get_cfg()
    cfg.merge_from_file(str(REPO / "configs" / name))
    make_tiny(cfg)
    cfg.merge_from_list(list(opts))
    return cfg


def test_cross_entropy_is_the_mean_over_labelled_pixels_of_the_upsampled_logits() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 4, 4, generator=generator)
    labels = torch.randint(0, 5, (2, 16, 16), generator=generator)
    labels[0, :8] = 255
    losses = PerPixelCriterion(ce_weight=1.0, aux_weight=0.4, num_aux=1)(
        {"logits": logits, "aux_logits": [logits * 2]}, labels
    )
    up = F.interpolate(logits, size=(16, 16), mode="bilinear", align_corners=False)
    keep = labels != 255
    expected = -F.log_softmax(up, 1).gather(1, labels.clamp_max(4)[:, None])[:, 0][keep].mean()
    torch.testing.assert_close(losses["loss_ce"], expected)
    up2 = F.interpolate(logits * 2, size=(16, 16), mode="bilinear", align_corners=False)
    torch.testing.assert_close(losses["loss_aux_ce_0"], F.cross_entropy(up2, labels, ignore_index=255))
    criterion = PerPixelCriterion(ce_weight=1.0, aux_weight=0.4, num_aux=1)
    total = criterion.weighted_total(losses)
    torch.testing.assert_close(total, losses["loss_ce"] + 0.4 * losses["loss_aux_ce_0"])


def test_extra_losses_are_trained_only_when_weighted() -> None:
    labels = torch.randint(0, 3, (1, 8, 8))
    logits = torch.randn(1, 3, 8, 8, requires_grad=True)
    plain = PerPixelCriterion()({"logits": logits}, labels)
    assert set(plain) == {"loss_ce"}
    weighted = PerPixelCriterion(dice_weight=1.0, focal_weight=0.5, lovasz_weight=0.25)({"logits": logits}, labels)
    assert set(weighted) == {"loss_ce", "loss_dice", "loss_focal", "loss_lovasz"}
    assert all(torch.isfinite(value) and value > 0 for value in weighted.values())


def test_probabilities_are_softmax_at_the_requested_size_and_equal_batched_or_alone() -> None:
    cfg = tiny()
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    images = [
        torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8),
        torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8),
    ]
    with torch.no_grad():
        alone = [model([{"image": image, "height": 50, "width": 70}])[0]["sem_seg"] for image in images]
        together = model([{"image": image, "height": 50, "width": 70} for image in images])
    for single, batched in zip(alone, together, strict=True):
        assert single.shape == (cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, 50, 70)
        torch.testing.assert_close(single.sum(0), torch.ones(50, 70))
        torch.testing.assert_close(batched["sem_seg"], single, atol=1e-5, rtol=1e-4)  # same padding: same numbers


def test_a_checkpoint_of_another_class_count_reinitialises_exactly_the_classifiers() -> None:
    torch.manual_seed(0)
    source = build_model(tiny("quickstart_upernet.yaml", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "5"))
    target = build_model(tiny())
    report = load_model_weights(target, source.state_dict(), strict=True, fresh_head_ok=True)
    assert sorted(report.reinitialised) == sorted(target.class_head_keys())
    assert {key.rsplit(".", 2)[0] for key in report.reinitialised} == {
        "sem_seg_head.classifier",
        "aux_head.classifier",
    }
    assert not report.shape_mismatch and not report.missing
    for key, value in source.state_dict().items():
        if key not in report.reinitialised:
            torch.testing.assert_close(target.state_dict()[key], value, msg=key)


def test_timm_weights_load_through_timms_conversion(tmp_path: Path) -> None:
    import timm
    from safetensors.torch import save_file

    kwargs = {"dims": (16, 32, 64, 128)}
    torch.manual_seed(1)
    whole = timm.create_model("convnext_atto", pretrained=False, **kwargs)
    path = tmp_path / "convnext_atto.safetensors"
    save_file({key: value.contiguous() for key, value in whole.state_dict().items()}, str(path))
    torch.manual_seed(2)
    backbone = TimmBackbone("convnext_atto", kwargs)
    report = TimmBackbone.load_pretrained(backbone, path)
    assert not report["missing"] and all(key.startswith("head.") for key in report["unexpected"])
    torch.testing.assert_close(backbone.body.state_dict()["stages_1.blocks.0.conv_dw.weight"],
                               whole.state_dict()["stages.1.blocks.0.conv_dw.weight"])  # fmt: skip
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        features = backbone(image)
        expected = whole.forward_intermediates(image, intermediates_only=True)
    assert {name: tuple(f.shape[1:]) for name, f in features.items()} == {
        "res2": (16, 16, 16),
        "res3": (32, 8, 8),
        "res4": (64, 4, 4),
        "res5": (128, 2, 2),
    }
    torch.testing.assert_close(features["res5"], expected[-1])
    other = TimmBackbone("convnext_atto", {"dims": (8, 16, 32, 64)})
    with pytest.raises(ConfigError, match="does not fit timm model 'convnext_atto'"):
        TimmBackbone.load_pretrained(other, path)


def test_channels_last_timm_models_come_back_channels_first() -> None:
    kwargs = {"img_size": 64, "window_size": 4, "embed_dim": 16, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 2, 2)}
    backbone = TimmBackbone("swin_tiny_patch4_window7_224", kwargs)
    features = backbone(torch.randn(1, 3, 64, 64))
    assert backbone.channels_last
    assert features["res3"].shape == (1, 32, 8, 8) and backbone.output_shape()["res3"].stride == 8


def test_refusals_name_the_key() -> None:
    with pytest.raises(ConfigError, match="MODEL.TIMM.NAME 'no_such_model'"):
        TimmBackbone("no_such_model")
    with pytest.raises(ConfigError, match="DeepLabV3Plus needs a dilated backbone"):
        build_model(tiny("quickstart_upernet.yaml", "MODEL.PER_PIXEL.DECODER", "DeepLabV3Plus"))
    with pytest.raises(ConfigError, match="MODEL.PER_PIXEL.DECODER_CHANNELS 96"):
        build_model(tiny("quickstart_fpn.yaml", "MODEL.PER_PIXEL.DECODER_CHANNELS", "96"))
    with pytest.raises(UnknownNameError, match="MODEL.PER_PIXEL.DECODER 'PSP' is not registered"):
        build_model(tiny("quickstart_upernet.yaml", "MODEL.PER_PIXEL.DECODER", "PSP"))
    with pytest.raises(ConfigError, match="MODEL.PER_PIXEL.AUX_IN_FEATURE 'res9'"):
        build_model(tiny("quickstart_upernet.yaml", "MODEL.PER_PIXEL.AUX_IN_FEATURE", "res9"))
    model = build_model(tiny()).train()
    with pytest.raises(ConfigError, match="SOLVER.IMS_PER_BATCH"):
        model([{"image": torch.zeros(3, 64, 64, dtype=torch.uint8), "sem_seg": torch.zeros(64, 64, dtype=torch.long)}])


@pytest.fixture(scope="module")
def upernet_run(sample_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny UPerNet trained for 3 iterations through train_net's engine (the folder of the run)."""
    run = tmp_path_factory.mktemp("upernet") / "run"
    argv = tiny_run_argv(sample_root, run, max_iter=3, period=3, config="quickstart_upernet.yaml")
    args = default_argument_parser().parse_args(argv)
    train(setup(args), args)
    return run


@pytest.mark.slow
def test_a_tiny_upernet_trains_and_evaluates_through_the_engine(
    sample_root: Path, upernet_run: Path, tmp_path: Path
) -> None:
    final = json.loads((upernet_run / "final_metrics.json").read_text())["results"]["trash_val"]
    header = (upernet_run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "loss_ce" in header and "loss_mask" not in header
    eval_argv = tiny_run_argv(
        sample_root, tmp_path / "eval", "MODEL.WEIGHTS", str(upernet_run / "model_final.pth"),
        config="quickstart_upernet.yaml",
    )  # fmt: skip
    eval_args = default_argument_parser().parse_args(eval_argv)
    eval_args.eval_only = True
    again = evaluate_only(setup(eval_args), eval_args)["trash_val"]
    assert again["mIoU"] == pytest.approx(final["mIoU"], abs=1e-9)


@pytest.mark.slow
def test_a_per_pixel_model_predicts_with_tta_and_ensembles_with_a_mask2former(
    sample_root: Path, upernet_run: Path, tmp_path: Path
) -> None:
    tiny_opts = [*TINY_MODEL, "INPUT.MIN_SIZE_TEST", "64", "TEST.AUG.MIN_SIZES", "(64, 96)", "MODEL.DEVICE", "cpu"]
    val = sample_root / "val.json"

    def predict(config: str, weights: Path, out: Path, *flags: str) -> None:
        argv = ["--config-file", str(REPO / "configs" / config), "--weights", str(weights), "--json", str(val)]
        predict_pipeline.predict(predict_pipeline.parse_args([*argv, "--out", str(out), *flags, *tiny_opts]))

    predict("quickstart_upernet.yaml", upernet_run / "model_final.pth", tmp_path / "upernet", "--tta")
    meta = json.loads((tmp_path / "upernet" / "meta.json").read_text())
    assert meta["tta"] and len(meta["views"]) == 4  # 2 scales x flip
    torch.manual_seed(0)
    m2f = tmp_path / "m2f.pth"
    torch.save(
        {"model": build_model(load_config(str(REPO / "configs" / "quickstart.yaml"), TINY_MODEL)).state_dict()}, m2f
    )
    predict("quickstart.yaml", m2f, tmp_path / "m2f")
    images = json.loads(val.read_text())["images"]
    for image in images:
        stored = load_probabilities(probability_path(tmp_path / "upernet", image["file_name"]))
        assert stored["probs"].shape[0] == 11 and np.isfinite(stored["probs"]).all()

    folders = [tmp_path / "upernet", tmp_path / "m2f"]
    soft = ensemble_crf.run(EnsembleOptions(inputs=[str(f) for f in folders], out=str(tmp_path / "soft"), crf=True,
                                            gt=str(val)))  # fmt: skip
    assert soft["images"] == len(images)
    stages = soft["report"]["stages"]  # each input, the vote, the CRF, the final output
    assert len(stages) == 5 and all(0.0 <= stage["mIoU"] <= 1.0 for stage in stages)
    assert "upernet" in stages[0]["stage"] and "m2f" in stages[1]["stage"]
    csvs = [str(folder / "submission.csv") for folder in folders]
    hard = ensemble_crf.run(EnsembleOptions(inputs=csvs, out=str(tmp_path / "hard"), gt=str(val)))
    assert hard["images"] == len(images) and (tmp_path / "hard" / "submission.csv").is_file()


@pytest.mark.slow
@pytest.mark.subprocess
def test_pseudo_label_runs_a_round_of_a_per_pixel_model(sample_root: Path, upernet_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "pseudo"
    config = str(REPO / "configs" / "quickstart_upernet.yaml")
    argv = [sys.executable, str(REPO / "tools" / "pseudo_label.py"), "--config-file", config, "--weights",
            str(upernet_run / "model_final.pth"), "--unlabeled", str(sample_root / "test.json"), "--out", str(out),
            "--rounds", "1", "--threshold", "0.3", "--min-gain", "-1", "--overlays", "1",
            *tiny_training_opts(sample_root, tmp_path / "cache"),
            "SOLVER.MAX_ITER", "2", "MODEL.DEVICE", "cpu"]  # fmt: skip
    finished = subprocess.run(argv, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                              text=True)  # fmt: skip
    assert finished.returncode == 0, finished.stderr[-3000:]
    state = json.loads((out / "state.json").read_text())
    assert [entry["round"] for entry in state["rounds"]] == [1] and state["rounds"][0]["kept"]
    assert "PerPixelSegmentor" in (out / "round_1" / "train" / "config.yaml").read_text()
    final = json.loads((out / "round_1" / "train" / "final_metrics.json").read_text())
    assert final["iteration"] == 2 and final["results"]["trash_val"]["mIoU"] == state["rounds"][0]["mIoU"]


# ---- what each of the family's config keys does (tests/test_config_keys.py collects and runs these) -----------------

# one 64 px image: BatchNorm in UPerNet's 1x1 pooling branch cannot train on a batch of one
_KEYS_PER_PIXEL = ("MODEL.META_ARCHITECTURE", "PerPixelSegmentor", "MODEL.PER_PIXEL.DECODER_NORM", "'identity'")
_KEYS_TIMM = ("MODEL.BACKBONE.NAME", "TimmBackbone", "MODEL.TIMM.NAME", "'resnet18'")

CONFIG_KEY_CHECKS: dict[str, ConfigKeyCheck] = {
    "MODEL.TIMM.NAME": Changes("'convnext_atto'", "backbone", _KEYS_TIMM),
    "MODEL.TIMM.OUTPUT_STRIDE": Changes("16", "backbone_forward", _KEYS_TIMM),
    "MODEL.PER_PIXEL.DECODER": Changes("'FPN'", "model", _KEYS_PER_PIXEL),
    "MODEL.PER_PIXEL.DECODER_CHANNELS": Changes("128", "model", _KEYS_PER_PIXEL),
    "MODEL.PER_PIXEL.DECODER_NORM": Changes("'batchnorm'", "model", _KEYS_PER_PIXEL),
    "MODEL.PER_PIXEL.DROPOUT": Changes("0.5", "losses", _KEYS_PER_PIXEL),
    "MODEL.PER_PIXEL.ATROUS_RATES": Changes(
        "[1, 2, 3]",
        "eval",
        (*_KEYS_PER_PIXEL, *_KEYS_TIMM, "MODEL.TIMM.OUTPUT_STRIDE", "16", "MODEL.PER_PIXEL.DECODER", "'DeepLabV3Plus'"),
    ),
    "MODEL.PER_PIXEL.OCR_KEY_CHANNELS": Changes("32", "model", (*_KEYS_PER_PIXEL, "MODEL.PER_PIXEL.DECODER", "'OCR'")),
    "MODEL.PER_PIXEL.AUX_WEIGHT": Changes("1.0", "losses", _KEYS_PER_PIXEL),
    "MODEL.PER_PIXEL.AUX_IN_FEATURE": Changes("'res5'", "model", _KEYS_PER_PIXEL),
    "MODEL.PER_PIXEL.AUX_CHANNELS": Changes("8", "model", _KEYS_PER_PIXEL),
    "MODEL.PER_PIXEL.LOSS.CE_WEIGHT": Changes("2.0", "losses", _KEYS_PER_PIXEL),
    "MODEL.PER_PIXEL.LOSS.DICE_WEIGHT": Changes("1.0", "losses", _KEYS_PER_PIXEL),
    "MODEL.PER_PIXEL.LOSS.FOCAL_WEIGHT": Changes("1.0", "losses", _KEYS_PER_PIXEL),
    "MODEL.PER_PIXEL.LOSS.FOCAL_GAMMA": Changes(
        "0.5", "losses", (*_KEYS_PER_PIXEL, "MODEL.PER_PIXEL.LOSS.FOCAL_WEIGHT", "1.0")
    ),
    "MODEL.PER_PIXEL.LOSS.LOVASZ_WEIGHT": Changes("1.0", "losses", _KEYS_PER_PIXEL),
}
