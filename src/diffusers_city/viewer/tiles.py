"""A tiled large-area output: a folder of per-tile files named in an ``index.json``.

The reader is tolerant, so that any writer of per-tile files fits: ``tiles`` is a list (or a
mapping name -> entry) of entries, each naming its file(s) under one of ``path``, ``file``,
``files`` (a list or a mapping kind -> file) or any key whose value is a viewable file name, and
its ``bounds`` as ``[xmin, ymin, xmax, ymax]``, ``[xmin, ymin, zmin, xmax, ymax, zmax]``,
``[[xmin, ymin(, zmin)], [xmax, ymax(, zmax)]]``, ``{"min": [...], "max": [...]}`` or
``{"xmin": ..., ...}``, in world metres (the frame of the tiles' own files). A top-level ``crs``
(also ``georeference.crs``) is shown. Every tile's files must exist; they are read only when shown.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .layers import VIEWABLE_SUFFIXES

__all__ = ["INDEX_NAME", "Tile", "TileIndex", "read_tile_index"]

INDEX_NAME = "index.json"
_FILE_KEYS = ("path", "file", "files")


@dataclass
class Tile:
    """One tile: its ``files`` and world ``bounds`` (``[2, 2]``: x, y minimum and maximum)."""

    name: str
    files: list[Path]
    bounds: np.ndarray

    def distance(self, xy: np.ndarray) -> float:
        """Horizontal distance (m) from ``xy`` to the tile (0 inside it)."""
        gap = np.maximum(0.0, np.maximum(self.bounds[0] - xy, xy - self.bounds[1]))
        return float(np.hypot(*gap))


@dataclass
class TileIndex:
    """The tiles of a tiled output, their CRS and the area they cover (``bounds [2, 2]``)."""

    folder: Path
    tiles: list[Tile]
    crs: str | None

    @property
    def bounds(self) -> np.ndarray:
        return np.stack([np.min([t.bounds[0] for t in self.tiles], 0), np.max([t.bounds[1] for t in self.tiles], 0)])


def _bounds(value, where: str) -> np.ndarray:
    """``[2, 2]`` (min, max of x, y) from the accepted spellings of a tile's bounds."""
    if isinstance(value, Mapping):
        value = (
            [value.get("min"), value.get("max")]
            if "min" in value
            else [
                [value.get("xmin"), value.get("ymin")],
                [value.get("xmax"), value.get("ymax")],
            ]
        )
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: bounds {value!r} are not numbers") from None
    if arr.ndim == 1 and arr.size in (4, 6):
        arr = arr.reshape(2, -1)
    if arr.ndim != 2 or arr.shape[0] != 2 or arr.shape[1] not in (2, 3):
        raise ValueError(f"{where}: bounds {value!r} are not [xmin, ymin, xmax, ymax] or [[min], [max]]")
    arr = arr[:, :2]
    if not np.isfinite(arr).all() or (arr[1] <= arr[0]).any():
        raise ValueError(f"{where}: bounds {value!r} must be finite with max > min")
    return arr


def _names(entry: Mapping) -> list[str]:
    """The file names an entry lists."""
    for key in _FILE_KEYS:
        value = entry.get(key)
        if isinstance(value, str):
            return [value]
        if isinstance(value, Mapping):
            return [v for v in value.values() if isinstance(v, str)]
        if isinstance(value, list):
            return [v for v in value if isinstance(v, str)]
    return [v for v in entry.values() if isinstance(v, str) and v.lower().endswith(VIEWABLE_SUFFIXES)]


def read_tile_index(folder: str | os.PathLike) -> TileIndex:
    """Read and check ``folder/index.json``: every tile has bounds and existing viewable files."""
    folder = Path(folder)
    path = folder / INDEX_NAME
    try:
        index = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    entries = index.get("tiles") if isinstance(index, Mapping) else None
    if isinstance(entries, Mapping):
        entries = [{"name": name, **entry} for name, entry in entries.items() if isinstance(entry, Mapping)]
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: no 'tiles' list (each tile: its file(s) and 'bounds')")
    georef = index.get("georeference") if isinstance(index.get("georeference"), Mapping) else {}
    tiles = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            raise ValueError(f"{path}: tile {i} is not an object")
        name = str(entry.get("name", entry.get("id", i)))
        where = f"{path}: tile {name}"
        if "bounds" not in entry:
            raise ValueError(f"{where} has no 'bounds'")
        files = [folder / n for n in _names(entry)]
        files = [f for f in files if f.suffix.lower() in VIEWABLE_SUFFIXES]
        if not files:
            raise ValueError(f"{where} names no viewable file ({', '.join(VIEWABLE_SUFFIXES)})")
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"{where}: missing file(s) {', '.join(missing)}")
        tiles.append(Tile(name, files, _bounds(entry["bounds"], where)))
    crs = index.get("crs", georef.get("crs"))
    return TileIndex(folder, tiles, crs if isinstance(crs, str) else None)
