"""Importing this module registers every backbone, pixel decoder and transformer decoder."""

from .backbone import dinat, swin  # noqa: F401
from .pixel_decoder import msdeformattn  # noqa: F401
from .transformer_decoder import masked_attention  # noqa: F401
