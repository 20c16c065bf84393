"""What the viewer shows, read from files: point, mesh and Gaussian layers in world metres.

A layer is plain numpy (no viewer library), so reading is tested and checked, and fails with a
clear error, before any server starts. Readers: point cloud PLY / LAS / LAZ, 3DGS splat PLY
(``export/splat.py``), GLB / glTF / OBJ / PLY meshes (offset from the ``<file>.geo.json`` side file of
``export/mesh.py``) and ``CityScene`` folders (the height field as a mesh, plus its points).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.classes import CLASS_COLORS

__all__ = [
    "GAUSSIAN_SUFFIXES",
    "MESH_SUFFIXES",
    "POINT_SUFFIXES",
    "GaussianLayer",
    "Layer",
    "MeshLayer",
    "PointLayer",
    "read_file_layers",
    "read_scene_layers",
    "subsample",
]

POINT_SUFFIXES = (".ply", ".las", ".laz")
MESH_SUFFIXES = (".glb", ".gltf", ".obj")
GAUSSIAN_SUFFIXES = (".ply",)
VIEWABLE_SUFFIXES = tuple(sorted(set(POINT_SUFFIXES + MESH_SUFFIXES)))
_SPLAT_PROPERTIES = {"f_dc_0", "scale_0", "rot_0", "opacity"}


@dataclass
class Layer:
    """One toggleable thing in the view: ``points [N, 3]`` world metres (vertices of a mesh,
    centres of Gaussians), ``colors [N, 3]`` 0..1, optional ``classes [N]`` (semantic colours)."""

    name: str
    points: np.ndarray
    colors: np.ndarray
    classes: np.ndarray | None = None
    crs: str | None = None

    kind = "layer"

    def __post_init__(self) -> None:
        self.points = np.asarray(self.points, dtype=np.float64)
        self.colors = np.clip(np.asarray(self.colors, dtype=np.float32), 0, 1)
        if len(self.points) == 0:
            raise ValueError(f"{self.name}: nothing to show (no points)")

    def semantic_colors(self) -> np.ndarray | None:
        """Class colours of the table in ``data.classes``, or None without classes."""
        return None if self.classes is None else CLASS_COLORS[np.asarray(self.classes, dtype=np.int64)]

    @property
    def count(self) -> int:
        return len(self.points)

    def describe(self) -> str:
        return f"{self.count:,} {self.kind}"


@dataclass
class PointLayer(Layer):
    kind = "points"


@dataclass
class MeshLayer(Layer):
    """A triangle mesh: per-vertex ``colors`` / ``classes``, ``faces [F, 3]``."""

    faces: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), dtype=np.int64))

    kind = "mesh"

    def describe(self) -> str:
        return f"{len(self.faces):,} triangles"


@dataclass
class GaussianLayer(Layer):
    """3D Gaussians: ``scales [N, 3]`` standard deviations (m), ``quats [N, 4]`` wxyz, ``opacities [N]``."""

    scales: np.ndarray = None
    quats: np.ndarray = None
    opacities: np.ndarray = None

    kind = "Gaussians"

    def covariances(self) -> np.ndarray:
        """``[N, 3, 3]`` world covariances ``R diag(s^2) R^T``."""
        w, x, y, z = np.asarray(self.quats, dtype=np.float64).T
        rot = np.stack(
            [
                np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
                np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
                np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
            ],
            axis=1,
        )
        return np.einsum("nij,nj,nkj->nik", rot, np.asarray(self.scales, dtype=np.float64) ** 2, rot)


def subsample(layer: Layer, budget: int) -> Layer:
    """``layer`` with at most ``budget`` points (a fixed random subset: the same on every call);
    meshes are returned whole."""
    if isinstance(layer, MeshLayer) or layer.count <= budget:
        return layer
    keep = np.sort(np.random.default_rng(0).choice(layer.count, size=budget, replace=False))
    changes = {"points": layer.points[keep], "colors": layer.colors[keep]}
    if layer.classes is not None:
        changes["classes"] = layer.classes[keep]
    if isinstance(layer, GaussianLayer):
        changes.update(scales=layer.scales[keep], quats=layer.quats[keep], opacities=layer.opacities[keep])
    return type(layer)(**{**layer.__dict__, **changes})


def _is_splat_ply(path: Path) -> bool:
    from ..data.readers import load_ply

    return _SPLAT_PROPERTIES <= set(load_ply(path)["vertex"].data.dtype.names or ())


def _mesh_offset(path: Path) -> np.ndarray:
    """The world offset of a mesh written by ``export.mesh.write_mesh`` (its ``.geo.json`` side file)."""
    side = path.with_name(path.name + ".geo.json")
    if not side.is_file():
        return np.zeros(3)
    try:
        offset = np.asarray(json.loads(side.read_text()).get("offset", (0, 0, 0)), dtype=np.float64)
    except (ValueError, AttributeError, TypeError) as error:
        raise ValueError(f"{side}: malformed georeference side file ({error})") from None
    if offset.shape != (3,) or not np.isfinite(offset).all():
        raise ValueError(f"{side}: 'offset' must be 3 finite numbers")
    return offset


def _read_mesh(path: Path, name: str) -> MeshLayer:
    import trimesh

    try:
        loaded = trimesh.load(str(path), force="mesh")
    except Exception as error:  # trimesh raises many types for damaged files
        raise ValueError(f"{path} is not a readable mesh: {error}") from None
    if not isinstance(loaded, trimesh.Trimesh) or len(loaded.faces) == 0:
        raise ValueError(f"{path}: the mesh has no triangles")
    try:
        colors = np.asarray(loaded.visual.to_color().vertex_colors, dtype=np.float32)[:, :3] / 255.0
    except (AttributeError, ValueError):
        colors = np.full((len(loaded.vertices), 3), 0.7, dtype=np.float32)
    return MeshLayer(name, np.asarray(loaded.vertices) + _mesh_offset(path), colors, faces=np.asarray(loaded.faces))


def read_file_layers(path: str | os.PathLike, name: str | None = None) -> list[Layer]:
    """The layers of one file, by suffix (a ``.ply`` by its properties: 3DGS splat or points)."""
    path = Path(path)
    name = name or path.name
    suffix = path.suffix.lower()
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if not path.is_file():
        raise IsADirectoryError(f"{path} is a folder, not a file")
    if suffix == ".ply" and _is_splat_ply(path):
        from ..export.splat import read_gaussian_ply

        g = read_gaussian_ply(path)
        return [GaussianLayer(name, g.means, g.colors, crs=g.crs, scales=g.scales, quats=g.quats, opacities=g.opacities)]
    if suffix in POINT_SUFFIXES:
        from ..data.readers import read_point_cloud

        cloud = read_point_cloud(path)
        colors = cloud.colors if cloud.colors is not None else np.full((len(cloud.points), 3), 0.6)
        classes = cloud.classes
        if classes is not None and (classes >= len(CLASS_COLORS)).any():  # LAS points of unknown class
            classes = np.where(classes >= len(CLASS_COLORS), 0, classes)
        return [PointLayer(name, cloud.points, colors, classes, crs=cloud.crs)]
    if suffix in MESH_SUFFIXES:
        return [_read_mesh(path, name)]
    kind = suffix or "(no suffix)"
    raise ValueError(f"{path}: unsupported file type {kind!r}; the viewer reads {', '.join(VIEWABLE_SUFFIXES)}")


def _height_field_mesh(scene, name: str, max_vertices: int) -> MeshLayer:
    """The scene's top surface as a grid mesh (a vertex per pixel centre, every k-th pixel so that
    at most ``max_vertices`` remain), coloured by its aerial image or its semantic classes."""
    h, w = scene.shape
    step = max(1, int(np.ceil(np.sqrt(h * w / max_vertices))))
    rows, cols = np.arange(0, h, step), np.arange(0, w, step)
    mpp = scene.meters_per_pixel
    ox, oy, oz = scene.origin
    jj, ii = np.meshgrid(cols, rows)
    points = np.stack([ox + (jj + 0.5) * mpp, oy + (ii + 0.5) * mpp, oz + scene.height[ii, jj]], -1).reshape(-1, 3)
    classes = scene.semantic[ii, jj].reshape(-1)
    if scene.image is not None:
        k = scene.image_scale
        colors = scene.image[ii * k + k // 2, jj * k + k // 2].reshape(-1, 3)
    else:
        colors = CLASS_COLORS[classes]
    nr, nc = len(rows), len(cols)
    if nr < 2 or nc < 2:
        raise ValueError(f"{name}: a {h}x{w} scene is too small to show as a surface")
    quad = (np.arange(nr - 1)[:, None] * nc + np.arange(nc - 1)[None, :]).reshape(-1)
    faces = np.concatenate([np.stack([quad, quad + 1, quad + nc + 1], -1), np.stack([quad, quad + nc + 1, quad + nc], -1)])
    return MeshLayer(name, points, colors, classes, crs=scene.crs, faces=faces)


def read_scene_layers(folder: str | os.PathLike, name: str | None = None, max_vertices: int = 250_000) -> list[Layer]:
    """A ``CityScene`` folder: its surface (mesh) and, when it has them, its points."""
    from ..data.scene import CityScene

    scene = CityScene.load(folder)
    name = name or Path(folder).name
    layers: list[Layer] = [_height_field_mesh(scene, f"{name} surface", max_vertices)]
    if scene.points is not None and len(scene.points):
        colors = scene.colors if scene.colors is not None else CLASS_COLORS[scene.point_classes]
        layers.append(PointLayer(f"{name} points", scene.points, colors, scene.point_classes, crs=scene.crs))
    return layers
