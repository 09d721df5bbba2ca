"""The training loss does not depend on how a global batch is split over processes.

DDP averages the gradients of the ranks, so W ranks with batches B_1..B_W must give, averaged, the loss and the
gradients one process gives on B_1 + ... + B_W. The ranks are simulated in one process: `as_ranks` runs each
shard with `global_normalizers` answering what an all_reduce over the shards would; one test runs two real
processes (gloo) as well.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from conftest import REPO, TINY_MODEL

from mask2former.config import load_config
from mask2former.data.dataset import SAMPLE_SEED as DATASET_KEY
from mask2former.data.dataset import MapDataset, sample_seed
from mask2former.modeling import criterion as set_criterion
from mask2former.modeling import matcher as matcher_module
from mask2former.modeling.build import build_model
from mask2former.modeling.criterion import SetCriterion, target_classes
from mask2former.modeling.matcher import HungarianMatcher
from mask2former.modeling.point_sampling import LOSS_POINTS, MATCHER_POINTS, SAMPLE_SEED, point_generator

CLASSES, QUERIES, SIZE, POINTS = 7, 5, 16, 64
COUNTS = (2, 0, 6, 1)  # an image without targets, and one with more targets than queries
SPLITS = {
    "halves": [[0, 1], [2, 3]],
    "interleaved": [[0, 2], [1, 3]],  # what InfiniteSampler gives 2 ranks
    "four ranks": [[0], [1], [2], [3]],  # a rank whose only image has no target
}


def make_targets(counts: tuple[int, ...] = COUNTS, seeded: bool = True, first_seed: int = 1000) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    targets = []
    for image, count in enumerate(counts):
        target = {
            "labels": torch.randperm(CLASSES, generator=generator)[:count],
            "masks": (torch.rand(count, SIZE, SIZE, generator=generator) > 0.5).float(),
        }
        if seeded:
            target[SAMPLE_SEED] = first_seed + image
        targets.append(target)
    return targets


def make_outputs(batch: int = 4, aux: int = 2) -> dict:
    generator = torch.Generator().manual_seed(1)

    def layer() -> dict:
        return {
            "pred_logits": torch.randn(batch, QUERIES, CLASSES + 1, generator=generator).requires_grad_(),
            "pred_masks": (2 * torch.randn(batch, QUERIES, SIZE // 2, SIZE // 2, generator=generator)).requires_grad_(),
        }

    return {**layer(), "aux_outputs": [layer() for _ in range(aux)]}


def leaves(outputs: dict) -> list[torch.Tensor]:
    layers = [outputs, *outputs.get("aux_outputs", [])]
    return [layer[key] for layer in layers for key in ("pred_logits", "pred_masks")]


def rows(outputs: dict, shard: list[int]) -> dict:
    """The outputs of the images `shard` (differentiably: gradients reach the full outputs)."""

    def take(layer: dict) -> dict:
        return {key: layer[key][shard] for key in ("pred_logits", "pred_masks")}

    return {**take(outputs), "aux_outputs": [take(aux) for aux in outputs.get("aux_outputs", [])]}


def criterion(aux: int = 2, **kwargs) -> SetCriterion:
    weights = {"loss_ce": 2.0, "loss_mask": 5.0, "loss_dice": 5.0}
    weights.update({f"{key}_{i}": value for i in range(aux) for key, value in list(weights.items())})
    return SetCriterion(CLASSES, HungarianMatcher(num_points=POINTS), weights, num_points=POINTS, **kwargs)


def as_ranks(monkeypatch: pytest.MonkeyPatch, shards: list[list[int]], run: Callable[[list[int]], dict]) -> list:
    """`run(shard)` for every shard as rank r of a world of len(shards): a first pass records each rank's
    `global_normalizers` arguments; in the second, the k-th call of every rank gets the sum of the ranks' k-th
    arguments and the world size, as an all_reduce would give."""
    seen: list[list[torch.Tensor]] = [[] for _ in shards]
    rank = 0

    def record(local: torch.Tensor) -> tuple[torch.Tensor, int]:
        seen[rank].append(local.detach().clone())
        return local, 1

    monkeypatch.setattr(set_criterion, "global_normalizers", record)
    for rank, shard in enumerate(shards):  # noqa: B007 (read by record)
        run(shard)
    assert len({len(calls) for calls in seen}) == 1, "ranks call the collective a different number of times"
    reduced = [torch.stack(calls).sum(0) for calls in zip(*seen, strict=True)]
    calls = 0

    def all_reduce(local: torch.Tensor) -> tuple[torch.Tensor, int]:
        nonlocal calls
        torch.testing.assert_close(local, seen[rank][calls])  # the same local values as in the first pass
        calls += 1
        return reduced[calls - 1], len(shards)

    monkeypatch.setattr(set_criterion, "global_normalizers", all_reduce)
    results = []
    for rank, shard in enumerate(shards):  # noqa: B007 (read by all_reduce)
        calls = 0
        results.append(run(shard))
    return results


def assert_same_as_one_process(full: dict, per_rank: list[dict], atol: float = 1e-6) -> None:
    assert all(set(losses) == set(full) for losses in per_rank)
    for key, value in full.items():
        averaged = torch.stack([losses[key] for losses in per_rank]).mean()
        torch.testing.assert_close(averaged, value, atol=atol, rtol=atol, msg=lambda m, key=key: f"{key}: {m}")


# ---- the class loss normalisation -------------------------------------------------------------------------------
def test_one_process_class_loss_is_the_weighted_cross_entropy() -> None:
    model, outputs, targets = criterion(), make_outputs(), make_targets()
    losses = model(outputs, targets)
    for stream, (layer, suffix) in enumerate(zip(leaves(outputs)[::2], ["", "_0", "_1"], strict=True)):
        indices = model.matcher({"pred_logits": layer, "pred_masks": leaves(outputs)[2 * stream + 1]}, targets, stream)
        assert [len(rows) for rows, _ in indices] == [min(QUERIES, count) for count in COUNTS]
        classes = target_classes(layer, targets, indices, CLASSES)
        expected = F.cross_entropy(layer.transpose(1, 2), classes, model.empty_weight)
        torch.testing.assert_close(losses[f"loss_ce{suffix}"], expected, atol=1e-6, rtol=1e-6)


def test_class_weights_other_than_one_keep_the_weighted_mean() -> None:
    model, outputs, targets = criterion(aux=0), make_outputs(aux=0), make_targets()
    model.empty_weight.copy_(torch.linspace(0.5, 2.0, CLASSES + 1))
    classes = target_classes(outputs["pred_logits"], targets, model.matcher(outputs, targets), CLASSES)
    expected = F.cross_entropy(outputs["pred_logits"].transpose(1, 2), classes, model.empty_weight)
    torch.testing.assert_close(model(outputs, targets)["loss_ce"], expected, atol=1e-6, rtol=1e-6)


# ---- split over ranks ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("split", SPLITS)
def test_losses_and_gradients_do_not_depend_on_the_split(monkeypatch: pytest.MonkeyPatch, split: str) -> None:
    model, outputs, targets = criterion(), make_outputs(), make_targets()
    full = model(outputs, targets)
    assert len(full) == 9  # deep supervision: 3 losses x (final + 2 aux)
    expected_grads = torch.autograd.grad(model.weighted_total(full), leaves(outputs))
    per_rank = as_ranks(
        monkeypatch, SPLITS[split], lambda shard: model(rows(outputs, shard), [targets[i] for i in shard])
    )
    assert_same_as_one_process(full, per_rank)
    # DDP's gradient: the mean over the ranks of each rank's gradient
    averaged = torch.stack([model.weighted_total(losses) for losses in per_rank]).mean()
    for got, expected in zip(torch.autograd.grad(averaged, leaves(outputs)), expected_grads, strict=True):
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)


def test_rank_local_normalisation_would_differ() -> None:
    """The split test can fail: dividing by each rank's own weight sum (F.cross_entropy's mean) does not give the
    global weighted mean when the ranks hold different numbers of targets."""
    model, outputs, targets = criterion(aux=0), make_outputs(aux=0), make_targets()
    full = model(outputs, targets)
    halves = [model(rows(outputs, shard), [targets[i] for i in shard]) for shard in SPLITS["halves"]]
    assert abs(float((halves[0]["loss_ce"] + halves[1]["loss_ce"]).detach() / 2 - full["loss_ce"].detach())) > 1e-3


def test_an_all_empty_rank_still_gives_a_loss_with_a_graph(monkeypatch: pytest.MonkeyPatch) -> None:
    model, outputs, targets = criterion(), make_outputs(batch=2), make_targets((0, 3))
    per_rank = as_ranks(monkeypatch, [[0], [1]], lambda shard: model(rows(outputs, shard), [targets[i] for i in shard]))
    empty = per_rank[0]
    assert float(empty["loss_mask"]) == 0.0 and float(empty["loss_ce"]) > 0
    model.weighted_total(empty).backward()  # every rank must reach backward (DDP)
    assert outputs["pred_logits"].grad[0].abs().sum() > 0 and outputs["pred_logits"].grad[1].abs().sum() == 0


# ---- per-sample random points ------------------------------------------------------------------------------------
def matcher_points(monkeypatch: pytest.MonkeyPatch, outputs: dict, targets: list[dict], layer: int) -> list:
    """The matcher's points for each image with targets (spying on its point_sample)."""
    drawn: list[torch.Tensor] = []
    original = matcher_module.point_sample

    def spy(masks: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        drawn.append(points[0].clone())
        return original(masks, points)

    monkeypatch.setattr(matcher_module, "point_sample", spy)
    HungarianMatcher(num_points=POINTS)(outputs, targets, layer)
    monkeypatch.setattr(matcher_module, "point_sample", original)
    return drawn[::2]  # two calls per image: predictions, targets


def test_points_of_a_sample_do_not_depend_on_its_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    model, outputs, targets = criterion(), make_outputs(), make_targets()
    alone, batch = [3], [2, 1, 3]  # image 3 alone, then third behind other images
    for layer in (0, 1):
        first = matcher_points(monkeypatch, rows(outputs, alone), [targets[i] for i in alone], layer)
        again = matcher_points(monkeypatch, rows(outputs, batch), [targets[i] for i in batch], layer)
        assert torch.equal(first[0], again[-1])

        def loss_points(shard: list[int], layer: int = layer) -> torch.Tensor:
            part, chosen = rows(outputs, shard), [targets[i] for i in shard]
            return model._uncertain_points(part, chosen, model.matcher(part, chosen, layer), layer)

        assert torch.equal(loss_points(alone), loss_points(batch)[-COUNTS[3] :])


def test_layers_and_purposes_draw_different_points(monkeypatch: pytest.MonkeyPatch) -> None:
    def draw(layer: int, purpose: int) -> torch.Tensor:
        return torch.rand(100, 2, generator=point_generator(7, layer, purpose, "cpu"))

    assert torch.equal(draw(0, LOSS_POINTS), draw(0, LOSS_POINTS))
    streams = [draw(layer, purpose) for layer in range(3) for purpose in (MATCHER_POINTS, LOSS_POINTS)]
    assert all(not torch.equal(a, b) for i, a in enumerate(streams) for b in streams[i + 1 :])
    outputs, targets = make_outputs(batch=1), make_targets((3,))
    assert not torch.equal(
        matcher_points(monkeypatch, outputs, targets, 0)[0], matcher_points(monkeypatch, outputs, targets, 1)[0]
    )
    assert point_generator(None, 0, LOSS_POINTS, "cpu") is None


def test_seeded_points_ignore_the_global_rng() -> None:
    model, outputs, targets = criterion(), make_outputs(), make_targets()
    torch.manual_seed(0)
    first = model(outputs, targets)
    torch.manual_seed(1)
    again = model(outputs, targets)
    assert all(torch.equal(first[key], again[key]) for key in first)
    other = model(outputs, make_targets(first_seed=2000))  # other samples, other points
    assert not torch.equal(first["loss_mask"], other["loss_mask"])


def test_inputs_without_a_sample_seed_draw_from_the_global_rng() -> None:
    model, outputs, targets = criterion(), make_outputs(), make_targets(seeded=False)
    torch.manual_seed(0)
    first = model(outputs, targets)
    torch.manual_seed(0)
    again = model(outputs, targets)
    torch.manual_seed(1)
    other = model(outputs, targets)
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert not torch.equal(first["loss_mask"], other["loss_mask"])
    total = model.weighted_total(first)
    assert torch.isfinite(total)
    total.backward()
    assert all(leaf.grad is not None and leaf.grad.abs().sum() > 0 for leaf in leaves(outputs))


# ---- the data pipeline's key ------------------------------------------------------------------------------------
def test_map_dataset_gives_each_sample_a_key_of_seed_epoch_and_index() -> None:
    def mapper(record: dict, rng: np.random.Generator) -> dict:
        return {"name": record["name"], "draw": rng.random()}

    dicts = [{"name": name} for name in "abc"]
    dataset = MapDataset(dicts, mapper, seed=3)
    assert DATASET_KEY == SAMPLE_SEED
    keys = {}
    for seed in (3, 4):
        for epoch in (0, 1):
            for index in range(3):
                sample = MapDataset(dicts, mapper, seed=seed)[(epoch, index)]
                key = sample[SAMPLE_SEED]
                assert type(key) is int and 0 <= key < 2**63 and key == sample_seed(seed, epoch, index)
                # the mapper's rng is untouched by the key
                assert sample["draw"] == np.random.default_rng([seed, epoch, index]).random()
                keys[(seed, epoch, index)] = key
    assert len(set(keys.values())) == len(keys)
    # the key depends on (seed, epoch, index) only: not on the record, the instance or the way of indexing
    other = MapDataset([{"name": "z"}] * 3, mapper, seed=3)
    other.set_epoch(1)
    assert other[2][SAMPLE_SEED] == keys[(3, 1, 2)] == dataset[(1, 2)][SAMPLE_SEED]


# ---- whole models ------------------------------------------------------------------------------------------------
def model_batch() -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    items = []
    for index, classes in enumerate(((1, 4), (), (0, 2, 3, 5, 7), (6,))):
        label = torch.full((64, 64), 255, dtype=torch.long)
        for order, cls in enumerate(classes):
            label[:, order * 12 : (order + 1) * 12 + 2] = cls
        image = torch.randint(0, 255, (3, 64, 64), generator=generator, dtype=torch.uint8)
        items.append({"image": image, "sem_seg": label, SAMPLE_SEED: sample_seed(0, 0, index)})
    return items


@pytest.mark.parametrize("config", ["quickstart.yaml", "quickstart_semask.yaml"])
def test_a_whole_model_trains_alike_split_over_ranks(monkeypatch: pytest.MonkeyPatch, config: str) -> None:
    cfg = load_config(str(REPO / "configs" / config), [*TINY_MODEL, "MODEL.SWIN.DROP_PATH_RATE", "0.0"])
    torch.manual_seed(0)
    model = build_model(cfg).train()
    inputs = model_batch()
    parameters = [p for p in model.parameters() if p.requires_grad]
    full = model(inputs)
    expected_grads = torch.autograd.grad(model.criterion.weighted_total(full), parameters, allow_unused=True)
    per_rank = as_ranks(monkeypatch, SPLITS["halves"], lambda shard: model([inputs[i] for i in shard]))
    assert_same_as_one_process(full, per_rank, atol=1e-5)
    averaged = torch.stack([model.criterion.weighted_total(losses) for losses in per_rank]).mean()
    got_grads = torch.autograd.grad(averaged, parameters, allow_unused=True)
    for got, expected in zip(got_grads, expected_grads, strict=True):
        if expected is not None:
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


# ---- two real processes ------------------------------------------------------------------------------------------
def _rank_losses(rank: int, world: int, port: int, folder: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        model, outputs, targets = criterion(), make_outputs(), make_targets()
        shard = SPLITS["halves"][rank]
        losses = model(rows(outputs, shard), [targets[i] for i in shard])
        grads = torch.autograd.grad(model.weighted_total(losses), leaves(outputs))
        torch.save({"losses": {k: v.detach() for k, v in losses.items()}, "grads": grads}, f"{folder}/{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_processes_give_the_one_process_loss(tmp_path: Path) -> None:
    mp.spawn(_rank_losses, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"{rank}.pt", weights_only=True) for rank in range(2)]
    model, outputs, targets = criterion(), make_outputs(), make_targets()
    full = model(outputs, targets)
    assert_same_as_one_process({k: v.detach() for k, v in full.items()}, [r["losses"] for r in ranks])
    expected = torch.autograd.grad(model.weighted_total(full), leaves(outputs))
    for index, grad in enumerate(expected):
        averaged = (ranks[0]["grads"][index] + ranks[1]["grads"][index]) / 2
        torch.testing.assert_close(averaged, grad, atol=1e-6, rtol=1e-5)
