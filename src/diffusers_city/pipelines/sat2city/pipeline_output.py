"""Output of :class:`Sat2CityPipeline`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from diffusers.utils import BaseOutput


@dataclass
class Sat2CityPipelineOutput(BaseOutput):
    """A generated city in world coordinates (georeferenced when the input was a ``CityScene``).

    Attributes:
        points: ``[N, 3]`` centres of the occupied finest voxels (numpy, or torch for ``"pt"``).
        colors: ``[N, 3]`` RGB in 0..1 from inverse sampling.
        normals: ``[N, 3]`` unit normals from the geometry decoder.
        mesh: a ``trimesh.Trimesh`` surface (``output_type="mesh"``).
        voxels: a ``SparseTensor`` with features ``[normals, colors]`` (``output_type="voxels"``).
        voxel_size: metres per finest voxel.
        origin: world position of the crop frame's (0, 0, 0).
        crs: the input scene's coordinate reference system, if any.
    """

    points: np.ndarray | torch.Tensor | None = None
    colors: np.ndarray | torch.Tensor | None = None
    normals: np.ndarray | torch.Tensor | None = None
    mesh: Any = None
    voxels: Any = None
    voxel_size: float | None = None
    origin: np.ndarray | None = None
    crs: str | None = None
