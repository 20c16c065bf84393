"""Semantic (N+1)-class discriminator of GaussianCity's training (Sec. 3.5, GANCraft style).

Five stride-2 spectral-norm convs build a feature pyramid; an FPN top-down path merges it back
to half resolution, where each pixel is classified into the N semantic classes (real) or the
extra "fake" class. Real images are trained against their one-hot segmentation, generated ones
against "fake"; the generator is trained to make its images classified as their segmentation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn
from torch.nn.utils import spectral_norm

__all__ = ["SemanticDiscriminator"]


class SemanticDiscriminator(ModelMixin, ConfigMixin):
    """Per-pixel (N+1)-class discriminator.

    Args:
        num_classes: semantic classes N (the fake class is index N).
        in_channels: image channels.
        base_channels: width of the first conv (128 in GaussianCity), doubled up to 4x.
        num_layers: stride-2 spectral-norm convs (5).
    """

    @register_to_config
    def __init__(self, num_classes: int = 8, in_channels: int = 3, base_channels: int = 128, num_layers: int = 5) -> None:
        super().__init__()
        chans = [base_channels * min(2**i, 4) for i in range(num_layers)]
        self.down = nn.ModuleList()
        prev = in_channels
        for ch in chans:
            self.down.append(spectral_norm(nn.Conv2d(prev, ch, 3, stride=2, padding=1)))
            prev = ch
        top = base_channels
        self.lateral = nn.ModuleList(spectral_norm(nn.Conv2d(ch, top, 1)) for ch in chans)
        self.smooth = spectral_norm(nn.Conv2d(top, top, 3, padding=1))
        self.head = nn.Conv2d(top, num_classes + 1, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``images [B, 3, H, W]`` in 0..1 -> logits ``[B, N + 1, H, W]``."""
        x = images * 2 - 1
        feats = []
        for conv in self.down:
            x = F.leaky_relu(conv(x), 0.2)
            feats.append(x)
        y = self.lateral[-1](feats[-1])
        for i in range(len(feats) - 2, -1, -1):
            lat = self.lateral[i](feats[i])
            y = lat + F.interpolate(y, size=lat.shape[-2:], mode="nearest")
        logits = self.head(F.leaky_relu(self.smooth(y), 0.2))
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)

    def loss(
        self, logits: torch.Tensor, segmentation: torch.Tensor, real: bool, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Per-pixel cross-entropy against ``segmentation [B, H, W]`` (real) or the fake class,
        averaged over ``mask [B, H, W]`` (the covered pixels) when given."""
        target = segmentation.long() if real else torch.full_like(segmentation, self.config.num_classes, dtype=torch.long)
        ce = F.cross_entropy(logits, target, reduction="none")
        if mask is None:
            return ce.mean()
        mask = mask.to(ce.dtype)
        return (ce * mask).sum() / mask.sum().clamp(min=1.0)
