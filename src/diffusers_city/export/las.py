"""LAS / LAZ export for GIS users (laspy; LAZ through the lazrs backend).

LAS 1.4, point format 7: ``X Y Z`` as scaled integers (scale 1 mm in metres, offsets at the
minimum corner), 16-bit RGB, ASPRS classification (``CITY_TO_ASPRS``) plus an extra
``city_class`` byte holding the exact class id, and the CRS as a WKT VLR when known.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..data.readers import city_to_asprs
from ._checks import check_attribute, check_classes, check_points
from .atomic import atomic_write, check_destination, crs_to_wkt, write_georef_sidecar

__all__ = ["write_las"]


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

    header = laspy.LasHeader(point_format=7, version="1.4")
    header.scales = np.full(3, resolution_m / unit_factor)
    header.offsets = np.floor(pts.min(0))
    if cls is not None:
        header.add_extra_dim(laspy.ExtraBytesParams(name="city_class", type=np.uint8, description="diffusers-city class id"))
    if wkt is not None:
        from laspy.vlrs.known import WktCoordinateSystemVlr

        header.vlrs.append(WktCoordinateSystemVlr(wkt))
        header.global_encoding.wkt = True
    las = laspy.LasData(header)
    las.x, las.y, las.z = pts[:, 0], pts[:, 1], pts[:, 2]
    if cols is not None:
        rgb = np.round(cols * 65535).astype(np.uint16)
        las.red, las.green, las.blue = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    if cls is not None:
        las.classification = city_to_asprs(cls)
        las.city_class = cls
    with atomic_write(path) as tmp:
        las.write(str(tmp))
    if crs is not None and wkt is None:
        write_georef_sidecar(path, crs=crs, offset=(0.0, 0.0, 0.0), unit_factor=unit_factor)
    return path
