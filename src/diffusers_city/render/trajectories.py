"""Camera paths over a city scene: orbit, drone fly-over, street-level drive and aerial views.

Only the scene's raster geometry is used (``height [H, W]`` metres, ``semantic [H, W]``,
``meters_per_pixel``, ``origin``, optional ``ground``), so any object with those fields
works, ``diffusers_city.data.CityScene`` in particular. Pixel ``(i, j)`` has its centre at
world ``(origin_x + (j + 0.5) mpp, origin_y + (i + 0.5) mpp)`` and surface height
``origin_z + height[i, j]`` (docs/design.md). Random paths are deterministic per ``seed``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .cameras import Cameras

ROAD_CLASS = 1


@dataclass
class _Raster:
    height: np.ndarray  # surface height, world z
    ground: np.ndarray  # ground height, world z
    semantic: np.ndarray | None
    mpp: float
    x0: float
    y0: float

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """``(x_min, x_max, y_min, y_max)`` in world metres."""
        h, w = self.height.shape
        return self.x0, self.x0 + w * self.mpp, self.y0, self.y0 + h * self.mpp

    def pixel_of(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h, w = self.height.shape
        j = np.clip(np.floor((xy[..., 0] - self.x0) / self.mpp).astype(np.int64), 0, w - 1)
        i = np.clip(np.floor((xy[..., 1] - self.y0) / self.mpp).astype(np.int64), 0, h - 1)
        return i, j


def _raster(scene) -> _Raster:
    for name in ("height", "meters_per_pixel"):
        if not hasattr(scene, name):
            raise ValueError(f"scene has no '{name}' field (expected a diffusers_city.data.CityScene)")
    height = np.asarray(scene.height, dtype=np.float64)
    if height.ndim != 2 or height.size == 0:
        raise ValueError(f"scene.height must be a non-empty [H, W] array, got shape {height.shape}")
    if not np.isfinite(height).all():
        raise ValueError("scene.height contains NaN or Inf")
    mpp = float(scene.meters_per_pixel)
    if not mpp > 0:
        raise ValueError(f"scene.meters_per_pixel must be positive, got {mpp}")
    origin = tuple(float(v) for v in getattr(scene, "origin", (0.0, 0.0, 0.0)))
    if len(origin) not in (2, 3):
        raise ValueError(f"scene.origin must have 2 or 3 values, got {origin}")
    z0 = origin[2] if len(origin) == 3 else 0.0
    ground = getattr(scene, "ground", None)
    ground = height if ground is None else np.asarray(ground, dtype=np.float64)
    if ground.shape != height.shape:
        raise ValueError(f"scene.ground shape {ground.shape} differs from scene.height {height.shape}")
    semantic = getattr(scene, "semantic", None)
    if semantic is not None:
        semantic = np.asarray(semantic)
        if semantic.shape != height.shape:
            raise ValueError(f"scene.semantic shape {semantic.shape} differs from scene.height {height.shape}")
    return _Raster(height=height + z0, ground=ground + z0, semantic=semantic, mpp=mpp, x0=origin[0], y0=origin[1])


def _check_frames(n_frames: int) -> None:
    if int(n_frames) != n_frames or n_frames < 1:
        raise ValueError(f"n_frames must be a positive integer, got {n_frames}")


def orbit_trajectory(
    scene,
    n_frames: int = 60,
    *,
    radius: float | None = None,
    elevation_deg: float = 35.0,
    start_deg: float = 0.0,
    fov_deg: float = 60.0,
    width: int = 256,
    height: int = 256,
) -> Cameras:
    """Cameras circling the scene centre, looking at it from ``elevation_deg`` above the horizon.

    The default radius keeps the cameras inside the scene extent (0.45 x its smaller side);
    cameras are raised above the tallest surface if the elevation would put them lower.
    """
    _check_frames(n_frames)
    r = _raster(scene)
    x_min, x_max, y_min, y_max = r.extent
    if radius is None:
        radius = 0.45 * min(x_max - x_min, y_max - y_min)
    if not radius > 0:
        raise ValueError(f"radius must be positive, got {radius}")
    if not 0.0 < elevation_deg < 90.0:
        raise ValueError(f"elevation_deg must be in (0, 90), got {elevation_deg}")
    target = np.array([(x_min + x_max) / 2, (y_min + y_max) / 2, float(np.median(r.ground))])
    clearance = max(2.0, 0.02 * radius)
    z = max(target[2] + radius * math.tan(math.radians(elevation_deg)), float(r.height.max()) + clearance)
    angles = np.radians(start_deg) + 2.0 * np.pi * np.arange(n_frames) / n_frames
    eye = np.stack([target[0] + radius * np.cos(angles), target[1] + radius * np.sin(angles), np.full(n_frames, z)], -1)
    return Cameras.look_at(
        torch.from_numpy(eye).float(), torch.from_numpy(target).float(), width=width, height=height, fov_deg=fov_deg
    )


def drone_trajectory(
    scene,
    n_frames: int = 60,
    *,
    seed: int = 0,
    altitude: float | None = None,
    pitch_deg: float = 40.0,
    margin: float = 0.1,
    fov_deg: float = 60.0,
    width: int = 256,
    height: int = 256,
) -> Cameras:
    """A smooth closed fly-over above the tallest building, looking ahead and ``pitch_deg`` down.

    The path is a random star-shaped loop ``r(theta)`` built from three low harmonics; it
    stays inside the extent shrunk by ``margin`` (fraction of the half-size). ``altitude``
    is the flight height above the highest surface (default max(20 m, 10% of the extent)).
    """
    _check_frames(n_frames)
    if not 0.0 <= margin < 1.0:
        raise ValueError(f"margin must be in [0, 1), got {margin}")
    if not -90.0 < pitch_deg < 90.0:
        raise ValueError(f"pitch_deg must be in (-90, 90), got {pitch_deg}")
    r = _raster(scene)
    x_min, x_max, y_min, y_max = r.extent
    if altitude is None:
        altitude = max(20.0, 0.1 * min(x_max - x_min, y_max - y_min))
    if not altitude > 0:
        raise ValueError(f"altitude must be positive, got {altitude}")
    rng = np.random.default_rng(seed)
    amp = rng.uniform(0.2, 1.0, size=3)
    phase = rng.uniform(0.0, 2.0 * np.pi, size=3)
    start = rng.uniform(0.0, 2.0 * np.pi)
    direction = rng.choice([-1.0, 1.0])

    def loop(theta: np.ndarray) -> np.ndarray:
        wobble = sum(a * np.cos(k * theta + p) for k, (a, p) in enumerate(zip(amp, phase), start=2)) / amp.sum()
        rad = (0.7 + 0.3 * wobble) * (1.0 - margin)  # in [0.4, 1] x (1 - margin) of the half-size
        return np.stack(
            [
                (x_min + x_max) / 2 + rad * np.cos(theta) * (x_max - x_min) / 2,
                (y_min + y_max) / 2 + rad * np.sin(theta) * (y_max - y_min) / 2,
            ],
            axis=-1,
        )

    theta = start + direction * 2.0 * np.pi * np.arange(n_frames) / n_frames
    xy = loop(theta)
    tangent = loop(theta + direction * 1e-3) - xy
    tangent /= np.linalg.norm(tangent, axis=-1, keepdims=True)
    z = float(r.height.max()) + altitude
    eye = np.concatenate([xy, np.full((n_frames, 1), z)], axis=-1)
    pitch = math.radians(pitch_deg)
    look = np.concatenate([tangent * math.cos(pitch), np.full((n_frames, 1), -math.sin(pitch))], axis=-1)
    return Cameras.look_at(
        torch.from_numpy(eye).float(), torch.from_numpy(eye + look).float(), width=width, height=height, fov_deg=fov_deg
    )


def aerial_trajectory(
    scene,
    n_frames: int = 8,
    *,
    seed: int = 0,
    nadir: int = 1,
    elevation_deg: tuple[float, float] = (35.0, 65.0),
    fov_deg: float = 30.0,
    margin: float = 1.05,
    width: int = 256,
    height: int = 256,
) -> Cameras:
    """Aerial views of the whole scene: ``nadir`` straight-down views, then oblique views.

    Every camera looks at the scene centre from far enough that the larger side of the extent
    (times ``margin``) fits its field of view at the mean surface height; oblique cameras sit
    at a random azimuth (stratified over the circle) and an elevation drawn from
    ``elevation_deg``, deterministic per ``seed``. The narrow default field of view keeps the
    views close to aerial photographs (little perspective lean).
    """
    _check_frames(n_frames)
    if int(nadir) != nadir or not 0 <= nadir <= n_frames:
        raise ValueError(f"nadir must be an integer in [0, n_frames={n_frames}], got {nadir}")
    lo, hi = (float(v) for v in elevation_deg)
    if not 0.0 < lo <= hi < 90.0:
        raise ValueError(f"elevation_deg must be (low, high) with 0 < low <= high < 90, got {elevation_deg}")
    if not 0.0 < fov_deg < 180.0 or not margin > 0:
        raise ValueError(f"need 0 < fov_deg < 180 and margin > 0, got {fov_deg}, {margin}")
    r = _raster(scene)
    x_min, x_max, y_min, y_max = r.extent
    target = np.array([(x_min + x_max) / 2, (y_min + y_max) / 2, float(np.median(r.ground))])
    half = 0.5 * max(x_max - x_min, y_max - y_min) * margin
    tan_half = math.tan(math.radians(fov_deg) / 2.0) * min(width, height) / height  # the narrower image side
    dist = half / tan_half + float(r.height.mean() - target[2])
    rng = np.random.default_rng(seed)
    n_oblique = n_frames - int(nadir)
    azimuth = 2.0 * np.pi * (np.arange(n_oblique) + rng.uniform(0.0, 1.0, n_oblique)) / max(n_oblique, 1)
    elevation = np.radians(rng.uniform(lo, hi, n_oblique))
    elevation = np.concatenate([np.full(int(nadir), np.pi / 2), elevation])
    azimuth = np.concatenate([np.zeros(int(nadir)), azimuth])
    direction = np.stack([np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth), np.sin(elevation)], -1)
    eye = target + dist * direction
    return Cameras.look_at(
        torch.from_numpy(eye).float(), torch.from_numpy(target).float(), width=width, height=height, fov_deg=fov_deg
    )


def _road_path(road: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Pixel path ``[L, 2]`` (i, j): shortest road path from a random start to its farthest road pixel."""
    from scipy import ndimage
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import dijkstra

    labels, n = ndimage.label(road, structure=np.ones((3, 3), dtype=bool))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = 0
    comp = labels == int(np.argmax(sizes))
    ii, jj = np.nonzero(comp)
    index = np.full(road.shape, -1, dtype=np.int64)
    index[ii, jj] = np.arange(len(ii))
    rows, cols, weights = [], [], []
    h, w = road.shape
    for di, dj in ((0, 1), (1, 0), (1, 1), (1, -1)):  # pairs (i, j) - (i + di, j + dj)
        a = index[: h - di, max(0, -dj) : w - max(0, dj)]
        b = index[di:, max(0, dj) : w - max(0, -dj)]
        ok = (a >= 0) & (b >= 0)
        rows.append(a[ok])
        cols.append(b[ok])
        weights.append(np.full(int(ok.sum()), math.hypot(di, dj)))
    graph = coo_matrix((np.concatenate(weights), (np.concatenate(rows), np.concatenate(cols))), shape=(len(ii),) * 2)
    start = int(rng.integers(len(ii)))
    dist, pred = dijkstra(graph.tocsr(), directed=False, indices=start, return_predecessors=True)
    node = int(np.argmax(np.where(np.isfinite(dist), dist, -1)))
    path = [node]
    while path[-1] != start:
        path.append(int(pred[path[-1]]))
    path = np.array(path[::-1])
    return np.stack([ii[path], jj[path]], axis=-1)


def street_trajectory(
    scene,
    n_frames: int = 60,
    *,
    seed: int = 0,
    eye_height: float = 1.8,
    look_ahead_m: float = 15.0,
    fov_deg: float = 75.0,
    width: int = 256,
    height: int = 256,
) -> Cameras:
    """Street-level drive along roads (``semantic == 1``), ``eye_height`` above the road surface.

    The path is the shortest road path (8-connected, inside the largest road network) from a
    random road pixel to the farthest road pixel reachable from it, sampled at equal arc
    length; every camera stands over a road pixel, so never inside a building, and looks
    horizontally at the path point ``look_ahead_m`` ahead.
    """
    _check_frames(n_frames)
    if not 0.0 < eye_height:
        raise ValueError(f"eye_height must be positive, got {eye_height}")
    r = _raster(scene)
    if r.semantic is None:
        raise ValueError("street_trajectory needs scene.semantic (road pixels have class 1)")
    road = r.semantic == ROAD_CLASS
    if not road.any():
        raise ValueError("scene has no road pixels (semantic == 1) for a street-level trajectory")
    pix = _road_path(road, np.random.default_rng(seed))
    xy = np.stack([r.x0 + (pix[:, 1] + 0.5) * r.mpp, r.y0 + (pix[:, 0] + 0.5) * r.mpp], axis=-1)
    seg = np.linalg.norm(np.diff(xy, axis=0), axis=-1)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    total = float(arc[-1])

    def at(s: np.ndarray) -> np.ndarray:
        s = np.clip(s, 0.0, total)
        return np.stack([np.interp(s, arc, xy[:, 0]), np.interp(s, arc, xy[:, 1])], axis=-1)

    s = np.linspace(0.0, total, n_frames) if n_frames > 1 else np.zeros(1)
    eye_xy = at(s)
    # a sample on a diagonal step can fall exactly on a pixel corner: snap it to the path
    off_road = ~road[r.pixel_of(eye_xy)]
    eye_xy[off_road] = xy[np.abs(arc[None, :] - s[off_road, None]).argmin(axis=1)]
    ahead = at(s + look_ahead_m) - eye_xy
    behind = eye_xy - at(s - look_ahead_m)  # near the end of the path keep the last heading
    heading = np.where(np.linalg.norm(ahead, axis=-1, keepdims=True) > 1e-6 * r.mpp, ahead, behind)
    norm = np.linalg.norm(heading, axis=-1, keepdims=True)
    heading = np.where(norm > 1e-9, heading / np.maximum(norm, 1e-12), np.array([1.0, 0.0]))
    i, j = r.pixel_of(eye_xy)
    z = r.ground[i, j] + eye_height
    eye = np.concatenate([eye_xy, z[:, None]], axis=-1)
    target = eye + np.concatenate([heading, np.zeros((n_frames, 1))], axis=-1)
    return Cameras.look_at(
        torch.from_numpy(eye).float(), torch.from_numpy(target).float(), width=width, height=height, fov_deg=fov_deg
    )
