"""Models: ViT backbone (split embed/encode) and the SPMix heads."""

from spmix_jax.models.heads import SPMixNet
from spmix_jax.models.vit import ViT, decode_variant

__all__ = ["SPMixNet", "ViT", "decode_variant"]
