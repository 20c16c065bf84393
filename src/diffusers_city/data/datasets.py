"""Torch datasets of fixed-size crops of procedural cities, generated on the fly or cached.

Sample ``index`` comes from scene ``index // crops_per_scene`` (scene seed = hash of
``(base_seed, scene index)``) at a crop position drawn from ``(base_seed, index)``, so every
sample is deterministic per seed and index, in any order, in any worker.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from .convert import splat_normals
from .noise import hash_u64, hash_uniform, noisy_height_map
from .procedural import procedural_city
from .scene import CityScene
from .tiles import aggregate_view_features, render_views, voxelize_surface


class SceneSource:
    """Procedural scenes by index, kept in a small in-memory LRU and optionally cached on disk.

    Args:
        base_seed: scene ``i`` uses seed ``hash(base_seed, i) mod 2**31``.
        scene_size_m / meters_per_pixel / points_per_m2 / style: `procedural_city` arguments.
        cache_dir: if set, scenes are saved there with `CityScene.save` and reloaded later, in a
            folder named by the seed, the index and a digest of the generator arguments (a cache
            filled with other sizes or styles is never read back).
        memory_cache: how many scenes to keep in memory.
        palette_seed_offset: if set, scene ``i`` is painted from palette seed ``seed(i) + offset``
            (`procedural_city`'s ``palette_seed``): the same scenes, crops and points in the
            colours of another sample of the generator (a colour model's "perfect sampler").
    """

    def __init__(
        self,
        base_seed: int = 0,
        scene_size_m: float = 256.0,
        meters_per_pixel: float = 1.0,
        points_per_m2: float = 4.0,
        style: dict[str, Any] | None = None,
        cache_dir: str | os.PathLike | None = None,
        memory_cache: int = 2,
        palette_seed_offset: int | None = None,
    ) -> None:
        if cache_dir is not None:
            cache_dir = Path(cache_dir)
            if cache_dir.exists() and not cache_dir.is_dir():
                raise ValueError(f"cache_dir {cache_dir} is not a folder")
            if not cache_dir.parent.exists():
                raise FileNotFoundError(f"parent of cache_dir {cache_dir} does not exist")
        if memory_cache < 0:
            raise ValueError(f"memory_cache must be >= 0, got {memory_cache}")
        if palette_seed_offset is not None and (
            isinstance(palette_seed_offset, bool) or not isinstance(palette_seed_offset, (int, np.integer))
        ):
            raise ValueError(f"palette_seed_offset must be an integer or None, got {palette_seed_offset!r}")
        self.palette_seed_offset = None if palette_seed_offset is None else int(palette_seed_offset)
        self.base_seed = int(base_seed)
        self.kwargs = dict(size_m=scene_size_m, meters_per_pixel=meters_per_pixel, points_per_m2=points_per_m2, **(style or {}))
        # validate arguments once, cheaply, before any work is scheduled
        procedural_city(0, **{**self.kwargs, "size_m": 4 * float(meters_per_pixel)}, with_points=False)
        self.cache_dir = cache_dir
        named = self.kwargs if palette_seed_offset is None else {**self.kwargs, "palette_seed_offset": self.palette_seed_offset}
        self._digest = hashlib.sha256(json.dumps(named, sort_keys=True, default=str).encode()).hexdigest()[:12]
        self.memory_cache = memory_cache
        self._lru: OrderedDict[int, CityScene] = OrderedDict()

    def seed(self, scene_index: int) -> int:
        return int(hash_u64(self.base_seed, scene_index, 0x5CE7E) % np.uint64(2**31))

    def __call__(self, scene_index: int) -> CityScene:
        if scene_index in self._lru:
            self._lru.move_to_end(scene_index)
            return self._lru[scene_index]
        scene = None
        path = None if self.cache_dir is None else self.cache_dir / f"scene_{self.base_seed}_{scene_index:06d}_{self._digest}"
        if path is not None and (path / "scene.json").is_file():
            scene = CityScene.load(path)
        if scene is None:
            seed = self.seed(scene_index)
            palette = None if self.palette_seed_offset is None else seed + self.palette_seed_offset
            scene = procedural_city(seed, palette_seed=palette, **self.kwargs)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                scene.save(path)
        if self.memory_cache:
            self._lru[scene_index] = scene
            while len(self._lru) > self.memory_cache:
                self._lru.popitem(last=False)
        return scene


class _SceneState(NamedTuple):
    gray: np.ndarray  # noisy height map of the whole scene (uint8)
    z_min: float
    z_max: float
    z0: float  # lowest ground rounded down to a voxel: z of the local frame
    point_cells: tuple[np.ndarray, np.ndarray] | None


class _CropDataset(Dataset):
    def __init__(self, num_scenes: int, crops_per_scene: int, crop_size_px: int, source: SceneSource) -> None:
        if num_scenes < 1 or crops_per_scene < 1:
            raise ValueError(f"num_scenes and crops_per_scene must be >= 1, got {num_scenes}, {crops_per_scene}")
        if crop_size_px < 1:
            raise ValueError(f"crop_size_px must be >= 1, got {crop_size_px}")
        scene_px = int(round(float(source.kwargs["size_m"]) / float(source.kwargs["meters_per_pixel"])))
        if crop_size_px > scene_px:
            raise ValueError(f"crop_size_px {crop_size_px} exceeds the scene size {scene_px} px")
        self.num_scenes = num_scenes
        self.crops_per_scene = crops_per_scene
        self.crop_size_px = crop_size_px
        self.source = source
        self._latest: tuple[int, Any] | None = None

    def _per_scene(self, scene_index: int, build: Callable[[], Any]) -> Any:
        """``build()``, the per-scene work shared by all crops of scene ``scene_index``, kept for
        the latest scene only (samples are read in order, so a loader worker reads consecutive
        crops of one scene)."""
        if self._latest is None or self._latest[0] != scene_index:
            self._latest = (scene_index, build())
        return self._latest[1]

    def __len__(self) -> int:
        return self.num_scenes * self.crops_per_scene

    def window(self, index: int) -> tuple[int, CityScene, int, int]:
        """(scene index, full scene, first row, first column) of sample ``index``'s crop."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        scene_index = index // self.crops_per_scene
        scene = self.source(scene_index)
        h, w = scene.shape
        c = self.crop_size_px
        r0 = int(hash_uniform(self.source.base_seed, index, 1) * (h - c + 1))
        c0 = int(hash_uniform(self.source.base_seed, index, 2) * (w - c + 1))
        return scene_index, scene, r0, c0

    def crop(self, index: int) -> tuple[CityScene, CityScene]:
        """(full scene, crop) of sample ``index``."""
        _, scene, r0, c0 = self.window(index)
        return scene, scene.crop(r0, c0, self.crop_size_px, self.crop_size_px)


class VoxelCropDataset(_CropDataset):
    """Crops for the voxel models (Sat2City, EarthCrafter).

    Each sample is a dict in the crop's local frame (x, y from the crop corner, z from the
    scene's lowest ground rounded down to a voxel):

    - ``coords`` ``[M, 3]`` int64 voxel indices and ``normals`` ``[M, 3]`` (trilinear splat,
      see `splat_normals`); voxel grid origin ``(v/2, v/2, v/2)`` so voxels align with pixels
      when ``voxel_size == meters_per_pixel``;
    - ``points`` ``[N, 3]``, ``colors`` ``[N, 3]``, ``point_classes`` ``[N]`` (at most ``max_points``);
    - ``height`` ``[1, H, W]`` clean top surface (metres, local z), ``height_noisy`` ``[1, H, W]``
      Sat2City condition (gray / 255, normalised over the whole scene: ``z_min``/``z_max``),
      ``semantic`` ``[H, W]`` int64, ``image`` ``[3, H, W]`` (if the scene has one);
    - ``z_min``, ``z_max`` (local metres of gray 0 and 255), ``origin`` (world position of the
      local frame), ``voxel_size``, ``index``.

    ``palette_seed_offset`` (see `SceneSource`) repaints the cities and changes nothing else:
    sample ``i`` then has the same points, voxels and condition in other colours.
    """

    def __init__(
        self,
        num_scenes: int,
        crops_per_scene: int = 4,
        crop_size_px: int = 128,
        voxel_size: float = 1.0,
        base_seed: int = 0,
        scene_size_m: float = 256.0,
        meters_per_pixel: float = 1.0,
        points_per_m2: float = 4.0,
        max_points: int | None = None,
        style: dict[str, Any] | None = None,
        noise_kwargs: dict[str, Any] | None = None,
        cache_dir: str | os.PathLike | None = None,
        palette_seed_offset: int | None = None,
    ) -> None:
        if not voxel_size > 0:
            raise ValueError(f"voxel_size must be > 0, got {voxel_size}")
        if max_points is not None and max_points < 1:
            raise ValueError(f"max_points must be >= 1, got {max_points}")
        source = SceneSource(
            base_seed, scene_size_m, meters_per_pixel, points_per_m2, style, cache_dir, palette_seed_offset=palette_seed_offset
        )
        super().__init__(num_scenes, crops_per_scene, crop_size_px, source)
        self.voxel_size = float(voxel_size)
        self.max_points = max_points
        self.noise_kwargs = dict(noise_kwargs or {})

    def _state(self, scene_index: int, scene: CityScene) -> _SceneState:
        """The noisy height map, height range, local z and point cells of the scene (`_per_scene`)."""

        def build() -> _SceneState:
            ground = scene.ground if scene.ground is not None else scene.height
            return _SceneState(
                gray=noisy_height_map(scene, self.source.seed(scene_index), **self.noise_kwargs),
                z_min=float(scene.height.min()),
                z_max=float(scene.height.max()),
                z0=float(np.floor(ground.min() / self.voxel_size) * self.voxel_size),
                point_cells=None if scene.points is None else scene.point_cells(),
            )

        return self._per_scene(scene_index, build)

    def __getitem__(self, index: int) -> dict[str, Any]:
        scene_index, scene, r0, c0 = self.window(index)
        state = self._state(scene_index, scene)
        c = self.crop_size_px
        crop = scene.crop(r0, c0, c, c, point_cells=state.point_cells)
        z0, v = state.z0, self.voxel_size
        local = np.array([crop.origin[0], crop.origin[1], crop.origin[2] + z0])
        if crop.points is None or crop.num_points == 0:
            raise ValueError(f"scene {scene_index} crop at {(r0, c0)} has no points (points_per_m2 too low?)")
        points = crop.points.astype(np.float64) - local
        keep = np.arange(points.shape[0])
        if self.max_points is not None and points.shape[0] > self.max_points:
            rng = np.random.default_rng([self.source.base_seed & 0xFFFFFFFF, index, 3])
            keep = np.sort(rng.choice(points.shape[0], self.max_points, replace=False))
        normals = crop.normals if crop.normals is not None else np.tile([0.0, 0.0, 1.0], (crop.num_points, 1))
        grid = splat_normals(points, normals, v, origin=(v / 2, v / 2, v / 2))
        sample: dict[str, Any] = {
            "index": index,
            "coords": torch.from_numpy(grid["coords"]),
            "normals": torch.from_numpy(grid["normals"]),
            "points": torch.from_numpy(points[keep].astype(np.float32)),
            "colors": torch.from_numpy(crop.colors[keep]) if crop.colors is not None else None,
            "point_classes": torch.from_numpy(crop.point_classes[keep].astype(np.int64))
            if crop.point_classes is not None
            else None,
            "height": torch.from_numpy(crop.height - np.float32(z0))[None],
            "height_noisy": torch.from_numpy(state.gray[r0 : r0 + c, c0 : c0 + c].astype(np.float32) / 255.0)[None],
            "semantic": torch.from_numpy(crop.semantic.astype(np.int64)),
            "z_min": state.z_min - z0,
            "z_max": state.z_max - z0,
            "origin": torch.from_numpy(local),
            "voxel_size": v,
        }
        if crop.image is not None:
            sample["image"] = torch.from_numpy(np.ascontiguousarray(crop.image.transpose(2, 0, 1)))
        return sample

    @staticmethod
    def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
        """Batch samples: ``voxels`` a `SparseTensor` (feats = normals, coords (b, x, y, z)),
        points concatenated with ``points_batch`` indices, rasters stacked."""
        from ..sparse import SparseTensor

        if not batch:
            raise ValueError("cannot collate an empty batch")
        voxel_sizes = {s["voxel_size"] for s in batch}
        if len(voxel_sizes) != 1:
            raise ValueError(f"samples have different voxel sizes {sorted(voxel_sizes)}")
        v = voxel_sizes.pop()
        coords = torch.cat(
            [
                torch.cat([torch.full((s["coords"].shape[0], 1), b, dtype=torch.int64), s["coords"]], 1)
                for b, s in enumerate(batch)
            ]
        ).to(torch.int32)
        out: dict[str, Any] = {
            "voxels": SparseTensor(
                torch.cat([s["normals"] for s in batch]),
                coords,
                voxel_size=v,
                origin=(v / 2, v / 2, v / 2),
                batch_size=len(batch),
            ),
            "points": torch.cat([s["points"] for s in batch]),
            "points_batch": torch.cat([torch.full((s["points"].shape[0],), b, dtype=torch.int64) for b, s in enumerate(batch)]),
            "index": torch.tensor([s["index"] for s in batch]),
            "z_min": torch.tensor([s["z_min"] for s in batch]),
            "z_max": torch.tensor([s["z_max"] for s in batch]),
            "origin": torch.stack([s["origin"] for s in batch]),
        }
        for name in ("colors", "point_classes"):
            if all(s[name] is not None for s in batch):
                out[name] = torch.cat([s[name] for s in batch])
        for name in ("height", "height_noisy", "semantic", "image"):
            if all(name in s for s in batch):
                out[name] = torch.stack([s[name] for s in batch])
        return out


class CameraViewDataset(_CropDataset):
    """Crops with cameras for the Gaussian models (GaussianCity): each sample is
    ``{"scene": CityScene crop, "cameras": Cameras, "index": int}``.

    ``trajectory`` is ``"orbit"``, ``"drone"``, ``"street"`` or ``"mixed"`` (one of the three
    per sample, drawn from the index); cameras come from `diffusers_city.render` with
    ``n_views`` frames and ``width`` x ``height`` pixels (``trajectory_kwargs`` pass through).
    """

    TRAJECTORIES = ("orbit", "drone", "street")

    def __init__(
        self,
        num_scenes: int,
        crops_per_scene: int = 4,
        crop_size_px: int = 128,
        n_views: int = 8,
        trajectory: str = "mixed",
        width: int = 256,
        height: int = 256,
        base_seed: int = 0,
        scene_size_m: float = 256.0,
        meters_per_pixel: float = 1.0,
        points_per_m2: float = 4.0,
        style: dict[str, Any] | None = None,
        trajectory_kwargs: dict[str, Any] | None = None,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        if trajectory not in (*self.TRAJECTORIES, "mixed"):
            raise ValueError(f"trajectory must be one of {(*self.TRAJECTORIES, 'mixed')}, got {trajectory!r}")
        if n_views < 1 or width < 1 or height < 1:
            raise ValueError(f"n_views, width and height must be >= 1, got {n_views}, {width}, {height}")
        source = SceneSource(base_seed, scene_size_m, meters_per_pixel, points_per_m2, style, cache_dir)
        super().__init__(num_scenes, crops_per_scene, crop_size_px, source)
        self.n_views, self.trajectory = n_views, trajectory
        self.width, self.height = width, height
        self.trajectory_kwargs = dict(trajectory_kwargs or {})

    def trajectory_of(self, index: int) -> str:
        if self.trajectory != "mixed":
            return self.trajectory
        return self.TRAJECTORIES[int(hash_uniform(self.source.base_seed, index, 4) * 3)]

    def __getitem__(self, index: int) -> dict[str, Any]:
        from .. import render

        _, crop = self.crop(index)
        kind = self.trajectory_of(index)
        kwargs = {"width": self.width, "height": self.height, **self.trajectory_kwargs}
        if kind != "orbit":
            kwargs.setdefault("seed", int(hash_u64(self.source.base_seed, index, 5) % np.uint64(2**31)))
        if kind == "street" and not (crop.semantic == 1).any():
            kind = "drone"  # a crop without any road cannot host a street-level path
        cameras = getattr(render, f"{kind}_trajectory")(crop, self.n_views, **kwargs)
        return {"scene": crop, "cameras": cameras, "index": index, "trajectory": kind}

    @staticmethod
    def collate(batch: list[dict[str, Any]]) -> dict[str, list]:
        """Keep scenes and cameras as lists (every item has its own point count and views)."""
        if not batch:
            raise ValueError("cannot collate an empty batch")
        return {key: [s[key] for s in batch] for key in batch[0]}


class VoxelTileDataset(_CropDataset):
    """Voxel tiles with their conditions and ground-truth views (EarthCrafter-style training data).

    Scenes are generated at ``meters_per_pixel = voxel_size`` (the aerial image ``image_size /
    resolution`` times finer) and cut into ``resolution``-pixel tiles. Each sample is a dict in
    the tile's frame (x, y from the tile corner, z from its lowest ground rounded down to a
    voxel; ``origin`` is that frame's world position), layout in `diffusers_city.data.tiles`:

    - ``voxels``: `SparseTensor` of the surface voxels at ``resolution^3`` (feats: normal 3 +
      mean point colour 3; grid origin ``(v/2, v/2, v/2)``, so column (x, y) = ``semantic[y, x]``);
    - ``features`` ``[M, 10]``: `aggregate_view_features` of ``voxels`` (rows as ``voxels``);
    - ``semantic`` ``[L, L]`` int64 class ids, ``image`` ``[3, S, S]`` orthophoto in 0..1;
    - ``views`` ``[V, h, w, 3]``, ``depth`` / ``alpha`` ``[V, h, w]`` and ``cameras`` (`Cameras`):
      ``nadir_views`` straight-down then oblique aerial views (`render.aerial_trajectory`),
      rendered from the coloured surface points (`render_views`);
    - ``origin`` ``[3]``, ``voxel_size``, ``index``.

    Buildings are capped at ``0.75 * L * voxel_size`` by default (``style`` may override) so
    roofs stay inside the cube; points above the cube are dropped.

    ``with_views=False`` leaves out ``features``, ``views``, ``depth``, ``alpha`` and ``cameras``
    (rendering them is most of a tile's cost): what structure-only training needs.
    """

    def __init__(
        self,
        num_scenes: int,
        tiles_per_scene: int = 4,
        resolution: int = 16,
        voxel_size: float = 4.0,
        image_size: int | None = None,
        n_views: int = 4,
        nadir_views: int = 1,
        view_size: int = 32,
        base_seed: int = 0,
        scene_size_m: float | None = None,
        points_per_m2: float | None = None,
        style: dict[str, Any] | None = None,
        cache_dir: str | os.PathLike | None = None,
        with_views: bool = True,
    ) -> None:
        if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 2:
            raise ValueError(f"resolution must be an integer >= 2, got {resolution!r}")
        if not voxel_size > 0:
            raise ValueError(f"voxel_size must be > 0, got {voxel_size}")
        image_size = 2 * resolution if image_size is None else image_size
        if not isinstance(image_size, int) or image_size < resolution or image_size % resolution:
            raise ValueError(f"image_size must be a multiple of resolution {resolution}, got {image_size!r}")
        if not (isinstance(n_views, int) and n_views >= 1 and isinstance(view_size, int) and view_size >= 1):
            raise ValueError(f"n_views and view_size must be integers >= 1, got {n_views!r}, {view_size!r}")
        tile_m = resolution * float(voxel_size)
        density = points_per_m2 if points_per_m2 is not None else 8.0 / float(voxel_size) ** 2
        style = {"image_scale": image_size // resolution, "max_building_height_m": max(3.0, 0.75 * tile_m), **(style or {})}
        scene_m = 2 * tile_m if scene_size_m is None else scene_size_m
        source = SceneSource(base_seed, scene_m, float(voxel_size), density, style, cache_dir)
        super().__init__(num_scenes, tiles_per_scene, resolution, source)
        self.resolution, self.voxel_size, self.image_size = resolution, float(voxel_size), image_size
        self.n_views, self.nadir_views, self.view_size = n_views, nadir_views, view_size
        self.splat_radius = 1.0 / float(np.sqrt(density))
        self.with_views = bool(with_views)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from ..render import aerial_trajectory

        scene_index, scene, r0, c0 = self.window(index)
        L, v = self.resolution, self.voxel_size
        tile = scene.crop(r0, c0, L, L, point_cells=self._per_scene(scene_index, scene.point_cells))
        if tile.num_points == 0:
            raise ValueError(f"scene {scene_index} tile at {(r0, c0)} has no points (points_per_m2 too low?)")
        z0 = float(np.floor(tile.ground.min() / v) * v)
        world = np.array([tile.origin[0], tile.origin[1], tile.origin[2] + z0])
        points = tile.points.astype(np.float64) - world
        voxels = voxelize_surface(points, tile.normals, tile.colors, L, v, origin=(v / 2, v / 2, v / 2))
        sample = {
            "index": index,
            "voxels": voxels,
            "semantic": torch.from_numpy(tile.semantic.astype(np.int64)),
            "image": torch.from_numpy(np.ascontiguousarray(tile.image.transpose(2, 0, 1))),
            "origin": torch.from_numpy(world),
            "voxel_size": v,
        }
        if not self.with_views:
            return sample
        local = tile.replace(origin=(0.0, 0.0, -z0), points=None, colors=None, normals=None, point_classes=None, image=None)
        seed = int(hash_u64(self.source.base_seed, index, 6) % np.uint64(2**31))
        size = self.view_size
        cameras = aerial_trajectory(local, self.n_views, seed=seed, nadir=self.nadir_views, width=size, height=size)
        views = render_views(
            torch.from_numpy(points.astype(np.float32)), torch.from_numpy(tile.colors), cameras, radius=self.splat_radius
        )
        sample.update(
            features=aggregate_view_features(voxels, views).feats,
            views=views.images,
            depth=views.depth,
            alpha=views.alpha,
            cameras=cameras,
        )
        return sample

    @staticmethod
    def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
        """Batch tiles: ``voxels`` / ``features`` `SparseTensor` s with the batch index in coords
        column 0, rasters and views stacked (``[B, ...]``), ``cameras`` a list of `Cameras`
        (views, features and cameras only when the tiles have them)."""
        from ..sparse import SparseTensor

        if not batch:
            raise ValueError("cannot collate an empty batch")
        shapes = {(s["voxel_size"], tuple(s["semantic"].shape), tuple(s["views"].shape) if "views" in s else None) for s in batch}
        if len(shapes) != 1:
            raise ValueError(f"tiles differ in voxel size, resolution or views: {sorted(shapes, key=str)}")
        voxels = SparseTensor.cat([s["voxels"] for s in batch])
        stacked = ("semantic", "image", "origin") + (("views", "depth", "alpha") if "views" in batch[0] else ())
        out = {
            "voxels": voxels,
            "index": torch.tensor([s["index"] for s in batch]),
            "voxel_size": batch[0]["voxel_size"],
            **{k: torch.stack([s[k] for s in batch]) for k in stacked},
        }
        if "views" in batch[0]:
            out["features"] = voxels.replace(torch.cat([s["features"] for s in batch]))
            out["cameras"] = [s["cameras"] for s in batch]
        return out


__all__ = ["SceneSource", "VoxelCropDataset", "CameraViewDataset", "VoxelTileDataset"]
