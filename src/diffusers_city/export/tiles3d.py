"""OGC 3D Tiles 1.0 of a point cloud area (CesiumJS, QGIS): ``tileset.json`` plus one ``.pnts``
point-cloud tile per chunk, written one chunk at a time.

The small binary format is written here (header, feature table with ``POSITION`` float32,
``RGB`` uint8 and ``RTC_CENTER``) rather than through py3dtiles, whose tiler reads whole LAS /
PLY files and re-tiles them itself. Positions are metres east / north / up of the area's centre;
with a CRS, the root ``transform`` places that frame on the WGS84 ellipsoid at the centre (its
longitude and latitude through rasterio; heights taken as ellipsoidal, and the projection's
grid convergence and scale neglected, both small over a few km), else the tileset is in a local
frame (said in ``asset.extras``).
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from ._checks import check_attribute, check_points
from .atomic import atomic_write, write_text_atomic

__all__ = ["enu_to_ecef", "write_tileset"]

_WGS84_A = 6378137.0
_WGS84_E2 = 6.69437999014e-3


def enu_to_ecef(lon_deg: float, lat_deg: float, height: float) -> list[float]:
    """Column-major 4 x 4 matrix from east-north-up metres at (lon, lat, height) to ECEF (WGS84)."""
    lon, lat = math.radians(lon_deg), math.radians(lat_deg)
    n = _WGS84_A / math.sqrt(1 - _WGS84_E2 * math.sin(lat) ** 2)
    origin = [
        (n + height) * math.cos(lat) * math.cos(lon),
        (n + height) * math.cos(lat) * math.sin(lon),
        (n * (1 - _WGS84_E2) + height) * math.sin(lat),
    ]
    east = [-math.sin(lon), math.cos(lon), 0.0]
    north = [-math.sin(lat) * math.cos(lon), -math.sin(lat) * math.sin(lon), math.cos(lat)]
    up = [math.cos(lat) * math.cos(lon), math.cos(lat) * math.sin(lon), math.sin(lat)]
    return [*east, 0.0, *north, 0.0, *up, 0.0, *origin, 1.0]


def _lon_lat(crs: str, x: float, y: float) -> tuple[float, float]:
    try:
        from rasterio.warp import transform
    except ImportError:
        raise ValueError("3D Tiles of a georeferenced area need rasterio (pip install 'diffusers-city[geo]')") from None
    lon, lat = transform(crs, "EPSG:4326", [x], [y])
    return float(lon[0]), float(lat[0])


def _padded(data: bytes, start: int, fill: bytes) -> bytes:
    return data + fill * (-(start + len(data)) % 8)


def _pnts(points: np.ndarray, colors: np.ndarray | None) -> bytes:
    """A ``.pnts`` tile of float64 positions (local metres), centred on their mean (``RTC_CENTER``)."""
    centre = points.mean(0)
    n = len(points)
    rgb = np.full((n, 3), 128, np.uint8) if colors is None else np.round(colors * 255).astype(np.uint8)
    table = {"POINTS_LENGTH": n, "POSITION": {"byteOffset": 0}, "RGB": {"byteOffset": 12 * n}, "RTC_CENTER": centre.tolist()}
    table_json = _padded(json.dumps(table).encode(), 28, b" ")
    binary = _padded((points - centre).astype("<f4").tobytes() + rgb.tobytes(), 0, b"\0")
    header = struct.pack("<4sIIIIII", b"pnts", 1, 28 + len(table_json) + len(binary), len(table_json), len(binary), 0, 0)
    return header + table_json + binary


def write_tileset(
    folder: str | os.PathLike,
    tiles: Iterable[tuple[str, np.ndarray, np.ndarray | None]],
    centre: Sequence[float],
    *,
    crs: str | None = None,
    geometric_error: float = 16.0,
) -> Path:
    """Write ``folder/tileset.json`` and ``folder/3dtiles/<name>.pnts`` for ``(name, points,
    colors)`` chunks (world metres, colours 0..1), one in memory at a time; ``centre``: the world
    point the tileset's frame is centred on. Returns the tileset's path."""
    folder = Path(folder)
    (folder / "3dtiles").mkdir(parents=True, exist_ok=True)
    centre = np.asarray(centre, dtype=np.float64)
    children, low, high = [], np.full(3, np.inf), np.full(3, -np.inf)
    for name, points, colors in tiles:
        local = check_points(points) - centre
        cols = check_attribute(colors, len(local), "colors", 3, unit=True)
        uri = f"3dtiles/{name}.pnts"
        with atomic_write(folder / uri) as tmp:
            tmp.write_bytes(_pnts(local, cols))
        lo, hi = local.min(0), local.max(0)
        low, high = np.minimum(low, lo), np.maximum(high, hi)
        children.append({"boundingVolume": _box(lo, hi), "geometricError": 0.0, "content": {"uri": uri}})
    if not children:
        raise ValueError("3D Tiles: the area has no points")
    root = {"boundingVolume": _box(low, high), "geometricError": geometric_error, "refine": "ADD", "children": children}
    extras = {"frame": "metres east / north / up of the area centre", "centre": centre.tolist(), "crs": crs}
    if crs:
        lon, lat = _lon_lat(crs, centre[0], centre[1])
        root["transform"] = enu_to_ecef(lon, lat, float(centre[2]))
        extras["centre_lon_lat"] = [lon, lat]
    else:
        extras["frame"] += " (local: the input had no georeference)"
    tileset = {
        "asset": {"version": "1.0", "generator": "diffusers-city", "extras": extras},
        "geometricError": geometric_error * 4,
        "root": root,
    }
    return write_text_atomic(folder / "tileset.json", json.dumps(tileset, indent=1))


def _box(lo: np.ndarray, hi: np.ndarray) -> dict:
    c, h = (lo + hi) / 2, np.maximum((hi - lo) / 2, 0.01)
    return {"box": [*c.tolist(), h[0], 0.0, 0.0, 0.0, h[1], 0.0, 0.0, 0.0, h[2]]}
