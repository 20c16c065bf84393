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

import importlib.util
import logging
import os
import re
import struct
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from scipy import ndimage

from ..utils.errors import CorruptFileError
from ..utils.memory import check_memory
from .classes import CLASS_IDS, CLASSES, CONSTRUCTION, FACADE, GROUND, ROAD, ROOF, VEGETATION, VEHICLE, WATER, check_class_ids
from .labels import BUILDING_HEIGHT_M, roof_or_facade, terrain_estimate
from .scene import CityScene, read_npy

__all__ = [
    "ASPRS_TO_CITY",
    "CITY_TO_ASPRS",
    "HeightMap",
    "PointCloud",
    "asprs_to_city",
    "city_to_asprs",
    "fill_holes",
    "read_aerial_image",
    "read_height_input",
    "read_height_map",
    "read_las",
    "read_ply",
    "read_point_cloud",
    "read_semantic_map",
    "scene_from_file",
]

logger = logging.getLogger(__name__)

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
_HEIGHT_SUFFIXES = (".png", ".tif", ".tiff", ".npy")
# No surface on Earth lies 100 km from sea level: a height beyond is a unit or scale error (or a corrupt file).
_MAX_ABS_HEIGHT_M = 1e5
_MAX_LAZ_CHUNK = 2**24
"""Largest fixed LAZ chunk (points) accepted above a file's point count: lazrs zero-fills a whole
chunk for the last one, so a corrupt chunk size (u32) could ask for up to 4 G points."""
_LAZ_LAYERS = {10: 9, 11: 1, 12: 2}
"""Layers of a layered LAZ item: point14 9, RGB14 1, RGBNIR14 2 (byte14: one per byte)."""
_GEOTIFF_TAGS = {33550, 33922, 34264, 34735}  # ModelPixelScale, ModelTiepoint, ModelTransformation, GeoKeyDirectory


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
        roof = roof_or_facade(points[building], None if normals is None else normals[building], cell)
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
_GEOGRAPHIC_WKT = re.compile(r'(?:(?:COMPD_CS|COMPOUNDCRS)\["[^"]*",\s*)?(?:GEOGCS|GEOCCS|GEOGCRS|GEODCRS)\[')
"""A WKT (WKT1 / WKT2, plain or compound) whose horizontal CRS is geographic or geocentric."""


def wkt_unit_factor(wkt: str | None) -> float:
    """Metres per horizontal unit of a projected WKT CRS (1.0 when geographic / unknown).

    The last linear ``UNIT`` of the text is the one of the projected CS (WKT1 and WKT2 both put
    it after the projection parameters)."""
    if not wkt:
        return 1.0
    linear = [float(f) for name, f in _UNIT_RE.findall(wkt) if not name.lower().startswith(_ANGULAR)]
    return linear[-1] if linear else 1.0


def _las_crs(header) -> tuple[str | None, bool]:
    """The CRS of a LAS header as WKT (WKT VLR) or ``"EPSG:<code>"`` (GeoTIFF keys), and whether
    it is geographic / geocentric (x, y not metres east / north)."""
    from laspy.vlrs.known import GeoKeyDirectoryVlr, WktCoordinateSystemVlr

    for vlr in list(header.vlrs) + list(getattr(header, "evlrs", None) or []):
        if isinstance(vlr, WktCoordinateSystemVlr) and vlr.string.strip("\x00 "):
            wkt = " ".join(vlr.string.strip("\x00 ").split())
            return wkt, bool(_GEOGRAPHIC_WKT.match(wkt))
    for vlr in header.vlrs:
        if isinstance(vlr, GeoKeyDirectoryVlr):
            keys = {key.id: key.value_offset for key in vlr.geo_keys if key.tiff_tag_location == 0}
            for key_id in (3072, 2048):  # ProjectedCSTypeGeoKey before GeographicTypeGeoKey (the projection's datum)
                if 0 < keys.get(key_id, 0) < 32767:
                    return f"EPSG:{keys[key_id]}", key_id == 2048 or keys.get(1024) in (2, 3)
            return None, keys.get(1024) in (2, 3)  # GTModelTypeGeoKey: 2 geographic, 3 geocentric
    return None, False


def _utm_epsg(lon: float, lat: float) -> str:
    """The WGS 84 / UTM zone holding (lon, lat), as a reprojection target to suggest."""
    if not (-180 <= lon <= 180 and -90 <= lat <= 90):
        return "EPSG:<its UTM zone>"
    return f"EPSG:{(32600 if lat >= 0 else 32700) + min(int((lon + 180) // 6) + 1, 60)}"


# ---------------------------------------------------------------------------- point clouds


def load_ply(path: str | os.PathLike):
    """Parse a PLY file with plyfile, turning its failures into ``ValueError`` naming the file."""
    from plyfile import PlyData, PlyParseError

    path = _existing(path, (".ply",), "PLY")
    try:
        ply = PlyData.read(str(path))
    except (PlyParseError, ValueError, EOFError, IndexError, OverflowError) as err:
        raise CorruptFileError(f"{path} is not a readable PLY file (corrupt or truncated): {err}") from None
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


def _las_header(path: Path):
    """The header (and VLRs) of a LAS / LAZ file, checked against the file size before any point
    is decoded: laspy allocates and zero-fills ``point_count x record length`` up front (a LAS
    header claiming 170 M points in a 507 KB file took 6.6 GB), and lazrs aborts the whole
    process, uncatchably, when a corrupt LAZ chunk table asks for more memory than there is."""
    from laspy import LasHeader
    from laspy.errors import LaspyException

    size = path.stat().st_size
    with path.open("rb") as f:
        _check_las_records(path, f, size)
        try:
            header = LasHeader.read_from(f)
        except (LaspyException, ValueError, EOFError, OSError, IndexError, KeyError, struct.error) as err:
            raise CorruptFileError(f"{path} is not a readable LAS/LAZ file (corrupt or truncated header): {err}") from None
        scales, offsets = np.asarray(header.scales, np.float64), np.asarray(header.offsets, np.float64)
        if not (np.isfinite(scales).all() and (scales != 0).all() and np.isfinite(offsets).all()):
            raise CorruptFileError(
                f"{path}: corrupt header: coordinate scales {scales.tolist()} and offsets {offsets.tolist()} "
                "must be finite, the scales non-zero"
            )
        start, count, record = header.offset_to_point_data, header.point_count, header.point_format.size
        if header.are_points_compressed:
            _check_laz_chunks(path, header, f, size)
        elif count * record > size - start:
            raise CorruptFileError(
                f"{path} is corrupt or truncated: its header claims {count} points of {record} bytes ({count * record} bytes), "
                f"but only {max(size - start, 0)} bytes follow the header"
            )
    return header


def _check_las_records(path: Path, f, size: int) -> None:
    """Refuse a LAS / LAZ whose header places its VLRs, points or EVLRs outside the file (read
    from the raw header: laspy reads ``offset_to_point_data`` bytes, every VLR it is told of, and
    each EVLR's 64-bit record length, without checking them against the file)."""
    head = f.read(375)
    if len(head) < 227 or head[:4] != b"LASF":
        raise CorruptFileError(f"{path} is not a LAS/LAZ file (no LASF signature / truncated header)")
    header_size, start, vlrs = struct.unpack_from("<HII", head, 94)
    if not header_size <= start <= size:
        raise CorruptFileError(
            f"{path} is corrupt: its point data offset {start} lies outside the {size}-byte file (header {header_size} bytes)"
        )
    if vlrs * 54 > start - header_size:  # a VLR header is 54 bytes
        raise CorruptFileError(f"{path} is corrupt: its header lists {vlrs} VLRs in {start - header_size} bytes")
    if head[25] >= 4 and len(head) >= 247:  # LAS 1.4: EVLRs after the points
        pos, evlrs = struct.unpack_from("<QI", head, 235)
        for i in range(evlrs):  # an EVLR header is 60 bytes, its record length a u64 at byte 20
            if pos + 60 > size:
                raise CorruptFileError(
                    f"{path} is corrupt or truncated: EVLR {i + 1} of {evlrs} starts past the end of the {size}-byte file"
                )
            f.seek(pos + 20)
            pos += 60 + struct.unpack("<Q", f.read(8))[0]
        if pos > size:
            raise CorruptFileError(f"{path} is corrupt or truncated: its last EVLR ends past the end of the {size}-byte file")
    f.seek(0)


def _check_laz_chunks(path: Path, header, f, size: int) -> None:
    """Refuse a LAZ whose LASzip layout disagrees with itself, the header or the file size,
    before lazrs (which aborts the process on a failed allocation and panics on a zero item
    size) reads it: the VLR's items must add up to the point record length; the chunk table
    (an int64 offset at the start of the point data, at the end of the file when a streaming
    writer could not patch it; u32 version, u32 chunk count, arithmetic-coded entries) must
    lie in the file, cover the point data exactly and hold the header's point count; a
    layered chunk (point formats 6-10) must hold the layer sizes it declares."""
    import lazrs
    from laspy.vlrs.known import LasZipVlr

    vlr = next((v for v in header.vlrs if isinstance(v, LasZipVlr)), None)
    if vlr is None:
        raise CorruptFileError(f"{path}: compressed point format but no LASzip VLR (corrupt LAZ)")
    start, count, record = header.offset_to_point_data, header.point_count, header.point_format.size
    try:
        laz_vlr = lazrs.LazVlr(vlr.record_data)
        compressor, items = struct.unpack_from("<H", vlr.record_data)[0], _laz_items(vlr.record_data)
        if laz_vlr.item_size() != record:
            raise ValueError(f"its LASzip items describe {laz_vlr.item_size()}-byte points, its header {record}-byte points")
        f.seek(start)
        (table,) = struct.unpack("<q", f.read(8))
        if table <= start:
            f.seek(size - 8)
            (table,) = struct.unpack("<q", f.read(8))
        if not start + 8 <= table <= size - 8:
            raise ValueError(f"its chunk table offset {table} lies outside the point data (bytes {start + 8}..{size - 8})")
        f.seek(table + 4)
        (chunks,) = struct.unpack("<I", f.read(4))
        data_bytes = table - start - 8
        if chunks > data_bytes:
            raise ValueError(f"its chunk table lists {chunks} chunks in {data_bytes} bytes of compressed points")
        f.seek(start)
        entries = lazrs.read_chunk_table(f, laz_vlr)
    except (struct.error, lazrs.LazrsError, ValueError, OSError) as err:
        raise CorruptFileError(f"{path} is not a readable LAZ file (corrupt or truncated): {err}") from None
    if sum(b for _, b in entries) != data_bytes:
        raise CorruptFileError(
            f"{path} is corrupt: its chunk table sums to {sum(b for _, b in entries)} bytes, the point data holds {data_bytes}"
        )
    if laz_vlr.uses_variable_size_chunks():
        ok, held = sum(n for n, _ in entries) == count, f"{sum(n for n, _ in entries)} points"
    else:
        per = laz_vlr.chunk_size()
        if per > max(count, _MAX_LAZ_CHUNK):  # lazrs zero-fills a whole chunk for the last one
            raise CorruptFileError(
                f"{path} is corrupt: its LASzip chunk size {per} exceeds its {count} points (LASzip writes 50000)"
            )
        ok, held = (len(entries) - 1) * per < count <= len(entries) * per, f"{len(entries)} chunks of up to {per} points"
    if count and not ok:
        raise CorruptFileError(f"{path} is corrupt: its header claims {count} points, its chunk table holds {held}")
    if compressor == 3:  # layered: raw first point, u32 point count, u32 size of every layer, the layers
        layers = sum(_LAZ_LAYERS.get(kind, 1) if kind != 14 else item_size for kind, item_size in items)
        pos = start + 8
        for i, (_, nbytes) in enumerate(entries):
            need = record + 4 + 4 * layers
            if need <= nbytes:
                f.seek(pos + record + 4)
                need += sum(struct.unpack(f"<{layers}I", f.read(4 * layers)))
            if need > nbytes:
                raise CorruptFileError(
                    f"{path} is corrupt: LAZ chunk {i + 1} of {len(entries)} declares {need} bytes, it holds {nbytes}"
                )
            pos += nbytes


def _laz_items(record_data: bytes) -> list[tuple[int, int]]:
    """(type, size) of the items of a LASzip VLR (34 bytes of fields, u16 count, 6 bytes an item)."""
    (n,) = struct.unpack_from("<H", record_data, 32)
    return [struct.unpack_from("<HH", record_data, 34 + 6 * i) for i in range(n)]


def read_las(path: str | os.PathLike) -> PointCloud:
    """Read LAS / LAZ (laspy; LAZ through the lazrs backend): coordinates scaled to metres by
    the CRS unit, RGB (16-bit, or 8-bit values stored in 16-bit fields), ASPRS classes mapped
    with `asprs_to_city` (an extra ``city_class`` byte written by our exporter wins), noise
    points (ASPRS 7, 18) dropped. The header is checked against the file size first
    (`_las_header`); a geographic CRS (degrees) is refused."""
    import laspy
    from laspy.errors import LaspyException

    path = _existing(path, (".las", ".laz"), "LAS/LAZ")
    _las_header(path)
    try:
        las = laspy.read(str(path))
    except (LaspyException, ValueError, EOFError, OSError, IndexError, RuntimeError, struct.error) as err:
        raise CorruptFileError(f"{path} is not a readable LAS/LAZ file (corrupt or truncated): {err}") from None
    if len(las.points) == 0:
        raise ValueError(f"{path}: the point cloud has no points")
    crs, geographic = _las_crs(las.header)
    raw = np.stack([np.asarray(las.x), np.asarray(las.y), np.asarray(las.z)], axis=1).astype(np.float64)
    if not np.isfinite(raw).all():
        raise ValueError(f"{path}: {int((~np.isfinite(raw)).any(1).sum())} points have NaN/inf coordinates")
    if geographic:
        epsg = _utm_epsg(float(np.median(raw[:, 0])), float(np.median(raw[:, 1])))
        raise ValueError(
            f"{path} is in a geographic CRS ({crs or 'per its GeoKeys'}): its x, y are degrees, not metres; reproject it to a "
            f"projected CRS in metres first (e.g. pdal translate {path.name} {path.stem}_utm{path.suffix} reprojection "
            f"--filters.reprojection.out_srs={epsg})"
        )
    factor = wkt_unit_factor(crs)
    points = raw * factor
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


def _has_rasterio() -> bool:
    return importlib.util.find_spec("rasterio") is not None


def _read_pil(path: Path, what: str, *, geotiff_ok: bool = True) -> np.ndarray:
    """Pixels of an image through PIL (palette images as RGB). ``geotiff_ok=False`` refuses a
    GeoTIFF, whose georeference PIL cannot read."""
    try:
        with Image.open(path) as im:
            im.load()
            geotiff = bool(_GEOTIFF_TAGS & set(getattr(im, "tag_v2", None) or {}))
            if im.mode == "P":
                im = im.convert("RGB")
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise CorruptFileError(f"{path} is not a readable {what} image (corrupt or truncated): {err}") from None
    if geotiff and not geotiff_ok:
        raise ValueError(f"{path} is a GeoTIFF: reading its georeference needs rasterio (the optional 'geo' extra); install it")
    return arr


def _single_band(data: np.ndarray, path: Path) -> np.ndarray:
    """The band of a greyscale image: alpha dropped, grey stored as RGB reduced; colour refused."""
    if data.ndim == 3:
        if data.shape[2] in (2, 4):  # grey + alpha / RGBA: drop alpha
            data = data[..., :-1]
        if data.shape[2] == 3 and not (np.array_equal(data[..., 0], data[..., 1]) and np.array_equal(data[..., 0], data[..., 2])):
            raise ValueError(f"{path} is a colour image; a height map must be single-channel (greyscale)")
        data = data[..., 0]
    return data


def _read_geotiff(path: Path, band: int):
    """Band (stored dtype, NaN for no-data), metres per pixel, origin, CRS and unit factor of a
    GeoTIFF via rasterio (flipped to rows growing northwards when north-up); ``None``
    georeference for a plain TIFF. A geographic CRS (degrees) is refused, not read as metres."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                if not 1 <= band <= src.count:
                    raise ValueError(f"{path} has {src.count} band(s); band {band} does not exist")
                limit = Image.MAX_IMAGE_PIXELS
                if limit and src.width * src.height > 2 * limit:
                    raise ValueError(
                        f"{path}: {src.width}x{src.height} px exceeds the {2 * limit} px read limit "
                        "(2 x PIL.Image.MAX_IMAGE_PIXELS, the decompression-bomb guard); crop it first or raise that limit"
                    )
                if "complex" in src.dtypes[band - 1]:
                    raise ValueError(f"{path}: height values must be real numbers, got {src.dtypes[band - 1]}")
                arr = src.read(band, masked=True)
                transform, crs = src.transform, src.crs
    except RasterioIOError as err:
        raise CorruptFileError(f"{path} is not a readable TIFF (corrupt or truncated): {err}") from None
    data = np.ma.filled(arr.astype(np.float64), np.nan) if np.ma.is_masked(arr) else np.ma.getdata(arr)
    if transform.is_identity or crs is None:
        return data, None
    if not (np.isfinite(tuple(transform)[:6]).all() and transform.a != 0 and transform.e != 0):
        raise CorruptFileError(f"{path} has a corrupt georeference (transform {tuple(transform)[:6]})")
    h, w = data.shape
    if crs.is_geographic:
        lon, lat = transform.c + transform.a * w / 2, transform.f + transform.e * h / 2
        raise ValueError(
            f"{path} is in a geographic CRS ({crs}): its pixels are degrees, not metres; reproject it to a projected "
            f"CRS in metres first (e.g. gdalwarp -t_srs {_utm_epsg(lon, lat)} -r bilinear {path.name} {path.stem}_utm.tif)"
        )
    if transform.b != 0 or transform.d != 0:
        raise ValueError(
            f"{path} is rotated or sheared (transform {tuple(transform)[:6]}); only axis-aligned rasters are supported"
        )
    if not np.isclose(abs(transform.a), abs(transform.e), rtol=1e-6):
        raise ValueError(f"{path} has non-square pixels ({transform.a} x {abs(transform.e)}); resample it first")
    if not crs.is_projected:
        raise ValueError(f"{path}: its CRS ({crs}) is not a projected CRS in linear units; reproject it to one in metres first")
    wkt = crs.to_wkt()
    factor = float(crs.linear_units_factor[1])
    mpp = _positive(abs(transform.a) * factor, f"{path}: the pixel size in metres")
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


def _read_raster(path: Path, band: int):
    """Values of a height raster in their stored dtype and its georeference (`_read_geotiff`;
    ``None`` for PNG / NPY / a plain TIFF); ``ValueError`` unless one band of real numbers."""
    suffix = path.suffix.lower()
    georef = None
    if suffix == ".npy":
        data = read_npy(path)
    elif suffix in (".tif", ".tiff") and _has_rasterio():
        data, georef = _read_geotiff(path, band)
    else:
        data = _single_band(_read_pil(path, "height map", geotiff_ok=False), path)
    if data.dtype.kind not in "uif":
        raise ValueError(f"{path}: height values must be real numbers (integer or float), got {data.dtype} values")
    if data.ndim != 2:
        raise ValueError(f"{path}: expected a single-band raster, got shape {data.shape}")
    if data.size == 0:
        raise ValueError(f"{path}: the height map is empty")
    return data, georef


def _check_vertical(vertical_scale: float, vertical_offset: float) -> None:
    """Refuse a non-finite vertical_scale / vertical_offset or a zero vertical_scale."""
    for name, v in (("vertical_scale", vertical_scale), ("vertical_offset", vertical_offset)):
        if not np.isfinite(v):
            raise ValueError(f"{name} must be finite, got {v}")
    if vertical_scale == 0:
        raise ValueError("vertical_scale must be non-zero")


def fill_holes(data: np.ndarray, source: str, fill: bool) -> np.ndarray:
    """``data`` with its no-data / NaN / inf pixels filled from the nearest valid pixel (said in a
    warning with their share) when ``fill``; otherwise ``ValueError`` with their share."""
    bad = ~np.isfinite(data)
    if bad.all():
        raise ValueError(f"{source}: every pixel is no-data / NaN")
    if not bad.any():
        return data
    share = f"{int(bad.sum())} no-data / NaN / inf pixels ({100 * bad.mean():.2g}% of the map)"
    if not fill:
        raise ValueError(f"{source}: {share}; pass fill_nodata=True to fill them from the nearest valid pixel")
    logger.warning(f"{source}: filled {share} from the nearest valid pixel")
    _, (ri, ci) = ndimage.distance_transform_edt(bad, return_indices=True)
    return data[ri, ci]


def _height_map(
    path: Path, data: np.ndarray, georef, meters_per_pixel, vertical_scale, vertical_offset, fill_nodata
) -> HeightMap:
    """`read_height_map` of raster values read by `_read_raster` (``vertical_*`` checked by `_check_vertical`)."""
    data = fill_holes(data.astype(np.float64), str(path), fill_nodata)
    if np.ptp(data) == 0:
        raise ValueError(f"{path}: the height map is constant (every pixel is {data.flat[0]:g}); nothing to reconstruct")
    height = data * vertical_scale + vertical_offset
    peak = float(np.abs(height).max())
    if not peak <= _MAX_ABS_HEIGHT_M:
        raise ValueError(
            f"{path}: heights reach {peak:g} m, beyond the {_MAX_ABS_HEIGHT_M:g} m of any surface on Earth; "
            "check vertical_scale / vertical_offset and the file's units"
        )
    height = height.astype(np.float32)
    if georef is None:
        if meters_per_pixel is None:
            raise ValueError(f"{path} carries no georeference: pass meters_per_pixel")
        return HeightMap(height, _positive(meters_per_pixel, "meters_per_pixel"), (0.0, 0.0))
    mpp, origin, crs, factor = georef
    if meters_per_pixel is not None and not np.isclose(meters_per_pixel, mpp, rtol=1e-6):
        raise ValueError(f"{path} has {mpp:g} m/px in its georeference, but meters_per_pixel={meters_per_pixel} was given")
    return HeightMap(height, mpp, origin, crs, factor)


def read_height_map(
    path: str | os.PathLike,
    *,
    meters_per_pixel: float | None = None,
    vertical_scale: float = 1.0,
    vertical_offset: float = 0.0,
    band: int = 1,
    fill_nodata: bool = False,
) -> HeightMap:
    """Read a height map: 8/16-bit or float PNG / TIFF / ``.npy`` (``height = value *
    vertical_scale + vertical_offset``; ``meters_per_pixel`` required, origin (0, 0), row 0 at
    y = 0) or a GeoTIFF DSM through rasterio (the optional ``geo`` extra; its georeference gives
    ``meters_per_pixel`` (an explicit value must agree), the origin and the CRS; a north-up
    file is flipped so rows grow northwards; a geographic CRS is refused). No-data / NaN pixels
    raise unless ``fill_nodata`` copies the nearest valid height into them. Corrupt files,
    colour, 1-bit (bool) or complex rasters raise ``ValueError`` naming the file.
    """
    path = _existing(path, _HEIGHT_SUFFIXES, "height map")
    _check_vertical(vertical_scale, vertical_offset)  # before the raster is read
    data, georef = _read_raster(path, band)
    return _height_map(path, data, georef, meters_per_pixel, vertical_scale, vertical_offset, fill_nodata)


def read_height_input(
    path: str | os.PathLike,
    meters_per_pixel: float | None = None,
    *,
    vertical_scale: float = 1.0,
    vertical_offset: float = 0.0,
    fill_nodata: bool = False,
) -> CityScene | np.ndarray:
    """A height-map input file as metric heights or as Sat2City gray levels, decided by the
    file's type and never by its values (a metric DSM whose heights happen to lie in 0..255
    stays metric):

    - a scene folder: `CityScene.load`;
    - an 8-bit single-channel image without a georeference (PNG / JPEG / BMP / plain TIFF, a
      uint8 ``.npy``): its gray levels, ``uint8 [H, W]`` (Sat2City: 0..255 span the height range);
    - any other height raster (a GeoTIFF with a georeference, whatever its dtype; a 16-bit or
      float PNG / TIFF / ``.npy``) or a point cloud: the metric `CityScene` of `scene_from_file`
      (``meters_per_pixel`` and ``vertical_*`` as there; required where there is no georeference).

    Colour, 1-bit, complex, corrupt or geographic (degrees) inputs raise ``ValueError`` naming the file.
    """
    path = Path(path)
    if path.is_dir():
        return CityScene.load(path)
    if path.suffix.lower() in _POINT_SUFFIXES:
        return scene_from_file(path, meters_per_pixel)
    path = _existing(path, _HEIGHT_SUFFIXES + (".jpg", ".jpeg", ".bmp"), "height map")
    data, georef = _read_raster(path, 1)
    if georef is None and data.dtype == np.uint8:
        return data
    _check_vertical(vertical_scale, vertical_offset)
    return _dsm_scene(path, _height_map(path, data, georef, meters_per_pixel, vertical_scale, vertical_offset, fill_nodata))


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
    if data.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"{path}: aerial images must be 8 or 16-bit, got {data.dtype} pixels")
    peak = 65535.0 if data.dtype == np.uint16 else 255.0
    return (data[..., :3].astype(np.float64) / peak).astype(np.float32)


# ---------------------------------------------------------------------------- scenes


def _ground_raster(points: np.ndarray, classes: np.ndarray, mpp: float, origin, top: np.ndarray) -> np.ndarray:
    """Terrain raster (relative to ``origin[2]``): the lowest ground / road / water point of each
    cell, holes filled from the nearest such cell and smoothed; without such points the
    morphological estimate of the top surface ``top``."""
    h, w = top.shape
    groundish = np.isin(classes, (GROUND, ROAD, WATER))
    if not groundish.any():
        return terrain_estimate(top, mpp)
    g = points[groundish]
    col = np.clip(np.floor((g[:, 0] - origin[0]) / mpp).astype(np.int64), 0, w - 1)
    row = np.clip(np.floor((g[:, 1] - origin[1]) / mpp).astype(np.int64), 0, h - 1)
    low = np.full(h * w, np.inf)
    np.minimum.at(low, row * w + col, g[:, 2] - origin[2])
    low = low.reshape(h, w)
    _, (ri, ci) = ndimage.distance_transform_edt(~np.isfinite(low), return_indices=True)
    return np.minimum(ndimage.uniform_filter(low[ri, ci], size=3, mode="nearest"), top)


def _cloud_scene(cloud: PointCloud, mpp: float, crs: str | None, name: str) -> CityScene:
    """A scene from a point cloud through `points_to_scene` (top point per cell gives height,
    class and image colour). Points still ``UNKNOWN`` are labelled first by their height above
    the terrain: < 2 m ground, above it vegetation when green-dominant, else roof. A cloud
    without a 2D footprint (every point on one x or one y) is refused."""
    from .convert import points_to_height_map, points_to_scene

    pts = cloud.points
    flat = [axis for axis, span in zip("xy", np.ptp(pts[:, :2], axis=0)) if span == 0]
    if flat:
        raise ValueError(f"{name}: every point has the same {' and '.join(flat)}; a point cloud of a city spans an area")
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
    max_memory_gb: float | None = None,
) -> CityScene:
    """A `CityScene` from a DSM (PNG / TIFF / GeoTIFF / ``.npy``) or a point cloud (PLY / LAS / LAZ).

    DSM: heights as read by `read_height_map`; the terrain is a morphological estimate and the
    semantic map, unless given (``semantic`` + ``class_mapping``), labels pixels more than
    2.5 m above it as roof (vegetation where an ``image`` is green-dominant), ground elsewhere.
    Point cloud: rasterized at ``meters_per_pixel`` (default 1 m) by
    `~diffusers_city.data.points_to_scene` (the top point of every cell gives its height, class
    and image colour) after unclassified points are labelled by height above the terrain; the
    points, colours and classes are kept on the scene. The CRS (read, or ``crs``) and the unit factor travel
    along (``scene.crs``, ``scene.metadata["crs_unit_factor"]``). The scene's rasters are estimated
    before they are built and refused (`~diffusers_city.utils.MemoryLimitError`) above
    ``max_memory_gb`` (default: the memory available now).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"input file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix not in _POINT_SUFFIXES + _HEIGHT_SUFFIXES:
        raise ValueError(
            f"{path}: unsupported input format {path.suffix!r}; expected a DSM (.png/.tif/.npy) or a point cloud (.ply/.las/.laz)"
        )
    if (semantic is None) != (class_mapping is None):
        raise ValueError("semantic and class_mapping must be given together")
    if suffix in _POINT_SUFFIXES:
        mpp = 1.0 if meters_per_pixel is None else _positive(meters_per_pixel, "meters_per_pixel")
        cloud = read_point_cloud(path)
        span = np.ptp(cloud.points[:, :2], axis=0) if len(cloud.points) else np.zeros(2)
        cols, rows = (int(v) + 1 for v in np.floor(span / mpp))
        _check_scene_memory(rows, cols, mpp, max_memory_gb, path)
        scene = _cloud_scene(cloud, mpp, crs or cloud.crs, str(path))
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
    _check_scene_memory(*hm.height.shape, hm.meters_per_pixel, max_memory_gb, path)
    img = None if image is None else read_aerial_image(image)
    sem = None if semantic is None else read_semantic_map(semantic, class_mapping)
    return _dsm_scene(path, hm, sem, img, crs)


_SCENE_BYTES_PER_CELL = 96
"""Rough peak bytes per raster cell of building a scene (rasters, terrain filter, nearest fill;
70 measured for a rasterized cloud on x86-64, with room for the colour image)."""


def _check_scene_memory(rows: int, cols: int, mpp: float, max_memory_gb: float | None, path: Path) -> None:
    """Refuse a scene whose rasters would not fit, before they are built."""
    check_memory(
        float(rows) * float(cols) * _SCENE_BYTES_PER_CELL,
        max_memory_gb,
        f"{path}: a scene of {rows}x{cols} px at {mpp:g} m/px",
        hint="use a larger meters_per_pixel",
    )


def _dsm_scene(
    path: Path, hm: HeightMap, semantic: np.ndarray | None = None, image: np.ndarray | None = None, crs: str | None = None
) -> CityScene:
    """The scene of a DSM (see `scene_from_file`): heights relative to their floor, the
    morphological terrain, ``semantic`` or roof / vegetation / ground labels."""
    oz = float(np.floor(hm.height.min()))
    height = hm.height - np.float32(oz)
    ground = terrain_estimate(height, hm.meters_per_pixel)
    if semantic is not None:
        if semantic.shape != height.shape:
            raise ValueError(f"semantic map shape {semantic.shape} does not match the height map {height.shape}")
        sem = semantic
    else:
        sem = np.where(height - ground > BUILDING_HEIGHT_M, ROOF, GROUND).astype(np.uint8)
        if image is not None:
            k = image.shape[0] // height.shape[0]
            if k < 1 or image.shape[:2] != (k * height.shape[0], k * height.shape[1]):
                raise ValueError(f"image shape {image.shape[:2]} is not an integer multiple of the height map {height.shape}")
            c = image.reshape(height.shape[0], k, height.shape[1], k, 3).mean(axis=(1, 3))
            green = (c[..., 1] > c[..., 0] + 0.02) & (c[..., 1] > c[..., 2] + 0.02)
            sem = np.where(green & (height - ground > 1.0), VEGETATION, sem).astype(np.uint8)
    return CityScene(
        height=height,
        semantic=sem,
        meters_per_pixel=hm.meters_per_pixel,
        origin=(hm.origin[0], hm.origin[1], oz),
        ground=ground,
        crs=crs or hm.crs,
        image=image,
        metadata={"source": path.name, "crs_unit_factor": hm.unit_factor},
    )
