"""EarthCrafter components (Liu et al., AAAI-26, dual-sparse latent diffusion)."""

from .struct_vae import EarthCrafterStructVAE

__all__ = ["EarthCrafterStructVAE"]
