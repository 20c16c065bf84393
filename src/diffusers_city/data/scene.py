"""`CityScene`: a georeferenced 2.5D city (rasters) with an optional coloured point cloud.

Frame (docs/design.md): metres, x east = image columns, y = origin_y + row * mpp, z up. Pixel
(i, j) covers ``[ox + j*mpp, ox + (j+1)*mpp) x [oy + i*mpp, oy + (i+1)*mpp)`` and its centre is
``(ox + (j+0.5)*mpp, oy + (i+0.5)*mpp)``. Raster heights are relative to ``origin[2]``: the top
surface of pixel (i, j) is at world z ``origin[2] + height[i, j]``. Points are in world
coordinates and belong to the pixel whose half-open cell holds their (x, y), so crops and
non-overlapping tiles partition the points exactly.

On disk a scene is a folder: ``scene.json`` (metadata and file list) plus one ``.npy`` per
array and ``image.png`` for an 8-bit-exact aerial image (``image.npy`` otherwise).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from tokenize import TokenError
from typing import Any

import numpy as np
from scipy import ndimage

from ..utils.errors import CorruptFileError
from .classes import CLASSES, INSTANCE_CLASSES, NUM_CLASSES, check_class_ids

FORMAT_NAME = "diffusers-city-scene"
FORMAT_VERSION = 1

_RASTERS = ("height", "ground", "semantic", "instance")
_POINT_ARRAYS = ("points", "colors", "normals", "point_classes")
_DTYPES = {
    "height": np.float32,
    "ground": np.float32,
    "semantic": np.uint8,
    "instance": np.int32,
    "points": np.float32,
    "colors": np.float32,
    "normals": np.float32,
    "point_classes": np.uint8,
    "image": np.float32,
}


def uint8_to_unit(values: np.ndarray) -> np.ndarray:
    """8-bit levels (0..255) to float32 0..1, the one rounding used by every 8-bit path."""
    return (np.asarray(values, dtype=np.float64) / 255.0).astype(np.float32)


def label_instances(semantic: np.ndarray) -> np.ndarray:
    """Number buildings (roof pixels) then vehicles by 4-connected components; 0 = none."""
    instance = np.zeros(semantic.shape, dtype=np.int32)
    next_id = 0
    for cls in INSTANCE_CLASSES:
        labels, count = ndimage.label(semantic == cls)
        instance[labels > 0] = labels[labels > 0] + next_id
        next_id += count
    return instance


def _as_array(value: Any, name: str, ndim: int, kind: str) -> np.ndarray:
    """Check rank and dtype kind ('f' float, 'i' integer) and return a C-contiguous copy-free view."""
    arr = np.asarray(value)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {arr.shape}")
    if kind == "f" and not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name} must be a real-valued array, got dtype {arr.dtype}")
    if kind == "i" and not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
        raise ValueError(f"{name} must be an integer array, got dtype {arr.dtype}")
    return arr


def read_npy(path: Path) -> np.ndarray:
    """The array of a ``.npy`` file; ``ValueError`` naming the file when it is corrupt, truncated
    or pickled. Memory-mapped first, so a header claiming more data than the file holds is
    refused before anything of that size is allocated."""
    try:
        return np.array(np.load(path, mmap_mode="r", allow_pickle=False))
    except (ValueError, EOFError, OSError, SyntaxError, TokenError, RecursionError) as err:  # the last three: a garbled header
        raise CorruptFileError(f"{path} is not a readable .npy array (corrupt or truncated): {err}") from None


def _finite(arr: np.ndarray, name: str) -> None:
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} holds {int((~np.isfinite(arr)).sum())} NaN/inf values")


class CityScene:
    """A georeferenced city tile: rasters, optional coloured surface points, optional aerial image.

    Args:
        height: ``[H, W]`` top surface in metres (relative to ``origin[2]``), finite.
        semantic: ``[H, W]`` class ids from ``CLASSES`` (building footprints are ``roof``).
        meters_per_pixel: ground sampling distance, > 0.
        origin: world (x, y, z) of the corner of pixel (0, 0) (x, y) and of height 0 (z).
        ground: optional ``[H, W]`` bottom surface (terrain under buildings), <= ``height``.
        instance: optional ``[H, W]`` instance ids (0 = none); computed from ``semantic`` by
            connected components of roofs then vehicles when omitted.
        crs: optional coordinate reference system string (e.g. ``"EPSG:32633"``).
        points / colors / normals / point_classes: optional ``[N, 3]`` world points, ``[N, 3]``
            colours in 0..1, ``[N, 3]`` unit normals, ``[N]`` class ids (facade allowed).
        image: optional aerial RGB ``[k*H, k*W, 3]`` in 0..1 for an integer scale k >= 1.
        metadata: optional JSON-serialisable dict (generator seed, style, tile position...).
    """

    def __init__(
        self,
        height: np.ndarray,
        semantic: np.ndarray,
        meters_per_pixel: float,
        origin: Sequence[float] = (0.0, 0.0, 0.0),
        ground: np.ndarray | None = None,
        instance: np.ndarray | None = None,
        crs: str | None = None,
        points: np.ndarray | None = None,
        colors: np.ndarray | None = None,
        normals: np.ndarray | None = None,
        point_classes: np.ndarray | None = None,
        image: np.ndarray | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        try:
            mpp = float(meters_per_pixel)
        except (TypeError, ValueError):
            raise ValueError(f"meters_per_pixel must be a number, got {meters_per_pixel!r}") from None
        if not math.isfinite(mpp) or mpp <= 0:
            raise ValueError(f"meters_per_pixel must be a finite number > 0, got {meters_per_pixel!r}")
        try:
            origin_arr = np.asarray(origin, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            origin_arr = None
        if origin_arr is None or origin_arr.shape != (3,) or not np.isfinite(origin_arr).all():
            raise ValueError(f"origin must be 3 finite numbers (x, y, z), got {origin!r}")
        if crs is not None and not isinstance(crs, str):
            raise ValueError(f"crs must be a string or None, got {type(crs).__name__}")
        if metadata is not None:
            if not isinstance(metadata, dict):
                raise ValueError(f"metadata must be a dict, got {type(metadata).__name__}")
            try:
                json.dumps(metadata)
            except TypeError as err:
                raise ValueError(f"metadata must be JSON-serialisable: {err}") from None

        height = _as_array(height, "height", 2, "f")
        shape = height.shape
        if shape[0] == 0 or shape[1] == 0:
            raise ValueError(f"height is empty (shape {shape})")
        _finite(height, "height")
        semantic = _as_array(semantic, "semantic", 2, "i")
        if semantic.shape != shape:
            raise ValueError(f"semantic shape {semantic.shape} does not match height shape {shape}")
        check_class_ids(semantic, "semantic")
        if ground is not None:
            ground = _as_array(ground, "ground", 2, "f")
            if ground.shape != shape:
                raise ValueError(f"ground shape {ground.shape} does not match height shape {shape}")
            _finite(ground, "ground")
            if (ground > height + 1e-3).any():
                raise ValueError(f"ground lies above height at {int((ground > height + 1e-3).sum())} pixels")
        if instance is not None:
            instance = _as_array(instance, "instance", 2, "i")
            if instance.shape != shape:
                raise ValueError(f"instance shape {instance.shape} does not match height shape {shape}")
            if instance.size and int(instance.min()) < 0:
                raise ValueError("instance ids must be >= 0 (0 = no instance)")

        self.height = height.astype(np.float32, copy=False)
        self.semantic = semantic.astype(np.uint8, copy=False)
        self.ground = None if ground is None else ground.astype(np.float32, copy=False)
        self.instance = label_instances(self.semantic) if instance is None else instance.astype(np.int32, copy=False)
        self.meters_per_pixel = mpp
        self.origin = tuple(float(v) for v in origin_arr)
        self.crs = crs
        self.metadata = json.loads(json.dumps(metadata or {}))
        self._set_points(points, colors, normals, point_classes)
        self.image = self._check_image(image)

    # ------------------------------------------------------------------ validation helpers
    def _set_points(self, points, colors, normals, point_classes) -> None:
        if points is None:
            others = [n for n, v in zip(_POINT_ARRAYS[1:], (colors, normals, point_classes)) if v is not None]
            if others:
                raise ValueError(f"{', '.join(others)} given without points")
            self.points = self.colors = self.normals = self.point_classes = None
            return
        points = _as_array(points, "points", 2, "f")
        if points.shape[1] != 3:
            raise ValueError(f"points must be [N, 3], got shape {points.shape}")
        _finite(points, "points")
        n = points.shape[0]
        if colors is not None:
            colors = _as_array(colors, "colors", 2, "f")
            if colors.shape != (n, 3):
                raise ValueError(f"colors must be [{n}, 3] like points, got shape {colors.shape}")
            _finite(colors, "colors")
            if colors.size and (colors.min() < 0 or colors.max() > 1):
                raise ValueError("colors must lie in 0..1")
        if normals is not None:
            normals = _as_array(normals, "normals", 2, "f")
            if normals.shape != (n, 3):
                raise ValueError(f"normals must be [{n}, 3] like points, got shape {normals.shape}")
            _finite(normals, "normals")
            if normals.size and np.abs(np.linalg.norm(normals, axis=1) - 1).max() > 1e-3:
                raise ValueError("normals must have unit length")
        if point_classes is not None:
            point_classes = _as_array(point_classes, "point_classes", 1, "i")
            if point_classes.shape != (n,):
                raise ValueError(f"point_classes must be [{n}] like points, got shape {point_classes.shape}")
            check_class_ids(point_classes, "point_classes")
        self.points = points.astype(np.float32, copy=False)
        self.colors = None if colors is None else colors.astype(np.float32, copy=False)
        self.normals = None if normals is None else normals.astype(np.float32, copy=False)
        self.point_classes = None if point_classes is None else point_classes.astype(np.uint8, copy=False)

    def _check_image(self, image) -> np.ndarray | None:
        if image is None:
            return None
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image must be [H, W, 3] RGB, got shape {image.shape}")
        if image.dtype == np.uint8:
            image = uint8_to_unit(image)
        elif not np.issubdtype(image.dtype, np.floating):
            raise ValueError(f"image must be float in 0..1 or uint8, got dtype {image.dtype}")
        _finite(image, "image")
        if image.min() < 0 or image.max() > 1:
            raise ValueError("image values must lie in 0..1")
        h, w = self.shape
        k = image.shape[0] // h
        if k < 1 or image.shape[0] != k * h or image.shape[1] != k * w:
            raise ValueError(f"image shape {image.shape[:2]} is not an integer multiple of the raster shape {(h, w)}")
        return image.astype(np.float32, copy=False)

    # ------------------------------------------------------------------ properties
    @property
    def shape(self) -> tuple[int, int]:
        """Raster shape ``(H, W)``."""
        return self.height.shape  # type: ignore[return-value]

    @property
    def size_m(self) -> tuple[float, float]:
        """Extent ``(width_x, height_y)`` in metres."""
        return self.shape[1] * self.meters_per_pixel, self.shape[0] * self.meters_per_pixel

    @property
    def image_scale(self) -> int:
        """Image pixels per raster pixel (0 when there is no image)."""
        return 0 if self.image is None else self.image.shape[0] // self.shape[0]

    @property
    def num_points(self) -> int:
        return 0 if self.points is None else int(self.points.shape[0])

    def pixel_centers(self) -> tuple[np.ndarray, np.ndarray]:
        """World ``(x, y)`` of every pixel centre, each ``[H, W]`` float64."""
        h, w = self.shape
        ox, oy, _ = self.origin
        mpp = self.meters_per_pixel
        x = ox + (np.arange(w) + 0.5) * mpp
        y = oy + (np.arange(h) + 0.5) * mpp
        return np.broadcast_to(x[None, :], (h, w)), np.broadcast_to(y[:, None], (h, w))

    def point_cells(self) -> tuple[np.ndarray, np.ndarray]:
        """Row and column (int64) of the cell holding each point; may fall outside the raster."""
        if self.points is None:
            raise ValueError("scene has no points")
        ox, oy, _ = self.origin
        mpp = self.meters_per_pixel
        col = np.floor((self.points[:, 0].astype(np.float64) - ox) / mpp).astype(np.int64)
        row = np.floor((self.points[:, 1].astype(np.float64) - oy) / mpp).astype(np.int64)
        return row, col

    def world_height(self) -> np.ndarray:
        """Top surface as world z (``origin[2] + height``)."""
        return self.height + np.float32(self.origin[2])

    def __repr__(self) -> str:
        h, w = self.shape
        extras = [f"points={self.num_points}"] if self.points is not None else []
        if self.image is not None:
            extras.append(f"image={self.image.shape[1]}x{self.image.shape[0]}")
        return (
            f"CityScene({w}x{h} px @ {self.meters_per_pixel:g} m/px, origin={self.origin}"
            + "".join(f", {e}" for e in extras)
            + ")"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CityScene):
            return NotImplemented
        if (self.meters_per_pixel, self.origin, self.crs, self.metadata) != (
            other.meters_per_pixel,
            other.origin,
            other.crs,
            other.metadata,
        ):
            return False
        for name in (*_RASTERS, *_POINT_ARRAYS, "image"):
            a, b = getattr(self, name), getattr(other, name)
            if (a is None) != (b is None):
                return False
            if a is not None and (a.shape != b.shape or not np.array_equal(a, b)):
                return False
        return True

    __hash__ = None  # type: ignore[assignment]

    def replace(self, **changes: Any) -> CityScene:
        """A new scene with some fields replaced (validated like the constructor)."""
        fields = {
            name: getattr(self, name)
            for name in (*_RASTERS, *_POINT_ARRAYS, "image", "meters_per_pixel", "origin", "crs", "metadata")
        }
        fields.update(changes)
        return CityScene(**fields)

    # ------------------------------------------------------------------ crops and tiles
    def crop(self, row0: int, col0: int, h: int, w: int, point_cells: tuple[np.ndarray, np.ndarray] | None = None) -> CityScene:
        """The sub-scene of rows ``row0 : row0 + h`` and columns ``col0 : col0 + w``.

        The crop keeps world coordinates (its origin moves to the crop corner) and holds exactly
        the points whose cell lies inside the window. ``point_cells``: this scene's
        `point_cells()`, computed once by callers that cut many crops of one scene.
        """
        H, W = self.shape
        for name, v in (("row0", row0), ("col0", col0), ("h", h), ("w", w)):
            if not isinstance(v, (int, np.integer)):
                raise ValueError(f"{name} must be an integer, got {v!r}")
        if h <= 0 or w <= 0:
            raise ValueError(f"crop size must be positive, got h={h}, w={w}")
        if row0 < 0 or col0 < 0 or row0 + h > H or col0 + w > W:
            raise ValueError(f"crop rows {row0}:{row0 + h}, cols {col0}:{col0 + w} exceed the raster shape {(H, W)}")
        rs, cs = slice(row0, row0 + h), slice(col0, col0 + w)
        ox, oy, oz = self.origin
        mpp = self.meters_per_pixel
        fields: dict[str, Any] = {
            "height": self.height[rs, cs].copy(),
            "semantic": self.semantic[rs, cs].copy(),
            "ground": None if self.ground is None else self.ground[rs, cs].copy(),
            "instance": self.instance[rs, cs].copy(),
            "meters_per_pixel": mpp,
            "origin": (ox + col0 * mpp, oy + row0 * mpp, oz),
            "crs": self.crs,
            "metadata": {**self.metadata, "crop": [int(row0), int(col0), int(h), int(w)]},
        }
        if self.image is not None:
            k = self.image_scale
            fields["image"] = self.image[k * row0 : k * (row0 + h), k * col0 : k * (col0 + w)].copy()
        if self.points is not None:
            row, col = self.point_cells() if point_cells is None else point_cells
            if row.shape != (self.num_points,) or col.shape != (self.num_points,):
                raise ValueError(f"point_cells must be two [{self.num_points}] arrays, got {row.shape}, {col.shape}")
            keep = np.flatnonzero((row >= row0) & (row < row0 + h) & (col >= col0) & (col < col0 + w))
            for name in _POINT_ARRAYS:
                arr = getattr(self, name)
                fields[name] = None if arr is None else np.take(arr, keep, axis=0)  # much faster than a mask
        return CityScene(**fields)

    def tile_starts(self, size_px: int, overlap_px: int = 0) -> list[tuple[int, int]]:
        """Top-left ``(row0, col0)`` of square tiles of ``size_px`` covering the raster.

        Tiles step by ``size_px - overlap_px``; the last row/column of tiles is shifted back to
        end at the border, so every tile is full-size.
        """
        if not isinstance(size_px, (int, np.integer)) or not isinstance(overlap_px, (int, np.integer)):
            raise ValueError("size_px and overlap_px must be integers")
        if size_px <= 0:
            raise ValueError(f"size_px must be > 0, got {size_px}")
        if overlap_px < 0 or overlap_px >= size_px:
            raise ValueError(f"overlap_px must satisfy 0 <= overlap_px < size_px, got {overlap_px}")
        H, W = self.shape
        if size_px > H or size_px > W:
            raise ValueError(f"tile size {size_px} px exceeds the raster shape {(H, W)}")

        def starts(n: int) -> list[int]:
            step = size_px - overlap_px
            out = list(range(0, n - size_px + 1, step))
            if out[-1] + size_px < n:
                out.append(n - size_px)
            return out

        return [(r, c) for r in starts(H) for c in starts(W)]

    def tiles(self, size_px: int, overlap_px: int = 0) -> list[CityScene]:
        """Cut the scene into square tiles (see `tile_starts`); each tile's metadata has ``crop``."""
        return [self.crop(r, c, size_px, size_px) for r, c in self.tile_starts(size_px, overlap_px)]

    def downsample(self, factor: int) -> CityScene:
        """Coarser rasters by an integer ``factor`` (trailing rows/columns that do not fill a block are dropped).

        Height takes the block maximum (top surface), ground the block minimum, semantic the most
        frequent class (lowest id on ties), instance is relabelled; points are kept as they are
        (minus those in dropped rows/columns); the image is block-averaged.
        """
        if not isinstance(factor, (int, np.integer)) or factor < 1:
            raise ValueError(f"factor must be an integer >= 1, got {factor!r}")
        H, W = self.shape
        h, w = H // factor, W // factor
        if h == 0 or w == 0:
            raise ValueError(f"factor {factor} exceeds the raster shape {(H, W)}")
        scene = self.crop(0, 0, h * factor, w * factor) if (h * factor, w * factor) != (H, W) else self

        def blocks(a: np.ndarray) -> np.ndarray:
            return a.reshape(h, factor, w, factor, *a.shape[2:]).swapaxes(1, 2).reshape(h, w, factor * factor, *a.shape[2:])

        counts = (blocks(scene.semantic)[..., None] == np.arange(NUM_CLASSES, dtype=np.uint8)).sum(axis=2)
        semantic = counts.argmax(axis=-1).astype(np.uint8)
        image = None
        if scene.image is not None:
            k = scene.image_scale
            img = scene.image.reshape(h * k, factor, w * k, factor, 3).mean(axis=(1, 3))
            image = img.astype(np.float32)
        return CityScene(
            height=blocks(scene.height).max(axis=2),
            semantic=semantic,
            meters_per_pixel=self.meters_per_pixel * factor,
            origin=self.origin,
            ground=None
            if scene.ground is None
            else np.minimum(blocks(scene.ground).min(axis=2), blocks(scene.height).max(axis=2)),
            crs=self.crs,
            points=scene.points,
            colors=scene.colors,
            normals=scene.normals,
            point_classes=scene.point_classes,
            image=image,
            metadata={**self.metadata, "downsample": int(factor)},
        )

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> Path:
        """Write the scene folder atomically (temp folder beside it, then rename).

        An existing scene folder at ``path`` is replaced; any other existing non-empty folder or
        file is refused.
        """
        path = Path(path)
        if path.exists():
            if path.is_file():
                raise ValueError(f"{path} is a file, not a scene folder")
            if any(path.iterdir()) and not (path / "scene.json").is_file():
                raise ValueError(f"{path} is a non-empty folder that is not a scene; refusing to overwrite it")
        if not path.parent.exists():
            raise FileNotFoundError(f"parent folder {path.parent} does not exist")
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
        try:
            files: dict[str, str] = {}
            for name in (*_RASTERS, *_POINT_ARRAYS):
                arr = getattr(self, name)
                if arr is not None:
                    np.save(tmp / f"{name}.npy", np.ascontiguousarray(arr, dtype=_DTYPES[name]))
                    files[name] = f"{name}.npy"
            if self.image is not None:
                quantised = np.round(self.image * 255.0)
                if np.array_equal(uint8_to_unit(quantised), self.image):
                    from PIL import Image

                    Image.fromarray(quantised.astype(np.uint8)).save(tmp / "image.png")
                    files["image"] = "image.png"
                else:
                    np.save(tmp / "image.npy", self.image)
                    files["image"] = "image.npy"
            meta = {
                "format": FORMAT_NAME,
                "version": FORMAT_VERSION,
                "shape": list(self.shape),
                "meters_per_pixel": self.meters_per_pixel,
                "origin": list(self.origin),
                "crs": self.crs,
                "classes": list(CLASSES),
                "num_points": self.num_points,
                "files": files,
                "metadata": self.metadata,
            }
            (tmp / "scene.json").write_text(json.dumps(meta, indent=2))
            if path.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
                os.replace(path, old / "scene")
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> CityScene:
        """Read and validate a scene folder written by `save`; ``ValueError`` naming the folder
        or file for anything malformed (bad JSON, wrong types, corrupt or truncated arrays)."""
        path = Path(path)
        meta_path = path / "scene.json"
        if not path.is_dir():
            raise FileNotFoundError(f"scene folder {path} does not exist")
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path} does not exist (not a scene folder)")
        try:
            meta = json.loads(meta_path.read_bytes())
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
            raise ValueError(f"{meta_path} is not valid JSON: {err}") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
            raise ValueError(f"{meta_path} is not a {FORMAT_NAME} file")
        if meta.get("version") != FORMAT_VERSION:
            raise ValueError(f"{meta_path} has format version {meta.get('version')}, expected {FORMAT_VERSION}")
        if meta.get("classes") != list(CLASSES):
            raise ValueError(f"{meta_path} uses class table {meta.get('classes')}, expected {list(CLASSES)}")
        files = meta.get("files", {})
        if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
            raise ValueError(f"{meta_path}: 'files' must map array names to file names, got {files!r}")
        if "height" not in files or "semantic" not in files:
            raise ValueError(f"{meta_path} lists no height or semantic file")
        unknown = set(files) - set(_DTYPES)
        if unknown:
            raise ValueError(f"{meta_path} lists unknown arrays {sorted(unknown)}")
        arrays: dict[str, np.ndarray] = {}
        for name, fname in files.items():
            fpath = path / fname
            if Path(fname).name != fname or not fpath.is_file():
                raise FileNotFoundError(f"{fpath} listed in scene.json does not exist")
            if fname.endswith(".png"):
                from PIL import Image, UnidentifiedImageError

                try:
                    with Image.open(fpath) as im:
                        arrays[name] = np.asarray(im.convert("RGB"))
                except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
                    raise CorruptFileError(f"{fpath} is not a readable PNG (corrupt or truncated): {err}") from None
            else:
                arr = read_npy(fpath)
                if arr.dtype != _DTYPES[name]:
                    raise ValueError(f"{fpath} has dtype {arr.dtype}, expected {np.dtype(_DTYPES[name])}")
                arrays[name] = arr
        if list(arrays["height"].shape) != meta.get("shape"):
            raise ValueError(
                f"{path}/{files['height']} shape {arrays['height'].shape} does not match scene.json {meta.get('shape')}"
            )
        try:
            return cls(
                meters_per_pixel=meta.get("meters_per_pixel"),
                origin=meta.get("origin"),
                crs=meta.get("crs"),
                metadata=meta.get("metadata") or {},
                **arrays,
            )
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
