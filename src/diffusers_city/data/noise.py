"""Deterministic noise: integer hashing, value noise / fBm, and Sat2City's height-map condition noise.

Everything here is a pure function of its integer keys and coordinates, so any point of a
procedural city can be evaluated on its own (pixels, image pixels, surface points alike).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _splitmix(z: np.ndarray, fresh: bool = False) -> np.ndarray:
    """SplitMix64 finaliser; ``fresh`` says ``z`` is a temporary array that may be overwritten."""
    if not (fresh and isinstance(z, np.ndarray) and z.ndim):
        z = z + _GOLDEN  # a fresh array: the steps below work in place (fewer large temporaries)
    else:
        z += _GOLDEN
    if not isinstance(z, np.ndarray) or not z.ndim:
        z = z ^ (z >> np.uint64(30))
        z = z * _MIX1
        z = z ^ (z >> np.uint64(27))
        z = z * _MIX2
        return z ^ (z >> np.uint64(31))
    tmp = np.empty_like(z)
    for shift, mix in ((30, _MIX1), (27, _MIX2), (31, None)):
        np.right_shift(z, np.uint64(shift), out=tmp)
        z ^= tmp
        if mix is not None:
            z *= mix
    return z


def _to_u64(key) -> np.ndarray:
    arr = np.asarray(key)
    if np.issubdtype(arr.dtype, np.floating):
        raise ValueError("hash keys must be integers")
    # int64 -> uint64 keeps the two's complement bits, so a view equals the cast
    return arr.astype(np.int64, copy=False).view(np.uint64) if arr.dtype != np.uint64 else arr


def hash_u64(*keys) -> np.ndarray:
    """Hash integer keys (broadcast arrays or ints) to well-mixed uint64 values."""
    with np.errstate(over="ignore"):
        if not keys:
            return np.zeros((), dtype=np.uint64)
        h = _splitmix(_to_u64(keys[0]))  # 0 ^ key == key
        for key in keys[1:]:
            h = _splitmix(h ^ _to_u64(key), fresh=True)
        return h


def hash_uniform(*keys) -> np.ndarray:
    """Hash integer keys to floats uniform in [0, 1) (float64)."""
    return (hash_u64(*keys) >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


def value_noise(x: np.ndarray, y: np.ndarray, seed: int, wavelength: float) -> np.ndarray:
    """Smooth 2D value noise in [-1, 1] with lattice spacing ``wavelength`` (quintic interpolation)."""
    u = np.asarray(x, dtype=np.float64) / wavelength
    v = np.asarray(y, dtype=np.float64) / wavelength
    iu, iv = np.floor(u), np.floor(v)
    fu, fv = u - iu, v - iv
    iu, iv = iu.astype(np.int64), iv.astype(np.int64)
    su = fu * fu * fu * (fu * (fu * 6 - 15) + 10)
    sv = fv * fv * fv * (fv * (fv * 6 - 15) + 10)
    c00 = hash_uniform(seed, iu, iv)
    c10 = hash_uniform(seed, iu + 1, iv)
    c01 = hash_uniform(seed, iu, iv + 1)
    c11 = hash_uniform(seed, iu + 1, iv + 1)
    top = c00 + (c10 - c00) * su
    bottom = c01 + (c11 - c01) * su
    return 2.0 * (top + (bottom - top) * sv) - 1.0


def fbm(x: np.ndarray, y: np.ndarray, seed: int, wavelength: float, octaves: int = 3, gain: float = 0.5) -> np.ndarray:
    """Fractal sum of `value_noise` octaves (wavelength halves per octave), normalised to [-1, 1]."""
    total = np.zeros(np.broadcast(np.asarray(x), np.asarray(y)).shape)
    amp, norm = 1.0, 0.0
    for octave in range(octaves):
        total += amp * value_noise(x, y, seed * 131 + octave, wavelength / 2**octave)
        norm += amp
        amp *= gain
    return total / norm


def fbm_raster(seed: int, shape: tuple[int, int], meters_per_pixel: float, wavelength: float, octaves: int = 3) -> np.ndarray:
    """`fbm` at the pixel centres of a raster (local frame, origin 0), float32.

    Evaluated on a lattice 8 times finer than the shortest octave and linearly interpolated,
    which is exact to a few thousandths of the amplitude and far cheaper on large rasters.
    """
    h, w = shape
    step = max(meters_per_pixel, wavelength / 2 ** (octaves - 1) / 8.0)
    ny = int(np.ceil(h * meters_per_pixel / step)) + 2
    nx = int(np.ceil(w * meters_per_pixel / step)) + 2
    gy, gx = np.meshgrid(np.arange(ny) * step, np.arange(nx) * step, indexing="ij")
    coarse = fbm(gx, gy, seed, wavelength, octaves)
    rows = (np.arange(h) + 0.5) * meters_per_pixel / step
    cols = (np.arange(w) + 0.5) * meters_per_pixel / step
    r0 = np.minimum(np.floor(rows).astype(np.int64), ny - 2)
    c0 = np.minimum(np.floor(cols).astype(np.int64), nx - 2)
    fr = (rows - r0)[:, None]
    fc = (cols - c0)[None, :]
    top = coarse[r0][:, c0] * (1 - fc) + coarse[r0][:, c0 + 1] * fc
    bottom = coarse[r0 + 1][:, c0] * (1 - fc) + coarse[r0 + 1][:, c0 + 1] * fc
    return (top * (1 - fr) + bottom * fr).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Sat2City height-map condition (paper Sec. 3.3 and supplementary 6.3)
# ---------------------------------------------------------------------------------------------


def _height_array(scene_or_height) -> np.ndarray:
    height = getattr(scene_or_height, "height", scene_or_height)
    height = np.asarray(height)
    if height.ndim != 2 or height.size == 0:
        raise ValueError(f"height map must be a non-empty [H, W] array, got shape {height.shape}")
    if not (np.issubdtype(height.dtype, np.floating) or np.issubdtype(height.dtype, np.integer)):
        raise ValueError(f"height map must be real-valued, got dtype {height.dtype}")
    if not np.isfinite(height).all():
        raise ValueError(f"height map holds {int((~np.isfinite(height)).sum())} NaN/inf values")
    return height.astype(np.float64)


def _z_range(height: np.ndarray, z_min: float | None, z_max: float | None) -> tuple[float, float]:
    lo = float(height.min()) if z_min is None else float(z_min)
    hi = float(height.max()) if z_max is None else float(z_max)
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi < lo:
        raise ValueError(f"z range must be finite with z_max >= z_min, got z_min={lo}, z_max={hi}")
    return lo, hi


def height_to_gray(scene_or_height, z_min: float | None = None, z_max: float | None = None) -> np.ndarray:
    """Clean Sat2City grayscale: ``round(255 * (h - z_min) / (z_max - z_min))`` as uint8.

    ``z_min`` / ``z_max`` default to the map's lowest / highest value (the paper assigns the
    city's lowest and highest elevations to 0 and 255). Heights outside the range are clipped.
    A constant map (``z_max == z_min``) maps to 0 everywhere.
    """
    height = _height_array(scene_or_height)
    lo, hi = _z_range(height, z_min, z_max)
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    return np.clip(np.round((height - lo) * scale), 0, 255).astype(np.uint8)


def height_from_gray(gray: np.ndarray, z_min: float, z_max: float) -> np.ndarray:
    """Invert the grayscale normalisation: ``z_min + gray / 255 * (z_max - z_min)`` (float32)."""
    gray = np.asarray(gray)
    if gray.ndim != 2 or gray.size == 0:
        raise ValueError(f"gray must be a non-empty [H, W] array, got shape {gray.shape}")
    if gray.dtype == np.uint8:
        values = gray.astype(np.float64)
    elif np.issubdtype(gray.dtype, np.floating) or np.issubdtype(gray.dtype, np.integer):
        values = gray.astype(np.float64)
        if not np.isfinite(values).all() or values.min() < 0 or values.max() > 255:
            raise ValueError("gray values must be finite and lie in 0..255")
    else:
        raise ValueError(f"gray must be a numeric array, got dtype {gray.dtype}")
    lo, hi = _z_range(values, z_min, z_max)
    return (lo + values / 255.0 * (hi - lo)).astype(np.float32)


def noisy_height_map(
    scene_or_height,
    seed: int,
    z_min: float | None = None,
    z_max: float | None = None,
    meters_per_pixel: float | None = None,
    contrast: tuple[float, float] = (0.6, 1.4),
    gamma: tuple[float, float] = (0.7, 1.4),
    lighting: float = 0.15,
    shading: float = 0.25,
    blur_px: tuple[float, float] = (0.5, 1.5),
    noise_std: float = 3.0,
) -> np.ndarray:
    """Sat2City's perturbed height-map condition as uint8 grayscale ``[H, W]``.

    The paper renders a height-coded grayscale (lowest elevation 0, highest 255, Sec. 3.3)
    with ambient lighting variations, a Principled-BSDF diffuse shading, and then applies
    contrast scaling. This reproduces those effects on the clean normalisation of
    `height_to_gray` (so ``height_from_gray(out, z_min, z_max)`` is the noisy height estimate):

    1. contrast scaling about mid-gray by a factor drawn from ``contrast`` and a gamma drawn
       from ``gamma`` (tonal distortion of the height coding);
    2. ambient lighting variation: a smooth multiplicative field of relative amplitude
       ``lighting`` over the map;
    3. diffuse shading: surfaces tilted away from a random sun direction get darker, by up to
       ``shading`` (pitched roofs and terrain slopes, not flat roofs);
    4. a Gaussian blur of sigma drawn from ``blur_px`` (render/resample softness);
    5. sensor noise of ``noise_std`` gray levels, then rounding to uint8.

    All random draws come from ``seed``. ``meters_per_pixel`` (default 1, or the scene's)
    sets the slope scale for shading. A constant map maps to 0 before noise.
    """
    height = _height_array(scene_or_height)
    if meters_per_pixel is None:
        meters_per_pixel = float(getattr(scene_or_height, "meters_per_pixel", 1.0))
    if not meters_per_pixel > 0:
        raise ValueError(f"meters_per_pixel must be > 0, got {meters_per_pixel}")
    for name, rng_ in (("contrast", contrast), ("gamma", gamma), ("blur_px", blur_px)):
        if len(rng_) != 2 or not rng_[0] <= rng_[1] or rng_[0] < 0:
            raise ValueError(f"{name} must be a (low, high) range with 0 <= low <= high, got {rng_}")
    if gamma[0] <= 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    if lighting < 0 or shading < 0 or noise_std < 0:
        raise ValueError("lighting, shading and noise_std must be >= 0")
    lo, hi = _z_range(height, z_min, z_max)
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x5A72C17])
    g = np.clip((height - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(height)

    g = np.clip(0.5 + (g - 0.5) * rng.uniform(*contrast), 0.0, 1.0) ** rng.uniform(*gamma)

    h_px, w_px = g.shape
    yy, xx = np.mgrid[0:h_px, 0:w_px].astype(np.float64)
    wavelength = max(h_px, w_px) / rng.uniform(1.0, 3.0)
    field = fbm(xx, yy, int(rng.integers(1 << 30)), wavelength, octaves=2)
    g = g * (1.0 + lighting * field)

    gy, gx = np.gradient(height / meters_per_pixel)
    az = rng.uniform(0, 2 * np.pi)
    sun = np.array([np.cos(az) * 0.6, np.sin(az) * 0.6, 0.8])
    lambert = (-gx * sun[0] - gy * sun[1] + sun[2]) / np.sqrt(gx * gx + gy * gy + 1.0)
    g = g * (1.0 - shading * (1.0 - np.clip(lambert / sun[2], 0.0, 1.0)))

    g = ndimage.gaussian_filter(g, sigma=rng.uniform(*blur_px), mode="nearest")
    g = g * 255.0 + rng.normal(0.0, noise_std, size=g.shape)
    return np.clip(np.round(g), 0, 255).astype(np.uint8)
