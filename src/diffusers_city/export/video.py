"""Animated previews: GIF (always available, Pillow via imageio) and MP4 (imageio-ffmpeg)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import imageio.v3 as iio
import numpy as np

from .atomic import atomic_write, check_destination

__all__ = ["write_video"]


def _frame_array(frame, i: int) -> np.ndarray:
    arr = np.asarray(frame)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"frame {i} must be [H, W, 3|4] (or a PIL image), got shape {arr.shape}")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
            raise ValueError(f"frame {i}: float frames must be finite and within 0..1")
        arr = np.round(arr * 255)
    elif arr.dtype != np.uint8:
        raise ValueError(f"frame {i} must be uint8 or float 0..1, got dtype {arr.dtype}")
    return arr[..., :3].astype(np.uint8)


def write_video(path: str | os.PathLike, frames: Sequence, fps: float = 12.0) -> Path:
    """Write frames (PIL images or ``[H, W, 3]`` arrays, uint8 or float 0..1, all one size)
    as ``.gif`` or ``.mp4`` (H.264 via the optional ``imageio-ffmpeg`` package)."""
    path = check_destination(path)
    suffix = path.suffix.lower()
    if suffix not in (".gif", ".mp4"):
        raise ValueError(f"video format {path.suffix!r} not supported; use .gif or .mp4")
    if not np.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    if len(frames) == 0:
        raise ValueError("no frames to write")
    arrays = [_frame_array(f, i) for i, f in enumerate(frames)]
    if len({a.shape for a in arrays}) != 1:
        raise ValueError(f"frames differ in size: {sorted({a.shape for a in arrays})}")
    stack = np.stack(arrays)
    if suffix == ".mp4":
        try:
            import imageio_ffmpeg  # noqa: F401
        except ImportError:
            raise ValueError(
                "writing MP4 needs the imageio-ffmpeg package (pip install imageio-ffmpeg); .gif always works"
            ) from None
        h, w = stack.shape[1:3]
        if h % 2 or w % 2:  # yuv420p needs even sizes
            stack = np.pad(stack, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        with atomic_write(path) as tmp:
            iio.imwrite(tmp, stack, extension=".mp4", plugin="FFMPEG", fps=fps, codec="libx264", macro_block_size=1)
    else:
        with atomic_write(path) as tmp:
            iio.imwrite(tmp, stack, extension=".gif", plugin="pillow", duration=1000.0 / fps, loop=0)
    return path
