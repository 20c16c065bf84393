"""LAS / LAZ export for GIS users (laspy; LAZ through the lazrs backend).

LAS 1.4, point format 7: ``X Y Z`` as scaled integers (scale 1 mm in metres, offsets at the
minimum corner), 16-bit RGB, ASPRS classification (``CITY_TO_ASPRS``) plus an extra
``city_class`` byte holding the exact class id, and the CRS as a WKT VLR when known.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from ..data.readers import city_to_asprs
from ._checks import check_attribute, check_classes, check_points
from .atomic import atomic_write, check_destination, crs_to_wkt, write_georef_sidecar

__all__ = ["write_las", "write_las_chunks"]


def write_las(
    path: str | os.PathLike,
    points,
    colors=None,
    classes=None,
    *,
    crs: str | None = None,
    unit_factor: float = 1.0,
    resolution_m: float = 0.001,
) -> Path:
    """Write a ``.las`` or ``.laz`` point cloud.

    ``points`` are world metres; with ``unit_factor`` (metres per CRS unit, e.g. 0.3048 for a
    CRS in feet) the file stores CRS units, so coordinates agree with the CRS it declares.
    ``colors`` 0..1 become 16-bit RGB. A CRS without a WKT form (``"EPSG:..."`` when rasterio
    is missing) is recorded in a ``<file>.geo.json`` side file instead.
    """
    import laspy

    path = check_destination(path)
    if path.suffix.lower() not in (".las", ".laz"):
        raise ValueError(f"LAS export needs a .las or .laz path, got {path.name}")
    if not np.isfinite(unit_factor) or unit_factor <= 0:
        raise ValueError(f"unit_factor must be a finite number > 0, got {unit_factor}")
    if not np.isfinite(resolution_m) or resolution_m <= 0:
        raise ValueError(f"resolution_m must be a finite number > 0, got {resolution_m}")
    pts = check_points(points) / unit_factor
    n = len(pts)
    cols = check_attribute(colors, n, "colors", 3, unit=True)
    cls = check_classes(classes, n)
    wkt = crs_to_wkt(crs)

    header = _header(pts.min(0), cls is not None, wkt, unit_factor, resolution_m)
    las = laspy.LasData(header)
    _fill(las, pts, cols, cls)
    with atomic_write(path) as tmp:
        las.write(str(tmp))
    if crs is not None and wkt is None:
        write_georef_sidecar(path, crs=crs, offset=(0.0, 0.0, 0.0), unit_factor=unit_factor)
    return path


def write_las_chunks(
    path: str | os.PathLike,
    chunks: Iterable[tuple[np.ndarray, np.ndarray | None, np.ndarray | None]],
    lowest: Sequence[float],
    *,
    classes: bool = False,
    crs: str | None = None,
    resolution_m: float = 0.001,
) -> Path:
    """Write ``(points, colors, classes)`` chunks (world metres, colours 0..1, class ids or
    ``None``) as one ``.las`` / ``.laz``, one chunk in memory at a time (areas larger than memory);
    ``lowest``: a corner no point lies below (the integer offsets). Same layout as :func:`write_las`;
    ``classes=True`` writes the classification (every chunk then has class ids)."""
    import laspy

    path = check_destination(path)
    if path.suffix.lower() not in (".las", ".laz"):
        raise ValueError(f"LAS export needs a .las or .laz path, got {path.name}")
    wkt = crs_to_wkt(crs)
    header = _header(np.asarray(lowest, dtype=np.float64), classes, wkt, 1.0, resolution_m)
    with atomic_write(path) as tmp:
        with laspy.open(str(tmp), mode="w", header=header) as writer:
            for points, colors, ids in chunks:
                pts = check_points(points)
                if classes and ids is None:
                    raise ValueError("write_las_chunks(classes=True): a chunk has no class ids")
                record = laspy.ScaleAwarePointRecord.zeros(len(pts), header=header)
                cols = check_attribute(colors, len(pts), "colors", 3, unit=True)
                _fill(record, pts, cols, check_classes(ids, len(pts)) if classes else None)
                writer.write_points(record)
    if crs is not None and wkt is None:
        write_georef_sidecar(path, crs=crs, offset=(0.0, 0.0, 0.0))
    return path


def _header(lowest: np.ndarray, classes: bool, wkt: str | None, unit_factor: float, resolution_m: float):
    """LAS 1.4 point format 7 header: millimetre scale, offsets at ``lowest``, the WKT VLR."""
    import laspy

    header = laspy.LasHeader(point_format=7, version="1.4")
    header.scales = np.full(3, resolution_m / unit_factor)
    header.offsets = np.floor(lowest)
    if classes:
        header.add_extra_dim(laspy.ExtraBytesParams(name="city_class", type=np.uint8, description="diffusers-city class id"))
    if wkt is not None:
        from laspy.vlrs.known import WktCoordinateSystemVlr

        header.vlrs.append(WktCoordinateSystemVlr(wkt))
        header.global_encoding.wkt = True
    return header


def _fill(las, pts: np.ndarray, cols: np.ndarray | None, cls: np.ndarray | None) -> None:
    las.x, las.y, las.z = pts[:, 0], pts[:, 1], pts[:, 2]
    if cols is not None:
        rgb = np.round(cols * 65535).astype(np.uint16)
        las.red, las.green, las.blue = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    if cls is not None:
        las.classification = city_to_asprs(cls)
        las.city_class = cls
