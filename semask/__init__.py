"""SeMask (Jain et al., 2021): semantic layers inside the backbone stages and a semantic prior loss.

Importing this package registers `D2SeMaskSwinTransformer` (backbone), `BranchMaskFormerHead` (head) and
`SeMaskMaskFormer` (meta architecture), the official names, and the MODEL.SEMASK.* keys;
`mask2former.modeling.register_all` imports it, so configs can name them.
"""

from . import config  # noqa: F401  (registers add_semask_config)
from .backbone import (
    D2SeMaskSwinTransformer,
    class_map_key,
    load_semask_pretrained,
    official_global_stages,
    semask_checkpoint_filter_fn,
)
from .head import BranchMaskFormerHead, semantic_prior
from .meta_arch import PRIOR_LOSS, SeMaskMaskFormer, semantic_prior_loss

__all__ = [
    "PRIOR_LOSS",
    "BranchMaskFormerHead",
    "D2SeMaskSwinTransformer",
    "SeMaskMaskFormer",
    "class_map_key",
    "load_semask_pretrained",
    "official_global_stages",
    "semantic_prior",
    "semantic_prior_loss",
    "semask_checkpoint_filter_fn",
]
