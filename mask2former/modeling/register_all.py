"""Importing this module registers every model family of the package: backbones, pixel decoders, transformer
decoders, per-pixel models, and their config keys. Plug-ins (semask) register themselves when an entry point
imports them."""

from .backbone import dinat, resnet, swin, timm_backbone, vit_pyramid  # noqa: F401
from .eomt import config as eomt_config  # noqa: F401
from .eomt import meta_arch as eomt_meta_arch  # noqa: F401
from .per_pixel import config as per_pixel_config  # noqa: F401
from .per_pixel import meta_arch as per_pixel_meta_arch  # noqa: F401
from .per_pixel import ocr  # noqa: F401
from .pixel_decoder import fapn, msdeformattn, msdeformattn_fapn  # noqa: F401
from .transformer_decoder import masked_attention  # noqa: F401
