"""GaussianCity's BEV-point decoder (Sec. 3.4): positional encoder, point serializer, serialized
point transformer (PTv3-like U-Net on the sparse core's attention) and modulated MLP -> the RGB of
one 3D Gaussian per BEV point. The other Gaussian attributes take the paper's defaults (App. A.2):
opacity 1, identity rotation, scale = point stride x ``gaussian_scale_factor``, flat classes thin
in z.

The pipeline holds two instances: the *building* decoder (sin/cos encoding of absolute and
instance-relative coordinates, point transformer, one style code per building instance, each
instance its own batch item) and the *background* decoder (sin/cos encoding of absolute
coordinates plus the scene encoder's BEV features, no transformer, one scene style code).
"Absolute" coordinates are those of the layout frame (metres from the layout's origin), never
georeferenced world coordinates: the encoding was trained on layouts at origin 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ...render import Gaussians
from ...sparse.attention import SparseTransformerBlock
from ...sparse.tensor import SparseTensor
from .bev import FLAT_CLASSES
from .layers import ModulatedLinear, leaky_relu, pool_features, sincos_encoding
from .point_hierarchy import PointHierarchy

__all__ = ["BEVPointDecoder"]

STYLE_DISTRIBUTIONS = ("normal",)


class _Stage(nn.Module):
    """Serialized-attention transformer blocks at one level of the point U-Net."""

    def __init__(self, dim: int, depth: int, head_dim: int, patch_size: int, order: str, grid_size: int) -> None:
        super().__init__()
        heads = max(1, dim // head_dim)
        self.blocks = nn.ModuleList(
            SparseTransformerBlock(dim, heads, attention="serialized", patch_size=patch_size, order=order, grid_size=grid_size)
            for _ in range(depth)
        )

    def forward(self, x: SparseTensor) -> SparseTensor:
        for block in self.blocks:
            x = block(x)
        return x


class BEVPointDecoder(ModelMixin, ConfigMixin):
    """BEV points -> Gaussian colours (GaussianCity Eq. 11-16).

    Args:
        num_classes: semantic classes (class one-hot projected and added in the modulated MLP).
        num_freqs: sin/cos frequencies of the positional encoding (10 in the paper).
        coord_scale: metres mapped to one unit of the absolute-coordinate (layout-frame) encoding.
        use_relative: encode instance-relative coordinates too (building decoder).
        scene_channels: channels of the scene-encoder features concatenated to the input (0: none).
        enc_depths / enc_channels: point-transformer encoder (paper: (2, 2, 2, 6, 2), 32..512);
            empty disables the transformer (background decoder).
        dec_depths / dec_channels: decoder stages from fine to coarse (paper: (2, 2, 2, 2),
            (64, 64, 128, 256)); one fewer than the encoder stages.
        head_dim: channels per attention head.
        patch_size: serialized attention patch (1024 in the paper).
        serialize_order: ``"grid"`` (Eq. 13), ``"z"`` or ``"hilbert"``.
        grid_size: cell size of the serialization in voxels.
        style_dim: size of the style code z (256).
        style_distribution: the distribution style codes are drawn from, in training and inference
            alike; only ``"normal"`` (standard normal).
        mlp_hidden / mlp_layers: modulated MLP width (512) and number of hidden layers.
        gaussian_scale_factor: Gaussian scale = point stride x mpp x this (0.45-0.65).
        flat_z_scale: z scale of flat classes (ground, road, water), in metres per mpp.
    """

    @register_to_config
    def __init__(
        self,
        num_classes: int = 8,
        num_freqs: int = 10,
        coord_scale: float = 256.0,
        use_relative: bool = True,
        scene_channels: int = 0,
        enc_depths: Sequence[int] = (2, 2, 2, 6, 2),
        enc_channels: Sequence[int] = (32, 64, 128, 256, 512),
        dec_depths: Sequence[int] = (2, 2, 2, 2),
        dec_channels: Sequence[int] = (64, 64, 128, 256),
        head_dim: int = 16,
        patch_size: int = 1024,
        serialize_order: str = "grid",
        grid_size: int = 1,
        style_dim: int = 256,
        style_distribution: str = "normal",
        mlp_hidden: int = 512,
        mlp_layers: int = 3,
        gaussian_scale_factor: float = 0.55,
        flat_z_scale: float = 0.1,
    ) -> None:
        super().__init__()
        if style_distribution not in STYLE_DISTRIBUTIONS:
            raise ValueError(f"style_distribution must be one of {STYLE_DISTRIBUTIONS}, got {style_distribution!r}")
        if len(enc_depths) != len(enc_channels):
            raise ValueError(f"enc_depths {enc_depths} and enc_channels {enc_channels} differ in length")
        if enc_depths and (len(dec_depths) != len(enc_depths) - 1 or len(dec_channels) != len(dec_depths)):
            raise ValueError("dec_depths and dec_channels need one entry per encoder stage but the last")
        if not 0.45 <= gaussian_scale_factor <= 0.65:
            raise ValueError(f"gaussian_scale_factor must be in [0.45, 0.65], got {gaussian_scale_factor}")
        pe = 3 * (1 + 2 * num_freqs)
        in_dim = pe * (2 if use_relative else 1) + scene_channels
        self.use_transformer = len(enc_depths) > 0
        if self.use_transformer:
            stage = dict(head_dim=head_dim, patch_size=patch_size, order=serialize_order, grid_size=grid_size)
            self.embed = nn.Sequential(nn.Linear(in_dim, enc_channels[0]), nn.LayerNorm(enc_channels[0]))
            self.down = nn.ModuleList(
                nn.Sequential(nn.Linear(enc_channels[i - 1], enc_channels[i]), nn.LayerNorm(enc_channels[i]))
                for i in range(1, len(enc_channels))
            )
            self.encoder = nn.ModuleList(_Stage(c, d, **stage) for c, d in zip(enc_channels, enc_depths))
            coarse = [*dec_channels[1:], enc_channels[-1]]
            self.up_coarse = nn.ModuleList(nn.Linear(c, o) for c, o in zip(coarse, dec_channels))
            self.up_skip = nn.ModuleList(nn.Linear(c, o) for c, o in zip(enc_channels[:-1], dec_channels))
            self.decoder = nn.ModuleList(_Stage(c, d, **stage) for c, d in zip(dec_channels, dec_depths))
            feat_dim = dec_channels[0] if dec_channels else enc_channels[0]
        else:
            self.embed = nn.Identity()
            feat_dim = in_dim
        self.class_proj = nn.Linear(num_classes, mlp_hidden)
        self.mlp = nn.ModuleList(
            ModulatedLinear(feat_dim if i == 0 else mlp_hidden, mlp_hidden, style_dim) for i in range(mlp_layers)
        )
        self.to_rgb = ModulatedLinear(mlp_hidden, 3, style_dim, demodulate=False)

    def sample_styles(self, n: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
        """``n`` style codes from the configured distribution (standard normal), ``[n, style_dim]``."""
        gen_device = generator.device if generator is not None else device
        z = torch.randn(n, self.config.style_dim, generator=generator, device=gen_device)
        return z.to(device)

    def hierarchy(self, voxels: torch.Tensor, batch_index: torch.Tensor, batch_size: int) -> PointHierarchy:
        """The point U-Net's structure over points ``voxels [N, 3]`` of items ``batch_index [N]``:
        pooled levels and their serialized patches (no features; see :class:`PointHierarchy`)."""
        if not self.use_transformer:
            raise ValueError("this decoder has no point transformer (enc_depths is empty)")
        attention = self.encoder[0].blocks[0].attn
        return PointHierarchy.build(voxels.long(), batch_index.long(), batch_size, attention, len(self.encoder))

    def _transformer(self, feats: torch.Tensor, hierarchy: PointHierarchy) -> torch.Tensor:
        x = hierarchy.level(0, self.embed(feats))
        skips = []
        for i, stage in enumerate(self.encoder):
            if i > 0:
                skips.append(x)
                pooled = pool_features(self.down[i - 1](x.feats), hierarchy.parents[i - 1], hierarchy.counts[i - 1])
                x = hierarchy.level(i, pooled)
            x = stage(x)
        for i in reversed(range(len(self.decoder))):
            skip = skips[i]
            h = self.up_coarse[i](x.feats)[hierarchy.parents[i]] + self.up_skip[i](skip.feats)
            x = self.decoder[i](skip.replace(h))
        return x.feats

    def forward(
        self,
        positions: torch.Tensor,
        relative: torch.Tensor,
        voxels: torch.Tensor,
        classes: torch.Tensor,
        batch_index: torch.Tensor,
        styles: torch.Tensor,
        scene_features: torch.Tensor | None = None,
        hierarchy: PointHierarchy | None = None,
    ) -> torch.Tensor:
        """Colours ``[N, 3]`` in 0..1 of the points.

        Args:
            positions: ``[N, 3]`` layout-frame positions (metres from the layout's origin, as the
                points of ``bev.py`` hold them; world coordinates far from 0 encode garbage).
            relative: ``[N, 3]`` instance-relative coordinates in [-1, 1] (ignored without ``use_relative``).
            voxels: ``[N, 3]`` integer voxel coordinates, serialized by the point transformer.
            classes: ``[N]`` class ids.
            batch_index: ``[N]`` batch item of each point (one per instance), indexing ``styles``.
            styles: ``[B, style_dim]`` style code per batch item.
            scene_features: ``[N, scene_channels]`` BEV scene features (background decoder).
            hierarchy: the points' :meth:`hierarchy` where already built (``voxels`` is then
                unused), or that hierarchy padded, with every input padded to its level-0 rows.

        The paper's output ``(sigmoid(x) - 0.5) * 2`` lies in [-1, 1]; mapped to 0..1 colours by
        ``(y + 1) / 2`` that is exactly ``sigmoid(x)``, which is what is returned.
        """
        cfg = self.config
        if styles.dim() != 2 or styles.shape[1] != cfg.style_dim:
            raise ValueError(f"styles must be [B, {cfg.style_dim}], got {list(styles.shape)}")
        if cfg.scene_channels and (scene_features is None or scene_features.shape[-1] != cfg.scene_channels):
            raise ValueError(f"this decoder needs scene_features [N, {cfg.scene_channels}]")
        dtype = self.class_proj.weight.dtype
        parts = [sincos_encoding(positions.to(dtype) / cfg.coord_scale, cfg.num_freqs)]
        if cfg.use_relative:
            parts.append(sincos_encoding(relative.to(dtype), cfg.num_freqs))
        if cfg.scene_channels:
            parts.append(scene_features.to(dtype))
        feats = torch.cat(parts, 1)
        if positions.shape[0] == 0:
            return positions.new_zeros(0, 3)
        if self.use_transformer:
            if hierarchy is None:
                hierarchy = self.hierarchy(voxels, batch_index, styles.shape[0])
            elif hierarchy.sizes[0] != feats.shape[0]:
                raise ValueError(f"hierarchy was built for {hierarchy.sizes[0]} points, got {feats.shape[0]}")
            feats = self._transformer(feats, hierarchy)
        styles = styles.to(dtype)
        onehot = nn.functional.one_hot(classes.long(), cfg.num_classes).to(dtype)
        h = feats
        for i, layer in enumerate(self.mlp):
            h = layer(h, styles, batch_index)
            if i == 0:
                h = h + self.class_proj(onehot)
            h = leaky_relu(h)
        return torch.sigmoid(self.to_rgb(h, styles, batch_index))

    def gaussians(
        self,
        positions: torch.Tensor,
        strides: torch.Tensor,
        classes: torch.Tensor,
        colors: torch.Tensor,
        meters_per_pixel: float,
    ) -> Gaussians:
        """3D Gaussians with the paper's default attributes around the decoded colours."""
        n = positions.shape[0]
        device = positions.device
        size = strides.to(positions.dtype) * meters_per_pixel * self.config.gaussian_scale_factor
        flat = torch.zeros_like(classes, dtype=torch.bool)
        for c in FLAT_CLASSES:  # no host-to-device copy of the class list per call
            flat |= classes == c
        thin = torch.where(flat, self.config.flat_z_scale * meters_per_pixel, size)  # no masked write: no host sync
        scales = torch.stack([size, size, thin], 1)
        quats = torch.zeros(n, 4, device=device, dtype=positions.dtype)
        quats[:, 0] = 1.0
        return Gaussians(
            means=positions,
            quats=quats,
            scales=scales,
            opacities=torch.ones(n, device=device, dtype=positions.dtype),
            colors=colors.to(positions.dtype),
        )
