"""Every leaf key of get_cfg() does something.

KEYS says, for every leaf key, how that is shown; the first test requires it to name exactly the keys get_cfg()
has, so a key added without a check fails here, by name. A check is one of:
  Changes(value, observe, base)  setting `value` (over the overrides `base`) changes what the project builds or
                                 computes, as seen by the observer `observe`: a built model's parameters, its
                                 outputs or losses, a mapper's output on a fixed image, the optimizer's groups, the
                                 LR schedule, gradients after clipping, the trainer build_trainer makes, ...
                                 (run here, every one);
  Refused(value, observe)        any value but the default is refused, and `value` raises an error naming the key
                                 (from load_config, or from building what `observe` builds);
  CoveredBy("tests/x.py::test")  shown by that test (which must exist and name the key);
  Recorded(reason)               nothing reads it, by design, and the reason says why (a handful).
A last guard: every key except the recorded ones is read somewhere in the package's source.
"""

from __future__ import annotations

import ast
import hashlib
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
from conftest import REPO, TINY_MODEL, tiny_coco_dict, write_tiny_coco
from torch import nn

from mask2former.config import ONLY_DEFAULT, ConfigError, flatten_keys, get_cfg, load_config
from mask2former.errors import UserError

# ---- the kinds of checks ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Changes:
    value: str  # KEY VALUE override text; "{data}" is the test data folder
    observe: str  # an OBSERVERS name
    base: tuple[str, ...] = ()  # overrides under which the key matters


@dataclass(frozen=True)
class Refused:
    value: str
    observe: str | None = None  # None: load_config itself refuses it


@dataclass(frozen=True)
class CoveredBy:
    test: str  # "tests/test_file.py::test_name"


@dataclass(frozen=True)
class Recorded:
    reason: str


SWIN = ("MODEL.BACKBONE.NAME", "D2SwinTransformer")
DINAT = ("MODEL.BACKBONE.NAME", "D2DiNAT")
SEMASK = ("MODEL.BACKBONE.NAME", "D2SeMaskSwinTransformer")
RESNET = ("MODEL.BACKBONE.NAME", "build_resnet_backbone")
SEMASK_MODEL = (
    "MODEL.META_ARCHITECTURE",
    "SeMaskMaskFormer",
    *SEMASK,
    "MODEL.SEM_SEG_HEAD.NAME",
    "BranchMaskFormerHead",
)
# one 64 px image: BatchNorm in UPerNet's 1x1 pooling branch cannot train on a batch of one
PER_PIXEL = ("MODEL.META_ARCHITECTURE", "PerPixelSegmentor", "MODEL.PER_PIXEL.DECODER_NORM", "'identity'")
TIMM = ("MODEL.BACKBONE.NAME", "TimmBackbone", "MODEL.TIMM.NAME", "'resnet18'")
TRACKING_RUN = (
    "tests/test_tracking.py::test_both_trackers_get_the_name_config_and_metrics_and_a_resumed_run_continues_them"
)
TRACKING_ERRORS = "tests/test_tracking.py::test_a_missing_package_or_a_bad_mode_is_one_error_naming_the_key"
VIT = (
    "MODEL.BACKBONE.NAME", "ViTPyramid", "MODEL.VIT_PYRAMID.EMBED_DIM", "32", "MODEL.VIT_PYRAMID.DEPTH", "6",
    "MODEL.VIT_PYRAMID.NUM_HEADS", "2", "MODEL.VIT_PYRAMID.IMG_SIZE", "64", "MODEL.VIT_PYRAMID.OUT_INDICES",
    "[1, 2, 3, 5]",
)  # fmt: skip
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

KEYS: dict[str, Changes | Refused | CoveredBy | Recorded] = {
    "VERSION": Refused("1"),
    "SEED": Changes("7", "module"),
    "OUTPUT_DIR": Changes("{data}/other_output", "trainer"),
    # ---- INPUT
    "INPUT.FORMAT": Changes("'BGR'", "test_mapper"),
    "INPUT.DATASET_MAPPER_NAME": Refused("'mask_former_panoptic'", "train_mapper"),
    "INPUT.MIN_SIZE_TRAIN": Changes("(80,)", "train_mapper"),
    "INPUT.MIN_SIZE_TRAIN_SAMPLING": Changes("'range'", "train_mapper", ("INPUT.MIN_SIZE_TRAIN", "(40, 120)")),
    "INPUT.MAX_SIZE_TRAIN": Changes("100", "train_mapper"),
    "INPUT.MIN_SIZE_TEST": Changes("32", "test_mapper"),
    "INPUT.MAX_SIZE_TEST": Changes("50", "test_mapper"),
    "INPUT.SIZE_DIVISIBILITY": Changes("96", "train_mapper"),
    "INPUT.RANDOM_FLIP": Changes("'none'", "train_mapper"),
    "INPUT.PAD_VALUE": Changes("7", "train_mapper", ("INPUT.SIZE_DIVISIBILITY", "96")),
    "INPUT.CROP.ENABLED": Changes("False", "train_mapper"),
    "INPUT.CROP.TYPE": Refused("'relative'", "train_mapper"),
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
    "MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE": Refused("'transformer_encoder'", "model"),
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
    "MODEL.MASK_FORMER.CATE_WEIGHT": Changes("1.0", "losses", SEMASK_MODEL),
    # ---- backbones
    "MODEL.SWIN.PRETRAIN_IMG_SIZE": Changes("64", "backbone", ("MODEL.SWIN.APE", "True")),
    "MODEL.SWIN.PATCH_SIZE": Changes("2", "backbone"),
    "MODEL.SWIN.EMBED_DIM": Changes("8", "backbone"),
    "MODEL.SWIN.DEPTHS": Changes("[1, 1, 1, 1]", "backbone"),
    "MODEL.SWIN.NUM_HEADS": Changes("[1, 1, 1, 1]", "backbone"),
    "MODEL.SWIN.WINDOW_SIZE": Changes("2", "backbone"),
    "MODEL.SWIN.MLP_RATIO": Changes("2.0", "backbone"),
    "MODEL.SWIN.QKV_BIAS": Changes("False", "backbone"),
    "MODEL.SWIN.QK_SCALE": Changes("0.5", "backbone_forward"),
    "MODEL.SWIN.DROP_RATE": Changes("0.5", "backbone_train"),
    "MODEL.SWIN.ATTN_DROP_RATE": Changes("0.5", "backbone_train"),
    "MODEL.SWIN.DROP_PATH_RATE": Changes("0.0", "backbone_train"),
    "MODEL.SWIN.APE": Changes("True", "backbone"),
    "MODEL.SWIN.PATCH_NORM": Changes("False", "backbone"),
    "MODEL.SWIN.OUT_FEATURES": Changes("['res3', 'res4', 'res5']", "backbone"),
    "MODEL.SWIN.USE_CHECKPOINT": Changes("True", "checkpointing"),
    "MODEL.SWIN.SEM_WINDOW_SIZE": Changes("2", "backbone_grads", SEMASK),
    "MODEL.SWIN.NUM_SEM_BLOCKS": Changes("2", "backbone", SEMASK),
    "MODEL.SEMASK.GLOBAL_STAGES": Changes("[0, 1, 2, 3]", "backbone_grads", SEMASK),
    # the tiny backbone's freshly initialised semantic attention gives the same numbers with and without it
    "MODEL.SEMASK.MASK_PADDING": CoveredBy("tests/test_semask.py::test_options_reach_every_semantic_layer"),
    "MODEL.SEMASK.RES_PROJ_INIT": Changes("'kaiming'", "backbone_grads", SEMASK),
    "MODEL.TIMM.NAME": Changes("'convnext_atto'", "backbone", TIMM),
    "MODEL.TIMM.OUTPUT_STRIDE": Changes("16", "backbone_forward", TIMM),
    "TRACKING.RUN_NAME": CoveredBy(TRACKING_RUN),
    "TRACKING.WANDB.ENABLED": CoveredBy(TRACKING_RUN),
    "TRACKING.WANDB.PROJECT": CoveredBy(TRACKING_RUN),
    "TRACKING.WANDB.MODE": CoveredBy(TRACKING_ERRORS),
    "TRACKING.MLFLOW.ENABLED": CoveredBy(TRACKING_RUN),
    "TRACKING.MLFLOW.EXPERIMENT": CoveredBy(TRACKING_RUN),
    "TRACKING.MLFLOW.TRACKING_URI": CoveredBy(TRACKING_ERRORS),
    "MODEL.VIT_PYRAMID.NAME": Changes("'vit_base_patch16_224'", "backbone", VIT),
    "MODEL.VIT_PYRAMID.EMBED_DIM": Changes("64", "backbone", VIT),
    "MODEL.VIT_PYRAMID.DEPTH": Changes("8", "backbone", (*VIT, "MODEL.VIT_PYRAMID.OUT_INDICES", "[1, 2, 3, 7]")),
    "MODEL.VIT_PYRAMID.NUM_HEADS": Changes("4", "backbone_forward", VIT),
    "MODEL.VIT_PYRAMID.PATCH_SIZE": Changes("8", "backbone", VIT),
    "MODEL.VIT_PYRAMID.IMG_SIZE": Changes("32", "backbone", VIT),
    "MODEL.VIT_PYRAMID.DROP_PATH_RATE": Changes("0.5", "backbone_train", VIT),
    "MODEL.VIT_PYRAMID.INIT_VALUES": Changes("0.5", "backbone_forward", VIT),
    "MODEL.VIT_PYRAMID.USE_REL_POS_BIAS": Changes("False", "backbone", VIT),
    "MODEL.VIT_PYRAMID.OUT_INDICES": Changes("[0, 1, 2, 3]", "backbone", VIT),
    "MODEL.VIT_PYRAMID.NECK_NORM": Changes("'GN'", "backbone", VIT),
    "MODEL.PER_PIXEL.DECODER": Changes("'FPN'", "model", PER_PIXEL),
    "MODEL.PER_PIXEL.DECODER_CHANNELS": Changes("128", "model", PER_PIXEL),
    "MODEL.PER_PIXEL.DECODER_NORM": Changes("'batchnorm'", "model", PER_PIXEL),
    "MODEL.PER_PIXEL.DROPOUT": Changes("0.5", "losses", PER_PIXEL),
    "MODEL.PER_PIXEL.ATROUS_RATES": Changes(
        "[1, 2, 3]",
        "eval",
        (*PER_PIXEL, *TIMM, "MODEL.TIMM.OUTPUT_STRIDE", "16", "MODEL.PER_PIXEL.DECODER", "'DeepLabV3Plus'"),
    ),
    "MODEL.PER_PIXEL.OCR_KEY_CHANNELS": Changes("32", "model", (*PER_PIXEL, "MODEL.PER_PIXEL.DECODER", "'OCR'")),
    "MODEL.PER_PIXEL.AUX_WEIGHT": Changes("1.0", "losses", PER_PIXEL),
    "MODEL.PER_PIXEL.AUX_IN_FEATURE": Changes("'res5'", "model", PER_PIXEL),
    "MODEL.PER_PIXEL.AUX_CHANNELS": Changes("8", "model", PER_PIXEL),
    "MODEL.PER_PIXEL.LOSS.CE_WEIGHT": Changes("2.0", "losses", PER_PIXEL),
    "MODEL.PER_PIXEL.LOSS.DICE_WEIGHT": Changes("1.0", "losses", PER_PIXEL),
    "MODEL.PER_PIXEL.LOSS.FOCAL_WEIGHT": Changes("1.0", "losses", PER_PIXEL),
    "MODEL.PER_PIXEL.LOSS.FOCAL_GAMMA": Changes(
        "0.5", "losses", (*PER_PIXEL, "MODEL.PER_PIXEL.LOSS.FOCAL_WEIGHT", "1.0")
    ),
    "MODEL.PER_PIXEL.LOSS.LOVASZ_WEIGHT": Changes("1.0", "losses", PER_PIXEL),
    "MODEL.DINAT.EMBED_DIM": Changes("8", "backbone", DINAT),
    "MODEL.DINAT.DEPTHS": Changes(
        "[1, 1, 1, 1]", "backbone", (*DINAT, "MODEL.DINAT.DILATIONS", "[[1], [1], [1], [1]]")
    ),
    "MODEL.DINAT.NUM_HEADS": Changes("[1, 1, 1, 1]", "backbone", DINAT),
    "MODEL.DINAT.KERNEL_SIZE": Changes("5", "backbone", DINAT),
    "MODEL.DINAT.DILATIONS": Changes("[[1], [1], [1, 1], [1]]", "backbone_forward", DINAT),
    "MODEL.DINAT.MLP_RATIO": Changes("1.0", "backbone", DINAT),
    "MODEL.DINAT.QKV_BIAS": Changes("False", "backbone", DINAT),
    "MODEL.DINAT.QK_SCALE": Changes("0.5", "backbone_forward", DINAT),
    "MODEL.DINAT.DROP_RATE": Changes("0.5", "backbone_train", DINAT),
    "MODEL.DINAT.ATTN_DROP_RATE": Refused("0.1", "backbone"),
    "MODEL.DINAT.DROP_PATH_RATE": Changes("0.0", "backbone_train", DINAT),
    "MODEL.DINAT.LAYER_SCALE": Changes("0.5", "backbone", DINAT),
    "MODEL.DINAT.OUT_FEATURES": Changes("['res4', 'res5']", "backbone", DINAT),
    "MODEL.DINAT.USE_CHECKPOINT": Changes("True", "checkpointing", DINAT),
    "MODEL.DINAT.ATTENTION_IMPL": CoveredBy("tests/test_dinat.py::test_training_on_cpu_needs_the_reference_path"),
    "MODEL.DINAT.SMALL_MAP": Changes(
        "'shrink_dilation'", "backbone_forward", (*DINAT, "MODEL.DINAT.DILATIONS", "[[4], [1], [1, 2], [1]]")
    ),
    "MODEL.RESNETS.DEPTH": Changes("18", "backbone", (*RESNET, "MODEL.RESNETS.RES2_OUT_CHANNELS", "64")),
    "MODEL.RESNETS.OUT_FEATURES": Changes("['res4', 'res5']", "backbone", RESNET),
    "MODEL.RESNETS.NUM_GROUPS": Changes("2", "backbone", RESNET),
    "MODEL.RESNETS.NORM": Changes("'BN'", "backbone", RESNET),
    "MODEL.RESNETS.WIDTH_PER_GROUP": Changes("32", "backbone", RESNET),
    "MODEL.RESNETS.STRIDE_IN_1X1": Changes("False", "backbone_forward", RESNET),
    "MODEL.RESNETS.RES5_DILATION": Changes("2", "backbone", RESNET),
    "MODEL.RESNETS.RES2_OUT_CHANNELS": Changes("128", "backbone", RESNET),
    "MODEL.RESNETS.STEM_OUT_CHANNELS": Changes("32", "backbone", RESNET),
    "MODEL.RESNETS.DEFORM_ON_PER_STAGE": Refused("[False, False, False, True]", "backbone"),
    "MODEL.RESNETS.DEFORM_MODULATED": Refused("True", "backbone"),
    "MODEL.RESNETS.DEFORM_NUM_GROUPS": Refused("2", "backbone"),
    "MODEL.RESNETS.STEM_TYPE": Changes("'deeplab'", "backbone", RESNET),
    "MODEL.RESNETS.RES5_MULTI_GRID": Changes(
        "[1, 2, 4]", "backbone_forward", (*RESNET, "MODEL.RESNETS.RES5_DILATION", "2")
    ),
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
    "SOLVER.LR_SCHEDULER_NAME": Refused("'WarmupCosineLR'", "schedule"),
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
    from mask2former.engine.launch import load_weights

    torch.manual_seed(0)
    model = _build_model(cfg)
    load_weights(model, cfg, training=True)
    return digest(model.state_dict())


def observe_module(cfg) -> Any:
    from mask2former.engine.launch import build_module

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
    from mask2former.engine.launch import build_trainer, default_argument_parser

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


# ---- the tests -------------------------------------------------------------------------------------------------


def test_every_leaf_key_has_exactly_one_check() -> None:
    keys = list(flatten_keys(get_cfg()))
    missing = [key for key in keys if key not in KEYS]
    gone = [key for key in KEYS if key not in keys]
    assert not missing and not gone, (
        f"config keys without a check in tests/test_config_keys.py KEYS: {missing}; "
        f"checks of keys get_cfg() no longer has: {gone}"
    )


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
    default = _observed(check.observe, _backbone_base(key))
    assert default[0] == "ok", default[1]
    status, message = _observed(check.observe, (*_backbone_base(key), key, check.value))
    assert status == "error" and key.rsplit(".", 1)[-1] in message, message


def _backbone_base(key: str) -> tuple[str, ...]:
    for prefix, base in (("MODEL.DINAT.", DINAT), ("MODEL.RESNETS.", RESNET)):
        if key.startswith(prefix):
            return base
    return ()


def test_only_default_keys_of_the_config_are_refused_keys_here() -> None:
    assert set(ONLY_DEFAULT) <= {key for key, check in KEYS.items() if isinstance(check, Refused) and not check.observe}


COVERED = sorted(key for key, check in KEYS.items() if isinstance(check, CoveredBy))


@pytest.mark.parametrize("key", COVERED)
def test_the_named_test_exists_and_names_the_key(key: str) -> None:
    file_name, test_name = KEYS[key].test.split("::")
    source = (REPO / file_name).read_text()
    functions = {node.name: node for node in ast.walk(ast.parse(source)) if isinstance(node, ast.FunctionDef)}
    assert test_name in functions, f"{key}: {KEYS[key].test} does not exist"
    body = ast.get_source_segment(source, functions[test_name]) or ""
    name = key.rsplit(".", 1)[-1]
    assert name in body or name.lower() in body, f"{key}: {KEYS[key].test} does not name it"


def _package_sources() -> dict[Path, str]:
    files = [*(REPO / "mask2former").rglob("*.py"), *(REPO / "semask").rglob("*.py"), REPO / "train_net.py"]
    return {path: path.read_text() for path in files}


def test_every_key_but_the_recorded_ones_is_read_in_the_package() -> None:
    # `.NAME` not followed by an assignment (the line defining the key), `["NAME"]`, or the dotted key as a string
    text = "\n".join(_package_sources().values())
    unread = []
    for key, check in KEYS.items():
        if isinstance(check, Recorded):
            continue
        name = key.rsplit(".", 1)[-1]
        read = re.compile(rf"\.{name}\b(?![ \t]*=(?!=))|\[[\"']{name}[\"']\]|[\"']{re.escape(key)}[\"']")
        if not read.search(text):
            unread.append(key)
    assert not unread, f"keys nothing in mask2former/, semask/ or train_net.py reads: {unread}"


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
    from mask2former.engine.launch import build_trainer, default_argument_parser

    cfg.OUTPUT_DIR = str(tmp_path / "out")
    built, _ = build_trainer(cfg, default_argument_parser().parse_args(["--num-gpus", "0"]))
    assert built.gradient_clip_val is None
