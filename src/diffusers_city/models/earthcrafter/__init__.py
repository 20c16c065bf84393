"""EarthCrafter components (Liu et al., AAAI-26, dual-sparse latent diffusion): the structure and
texture VAEs, the condition network and the flow models StructFM (occupancy transformer, structure
flow) and TexFM."""

from .condition_encoder import EarthCrafterConditionEncoder
from .occupancy_transformer import EarthCrafterOccupancyTransformer
from .struct_flow import EarthCrafterStructFlow
from .struct_vae import EarthCrafterStructVAE
from .tex_flow import EarthCrafterTexFlow
from .tex_vae import EarthCrafterTexVAE

__all__ = [
    "EarthCrafterConditionEncoder",
    "EarthCrafterOccupancyTransformer",
    "EarthCrafterStructFlow",
    "EarthCrafterStructVAE",
    "EarthCrafterTexFlow",
    "EarthCrafterTexVAE",
]
