"""Preview images of point clouds (top and oblique views, orbit GIFs) through ``render_points_preview``,
and captioned side-by-side sheets of images."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .atomic import atomic_write, check_destination

__all__ = ["captioned", "grid", "raster_image", "write_image", "write_orbit", "write_preview"]

CAPTION = 28  # pixels of caption bar above an image (default font)


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


def write_orbit(
    path: str | os.PathLike,
    points,
    colors=None,
    *,
    num_frames: int = 24,
    width: int = 480,
    height: int = 360,
    fps: float = 8.0,
    **kwargs: Any,
) -> Path:
    """A GIF / MP4 (``export.write_video``) of ``num_frames`` oblique point renders, the azimuth turning
    once around the cloud at one scale and centre (``framing="orbit"``); other keyword arguments
    (``elevation_deg``, ``point_size``...) go to ``render_points_preview``."""
    check_destination(path)
    if int(num_frames) != num_frames or num_frames < 1:
        raise ValueError(f"num_frames must be a positive integer, got {num_frames}")
    from ..render import render_points_preview
    from .video import write_video

    start = kwargs.pop("azimuth_deg", -135.0)
    frames = [
        render_points_preview(
            points, colors, "oblique", width, height, azimuth_deg=start + 360.0 * i / num_frames, framing="orbit", **kwargs
        )
        for i in range(num_frames)
    ]
    return write_video(path, frames, fps=fps)


def raster_image(values, size: tuple[int, int]) -> Image.Image:
    """A raster in 0..1 (grey ``[H, W]`` or RGB ``[H, W, 3]``, rows along +y) as an RGB image of
    ``size`` (nearest neighbour), rows flipped so that +y (north) is up."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim not in (2, 3) or (values.ndim == 3 and values.shape[2] != 3) or values.size == 0:
        raise ValueError(f"raster must be [H, W] or [H, W, 3], got shape {values.shape}")
    image = Image.fromarray(np.round(np.clip(values[::-1], 0.0, 1.0) * 255).astype(np.uint8))
    return image.convert("RGB").resize(size, Image.NEAREST)


def captioned(image: Image.Image, text: str, font_size: int | None = None) -> Image.Image:
    """``image`` under a white bar holding ``text`` (Pillow's default font; ``font_size`` pixels if given)."""
    font = ImageFont.load_default() if font_size is None else ImageFont.load_default(size=font_size)
    bar = CAPTION if font_size is None else int(font_size * 1.6)
    canvas = Image.new("RGB", (image.width, image.height + bar), "white")
    canvas.paste(image.convert("RGB"), (0, bar))
    ImageDraw.Draw(canvas).text((8, (bar - (font_size or 12)) // 2), text, fill=(20, 20, 20), font=font)
    return canvas


def grid(tiles: list[Image.Image], columns: int) -> Image.Image:
    """``tiles`` in rows of ``columns`` on white, each centred in a cell as large as the largest tile."""
    if not tiles or columns < 1:
        raise ValueError(f"need tiles and columns >= 1, got {len(tiles)} tiles, {columns} columns")
    rows = -(-len(tiles) // columns)
    w, h = max(t.width for t in tiles), max(t.height for t in tiles)
    sheet = Image.new("RGB", (columns * w, rows * h), "white")
    for i, tile in enumerate(tiles):
        sheet.paste(tile.convert("RGB"), ((i % columns) * w + (w - tile.width) // 2, (i // columns) * h + (h - tile.height) // 2))
    return sheet
