"""The defaults: the keys every part of the project reads (INPUT, DATASETS, DATALOADER, SOLVER, TEST, the meta
architecture and heads), and the registries of the model families' and plug-ins' `add_<part>_config(cfg)`."""

from __future__ import annotations

from fvcore.common.registry import Registry

from .node import CfgNode

CONFIG_ADDERS = Registry("CONFIG_ADDERS")
CONFIG_ADDERS.__doc__ = "Functions `add_<part>_config(cfg)` that add one model family's keys to get_cfg()."
PLUGIN_CONFIG_ADDERS = Registry("PLUGIN_CONFIG_ADDERS")
PLUGIN_CONFIG_ADDERS.__doc__ = (
    "Functions `add_<plugin>_config(cfg)` that add a plug-in's keys to get_cfg(), after the families' (which they "
    "may extend)."
)


def _default_train_sizes(crop: int) -> tuple[int, ...]:
    # Mask2Former's semantic recipe: short side jittered over 0.5x..2.0x of the crop in steps of 0.1x.
    return tuple(int(x * 0.1 * crop) for x in range(5, 21))


def get_cfg() -> CfgNode:
    """A fresh copy of the project's defaults: the shared keys and those of every registered family and plug-in."""
    cfg = CfgNode()
    cfg.VERSION = 2  # detectron2's config version; only 2 (older files used other key names)
    cfg.SEED = 42  # global seed for sampling, augmentation and initialisation; < 0 draws one and logs it
    cfg.OUTPUT_DIR = "./output"  # run folder: merged config, logs, metrics, checkpoints
    for add_part_config in (
        add_input_config,
        add_datasets_config,
        add_model_config,
        add_solver_config,
        add_test_config,
        add_tracking_config,
    ):
        add_part_config(cfg)
    for _name, add_part_config in [*CONFIG_ADDERS, *PLUGIN_CONFIG_ADDERS]:
        add_part_config(cfg)
    return cfg


def add_input_config(_C: CfgNode) -> None:
    """INPUT.*: resizing, cropping, padding, photometric jitter and copy-paste of the training samples; test sizes."""
    _C.INPUT = CfgNode()
    _C.INPUT.FORMAT = "RGB"  # channel order handed to the model: RGB or BGR
    _C.INPUT.DATASET_MAPPER_NAME = "mask_former_semantic"  # Mask2Former's mapper choice: only its semantic mapper
    _C.INPUT.MIN_SIZE_TRAIN = _default_train_sizes(512)  # candidate short-side lengths (px) for jitter
    _C.INPUT.MIN_SIZE_TRAIN_SAMPLING = "choice"  # "choice": pick one of the list; "range": uniform in [min, max]
    _C.INPUT.MAX_SIZE_TRAIN = 4096  # cap on the long side after the short-side resize (px)
    _C.INPUT.MIN_SIZE_TEST = 512  # short side at test time (px); 0 keeps the image size
    _C.INPUT.MAX_SIZE_TEST = 2048  # cap on the long side at test time (px)
    # Training only, as Mask2Former's semantic mapper: every sample padded bottom/right to SIZE x SIZE (px; a size,
    # not a multiple), image with INPUT.PAD_VALUE, label with the ignore value; -1: samples keep the crop's size.
    _C.INPUT.SIZE_DIVISIBILITY = -1
    _C.INPUT.RANDOM_FLIP = "horizontal"  # "horizontal" or "none"
    _C.INPUT.PAD_VALUE = 128  # image fill of the INPUT.SIZE_DIVISIBILITY padding (0..255; Mask2Former: 128)
    _C.INPUT.CROP = CfgNode()
    _C.INPUT.CROP.ENABLED = True  # random crop after the resize
    _C.INPUT.CROP.TYPE = "absolute"  # only absolute crops (CROP.SIZE in px) are supported
    _C.INPUT.CROP.SIZE = (512, 512)  # crop height, width (px)
    _C.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 1.0  # retry crops where one class covers more than this share
    _C.INPUT.CROP.MAX_TRIES = 10  # crop retries before the last draw is kept
    _C.INPUT.COLOR_AUG_SSD = True  # photometric jitter (brightness, contrast, saturation, hue)
    _C.INPUT.COLOR_AUG = CfgNode()
    _C.INPUT.COLOR_AUG.PROB = 0.5  # probability that each of the four jitters is applied
    _C.INPUT.COLOR_AUG.BRIGHTNESS_DELTA = 32.0  # added intensity, uniform in [-d, d] (0..255 scale)
    _C.INPUT.COLOR_AUG.CONTRAST_RANGE = (0.5, 1.5)  # contrast factor around mid-grey
    _C.INPUT.COLOR_AUG.SATURATION_RANGE = (0.5, 1.5)  # saturation factor (blend with luminance)
    _C.INPUT.COLOR_AUG.HUE_DELTA = 18.0  # hue shift in OpenCV units (180 = full turn), uniform in [-d, d]
    # Copy-paste of rare classes onto training crops (mask2former/data/copy_paste.py)
    _C.INPUT.COPY_PASTE = CfgNode()
    _C.INPUT.COPY_PASTE.ENABLED = False  # paste objects cut from training images onto training crops
    _C.INPUT.COPY_PASTE.PROB = 0.5  # probability per training sample that objects are pasted
    _C.INPUT.COPY_PASTE.CLASSES = ["Battery", "Clothing"]  # class names whose objects are pasted
    _C.INPUT.COPY_PASTE.MAX_OBJECTS = 3  # objects per pasting sample: uniform in 1..MAX_OBJECTS
    _C.INPUT.COPY_PASTE.SCALE_RANGE = (0.5, 1.5)  # size factor on top of the crop's resize scale, uniform
    _C.INPUT.COPY_PASTE.ROTATION = 30.0  # max rotation (degrees), uniform in [-r, r]
    _C.INPUT.COPY_PASTE.FLIP = True  # mirror each object horizontally with probability 0.5
    _C.INPUT.COPY_PASTE.MIN_AREA = 64  # objects (connected components) smaller than this (source px) are skipped


def add_datasets_config(_C: CfgNode) -> None:
    """DATASETS.* and DATALOADER.*: which datasets, where their files are, how they are read."""
    _C.DATASETS = CfgNode()
    _C.DATASETS.ROOT = ""  # competition data root; empty = $TRASH_DATA
    _C.DATASETS.TRAIN = ("trash_train",)  # registered dataset names used for training
    _C.DATASETS.TEST = ("trash_val",)  # registered dataset names used for evaluation
    _C.DATASETS.REGISTER = []  # extra: [name, json_file, image_root] or [name, "png-masks", image_dir, mask_dir]
    _C.DATASETS.LABEL_CACHE_DIR = ""  # rendered label maps; empty = $TRASH_CACHE or ~/.cache/trashseg
    _C.DATASETS.SKIP_BAD_ANNOTATIONS = False  # skip bad annotations/images (with a summary) instead of failing
    _C.DATASETS.CROWD_AS_IGNORE = False  # paint iscrowd=1 annotations with the ignore value

    _C.DATALOADER = CfgNode()
    _C.DATALOADER.NUM_WORKERS = 4  # data-loading processes per GPU
    # detectron2 drops training images without (non-crowd) instance annotations; it filters only datasets whose
    # dicts hold "annotations", never semantic ones (sem_seg_file_name), so for these datasets it changes nothing,
    # there or here: any value is accepted. Training images whose label map is all ignore are kept, as there.
    _C.DATALOADER.FILTER_EMPTY_ANNOTATIONS = True


def add_model_config(cfg: CfgNode) -> None:
    """MODEL.*: Mask2Former's keys (meta architecture, heads, pixel decoder, transformer decoder); the backbones'
    keys are added by their own add_*_config."""
    cfg.MODEL = CfgNode()
    cfg.MODEL.META_ARCHITECTURE = "MaskFormer"  # registered meta architecture
    # checkpoint to start from: .pth, .ckpt, .safetensors, detectron2 .pkl (numpy arrays, read without running code);
    # training also takes a backbone-only file here (the official configs' R-50.pkl), matched by key suffix
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.ALLOW_PICKLE = False  # allow full-pickle checkpoints (objects besides tensors: unpickling runs code)
    cfg.MODEL.LOAD_STRICT = True  # fail on missing/unexpected/mis-shaped keys (a class-count change is allowed)
    cfg.MODEL.SYNC_BN = False  # convert BatchNorm layers to SyncBatchNorm when training on several GPUs
    cfg.MODEL.DEVICE = "auto"  # "auto" (cuda if available), "cpu" or "cuda"
    cfg.MODEL.PIXEL_MEAN = [123.675, 116.280, 103.530]  # mean on the 0..255 scale in INPUT.FORMAT order (ImageNet RGB)
    cfg.MODEL.PIXEL_STD = [58.395, 57.120, 57.375]  # std on the 0..255 scale in INPUT.FORMAT order (ImageNet RGB)

    cfg.MODEL.BACKBONE = CfgNode()
    cfg.MODEL.BACKBONE.NAME = "D2SwinTransformer"  # registered backbone
    cfg.MODEL.BACKBONE.FREEZE_AT = 0  # ResNet: stages frozen from the stem (detectron2); Swin/DiNAT ignore it
    cfg.MODEL.BACKBONE.WEIGHTS = (
        ""  # backbone-only checkpoint (ImageNet Swin / timm / DiNAT) loaded before MODEL.WEIGHTS
    )
    add_sem_seg_head_config(cfg)
    add_mask_former_config(cfg)


def add_sem_seg_head_config(cfg: CfgNode) -> None:
    """MODEL.SEM_SEG_HEAD.*: the head and its pixel decoder."""
    cfg.MODEL.SEM_SEG_HEAD = CfgNode()
    cfg.MODEL.SEM_SEG_HEAD.NAME = "MaskFormerHead"  # registered head (SEM_SEG_HEADS_REGISTRY)
    cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES = ["res2", "res3", "res4", "res5"]  # backbone maps the head reads
    cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE = 255  # label ignored by the losses
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 11  # classes including background
    cfg.MODEL.SEM_SEG_HEAD.LOSS_WEIGHT = 1.0  # Mask2Former's MaskFormerHead stores it, never uses it: only 1.0
    cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM = 256  # pixel-decoder channels
    cfg.MODEL.SEM_SEG_HEAD.MASK_DIM = 256  # mask-feature channels
    cfg.MODEL.SEM_SEG_HEAD.NORM = "GN"  # norm of the pixel decoder's convs: "GN" or ""
    cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME = "MSDeformAttnPixelDecoder"  # registered pixel decoder
    cfg.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS = 6  # deformable encoder layers
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES = [
        "res3",
        "res4",
        "res5",
    ]  # encoder levels
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS = 4  # sampling points per head and level
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS = None  # encoder heads; None = MASK_FORMER.NHEADS
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_DIM_FEEDFORWARD = 1024  # encoder FFN width
    cfg.MODEL.SEM_SEG_HEAD.COMMON_STRIDE = 4  # stride of the mask features


def add_mask_former_config(cfg: CfgNode) -> None:
    """MODEL.MASK_FORMER.*: the transformer decoder, the losses and the point sampling, inference switches."""
    cfg.MODEL.MASK_FORMER = CfgNode()
    cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME = "MultiScaleMaskedTransformerDecoder"  # registered decoder
    cfg.MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE = "multi_scale_pixel_decoder"  # what the decoder reads
    cfg.MODEL.MASK_FORMER.DEEP_SUPERVISION = True  # losses on every decoder layer's prediction
    cfg.MODEL.MASK_FORMER.NO_OBJECT_WEIGHT = 0.1  # class-loss weight of the "no object" class
    cfg.MODEL.MASK_FORMER.CLASS_WEIGHT = 2.0  # weight of the classification loss (and matching cost)
    cfg.MODEL.MASK_FORMER.DICE_WEIGHT = 5.0  # weight of the dice loss (and matching cost)
    cfg.MODEL.MASK_FORMER.MASK_WEIGHT = 5.0  # weight of the mask BCE loss (and matching cost)
    cfg.MODEL.MASK_FORMER.HIDDEN_DIM = 256  # decoder width
    cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES = 100  # queries
    cfg.MODEL.MASK_FORMER.NHEADS = 8  # decoder attention heads
    cfg.MODEL.MASK_FORMER.DROPOUT = 0.0  # decoder dropout
    cfg.MODEL.MASK_FORMER.DIM_FEEDFORWARD = 2048  # decoder FFN width
    cfg.MODEL.MASK_FORMER.ENC_LAYERS = 0  # read only by MaskFormer v1's StandardTransformerDecoder: only 0
    cfg.MODEL.MASK_FORMER.DEC_LAYERS = 10  # decoder layers + 1 (the prediction from the query features alone)
    cfg.MODEL.MASK_FORMER.PRE_NORM = False  # pre-norm decoder layers
    cfg.MODEL.MASK_FORMER.ENFORCE_INPUT_PROJ = False  # 1x1 projection of features even when widths match
    cfg.MODEL.MASK_FORMER.SIZE_DIVISIBILITY = 32  # pad batches to a multiple of this (px); 0 = backbone's
    cfg.MODEL.MASK_FORMER.TRAIN_NUM_POINTS = 12544  # points sampled per mask for matching and losses
    cfg.MODEL.MASK_FORMER.OVERSAMPLE_RATIO = 3.0  # candidate points per sampled point
    cfg.MODEL.MASK_FORMER.IMPORTANCE_SAMPLE_RATIO = 0.75  # share of points taken where the mask is uncertain
    cfg.MODEL.MASK_FORMER.TEST = CfgNode()
    cfg.MODEL.MASK_FORMER.TEST.SEMANTIC_ON = True  # semantic inference: only True (the only inference here)
    cfg.MODEL.MASK_FORMER.TEST.INSTANCE_ON = False  # instance inference: only False (not in this project)
    cfg.MODEL.MASK_FORMER.TEST.PANOPTIC_ON = False  # panoptic inference: only False (not in this project)
    # read by Mask2Former's instance/panoptic inference only (both off here): only 0.8, the official value
    cfg.MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD = 0.8
    cfg.MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD = 0.8
    # True: resize the mask logits to the output size, then combine them with the class scores (Mask2Former)
    cfg.MODEL.MASK_FORMER.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE = False


def add_solver_config(cfg: CfgNode) -> None:
    """SOLVER.*: AdamW, poly LR, gradient clipping, mixed precision, checkpoints."""
    cfg.SOLVER = CfgNode()
    cfg.SOLVER.IMS_PER_BATCH = 16  # images per iteration over all GPUs
    cfg.SOLVER.MAX_ITER = 40000  # training iterations
    cfg.SOLVER.OPTIMIZER = "ADAMW"  # "ADAMW" or "SGD"
    cfg.SOLVER.BASE_LR = 1e-4  # learning rate
    cfg.SOLVER.MOMENTUM = 0.9  # SGD momentum
    cfg.SOLVER.BETAS = (0.9, 0.999)  # AdamW betas
    cfg.SOLVER.WEIGHT_DECAY = 0.05  # weight decay
    cfg.SOLVER.WEIGHT_DECAY_NORM = 0.0  # weight decay of norm layers
    cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.0  # weight decay of embeddings, position-bias tables and position embeddings
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1  # backbone LR = BASE_LR x this
    # layer-wise LR decay: a backbone layer's LR is also x this ** (number of layers + 1 - its id); 1.0 = off
    # (ViTPyramid's blocks, a timm ConvNeXt's stages, EoMT's encoder blocks; mask2former/engine/optimizer.py)
    cfg.SOLVER.LAYER_DECAY = 1.0
    cfg.SOLVER.LAYER_DECAY_NUM_LAYERS = 0  # the layer count the decay uses; 0 = the backbone's own (blocks / stages)
    cfg.SOLVER.LR_SCHEDULER_NAME = "WarmupPolyLR"  # the only schedule here
    cfg.SOLVER.POLY_LR_POWER = 0.9  # poly exponent
    cfg.SOLVER.POLY_LR_CONSTANT_ENDING = 0.0  # floor of the poly factor
    cfg.SOLVER.WARMUP_FACTOR = 1.0  # LR factor at iteration 0 of the warm-up
    cfg.SOLVER.WARMUP_ITERS = 0  # linear warm-up iterations
    cfg.SOLVER.WARMUP_METHOD = "linear"  # "linear" or "constant"
    cfg.SOLVER.CHECKPOINT_PERIOD = 5000  # iterations between checkpoints
    cfg.SOLVER.CHECKPOINT_KEEP = 3  # periodic checkpoints kept (plus last and best)
    cfg.SOLVER.LOG_PERIOD = 20  # iterations between log lines and logged metrics
    cfg.SOLVER.CLIP_GRADIENTS = CfgNode()
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True  # clip gradients before each optimizer step
    # "full_model": one norm over all parameters (Mask2Former; a CLIP_VALUE <= 0 turns it off, as there);
    # "norm": each parameter's gradient clipped to its own norm (detectron2); "value": every entry to +-CLIP_VALUE
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "full_model"
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 0.01  # max norm ("full_model", "norm") or max absolute value ("value")
    # p of the norm ("full_model", "norm"; inf = max norm); Mask2Former's full_model always uses 2.0
    cfg.SOLVER.CLIP_GRADIENTS.NORM_TYPE = 2.0
    cfg.SOLVER.AMP = CfgNode()
    cfg.SOLVER.AMP.ENABLED = True  # bf16 autocast on GPU (the deformable encoder stays fp32)
    cfg.SOLVER.AMP.ON_CPU = False  # with ENABLED, bf16 autocast on the CPU too (fast on CPUs with AMX / AVX512-BF16)


def add_tracking_config(cfg: CfgNode) -> None:
    """TRACKING.*: optional experiment trackers beside metrics.csv and TensorBoard (mask2former/engine/tracking.py;
    the packages come from requirements-tracking.txt)."""
    cfg.TRACKING = CfgNode()
    cfg.TRACKING.RUN_NAME = ""  # the trackers' run name; empty: OUTPUT_DIR's folder name
    cfg.TRACKING.WANDB = CfgNode()
    cfg.TRACKING.WANDB.ENABLED = False  # Weights & Biases
    cfg.TRACKING.WANDB.PROJECT = "trash-seg"
    cfg.TRACKING.WANDB.MODE = "offline"  # offline (OUTPUT_DIR/wandb, `wandb sync` later) or online (network, login)
    cfg.TRACKING.MLFLOW = CfgNode()
    cfg.TRACKING.MLFLOW.ENABLED = False
    cfg.TRACKING.MLFLOW.EXPERIMENT = "trash-seg"
    cfg.TRACKING.MLFLOW.TRACKING_URI = ""  # empty: a local file store in OUTPUT_DIR/mlruns; or a server's URI


def add_test_config(cfg: CfgNode) -> None:
    """TEST.*: evaluation period and test-time augmentation."""
    cfg.TEST = CfgNode()
    cfg.TEST.EVAL_PERIOD = 5000  # iterations between evaluations; 0 = only at the end
    cfg.TEST.AUG = CfgNode()
    cfg.TEST.AUG.ENABLED = False  # test-time augmentation
    cfg.TEST.AUG.MIN_SIZES = (256, 384, 512, 640)  # short sides of the TTA scales (px)
    cfg.TEST.AUG.MAX_SIZE = 4096  # long-side cap at test time (px)
    cfg.TEST.AUG.FLIP = True  # add horizontal flips
