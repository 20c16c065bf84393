"""Output of :class:`EarthCrafterPipeline`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers.utils import BaseOutput


@dataclass
class EarthCrafterPipelineOutput(BaseOutput):
    """A generated tile in world coordinates (metres; voxel ``c`` centred at ``origin + c * voxel_size``).

    Attributes:
        images: rendered frames of the orbit (``"pil"``: PIL images, ``"np"``: ``[F, H, W, 3]`` in
            0..1, ``"pt"``: the same as a torch tensor).
        points: ``[N, 3]`` Gaussian centres (``"points"``, ``"mesh"``): the coloured point cloud.
        colors: ``[N, 3]`` their RGB in 0..1.
        mesh: a ``trimesh.Trimesh`` of the structure voxels with per-voxel colours (``"mesh"``).
        gaussians: the tile's 2D Gaussians (:class:`~diffusers_city.render.Gaussians`, flat 3DGS
            with one near-zero scale) for every output type but ``"voxels"``.
        voxels: the structure voxels as a :class:`~diffusers_city.sparse.SparseTensor` at L with
            per-voxel RGB features (the mean colour of the voxel's Gaussians), for every output type.
        voxel_size: metres per voxel.
        origin: world position of voxel (0, 0, 0)'s centre.
        crs: the input ``CityScene``'s coordinate reference system, if any.
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor | None = None
    points: np.ndarray | None = None
    colors: np.ndarray | None = None
    mesh: Any = None
    gaussians: Any = None
    voxels: Any = None
    voxel_size: float | None = None
    origin: np.ndarray | None = None
    crs: str | None = None
