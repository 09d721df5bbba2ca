"""Any timm model as a backbone: its feature maps as res1..res5 by stride (2, 4, 8, 16, 32).

MODEL.BACKBONE.NAME "TimmBackbone" builds `timm.create_model(MODEL.TIMM.NAME, features_only=True, **MODEL.TIMM.ARGS)`
without pre-trained weights (nothing is downloaded): ConvNeXt, EfficientNet, ResNet, HRNet, ... with the timm
model's own code. Channels-last outputs (timm's Swin, for instance) are returned channels-first. MODEL.TIMM.ARGS holds
the model's keyword arguments under timm's names (a tiny model for tests: the same class with small depths and widths).

MODEL.BACKBONE.WEIGHTS: an ImageNet checkpoint of the whole timm model (timm's .safetensors / .bin, or the layout
timm's own `checkpoint_filter_fn` for that model converts, such as the official ConvNeXt releases), read with the
project's safe reader, converted by that filter, and loaded into the feature extractor; the classifier's tensors are
unused.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch
from fvcore.common.config import CfgNode

from ...config import CONFIG_ADDERS, ConfigError
from ...config import CfgNode as ConfigNode
from ...io.checkpoints import read_checkpoint
from ..tiny import register_tiny_sizes
from .base import BACKBONE_REGISTRY, Backbone

logger = logging.getLogger(__name__)


def timm_kwargs(node: CfgNode) -> dict:
    """MODEL.TIMM.ARGS as plain keyword arguments (lists become tuples, as timm's signatures expect)."""

    def plain(value: object) -> object:
        if isinstance(value, CfgNode):
            return {key: plain(item) for key, item in value.items()}
        if isinstance(value, list):
            return tuple(plain(item) for item in value)
        return value

    return {key: plain(value) for key, value in node.items()}


@BACKBONE_REGISTRY.register()
class TimmBackbone(Backbone):
    """timm's feature extractor for MODEL.TIMM.NAME; outputs named by stride (res1 = 2 ... res5 = 32)."""

    def __init__(self, name: str, kwargs: dict | None = None, output_stride: int = 32) -> None:
        super().__init__()
        import timm

        self.timm_name = name
        self.timm_kwargs = dict(kwargs or {})
        extra = {} if output_stride == 32 else {"output_stride": output_stride}
        try:
            self.body = timm.create_model(name, pretrained=False, features_only=True, **extra, **self.timm_kwargs)
        except (RuntimeError, TypeError, ValueError) as error:  # unknown model, argument or output stride
            first = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ConfigError(
                f"MODEL.TIMM.NAME {name!r} with MODEL.TIMM.ARGS {self.timm_kwargs} and OUTPUT_STRIDE {output_stride}: "
                f"timm refused it ({first}); see timm.list_models() and the model's arguments"
            ) from None
        self.channels_last = getattr(self.body, "output_fmt", "NCHW") == "NHWC"
        reductions, channels = self.body.feature_info.reduction(), self.body.feature_info.channels()
        # levels halve the resolution one after the other (a dilated level keeps its name and its real stride)
        first = {2: 1, 4: 2}.get(reductions[0])
        if first is None or first + len(reductions) - 1 < 5:
            raise ConfigError(
                f"MODEL.TIMM.NAME {name!r}: its features have strides {reductions}; a backbone needs strides 4 to 32 "
                "(a plain ViT: MODEL.BACKBONE.NAME ViTPyramid)"
            )
        self._index_names = [f"res{first + index}" if first + index <= 5 else None for index in range(len(reductions))]
        self._out_features = [name for name in self._index_names if name is not None]
        self._out_feature_channels = {n: int(c) for n, c in zip(self._index_names, channels, strict=True) if n}
        self._out_feature_strides = {n: int(r) for n, r in zip(self._index_names, reductions, strict=True) if n}

    @classmethod
    def from_config(cls, cfg: CfgNode) -> TimmBackbone:
        return cls(cfg.MODEL.TIMM.NAME, timm_kwargs(cfg.MODEL.TIMM.ARGS), int(cfg.MODEL.TIMM.OUTPUT_STRIDE))

    @property
    def size_divisibility(self) -> int:
        return 32

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = {}
        for name, feature in zip(self._index_names, self.body(x), strict=True):
            if name is not None:
                outputs[name] = feature.permute(0, 3, 1, 2).contiguous() if self.channels_last else feature
        return outputs

    @staticmethod
    def load_pretrained(model: TimmBackbone, path: str | Path) -> dict[str, list[str]]:
        """MODEL.BACKBONE.WEIGHTS: a whole timm model's checkpoint into the feature extractor (see the module doc)."""
        return load_timm_pretrained(model, path)


def feature_key_map(feature_keys: list[str], model_keys: set[str]) -> dict[str, str]:
    """Each feature-extractor key -> the whole model's key it is. timm's feature wrappers keep the model's modules
    but may name a nested one by joining its path with '_' (stages.0 -> stages_0)."""
    by_flattened: dict[str, str] = {}
    for key in model_keys:
        parts = key.split(".")
        for cut in range(1, len(parts)):
            by_flattened.setdefault("_".join(parts[:cut]) + "." + ".".join(parts[cut:]), key)
    mapping = {}
    for key in feature_keys:
        if key in model_keys:
            mapping[key] = key
        elif key in by_flattened:
            mapping[key] = by_flattened[key]
    return mapping


def timm_filtered(state: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """`state` through the `checkpoint_filter_fn` of the timm module that defines `model`'s class (timm's own
    conversion of official and older checkpoints: key renames, position-embedding resizing); unchanged without one."""
    convert = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    return state if convert is None else convert(state, model)


def fit_by_shape(
    candidates: dict[str, torch.Tensor], own: dict[str, torch.Tensor], path: str | Path, model_name: str, hint: str
) -> dict[str, torch.Tensor]:
    """The candidates whose shape is that of the same key in `own`. Any other shape, or nothing that fits, is a
    ConfigError: MODEL.BACKBONE.WEIGHTS `path` does not fit `model_name`, then `hint` (what to give instead)."""
    loaded, mismatched = {}, []
    for key, value in candidates.items():
        if tuple(value.shape) == tuple(own[key].shape):
            loaded[key] = value
        else:
            mismatched.append(f"{key} {tuple(value.shape)} vs {tuple(own[key].shape)}")
    if mismatched or not loaded:
        raise ConfigError(
            f"MODEL.BACKBONE.WEIGHTS {path} does not fit {model_name}: {len(loaded)} tensors fit, shapes differ for "
            f"{mismatched[:3]}{hint}"
        )
    return loaded


def load_timm_pretrained(model: TimmBackbone, path: str | Path) -> dict[str, list[str]]:
    """Read `path` safely, convert it with timm's filter for this model, load it; returns missing / unused keys."""
    import timm

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"MODEL.BACKBONE.WEIGHTS not found: {path}")
    state = read_checkpoint(path)
    whole = timm.create_model(model.timm_name, pretrained=False, **model.timm_kwargs)
    state = timm_filtered(state, whole)
    feature_state = model.body.state_dict()
    mapping = feature_key_map(list(feature_state), set(whole.state_dict()))
    candidates = {key: state[source] for key, source in mapping.items() if source in state}
    name = f"timm model {model.timm_name!r} with MODEL.TIMM.ARGS {model.timm_kwargs}"
    loaded = fit_by_shape(candidates, feature_state, path, name, ": give the checkpoint of the model MODEL.TIMM names")
    missing = [key for key, source in mapping.items() if source not in state]
    missing += [key for key in feature_state if key not in mapping]
    model.body.load_state_dict(loaded, strict=False)
    used = set(mapping.values())
    unused = sorted(key for key in state if key not in used)
    if missing:
        logger.warning("timm weights %s: %d backbone tensors missing, e.g. %s", path, len(missing), missing[:3])
    logger.info("timm weights %s: %d tensors loaded, %d unused (the classifier)", path, len(loaded), len(unused))
    return {"missing": missing, "unexpected": unused}


@CONFIG_ADDERS.register()
def add_timm_config(cfg: CfgNode) -> None:
    """MODEL.TIMM.*: the timm model behind MODEL.BACKBONE.NAME "TimmBackbone"."""
    cfg.MODEL.TIMM = ConfigNode()
    cfg.MODEL.TIMM.NAME = "convnext_tiny"  # a timm model name (timm.list_models())
    # the model's keyword arguments, timm's names (e.g. {drop_path_rate: 0.4}, or small depths/dims for a tiny one)
    cfg.MODEL.TIMM.ARGS = ConfigNode(new_allowed=True)
    cfg.MODEL.TIMM.OUTPUT_STRIDE = 32  # 16 or 8: dilated last stages (DeepLabV3+), where the model supports it


# Tiny timm backbones are chosen by name: the smallest model of the configured model's timm class, narrowed further
# where the class takes widths (name -> (tiny name, MODEL.TIMM.ARGS sizes)).
TINY_TIMM_MODELS: dict[str, tuple[str, dict]] = {
    "convnext_tiny": ("convnext_atto", {"dims": [16, 32, 64, 128]}),
    "convnext_xlarge": ("convnext_atto", {"dims": [16, 32, 64, 128]}),
    "convnext_atto": ("convnext_atto", {"dims": [16, 32, 64, 128]}),
    "efficientnet_b6": ("test_efficientnet", {}),  # timm's test model of the EfficientNet class (82k parameters)
    "efficientnet_b0": ("test_efficientnet", {}),
    "hrnet_w48": ("hrnet_w18_small", {}),
}


def shrink_timm_to_tiny(cfg: CfgNode) -> None:
    """With MODEL.BACKBONE.NAME TimmBackbone: MODEL.TIMM.NAME swapped for its TINY_TIMM_MODELS sibling and the sizes
    set in MODEL.TIMM.ARGS (its other ARGS kept); a KeyError for a name the table lacks."""
    if cfg.MODEL.BACKBONE.NAME != "TimmBackbone":
        return
    name, sizes = TINY_TIMM_MODELS[cfg.MODEL.TIMM.NAME]
    cfg.MODEL.TIMM.NAME = name
    for key, value in sizes.items():
        cfg.MODEL.TIMM.ARGS[key] = value


register_tiny_sizes("timm", [], [(BACKBONE_REGISTRY, "TimmBackbone")], shrink=shrink_timm_to_tiny)
