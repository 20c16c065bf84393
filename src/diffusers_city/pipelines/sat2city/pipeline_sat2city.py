"""Sat2City: height map -> coloured 3D city by cascaded latent diffusion (Hua et al., Sec. 3.2).

Three latent diffusion stages, each conditioned on the previous one (Fig. 6, supplementary 6.2):

1. dense latent X_D | c(P_h): the height map lifted to a point cloud, encoded by the
   ``condition_encoder``; decoded by the dense VAE into a first voxel grid {G, A_N};
2. sparse latent X_S | {G, A_N}: on the coarsened decoded grid; decoded by D_s into the final
   geometry + normals, recording the pruning decisions ``struct``. A height-aware sparse stage
   (``condition_channels`` 4 + f^2, our addition) also sees P_h's column tops in each latent voxel;
3. appearance latent X_C0 | struct: re-hashed into n coarser levels, decoded by D_c along
   ``struct`` and read back at the output voxels by inverse sampling (colours).
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from ...data.labels import BUILDING_HEIGHT_M, classes_from_terrain, terrain_estimate
from ...data.noise import height_from_gray
from ...data.readers import fill_holes, read_height_input
from ...data.scene import CityScene
from ...export.mesh import mesh_from_voxels
from ...models.sat2city import HeightFieldEncoder, Sat2CityDenseUNet3D, Sat2CityDenseVAE, Sat2CitySparseUNet3D, Sat2CitySparseVAE
from ...models.sat2city.conditions import sparse_condition, sparse_condition_uses_height, struct_condition
from ...sparse import SparseTensor
from ...utils.memory import MemoryLimitError, check_memory, memory_limit_gb
from ..pipeline_utils import (
    check_callback_inputs,
    check_output_type,
    check_positive_int,
    check_prediction_type,
    denoising_loop,
)
from ..tiled_area import AreaOutput, generate_area, run_manifest
from ..tiling import TileLatents, TileStage, tile_pixels
from .cuda_graph import GraphedStep
from .pipeline_output import Sat2CityPipelineOutput

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
"""Raster files whose shape `height_map_shape` reads from the header alone."""

OUTPUT_TYPES = ("points", "mesh", "voxels")
PREDICTION_TYPES = ("v_prediction",)  # what the training script trains every stage's U-Net for
STAGES = ("dense", "sparse", "appearance")  # the cascade, in order; per-stage arguments follow it
# Rough peak bytes per finest surface voxel and decoder channel (activations, kernel maps,
# candidates); surface voxels of a 2.5D city ~ 4 per column; per height map pixel (the map as
# float32 and its checks, P_h and the condition encoder's per-point work). Used only to refuse
# inputs that cannot fit.
_BYTES_PER_VOXEL_CHANNEL = 64
_SURFACE_VOXELS_PER_COLUMN = 4
_BYTES_PER_PIXEL = 256
MIN_PIXELS = 8
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Sampling:
    """What every stage's denoising loop of one call shares."""

    num_inference_steps: int
    generator: torch.Generator | None
    callback_on_step_end: Callable | None
    tensor_inputs: list[str]
    guidance_scale: tuple[float, float, float]  # (dense, sparse, appearance)
    temperature: tuple[float, float, float]


class HeightMap:
    """A validated height map in metres with its georeference (crop frame -> world)."""

    def __init__(self, height: np.ndarray, meters_per_pixel: float, origin: tuple[float, float, float], crs: str | None):
        self.height = height
        self.meters_per_pixel = meters_per_pixel
        self.origin = origin
        self.crs = crs
        self.z_base = float(height.min())

    def points(self) -> np.ndarray:
        """P_h: one point per pixel centre ``((j + .5) mpp, (i + .5) mpp, h - z_base)`` in the crop frame."""
        rows, cols = np.indices(self.height.shape, dtype=np.float32)
        mpp = self.meters_per_pixel
        return np.stack([(cols + 0.5) * mpp, (rows + 0.5) * mpp, self.height - self.z_base], -1).reshape(-1, 3)


def _gray_array(value: Any, source: str) -> np.ndarray:
    """2D numeric array from an array, tensor or image (RGB images go to luminance)."""
    if isinstance(value, Image.Image):
        if value.mode in ("I", "I;16", "I;16B", "F"):
            return np.asarray(value, dtype=np.float32)
        return np.asarray(value.convert("L"), dtype=np.float32)
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    arr = np.asarray(value)
    if arr.dtype.kind not in "uif":
        raise ValueError(f"{source}: height map must hold real numbers (integer or float), got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"{source}: height map must be a 2D [H, W] array, got rank {arr.ndim} (shape {arr.shape})")
    return arr.astype(np.float32)


def height_map_shape(height_map: Any) -> tuple[int, ...] | None:
    """The shape of a height map input without reading its pixels (``None`` for inputs that
    :func:`load_height_map` refuses anyway): what a memory estimate needs before any allocation."""
    if isinstance(height_map, CityScene):
        return tuple(height_map.height.shape)
    if isinstance(height_map, Image.Image):
        return height_map.size[::-1]
    if isinstance(height_map, (np.ndarray, torch.Tensor)):
        return tuple(height_map.shape)
    if isinstance(height_map, (str, Path)) and Path(height_map).is_file():
        path = Path(height_map)
        try:
            if path.suffix.lower() == ".npy":
                return tuple(np.load(path, mmap_mode="r", allow_pickle=False).shape)
            if path.suffix.lower() in IMAGE_SUFFIXES:
                with Image.open(path) as img:
                    return img.size[::-1]
        except Image.DecompressionBombError as err:
            raise MemoryLimitError(f"{path}: {err}") from None
        except (OSError, ValueError, EOFError) as err:
            raise ValueError(f"{path}: not a readable height map ({type(err).__name__}: {err})") from None
    return None


def load_height_map(
    height_map: Any,
    meters_per_pixel: float | None,
    height_range: tuple[float, float],
    default_extent_m: float,
) -> HeightMap:
    """Validate any supported input into a :class:`HeightMap` (``ValueError`` naming the problem).

    ``CityScene``: its metric ``height``, ``meters_per_pixel``, ``origin`` and ``crs``. Arrays,
    tensors and images: Sat2City grayscale 0..255, mapped linearly to ``height_range`` metres;
    ``meters_per_pixel`` defaults to covering ``default_extent_m``. Paths: `read_height_input`
    decides by the file's type (an 8-bit image without georeference is gray; a GeoTIFF, a 16-bit
    or float raster, a point cloud or a scene folder is metric), never by its values.
    """
    origin, crs = (0.0, 0.0, 0.0), None
    source = "height map"
    if isinstance(height_map, (str, Path)):
        source = str(height_map)
        if not Path(height_map).exists():
            raise FileNotFoundError(f"height map file not found: {height_map}")
        height_map = read_height_input(height_map, meters_per_pixel)  # metric or 8-bit gray by file type, not by values
    if isinstance(height_map, CityScene):
        height = np.asarray(height_map.height, dtype=np.float32)
        mpp = float(height_map.meters_per_pixel) if meters_per_pixel is None else float(meters_per_pixel)
        origin, crs = tuple(float(o) for o in height_map.origin), height_map.crs
        source = "CityScene" if source == "height map" else source
    else:
        if not isinstance(height_map, (np.ndarray, torch.Tensor, Image.Image)):
            raise ValueError(
                f"height_map must be an array, tensor, PIL image, file path or CityScene, got {type(height_map).__name__}"
            )
        gray = _gray_array(height_map, source)
        if gray.size == 0:
            raise ValueError(f"{source}: height map is empty (shape {gray.shape})")
        if not np.isfinite(gray).all():
            raise ValueError(f"{source}: height map holds {int((~np.isfinite(gray)).sum())} NaN/inf values")
        if gray.min() < 0 or gray.max() > 255:
            raise ValueError(
                f"{source}: grayscale height maps must lie in 0..255 (got {gray.min():g}..{gray.max():g}); "
                "pass metric heights as a CityScene"
            )
        height = height_from_gray(gray, *height_range)
        mpp = default_extent_m / max(gray.shape) if meters_per_pixel is None else float(meters_per_pixel)
    if height.size == 0:
        raise ValueError(f"{source}: height map is empty (shape {height.shape})")
    if not np.isfinite(height).all():
        raise ValueError(f"{source}: height map holds {int((~np.isfinite(height)).sum())} NaN/inf values")
    if not (math.isfinite(mpp) and mpp > 0):
        raise ValueError(f"meters_per_pixel must be a finite number > 0, got {mpp}")
    if min(height.shape) < MIN_PIXELS:
        raise ValueError(
            f"{source}: height map of {height.shape[0]}x{height.shape[1]} px is too small (min {MIN_PIXELS} px a side)"
        )
    if float(height.max()) == float(height.min()):
        raise ValueError(f"{source}: height map is constant ({float(height.min()):g} m everywhere): nothing to generate")
    return HeightMap(height, mpp, origin, crs)


class Sat2CityPipeline(DiffusionPipeline):
    """Height map -> 3D city (Sat2City, Hua et al. 2025): cascaded dense / sparse / appearance latent diffusion.

    Components: ``dense_vae`` (:class:`Sat2CityDenseVAE`), ``sparse_vae`` (:class:`Sat2CitySparseVAE`),
    ``condition_encoder`` (:class:`HeightFieldEncoder`), ``dense_unet`` (:class:`Sat2CityDenseUNet3D`),
    ``sparse_unet`` and ``appearance_unet`` (:class:`Sat2CitySparseUNet3D`) and a scheduler shared by
    the three stages (the trained ``DDIMScheduler``, or any diffusers scheduler built from its config,
    e.g. ``DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)``; v-prediction).

    ``default_guidance_scale`` and ``default_temperature`` are what a call without those arguments
    uses: a trained pipeline stores its measured best settings there (``model_index.json``).
    """

    model_cpu_offload_seq = "condition_encoder->dense_unet->dense_vae->sparse_unet->sparse_vae->appearance_unet"
    _callback_tensor_inputs = ["latents"]

    def __init__(
        self,
        dense_vae: Sat2CityDenseVAE,
        sparse_vae: Sat2CitySparseVAE,
        condition_encoder: HeightFieldEncoder,
        dense_unet: Sat2CityDenseUNet3D,
        sparse_unet: Sat2CitySparseUNet3D,
        appearance_unet: Sat2CitySparseUNet3D,
        scheduler: KarrasDiffusionSchedulers,
        default_guidance_scale: float | list[float] = 1.0,
        default_temperature: float | list[float] = 1.0,
    ) -> None:
        super().__init__()
        self.register_modules(
            dense_vae=dense_vae,
            sparse_vae=sparse_vae,
            condition_encoder=condition_encoder,
            dense_unet=dense_unet,
            sparse_unet=sparse_unet,
            appearance_unet=appearance_unet,
            scheduler=scheduler,
        )
        self.register_to_config(
            default_guidance_scale=list(self._per_stage("default_guidance_scale", default_guidance_scale, 1.0)),
            default_temperature=list(self._per_stage("default_temperature", default_temperature, 0.0)),
        )
        self.check_components()
        self.stage: str | None = None
        self.cuda_graphs = False

    def enable_cuda_graphs(self, enabled: bool = True) -> None:
        """Replay each stage's U-Net step as a CUDA graph after its first step (runs on CUDA only;
        the other devices ignore it). Not with ``enable_model_cpu_offload``, whose hooks move
        modules during a forward."""
        self.cuda_graphs = bool(enabled)

    @classmethod
    def from_preset(cls, size: str = "tiny", seed: int = 0) -> Sat2CityPipeline:
        """An untrained pipeline of preset ``size`` (``pipelines/sat2city/presets/<size>.json``)."""
        from ...presets import build_pipeline

        pipe = build_pipeline("sat2city", size, seed=seed)
        if not isinstance(pipe, cls):
            raise ValueError(f"preset sat2city/{size} builds {type(pipe).__name__}, not {cls.__name__}")
        return pipe

    def check_components(self) -> None:
        """``ValueError`` naming the first pair of components whose configs do not fit together."""
        d, s, c = self.dense_vae.config, self.sparse_vae.config, self.condition_encoder.config
        checks = [
            (
                d.voxel_size == s.voxel_size == c.voxel_size,
                f"voxel sizes differ: dense_vae {d.voxel_size}, sparse_vae {s.voxel_size}, condition_encoder {c.voxel_size}",
            ),
            (
                self.condition_encoder.total_stride == self.dense_vae.downsample_factor,
                f"condition_encoder downsamples by {self.condition_encoder.total_stride}, "
                f"dense_vae by {self.dense_vae.downsample_factor}",
            ),
            (
                self.dense_unet.config.in_channels == d.latent_channels,
                f"dense_unet in_channels {self.dense_unet.config.in_channels} != dense_vae latent_channels {d.latent_channels}",
            ),
            (
                self.dense_unet.config.condition_channels == c.condition_channels,
                f"dense_unet condition_channels {self.dense_unet.config.condition_channels} != "
                f"condition_encoder condition_channels {c.condition_channels}",
            ),
            (
                self.sparse_unet.config.in_channels == s.latent_channels,
                f"sparse_unet in_channels {self.sparse_unet.config.in_channels} != "
                f"sparse_vae latent_channels {s.latent_channels}",
            ),
            (
                self.appearance_unet.config.in_channels == s.latent_channels,
                f"appearance_unet in_channels {self.appearance_unet.config.in_channels} != "
                f"sparse_vae latent_channels {s.latent_channels}",
            ),
            (
                self.appearance_unet.config.condition_channels == len(s.decoder_channels) + 3,
                f"appearance_unet condition_channels must be {len(s.decoder_channels) + 3} (struct levels + normal), "
                f"got {self.appearance_unet.config.condition_channels}",
            ),
            (
                self.dense_vae.downsample_factor % self.sparse_vae.downsample_factor == 0,
                f"dense_vae factor {self.dense_vae.downsample_factor} must be a multiple of "
                f"sparse_vae factor {self.sparse_vae.downsample_factor}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"Sat2CityPipeline components do not match: {message}")
        try:
            self._sparse_takes_height()
        except ValueError as err:
            raise ValueError(f"Sat2CityPipeline components do not match: sparse_unet: {err}") from None

    def _sparse_takes_height(self) -> bool:
        """Whether ``sparse_unet`` is a height-aware stage 2 (``blocks.sparse_condition_uses_height``)."""
        return sparse_condition_uses_height(self.sparse_unet.config.condition_channels, self.sparse_vae.downsample_factor)

    # -- sizes ------------------------------------------------------------------------------
    def grid_for(self, shape: tuple[int, int], meters_per_pixel: float) -> tuple[int, int, int]:
        """Fine grid (x, y, z) covering a height map of ``shape`` pixels, padded to the dense latent factor."""
        v, f = self.dense_vae.config.voxel_size, self.dense_vae.downsample_factor
        h, w = shape
        nx = math.ceil(w * meters_per_pixel / v / f) * f
        ny = math.ceil(h * meters_per_pixel / v / f) * f
        return nx, ny, int(self.dense_vae.config.grid_size[2])

    def default_meters_per_pixel(self, shape: tuple[int, int]) -> float:
        """The resolution of a plain grayscale map without one: the training crop over its larger side."""
        vae = self.dense_vae.config
        return vae.grid_size[0] * vae.voxel_size / max(shape)

    def estimate_memory_bytes(self, grid: tuple[int, int, int], num_pixels: int = 0) -> int:
        """Rough peak memory of one generation on a ``grid`` (fine voxels x, y, z) from a height
        map of ``num_pixels`` pixels (one point of P_h each)."""
        surface = grid[0] * grid[1] * _SURFACE_VOXELS_PER_COLUMN
        channels = max(max(self.dense_vae.config.decoder_channels), max(self.sparse_vae.config.decoder_channels))
        candidates = 8 * surface / 4  # subdivided candidates of the finest level
        dense = np.prod(self.dense_vae.latent_shape(grid)) * max(self.dense_unet.config.block_channels) * 4 * 16
        return int((surface + candidates) * channels * _BYTES_PER_VOXEL_CHANNEL + dense + num_pixels * _BYTES_PER_PIXEL)

    def _check_memory(self, height_map: Any, meters_per_pixel: float | None, max_memory_gb: float | None) -> None:
        """The memory check from the input's shape alone, before its pixels are read, where the
        shape is known without reading (arrays, images, ``.npy``, a ``CityScene``); the resolution
        is the given one, the scene's or the default. Other inputs are checked once loaded."""
        shape = height_map_shape(height_map)
        if shape is None or len(shape) != 2 or min(shape) < 1:
            return  # checked after loading; load_height_map names a bad shape
        mpp = meters_per_pixel
        if mpp is None:
            mpp = height_map.meters_per_pixel if isinstance(height_map, CityScene) else self.default_meters_per_pixel(shape)
        try:
            mpp = float(mpp)
        except (TypeError, ValueError):
            return  # load_height_map names the bad resolution
        if math.isfinite(mpp) and mpp > 0:
            self._check_memory_of(shape, mpp, max_memory_gb)

    def _check_memory_of(self, shape: tuple[int, int], mpp: float, max_memory_gb: float | None) -> None:
        """``MemoryLimitError`` (a ``ValueError``) with the estimate when a height map of ``shape``
        pixels at ``mpp`` metres per pixel needs more than ``max_memory_gb``."""
        grid = self.grid_for(shape, mpp)
        vae = self.dense_vae.config
        check_memory(
            self.estimate_memory_bytes(grid, shape[0] * shape[1]),
            max_memory_gb,
            f"Sat2CityPipeline: height map of {shape[0]}x{shape[1]} px at {mpp:g} m/px "
            f"(a {grid[0]}x{grid[1]}x{grid[2]} voxel grid at {vae.voxel_size:g} m)",
            self._execution_device,
            hint="crop the map or lower its resolution",
        )

    # -- stages -----------------------------------------------------------------------------
    def prepare_latents(
        self,
        shape: tuple[int, ...],
        dtype: torch.dtype,
        device: torch.device,
        generator: torch.Generator | None,
        latents: torch.Tensor | None = None,
        temperature: float = 1.0,
    ) -> torch.Tensor:
        """A stage's initial latents: ``latents`` (unit-variance noise of ``shape``) or fresh noise,
        times the scheduler's ``init_noise_sigma`` and the stage's ``temperature``."""
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        elif tuple(latents.shape) != tuple(shape):
            raise ValueError(f"latents must have shape {list(shape)}, got {list(latents.shape)}")
        return latents.to(device=device, dtype=dtype) * (self.scheduler.init_noise_sigma * temperature)

    def _denoise(
        self,
        stage: str,
        unet: torch.nn.Module,
        shape: tuple[int, ...],
        wrap: Callable[[torch.Tensor], Any],
        condition: torch.Tensor,
        run: _Sampling,
        latents: torch.Tensor | None = None,
        known: TileStage | None = None,
    ) -> torch.Tensor:
        """One stage's denoising loop from noise of ``shape`` (or ``latents``); ``wrap`` turns the
        feature tensor into the unet's sample; ``known``: the stage's hook of tiled generation.
        With ``enable_cuda_graphs`` on CUDA, the steps after the first replay one captured graph
        (`GraphedStep`)."""
        self.stage = stage
        index = STAGES.index(stage)
        guidance_scale = run.guidance_scale[index]
        self.scheduler.set_timesteps(run.num_inference_steps, device=condition.device)
        latents = self.prepare_latents(shape, condition.dtype, condition.device, run.generator, latents, run.temperature[index])

        def predict(model_input: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            v = unet(wrap(model_input), t, condition).sample
            v = v.feats if isinstance(v, SparseTensor) else v
            if guidance_scale != 1.0:
                v_uncond = unet(wrap(model_input), t, torch.zeros_like(condition)).sample
                v_uncond = v_uncond.feats if isinstance(v_uncond, SparseTensor) else v_uncond
                v = v_uncond + guidance_scale * (v - v_uncond)
            return v

        step = GraphedStep(predict) if self.cuda_graphs and latents.is_cuda else predict
        return denoising_loop(
            self,
            latents,
            step,
            generator=run.generator,
            callback_on_step_end=run.callback_on_step_end,
            tensor_inputs=run.tensor_inputs,
            description=f"sat2city {stage}",
            known=known,
        )

    @staticmethod
    def _per_stage(name: str, value: Any, low: float) -> tuple[float, float, float]:
        """``value`` as (dense, sparse, appearance): one finite number >= ``low`` for every stage or three."""
        values = tuple(value) if isinstance(value, (tuple, list)) else (value,) * 3
        if len(values) != 3 or not all(
            isinstance(g, (int, float)) and not isinstance(g, bool) and math.isfinite(g) and g >= low for g in values
        ):
            raise ValueError(
                f"{name} must be a finite number >= {low:g} or three of them (dense, sparse, appearance), got {value!r}"
            )
        return tuple(float(g) for g in values)

    def check_inputs(
        self,
        num_inference_steps: Any,
        output_type: Any,
        guidance_scale: Any,
        temperature: Any,
        max_memory_gb: Any,
        callback_on_step_end_tensor_inputs: list[str] | None,
    ) -> tuple[tuple[float, float, float], tuple[float, float, float], list[str]]:
        """``ValueError`` naming the first bad argument, before any work; returns the per-stage
        guidance and temperature (the pipeline's defaults where None) and the callback's tensor names."""
        check_output_type(output_type, OUTPUT_TYPES, "Sat2CityPipeline")
        check_positive_int("num_inference_steps", num_inference_steps, self.scheduler.config.num_train_timesteps)
        memory_limit_gb(max_memory_gb)
        check_prediction_type(self.scheduler, PREDICTION_TYPES, "Sat2CityPipeline")
        tensor_inputs = check_callback_inputs(callback_on_step_end_tensor_inputs, self._callback_tensor_inputs, ["latents"])
        unets = (self.dense_unet, self.sparse_unet, self.appearance_unet)
        if self.cuda_graphs and any(getattr(unet, "_hf_hook", None) is not None for unet in unets):
            raise ValueError(
                "enable_cuda_graphs does not mix with enable_model_cpu_offload (its hooks move modules during a step)"
            )
        guidance = self._per_stage(
            "guidance_scale", self.config.default_guidance_scale if guidance_scale is None else guidance_scale, 1.0
        )
        temperature = self._per_stage("temperature", self.config.default_temperature if temperature is None else temperature, 0.0)
        return guidance, temperature, tensor_inputs

    @torch.no_grad()
    def __call__(
        self,
        height_map: Any,
        num_inference_steps: int = 50,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "points",
        meters_per_pixel: float | None = None,
        height_range: tuple[float, float] | None = None,
        guidance_scale: float | tuple[float, float, float] | None = None,
        temperature: float | tuple[float, float, float] | None = None,
        max_memory_gb: float | None = None,
        return_dict: bool = True,
        callback_on_step_end: Callable[[DiffusionPipeline, int, torch.Tensor, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        tile: TileLatents | None = None,
    ) -> Sat2CityPipelineOutput | tuple:
        """Generate a coloured 3D city from one height map.

        Args:
            height_map: ``CityScene`` (metric heights, georeferenced), a grayscale height map
                (0..255, Sat2City convention) as array / tensor / PIL image, or a file path: an 8-bit
                image is gray, a DSM (GeoTIFF, 16-bit / float raster) or point cloud metric.
            num_inference_steps: denoising steps of each of the three stages.
            generator: torch generator for the initial noise of every stage.
            latents: the dense stage's initial noise ``[1, C, X, Y, Z]`` (unit variance; the later
                stages' shapes depend on it, their noise comes from ``generator``).
            output_type: ``"points"`` (numpy points / colours / normals), ``"mesh"`` (plus a
                trimesh surface) or ``"voxels"`` (a ``SparseTensor`` of normals + colours).
            meters_per_pixel: ground sampling distance; default: the scene's, or the training
                crop width divided by the map's larger side for plain grayscale maps.
            height_range: metres of gray 0 and 255 (default ``(0, max_height_m)`` of the condition encoder).
            guidance_scale: classifier-free guidance on the stage conditions (1 = off), one scale for
                all three stages or a ``(dense, sparse, appearance)`` triple (default: the
                pipeline's ``default_guidance_scale``).
            temperature: scale of each stage's initial noise (1 = the trained prior, 0 = start DDIM
                from the prior's mean), one for all stages or a ``(dense, sparse, appearance)`` triple.
                Below 1 trades sample diversity for fidelity to the condition, as in Grad-TTS and
                Glow; see the model card for the measured effect (default: ``default_temperature``).
            max_memory_gb: refuse (``MemoryLimitError``, a ``ValueError``, with the estimate) a
                height map whose estimated peak memory exceeds this many GB, before its pixels are
                read (default: the memory available now, on the execution device).
            callback_on_step_end: ``fn(pipe, step, timestep, kwargs) -> kwargs`` after every
                denoising step of every stage (``pipe.stage`` names the stage); may replace ``latents``.
            callback_on_step_end_tensor_inputs: keys passed to the callback (``["latents"]``).
            tile: one tile of a larger area (`generate_area`): every stage is conditioned on the
                latents its finished neighbours fixed and records its own; the base height is
                lowered onto the area's dense latent cells so that neighbours' cells coincide.
        """
        guidance, temperature, tensor_inputs = self.check_inputs(
            num_inference_steps, output_type, guidance_scale, temperature, max_memory_gb, callback_on_step_end_tensor_inputs
        )
        enc = self.condition_encoder.config
        vae = self.dense_vae.config
        hrange = (0.0, float(enc.max_height_m)) if height_range is None else tuple(float(h) for h in height_range)
        if len(hrange) != 2 or not hrange[1] > hrange[0]:
            raise ValueError(f"height_range must be (z_min, z_max) with z_max > z_min, got {height_range}")
        self._check_memory(height_map, meters_per_pixel, max_memory_gb)
        hmap = load_height_map(height_map, meters_per_pixel, hrange, vae.grid_size[0] * vae.voxel_size)
        self._check_memory_of(hmap.height.shape, hmap.meters_per_pixel, max_memory_gb)  # a file's own resolution
        dense_cell = vae.voxel_size * self.dense_vae.downsample_factor
        if tile is not None:
            hmap.z_base = tile.snap_z(hmap.origin[2] + hmap.z_base, dense_cell) - hmap.origin[2]
        corner = (hmap.origin[0], hmap.origin[1], hmap.origin[2] + hmap.z_base)  # world position of the crop frame's 0
        grid = self.grid_for(hmap.height.shape, hmap.meters_per_pixel)
        rise, top = float(hmap.height.max()) - hmap.z_base, grid[2] * vae.voxel_size
        if rise > top:
            logger.warning(
                f"height map rises {rise:.1f} m above its lowest pixel, this model's grid is {top:g} m tall: "
                "geometry above that is cut"
            )

        latent_shape = self.dense_vae.latent_shape(grid)
        shape = (1, vae.latent_channels, *latent_shape)
        if latents is not None and (not isinstance(latents, torch.Tensor) or tuple(latents.shape) != shape):
            got = list(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
            raise ValueError(f"latents must be a tensor of the dense stage's shape {list(shape)} for this height map, got {got}")

        device = self._execution_device
        dtype = self.dense_unet.dtype
        run = _Sampling(num_inference_steps, generator, callback_on_step_end, tensor_inputs, guidance, temperature)

        # Stage 1: dense latent X_D | c(P_h).
        points = torch.from_numpy(hmap.points()).to(device)
        points[:, 2] = points[:, 2].clamp(0, grid[2] * vae.voxel_size - 1e-3)
        cond = self.condition_encoder(points, torch.zeros(points.shape[0], dtype=torch.long, device=device), latent_shape, 1)
        known = None if tile is None else tile.dense_stage("dense", latent_shape, corner, dense_cell)
        x_d = self._denoise("dense", self.dense_unet, shape, lambda x: x, cond.to(dtype), run, latents, known)
        first = self.dense_vae.decode(x_d / vae.scaling_factor).sample
        first = first.replace(F.normalize(first.feats.float(), dim=1).to(first.dtype))

        if first.num_voxels:
            voxels, colors = self._geometry_and_appearance(first, points, run, tile, corner)
        else:
            voxels, colors = first, first.feats.new_zeros(0, 3)
        normals = F.normalize(voxels.feats.float(), dim=1)
        self.stage = None
        self.maybe_free_model_hooks()
        output = self._build_output(hmap, voxels, normals, colors.float(), output_type)
        return output if return_dict else output.to_tuple()

    def generate_area(
        self,
        height_map: Any,
        out_dir: str | Path,
        num_inference_steps: int = 50,
        seed: int = 0,
        meters_per_pixel: float | None = None,
        height_range: tuple[float, float] | None = None,
        guidance_scale: float | tuple[float, float, float] | None = None,
        temperature: float | tuple[float, float, float] | None = None,
        overlap: float = 0.25,
        inpaint: bool = True,
        fill_nodata: bool = False,
        max_memory_gb: float | None = None,
        callback_on_tile_end: Callable | None = None,
    ) -> AreaOutput:
        """Generate a height map of any size, tile by tile, into the folder ``out_dir``
        (`pipelines.tiled_area`: per-tile PLY and GLB, ``index.json``, resumable, split over the processes
        of ``accelerate launch``). Tiles are this model's crop (``grid_size`` x ``voxel_size``),
        overlapping by about ``overlap`` of a tile and conditioned on their finished neighbours in
        every stage (``inpaint=False``: each on its own). ``height_map`` as in ``__call__`` (gray
        maps need ``meters_per_pixel``); ``fill_nodata`` fills NaN holes from the nearest valid
        pixel (and says so) instead of refusing them; the other arguments as in ``__call__``.
        Sat2City makes no classes: the points are classed ground or building (roof / facade by
        their normals) by their height above a morphological terrain estimate of the input map."""
        guidance, temperature, _ = self.check_inputs(
            num_inference_steps, "points", guidance_scale, temperature, max_memory_gb, None
        )
        vae = self.dense_vae.config
        hrange = (0.0, float(self.condition_encoder.config.max_height_m)) if height_range is None else height_range
        if isinstance(height_map, (str, Path)):
            if not Path(height_map).exists():
                raise FileNotFoundError(f"height map file not found: {height_map}")
            height_map = read_height_input(height_map, meters_per_pixel, fill_nodata=fill_nodata)
        if not isinstance(height_map, CityScene) and meters_per_pixel is None:
            raise ValueError("a grayscale height map needs meters_per_pixel for tiled generation (its pixels' size in metres)")
        if isinstance(height_map, np.ndarray) and height_map.dtype.kind == "f":
            height_map = fill_holes(height_map, "height map", fill_nodata)
        hmap = load_height_map(height_map, meters_per_pixel, hrange, vae.grid_size[0] * vae.voxel_size)
        mpp = hmap.meters_per_pixel
        tile_px, overlap_px, align_px = tile_pixels(
            vae.grid_size[0] * vae.voxel_size, vae.voxel_size * self.dense_vae.downsample_factor, mpp, overlap
        )
        area = CityScene(hmap.height, np.zeros(hmap.height.shape, np.uint8), mpp, hmap.origin, crs=hmap.crs)
        terrain = functools.cache(lambda: terrain_estimate(hmap.height, mpp))  # at the first tile, after the run's checks

        def call_tile(scene: CityScene, tile: TileLatents, generator: torch.Generator) -> Sat2CityPipelineOutput:
            return self(
                scene,
                num_inference_steps=num_inference_steps,
                generator=generator,
                guidance_scale=guidance,
                temperature=temperature,
                max_memory_gb=max_memory_gb,
                tile=tile,
            )

        settings = run_manifest(self, num_inference_steps=num_inference_steps, guidance_scale=guidance, temperature=temperature)
        return generate_area(
            area,
            out_dir,
            call_tile,
            tile_px=tile_px,
            overlap_px=overlap_px,
            align_px=align_px,
            anchor_z=hmap.z_base,
            manifest=settings,
            seed=seed,
            inpaint=inpaint,
            tile_bytes=self.estimate_memory_bytes(self.grid_for((tile_px, tile_px), mpp), tile_px * tile_px),
            max_memory_gb=max_memory_gb,
            device=self._execution_device,
            classify=lambda points, normals: classes_from_terrain(points, terrain(), mpp, hmap.origin, normals),
            classes_from=f"ground / building (> {BUILDING_HEIGHT_M:g} m) by height above the input map's terrain estimate",
            callback_on_tile_end=callback_on_tile_end,
        )

    def _geometry_and_appearance(
        self,
        first: SparseTensor,
        points: torch.Tensor,
        run: _Sampling,
        tile: TileLatents | None = None,
        corner: tuple[float, float, float] = (0.0, 0.0, 0.0),
    ) -> tuple[SparseTensor, torch.Tensor]:
        """Stages 2 and 3 on the dense stage's decoded grid (and P_h ``points`` for a height-aware
        sparse stage): final voxels (normals) and their colours. ``tile``: as in ``__call__``, the
        crop frame's 0 at world ``corner``."""
        dtype = self.sparse_unet.dtype
        # Stage 2: sparse latent X_S | {G, A_N} (+ height columns); D_s records struct.
        svae = self.sparse_vae
        height = None
        if self._sparse_takes_height():
            height = (points, torch.zeros(points.shape[0], dtype=torch.long, device=points.device))
        coords, cond = sparse_condition(first, svae.downsample_factor, height)
        structure = svae.latent_structure(coords, 1)
        shape = (structure.num_voxels, svae.config.latent_channels)
        known = {
            stage: None if tile is None else tile.sparse_stage(stage, structure, corner) for stage in ("sparse", "appearance")
        }
        x_s = self._denoise("sparse", self.sparse_unet, shape, structure.replace, cond.to(dtype), run, known=known["sparse"])
        geometry = svae.decode(structure.replace(x_s / svae.config.scaling_factor))

        # Stage 3: Re-Hash appearance latent X_C0 | struct, decoded along struct, inverse-sampled colours.
        app_cond = struct_condition(geometry, structure)
        x_c = self._denoise(
            "appearance", self.appearance_unet, shape, structure.replace, app_cond.to(dtype), run, known=known["appearance"]
        )
        voxels = geometry.sample
        if voxels.num_voxels:
            features = svae.decode_appearance(
                svae.rehash(structure.replace(x_c / svae.config.appearance_scaling_factor)), geometry
            )
            colors = svae.inverse_sample(features, voxels.world_positions(), voxels.coords[:, 0].long())
        else:
            colors = voxels.feats.new_zeros(0, 3)
        return voxels, colors

    def _build_output(
        self, hmap: HeightMap, voxels: SparseTensor, normals: torch.Tensor, colors: torch.Tensor, output_type: str
    ) -> Sat2CityPipelineOutput:
        """World-frame outputs: crop frame + (origin x, origin y, origin z + z_base)."""
        shift = torch.tensor([hmap.origin[0], hmap.origin[1], hmap.origin[2] + hmap.z_base], dtype=torch.float64)
        world = voxels.world_positions().double().cpu() + shift
        voxel_size = float(voxels.voxel_size)
        info = {"voxel_size": voxel_size, "origin": shift.numpy(), "crs": hmap.crs}
        origin = (torch.tensor(voxels.origin, dtype=torch.float64) + shift).tolist()
        if output_type == "voxels":
            feats = torch.cat([normals, colors], 1).cpu()
            grid = SparseTensor(feats, voxels.coords.cpu(), voxel_size=voxel_size, origin=origin, batch_size=1)
            return Sat2CityPipelineOutput(voxels=grid, **info)
        out = Sat2CityPipelineOutput(
            points=world.float().numpy(), colors=colors.cpu().numpy(), normals=normals.cpu().numpy(), **info
        )
        if output_type == "mesh" and voxels.num_voxels:
            out.mesh = mesh_from_voxels(voxels.coords[:, 1:].cpu().numpy(), voxel_size, origin, colors=out.colors.clip(0, 1))
        return out
