"""Preview PNGs of point clouds (top and oblique views) through ``render_points_preview``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .atomic import atomic_write, check_destination

__all__ = ["write_image", "write_preview"]


def write_image(path: str | os.PathLike, image) -> Path:
    """Save a PIL image (PNG, JPEG... by suffix) atomically."""
    path = check_destination(path)
    if not hasattr(image, "save"):
        raise ValueError(f"image must be a PIL image, got {type(image).__name__}")
    with atomic_write(path) as tmp:
        image.save(tmp)
    return path


def write_preview(path: str | os.PathLike, points, colors=None, view: str = "oblique", **kwargs: Any) -> Path:
    """Render ``points`` / ``colors`` with ``diffusers_city.render.render_points_preview``
    (``view="top"`` or ``"oblique"``, other keyword arguments passed on) and save the image."""
    check_destination(path)
    from ..render import render_points_preview

    return write_image(path, render_points_preview(points, colors, view=view, **kwargs))
