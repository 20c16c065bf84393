"""Sparse VAE building blocks shared by every family (not models themselves).

- :class:`SparseEncoder`: a sparse-conv encoder with stride-2 downsamplings (Sat2City Sec. 3.1,
  "sparse convolutional neural networks as encoders to downsample"; EarthCrafter's StructVAE).
- :class:`StructureDecoder`: XCube's structure-prediction backbone: at every level it subdivides
  each voxel into 8, predicts occupancy, prunes, then refines the kept voxels. It records its
  pruning decisions (``struct``) so that a second decoder can follow them.
- :func:`full_grid` / :func:`scatter_to_dense`: between a dense latent grid and sparse voxels.
- coordinate helpers: matching, coarsening, the geometry of a coarser level.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.utils import BaseOutput
from torch import nn

from ...sparse import SparseTensor
from ...sparse.kernel_map import build_index, unique_coords
from ...sparse.nn import SparseConv3d, SparseResBlock, SubMConv3d, prune, subdivide
from ...sparse.tensor import take_rows

__all__ = [
    "SparseEncoder",
    "StructureDecoder",
    "StructureDecoding",
    "coarsen_coords",
    "full_grid",
    "level_geometry",
    "match_coords",
    "scatter_to_dense",
]


def match_coords(query: torch.Tensor, reference: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Row of ``reference`` [N, 4] holding each ``query`` coordinate [M, 4], ``-1`` where absent."""
    return build_index(reference, batch_size).lookup(query)


def coarsen_coords(coords: torch.Tensor, factor: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct coordinates of the level ``factor`` times coarser and each row's parent index."""
    c = coords.long().clone()
    c[:, 1:] = torch.div(c[:, 1:], factor, rounding_mode="floor")
    return unique_coords(c, batch_size)


def level_geometry(voxel_size: float, origin: tuple[float, float, float], factor: int) -> tuple[float, tuple]:
    """Voxel size and origin of the level ``factor`` times coarser (docs/design.md conventions)."""
    coarse = voxel_size * factor
    shift = (coarse - voxel_size) / 2
    return coarse, tuple(o + shift for o in origin)


class SparseEncoder(nn.Module):
    """Sparse-conv encoder: ``len(block_channels) - 1`` stride-2 downsamplings with residual blocks.

    ``forward(x, return_all=True)`` also returns the features of every scale (used by the
    multi-scale condition encoder, supplementary 6.2).
    """

    def __init__(self, in_channels: int, block_channels: tuple[int, ...], layers_per_block: int) -> None:
        super().__init__()
        self.conv_in = SubMConv3d(in_channels, block_channels[0])
        self.blocks = nn.ModuleList()
        self.downsamplers = nn.ModuleList()
        for i, ch in enumerate(block_channels):
            self.blocks.append(nn.ModuleList(SparseResBlock(ch, ch) for _ in range(layers_per_block)))
            if i + 1 < len(block_channels):
                self.downsamplers.append(SparseConv3d(ch, block_channels[i + 1], kernel_size=2, stride=2))

    def forward(self, x: SparseTensor, return_all: bool = False) -> SparseTensor | list[SparseTensor]:
        h = self.conv_in(x)
        scales = []
        for i, blocks in enumerate(self.blocks):
            for block in blocks:
                h = block(h)
            scales.append(h)
            if i < len(self.downsamplers):
                h = self.downsamplers[i](h)
        return scales if return_all else h


@dataclass
class StructureDecoding(BaseOutput):
    """What a :class:`StructureDecoder` produced.

    Attributes:
        sample: head output on the finest kept voxels (normals, or appearance features).
        structures: kept voxels of every level, coarse to fine (their features are the decoder's).
        struct: per level, the pruning decision over that level's candidate voxels.
        candidates: per level, the candidate coordinates ``[N_l, 4]`` the decisions refer to.
        logits: per level occupancy logits over the candidates (empty without an occupancy head).
        targets: per level ground-truth occupancy of the candidates (only when a target was given).
    """

    sample: SparseTensor
    structures: list[SparseTensor]
    struct: list[torch.Tensor]
    candidates: list[torch.Tensor]
    logits: list[torch.Tensor]
    targets: list[torch.Tensor] | None


class StructureDecoder(nn.Module):
    """Subdivide -> predict occupancy -> prune -> refine, once per level (XCube, Sec. 3.1).

    Level 0 works on the input voxels (no subdivision); every later level subdivides the kept
    voxels of the previous one into 8 children. A child gets its parent's features through the
    linear map of its own octant (child ``i`` of a parent is octant ``i``, the row order of
    ``subdivide``): a kernel-2, stride-2 generative transposed convolution, so the 8 children of a
    parent differ from the start rather than only by a learned offset. A pointwise head predicts
    each child's occupancy (nothing heavy runs on candidates that get pruned), and residual
    sparse-conv blocks refine the kept voxels (``make_blocks(level, channels)``, level 0 the
    input's, builds other refinement layers instead: EarthCrafter's transformer layers). Pruning
    follows, in order of priority: the given ``struct`` (the appearance decoder follows the
    geometry decoder's decisions), the ground truth ``target`` (teacher forcing in training), or
    the predicted logits (> 0). With ``out_channels=None`` there is no head: ``sample`` holds the
    decoder features.
    """

    def __init__(
        self,
        in_channels: int,
        block_channels: tuple[int, ...],
        out_channels: int | None,
        layers_per_block: int = 1,
        predict_structure: bool = True,
        make_blocks: Callable[[int, int], list[nn.Module]] | None = None,
    ) -> None:
        super().__init__()
        if make_blocks is None:

            def make_blocks(level: int, ch: int) -> list[nn.Module]:
                return [SparseResBlock(ch, ch) for _ in range(layers_per_block)]

        self.predict_structure = predict_structure
        self.conv_in = SubMConv3d(in_channels, block_channels[0])
        self.level0_blocks = nn.ModuleList(make_blocks(0, block_channels[0]))
        self.child_proj = nn.ModuleList()
        self.blocks = nn.ModuleList()
        for level, (prev, ch) in enumerate(zip(block_channels[:-1], block_channels[1:]), 1):
            self.child_proj.append(nn.Linear(prev, 8 * ch))  # 8 octant maps, as one matmul
            self.blocks.append(nn.ModuleList(make_blocks(level, ch)))
        if predict_structure:
            self.occupancy_heads = nn.ModuleList(nn.Sequential(nn.SiLU(), nn.Linear(ch, 1)) for ch in block_channels)
        if out_channels is None:
            self.norm_out = self.head = None
        else:
            self.norm_out = nn.LayerNorm(block_channels[-1])
            self.head = nn.Linear(block_channels[-1], out_channels)

    @property
    def num_levels(self) -> int:
        return len(self.blocks) + 1

    def _decide(
        self,
        level: int,
        h: SparseTensor,
        target: SparseTensor | None,
        struct: list[torch.Tensor] | None,
        record: dict,
    ) -> torch.Tensor:
        if self.predict_structure:
            record["logits"].append(self.occupancy_heads[level](h.feats).squeeze(-1))
        gt = None
        if target is not None:
            factor = 2 ** (self.num_levels - 1 - level)
            gt_coords = coarsen_coords(target.coords, factor, target.batch_size)[0] if factor > 1 else target.coords
            gt = match_coords(h.coords, gt_coords, h.batch_size) >= 0
            record["targets"].append(gt)
        if struct is not None:
            keep = struct[level]
            if keep.shape[0] != h.num_voxels:
                raise ValueError(f"struct level {level} has {keep.shape[0]} decisions for {h.num_voxels} voxels")
        elif gt is not None:
            keep = gt
        elif self.predict_structure:
            keep = record["logits"][-1] > 0
        else:
            raise ValueError("a decoder without occupancy head needs struct or target to prune")
        record["struct"].append(keep)
        record["candidates"].append(h.coords)
        return keep

    def forward(
        self,
        x: SparseTensor,
        target: SparseTensor | None = None,
        struct: list[torch.Tensor] | None = None,
        structures: list[SparseTensor] | None = None,
    ) -> StructureDecoding:
        """Decode ``x`` level by level; ``structures`` (from an earlier pass with the same
        ``struct``) lets the kept voxels reuse that pass's cached kernel maps."""
        if struct is not None and len(struct) != self.num_levels:
            raise ValueError(f"struct has {len(struct)} levels, the decoder has {self.num_levels}")
        record: dict = {"logits": [], "targets": [], "struct": [], "candidates": []}
        kept: list[SparseTensor] = []
        h = self.conv_in(x)
        for level in range(self.num_levels):
            if level > 0:
                # subdivide lists each parent's 8 children consecutively in octant order, the
                # column-block order of the projection
                proj = self.child_proj[level - 1](h.feats)
                h = subdivide(h).replace(proj.view(proj.shape[0] * 8, proj.shape[1] // 8))
            keep = self._decide(level, h, target, struct, record)
            h = structures[level].replace(take_rows(h.feats, keep)) if structures is not None else prune(h, keep)
            if h.num_voxels:  # everything pruned: the remaining levels stay empty
                for block in self.level0_blocks if level == 0 else self.blocks[level - 1]:
                    h = block(h)
            kept.append(h)
        out = h if self.head is None else h.replace(self.head(F.silu(self.norm_out(h.feats))))
        return StructureDecoding(
            sample=out,
            structures=kept,
            struct=record["struct"],
            candidates=record["candidates"],
            logits=record["logits"],
            targets=record["targets"] if target is not None else None,
        )


def full_grid(dense: torch.Tensor, voxel_size: float, origin: tuple[float, float, float], stride: int) -> SparseTensor:
    """Every voxel of a dense ``[B, C, X, Y, Z]`` grid as a ``SparseTensor`` (the dense neck)."""
    mask = torch.ones(dense.shape[:1] + dense.shape[2:], dtype=torch.bool, device=dense.device)
    return SparseTensor.from_dense(dense, mask=mask, voxel_size=voxel_size, origin=origin, stride=stride)


def scatter_to_dense(x: SparseTensor, shape: tuple[int, int, int], reduce: str = "sum") -> torch.Tensor:
    """Features of ``x`` in a dense ``[B, C, *shape]`` grid indexed by voxel coordinates
    (voxels outside ``shape`` are dropped; ``reduce`` combines duplicates: "sum" or "mean")."""
    c = x.coords.long()
    inside = ((c[:, 1:] >= 0) & (c[:, 1:] < torch.tensor(shape, device=c.device))).all(1)
    c, feats = c[inside], take_rows(x.feats, inside)
    flat = ((c[:, 0] * shape[0] + c[:, 1]) * shape[1] + c[:, 2]) * shape[2] + c[:, 3]
    total = x.batch_size * shape[0] * shape[1] * shape[2]
    out = feats.new_zeros(total, feats.shape[1]).index_add_(0, flat, feats)
    if reduce == "mean":
        count = feats.new_zeros(total).index_add_(0, flat, torch.ones_like(flat, dtype=feats.dtype))
        out = out / count.clamp(min=1).unsqueeze(1)
    return out.view(x.batch_size, *shape, -1).permute(0, 4, 1, 2, 3).contiguous()
