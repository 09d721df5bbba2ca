"""SeMask (Jain et al., 2021): semantic layers inside the backbone stages and a semantic prior loss.

Importing this package registers `D2SeMaskSwinTransformer` (backbone) and `SeMaskMaskFormer` (meta
architecture); `mask2former.modeling.register_all` imports it, so configs can name them.
"""

from . import config  # noqa: F401  (registers add_semask_config)
from .backbone import SEMANTIC_PRIOR, D2SeMaskSwinTransformer, load_semask_pretrained, semask_checkpoint_filter_fn
from .meta_arch import PRIOR_LOSS, SeMaskMaskFormer, semantic_prior_loss

__all__ = [
    "PRIOR_LOSS",
    "SEMANTIC_PRIOR",
    "D2SeMaskSwinTransformer",
    "SeMaskMaskFormer",
    "load_semask_pretrained",
    "semask_checkpoint_filter_fn",
    "semantic_prior_loss",
]
