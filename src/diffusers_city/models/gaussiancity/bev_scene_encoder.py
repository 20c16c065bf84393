"""GaussianCity's scene encoder (Sec. 3.3, Eq. 7-8): BEV height + one-hot semantics -> a small
feature map giving background points their context, sampled at each point's BEV position.

It also owns the BEV-point settings of the pipeline (per-class sampling strides of the density
map, view distance of the visibility pass), so they are saved with the pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from .bev import DEFAULT_CLASS_STRIDES

__all__ = ["BEVSceneEncoder"]


class BEVSceneEncoder(ModelMixin, ConfigMixin):
    """Conv encoder over ``[height / height_scale, one-hot(semantic)]`` BEV maps.

    Args:
        num_classes: semantic classes of the one-hot input.
        height_scale: metres mapped to 1 in the height channel.
        base_channels: width of the first conv (doubled at each downsampling, capped at 4x).
        out_channels: channels of the feature map (the decoder's ``scene_channels``).
        num_down: stride-2 convs; the feature map is ``2**num_down`` times coarser than the map.
        class_strides: BEV-point sampling stride per class (pixels).
        max_view_distance: metres after which visibility rays stop (bounds per-frame memory).
    """

    @register_to_config
    def __init__(
        self,
        num_classes: int = 8,
        height_scale: float = 100.0,
        base_channels: int = 32,
        out_channels: int = 16,
        num_down: int = 2,
        class_strides: Sequence[int] = DEFAULT_CLASS_STRIDES,
        max_view_distance: float = 1500.0,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(1 + num_classes, base_channels, 3, padding=1), nn.LeakyReLU(0.2)]
        ch = base_channels
        for i in range(num_down):
            out = base_channels * min(2 ** (i + 1), 4)
            layers += [nn.Conv2d(ch, out, 3, stride=2, padding=1), nn.GroupNorm(min(8, out), out), nn.LeakyReLU(0.2)]
            ch = out
        layers += [nn.Conv2d(ch, ch, 3, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(ch, out_channels, 1)]
        self.net = nn.Sequential(*layers)

    @property
    def receptive_margin(self) -> int:
        """Map pixels of context a crop needs around the points for border-free features."""
        return 4 * 2**self.config.num_down

    def forward(self, semantic: torch.Tensor, height: torch.Tensor) -> torch.Tensor:
        """``semantic [B, H, W]`` long, ``height [B, H, W]`` metres -> features ``[B, C, H', W']``."""
        if semantic.shape != height.shape or semantic.dim() != 3:
            raise ValueError(f"semantic {list(semantic.shape)} and height {list(height.shape)} must both be [B, H, W]")
        dtype = self.net[0].weight.dtype
        onehot = F.one_hot(semantic.long(), self.config.num_classes).permute(0, 3, 1, 2).to(dtype)
        x = torch.cat([(height.to(dtype) / self.config.height_scale)[:, None], onehot], 1)
        return self.net(x)

    @staticmethod
    def sample(features: torch.Tensor, xy: torch.Tensor, map_size: tuple[int, int]) -> torch.Tensor:
        """Bilinear features ``[N, C]`` of item 0 at ``xy [N, 2]`` (map pixel units, x = column)
        of a ``map_size = (H, W)`` map whose features are ``features [1, C, H', W']``."""
        h, w = map_size
        grid = torch.stack([xy[:, 0] / w * 2 - 1, xy[:, 1] / h * 2 - 1], -1).to(features.dtype)
        out = F.grid_sample(features, grid[None, None], mode="bilinear", padding_mode="border", align_corners=False)
        return out[0, :, 0].T
