"""Engine pieces that need no full model: parameter groups, poly LR, the sampler, checkpoint loading."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from mask2former.data.samplers import InfiniteSampler
from mask2former.engine.optimizer import parameter_groups, poly_lr_factor
from mask2former.io.checkpoints import CheckpointMismatchError, read_checkpoint
from mask2former.modeling.weights import load_checkpoint_into, load_model_weights


class _Attn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.relative_position_bias_table = nn.Parameter(torch.zeros(9, 2))
        self.qkv = nn.Linear(4, 12)


class _Predictor(nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.query_feat = nn.Embedding(3, 4)
        self.class_embed = nn.Linear(4, num_classes + 1)
        self.decoder_norm = nn.LayerNorm(4)


class _Head(nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.predictor = _Predictor(num_classes)


class _Backbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = _Attn()
        self.norm0 = nn.LayerNorm(4)


class _Criterion(nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.register_buffer("empty_weight", torch.ones(num_classes + 1))


class TinyModel(nn.Module):
    """Official key names in miniature: backbone.*, sem_seg_head.predictor.*, criterion.empty_weight."""

    def __init__(self, num_classes: int = 11) -> None:
        super().__init__()
        self.backbone = _Backbone()
        self.sem_seg_head = _Head(num_classes)
        self.criterion = _Criterion(num_classes)


def _group_of(groups: list[dict], param: nn.Parameter) -> dict:
    return next(g for g in groups if any(p is param for p in g["params"]))


def test_parameter_groups_follow_the_recipe() -> None:
    model = TinyModel()
    groups = parameter_groups(model, base_lr=1e-4, weight_decay=0.05, backbone_multiplier=0.1)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    qkv = _group_of(groups, model.backbone.attn.qkv.weight)
    assert qkv["lr"] == pytest.approx(1e-5) and qkv["weight_decay"] == 0.05
    table = _group_of(groups, model.backbone.attn.relative_position_bias_table)
    assert table["lr"] == pytest.approx(1e-5) and table["weight_decay"] == 0.0
    assert _group_of(groups, model.backbone.norm0.weight)["weight_decay"] == 0.0
    query = _group_of(groups, model.sem_seg_head.predictor.query_feat.weight)
    assert query["lr"] == 1e-4 and query["weight_decay"] == 0.0
    head = _group_of(groups, model.sem_seg_head.predictor.class_embed.weight)
    assert head["lr"] == 1e-4 and head["weight_decay"] == 0.05
    assert _group_of(groups, model.sem_seg_head.predictor.decoder_norm.bias)["weight_decay"] == 0.0


def test_poly_lr_factor() -> None:
    assert poly_lr_factor(0, 100) == 1.0
    assert poly_lr_factor(50, 100, power=0.9) == pytest.approx(0.5**0.9)
    assert poly_lr_factor(100, 100) == 0.0
    assert poly_lr_factor(0, 100, warmup_iters=10, warmup_factor=0.1) == pytest.approx(0.1)
    assert poly_lr_factor(5, 100, warmup_iters=10, warmup_factor=0.1) == pytest.approx(0.55 * 0.95**0.9)
    assert poly_lr_factor(99, 100, constant_ending=0.05) == 0.05


def _take(sampler: InfiniteSampler, count: int) -> list[tuple[int, int]]:
    iterator = iter(sampler)
    return [next(iterator) for _ in range(count)]


def test_infinite_sampler_resumes_and_shards() -> None:
    full = _take(InfiniteSampler(7, seed=3), 30)
    assert sorted(i for e, i in full if e == 0) == list(range(7))  # each epoch is a permutation
    assert [e for e, _ in full[:14]] == [0] * 7 + [1] * 7
    assert [i for _, i in full[:7]] != [i for _, i in full[7:14]]
    assert _take(InfiniteSampler(7, seed=3, start=12), 18) == full[12:30]  # resume = same stream
    rank0 = _take(InfiniteSampler(7, seed=3, rank=0, world_size=2), 15)
    rank1 = _take(InfiniteSampler(7, seed=3, rank=1, world_size=2), 15)
    assert rank0 == full[0:30:2] and rank1 == full[1:30:2]
    with pytest.raises(ValueError, match="empty"):
        InfiniteSampler(0)


def test_checkpoint_round_trip_formats(tmp_path: Path) -> None:
    model = TinyModel()
    state = model.state_dict()
    torch.save({"model": state}, tmp_path / "a.pth")
    torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()}, "global_step": 3}, tmp_path / "b.ckpt")
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "c.safetensors"))
    for name in ("a.pth", "b.ckpt", "c.safetensors"):
        other = TinyModel()
        report = load_checkpoint_into(other, tmp_path / name)
        assert report.loaded == len(state) and not report.missing and not report.unexpected
        for key, value in other.state_dict().items():
            assert torch.equal(value, state[key]), (name, key)


def test_detectron2_pickle_loads_without_opt_in_and_full_pickles_need_it(tmp_path: Path) -> None:
    arrays = {"model": {k: v.numpy() for k, v in TinyModel().state_dict().items()}, "__author__": "someone"}
    with (tmp_path / "d2.pkl").open("wb") as handle:
        pickle.dump(arrays, handle)
    state = read_checkpoint(tmp_path / "d2.pkl")  # numpy arrays only: the restricted unpickler reads it
    assert torch.equal(state["criterion.empty_weight"], TinyModel().state_dict()["criterion.empty_weight"])

    torch.save({"model": TinyModel().state_dict(), "extra": Path("an object, not a tensor")}, tmp_path / "evil.pth")
    with pytest.raises(PermissionError, match="not loaded"):
        read_checkpoint(tmp_path / "evil.pth")


def test_class_count_change_reinitialises_only_the_class_head() -> None:
    source = TinyModel(num_classes=150)
    target = TinyModel(num_classes=11)
    before = target.sem_seg_head.predictor.class_embed.weight.clone()
    report = load_model_weights(target, source.state_dict())
    assert sorted(report.reinitialised) == sorted(
        [
            "sem_seg_head.predictor.class_embed.weight",
            "sem_seg_head.predictor.class_embed.bias",
            "criterion.empty_weight",
        ]
    )
    assert torch.equal(target.sem_seg_head.predictor.class_embed.weight, before)
    assert torch.equal(target.backbone.attn.qkv.weight, source.backbone.attn.qkv.weight)


def test_other_architecture_is_refused_with_the_keys() -> None:
    other = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(CheckpointMismatchError) as error:
        load_model_weights(TinyModel(), other.state_dict(), source="other.pth")
    text = str(error.value)
    assert "other.pth does not fit" in text and "unexpected: 0.weight" in text
    assert "missing: backbone.attn.relative_position_bias_table" in text
    state = TinyModel().state_dict()
    state["backbone.attn.qkv.weight"] = torch.zeros(12, 8)
    with pytest.raises(CheckpointMismatchError, match=r"shape-mismatched: backbone.attn.qkv.weight \(12, 8\) vs"):
        load_model_weights(TinyModel(), state)
    report = load_model_weights(TinyModel(), state, strict=False)
    assert report.shape_mismatch and report.loaded == len(state) - 1


def test_missing_checkpoint_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        read_checkpoint(tmp_path / "nope.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(CheckpointMismatchError, match="expected a dict of tensors"):
        read_checkpoint(tmp_path / "list.pth")


def test_a_backbone_checkpoint_given_as_a_whole_model_is_pointed_to_backbone_weights() -> None:
    # ImageNet-style: the backbone's keys without "backbone.", plus a classifier this model has no place for
    backbone_only = {**TinyModel().backbone.state_dict(), "head.weight": torch.zeros(10, 8)}
    with pytest.raises(CheckpointMismatchError, match="MODEL.BACKBONE.WEIGHTS.*convert_checkpoint") as error:
        load_model_weights(TinyModel(), backbone_only, source="imagenet.pth")
    assert "strict=False" not in str(error.value)  # loading nothing with strict=False would not help
