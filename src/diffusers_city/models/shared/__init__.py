"""Model parts shared by every family: sparse VAE blocks, the diagonal-Gaussian posterior, the sin/cos
positional encoding, sparse U-Net blocks, the adaLN / cross-attention sparse transformer block and the
VGG19 perceptual loss. Family models import from here, never from each other."""

from .distributions import AutoencoderOutput, DiagonalGaussianDistribution
from .vgg19_perceptual import VGG19PerceptualLoss

__all__ = ["AutoencoderOutput", "DiagonalGaussianDistribution", "VGG19PerceptualLoss"]
