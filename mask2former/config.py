"""Configuration: fvcore/yacs CfgNode with Mask2Former's key names and `_BASE_` inheritance.

`get_cfg()` returns the defaults every part of the project reads. This module holds the keys shared by all
(INPUT, DATASETS, DATALOADER, SOLVER, TEST, the meta architecture and heads); each model family keeps its own keys
beside its code in an `add_<part>_config(cfg)` function registered in CONFIG_ADDERS (`add_swin_config` in
modeling/backbone/swin.py, `add_dinat_config`, `add_resnet_config`, ...), and each plug-in in PLUGIN_CONFIG_ADDERS
(`add_semask_config`: applied after the families, whose keys it extends). `get_cfg()` applies every one
registered: importing `mask2former.modeling.register_all` registers the families (the modules that load configs
import it), and an entry point registers a plug-in by importing it (train_net.py and the tools import `semask`).
This module imports no model.

Config files are read with a YAML safe loader, for every file of a `_BASE_` chain: the one Python tag official
configs carry, `!!python/object/apply:eval ["<expression>"]`, is evaluated by `utils/safe_eval.py` (arithmetic,
range, int, list comprehensions; never Python's eval); any other Python tag is refused. A key set twice in one
block, or aliases that expand to more than MAX_YAML_NODES values, are refused naming the file (before anything is
expanded). `load_config` then refuses values that cannot work (VALUE_RULES): every tool gets the same checks.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml
from fvcore.common.config import BASE_KEY
from fvcore.common.config import CfgNode as _FvCfgNode
from fvcore.common.registry import Registry

from .errors import UserError
from .utils.safe_eval import ALLOWED as _EVAL_ALLOWED
from .utils.safe_eval import SafeEvalError, safe_eval

CONFIG_ADDERS = Registry("CONFIG_ADDERS")
CONFIG_ADDERS.__doc__ = "Functions `add_<part>_config(cfg)` that add one model family's keys to get_cfg()."
PLUGIN_CONFIG_ADDERS = Registry("PLUGIN_CONFIG_ADDERS")
PLUGIN_CONFIG_ADDERS.__doc__ = (
    "Functions `add_<plugin>_config(cfg)` that add a plug-in's keys to get_cfg(), after the families' (which they "
    "may extend)."
)

# Keys this project once had under another name: a file that still uses one is told the name to use.
RENAMED_KEYS = {
    "MODEL.SEMASK.NUM_SEM_BLOCKS": "MODEL.SWIN.NUM_SEM_BLOCKS",
    "MODEL.SEMASK.SEM_WINDOW_SIZE": "MODEL.SWIN.SEM_WINDOW_SIZE",
    "MODEL.SEMASK.CATE_WEIGHT": "MODEL.MASK_FORMER.CATE_WEIGHT",
}


# Keys with one possible value in this project (read by nothing else): load_config refuses any other value.
ONLY_DEFAULT: dict[str, tuple[object, str]] = {
    "VERSION": (2, "detectron2's version-1 configs, with older key names, are not supported"),
    "MODEL.MASK_FORMER.TEST.SEMANTIC_ON": (True, "semantic inference is the only inference this project has"),
    "MODEL.MASK_FORMER.TEST.INSTANCE_ON": (False, "this project has no instance inference"),
    "MODEL.MASK_FORMER.TEST.PANOPTIC_ON": (False, "this project has no panoptic inference"),
    # Read by nothing in Mask2Former's semantic segmentation either: another value would change nothing.
    "MODEL.SEM_SEG_HEAD.LOSS_WEIGHT": (1.0, "Mask2Former's MaskFormerHead stores it and never uses it"),
    "MODEL.MASK_FORMER.ENC_LAYERS": (0, "only MaskFormer v1's decoder reads it, not Mask2Former's"),
    "MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD": (0.8, "only instance and panoptic inference read it"),
    "MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD": (0.8, "only panoptic inference reads it"),
}


class ConfigError(UserError, KeyError):
    """A config file or override the project cannot use; the message names the file or key."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0]) if self.args else ""


EVAL_TAG = "tag:yaml.org,2002:python/object/apply:eval"


# The most values (scalars, lists, mappings) a config file may expand to with its aliases counted at every use;
# official configs hold a few hundred. More is refused before anything is built ("billion laughs" files).
MAX_YAML_NODES = 100_000
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _ConfigLoader(yaml.SafeLoader):
    """yaml's SafeLoader plus the official configs' eval tag (through safe_eval); other Python tags refused; a key
    set twice in one mapping is refused (yaml would keep the last silently)."""

    config_file = "<config>"

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = self.construct_object(key_node)
            if key in seen:
                first = seen[key].start_mark.line + 1
                raise ConfigError(
                    f"{_where(self, key_node)}: {key} is set a second time in the same block (first at line "
                    f"{first}); YAML would silently drop the first: write each key once (merge the two blocks)"
                )
            seen[key] = key_node
        return super().construct_mapping(node, deep)


def _check_expanded_size(node: yaml.Node, filename: str) -> None:
    """ConfigError when the document, with every alias expanded, holds more than MAX_YAML_NODES values, or an
    alias inside the block it names (an endless value); counted on the composed graph, before construction."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(current: yaml.Node) -> int:
        key = id(current)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise ConfigError(
                f"{filename}, line {current.start_mark.line + 1}: an alias refers to the block that contains it "
                "(an endless value): write the value out"
            )
        open_nodes.add(key)
        total = 1
        if isinstance(current, yaml.SequenceNode):
            total += sum(size(child) for child in current.value)
        elif isinstance(current, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in current.value)
        open_nodes.discard(key)
        if total > MAX_YAML_NODES:
            raise ConfigError(
                f"{filename}: its aliases (*name) expand to more than {MAX_YAML_NODES} values (line "
                f"{current.start_mark.line + 1} onwards): a config this large is a mistake or an attack; not read"
            )
        sizes[key] = total
        return total

    size(node)


def _where(loader: _ConfigLoader, node: yaml.Node) -> str:
    return f"{loader.config_file}, line {node.start_mark.line + 1}"


def _construct_eval(loader: _ConfigLoader, node: yaml.Node) -> Any:
    example = '!!python/object/apply:eval ["[int(x * 0.1 * 512) for x in range(5, 21)]"]'
    if not isinstance(node, yaml.SequenceNode) or len(node.value) != 1:
        raise ConfigError(f"{_where(loader, node)}: the eval tag takes one quoted expression in brackets: {example}")
    expression = loader.construct_object(node.value[0])
    if not isinstance(expression, str):
        raise ConfigError(f"{_where(loader, node)}: the eval tag takes a quoted expression, got {expression!r}")
    try:
        return safe_eval(expression)
    except SafeEvalError as error:
        raise ConfigError(
            f"{_where(loader, node)}: !!python/object/apply:eval {expression!r}: {error}. Config files are read "
            f"without running code: only {_EVAL_ALLOWED} are evaluated; write the value itself instead"
        ) from None


def _refuse_python_tag(loader: _ConfigLoader, suffix: str, node: yaml.Node) -> Any:
    raise ConfigError(
        f"{_where(loader, node)}: the YAML tag !!python/{suffix} is not allowed: config files are read without "
        "running code (only !!python/object/apply:eval with arithmetic is accepted); write the value itself"
    )


_ConfigLoader.add_constructor(EVAL_TAG, _construct_eval)
_ConfigLoader.add_multi_constructor("tag:yaml.org,2002:python/", _refuse_python_tag)


def read_config_yaml(filename: str) -> dict:
    """One config file (no `_BASE_` resolution) as a dict, read with the safe loader; ConfigError naming the file
    and line for a YAML error, a refused tag, a key set twice in one block, or aliases that expand to more than
    MAX_YAML_NODES values (refused before they are expanded). Every YAML file the project reads goes through it."""
    try:
        with open(filename, encoding="utf-8") as stream:
            loader = _ConfigLoader(stream)
            loader.config_file = str(filename)
            try:
                node = loader.get_single_node()
                if node is None:
                    return {}
                _check_expanded_size(node, str(filename))
                data = loader.construct_document(node)
            finally:
                loader.dispose()
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = f", line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{filename}{line}: not valid YAML: {error.problem or error.context}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{filename}: not valid YAML: {error}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{filename}: not a UTF-8 text file ({error.reason})") from None
    except RecursionError:
        raise ConfigError(f"{filename}: blocks nested too deeply to be a config; not read") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{filename}: a config file holds KEY: value lines, got a {type(data).__name__}")
    return data


def load_yaml_chain(filename: str, _chain: tuple[str, ...] = ()) -> dict:
    """`filename` merged over its `_BASE_` file(s), as fvcore does (a base path is relative to the file naming it;
    a list of bases is merged in order), every file read by `read_config_yaml`."""
    resolved = os.path.realpath(filename)
    if resolved in _chain:
        raise ConfigError(f"{filename}: its _BASE_ chain comes back to itself; remove the loop")
    if not os.path.isfile(filename):
        named_by = f" (the _BASE_ of {_chain[-1]})" if _chain else ""
        raise ConfigError(f"config file not found: {filename}{named_by}")
    data = read_config_yaml(filename)
    if BASE_KEY not in data:
        return data
    bases = data.pop(BASE_KEY)
    merged: dict = {}
    for base in bases if isinstance(bases, list) else [bases]:
        if not isinstance(base, str):
            raise ConfigError(f"{filename}: _BASE_ must be a file name or a list of them, got {base!r}")
        if base.startswith(("http://", "https://")):
            raise ConfigError(f"{filename}: _BASE_ {base}: nothing is downloaded; give a local file")
        path = os.path.expanduser(base)
        if not os.path.isabs(path):
            path = os.path.join(os.path.dirname(filename), path)
        _merge_into(load_yaml_chain(path, (*_chain, resolved)), merged, path)
    _merge_into(data, merged, filename)
    return merged


def _merge_into(source: dict, target: dict, source_file: str, prefix: str = "") -> None:
    for key, value in source.items():
        if isinstance(value, dict) and key in target:
            if not isinstance(target[key], dict):
                raise ConfigError(f"{source_file}: {prefix}{key} is a group of keys here but a value in its _BASE_")
            _merge_into(value, target[key], source_file, f"{prefix}{key}.")
        else:
            target[key] = value


class CfgNode(_FvCfgNode):
    """fvcore's CfgNode whose unknown-key errors name the closest existing keys, and whose files (and their
    `_BASE_` chain) are read with the safe loader."""

    @classmethod
    def load_yaml_with_base(cls, filename: str, allow_unsafe: bool = False) -> dict:
        """fvcore's `_BASE_` inheritance through `load_yaml_chain`. `allow_unsafe` is accepted for fvcore's
        signature and changes nothing: no file is read with yaml.unsafe_load."""
        return load_yaml_chain(str(filename))

    def merge_from_file(self, cfg_filename: str, allow_unsafe: bool = False) -> None:
        try:
            loaded = _widened(self, self.load_yaml_with_base(cfg_filename))
            self.merge_from_other_cfg(type(self)(loaded))
        except ConfigError:
            raise
        except KeyError as error:
            raise _unknown_key_error(self, error, source=cfg_filename) from None

    def merge_from_list(self, cfg_list: list) -> None:
        flags = [item for item in cfg_list if isinstance(item, str) and item.startswith("--")]
        if flags:
            raise ValueError(f"{flags[0]} stands among the KEY VALUE overrides: put options before them")
        if len(cfg_list) % 2 != 0:
            raise ValueError(f"config overrides must be KEY VALUE pairs, got an odd number: {cfg_list}")
        known = set(flatten_keys(self))
        for key in cfg_list[0::2]:
            if key not in known:
                raise KeyError(_unknown_key_message(key, known, source="command line"))
        widened = []
        for key, value in zip(cfg_list[0::2], cfg_list[1::2], strict=True):
            widened += [key, _float_value(_lookup(self, key), value)]
        super().merge_from_list(widened)


def _float_value(default: Any, value: Any) -> Any:
    """For a float key, an integer (`0`, as people type it) or `inf` / `.inf` as that float; else `value` as it is."""
    if not isinstance(default, float):
        return value
    text = value.strip().lower() if isinstance(value, str) else None
    if text is not None and text.lstrip("+-") in ("inf", ".inf"):
        return float(text.replace(".inf", "inf"))
    if text is not None and text.lstrip("+-").isdigit():
        return float(text)
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _widened(defaults: _FvCfgNode, data: dict) -> dict:
    """`data` (a loaded config file) with integers given for float keys of `defaults` made floats."""
    for key, value in data.items():
        default = defaults.get(key) if isinstance(defaults, dict) else None
        if isinstance(value, dict) and isinstance(default, dict):
            _widened(default, value)
        elif default is not None:
            data[key] = _float_value(default, value)
    return data


def load_config(config_file: str | None, opts: list[str] | tuple[str, ...] = (), freeze: bool = True) -> CfgNode:
    """The one way every entry point builds its config: defaults, then `config_file` (with its `_BASE_` chain),
    then the KEY VALUE `opts`; frozen unless `freeze=False`. Problems raise ConfigError naming the file or key."""
    cfg = get_cfg()
    if config_file:
        if not Path(config_file).is_file():
            raise ConfigError(f"config file not found: {config_file}")
        try:
            cfg.merge_from_file(str(config_file))
        except ConfigError:
            raise
        except KeyError as error:
            raise ConfigError(str(error.args[0]) if error.args else str(error)) from None
        except (yaml.YAMLError, ValueError, TypeError, AssertionError) as error:
            raise ConfigError(f"{config_file}: {error}") from None
    try:
        cfg.merge_from_list(list(opts))
    except KeyError as error:
        raise ConfigError(str(error.args[0]) if error.args else str(error)) from None
    except (ValueError, TypeError, AssertionError) as error:
        raise ConfigError(f"command-line overrides: {error}") from None
    check_config_values(cfg)
    if freeze:
        cfg.freeze()
    return cfg


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _sizes(value: Any, least: int) -> bool:
    """A non-empty list of whole numbers >= `least`."""
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    return bool(items) and all(isinstance(v, int) and not isinstance(v, bool) and v >= least for v in items)


# Keys whose values cannot work outside a range: (key, test, what to give). Read by load_config, so every tool
# (train_net, predict, evaluate, ...) refuses them in one line before anything is built.
VALUE_RULES: tuple[tuple[str, Callable[[Any, _FvCfgNode], bool], str], ...] = (
    ("SOLVER.IMS_PER_BATCH", lambda v, c: isinstance(v, int) and v >= 1, "the images per iteration (>= 1)"),
    ("SOLVER.BASE_LR", lambda v, c: _is_number(v) and v >= 0, "a learning rate >= 0 (Mask2Former: 0.0001)"),
    ("MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", lambda v, c: isinstance(v, int) and v >= 1, "the queries (>= 1; 100)"),
    ("MODEL.SEM_SEG_HEAD.NUM_CLASSES", lambda v, c: isinstance(v, int) and v >= 1, "the classes with background"),
    ("DATALOADER.NUM_WORKERS", lambda v, c: isinstance(v, int) and v >= 0, "data-loading processes (>= 0)"),
    ("INPUT.MIN_SIZE_TRAIN", lambda v, c: _sizes(v, 1), "one or more short sides in pixels, e.g. (512,)"),
    (
        "INPUT.MIN_SIZE_TRAIN",
        lambda v, c: c.INPUT.MIN_SIZE_TRAIN_SAMPLING != "range" or (isinstance(v, (list, tuple)) and len(v) == 2),
        "two sizes [min, max] with INPUT.MIN_SIZE_TRAIN_SAMPLING range",
    ),
    (
        "TEST.AUG.MIN_SIZES",
        lambda v, c: not c.TEST.AUG.ENABLED or _sizes(v, 0),
        "one or more short sides in pixels for test-time augmentation (TEST.AUG.ENABLED, predict.py --tta)",
    ),
)


def check_config_values(cfg: _FvCfgNode) -> None:
    """ConfigError for a key of ONLY_DEFAULT set to another value, or a key of VALUE_RULES set to a value that
    cannot work (the message names the key, its value and what to give)."""
    for key, (allowed, reason) in ONLY_DEFAULT.items():
        value = _lookup(cfg, key)
        if value != allowed or type(value) is not type(allowed):
            raise ConfigError(f"{key} is {value!r}: only {allowed!r} is supported ({reason})")
    for key, test, wanted in VALUE_RULES:
        value = _lookup(cfg, key)
        if not test(value, cfg):
            shown = list(value) if isinstance(value, tuple) else value
            raise ConfigError(f"{key} is {shown!r}, which cannot work: give {wanted}")


def _lookup(cfg: _FvCfgNode, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = node[part]
    return node


def flatten_keys(cfg: _FvCfgNode, prefix: str = "") -> Iterator[str]:
    """Every leaf key of `cfg` in dotted form (`INPUT.CROP.SIZE`)."""
    for key, value in cfg.items():
        full = f"{prefix}{key}"
        if isinstance(value, _FvCfgNode):
            yield from flatten_keys(value, prefix=f"{full}.")
        else:
            yield full


def _unknown_key_message(key: str, known: set[str], source: str) -> str:
    if key in RENAMED_KEYS:
        return f"config key '{key}' (from {source}) is now '{RENAMED_KEYS[key]}', the official name: rename it"
    close = difflib.get_close_matches(key, sorted(known), n=3, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return f"unknown config key '{key}' (from {source}).{hint}"


def _unknown_key_error(cfg: CfgNode, error: KeyError, source: str) -> KeyError:
    text = str(error.args[0]) if error.args else ""
    prefix = "Non-existent config key: "
    if not text.startswith(prefix):
        return error
    key = text[len(prefix) :]
    return KeyError(_unknown_key_message(key, set(flatten_keys(cfg)), source))


def _default_train_sizes(crop: int) -> tuple[int, ...]:
    # Mask2Former's semantic recipe: short side jittered over 0.5x..2.0x of the crop in steps of 0.1x.
    return tuple(int(x * 0.1 * crop) for x in range(5, 21))


def get_cfg() -> CfgNode:
    """A fresh copy of the project's defaults: the shared keys and those of every registered family and plug-in."""
    _C = CfgNode()
    _C.VERSION = 2  # detectron2's config version; only 2 (older files used other key names)
    _C.SEED = 42  # global seed for sampling, augmentation and initialisation; < 0 draws one and logs it
    _C.OUTPUT_DIR = "./output"  # run folder: merged config, logs, metrics, checkpoints

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

    _C.DATASETS = CfgNode()
    _C.DATASETS.ROOT = ""  # competition data root; empty = $TRASH_DATA
    _C.DATASETS.TRAIN = ("trash_train",)  # registered dataset names used for training
    _C.DATASETS.TEST = ("trash_val",)  # registered dataset names used for evaluation
    _C.DATASETS.REGISTER = []  # extra datasets: a list of [name, json_file, image_root] triples
    _C.DATASETS.LABEL_CACHE_DIR = ""  # rendered label maps; empty = $TRASH_CACHE or ~/.cache/trashseg
    _C.DATASETS.SKIP_BAD_ANNOTATIONS = False  # skip bad annotations/images (with a summary) instead of failing
    _C.DATASETS.CROWD_AS_IGNORE = False  # paint iscrowd=1 annotations with the ignore value

    _C.DATALOADER = CfgNode()
    _C.DATALOADER.NUM_WORKERS = 4  # data-loading processes per GPU
    # detectron2 drops training images without (non-crowd) instance annotations; it filters only datasets whose
    # dicts hold "annotations", never semantic ones (sem_seg_file_name), so for these datasets it changes nothing,
    # there or here: any value is accepted. Training images whose label map is all ignore are kept, as there.
    _C.DATALOADER.FILTER_EMPTY_ANNOTATIONS = True

    add_model_config(_C)
    add_solver_config(_C)
    add_test_config(_C)
    add_tracking_config(_C)
    for _name, add_part_config in [*CONFIG_ADDERS, *PLUGIN_CONFIG_ADDERS]:
        add_part_config(_C)
    return _C


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
