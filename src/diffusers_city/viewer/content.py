"""``load_view(path)``: everything ``diffusers-city view PATH`` shows, read and checked up front.

``PATH`` is a file (point cloud PLY / LAS / LAZ, 3DGS splat PLY, GLB / glTF / OBJ mesh), a
``CityScene`` folder (``scene.json``), a tiled output (``index.json``, tiles read when shown) or a
generated output folder (its viewable files and scene folders, two levels deep).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .layers import VIEWABLE_SUFFIXES, Layer, read_file_layers, read_scene_layers
from .tiles import INDEX_NAME, TileIndex, read_tile_index

__all__ = ["ViewContent", "load_view"]

_FOLDER_DEPTH = 2


@dataclass
class ViewContent:
    """What one view shows: ``layers`` from the start, or the ``tiles`` of a large area."""

    source: Path
    layers: list[Layer]
    tiles: TileIndex | None = None

    @property
    def crs(self) -> str | None:
        if self.tiles is not None:
            return self.tiles.crs
        return next((layer.crs for layer in self.layers if layer.crs), None)

    @property
    def bounds(self) -> np.ndarray:
        """``[2, 3]`` world minimum and maximum (tiles: their area, heights from 0)."""
        if self.tiles is not None:
            xy = self.tiles.bounds
            return np.concatenate([xy, [[0.0], [0.0]]], axis=1)
        return np.stack(
            [np.min([layer.points.min(0) for layer in self.layers], 0), np.max([layer.points.max(0) for layer in self.layers], 0)]
        )


def _is_scene(folder: Path) -> bool:
    return (folder / "scene.json").is_file()


def _folder_layers(folder: Path, root: Path, depth: int) -> list[Layer]:
    """The layers of every viewable file and scene folder under ``folder``, named by their path."""
    layers: list[Layer] = []
    for child in sorted(folder.iterdir()):
        name = str(child.relative_to(root))
        if child.is_file() and child.suffix.lower() in VIEWABLE_SUFFIXES:
            layers += read_file_layers(child, name)
        elif child.is_dir() and _is_scene(child):
            layers += read_scene_layers(child, name)
        elif child.is_dir() and depth > 1:
            layers += _folder_layers(child, root, depth - 1)
    return layers


def load_view(path: str | os.PathLike) -> ViewContent:
    """Read ``path`` for the viewer; a clear error (missing, unsupported, corrupt) otherwise."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if path.is_file():
        return ViewContent(path, read_file_layers(path))
    if _is_scene(path):
        return ViewContent(path, read_scene_layers(path))
    if (path / INDEX_NAME).is_file():
        return ViewContent(path, [], read_tile_index(path))
    layers = _folder_layers(path, path, _FOLDER_DEPTH)
    if not layers:
        raise ValueError(
            f"{path}: nothing to view: no {', '.join(VIEWABLE_SUFFIXES)} file, scene folder (scene.json) "
            f"or tiled output ({INDEX_NAME}) in it"
        )
    return ViewContent(path, layers)
