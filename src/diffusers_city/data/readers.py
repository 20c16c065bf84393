"""Real geodata in: height maps (PNG / TIFF / GeoTIFF DSMs), point clouds (PLY, LAS / LAZ),
semantic maps and aerial images, and `scene_from_file` turning a DSM or a point cloud into a
`CityScene`.

Frame (docs/design.md): metres, x east = columns, y = ``origin_y + row * mpp``. A north-up
GeoTIFF stores its northernmost row first (negative pixel height); it is flipped on read so
that rows grow northwards and ``origin`` is its south-west corner. Point clouds in a CRS whose
linear unit is not the metre (US feet, ...) are scaled to metres on read; the factor is kept
(``PointCloud.unit_factor``, scene metadata ``crs_unit_factor``) so writers can restore CRS units.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from scipy import ndimage

from .classes import CLASS_IDS, CLASSES, CONSTRUCTION, FACADE, GROUND, ROAD, ROOF, VEGETATION, VEHICLE, WATER, check_class_ids
from .scene import CityScene

__all__ = [
    "ASPRS_TO_CITY",
    "CITY_TO_ASPRS",
    "HeightMap",
    "PointCloud",
    "asprs_to_city",
    "city_to_asprs",
    "read_aerial_image",
    "read_height_map",
    "read_las",
    "read_ply",
    "read_point_cloud",
    "read_semantic_map",
    "scene_from_file",
]

UNKNOWN = 255
"""Class id of points whose ASPRS class does not say what they are (0 / 1: unclassified)."""

ASPRS_TO_CITY: dict[int, int] = {
    2: GROUND,
    3: VEGETATION,
    4: VEGETATION,
    5: VEGETATION,
    6: ROOF,  # split into roof / facade by `asprs_to_city`
    8: GROUND,  # LAS 1.0-1.3 model key-point (a ground subset)
    9: WATER,
    10: ROAD,  # rail
    11: ROAD,
    13: CONSTRUCTION,  # wire guard
    14: CONSTRUCTION,  # wire conductor
    15: CONSTRUCTION,  # transmission tower
    16: CONSTRUCTION,  # wire-structure connector
    17: ROAD,  # bridge deck
}
"""ASPRS LAS classification -> class id. 0/1 (unclassified) map to ``UNKNOWN`` and are
classified by height above ground; 7 and 18 (noise) are dropped on read."""

ASPRS_NOISE = (7, 18)

CITY_TO_ASPRS: dict[int, int] = {
    GROUND: 2,
    ROAD: 11,
    FACADE: 6,
    ROOF: 6,
    VEGETATION: 5,
    WATER: 9,
    VEHICLE: 1,
    CONSTRUCTION: 1,
}
"""Class id -> ASPRS class for LAS export (vehicles and constructions have no ASPRS class and
are written as unclassified; LAS export keeps the exact id in an extra ``city_class`` byte)."""

_IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
_POINT_SUFFIXES = (".ply", ".las", ".laz")


@dataclass
class PointCloud:
    """A point cloud in world metres. ``colors`` 0..1, ``classes`` class ids (``UNKNOWN`` = 255
    for unclassified), ``asprs`` the raw LAS classes, ``unit_factor`` metres per CRS unit."""

    points: np.ndarray
    colors: np.ndarray | None = None
    normals: np.ndarray | None = None
    classes: np.ndarray | None = None
    asprs: np.ndarray | None = None
    crs: str | None = None
    unit_factor: float = 1.0

    def __len__(self) -> int:
        return len(self.points)


@dataclass
class HeightMap:
    """A height raster ``height [H, W]`` (metres) on the design frame: ``origin`` (x, y) is the
    corner of pixel (0, 0) (south-west for a GeoTIFF), rows grow along +y."""

    height: np.ndarray
    meters_per_pixel: float
    origin: tuple[float, float]
    crs: str | None = None
    unit_factor: float = 1.0


def _existing(path: str | os.PathLike, suffixes: Sequence[str], what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} file {path} does not exist")
    if not path.is_file():
        raise ValueError(f"{what} path {path} is not a file")
    if path.suffix.lower() not in suffixes:
        raise ValueError(f"{path}: unsupported {what} format {path.suffix!r}; expected one of {tuple(suffixes)}")
    if path.stat().st_size == 0:
        raise ValueError(f"{what} file {path} is empty")
    return path


# ---------------------------------------------------------------------------- classes


def asprs_to_city(asprs: np.ndarray, points: np.ndarray, normals: np.ndarray | None = None, cell: float = 1.0) -> np.ndarray:
    """Class ids of ASPRS-classified points (``UNKNOWN`` for 0 / 1 and unlisted codes).

    Buildings (6) become ``roof`` where the point faces up (``|n_z| >= 0.5``) when normals are
    given, else where it lies within 0.5 m of the highest building point of its ``cell``-metre
    column ("on top"), and ``facade`` otherwise.
    """
    asprs = np.asarray(asprs).astype(np.int64)
    lut = np.full(256, UNKNOWN, dtype=np.uint8)
    for code, cls in ASPRS_TO_CITY.items():
        lut[code] = cls
    out = lut[np.clip(asprs, 0, 255)]
    building = asprs == 6
    if building.any():
        if normals is not None:
            roof = np.abs(normals[building, 2]) >= 0.5
        else:
            pb = points[building]
            keys = np.floor(pb[:, :2] / cell).astype(np.int64)
            _, inverse = np.unique(keys, axis=0, return_inverse=True)
            inverse = inverse.reshape(-1)
            top = np.full(inverse.max() + 1, -np.inf)
            np.maximum.at(top, inverse, pb[:, 2])
            roof = pb[:, 2] >= top[inverse] - 0.5
        out[building] = np.where(roof, ROOF, FACADE)
    return out


def city_to_asprs(classes: np.ndarray) -> np.ndarray:
    """ASPRS classification codes (uint8) of class ids."""
    classes = np.asarray(classes)
    check_class_ids(classes, "classes")
    lut = np.array([CITY_TO_ASPRS[i] for i in range(len(CLASSES))], dtype=np.uint8)
    return lut[classes.astype(np.int64)]


# ---------------------------------------------------------------------------- CRS helpers

_UNIT_RE = re.compile(r'(?:LENGTHUNIT|UNIT)\["([^"]+)",\s*([0-9.eE+-]+)')
_ANGULAR = ("degree", "radian", "grad", "arc-second", "arc-minute")


def wkt_unit_factor(wkt: str | None) -> float:
    """Metres per horizontal unit of a projected WKT CRS (1.0 when geographic / unknown).

    The last linear ``UNIT`` of the text is the one of the projected CS (WKT1 and WKT2 both put
    it after the projection parameters)."""
    if not wkt:
        return 1.0
    linear = [float(f) for name, f in _UNIT_RE.findall(wkt) if not name.lower().startswith(_ANGULAR)]
    return linear[-1] if linear else 1.0


def _las_crs(header) -> str | None:
    """The CRS of a LAS header as WKT (WKT VLR) or ``"EPSG:<code>"`` (GeoTIFF keys)."""
    from laspy.vlrs.known import GeoKeyDirectoryVlr, WktCoordinateSystemVlr

    for vlr in list(header.vlrs) + list(getattr(header, "evlrs", None) or []):
        if isinstance(vlr, WktCoordinateSystemVlr) and vlr.string.strip("\x00 "):
            return " ".join(vlr.string.strip("\x00 ").split())
    for vlr in header.vlrs:
        if isinstance(vlr, GeoKeyDirectoryVlr):
            for key in vlr.geo_keys:
                if key.id in (3072, 2048) and key.tiff_tag_location == 0 and 0 < key.value_offset < 32767:
                    return f"EPSG:{key.value_offset}"
    return None


# ---------------------------------------------------------------------------- point clouds


def load_ply(path: str | os.PathLike):
    """Parse a PLY file with plyfile, turning its failures into ``ValueError`` naming the file."""
    from plyfile import PlyData, PlyParseError

    path = _existing(path, (".ply",), "PLY")
    try:
        ply = PlyData.read(str(path))
    except (PlyParseError, ValueError, EOFError, IndexError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not a readable PLY file (corrupt or truncated): {err}") from None
    if "vertex" not in [e.name for e in ply.elements]:
        raise ValueError(f"{path} has no 'vertex' element")
    return ply


def _color_array(channels: list[np.ndarray], what: str) -> np.ndarray:
    """8-bit, 16-bit or float colour channels -> float32 0..1."""
    rgb = np.stack(channels, axis=1)
    if np.issubdtype(rgb.dtype, np.floating):
        if not np.isfinite(rgb).all():
            raise ValueError(f"{what} colours hold NaN/inf values")
        return np.clip(rgb, 0, 1).astype(np.float32)
    peak = 255.0 if rgb.dtype.itemsize == 1 or rgb.max(initial=0) <= 255 else 65535.0
    return (rgb.astype(np.float64) / peak).astype(np.float32)


def read_ply(path: str | os.PathLike) -> PointCloud:
    """Read a point cloud PLY (``x y z``; optional ``nx ny nz``, ``red green blue`` 8/16-bit or
    float, ``class``; the offset / CRS comments of ``diffusers_city.export``)."""
    from ..export.ply import parse_georef_comments

    ply = load_ply(path)
    vertex = ply["vertex"].data
    names = vertex.dtype.names or ()
    if not {"x", "y", "z"} <= set(names):
        raise ValueError(f"{path}: vertex element lacks x, y, z properties (has {list(names)})")
    if len(vertex) == 0:
        raise ValueError(f"{path}: the point cloud has no points")
    offset, crs = parse_georef_comments(list(ply.comments), Path(path))
    points = np.stack([np.asarray(vertex[k], dtype=np.float64) for k in "xyz"], axis=1) + offset
    if not np.isfinite(points).all():
        raise ValueError(f"{path}: {int((~np.isfinite(points)).any(1).sum())} points have NaN/inf coordinates")
    colors = normals = classes = None
    if {"red", "green", "blue"} <= set(names):
        colors = _color_array([np.asarray(vertex[k]) for k in ("red", "green", "blue")], str(path))
    if {"nx", "ny", "nz"} <= set(names):
        normals = np.stack([np.asarray(vertex[k], dtype=np.float32) for k in ("nx", "ny", "nz")], axis=1)
        length = np.linalg.norm(normals, axis=1)
        normals = normals / np.where(length > 0, length, 1)[:, None] if (length > 0).all() else None
    if "class" in names:
        classes = np.asarray(vertex["class"]).astype(np.int64)
        check_class_ids(classes, f"{path} 'class' property")
        classes = classes.astype(np.uint8)
    return PointCloud(points, colors, normals, classes, None, crs, wkt_unit_factor(crs))


def read_las(path: str | os.PathLike) -> PointCloud:
    """Read LAS / LAZ (laspy; LAZ through the lazrs backend): coordinates scaled to metres by
    the CRS unit, RGB (16-bit, or 8-bit values stored in 16-bit fields), ASPRS classes mapped
    with `asprs_to_city` (an extra ``city_class`` byte written by our exporter wins), noise
    points (ASPRS 7, 18) dropped."""
    import laspy
    from laspy.errors import LaspyException

    path = _existing(path, (".las", ".laz"), "LAS/LAZ")
    try:
        las = laspy.read(str(path))
    except (LaspyException, ValueError, EOFError, OSError, IndexError, RuntimeError) as err:
        raise ValueError(f"{path} is not a readable LAS/LAZ file (corrupt or truncated): {err}") from None
    if len(las.points) == 0:
        raise ValueError(f"{path}: the point cloud has no points")
    crs = _las_crs(las.header)
    factor = wkt_unit_factor(crs)
    points = np.stack([np.asarray(las.x), np.asarray(las.y), np.asarray(las.z)], axis=1).astype(np.float64) * factor
    dims = set(las.point_format.dimension_names)
    asprs = np.asarray(las.classification).astype(np.uint8)
    keep = ~np.isin(asprs, ASPRS_NOISE)
    if not keep.any():
        raise ValueError(f"{path}: every point is classified as noise (ASPRS 7 / 18)")
    colors = None
    if {"red", "green", "blue"} <= dims:
        colors = _color_array([np.asarray(las[k]) for k in ("red", "green", "blue")], str(path))[keep]
    points, asprs = points[keep], asprs[keep]
    if "city_class" in dims:
        classes = np.asarray(las["city_class"])[keep].astype(np.int64)
        check_class_ids(classes, f"{path} 'city_class'")
        classes = classes.astype(np.uint8)
    else:
        classes = asprs_to_city(asprs, points)
    return PointCloud(points, colors, None, classes, asprs, crs, factor)


def read_point_cloud(path: str | os.PathLike) -> PointCloud:
    """Read a ``.ply``, ``.las`` or ``.laz`` point cloud."""
    path = _existing(path, _POINT_SUFFIXES, "point cloud")
    return read_ply(path) if path.suffix.lower() == ".ply" else read_las(path)


# ---------------------------------------------------------------------------- rasters


def _read_pil(path: Path, what: str) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode == "P":
                im = im.convert("RGB")
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"{path} is not a readable {what} image (corrupt or truncated): {err}") from None
    return arr


def _read_geotiff(path: Path, band: int):
    """Band, metres per pixel, origin, CRS and unit factor of a GeoTIFF via rasterio (flipped to
    rows growing northwards when north-up); ``None`` georeference for a plain TIFF."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                if not 1 <= band <= src.count:
                    raise ValueError(f"{path} has {src.count} band(s); band {band} does not exist")
                arr = src.read(band, masked=True)
                transform, crs = src.transform, src.crs
    except RasterioIOError as err:
        raise ValueError(f"{path} is not a readable TIFF (corrupt or truncated): {err}") from None
    data = np.ma.filled(arr.astype(np.float64), np.nan)
    if transform.is_identity or crs is None:
        return data, None
    if transform.b != 0 or transform.d != 0:
        raise ValueError(
            f"{path} is rotated or sheared (transform {tuple(transform)[:6]}); only axis-aligned rasters are supported"
        )
    if not np.isclose(abs(transform.a), abs(transform.e), rtol=1e-6):
        raise ValueError(f"{path} has non-square pixels ({transform.a} x {abs(transform.e)}); resample it first")
    wkt = crs.to_wkt()
    factor = float(crs.linear_units_factor[1]) if crs.is_projected else 1.0
    mpp = abs(transform.a) * factor
    h, w = data.shape
    x0 = transform.c if transform.a > 0 else transform.c + w * transform.a
    if transform.a < 0:
        data = data[:, ::-1]
    if transform.e < 0:  # north-up: row 0 is the north edge; flip so rows grow along +y
        data = data[::-1]
        y0 = transform.f + h * transform.e
    else:
        y0 = transform.f
    epsg = crs.to_epsg()
    return np.ascontiguousarray(data), (mpp, (x0 * factor, y0 * factor), f"EPSG:{epsg}" if epsg else wkt, factor)


def read_height_map(
    path: str | os.PathLike,
    *,
    meters_per_pixel: float | None = None,
    vertical_scale: float = 1.0,
    vertical_offset: float = 0.0,
    band: int = 1,
    fill_nodata: bool = False,
) -> HeightMap:
    """Read a height map: 8/16-bit or float PNG / TIFF (``height = value * vertical_scale +
    vertical_offset``; ``meters_per_pixel`` required, origin (0, 0), row 0 at y = 0) or a
    GeoTIFF DSM through rasterio (the optional ``geo`` extra; its georeference gives
    ``meters_per_pixel`` (an explicit value must agree), the origin and the CRS; a north-up
    file is flipped so rows grow northwards). No-data / NaN pixels raise unless
    ``fill_nodata`` copies the nearest valid height into them.
    """
    path = _existing(path, (".png", ".tif", ".tiff"), "height map")
    for name, v in (("vertical_scale", vertical_scale), ("vertical_offset", vertical_offset)):
        if not np.isfinite(v):
            raise ValueError(f"{name} must be finite, got {v}")
    if vertical_scale == 0:
        raise ValueError("vertical_scale must be non-zero")
    georef = None
    if path.suffix.lower() in (".tif", ".tiff"):
        try:
            import rasterio  # noqa: F401
        except ImportError:
            data = _read_pil(path, "height map").astype(np.float64)
        else:
            data, georef = _read_geotiff(path, band)
    else:
        data = _read_pil(path, "height map")
        if data.ndim == 3:
            if data.shape[2] in (2, 4):  # grey + alpha / RGBA: drop alpha
                data = data[..., :-1]
            if data.shape[2] == 3 and not (
                np.array_equal(data[..., 0], data[..., 1]) and np.array_equal(data[..., 0], data[..., 2])
            ):
                raise ValueError(f"{path} is a colour image; a height map must be single-channel (greyscale)")
            data = data[..., 0]
        data = data.astype(np.float64)
    if data.ndim != 2:
        raise ValueError(f"{path}: expected a single-band raster, got shape {data.shape}")
    if data.size == 0:
        raise ValueError(f"{path}: the height map is empty")
    bad = ~np.isfinite(data)
    if bad.all():
        raise ValueError(f"{path}: every pixel is no-data / NaN")
    if bad.any():
        if not fill_nodata:
            raise ValueError(
                f"{path}: {int(bad.sum())} no-data / NaN / inf pixels; "
                "pass fill_nodata=True to fill them from the nearest valid pixel"
            )
        _, (ri, ci) = ndimage.distance_transform_edt(bad, return_indices=True)
        data = data[ri, ci]
    if np.ptp(data) == 0:
        raise ValueError(f"{path}: the height map is constant (every pixel is {data.flat[0]:g}); nothing to reconstruct")
    height = (data * vertical_scale + vertical_offset).astype(np.float32)
    if georef is None:
        if meters_per_pixel is None:
            raise ValueError(f"{path} carries no georeference: pass meters_per_pixel")
        return HeightMap(height, _positive(meters_per_pixel, "meters_per_pixel"), (0.0, 0.0))
    mpp, origin, crs, factor = georef
    if meters_per_pixel is not None and not np.isclose(meters_per_pixel, mpp, rtol=1e-6):
        raise ValueError(f"{path} has {mpp:g} m/px in its georeference, but meters_per_pixel={meters_per_pixel} was given")
    return HeightMap(height, mpp, origin, crs, factor)


def _positive(value, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not np.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return v


def read_semantic_map(path: str | os.PathLike, class_mapping: Mapping) -> np.ndarray:
    """Read a label PNG as class ids ``[H, W]`` uint8.

    ``class_mapping`` maps pixel values to classes (ids or names of ``CLASSES``): integer keys
    for single-channel label images, ``(r, g, b)`` tuple keys for colour-coded maps. Pixel
    values missing from the mapping raise ``ValueError`` listing them."""
    path = _existing(path, (".png", ".tif", ".tiff"), "semantic map")
    if not class_mapping:
        raise ValueError("class_mapping is empty")
    lut: dict = {}
    for key, value in class_mapping.items():
        cls = CLASS_IDS.get(value) if isinstance(value, str) else value
        if cls is None or not isinstance(cls, (int, np.integer)) or not 0 <= cls < len(CLASSES):
            raise ValueError(f"class_mapping[{key!r}] = {value!r} is not a class id or name of {CLASSES}")
        lut[tuple(key) if isinstance(key, (tuple, list)) else int(key)] = int(cls)
    data = _read_pil(path, "semantic map")
    rgb_keys = all(isinstance(k, tuple) for k in lut)
    if rgb_keys:
        if data.ndim != 3 or data.shape[2] < 3:
            raise ValueError(f"{path} is single-channel but class_mapping has (r, g, b) keys")
        codes = (data[..., 0].astype(np.int64) << 16) | (data[..., 1].astype(np.int64) << 8) | data[..., 2]
        keymap = {(r << 16) | (g << 8) | b: v for (r, g, b), v in lut.items()}
    else:
        if data.ndim != 2:
            raise ValueError(f"{path} has {data.shape[2]} channels but class_mapping has integer keys")
        codes, keymap = data.astype(np.int64), lut
    values, inverse = np.unique(codes, return_inverse=True)
    missing = [int(v) for v in values if int(v) not in keymap]
    if missing:
        shown = [((v >> 16) & 255, (v >> 8) & 255, v & 255) if rgb_keys else v for v in missing[:8]]
        raise ValueError(f"{path}: pixel values {shown} are not in class_mapping")
    return np.array([keymap[int(v)] for v in values], dtype=np.uint8)[inverse.reshape(codes.shape)]


def read_aerial_image(path: str | os.PathLike) -> np.ndarray:
    """Read an RGB aerial image as float32 ``[H, W, 3]`` in 0..1 (8 or 16-bit)."""
    path = _existing(path, _IMAGE_SUFFIXES, "aerial image")
    data = _read_pil(path, "aerial image")
    if data.ndim == 2:
        data = np.repeat(data[..., None], 3, axis=2)
    if data.ndim != 3 or data.shape[2] not in (3, 4):
        raise ValueError(f"{path}: expected an RGB image, got shape {data.shape}")
    peak = 65535.0 if data.dtype == np.uint16 else 255.0
    if np.issubdtype(data.dtype, np.floating):
        raise ValueError(f"{path}: float images are not supported as aerial images")
    return (data[..., :3].astype(np.float64) / peak).astype(np.float32)


# ---------------------------------------------------------------------------- scenes


def _ground_estimate(height: np.ndarray, mpp: float, window_m: float = 40.0) -> np.ndarray:
    """Terrain under a DSM: a grey opening wider than buildings, smoothed (rows of a
    morphological DTM filter)."""
    size = max(3, int(round(window_m / mpp)) | 1)
    ground = ndimage.grey_opening(height, size=(size, size), mode="nearest")
    ground = ndimage.uniform_filter(ground, size=size, mode="nearest")
    return np.minimum(ground, height)


def _ground_raster(points: np.ndarray, classes: np.ndarray, mpp: float, origin, top: np.ndarray) -> np.ndarray:
    """Terrain raster (relative to ``origin[2]``): the lowest ground / road / water point of each
    cell, holes filled from the nearest such cell and smoothed; without such points the
    morphological estimate of the top surface ``top``."""
    h, w = top.shape
    groundish = np.isin(classes, (GROUND, ROAD, WATER))
    if not groundish.any():
        return _ground_estimate(top, mpp)
    g = points[groundish]
    col = np.clip(np.floor((g[:, 0] - origin[0]) / mpp).astype(np.int64), 0, w - 1)
    row = np.clip(np.floor((g[:, 1] - origin[1]) / mpp).astype(np.int64), 0, h - 1)
    low = np.full(h * w, np.inf)
    np.minimum.at(low, row * w + col, g[:, 2] - origin[2])
    low = low.reshape(h, w)
    _, (ri, ci) = ndimage.distance_transform_edt(~np.isfinite(low), return_indices=True)
    return np.minimum(ndimage.uniform_filter(low[ri, ci], size=3, mode="nearest"), top)


def _cloud_scene(cloud: PointCloud, mpp: float, crs: str | None) -> CityScene:
    """A scene from a point cloud through `points_to_scene` (top point per cell gives height,
    class and image colour). Points still ``UNKNOWN`` are labelled first by their height above
    the terrain: < 2 m ground, above it vegetation when green-dominant, else roof."""
    from .convert import points_to_height_map, points_to_scene

    pts = cloud.points
    origin = (*(np.floor(pts[:, :2].min(0) / mpp) * mpp).tolist(), float(np.floor(pts[:, 2].min())))
    top, _, _ = points_to_height_map(pts, mpp, origin)
    classes = cloud.classes.copy() if cloud.classes is not None else np.full(len(pts), UNKNOWN, np.uint8)
    ground = _ground_raster(pts, classes, mpp, origin, top)
    unknown = classes == UNKNOWN
    if unknown.any():
        u = pts[unknown]
        col = np.clip(np.floor((u[:, 0] - origin[0]) / mpp).astype(np.int64), 0, top.shape[1] - 1)
        row = np.clip(np.floor((u[:, 1] - origin[1]) / mpp).astype(np.int64), 0, top.shape[0] - 1)
        above = u[:, 2] - origin[2] - ground[row, col]
        green = np.zeros(len(u), dtype=bool)
        if cloud.colors is not None:
            c = cloud.colors[unknown]
            green = (c[:, 1] > c[:, 0]) & (c[:, 1] > c[:, 2])
        classes[unknown] = np.where(above < 2.0, GROUND, np.where(green, VEGETATION, ROOF))
    scene = points_to_scene(pts, mpp, cloud.colors, cloud.normals, classes, origin=origin, shape=top.shape, crs=crs)
    return scene.replace(ground=np.minimum(ground, scene.height))


def scene_from_file(
    path: str | os.PathLike,
    meters_per_pixel: float | None = None,
    *,
    vertical_scale: float = 1.0,
    vertical_offset: float = 0.0,
    semantic: str | os.PathLike | None = None,
    class_mapping: Mapping | None = None,
    image: str | os.PathLike | None = None,
    crs: str | None = None,
    fill_nodata: bool = False,
) -> CityScene:
    """A `CityScene` from a DSM (PNG / TIFF / GeoTIFF) or a point cloud (PLY / LAS / LAZ).

    DSM: heights as read by `read_height_map`; the terrain is a morphological estimate and the
    semantic map, unless given (``semantic`` + ``class_mapping``), labels pixels more than
    2.5 m above it as roof (vegetation where an ``image`` is green-dominant), ground elsewhere.
    Point cloud: rasterized at ``meters_per_pixel`` (default 1 m) by
    `~diffusers_city.data.points_to_scene` (the top point of every cell gives its height, class
    and image colour) after unclassified points are labelled by height above the terrain; the
    points, colours and classes are kept on the scene. The CRS (read, or ``crs``) and the unit factor travel
    along (``scene.crs``, ``scene.metadata["crs_unit_factor"]``).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"input file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix not in _POINT_SUFFIXES + (".png", ".tif", ".tiff"):
        raise ValueError(
            f"{path}: unsupported input format {path.suffix!r}; expected a DSM (.png/.tif) or a point cloud (.ply/.las/.laz)"
        )
    if (semantic is None) != (class_mapping is None):
        raise ValueError("semantic and class_mapping must be given together")
    if suffix in _POINT_SUFFIXES:
        mpp = 1.0 if meters_per_pixel is None else _positive(meters_per_pixel, "meters_per_pixel")
        cloud = read_point_cloud(path)
        scene = _cloud_scene(cloud, mpp, crs or cloud.crs)
        changes: dict = {"metadata": {"source": path.name, "crs_unit_factor": cloud.unit_factor}}
        if semantic is not None:
            changes["semantic"] = read_semantic_map(semantic, class_mapping)
            if changes["semantic"].shape != scene.shape:
                raise ValueError(
                    f"semantic map shape {changes['semantic'].shape} does not match the rasterized cloud {scene.shape}"
                )
        if image is not None:
            changes["image"] = read_aerial_image(image)
        return scene.replace(**changes)
    hm = read_height_map(
        path,
        meters_per_pixel=meters_per_pixel,
        vertical_scale=vertical_scale,
        vertical_offset=vertical_offset,
        fill_nodata=fill_nodata,
    )
    oz = float(np.floor(hm.height.min()))
    height = hm.height - np.float32(oz)
    ground = _ground_estimate(height, hm.meters_per_pixel)
    img = None if image is None else read_aerial_image(image)
    if semantic is not None:
        sem = read_semantic_map(semantic, class_mapping)
        if sem.shape != height.shape:
            raise ValueError(f"semantic map shape {sem.shape} does not match the height map {height.shape}")
    else:
        sem = np.where(height - ground > 2.5, ROOF, GROUND).astype(np.uint8)
        if img is not None:
            k = img.shape[0] // height.shape[0]
            if k < 1 or img.shape[:2] != (k * height.shape[0], k * height.shape[1]):
                raise ValueError(f"image shape {img.shape[:2]} is not an integer multiple of the height map {height.shape}")
            c = img.reshape(height.shape[0], k, height.shape[1], k, 3).mean(axis=(1, 3))
            green = (c[..., 1] > c[..., 0] + 0.02) & (c[..., 1] > c[..., 2] + 0.02)
            sem = np.where(green & (height - ground > 1.0), VEGETATION, sem).astype(np.uint8)
    return CityScene(
        height=height,
        semantic=sem,
        meters_per_pixel=hm.meters_per_pixel,
        origin=(hm.origin[0], hm.origin[1], oz),
        ground=ground,
        crs=crs or hm.crs,
        image=img,
        metadata={"source": path.name, "crs_unit_factor": hm.unit_factor},
    )
