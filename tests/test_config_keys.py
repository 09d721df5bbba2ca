"""Every leaf key of get_cfg() does something.

Each family's test module says, for each of its keys, how that is shown, in its CONFIG_KEY_CHECKS
(tests/test_swin.py for MODEL.SWIN.*, tests/test_semask.py for SeMask's, ...; this module's for the shared keys of
mask2former/config). KEYS is their union, collected from every tests/test_*.py that defines CONFIG_KEY_CHECKS; the
first test requires it to name exactly the keys get_cfg() has (SeMask's included), so a key added without a check
fails here, by name. A check (tests/conftest.py) is one of:
  Changes(value, observe, base)  setting `value` (over the overrides `base`) changes what the project builds or
                                 computes, as seen by the observer `observe`: a built model's parameters, its
                                 outputs or losses, a mapper's output on a fixed image, the optimizer's groups, the
                                 LR schedule, gradients after clipping, the trainer build_trainer makes, ...
                                 (run here, every one);
  Refused(value, observe, base)  any value but the default is refused, and `value` raises an error naming the key
                                 (from load_config, or from building what `observe` builds);
  CoveredBy("tests/x.py::test")  shown by that test (which must exist and name the full key);
  Recorded(reason)               nothing reads it, by design, and the reason says why (a handful).
A last guard: every key except the recorded ones is read somewhere in the package, found by its full path in the
package's syntax trees (`cfg.MODEL.SWIN.EMBED_DIM`, or `swin.EMBED_DIM` / `swin["EMBED_DIM"]` after
`swin = cfg.MODEL.SWIN`), besides the few reads INDIRECT_READS lists with their reasons.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import pickle
import re
import textwrap
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
from conftest import (
    REPO,
    TINY_MODEL,
    Changes,
    ConfigKeyCheck,
    CoveredBy,
    Recorded,
    Refused,
    tiny_coco_dict,
    write_tiny_coco,
)
from torch import nn

from mask2former.config import ONLY_DEFAULT, ConfigError, flatten_keys, get_cfg, load_config
from mask2former.errors import UserError

# ---- the checks of the shared keys (the families' are in their test modules) ------------------------------------

SEMASK_MODEL = (
    "MODEL.META_ARCHITECTURE",
    "SeMaskMaskFormer",
    "MODEL.BACKBONE.NAME",
    "D2SeMaskSwinTransformer",
    "MODEL.SEM_SEG_HEAD.NAME",
    "BranchMaskFormerHead",
)
RESNET = ("MODEL.BACKBONE.NAME", "build_resnet_backbone")
VIT_PYRAMID = ("MODEL.BACKBONE.NAME", "ViTPyramid")
COLOR = ("INPUT.COLOR_AUG.PROB", "1.0")  # every jitter drawn, so each of its settings shows
WARMUP = ("SOLVER.WARMUP_ITERS", "20", "SOLVER.WARMUP_FACTOR", "0.1")
DATASETS = (
    "DATASETS.REGISTER",
    "[['keys_a', '{data}/coco/a.json', '{data}/coco'], ['keys_b', '{data}/coco/b.json', '{data}/coco']]",
    "DATASETS.TRAIN",
    "('keys_a',)",
    "DATASETS.TEST",
    "('keys_a',)",
    "DATASETS.LABEL_CACHE_DIR",
    "{data}/cache",
    "MODEL.SEM_SEG_HEAD.NUM_CLASSES",
    "5",
)


def one_dataset(name: str, json_name: str) -> tuple[str, ...]:
    """Overrides registering {data}/coco/<json_name> as `name`, used for training and testing."""
    return (
        "DATASETS.REGISTER",
        f"[['{name}', '{{data}}/coco/{json_name}', '{{data}}/coco']]",
        "DATASETS.TRAIN",
        f"('{name}',)",
        "DATASETS.TEST",
        f"('{name}',)",
        "DATASETS.LABEL_CACHE_DIR",
        "{data}/cache",
    )


BANK = (*DATASETS, "INPUT.COPY_PASTE.ENABLED", "True", "INPUT.COPY_PASTE.CLASSES", "['Metal', 'Paper']")
PASTE = ("INPUT.COPY_PASTE.ENABLED", "True", "INPUT.COPY_PASTE.PROB", "1.0", "INPUT.COPY_PASTE.MIN_AREA", "16")

CONFIG_KEY_CHECKS: dict[str, ConfigKeyCheck] = {
    "VERSION": Refused("1"),
    "SEED": Changes("7", "module"),
    "OUTPUT_DIR": Changes("{data}/other_output", "trainer"),
    # ---- INPUT
    "INPUT.FORMAT": Changes("'BGR'", "test_mapper"),
    "INPUT.DATASET_MAPPER_NAME": Refused("'mask_former_panoptic'"),
    "INPUT.MIN_SIZE_TRAIN": Changes("(80,)", "train_mapper"),
    "INPUT.MIN_SIZE_TRAIN_SAMPLING": Changes("'range'", "train_mapper", ("INPUT.MIN_SIZE_TRAIN", "(40, 120)")),
    "INPUT.MAX_SIZE_TRAIN": Changes("100", "train_mapper"),
    "INPUT.MIN_SIZE_TEST": Changes("32", "test_mapper"),
    "INPUT.MAX_SIZE_TEST": Changes("50", "test_mapper"),
    "INPUT.SIZE_DIVISIBILITY": Changes("96", "train_mapper"),
    "INPUT.RANDOM_FLIP": Changes("'none'", "train_mapper"),
    "INPUT.PAD_VALUE": Changes("7", "train_mapper", ("INPUT.SIZE_DIVISIBILITY", "96")),
    "INPUT.CROP.ENABLED": Changes("False", "train_mapper"),
    "INPUT.CROP.TYPE": Refused("'relative'"),
    "INPUT.CROP.SIZE": Changes("(40, 40)", "train_mapper"),
    "INPUT.CROP.SINGLE_CATEGORY_MAX_AREA": Changes("0.3", "train_mapper"),
    "INPUT.CROP.MAX_TRIES": Changes("1", "train_mapper", ("INPUT.CROP.SINGLE_CATEGORY_MAX_AREA", "0.3")),
    "INPUT.COLOR_AUG_SSD": Changes("False", "train_mapper", COLOR),
    "INPUT.COLOR_AUG.PROB": Changes("0.0", "train_mapper", COLOR),
    "INPUT.COLOR_AUG.BRIGHTNESS_DELTA": Changes("0.0", "train_mapper", COLOR),
    "INPUT.COLOR_AUG.CONTRAST_RANGE": Changes("(1.0, 1.0)", "train_mapper", COLOR),
    "INPUT.COLOR_AUG.SATURATION_RANGE": Changes("(1.0, 1.0)", "train_mapper", COLOR),
    "INPUT.COLOR_AUG.HUE_DELTA": Changes("0.0", "train_mapper", COLOR),
    "INPUT.COPY_PASTE.ENABLED": Changes("True", "train_mapper", PASTE[2:]),
    "INPUT.COPY_PASTE.PROB": Changes("0.0", "train_mapper", PASTE),
    "INPUT.COPY_PASTE.CLASSES": Changes("['Battery']", "train_mapper", PASTE),
    "INPUT.COPY_PASTE.MAX_OBJECTS": Changes("1", "train_mapper", PASTE),
    "INPUT.COPY_PASTE.SCALE_RANGE": Changes("(0.3, 0.4)", "train_mapper", PASTE),
    "INPUT.COPY_PASTE.ROTATION": Changes("0.0", "train_mapper", PASTE),
    "INPUT.COPY_PASTE.FLIP": Changes("False", "train_mapper", PASTE),
    "INPUT.COPY_PASTE.MIN_AREA": Changes("100", "paste_bank", PASTE),
    # ---- DATASETS, DATALOADER
    "DATASETS.ROOT": Changes("'{data}/trash_root'", "datasets", DATASETS),
    "DATASETS.TRAIN": Changes("('keys_b',)", "copy_paste_bank", BANK),
    "DATASETS.TEST": Changes("('keys_b',)", "val_loaders", DATASETS),
    "DATASETS.REGISTER": Changes(
        "[['keys_a', '{data}/coco/a.json', '{data}/coco'], ['keys_c', '{data}/coco/b.json', '{data}/coco']]",
        "datasets",
        DATASETS,
    ),
    "DATASETS.LABEL_CACHE_DIR": Changes("'{data}/cache_2'", "datasets", DATASETS),
    "DATASETS.SKIP_BAD_ANNOTATIONS": Changes("True", "datasets", one_dataset("keys_bad", "bad.json")),
    "DATASETS.CROWD_AS_IGNORE": Changes("True", "datasets", one_dataset("keys_crowd", "crowd.json")),
    "DATALOADER.NUM_WORKERS": Changes("1", "val_loaders", DATASETS),
    "DATALOADER.FILTER_EMPTY_ANNOTATIONS": Recorded(
        "detectron2 filters only datasets with instance 'annotations', never semantic ones (build.py "
        "get_detection_dataset_dicts): it changes nothing for semantic data there either"
    ),
    # ---- MODEL
    "MODEL.META_ARCHITECTURE": Changes("'SeMaskMaskFormer'", "model", SEMASK_MODEL[2:]),
    "MODEL.WEIGHTS": Changes("'{data}/model_seed2.pth'", "weights", ("MODEL.WEIGHTS", "{data}/model_seed1.pth")),
    "MODEL.ALLOW_PICKLE": Changes("True", "weights", ("MODEL.WEIGHTS", "{data}/model_tensors.pkl")),
    "MODEL.LOAD_STRICT": Changes("False", "weights", ("MODEL.WEIGHTS", "{data}/model_extra_key.pth")),
    "MODEL.SYNC_BN": Changes("True", "trainer_two_machines"),
    "MODEL.DEVICE": Changes("'cuda'", "trainer"),
    "MODEL.PIXEL_MEAN": Changes("[0.0, 0.0, 0.0]", "eval"),
    "MODEL.PIXEL_STD": Changes("[1.0, 1.0, 1.0]", "eval"),
    "MODEL.BACKBONE.NAME": Changes("'D2DiNAT'", "model"),
    "MODEL.BACKBONE.FREEZE_AT": Changes("2", "backbone", RESNET),
    "MODEL.BACKBONE.WEIGHTS": Changes("'{data}/backbone.pth'", "module"),
    "MODEL.SEM_SEG_HEAD.NAME": Changes("'BranchMaskFormerHead'", "model", SEMASK_MODEL[:4]),
    "MODEL.SEM_SEG_HEAD.IN_FEATURES": Changes("['res3', 'res4', 'res5']", "model"),
    "MODEL.SEM_SEG_HEAD.IGNORE_VALUE": Changes("1", "losses"),
    "MODEL.SEM_SEG_HEAD.NUM_CLASSES": Changes("5", "model"),
    "MODEL.SEM_SEG_HEAD.LOSS_WEIGHT": Refused("2.0"),
    "MODEL.SEM_SEG_HEAD.CONVS_DIM": Changes("16", "model"),
    "MODEL.SEM_SEG_HEAD.MASK_DIM": Changes("16", "model"),
    "MODEL.SEM_SEG_HEAD.NORM": Changes("''", "model"),
    "MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME": Changes("'PixelFANDecoder'", "model"),
    "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS": Changes("2", "model"),
    "MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES": Changes("['res4', 'res5']", "model"),
    "MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS": Changes("2", "model"),
    "MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS": Changes("2", "model"),
    "MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_DIM_FEEDFORWARD": Changes("32", "model"),
    "MODEL.SEM_SEG_HEAD.COMMON_STRIDE": Changes("8", "model"),
    "MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME": Refused("'StandardTransformerDecoder'", "model"),
    "MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE": Refused("'transformer_encoder'"),
    "MODEL.MASK_FORMER.DEEP_SUPERVISION": Changes("False", "losses"),
    "MODEL.MASK_FORMER.NO_OBJECT_WEIGHT": Changes("0.5", "losses"),
    "MODEL.MASK_FORMER.CLASS_WEIGHT": Changes("1.0", "losses"),
    "MODEL.MASK_FORMER.DICE_WEIGHT": Changes("1.0", "losses"),
    "MODEL.MASK_FORMER.MASK_WEIGHT": Changes("1.0", "losses"),
    "MODEL.MASK_FORMER.HIDDEN_DIM": Changes("16", "model"),
    "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES": Changes("4", "model"),
    "MODEL.MASK_FORMER.NHEADS": Changes("2", "eval"),
    "MODEL.MASK_FORMER.DROPOUT": Changes("0.5", "losses"),
    "MODEL.MASK_FORMER.DIM_FEEDFORWARD": Changes("32", "model"),
    "MODEL.MASK_FORMER.ENC_LAYERS": Refused("6"),
    "MODEL.MASK_FORMER.DEC_LAYERS": Changes("2", "model"),
    "MODEL.MASK_FORMER.PRE_NORM": Changes("True", "eval"),
    "MODEL.MASK_FORMER.ENFORCE_INPUT_PROJ": Changes("True", "model"),  # CONVS_DIM == HIDDEN_DIM in TINY_MODEL
    "MODEL.MASK_FORMER.SIZE_DIVISIBILITY": Changes("64", "eval"),
    "MODEL.MASK_FORMER.TRAIN_NUM_POINTS": Changes("16", "losses"),
    "MODEL.MASK_FORMER.OVERSAMPLE_RATIO": Changes("1.0", "losses"),
    "MODEL.MASK_FORMER.IMPORTANCE_SAMPLE_RATIO": Changes("0.0", "losses"),
    "MODEL.MASK_FORMER.TEST.SEMANTIC_ON": Refused("False"),
    "MODEL.MASK_FORMER.TEST.INSTANCE_ON": Refused("True"),
    "MODEL.MASK_FORMER.TEST.PANOPTIC_ON": Refused("True"),
    "MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD": Refused("0.5"),
    "MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD": Refused("0.5"),
    "MODEL.MASK_FORMER.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE": Changes("True", "eval"),
    # ---- SOLVER
    "SOLVER.IMS_PER_BATCH": Changes("8", "trainer"),
    "SOLVER.MAX_ITER": Changes("50", "schedule"),
    "SOLVER.OPTIMIZER": Changes("'SGD'", "optimizer"),
    "SOLVER.BASE_LR": Changes("0.5", "optimizer"),
    "SOLVER.MOMENTUM": Changes("0.5", "optimizer", ("SOLVER.OPTIMIZER", "'SGD'")),
    "SOLVER.BETAS": Changes("(0.5, 0.9)", "optimizer"),
    "SOLVER.WEIGHT_DECAY": Changes("0.5", "optimizer"),
    "SOLVER.WEIGHT_DECAY_NORM": Changes("0.5", "optimizer"),
    "SOLVER.WEIGHT_DECAY_EMBED": Changes("0.5", "optimizer"),
    "SOLVER.BACKBONE_MULTIPLIER": Changes("0.5", "optimizer"),
    "SOLVER.LAYER_DECAY": Changes("0.9", "backbone_optimizer", VIT_PYRAMID),
    "SOLVER.LAYER_DECAY_NUM_LAYERS": Changes("8", "backbone_optimizer", (*VIT_PYRAMID, "SOLVER.LAYER_DECAY", "0.9")),
    "SOLVER.LR_SCHEDULER_NAME": Refused("'WarmupCosineLR'"),
    "SOLVER.POLY_LR_POWER": Changes("2.0", "schedule"),
    "SOLVER.POLY_LR_CONSTANT_ENDING": Changes("0.5", "schedule"),
    "SOLVER.WARMUP_FACTOR": Changes("0.5", "schedule", WARMUP),
    "SOLVER.WARMUP_ITERS": Changes("5", "schedule", WARMUP),
    "SOLVER.WARMUP_METHOD": Changes("'constant'", "schedule", WARMUP),
    "SOLVER.CHECKPOINT_PERIOD": Changes("7", "trainer"),
    "SOLVER.CHECKPOINT_KEEP": Changes("1", "trainer"),
    "SOLVER.LOG_PERIOD": Changes("3", "trainer"),
    "SOLVER.CLIP_GRADIENTS.ENABLED": Changes("False", "clipping"),
    "SOLVER.CLIP_GRADIENTS.CLIP_TYPE": Changes("'norm'", "clipping"),
    "SOLVER.CLIP_GRADIENTS.CLIP_VALUE": Changes("0.5", "clipping"),
    "SOLVER.CLIP_GRADIENTS.NORM_TYPE": Changes("1.0", "clipping"),
    "SOLVER.AMP.ENABLED": Changes("False", "trainer", ("SOLVER.AMP.ON_CPU", "True")),
    "SOLVER.AMP.ON_CPU": Changes("True", "trainer"),
    # ---- TEST
    "TEST.EVAL_PERIOD": Changes("100", "trainer"),
    "TEST.AUG.ENABLED": Changes("True", "views"),
    "TEST.AUG.MIN_SIZES": Changes("(320,)", "views", ("TEST.AUG.ENABLED", "True")),
    "TEST.AUG.MAX_SIZE": Changes("700", "views", ("TEST.AUG.ENABLED", "True")),
    "TEST.AUG.FLIP": Changes("False", "views", ("TEST.AUG.ENABLED", "True")),
}


# ---- test data ---------------------------------------------------------------------------------------------------


def _sample_image(folder: Path) -> dict:
    """A 48 x 64 image whose colour encodes its label: blocks of classes 0..3 (mostly 0), Battery (9), Clothing
    (10), and an ignored band."""
    rng = np.random.default_rng(0)
    blocks = rng.choice([0, 1, 2, 3, 9, 10], size=(6, 8), p=[0.6, 0.1, 0.1, 0.1, 0.05, 0.05])
    label = np.kron(blocks, np.ones((8, 8), dtype=np.int64)).astype(np.uint8)
    label[8:24, 8:24] = 9  # one large Battery (256 px) beside the single-block objects (64 px)
    label[:, 60:] = 255
    palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(folder / "image.png"), palette[label])
    cv2.imwrite(str(folder / "label.png"), label)
    return {"file_name": str(folder / "image.png"), "sem_seg_file_name": str(folder / "label.png"), "image_id": 1}


def _write_datasets(root: Path) -> None:
    coco = root / "coco"
    write_tiny_coco(coco, name="a.json")
    fewer = tiny_coco_dict()
    fewer["images"] = fewer["images"][:1]
    fewer["annotations"] = [a for a in fewer["annotations"] if a["id"] == 10]  # Metal only
    write_tiny_coco(coco, fewer, name="b.json")
    crowd = tiny_coco_dict()
    crowd["annotations"][2]["iscrowd"] = 1
    write_tiny_coco(coco, crowd, name="crowd.json")
    bad = tiny_coco_dict()
    bad["annotations"][0]["category_id"] = 999
    write_tiny_coco(coco, bad, name="bad.json")
    trash = root / "trash_root"
    for name in ("train_all.json", "train.json", "val.json"):
        write_tiny_coco(trash, name=name)
    unlabelled = tiny_coco_dict()
    unlabelled["annotations"] = []
    write_tiny_coco(trash, unlabelled, name="test.json")


def _write_weights(root: Path) -> None:
    cfg = _cfg("model", ())
    for seed in (1, 2):
        torch.manual_seed(seed)
        torch.save({"model": _build_model(cfg).state_dict()}, root / f"model_seed{seed}.pth")
    torch.manual_seed(3)
    state = _build_model(cfg).state_dict()
    torch.save({"model": {**state, "extra.weight": torch.zeros(2)}}, root / "model_extra_key.pth")
    with (root / "model_tensors.pkl").open("wb") as handle:
        pickle.dump({"model": state}, handle)
    torch.manual_seed(4)
    from mask2former.modeling.backbone.base import build_backbone

    torch.save(build_backbone(cfg).state_dict(), root / "backbone.pth")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("keys")
    DATA["root"] = root
    DATA["record"] = _sample_image(root / "sample")
    _write_datasets(root)
    _write_weights(root)
    return root


@pytest.fixture(autouse=True)
def _no_data_root_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRASH_DATA", raising=False)


DATA: dict[str, Any] = {}


# ---- observers: config -> what the project makes of it, as comparable data -------------------------------------


def digest(value: Any) -> Any:
    """Plain comparable data: tensors and arrays by shape, dtype and a hash of their bytes."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().contiguous()
        if value.dtype == torch.bfloat16:
            value = value.float()
        value = value.numpy()
    if isinstance(value, np.ndarray):
        return ("array", value.shape, str(value.dtype), hashlib.sha1(np.ascontiguousarray(value).tobytes()).hexdigest())
    if isinstance(value, dict):
        return tuple(sorted((str(k), digest(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return tuple(digest(v) for v in value)
    if isinstance(value, float):
        return round(value, 9)
    return value


def _build_model(cfg) -> nn.Module:
    from mask2former.modeling.build import build_model

    return build_model(cfg)


def _fixed_image(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8))


def observe_model(cfg) -> Any:
    torch.manual_seed(0)
    model = _build_model(cfg)
    return (
        type(model).__name__,
        [(name, tuple(p.shape), p.requires_grad) for name, p in model.named_parameters()],
        [(name, tuple(b.shape)) for name, b in model.named_buffers()],
    )


def observe_eval(cfg) -> Any:
    torch.manual_seed(0)
    model = _build_model(cfg).eval()
    with torch.no_grad():
        outputs = model([{"image": _fixed_image((3, 40, 72)), "height": 60, "width": 100}])
    return digest(outputs[0]["sem_seg"])


def observe_losses(cfg) -> Any:
    torch.manual_seed(0)
    model = _build_model(cfg).train()
    label = torch.from_numpy(
        np.kron(np.random.default_rng(1).integers(0, 4, (4, 4)), np.ones((16, 16), dtype=np.int64))
    )
    torch.manual_seed(1)
    losses = model([{"image": _fixed_image((3, 64, 64)), "sem_seg": label}])
    total = model.criterion.weighted_total(losses)
    return digest({**{key: float(value) for key, value in losses.items()}, "total": float(total.detach())})


def _backbone(cfg) -> nn.Module:
    from mask2former.modeling.backbone.base import build_backbone

    torch.manual_seed(0)
    return build_backbone(cfg)


def observe_backbone(cfg) -> Any:
    backbone = _backbone(cfg)
    shapes = {name: (spec.channels, spec.stride) for name, spec in backbone.output_shape().items()}
    return (
        [(name, tuple(p.shape), p.requires_grad) for name, p in backbone.named_parameters()],
        [(name, tuple(b.shape)) for name, b in backbone.named_buffers()],
        sorted(shapes.items()),
        [type(m).__name__ for m in backbone.modules()],
    )


def _backbone_outputs(backbone: nn.Module) -> Any:
    images = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32))
    torch.manual_seed(1)
    outputs = backbone(images)
    return digest({name: value for name, value in outputs.items() if isinstance(value, torch.Tensor)})


def observe_backbone_forward(cfg) -> Any:
    backbone = _backbone(cfg).eval()
    with torch.no_grad():
        return _backbone_outputs(backbone)


def observe_backbone_train(cfg) -> Any:
    backbone = _backbone(cfg).train()
    return _backbone_outputs(backbone)


def observe_backbone_grads(cfg) -> Any:
    backbone = _backbone(cfg).train()
    images = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32))
    torch.manual_seed(1)
    outputs = backbone(images)
    sum((value * torch.linspace(-1, 1, value.numel()).view_as(value)).sum() for value in outputs.values()).backward()
    return digest({name: p.grad for name, p in backbone.named_parameters() if p.grad is not None})


def observe_checkpointing(cfg) -> Any:
    calls = []
    original = torch.utils.checkpoint.checkpoint

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    backbone = _backbone(cfg).train()
    torch.utils.checkpoint.checkpoint = counting
    try:
        _backbone_outputs(backbone)
    finally:
        torch.utils.checkpoint.checkpoint = original
    return len(calls)


def observe_train_mapper(cfg) -> Any:
    from mask2former.data.mapper import SemanticSegMapper

    record = DATA["record"]
    mapper = SemanticSegMapper.from_config(cfg, is_train=True, dataset_dicts=[record])
    return digest({key: value for key, value in mapper(record, np.random.default_rng(0)).items()})


def observe_paste_bank(cfg) -> Any:
    from mask2former.data.mapper import SemanticSegMapper

    return digest(
        SemanticSegMapper.from_config(cfg, is_train=True, dataset_dicts=[DATA["record"]]).copy_paste.bank.table
    )


def observe_test_mapper(cfg) -> Any:
    from mask2former.data.mapper import SemanticSegMapper

    return digest(SemanticSegMapper.from_config(cfg, is_train=False)(DATA["record"]))


def _register(cfg) -> None:
    from mask2former.data.catalog import DatasetCatalog, MetadataCatalog
    from mask2former.data.trash import register_datasets_from_config

    for catalog in (DatasetCatalog, MetadataCatalog):
        for name in catalog.list():
            catalog.remove(name)
    register_datasets_from_config(cfg)


def observe_datasets(cfg) -> Any:
    from mask2former.data.catalog import DatasetCatalog
    from mask2former.io.images import read_label

    _register(cfg)
    found = {}
    for name in sorted(DatasetCatalog.list()):
        dicts = DatasetCatalog.get(name)
        found[name] = [
            (d["file_name"], d.get("sem_seg_file_name"), digest(read_label(d["sem_seg_file_name"])))
            if "sem_seg_file_name" in d
            else (d["file_name"],)
            for d in dicts
        ]
    return found


def observe_val_loaders(cfg) -> Any:
    from mask2former.engine.lightning_module import MaskFormerModule

    _register(cfg)
    module = MaskFormerModule(cfg)
    return [(loader.num_workers, [d["file_name"] for d in loader.dataset.dicts]) for loader in module.val_dataloader()]


def observe_copy_paste_bank(cfg) -> Any:
    from mask2former.data.mapper import SemanticSegMapper

    _register(cfg)
    bank = SemanticSegMapper.from_config(cfg, is_train=True).copy_paste.bank
    return digest(bank.table)


def observe_weights(cfg) -> Any:
    from mask2former.engine.trainer import load_weights

    torch.manual_seed(0)
    model = _build_model(cfg)
    load_weights(model, cfg, training=True)
    return digest(model.state_dict())


def observe_module(cfg) -> Any:
    from mask2former.engine.trainer import build_module

    return digest(build_module(cfg, 1).model.state_dict())


class _TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
        self.backbone.relative_position_bias_table = nn.Parameter(torch.zeros(3, 2))
        self.embed = nn.Embedding(5, 4)
        self.head = nn.Linear(4, 2)


def observe_optimizer(cfg) -> Any:
    from mask2former.engine.optimizer import build_optimizer

    optimizer = build_optimizer(cfg, _TinyNet())
    groups = [
        {k: v for k, v in group.items() if k != "params"} | {"n": len(group["params"])}
        for group in optimizer.param_groups
    ]
    return type(optimizer).__name__, digest(groups)


def observe_backbone_optimizer(cfg) -> Any:
    """(lr, weight decay, parameter count) of each group for the configured backbone beside a one-layer head."""
    from mask2former.engine.optimizer import build_optimizer

    model = nn.Module()
    model.backbone = _backbone(cfg)
    model.head = nn.Linear(2, 2)
    optimizer = build_optimizer(cfg, model)
    return [(group["lr"], group["weight_decay"], len(group["params"])) for group in optimizer.param_groups]


def observe_schedule(cfg) -> Any:
    from mask2former.engine.optimizer import build_lr_scheduler

    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    factor = build_lr_scheduler(cfg, optimizer).lr_lambdas[0]
    return digest([factor(i) for i in range(0, 200, 3)])


def _grads_after_clipping(clipper: Callable | None) -> list[torch.Tensor]:
    params = [nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(2, 2))]
    params[0].grad = torch.tensor([3.0, -4.0, 0.5])
    params[1].grad = torch.tensor([[0.2, -0.1], [0.05, 0.0]])
    if clipper is not None:
        clipper(params)
    return [p.grad for p in params]


def observe_clipping(cfg) -> Any:
    from mask2former.engine.optimizer import build_gradient_clipper

    return digest(_grads_after_clipping(build_gradient_clipper(cfg)))


def _trainer(cfg, *argv: str) -> Any:
    from mask2former.engine.arguments import default_argument_parser
    from mask2former.engine.trainer import build_trainer

    trainer, batch = build_trainer(cfg, default_argument_parser().parse_args(["--num-gpus", "0", *argv]))
    checkpoints = [(c.dirpath, c._every_n_train_steps, c.save_top_k) for c in trainer.checkpoint_callbacks]
    return (
        batch,
        trainer.max_steps,
        trainer.val_check_interval,
        str(trainer.precision),
        trainer.log_every_n_steps,
        trainer.default_root_dir,
        checkpoints,
        getattr(trainer.strategy, "_layer_sync", None) is not None,
    )


def observe_trainer(cfg) -> Any:
    return _trainer(cfg)


def observe_trainer_two_machines(cfg) -> Any:
    return _trainer(cfg, "--num-machines", "2")


def observe_views(cfg) -> Any:
    from mask2former.inference.tta import inference_max_size, inference_views

    return inference_views(cfg), inference_max_size(cfg)


OBSERVERS: dict[str, Callable] = {
    name[len("observe_") :]: value for name, value in dict(globals()).items() if name.startswith("observe_")
}
# what every observer's config starts from (then a check's base, then the key)
OBSERVER_BASE: dict[str, tuple[str, ...]] = {
    "train_mapper": (
        "INPUT.MIN_SIZE_TRAIN",
        "(48, 64, 96)",
        "INPUT.CROP.SIZE",
        "(56, 56)",
        "INPUT.MAX_SIZE_TRAIN",
        "1000",
    ),
    "test_mapper": ("INPUT.MIN_SIZE_TEST", "48", "INPUT.FORMAT", "'RGB'"),
    "trainer": ("OUTPUT_DIR", "{data}/output", "SOLVER.MAX_ITER", "1000"),
    "trainer_two_machines": (
        "OUTPUT_DIR",
        "{data}/output",
    ),
    "schedule": ("SOLVER.MAX_ITER", "200"),
    "module": ("MODEL.DEVICE", "'cpu'"),
}


def _cfg(observer: str, overrides: tuple[str, ...]):
    cfg = get_cfg()
    cfg.merge_from_list(
        [
            item.format(data=DATA.get("root", ""))
            for item in (
                *TINY_MODEL,
                "MODEL.MASK_FORMER.TRAIN_NUM_POINTS",
                "64",
                *OBSERVER_BASE.get(observer, ()),
                *overrides,
            )
        ]
    )
    return cfg


_ERRORS = (UserError, KeyError, ValueError, TypeError, NotImplementedError)


@cache
def _observed(observer: str, overrides: tuple[str, ...]) -> tuple[str, Any]:
    try:
        return "ok", OBSERVERS[observer](_cfg(observer, overrides))
    except _ERRORS as error:
        return "error", f"{type(error).__name__}: {error}"


# ---- the checks of every family, collected ------------------------------------------------------------------------


def _modules_with_checks() -> list[str]:
    """The tests/test_*.py modules that define CONFIG_KEY_CHECKS at module level."""
    names = []
    for path in sorted((REPO / "tests").glob("test_*.py")):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            if any(isinstance(target, ast.Name) and target.id == "CONFIG_KEY_CHECKS" for target in targets):
                names.append(path.stem)
    return names


def collect_checks() -> tuple[dict[str, ConfigKeyCheck], dict[str, list[str]]]:
    """(key -> check, key -> the test modules whose CONFIG_KEY_CHECKS name it), over every such module."""
    checks: dict[str, ConfigKeyCheck] = {}
    owners: dict[str, list[str]] = {}
    for name in _modules_with_checks():
        own = CONFIG_KEY_CHECKS if name == Path(__file__).stem else importlib.import_module(name).CONFIG_KEY_CHECKS
        for key, check in own.items():
            checks[key] = check
            owners.setdefault(key, []).append(f"tests/{name}.py")
    return checks, owners


KEYS, OWNERS = collect_checks()


# ---- reads of config keys in a syntax tree ----------------------------------------------------------------------


def _scopes(tree: ast.Module) -> list[ast.AST]:
    """The module's top-level functions and classes (aliases are bound and read inside one), then its other
    statements."""
    defs = [node for node in tree.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)]
    rest = ast.Module(body=[node for node in tree.body if node not in defs], type_ignores=[])
    return [*defs, rest]


def _paths(node: ast.AST, aliases: dict[str, set[str]], top_level: set[str]) -> set[str]:
    """The config paths `node` evaluates to: `cfg.MODEL.SWIN` -> {"MODEL.SWIN"} (a chain from any object through
    a top-level key), `swin` -> its aliases' paths, `swin.EMBED_DIM`, `swin["EMBED_DIM"]`,
    `getattr(swin, "EMBED_DIM")`."""
    if isinstance(node, ast.Name):
        return aliases.get(node.id, set())
    if isinstance(node, ast.Attribute):
        base = _paths(node.value, aliases, top_level)
        return {f"{path}.{node.attr}" for path in base} if base else ({node.attr} & top_level)
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
        return {f"{path}.{node.slice.value}" for path in _paths(node.value, aliases, top_level)}
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "getattr"
        and len(node.args) >= 2
        and isinstance(node.args[1], ast.Constant)
        and isinstance(node.args[1].value, str)
    ):
        return {f"{path}.{node.args[1].value}" for path in _paths(node.args[0], aliases, top_level)}
    return set()


def _aliases(scope: ast.AST, top_level: set[str], seeds: dict[str, set[str]]) -> dict[str, set[str]]:
    """name -> the config paths assigned to it anywhere in `scope` (`swin = cfg.MODEL.SWIN`), starting from `seeds`
    (the scope's parameters), to a fixed point."""
    aliases = {name: set(paths) for name, paths in seeds.items()}
    assigns = [
        (target.id, node.value)
        for node in ast.walk(scope)
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name)
    ]
    while True:
        grown = False
        for name, value in assigns:
            paths = _paths(value, aliases, top_level)
            if not paths <= aliases.get(name, set()):
                aliases[name] = aliases.get(name, set()) | paths
                grown = True
        if not grown:
            return aliases


def _parameter_paths(scopes: list[ast.AST], top_level: set[str]) -> dict[str, dict[str, set[str]]]:
    """function -> parameter -> the config paths the module's calls of that top-level function pass it
    (`vit_kwargs(node)` after `node = cfg.MODEL.VIT_PYRAMID`)."""
    functions = {scope.name: scope for scope in scopes if isinstance(scope, ast.FunctionDef)}
    found: dict[str, dict[str, set[str]]] = {}
    for scope in scopes:
        aliases = _aliases(scope, top_level, {})
        for call in ast.walk(scope):
            if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id in functions):
                continue
            names = [arg.arg for arg in functions[call.func.id].args.args]
            passed = [*zip(names, call.args, strict=False), *((k.arg, k.value) for k in call.keywords if k.arg)]
            for name, value in passed:
                paths = _paths(value, aliases, top_level)
                if paths:
                    found.setdefault(call.func.id, {}).setdefault(name, set()).update(paths)
    return found


def config_reads(source: str, top_level: set[str]) -> set[str]:
    """Every full config path `source` reads (loads, not assigns): attribute chains, subscripts and getattr through
    a top-level key, or through a name bound to a config node in the same function or class (by an assignment, or
    as the parameter of a module function that the module calls with one)."""
    scopes = _scopes(ast.parse(source))
    parameters = _parameter_paths(scopes, top_level)
    reads = set()
    for scope in scopes:
        aliases = _aliases(scope, top_level, parameters.get(getattr(scope, "name", ""), {}))
        for node in ast.walk(scope):
            if isinstance(node, ast.Attribute | ast.Subscript) and not isinstance(node.ctx, ast.Load):
                continue
            if isinstance(node, ast.Attribute | ast.Subscript | ast.Call):
                reads |= _paths(node, aliases, top_level)
    return reads


TOP_LEVEL = set(get_cfg())


@cache
def package_reads() -> frozenset[str]:
    files = [*(REPO / "mask2former").rglob("*.py"), *(REPO / "semask").rglob("*.py"), REPO / "train_net.py"]
    return frozenset(path for file in files for path in config_reads(file.read_text(encoding="utf-8"), TOP_LEVEL))


# Keys the package reads without spelling their path: key -> where and how.
INDIRECT_READS: dict[str, str] = {
    key: "config/compatibility.py check_compatibility_keys reads each ONLY_DEFAULT key by its dotted name"
    for key in ONLY_DEFAULT
}


# ---- the tests -------------------------------------------------------------------------------------------------


def test_every_leaf_key_has_exactly_one_check() -> None:
    keys = list(flatten_keys(get_cfg()))
    missing = [key for key in keys if key not in KEYS]
    gone = [key for key in KEYS if key not in keys]
    twice = {key: owners for key, owners in OWNERS.items() if len(owners) > 1}
    assert not missing and not gone and not twice, (
        f"config keys without a check in any tests/test_*.py CONFIG_KEY_CHECKS: {missing}; "
        f"checks of keys get_cfg() no longer has: {[f'{key} ({OWNERS[key][0]})' for key in gone]}; "
        f"keys checked by several modules: {twice}"
    )


def test_the_checks_come_from_the_families_test_modules() -> None:
    owners = {owner for names in OWNERS.values() for owner in names}
    assert {"tests/test_swin.py", "tests/test_semask.py", "tests/test_config_keys.py"} <= owners, owners
    assert OWNERS["MODEL.SWIN.EMBED_DIM"] == ["tests/test_swin.py"]
    assert OWNERS["MODEL.SEMASK.RES_PROJ_INIT"] == ["tests/test_semask.py"]


def test_recorded_only_keys_are_a_handful_and_say_why() -> None:
    recorded = {key: check.reason for key, check in KEYS.items() if isinstance(check, Recorded)}
    assert len(recorded) <= 6, recorded
    assert all(len(reason) > 30 for reason in recorded.values())


CHANGES = sorted(key for key, check in KEYS.items() if isinstance(check, Changes))


@pytest.mark.parametrize("key", CHANGES)
def test_a_non_default_value_changes_what_the_key_configures(key: str, data: Path) -> None:
    check = KEYS[key]
    assert check.observe in OBSERVERS, f"{key}: no observer {check.observe!r}"
    default = _observed(check.observe, check.base)
    changed = _observed(check.observe, (*check.base, key, check.value))
    if changed[0] == "error":
        assert key in changed[1], f"{key} {check.value}: an error that does not name the key: {changed[1]}"
    if default[0] == "error":
        assert changed[0] == "ok", f"{key}: the observer fails with and without it: {default[1]}"
    assert changed != default, f"{key} {check.value} changes nothing {check.observe} shows"


REFUSED = sorted(key for key, check in KEYS.items() if isinstance(check, Refused))


@pytest.mark.parametrize("key", REFUSED)
def test_other_values_are_refused_naming_the_key(key: str, data: Path) -> None:
    check = KEYS[key]
    if check.observe is None:
        with pytest.raises(ConfigError, match=re.escape(key)):
            load_config(None, [key, check.value])
        assert load_config(None, []) is not None
        return
    default = _observed(check.observe, check.base)
    assert default[0] == "ok", default[1]
    status, message = _observed(check.observe, (*check.base, key, check.value))
    assert status == "error" and key.rsplit(".", 1)[-1] in message, message


def test_only_default_keys_of_the_config_are_refused_keys_here() -> None:
    assert set(ONLY_DEFAULT) <= {key for key, check in KEYS.items() if isinstance(check, Refused) and not check.observe}


COVERED = sorted(key for key, check in KEYS.items() if isinstance(check, CoveredBy))
DOTTED = re.compile(r"\b[A-Z][A-Z0-9_]*(?:\.[A-Z][A-Z0-9_]*)+\b")


def named_keys(source: str, test_name: str) -> set[str] | None:
    """The full keys test `test_name` of `source` names (None: no such test): dotted keys in its strings and the
    config paths it reads, in its body and in the module-level helpers and constants it uses, transitively."""
    tree = ast.parse(source)
    top = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            top[node.name] = node
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                if isinstance(target, ast.Name):
                    top[target.id] = node
    if test_name not in top or not isinstance(top[test_name], ast.FunctionDef):
        return None
    seen, todo = set(), [test_name]
    while todo:
        name = todo.pop()
        if name in seen or name not in top:
            continue
        seen.add(name)
        todo += [node.id for node in ast.walk(top[name]) if isinstance(node, ast.Name)]
    names = set()
    for name in seen:
        segment = ast.get_source_segment(source, top[name]) or ""
        strings = [n.value for n in ast.walk(top[name]) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
        names |= {match for text in strings for match in DOTTED.findall(text)}
        names |= config_reads(textwrap.dedent(segment), TOP_LEVEL)
    return names


@pytest.mark.parametrize("key", COVERED)
def test_the_named_test_exists_and_names_the_key(key: str) -> None:
    file_name, test_name = KEYS[key].test.split("::")
    names = named_keys((REPO / file_name).read_text(encoding="utf-8"), test_name)
    assert names is not None, f"{key}: {KEYS[key].test} does not exist"
    assert key in names, f"{key}: {KEYS[key].test} does not name the full key"


def test_every_key_but_the_recorded_ones_is_read_in_the_package() -> None:
    unread = [
        key
        for key, check in KEYS.items()
        if not isinstance(check, Recorded) and key not in package_reads() and key not in INDIRECT_READS
    ]
    assert not unread, f"keys nothing in mask2former/, semask/ or train_net.py reads by their full path: {unread}"
    read_anyway = [key for key in INDIRECT_READS if key in package_reads()]
    assert not read_anyway, f"INDIRECT_READS lists keys the package reads by their full path: {read_anyway}"


SWIN_ONLY = """
def from_config(cfg):
    dinat = cfg.MODEL.DINAT
    return dinat.EMBED_DIM, cfg.MODEL.SWIN.DEPTHS, getattr(cfg.MODEL.SWIN, "WINDOW_SIZE")


def add_config(cfg):
    cfg.MODEL.SWIN.EMBED_DIM = 96
"""


def test_the_read_check_tells_keys_that_share_a_last_name_apart() -> None:
    """Only MODEL.DINAT.EMBED_DIM is read (through an alias): MODEL.SWIN.EMBED_DIM, which the old last-name grep
    took as read, is not; an assignment is no read."""
    reads = config_reads(SWIN_ONLY, {"MODEL"})
    assert reads >= {"MODEL.DINAT.EMBED_DIM", "MODEL.SWIN.DEPTHS", "MODEL.SWIN.WINDOW_SIZE"}
    assert "MODEL.SWIN.EMBED_DIM" not in reads and "MODEL.DINAT.DEPTHS" not in reads
    aliased = config_reads("def f(cfg):\n    node = cfg.MODEL.SWIN\n    return node['EMBED_DIM']\n", {"MODEL"})
    assert "MODEL.SWIN.EMBED_DIM" in aliased and "MODEL.DINAT.EMBED_DIM" not in aliased
    passed = "def sizes(node):\n    return node.EMBED_DIM\n\n\ndef f(cfg):\n    return sizes(cfg.MODEL.DINAT)\n"
    assert "MODEL.DINAT.EMBED_DIM" in config_reads(passed, {"MODEL"})
    assert "MODEL.SWIN.EMBED_DIM" not in config_reads(passed, {"MODEL"})


def test_the_named_test_check_needs_the_full_key() -> None:
    source = 'def test_x():\n    opts = ["MODEL.DINAT.EMBED_DIM", "8"]\n    assert cfg.MODEL.SWIN.DEPTHS\n'
    assert named_keys(source, "test_x") >= {"MODEL.DINAT.EMBED_DIM", "MODEL.SWIN.DEPTHS"}
    assert "MODEL.SWIN.EMBED_DIM" not in named_keys(source, "test_x")
    assert named_keys(source, "test_y") is None


# ---- SOLVER.CLIP_GRADIENTS against their definitions (detectron2's solver/build.py, Mask2Former's train_net) ------


def _clipped(*overrides: str) -> list[torch.Tensor]:
    from mask2former.engine.optimizer import build_gradient_clipper

    cfg = get_cfg()
    cfg.merge_from_list(list(overrides))
    return _grads_after_clipping(build_gradient_clipper(cfg))


def _assert_grads(got: list[torch.Tensor], *expected: list) -> None:
    for tensor, values in zip(got, expected, strict=True):
        torch.testing.assert_close(tensor, torch.tensor(values), rtol=1e-5, atol=1e-6)


G0, G1 = [3.0, -4.0, 0.5], [[0.2, -0.1], [0.05, 0.0]]


def _scaled(values: list, factor: float) -> list:
    return (torch.tensor(values) * factor).tolist()


def test_full_model_clips_the_joint_norm_of_all_gradients() -> None:
    joint = (9 + 16 + 0.25 + 0.04 + 0.01 + 0.0025) ** 0.5
    got = _clipped("SOLVER.CLIP_GRADIENTS.CLIP_VALUE", "1.0")  # CLIP_TYPE full_model, NORM_TYPE 2.0: the defaults
    _assert_grads(got, _scaled(G0, 1 / joint), _scaled(G1, 1 / joint))
    # Mask2Former clips nothing when CLIP_VALUE <= 0
    _assert_grads(_clipped("SOLVER.CLIP_GRADIENTS.CLIP_VALUE", "0.0"), G0, G1)


def test_norm_clips_each_parameter_on_its_own() -> None:
    got = _clipped("SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "norm", "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", "1.0")
    _assert_grads(got, _scaled(G0, 1 / (25.25**0.5)), G1)  # the second's norm (0.23) is under the limit


def test_value_clamps_every_entry() -> None:
    got = _clipped("SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "value", "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", "0.15")
    _assert_grads(got, [0.15, -0.15, 0.15], [[0.15, -0.1], [0.05, 0.0]])


@pytest.mark.parametrize(
    ("norm_type", "norm"),
    [(1.0, 7.5 + 0.35), (float("inf"), 4.0), (3.0, sum(abs(v) ** 3 for v in [*G0, *G1[0], *G1[1]]) ** (1 / 3))],
)
def test_norm_type_is_the_p_of_the_norm(norm_type: float, norm: float) -> None:
    from mask2former.engine.optimizer import build_gradient_clipper

    for clip_type in ("full_model", "norm"):
        cfg = get_cfg()
        cfg.merge_from_list(["SOLVER.CLIP_GRADIENTS.CLIP_TYPE", clip_type, "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", "1.0"])
        cfg.SOLVER.CLIP_GRADIENTS.NORM_TYPE = norm_type
        got = _grads_after_clipping(build_gradient_clipper(cfg))
        if clip_type == "full_model":
            _assert_grads(got, _scaled(G0, 1 / norm), _scaled(G1, 1 / norm))
        else:  # the first gradient alone: its norms are 7.5, 4 and (27 + 64 + 0.125) ** (1 / 3); the second's < 1
            own = {1.0: 7.5, float("inf"): 4.0}.get(norm_type, (27 + 64 + 0.125) ** (1 / 3))
            _assert_grads(got, _scaled(G0, 1 / own), G1)


def test_clipping_settings_that_cannot_work_are_refused() -> None:
    from mask2former.engine.optimizer import build_gradient_clipper

    for overrides, message in (
        (("SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "norm", "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", "0.0"), "would zero every"),
        (("SOLVER.CLIP_GRADIENTS.NORM_TYPE", "-1.0"), "NORM_TYPE -1.0: give the p of the norm"),
        (("SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "agc"), "CLIP_TYPE 'agc': use full_model, norm, value"),
    ):
        cfg = get_cfg()
        cfg.merge_from_list(list(overrides))
        with pytest.raises(ConfigError, match=re.escape(message)):
            build_gradient_clipper(cfg)
    cfg = get_cfg()
    cfg.merge_from_list(["SOLVER.CLIP_GRADIENTS.ENABLED", "False", "SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "agc"])
    assert build_gradient_clipper(cfg) is None


def test_lightning_clips_through_the_module_after_backward_before_the_step(tmp_path: Path) -> None:
    """A Lightning step with MaskFormerModule's clipping hook: the SGD update is the clipped gradient (Lightning's
    own clipping stays off, build_trainer gives it no gradient_clip_val)."""
    import lightning as L

    from mask2former.engine.lightning_module import MaskFormerModule
    from mask2former.engine.optimizer import build_gradient_clipper

    cfg = get_cfg()
    cfg.merge_from_list(["SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "norm", "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", "1.0"])

    class Toy(L.LightningModule):
        configure_gradient_clipping = MaskFormerModule.configure_gradient_clipping

        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(3))
            self.gradient_clipper = build_gradient_clipper(cfg)

        def training_step(self, batch, batch_idx):
            return (self.weight * torch.tensor([3.0, -4.0, 0.0])).sum() + 0.0 * batch.sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=1.0)

        def train_dataloader(self):
            return torch.utils.data.DataLoader(torch.zeros(1, 1), batch_size=1)

    toy = Toy()
    trainer = L.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(toy)
    torch.testing.assert_close(toy.weight.detach(), torch.tensor([-0.6, 0.8, 0.0]))  # - (3, -4, 0) / 5
    from mask2former.engine.arguments import default_argument_parser
    from mask2former.engine.trainer import build_trainer

    cfg.OUTPUT_DIR = str(tmp_path / "out")
    built, _ = build_trainer(cfg, default_argument_parser().parse_args(["--num-gpus", "0"]))
    assert built.gradient_clip_val is None
