"""Models: ViT backbone (split embed/encode) and the whole SPMix network."""

from spmix_jax.models.spmix_net import SPMixNet, make_model
from spmix_jax.models.vit import ViT, decode_variant

__all__ = ["SPMixNet", "ViT", "decode_variant", "make_model"]
