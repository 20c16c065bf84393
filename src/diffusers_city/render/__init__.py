"""Cameras, camera paths over city scenes, Gaussian rasterizers and point-cloud previews.

Conventions (docs/design.md): world metres, z up; cameras OpenCV (x right, y down, z
forward), ``K [C, 3, 3]`` in pixels, ``world_to_cam [C, 4, 4]``; colours 0..1.
"""

from .cameras import Cameras, intrinsics, look_at
from .gaussians import Gaussians, RenderOutput, render_gaussians
from .points import render_points, render_points_preview
from .trajectories import aerial_trajectory, drone_trajectory, orbit_trajectory, street_trajectory

__all__ = [
    "aerial_trajectory",
    "Cameras",
    "Gaussians",
    "RenderOutput",
    "drone_trajectory",
    "intrinsics",
    "look_at",
    "orbit_trajectory",
    "render_gaussians",
    "render_points",
    "render_points_preview",
    "street_trajectory",
]
