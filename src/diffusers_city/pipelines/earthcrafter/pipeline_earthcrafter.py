"""EarthCrafter: a semantic map, an aerial image or nothing -> a 3D tile of structure voxels and 2D
Gaussian splats, by dual-sparse latent flow matching (Liu et al., AAAI-26).

Three rectified-flow stages, each with classifier-free guidance against the condition network's
"none" tokens, then the two decoders:

1. StructFM occupancy: the dense (L/8)^3 occupancy field (occupied where > 0);
2. StructFM latent: the structure latent on the occupied cells, decoded by the StructVAE into the
   surface voxels at L;
3. TexFM: the texture latent on those voxels, decoded by the TexVAE into one set of 2DGS
   parameters per voxel, turned into world-space Gaussians.

Flow convention (diffusers' flow-matching schedulers): ``x_t = (1 - sigma) x0 + sigma noise``, the
models predict ``noise - x0`` at ``timestep = sigma * 1000``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from ...data.labels import classes_from_semantic
from ...data.scene import CityScene
from ...export.mesh import mesh_from_voxels
from ...models.earthcrafter import (
    EarthCrafterConditionEncoder,
    EarthCrafterOccupancyTransformer,
    EarthCrafterStructFlow,
    EarthCrafterStructVAE,
    EarthCrafterTexFlow,
    EarthCrafterTexVAE,
)
from ...models.earthcrafter.condition_encoder import ConditionTokens
from ...render import Gaussians, orbit_trajectory, render_gaussians
from ...sparse import SparseTensor
from ...utils.memory import check_memory, memory_limit_gb
from ..pipeline_utils import (
    IMAGE_OUTPUT_TYPES,
    check_callback_inputs,
    check_guidance_interval,
    check_number,
    check_output_type,
    check_positive_int,
    denoising_loop,
    frames_to_output,
    progress_bar,
)
from ..tiled_area import AreaOutput, generate_area, run_manifest
from ..tiling import TileLatents, TileStage, tile_pixels
from .pipeline_output import EarthCrafterPipelineOutput

OUTPUT_TYPES = (*IMAGE_OUTPUT_TYPES, "points", "mesh", "voxels", "gaussians")
STAGES = ("occupancy", "structure", "texture")
MAX_FRAME_SIZE = 4096
MAX_FRAMES = 1000
DEFAULT_GUIDANCE_INTERVAL = (0.0, 1.0)
"""Noise levels ``sigma`` (``t / num_train_timesteps``, 1 = pure noise) where guidance applies by default: all."""
# Rough peak bytes of one rendered pixel of one frame in the torch rasterizer (its chunks bound the
# per-splat part): used only to refuse absurd frame requests with an estimate.
_BYTES_PER_PIXEL = 64


@dataclass(frozen=True)
class _Sampling:
    """What every stage's denoising loop of one call shares."""

    num_inference_steps: int
    guidance_scale: float
    guidance_interval: tuple[float, float]
    generator: torch.Generator | None
    callback_on_step_end: Callable | None
    tensor_inputs: list[str]


def _array(value: Any, name: str) -> np.ndarray:
    """A numpy array from a tensor, array, PIL image or image / ``.npy`` path."""
    if isinstance(value, (str, Path)):
        path = Path(value)
        if not path.is_file():
            raise ValueError(f"{name}: no such file {path}")
        if path.suffix.lower() == ".npy":
            return np.load(path, allow_pickle=False)
        with Image.open(path) as img:
            value = img.copy()
    if isinstance(value, Image.Image):
        return np.asarray(value.convert("RGB") if value.mode in ("RGBA", "LA", "CMYK", "YCbCr") else value)
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return value
    raise ValueError(f"{name} must be a tensor, array, PIL image or file path, got {type(value).__name__}")


class EarthCrafterPipeline(DiffusionPipeline):
    """Semantic map / aerial image / nothing -> 3D tile (EarthCrafter): StructFM, StructVAE, TexFM, TexVAE.

    Components: ``condition_encoder`` (:class:`EarthCrafterConditionEncoder`, which also fixes the
    tile: resolution L and metres per voxel), ``occupancy_transformer``
    (:class:`EarthCrafterOccupancyTransformer`), ``struct_flow`` (:class:`EarthCrafterStructFlow`),
    ``struct_vae`` (:class:`EarthCrafterStructVAE`), ``tex_flow`` (:class:`EarthCrafterTexFlow`),
    ``tex_vae`` (:class:`EarthCrafterTexVAE`) and a flow-matching scheduler shared by the three
    stages (``FlowMatchEulerDiscreteScheduler`` with its ``shift``, or any diffusers flow-matching
    scheduler built from its config, e.g. ``FlowMatchHeunDiscreteScheduler.from_config(pipe.scheduler.config)``).
    """

    model_cpu_offload_seq = "condition_encoder->occupancy_transformer->struct_flow->struct_vae->tex_flow->tex_vae"
    _callback_tensor_inputs = ["latents"]

    def __init__(
        self,
        condition_encoder: EarthCrafterConditionEncoder,
        occupancy_transformer: EarthCrafterOccupancyTransformer,
        struct_flow: EarthCrafterStructFlow,
        struct_vae: EarthCrafterStructVAE,
        tex_flow: EarthCrafterTexFlow,
        tex_vae: EarthCrafterTexVAE,
        scheduler: FlowMatchEulerDiscreteScheduler,
    ) -> None:
        super().__init__()
        self.register_modules(
            condition_encoder=condition_encoder,
            occupancy_transformer=occupancy_transformer,
            struct_flow=struct_flow,
            struct_vae=struct_vae,
            tex_flow=tex_flow,
            tex_vae=tex_vae,
            scheduler=scheduler,
        )
        self.check_components()
        self.stage: str | None = None

    @classmethod
    def from_preset(cls, size: str = "tiny", seed: int = 0) -> EarthCrafterPipeline:
        """An untrained pipeline of preset ``size`` (``pipelines/earthcrafter/presets/<size>.json``)."""
        from ...presets import build_pipeline

        pipe = build_pipeline("earthcrafter", size, seed=seed)
        if not isinstance(pipe, cls):
            raise ValueError(f"preset earthcrafter/{size} builds {type(pipe).__name__}, not {cls.__name__}")
        return pipe

    # -- sizes ------------------------------------------------------------------------------
    @property
    def resolution(self) -> int:
        return int(self.condition_encoder.config.resolution)

    @property
    def voxel_size(self) -> float:
        return float(self.condition_encoder.config.voxel_size)

    @property
    def grid_size(self) -> int:
        return int(self.occupancy_transformer.config.grid_size)

    def check_components(self) -> None:
        """``ValueError`` naming the first pair of components whose configs do not fit together."""
        enc, occ, sf, tf = (
            m.config for m in (self.condition_encoder, self.occupancy_transformer, self.struct_flow, self.tex_flow)
        )
        sv, tv = self.struct_vae.config, self.tex_vae.config
        L, G = enc.resolution, occ.grid_size
        checks = [
            (
                G * occ.cell_size == L,
                f"occupancy_transformer grid {G} x cell {occ.cell_size} != condition_encoder resolution {L}",
            ),
            (sv.resolution == L, f"struct_vae resolution {sv.resolution} != condition_encoder resolution {L}"),
            (sf.grid_size == G, f"struct_flow grid_size {sf.grid_size} != occupancy_transformer grid_size {G}"),
            (sf.cell_size == occ.cell_size, f"struct_flow cell_size {sf.cell_size} != occupancy cell_size {occ.cell_size}"),
            (
                sf.in_channels == sv.latent_channels,
                f"struct_flow in_channels {sf.in_channels} != struct_vae latent_channels {sv.latent_channels}",
            ),
            (tf.resolution == L, f"tex_flow resolution {tf.resolution} != condition_encoder resolution {L}"),
            (tv.resolution == L, f"tex_vae resolution {tv.resolution} != condition_encoder resolution {L}"),
            (
                tf.in_channels == tv.latent_channels,
                f"tex_flow in_channels {tf.in_channels} != tex_vae latent_channels {tv.latent_channels}",
            ),
        ]
        checks += [
            (
                m.config.context_dim == enc.hidden_dim,
                f"{name} context_dim {m.config.context_dim} != condition_encoder hidden_dim {enc.hidden_dim}",
            )
            for name, m in (
                ("occupancy_transformer", self.occupancy_transformer),
                ("struct_flow", self.struct_flow),
                ("tex_flow", self.tex_flow),
            )
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"EarthCrafterPipeline components do not match: {message}")

    # -- inputs -----------------------------------------------------------------------------
    def _semantic_tensor(self, semantic_map: Any) -> torch.Tensor:
        """``[1, L, L]`` class ids from any supported semantic map (``ValueError`` naming the problem)."""
        L, k = self.resolution, self.condition_encoder.config.num_classes
        arr = _array(semantic_map, "semantic_map")
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise ValueError(f"semantic_map must hold numeric class ids, got dtype {arr.dtype}")
        if arr.ndim == 3 and arr.shape[0] == 1:
            arr = arr[0]
        if arr.ndim != 2:
            raise ValueError(
                f"semantic_map must be a [{L}, {L}] (or [1, {L}, {L}]) map of class ids, got rank {arr.ndim} {arr.shape}"
            )
        if arr.shape != (L, L):
            raise ValueError(
                f"semantic_map must be {L}x{L} (one pixel per voxel column of this model), got {arr.shape[0]}x{arr.shape[1]}"
            )
        if np.issubdtype(arr.dtype, np.floating):
            if not np.isfinite(arr).all():
                raise ValueError(f"semantic_map holds {int((~np.isfinite(arr)).sum())} NaN/inf values")
            if not np.array_equal(arr, np.round(arr)):
                raise ValueError("semantic_map must hold integer class ids, got fractional values")
        ids = arr.astype(np.int64)
        unknown = sorted(set(np.unique(ids).tolist()) - set(range(k)))
        if unknown:
            raise ValueError(f"semantic_map holds unknown classes {unknown[:10]} (the class table has ids 0..{k - 1})")
        return torch.from_numpy(ids)[None]

    def _image_tensor(self, image: Any) -> torch.Tensor:
        """``[1, 3, S, S]`` RGB in 0..1 from a tensor ``[3, S, S]`` / ``[1, 3, S, S]`` in 0..1 or an
        ``[S, S, 3]`` array / PIL image / file (8-bit values are divided by 255)."""
        S = self.condition_encoder.image_size
        arr = _array(image, "image")
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise ValueError(f"image must be numeric, got dtype {arr.dtype}")
        channels_last = not isinstance(image, torch.Tensor)
        if arr.ndim == 4 and arr.shape[0] == 1:
            arr = arr[0]
        if arr.ndim == 2:
            raise ValueError(f"image must be RGB (3 channels), got a single-channel {arr.shape} image")
        if arr.ndim != 3:
            raise ValueError(
                f"image must be [3, {S}, {S}] (tensor) or [{S}, {S}, 3] (array/PIL), got rank {arr.ndim} {arr.shape}"
            )
        if channels_last:
            arr = np.moveaxis(arr, -1, 0)
        if arr.shape[0] != 3:
            raise ValueError(f"image must have 3 channels (RGB), got {arr.shape[0]}")
        if arr.shape[1:] != (S, S):
            raise ValueError(f"image must be {S}x{S} pixels (this model's orthophoto size), got {arr.shape[1]}x{arr.shape[2]}")
        if np.issubdtype(arr.dtype, np.integer):
            arr = arr / 255.0
        arr = arr.astype(np.float32)
        if not np.isfinite(arr).all():
            raise ValueError(f"image holds {int((~np.isfinite(arr)).sum())} NaN/inf values")
        if arr.min() < 0 or arr.max() > 1:
            raise ValueError(f"image values must lie in 0..1, got {arr.min():g}..{arr.max():g}")
        return torch.from_numpy(arr)[None]

    def _scene_frame(self, scene: CityScene) -> tuple[Any, tuple[float, float, float], str | None]:
        """A ``CityScene`` tile's semantic raster, the world centre of voxel (0, 0, 0) and its CRS:
        pixel ``(i, j)`` is voxel column ``x = j``, ``y = i``, voxel layer 0 sits on ``origin[2]``."""
        vs = self.voxel_size
        if abs(float(scene.meters_per_pixel) - vs) > 1e-6 * vs:
            raise ValueError(
                f"the CityScene has {scene.meters_per_pixel:g} m per pixel, this model {vs:g} m per voxel column: "
                "rasterize the scene at the model's voxel size"
            )
        ox, oy, oz = (float(o) for o in scene.origin)
        return scene.semantic, (ox + vs / 2, oy + vs / 2, oz + vs / 2), scene.crs

    def estimate_memory_bytes(self, num_frames: int, width: int, height: int) -> int:
        """Rough peak memory of rendering ``num_frames`` frames (the tile itself is fixed by the model)."""
        L = self.resolution
        tile = 16 * L * L * 4 * max(self.tex_flow.config.block_channels) * 4  # ~16 surface voxels per column at most
        return int(tile + num_frames * width * height * _BYTES_PER_PIXEL)

    def check_inputs(
        self,
        semantic_map: Any,
        image: Any,
        num_inference_steps: Any,
        guidance_scale: Any,
        guidance_interval: Any,
        output_type: Any,
        num_frames: Any,
        width: Any,
        height: Any,
        max_memory_gb: Any,
        latents: Any,
        callback_on_step_end_tensor_inputs: list[str] | None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, list[str]]:
        """``ValueError`` naming the first bad argument, before any work; returns the semantic map
        ``[1, L, L]`` and image ``[1, 3, S, S]`` (None when not given) and the callback's tensor names."""
        check_output_type(output_type, OUTPUT_TYPES, "EarthCrafterPipeline")
        check_positive_int("num_inference_steps", num_inference_steps, self.scheduler.config.num_train_timesteps)
        check_number("guidance_scale", guidance_scale, low=1.0)
        check_guidance_interval(guidance_interval)
        memory_limit_gb(max_memory_gb)  # a bad limit is named before anything else
        if not hasattr(self.scheduler, "scale_noise"):
            raise ValueError(
                f"EarthCrafterPipeline's flows predict the flow-matching velocity (noise - x0); {type(self.scheduler).__name__} "
                "is not a flow-matching scheduler (use FlowMatchEulerDiscreteScheduler or another FlowMatch* scheduler)"
            )
        tensor_inputs = check_callback_inputs(callback_on_step_end_tensor_inputs, self._callback_tensor_inputs, ["latents"])
        if semantic_map is not None and image is not None and not self.condition_encoder.config.accepts_both:
            raise ValueError(
                "this checkpoint takes a semantic map or an image, not both (its condition encoder has accepts_both=False)"
            )
        if output_type in IMAGE_OUTPUT_TYPES:
            num_frames = check_positive_int("num_frames", num_frames, MAX_FRAMES)
            width = check_positive_int("width", width, MAX_FRAME_SIZE)
            height = check_positive_int("height", height, MAX_FRAME_SIZE)
            check_memory(
                self.estimate_memory_bytes(num_frames, width, height),
                max_memory_gb,
                f"{num_frames} frames of {width}x{height}",
                self.device,
                hint="render fewer or smaller frames",
            )
        shape = self.occupancy_shape()
        if latents is not None:
            if not isinstance(latents, torch.Tensor) or tuple(latents.shape) != shape or not latents.is_floating_point():
                got = list(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
                raise ValueError(f"latents must be a float tensor of the occupancy stage's shape {list(shape)}, got {got}")
            if not bool(torch.isfinite(latents).all()):
                raise ValueError("latents hold NaN/inf values")
        semantic = None if semantic_map is None else self._semantic_tensor(semantic_map)
        aerial = None if image is None else self._image_tensor(image)
        return semantic, aerial, tensor_inputs

    def occupancy_shape(self) -> tuple[int, int, int, int, int]:
        g = self.grid_size
        return (1, self.occupancy_transformer.config.in_channels, g, g, g)

    # -- stages -----------------------------------------------------------------------------
    def encode_condition(
        self, semantic: torch.Tensor | None, image: torch.Tensor | None, guidance_scale: float, device: torch.device
    ) -> ConditionTokens:
        """Condition tokens ``[B, T, D]``, lengths ``[B]`` and map ``[B, D, g, g]``: B = 2
        (condition, "none") when guidance applies, else B = 1 (the condition, or "none" for an
        unconditional tile)."""
        enc = self.condition_encoder
        if semantic is None and image is None:
            return enc(batch_size=1)
        semantic = None if semantic is None else semantic.to(device)
        image = None if image is None else image.to(device, enc.dtype)
        cond = enc(semantic, image)
        if guidance_scale == 1.0:
            return cond
        null = enc(batch_size=1)
        width = max(cond.tokens.shape[1], null.tokens.shape[1])
        pad = lambda t: torch.nn.functional.pad(t, (0, 0, 0, width - t.shape[1]))  # noqa: E731
        return ConditionTokens(
            torch.cat([pad(cond.tokens), pad(null.tokens)]),
            torch.cat([cond.lengths, null.lengths]),
            torch.cat([cond.condition_map, null.condition_map]),
        )

    def prepare_latents(
        self,
        shape: tuple[int, ...],
        dtype: torch.dtype,
        device: torch.device,
        generator: torch.Generator | None,
        latents: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """A stage's initial noise of ``shape`` (``latents`` when given), times the scheduler's
        ``init_noise_sigma`` (1 for flow matching, where sigma starts at 1)."""
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        return latents.to(device=device, dtype=dtype) * getattr(self.scheduler, "init_noise_sigma", 1.0)

    def _denoise(
        self,
        stage: str,
        model: torch.nn.Module,
        shape: tuple[int, ...],
        wrap: Callable[[torch.Tensor], Any],
        condition: ConditionTokens,
        run: _Sampling,
        latents: torch.Tensor | None = None,
        known: TileStage | None = None,
    ) -> torch.Tensor:
        """One stage's flow from noise of ``shape`` to its sample; ``wrap(x, copies)`` turns
        ``copies`` stacked inputs (condition, then "none" under guidance) into the model's sample.
        Guidance runs where ``sigma = t / num_train_timesteps`` lies in ``run.guidance_interval``;
        elsewhere one conditional pass. ``known``: the stage's hook of tiled generation."""
        self.stage = stage
        tokens, lengths, condition_map = condition
        copies = tokens.shape[0]
        device = tokens.device
        self.scheduler.set_timesteps(run.num_inference_steps, device=device)
        latents = self.prepare_latents(shape, model.dtype, device, run.generator, latents)
        lo, hi = run.guidance_interval
        num_train_timesteps = self.scheduler.config.num_train_timesteps

        def predict(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            n = copies if copies == 1 or lo <= float(t) / num_train_timesteps <= hi else 1
            v = model(wrap(torch.cat([x] * n), n), t, tokens[:n].to(model.dtype), lengths[:n], condition_map[:n]).sample
            v = v.feats if isinstance(v, SparseTensor) else v
            if n == 1:
                return v
            cond, uncond = v.chunk(2)
            return uncond + run.guidance_scale * (cond - uncond)

        return denoising_loop(
            self,
            latents,
            predict,
            generator=run.generator,
            callback_on_step_end=run.callback_on_step_end,
            tensor_inputs=run.tensor_inputs,
            description=f"earthcrafter {stage}",
            known=known,
        )

    def _sparse_stage(
        self,
        stage: str,
        model: torch.nn.Module,
        structure: SparseTensor,
        channels: int,
        condition,
        run: _Sampling,
        known: TileStage | None = None,
    ) -> torch.Tensor:
        """A latent flow on the voxels of ``structure`` (batch 1): its sample ``[N, channels]``."""
        one = structure.replace(structure.feats.new_zeros(structure.num_voxels, 1))
        batches = {n: SparseTensor.cat([one] * n) for n in {1, condition[0].shape[0]}}
        return self._denoise(
            stage, model, (structure.num_voxels, channels), lambda x, n: batches[n].replace(x), condition, run, known=known
        )

    def _coarse_cells(self, occupancy: torch.Tensor, origin: tuple[float, float, float]) -> SparseTensor:
        """The occupied cells (``occupancy > 0``) as a batch-1 SparseTensor on the (L/8)^3 grid, with
        the metadata of the StructVAE's latent level (docs/design.md level convention)."""
        cell = self.occupancy_transformer.config.cell_size
        xyz = torch.nonzero(occupancy[0, 0] > 0).int()
        coords = torch.cat([torch.zeros_like(xyz[:, :1]), xyz], 1)
        shift = (cell - 1) / 2 * self.voxel_size
        return SparseTensor(
            occupancy.new_zeros(len(coords), 1),
            coords,
            voxel_size=self.voxel_size * cell,
            origin=tuple(o + shift for o in origin),
            stride=cell,
            batch_size=1,
            validate=False,
        )

    # -- call -------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        semantic_map: Any = None,
        image: Any = None,
        *,
        num_inference_steps: int = 25,
        guidance_scale: float = 3.0,
        guidance_interval: tuple[float, float] = DEFAULT_GUIDANCE_INTERVAL,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "gaussians",
        origin: tuple[float, float, float] | None = None,
        num_frames: int = 24,
        width: int = 256,
        height: int = 256,
        max_memory_gb: float | None = None,
        return_dict: bool = True,
        callback_on_step_end: Callable[[DiffusionPipeline, int, torch.Tensor, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        tile: TileLatents | None = None,
    ) -> EarthCrafterPipelineOutput | tuple:
        """Generate one tile.

        Args:
            semantic_map: ``[L, L]`` (or ``[1, L, L]``) class ids of ``diffusers_city.data.classes``,
                pixel ``[i, j]`` = voxel column ``x = j``, ``y = i``; a tensor, array, PIL image or
                PNG / ``.npy`` path; or a ``CityScene`` of L x L pixels at the model's voxel size,
                whose georeference (origin, CRS) the outputs take.
            image: the aerial orthophoto of the tile, ``[3, S, S]`` tensor in 0..1 or ``[S, S, 3]``
                array / PIL image / path (S = the condition encoder's ``image_size``).
                Neither: an unconditional tile.
            num_inference_steps: flow steps of each of the three stages.
            guidance_scale: classifier-free guidance against the "none" condition (1 = off).
            guidance_interval: ``(lo, hi)`` with ``0 <= lo <= hi <= 1``: guidance applies only at the
                steps whose noise level ``sigma = t / num_train_timesteps`` (1 = pure noise, after
                the scheduler's shift) lies in ``[lo, hi]``; the other steps run one conditional
                pass, saving that step's second model call (TRELLIS's guidance interval).
                Default ``(0, 1)``: every step.
            generator: torch generator of every stage's noise.
            latents: the occupancy stage's initial noise ``[1, 1, G, G, G]`` (the later stages'
                shapes depend on it; their noise comes from ``generator``).
            output_type: ``"gaussians"`` (Gaussians + voxels), ``"pil"`` / ``"np"`` / ``"pt"``
                (frames of an orbit too), ``"points"`` (coloured point cloud), ``"mesh"`` (points and
                a mesh) or ``"voxels"`` (the coloured structure voxels only).
            origin: world position of voxel (0, 0, 0)'s centre in metres (default: the scene's
                frame for a ``CityScene``, else ``(0, 0, 0)``).
            num_frames, width, height: the orbit's frames (image output types).
            max_memory_gb: refuse frame requests whose estimated memory exceeds this (GB; default:
                the memory available now, ``utils.memory``).
            callback_on_step_end: ``fn(pipe, step, timestep, kwargs) -> kwargs`` after every step of
                every stage (``pipe.stage`` names it); may replace ``latents``: the occupancy field
                ``[1, 1, G, G, G]``, then the structure and texture latents ``[N, C]`` on their voxels.
            callback_on_step_end_tensor_inputs: keys passed to the callback (``["latents"]``).
            tile: one tile of a larger area (`generate_area`): every stage is conditioned on the
                latents its finished neighbours fixed and records its own.
        """
        crs = None
        if isinstance(semantic_map, CityScene):
            if origin is not None:
                raise ValueError("pass origin or a CityScene (which carries its own origin), not both")
            semantic_map, origin, crs = self._scene_frame(semantic_map)
        semantic, aerial, tensor_inputs = self.check_inputs(
            semantic_map,
            image,
            num_inference_steps,
            guidance_scale,
            guidance_interval,
            output_type,
            num_frames,
            width,
            height,
            max_memory_gb,
            latents,
            callback_on_step_end_tensor_inputs,
        )
        origin = tuple(float(o) for o in ((0.0, 0.0, 0.0) if origin is None else origin))
        if len(origin) != 3 or not np.isfinite(origin).all():
            raise ValueError(f"origin must be 3 finite numbers, got {origin}")
        device = self._execution_device
        run = _Sampling(
            num_inference_steps,
            float(guidance_scale),
            tuple(float(g) for g in guidance_interval),
            generator,
            callback_on_step_end,
            tensor_inputs,
        )
        condition = self.encode_condition(semantic, aerial, run.guidance_scale, device)

        corner = tuple(o - self.voxel_size / 2 for o in origin)  # where voxel (0, 0, 0) starts
        cell = self.occupancy_transformer.config.cell_size * self.voxel_size
        known = {"occupancy": None if tile is None else tile.dense_stage("occupancy", self.occupancy_shape()[2:], corner, cell)}
        occupancy = self._denoise(
            "occupancy",
            self.occupancy_transformer,
            self.occupancy_shape(),
            lambda x, n: x,
            condition,
            run,
            latents,
            known["occupancy"],
        )
        cells = self._coarse_cells(occupancy, origin)
        known["structure"] = None if tile is None else tile.sparse_stage("structure", cells, corner)
        voxels, gaussians = self._empty_tile(origin, device)
        if cells.num_voxels:
            svae, tvae = self.struct_vae, self.tex_vae
            z = self._sparse_stage(
                "structure", self.struct_flow, cells, svae.config.latent_channels, condition, run, known["structure"]
            )
            structure = svae.decode(cells.replace(z.to(svae.dtype) / svae.config.scaling_factor)).sample
            if structure.num_voxels:
                known["texture"] = None if tile is None else tile.sparse_stage("texture", structure, corner)
                z = self._sparse_stage(
                    "texture", self.tex_flow, structure, tvae.config.latent_channels, condition, run, known["texture"]
                )
                params = tvae.decode(structure.replace(z.to(tvae.dtype) / tvae.config.scaling_factor)).sample
                gaussians = tvae.to_gaussians(params)
                voxels = structure.replace(_voxel_colors(gaussians, structure.num_voxels))
        self.stage = None
        output = self._build_output(voxels, gaussians, output_type, num_frames, width, height, origin, crs)
        self.maybe_free_model_hooks()
        return output if return_dict else output.to_tuple()

    def generate_area(
        self,
        semantic_map: Any,
        out_dir: str | Path,
        num_inference_steps: int = 25,
        guidance_scale: float = 3.0,
        guidance_interval: tuple[float, float] = (0.0, 1.0),
        seed: int = 0,
        origin: tuple[float, float, float] | None = None,
        overlap: float = 0.25,
        inpaint: bool = True,
        max_memory_gb: float | None = None,
        callback_on_tile_end: Callable | None = None,
    ) -> AreaOutput:
        """Generate a semantic map of any size (``[H, W]`` class ids at the model's voxel size, or
        a ``CityScene`` at that resolution, whose georeference the outputs take), tile by tile,
        into the folder ``out_dir`` (`pipelines.tiled_area`: per-tile point PLY, GLB and splat PLY,
        ``index.json``, resumable, split over the processes of ``accelerate launch``). Tiles are
        this model's L x L, overlapping by about ``overlap`` of a tile (whole occupancy cells) and
        conditioned on their finished neighbours in every stage (``inpaint=False``: each on its own).
        Every point takes the class of the semantic map under it (roof pixels: roof within a voxel of
        their column's top, facade below)."""
        check_positive_int("num_inference_steps", num_inference_steps, self.scheduler.config.num_train_timesteps)
        check_number("guidance_scale", guidance_scale, low=1.0)
        memory_limit_gb(max_memory_gb)
        if isinstance(semantic_map, CityScene):
            if origin is not None:
                raise ValueError("pass origin or a CityScene (which carries its own origin), not both")
            self._scene_frame(semantic_map)  # checks its resolution
            area = semantic_map
        else:
            ids = _array(semantic_map, "semantic_map")
            if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
                raise ValueError(f"semantic_map must be a 2D map of integer class ids, got {ids.dtype} of shape {ids.shape}")
            area = CityScene(np.zeros(ids.shape, np.float32), ids, self.voxel_size, origin or (0.0, 0.0, 0.0))
        cell = self.occupancy_transformer.config.cell_size
        tile_px, overlap_px, align_px = tile_pixels(
            self.resolution * self.voxel_size, cell * self.voxel_size, self.voxel_size, overlap
        )

        def call_tile(scene: CityScene, tile: TileLatents, generator: torch.Generator) -> EarthCrafterPipelineOutput:
            return self(
                scene,
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
                guidance_interval=guidance_interval,
                generator=generator,
                output_type="points",
                max_memory_gb=max_memory_gb,
                tile=tile,
            )

        settings = run_manifest(
            self,
            num_inference_steps=num_inference_steps,
            guidance_scale=float(guidance_scale),
            guidance_interval=[float(g) for g in guidance_interval],
        )
        return generate_area(
            area,
            out_dir,
            call_tile,
            tile_px=tile_px,
            overlap_px=overlap_px,
            align_px=align_px,
            anchor_z=0.0,
            manifest=settings,
            seed=seed,
            inpaint=inpaint,
            tile_bytes=self.estimate_memory_bytes(0, 0, 0),
            max_memory_gb=max_memory_gb,
            device=self._execution_device,
            classify=lambda points, normals: classes_from_semantic(points, area.semantic, area.meters_per_pixel, area.origin),
            classes_from="the semantic map under each point (roof pixels: roof at their column's top, facade below)",
            callback_on_tile_end=callback_on_tile_end,
        )

    def _empty_tile(self, origin: tuple[float, float, float], device: torch.device) -> tuple[SparseTensor, Gaussians]:
        """The outputs when a stage finds nothing occupied."""
        none = torch.zeros(0, 3, device=device)
        voxels = SparseTensor(
            none, torch.zeros(0, 4, dtype=torch.int32, device=device), voxel_size=self.voxel_size, origin=origin, batch_size=1
        )
        return voxels, Gaussians.from_points(none, none)

    def render_orbit(self, gaussians: Gaussians, voxels: SparseTensor, num_frames: int, width: int, height: int) -> torch.Tensor:
        """Frames ``[F, H, W, 3]`` in 0..1 of an orbit around the tile of ``voxels`` (2DGS rasterization of
        ``gaussians``), the whole tile in view."""
        L, vs = self.resolution, voxels.voxel_size
        top = torch.zeros(L, L, dtype=torch.float64)
        if voxels.num_voxels:
            xyz = voxels.coords[:, 1:].long().cpu()
            inside = ((xyz[:, :2] >= 0) & (xyz[:, :2] < L)).all(1)
            xyz = xyz[inside]
            top.index_put_((xyz[:, 1], xyz[:, 0]), (xyz[:, 2].double() + 0.5) * vs, accumulate=False)
        ox, oy, oz = voxels.origin
        # Raster pixel (i, j) = voxel column (x = j, y = i); heights relative to the bottom of voxel layer 0.
        scene = SimpleNamespace(
            height=top.numpy(), meters_per_pixel=vs, origin=(ox - vs / 2, oy - vs / 2, oz - vs / 2), semantic=None, ground=None
        )
        # from outside the tile, so that the whole tile is in view: 0.9 tile sides out, 45 degrees up
        extent = L * vs
        cameras = orbit_trajectory(scene, num_frames, radius=0.9 * extent, elevation_deg=45.0, width=width, height=height)
        cameras = cameras.to(gaussians.means.device)
        frames = []
        with progress_bar(self, "earthcrafter render", total=num_frames) as bar:
            for i in range(num_frames):
                frames.append(render_gaussians(gaussians, cameras[i : i + 1], mode="2dgs").rgb[0].clamp(0, 1))
                bar.update()
        return torch.stack(frames)

    def _build_output(
        self,
        voxels: SparseTensor,
        gaussians: Gaussians,
        output_type: str,
        num_frames: int,
        width: int,
        height: int,
        origin: tuple[float, float, float],
        crs: str | None,
    ) -> EarthCrafterPipelineOutput:
        """The output of ``output_type``; every field is set at construction (``BaseOutput`` only
        tuples the fields it was built with)."""
        fields = {
            "voxel_size": self.voxel_size,
            "origin": np.asarray(origin, dtype=np.float64),
            "crs": crs,
            "voxels": voxels.to("cpu"),
        }
        if output_type != "voxels":
            fields["gaussians"] = gaussians.to("cpu")
        if output_type in IMAGE_OUTPUT_TYPES:
            fields["images"] = frames_to_output(self.render_orbit(gaussians, voxels, num_frames, width, height), output_type)
        elif output_type in ("points", "mesh"):
            fields["points"] = fields["gaussians"].means.numpy()
            fields["colors"] = fields["gaussians"].colors.clamp(0, 1).numpy()
            if output_type == "mesh" and voxels.num_voxels:
                cpu = fields["voxels"]
                fields["mesh"] = mesh_from_voxels(
                    cpu.coords[:, 1:].numpy(), cpu.voxel_size, cpu.origin, colors=cpu.feats.clamp(0, 1).numpy()
                )
        return EarthCrafterPipelineOutput(**fields)


def _voxel_colors(gaussians: Gaussians, num_voxels: int) -> torch.Tensor:
    """Per-voxel RGB ``[N, 3]``: the mean colour of each voxel's Gaussians (the TexVAE emits the
    same number per voxel, voxel after voxel)."""
    per_voxel = len(gaussians) // max(num_voxels, 1)
    if per_voxel * num_voxels != len(gaussians):
        raise ValueError(f"the TexVAE gave {len(gaussians)} Gaussians for {num_voxels} voxels (not a multiple)")
    return gaussians.colors.reshape(num_voxels, per_voxel, 3).mean(1).clamp(0, 1)
