"""EarthCrafter StructFM stage 2: the structure latent on the occupied cells of the (L/8)^3 grid.

A rectified flow on the StructVAE latent (``latent_channels`` per occupied cell), predicted by the
conditioned sparse U-Net of :mod:`.sparse_flow_unet` with Swin window attention and full attention
at its coarsest level; the occupied cells come from stage 1 (:class:`EarthCrafterOccupancyTransformer`).
"""

from __future__ import annotations

from diffusers.configuration_utils import register_to_config

from .sparse_flow_unet import EarthCrafterSparseFlowOutput, SparseFlowModel, SparseFlowUNet

__all__ = ["EarthCrafterSparseFlowOutput", "EarthCrafterStructFlow"]


class EarthCrafterStructFlow(SparseFlowModel):
    """Structure-latent flow on the occupied coarse cells.

    Args:
        in_channels: structure latent channels (the StructVAE's ``latent_channels``).
        grid_size: coarse grid edge G = L / 8.
        cell_size: finest voxels per coarse cell (8).
        block_channels: U-Net widths per level.
        attention: per level ``"window"``, ``"full"`` or ``"none"``.
        kernel_sizes: per level, the residual blocks' convolution size (1 or 3).
        window_size: Swin window edge in cells.
        layers_per_block: units per level.
        num_heads: attention heads.
        context_dim: condition token width.
        column_condition: add the condition map's features at each voxel's column to the input
            (:class:`~.layers.ColumnCondition`), next to cross-attention.
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 32,
        grid_size: int = 8,
        cell_size: int = 8,
        block_channels: tuple[int, ...] = (48, 96),
        attention: tuple[str, ...] = ("window", "full"),
        kernel_sizes: tuple[int, ...] = (3, 3),
        window_size: int = 4,
        layers_per_block: int = 1,
        num_heads: int = 4,
        context_dim: int = 128,
        column_condition: bool = True,
    ) -> None:
        super().__init__()
        self.unet = SparseFlowUNet(
            in_channels,
            in_channels,
            grid_size,
            cell_size,
            block_channels,
            attention,
            kernel_sizes,
            window_size,
            layers_per_block,
            num_heads,
            context_dim,
            column_condition,
        )
