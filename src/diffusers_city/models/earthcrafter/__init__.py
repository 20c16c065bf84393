"""EarthCrafter components (Liu et al., AAAI-26, dual-sparse latent diffusion)."""

from .struct_vae import EarthCrafterStructVAE
from .tex_vae import EarthCrafterTexVAE

__all__ = ["EarthCrafterStructVAE", "EarthCrafterTexVAE"]
