"""CityLayoutPipeline: a BEV city layout of any size, from nothing or from a partial map
(CityDreamer's unbounded layout generator, Xie et al., CVPR 2024, Sec. 3.1).

A masked-token transformer (diffusers' ``UVit2DModel``, sampled by ``AmusedScheduler``) fills a
grid of VQ tokens (``VQModel`` codebook indices) window by window; the tokenizer's decoder turns
tokens into class logits and heights. Unbounded extrapolation: windows of ``window_tokens``
tokens step by ``window_stride`` over the area (``pipelines.tiling.TilePlan`` in token units);
they run in the plan's four waves, so each window resamples only its masked tokens conditioned
on the overlap with finished windows (outpainting) and the windows of one wave run as a batch.
Inpainting keeps the tokens of a partial map the user gives where its ``mask`` is False and the
user's pixels there exactly. Memory is flat in the layout size: the model sees one batch of
windows at a time; only the token grid and the output rasters grow with the area.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from diffusers import AmusedScheduler, DiffusionPipeline, UVit2DModel, VQModel
from diffusers.utils import logging

from ...data.classes import NUM_CLASSES, check_class_ids
from ...models.citylayout.layout_codec import (
    decode_tokens,
    encode_tokens,
    layout_tensor,
    null_condition,
    split_output,
    token_factor,
)
from ...utils.memory import check_memory
from ..pipeline_utils import check_callback_inputs, check_number, check_output_type, check_positive_int, progress_bar
from ..tiling import TilePlan, plan_tiles
from .pipeline_output import CityLayoutPipelineOutput

logger = logging.get_logger(__name__)

__all__ = ["CityLayoutPipeline"]

OUTPUT_TYPES = ("scene", "latent")
# Peak host bytes per pixel at the model's resolution (blend accumulators, logits, rasters) and
# per output pixel (the scene's rasters and their instance labelling).
_BYTES_PER_MODEL_PIXEL = 96
_BYTES_PER_OUTPUT_PIXEL = 32


def _nearest(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``array`` resampled to ``shape`` by nearest pixel centres (classes stay classes)."""
    if array.shape == tuple(shape):
        return array
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * array.shape[0] / shape[0]).astype(np.int64), array.shape[0] - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * array.shape[1] / shape[1]).astype(np.int64), array.shape[1] - 1)
    return array[rows[:, None], cols[None, :]]


def _tent(size: int, ramp: int) -> np.ndarray:
    """Blend weights ``[size, size]`` of a decoded window: rising linearly over ``ramp`` pixels
    from each edge (never zero, so a window alone at the area's border keeps its pixels)."""
    x = np.arange(size, dtype=np.float32)
    w = np.clip(np.minimum(x + 0.5, size - x - 0.5) / max(ramp, 1), 1e-3, 1.0)
    return w[:, None] * w[None, :]


class CityLayoutPipeline(DiffusionPipeline):
    """Unbounded BEV layouts (semantic classes + heights) from a masked-token model.

    Components:
        vqvae: diffusers ``VQModel`` over layout tensors (``models.citylayout.layout_codec``).
        transformer: a ``UVit2DModel`` (``CityLayoutTransformer2DModel``: with position embeddings)
            predicting codebook logits of masked tokens
            (unconditional: its text inputs get :func:`~diffusers_city.models.citylayout.null_condition`).
        scheduler: ``AmusedScheduler`` whose ``mask_token_id`` is the codebook size.

    Settings (the pipeline's config, saved in ``model_index.json``):
        meters_per_pixel: the resolution the models were trained at.
        height_scale: metres per unit of the tokenizer's height channel.
        window_tokens / window_stride: side and step of the sliding token windows.
    """

    model_cpu_offload_seq = "transformer->vqvae"
    _callback_tensor_inputs = ["latents"]

    def __init__(
        self,
        vqvae: VQModel,
        transformer: UVit2DModel,
        scheduler: AmusedScheduler,
        meters_per_pixel: float = 1.0,
        height_scale: float = 64.0,
        window_tokens: int = 32,
        window_stride: int = 24,
    ) -> None:
        super().__init__()
        codes = int(vqvae.config.num_vq_embeddings)
        if transformer.config.codebook_size != codes:
            raise ValueError(
                f"transformer.codebook_size ({transformer.config.codebook_size}) must equal vqvae.num_vq_embeddings ({codes})"
            )
        if scheduler.config.mask_token_id != codes or transformer.config.vocab_size <= codes:
            raise ValueError(
                f"the mask token must be id {codes} (the codebook size): scheduler.mask_token_id is "
                f"{scheduler.config.mask_token_id}, transformer.vocab_size {transformer.config.vocab_size}"
            )
        if vqvae.config.in_channels != 1 + NUM_CLASSES or vqvae.config.out_channels != 1 + NUM_CLASSES:
            raise ValueError(f"vqvae must map {1 + NUM_CLASSES} layout channels (height + classes) to themselves")
        check_number("meters_per_pixel", meters_per_pixel, low=1e-6)
        check_number("height_scale", height_scale, low=1e-6)
        window = check_positive_int("window_tokens", window_tokens)
        stride = check_positive_int("window_stride", window_stride, high=window)
        if window - stride > window // 2:
            raise ValueError(
                f"window_stride ({stride}) must be at least half of window_tokens ({window}): windows overlap by at most half"
            )
        self.register_modules(vqvae=vqvae, transformer=transformer, scheduler=scheduler)
        self.register_to_config(
            meters_per_pixel=float(meters_per_pixel),
            height_scale=float(height_scale),
            window_tokens=window,
            window_stride=stride,
        )

    @classmethod
    def from_preset(cls, size: str = "tiny", seed: int = 0) -> CityLayoutPipeline:
        """An untrained pipeline of preset ``size`` (``pipelines/citylayout/presets/<size>.json``)."""
        from ...presets import build_pipeline

        pipe = build_pipeline("citylayout", size, seed=seed)
        if not isinstance(pipe, cls):
            raise ValueError(f"preset citylayout/{size} builds {type(pipe).__name__}, not {cls.__name__}")
        return pipe

    # -- tokens and windows -----------------------------------------------------------------
    @property
    def pixels_per_token(self) -> int:
        """Pixels (at ``config.meters_per_pixel``) on a side of one token."""
        return token_factor(self.vqvae)

    @property
    def mask_token_id(self) -> int:
        return int(self.scheduler.config.mask_token_id)

    def window_plan(self, grid_hw: Sequence[int]) -> TilePlan:
        """The sliding windows over a token grid of ``grid_hw`` tokens (its ``padded_shape`` is
        the grid the windows cover exactly)."""
        window = self.config.window_tokens
        return plan_tiles(grid_hw, window, window - self.config.window_stride)

    def window_starts(self, grid_hw: Sequence[int]) -> list[tuple[int, int]]:
        """Token (row, col) of each window's corner, in sampling order (by wave)."""
        return [(t.r0, t.c0) for wave in self.window_plan(grid_hw).waves() for t in wave]

    @torch.no_grad()
    def encode_layout(self, semantic: Any, height: Any) -> torch.Tensor:
        """The token grid ``[H / f, W / f]`` of a layout at the model's resolution (``f`` =
        :attr:`pixels_per_token`; H and W multiples of ``f``), encoded window by window: each
        token comes from the window that owns it."""
        semantic = torch.as_tensor(np.asarray(semantic)).long()
        height = torch.as_tensor(np.asarray(height, dtype=np.float32))
        f = self.pixels_per_token
        if semantic.ndim != 2 or semantic.shape != height.shape or semantic.shape[0] % f or semantic.shape[1] % f:
            raise ValueError(
                f"semantic and height must be one [H, W] shape with H and W multiples of {f}, "
                f"got {tuple(semantic.shape)} and {tuple(height.shape)}"
            )
        grid = (semantic.shape[0] // f, semantic.shape[1] // f)
        plan = self.window_plan(grid)
        ph, pw = (n * f for n in plan.padded_shape)
        semantic = torch.nn.functional.pad(semantic, (0, pw - semantic.shape[1], 0, ph - semantic.shape[0]))
        height = torch.nn.functional.pad(height, (0, pw - height.shape[1], 0, ph - height.shape[0]))
        tokens = torch.zeros(grid, dtype=torch.long)
        device, size = self._execution_device, plan.tile * f
        for tile in plan.tiles():
            window = (slice(tile.r0 * f, tile.r0 * f + size), slice(tile.c0 * f, tile.c0 * f + size))
            x = layout_tensor(semantic[window][None].to(device), height[window][None].to(device), self.config.height_scale)
            codes = encode_tokens(self.vqvae, x.to(self.vqvae.dtype))[0].cpu()
            r_lo, r_hi, c_lo, c_hi = tile.own
            tokens[r_lo:r_hi, c_lo:c_hi] = codes[r_lo - tile.r0 : r_hi - tile.r0, c_lo - tile.c0 : c_hi - tile.c0]
        return tokens

    @torch.no_grad()
    def decode_tokens(self, tokens: torch.Tensor, batch_size: int = 4) -> tuple[np.ndarray, np.ndarray]:
        """Class ids (uint8) and heights in metres (float32), ``[gh f, gw f]``, of a full token
        grid ``[gh, gw]``: windows decoded ``batch_size`` at a time and blended linearly in their
        overlaps (class logits and heights), so tiles meet without seams."""
        tokens = torch.as_tensor(tokens).long().cpu()
        if tokens.ndim != 2 or not tokens.numel():
            raise ValueError(f"tokens must be a non-empty [gh, gw] grid, got shape {tuple(tokens.shape)}")
        if int(tokens.min()) < 0 or int(tokens.max()) >= self.mask_token_id:
            raise ValueError(f"tokens must be codebook ids 0..{self.mask_token_id - 1} (no mask tokens left)")
        plan = self.window_plan(tokens.shape)
        padded = torch.full(plan.padded_shape, 0, dtype=torch.long)
        padded[: tokens.shape[0], : tokens.shape[1]] = tokens
        f, size = self.pixels_per_token, plan.tile * self.pixels_per_token
        shape = (plan.padded_shape[0] * f, plan.padded_shape[1] * f)
        total = np.zeros((1 + NUM_CLASSES, *shape), dtype=np.float32)
        weight = np.zeros(shape, dtype=np.float32)
        tent = _tent(size, plan.overlap * f // 2)
        tiles = plan.tiles()
        for start in range(0, len(tiles), batch_size):
            batch = tiles[start : start + batch_size]
            grids = torch.stack([padded[t.r0 : t.r0 + plan.tile, t.c0 : t.c0 + plan.tile] for t in batch])
            out = decode_tokens(self.vqvae, grids.to(self._execution_device)).float().cpu().numpy()
            for t, sample in zip(batch, out):
                rows, cols = slice(t.r0 * f, t.r0 * f + size), slice(t.c0 * f, t.c0 * f + size)
                total[:, rows, cols] += sample * tent
                weight[rows, cols] += tent
        total = torch.from_numpy(
            total[:, : tokens.shape[0] * f, : tokens.shape[1] * f] / weight[: tokens.shape[0] * f, : tokens.shape[1] * f]
        )
        logits, height = split_output(total[None], self.config.height_scale)
        return logits[0].argmax(0).numpy().astype(np.uint8), height[0].numpy().astype(np.float32)

    def _batches(self, unknown: torch.Tensor, plan: TilePlan, batch_size: int) -> list[tuple[list, int]]:
        """Windows to sample, wave by wave, grouped by their count of masked tokens (one scheduler
        schedule per batch) into batches of at most ``batch_size``: ``[(tiles, masked count)]``."""
        unknown = unknown.clone()
        batches = []
        for wave in plan.waves():
            groups: dict[int, list] = {}
            for tile in wave:
                count = int(unknown[tile.r0 : tile.r0 + plan.tile, tile.c0 : tile.c0 + plan.tile].sum())
                if count:
                    groups.setdefault(count, []).append(tile)
            for count, tiles in sorted(groups.items()):
                batches += [(tiles[i : i + batch_size], count) for i in range(0, len(tiles), batch_size)]
            for tile in wave:
                unknown[tile.r0 : tile.r0 + plan.tile, tile.c0 : tile.c0 + plan.tile] = False
        return batches

    @torch.no_grad()
    def sample_tokens(
        self,
        tokens: torch.Tensor,
        num_inference_steps: int,
        generator: torch.Generator | None,
        temperature: float | tuple[float, float],
        window_batch_size: int,
        callback_on_step_end: Callable | None = None,
        tensor_inputs: Sequence[str] = ("latents",),
    ) -> torch.Tensor:
        """Fill every mask token of a token grid (covering its window plan exactly) window by window."""
        plan = self.window_plan(tokens.shape)
        batches = self._batches(tokens == self.mask_token_id, plan, window_batch_size)
        device, size = self._execution_device, plan.tile
        # one schedule for every batch: AmusedScheduler.step keeps no state between calls
        self.scheduler.set_timesteps(num_inference_steps, temperature, device)
        step = 0
        with progress_bar(self, "citylayout tokens", total=len(batches) * num_inference_steps) as bar:
            for tiles, count in batches:
                grids = torch.stack([tokens[t.r0 : t.r0 + size, t.c0 : t.c0 + size] for t in tiles]).to(device)
                condition = null_condition(self.transformer, len(tiles), device, self.transformer.dtype)
                for t in self.scheduler.timesteps:
                    logits = self.transformer(grids, **condition)
                    grids = self.scheduler.step(
                        logits.float(), t, grids, starting_mask_ratio=count / size**2, generator=generator
                    ).prev_sample
                    if callback_on_step_end is not None:
                        local = {"latents": grids}
                        outputs = callback_on_step_end(self, step, t, {k: local[k] for k in tensor_inputs})
                        grids = (outputs or {}).get("latents", grids)
                    step += 1
                    bar.update()
                for t, grid in zip(tiles, grids.cpu()):
                    tokens[t.r0 : t.r0 + size, t.c0 : t.c0 + size] = grid
        return tokens

    # -- inputs ---------------------------------------------------------------------------------
    def _area(self, width_m: Any, height_m: Any, meters_per_pixel: float) -> tuple[tuple[int, int], tuple[int, int]]:
        """Output shape at ``meters_per_pixel`` and model shape at the model's resolution of a
        ``width_m`` x ``height_m`` area."""
        native = self.config.meters_per_pixel
        sizes = []
        for name, value in (("width_m", width_m), ("height_m", height_m)):
            value = check_number(name, value)
            if value <= 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")
            if round(value / native) < 1 or round(value / meters_per_pixel) < 1:
                raise ValueError(f"{name} {value:g} is smaller than one pixel ({max(native, meters_per_pixel):g} m)")
            sizes.append(value)
        width_m, height_m = sizes
        out = (round(height_m / meters_per_pixel), round(width_m / meters_per_pixel))
        model = (round(height_m / native), round(width_m / native))
        return out, model

    def _partial_map(self, semantic_map: Any, height_map: Any, mask: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The partial map and its generate-mask (True: generate) as checked arrays."""
        if mask is None:
            raise ValueError("a partial map needs mask= ([H, W], True / 1 where the layout is generated, False where it is kept)")
        semantic = np.asarray(semantic_map)
        height = np.asarray(height_map)
        if semantic.ndim != 2 or min(semantic.shape) < 1:
            raise ValueError(f"semantic_map must be a non-empty [H, W] array of class ids, got shape {semantic.shape}")
        if not (np.issubdtype(semantic.dtype, np.integer) or semantic.dtype == np.bool_):
            raise ValueError(f"semantic_map must hold integer class ids, got dtype {semantic.dtype}")
        if height.shape != semantic.shape or not np.issubdtype(height.dtype, np.number):
            raise ValueError(
                f"height_map must be a real [H, W] array like semantic_map {semantic.shape}, got {height.shape} {height.dtype}"
            )
        mask = np.asarray(mask)
        if mask.shape != semantic.shape:
            raise ValueError(f"mask shape {mask.shape} does not match the map's {semantic.shape}")
        if not (mask.dtype == np.bool_ or (np.issubdtype(mask.dtype, np.number) and np.isin(mask, (0, 1)).all())):
            raise ValueError("mask must be boolean or 0 / 1 (1 = generate)")
        mask = mask.astype(bool)
        check_class_ids(semantic[~mask], "semantic_map (kept pixels)")
        if not np.isfinite(height[~mask]).all():
            raise ValueError(f"height_map holds {int((~np.isfinite(height[~mask])).sum())} NaN/inf values where the map is kept")
        return semantic.astype(np.uint8), np.where(mask, 0.0, height).astype(np.float32), mask

    def estimate_memory_bytes(self, out_shape: Sequence[int], model_shape: Sequence[int]) -> int:
        """Rough peak host memory of a call: rasters at both resolutions (the model's padded to whole windows)."""
        f, window = self.pixels_per_token, self.config.window_tokens
        rows, cols = (max(window, math.ceil(n / f)) + window for n in model_shape)
        return int(rows * cols * f * f * _BYTES_PER_MODEL_PIXEL + out_shape[0] * out_shape[1] * _BYTES_PER_OUTPUT_PIXEL)

    def check_inputs(
        self,
        num_inference_steps: Any,
        temperature: Any,
        window_batch_size: Any,
        output_type: Any,
        latents: Any,
        grid: tuple[int, int],
        callback_on_step_end_tensor_inputs: Sequence[str] | None,
    ) -> list[str]:
        """``ValueError`` naming the first bad option, before any work; returns the callback's tensor names."""
        check_output_type(output_type, OUTPUT_TYPES, "CityLayoutPipeline")
        check_positive_int("num_inference_steps", num_inference_steps, high=1000)
        check_positive_int("window_batch_size", window_batch_size)
        temps = temperature if isinstance(temperature, (tuple, list)) else (temperature,)
        if not 1 <= len(temps) <= 2:
            raise ValueError(f"temperature must be a number or a (start, end) pair, got {temperature!r}")
        for value in temps:
            check_number("temperature", value, low=0.0)
        if latents is not None:
            if not isinstance(latents, torch.Tensor) or latents.dtype != torch.long:
                raise ValueError(f"latents must be a torch.long token grid, got {type(latents).__name__}")
            if tuple(latents.shape) != grid:
                raise ValueError(f"latents must be the area's token grid of shape {grid}, got {tuple(latents.shape)}")
            if latents.numel() and (int(latents.min()) < 0 or int(latents.max()) > self.mask_token_id):
                raise ValueError(
                    f"latents must hold codebook ids 0..{self.mask_token_id - 1} or the mask id {self.mask_token_id}"
                )
        return check_callback_inputs(callback_on_step_end_tensor_inputs, self._callback_tensor_inputs, ["latents"])

    # -- call -------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        width_m: float | None = None,
        height_m: float | None = None,
        *,
        scene: Any = None,
        semantic_map: Any = None,
        height_map: Any = None,
        mask: Any = None,
        meters_per_pixel: float | None = None,
        origin: Sequence[float] = (0.0, 0.0, 0.0),
        crs: str | None = None,
        num_inference_steps: int = 16,
        temperature: float | tuple[float, float] = (2.0, 0.0),
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        window_batch_size: int = 8,
        output_type: str = "scene",
        max_memory_gb: float | None = None,
        callback_on_step_end: Callable[[Any, int, torch.Tensor, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] | None = None,
        return_dict: bool = True,
    ) -> CityLayoutPipelineOutput | tuple:
        """Generate a layout of ``width_m`` x ``height_m`` metres, or fill a partial map.

        Args:
            width_m, height_m: the area's size (east-west, north-south) in metres; sizes that are
                not whole tokens at the model's resolution are padded to whole tokens and cropped
                (with a warning).
            scene: a ``CityScene`` whose semantic / height maps are the partial map to fill where
                ``mask`` is True (its resolution, origin and CRS carry over); or ``semantic_map``
                and ``height_map`` ``[H, W]`` arrays at ``meters_per_pixel``.
            mask: ``[H, W]`` bool or 0 / 1, True where the layout is generated (the diffusers
                inpainting convention: white repaints); kept pixels are returned unchanged. A
                larger canvas with the known map in part of it outpaints.
            meters_per_pixel: resolution of the maps given and of the output (default: the model's,
                ``config.meters_per_pixel``); other resolutions are resampled (nearest pixel).
            origin, crs: georeferencing of the output (a ``scene``'s own when given).
            num_inference_steps: unmasking steps per window (``AmusedScheduler``'s cosine schedule).
            temperature: the scheduler's confidence noise, a number or ``(start, end)`` (its
                ``set_timesteps``); the tokens themselves are drawn from the model's logits.
            generator: a ``torch.Generator`` for seeded sampling.
            latents: a starting token grid ``[gh, gw]`` (codebook ids; the mask id where it is
                generated), e.g. the ``tokens`` of an earlier output with some masked.
            window_batch_size: windows of one wave sampled together (GPU throughput; results
                depend on it only through the order of random draws).
            output_type: ``"scene"`` (a ``CityScene``) or ``"latent"`` (tokens only, no decoding).
            max_memory_gb: refuse (``MemoryLimitError``, a ``ValueError``, with the estimate) a call
                whose estimated peak host memory exceeds this (default: the memory available now).
            callback_on_step_end: ``fn(pipe, step, t, {"latents": window tokens [B, T, T]})`` after
                every step of every batch of windows; may return ``{"latents": ...}`` to replace them.
            callback_on_step_end_tensor_inputs: keys passed to the callback (``["latents"]``).

        Raises:
            ValueError: naming the problem, before any work: bad sizes, unknown classes or NaN
                heights in the kept part of a partial map, masks of the wrong shape, bad options,
                or an estimated peak memory above ``max_memory_gb``.
        """
        native = self.config.meters_per_pixel
        partial = None
        if scene is not None:
            if semantic_map is not None or height_map is not None:
                raise ValueError("pass either scene or semantic_map / height_map, not both")
            if not all(hasattr(scene, k) for k in ("semantic", "height", "meters_per_pixel", "origin")):
                raise ValueError(f"scene must be a CityScene, got {type(scene).__name__}")
            if meters_per_pixel is not None and meters_per_pixel != scene.meters_per_pixel:
                raise ValueError(f"meters_per_pixel {meters_per_pixel!r} contradicts the scene's {scene.meters_per_pixel:g}")
            semantic_map, height_map = scene.semantic, scene.height
            meters_per_pixel, origin, crs = scene.meters_per_pixel, scene.origin, scene.crs
        mpp = native if meters_per_pixel is None else check_number("meters_per_pixel", meters_per_pixel, low=1e-6)
        if semantic_map is not None or height_map is not None:
            if semantic_map is None or height_map is None:
                raise ValueError("a partial map needs both semantic_map and height_map")
            partial = self._partial_map(semantic_map, height_map, mask)
            area = (partial[0].shape[1] * mpp, partial[0].shape[0] * mpp)
            for name, given, size in (("width_m", width_m, area[0]), ("height_m", height_m, area[1])):
                if given is not None and abs(check_number(name, given) - size) > 0.5 * mpp:
                    raise ValueError(f"{name} {given!r} contradicts the partial map's {size:g} m")
            width_m, height_m = area
        elif mask is not None:
            raise ValueError("mask is given without a partial map (scene or semantic_map / height_map)")
        if width_m is None or height_m is None:
            raise ValueError("pass width_m and height_m (metres), or a partial map with its mask")
        out_shape, model_shape = self._area(width_m, height_m, mpp)
        f = self.pixels_per_token
        grid = (math.ceil(model_shape[0] / f), math.ceil(model_shape[1] / f))
        tensor_inputs = self.check_inputs(
            num_inference_steps, temperature, window_batch_size, output_type, latents, grid, callback_on_step_end_tensor_inputs
        )
        if latents is not None and partial is not None:
            raise ValueError("pass latents or a partial map, not both")
        check_memory(
            self.estimate_memory_bytes(out_shape, model_shape),
            max_memory_gb,
            f"CityLayoutPipeline of {out_shape[1]}x{out_shape[0]} px",
            hint="generate a smaller area (or in parts, with a partial map)",
        )
        if model_shape[0] % f or model_shape[1] % f:
            logger.warning(
                f"the area is {model_shape[1]}x{model_shape[0]} px at {native:g} m/px, not whole {f} px tokens: "
                f"it is generated as {grid[1] * f}x{grid[0] * f} px and cropped"
            )

        plan = self.window_plan(grid)
        tokens = torch.full(plan.padded_shape, self.mask_token_id, dtype=torch.long)
        if latents is not None:
            tokens[: grid[0], : grid[1]] = latents
        elif partial is not None:
            tokens[: grid[0], : grid[1]] = self._known_tokens(partial, model_shape, grid)
        tokens = self.sample_tokens(
            tokens, num_inference_steps, generator, temperature, window_batch_size, callback_on_step_end, tensor_inputs
        )[: grid[0], : grid[1]]
        scene_out = None
        if output_type == "scene":
            semantic, height = self.decode_tokens(tokens)
            semantic = _nearest(semantic[: model_shape[0], : model_shape[1]], out_shape)
            height = _nearest(height[: model_shape[0], : model_shape[1]], out_shape)
            if partial is not None:
                keep = ~partial[2]
                semantic[keep], height[keep] = partial[0][keep], partial[1][keep]
            scene_out = self._scene(semantic, height, mpp, origin, crs, num_inference_steps)
        if not return_dict:
            return scene_out, tokens
        return CityLayoutPipelineOutput(scene=scene_out, tokens=tokens)

    def _known_tokens(self, partial: tuple[np.ndarray, ...], model_shape: tuple[int, int], grid: tuple[int, int]) -> torch.Tensor:
        """The partial map's tokens where all of a token's pixels are kept, mask ids elsewhere."""
        semantic, height, mask = (_nearest(a, model_shape) for a in partial)
        f = self.pixels_per_token
        pad = ((0, grid[0] * f - model_shape[0]), (0, grid[1] * f - model_shape[1]))
        mask = np.pad(mask, pad, constant_values=True)
        tokens = self.encode_layout(
            np.pad(np.where(mask[: model_shape[0], : model_shape[1]], 0, semantic), pad), np.pad(height, pad)
        )
        known = torch.from_numpy(~mask.reshape(grid[0], f, grid[1], f).any(axis=(1, 3)))
        return torch.where(known, tokens, torch.full_like(tokens, self.mask_token_id))

    def _scene(self, semantic, height, mpp, origin, crs, steps):
        from ...data.scene import CityScene

        metadata = {
            "generator": type(self).__name__,
            "num_inference_steps": int(steps),
            "window_tokens": int(self.config.window_tokens),
            "window_stride": int(self.config.window_stride),
        }
        return CityScene(height=height, semantic=semantic, meters_per_pixel=mpp, origin=tuple(origin), crs=crs, metadata=metadata)
