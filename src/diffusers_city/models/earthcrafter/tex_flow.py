"""EarthCrafter TexFM: the texture latent on every voxel of the decoded structure.

A rectified flow on the TexVAE latent (``latent_channels`` per voxel at the full resolution L),
predicted by the conditioned sparse U-Net of :mod:`.sparse_flow_unet`. The paper's TexFM has Swin
window attention at 1, 1/2 and 1/4 of the resolution and full attention at 1/8 (the ``paper``
preset); the defaults (the ``small`` preset) drop the attention and the 3^3 convolutions of the
finest levels, which cost most of a CPU forward, and keep the coarser levels' attention.
"""

from __future__ import annotations

from diffusers.configuration_utils import register_to_config

from .sparse_flow_unet import SparseFlowModel, SparseFlowUNet


class EarthCrafterTexFlow(SparseFlowModel):
    """Texture-latent flow on the structure's voxels.

    Args:
        in_channels: texture latent channels (the TexVAE's ``latent_channels``).
        resolution: tile edge L.
        block_channels: U-Net widths per level (resolution halved per level).
        attention: per level ``"window"``, ``"full"`` or ``"none"``.
        kernel_sizes: per level, the residual blocks' convolution size (1 or 3).
        window_size: Swin window edge in voxels of each level.
        layers_per_block: units per level.
        num_heads: attention heads.
        context_dim: condition token width.
        column_condition: add the condition map's features at each voxel's column to the input
            (:class:`~.layers.ColumnCondition`), next to cross-attention.
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 8,
        resolution: int = 64,
        block_channels: tuple[int, ...] = (32, 48, 64, 96),
        attention: tuple[str, ...] = ("none", "window", "window", "full"),
        kernel_sizes: tuple[int, ...] = (1, 1, 1, 3),
        window_size: int = 8,
        layers_per_block: int = 1,
        num_heads: int = 4,
        context_dim: int = 128,
        column_condition: bool = True,
    ) -> None:
        super().__init__()
        self.unet = SparseFlowUNet(
            in_channels,
            in_channels,
            resolution,
            1,
            block_channels,
            attention,
            kernel_sizes,
            window_size,
            layers_per_block,
            num_heads,
            context_dim,
            column_condition,
        )
