"""What every diffusers-city pipeline shares: one ``output_type`` vocabulary, the input checks
diffusers pipelines make in ``check_inputs``, and the denoising loop that works with any
diffusers scheduler of the model's prediction type.

``output_type`` means the same in every pipeline:

- ``"pil"``, ``"np"``, ``"pt"``: rendered frames, as PIL images, a numpy ``[F, H, W, 3]`` float
  array in 0..1, or the same as a torch tensor (pipelines that render);
- ``"points"``: a coloured point cloud as numpy arrays (``points``, ``colors``, ``normals``);
- ``"mesh"``: the points plus a ``trimesh`` surface;
- ``"voxels"``: a :class:`~diffusers_city.sparse.SparseTensor` of the generated voxels;
- ``"gaussians"``: the scene's :class:`~diffusers_city.render.Gaussians`, no frames;
- ``"scene"``: a :class:`~diffusers_city.data.CityScene` (pipelines that generate layouts);
- ``"latent"``: the sampled latents (tokens) only, not decoded (diffusers' ``output_type="latent"``).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import PIL.Image
import torch

from .tiling import TileStage

__all__ = [
    "IMAGE_OUTPUT_TYPES",
    "OUTPUT_TYPES",
    "check_callback_inputs",
    "check_guidance_interval",
    "check_number",
    "check_output_type",
    "check_positive_int",
    "check_prediction_type",
    "denoising_loop",
    "frames_to_output",
    "progress_bar",
]

IMAGE_OUTPUT_TYPES = ("pil", "np", "pt")
OUTPUT_TYPES = ("pil", "np", "pt", "points", "mesh", "voxels", "gaussians", "scene", "latent")


def check_output_type(output_type: Any, supported: Sequence[str], pipeline: str) -> None:
    """``ValueError`` unless ``output_type`` is one of ``supported`` (a subset of :data:`OUTPUT_TYPES`)."""
    if output_type not in supported:
        hint = " (it means rendered frames as torch tensors)" if output_type == "pt" else ""
        raise ValueError(f"{pipeline} output_type must be one of {tuple(supported)}, got {output_type!r}{hint}")


def check_positive_int(name: str, value: Any, high: int | None = None) -> int:
    """``value`` as an int in 1..``high``; ``ValueError`` for anything else, booleans included."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1 or (high is not None and value > high):
        bound = f"in 1..{high}" if high is not None else ">= 1"
        raise ValueError(f"{name} must be an integer {bound}, got {value!r}")
    return int(value)


def check_number(name: str, value: Any, low: float | None = None) -> float:
    """``value`` as a finite float (``>= low`` when given); ``ValueError`` for NaN, inf, bool or non-numbers."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low:g}, got {value!r}")
    return float(value)


def check_guidance_interval(interval: Any) -> tuple[float, float]:
    """``interval`` as ``(lo, hi)`` noise-level fractions with ``0 <= lo <= hi <= 1``; ``ValueError`` otherwise."""
    if isinstance(interval, (str, bytes)) or not isinstance(interval, Sequence) or len(interval) != 2:
        raise ValueError(f"guidance_interval must be a pair (lo, hi) of fractions of the noise schedule, got {interval!r}")
    lo, hi = (check_number("guidance_interval", v) for v in interval)
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"guidance_interval must satisfy 0 <= lo <= hi <= 1, got ({lo:g}, {hi:g})")
    return lo, hi


def check_callback_inputs(names: Sequence[str] | None, allowed: Sequence[str], default: Sequence[str]) -> list[str]:
    """The tensor names a ``callback_on_step_end`` gets (``default`` when ``names`` is None)."""
    names = list(default if names is None else names)
    unknown = [k for k in names if k not in allowed]
    if unknown:
        raise ValueError(f"callback_on_step_end_tensor_inputs {unknown} not in {list(allowed)}")
    return names


def check_prediction_type(scheduler: Any, supported: Sequence[str], pipeline: str) -> None:
    """``ValueError`` unless the scheduler predicts what the denoisers were trained to predict."""
    kind = getattr(scheduler.config, "prediction_type", None)
    if kind not in supported:
        raise ValueError(
            f"{pipeline}'s denoisers predict {' or '.join(supported)}, the scheduler "
            f"{type(scheduler).__name__} is configured for {kind!r}; build it with "
            f"{type(scheduler).__name__}.from_config(pipe.scheduler.config)"
        )


def frames_to_output(frames: torch.Tensor, output_type: str) -> list[PIL.Image.Image] | np.ndarray | torch.Tensor:
    """Frames ``[F, H, W, 3]`` in 0..1 as ``output_type`` (``"pil"``, ``"np"`` or ``"pt"``)."""
    frames = frames.float()
    if output_type == "pt":
        return frames
    array = frames.cpu().numpy()
    if output_type == "np":
        return array
    return [PIL.Image.fromarray((f * 255).round().astype(np.uint8)) for f in array]


def progress_bar(pipe: Any, description: str, total: int | None = None, iterable: Any = None):
    """``pipe.progress_bar`` (diffusers: honours ``set_progress_bar_config``), labelled with
    ``description`` from its first line: every pipeline's bars name their stage."""
    saved = getattr(pipe, "_progress_bar_config", None)
    pipe._progress_bar_config = {"desc": description, **(saved or {})}
    try:
        return pipe.progress_bar(iterable=iterable, total=total)
    finally:
        if saved is None:
            del pipe._progress_bar_config
        else:
            pipe._progress_bar_config = saved


def _step_kwargs(scheduler: Any, generator: torch.Generator | None) -> dict[str, Any]:
    """``generator`` for the schedulers whose ``step`` takes one (diffusers' ``prepare_extra_step_kwargs``)."""
    accepts = "generator" in inspect.signature(scheduler.step).parameters
    return {"generator": generator} if accepts else {}


def denoising_loop(
    pipe: Any,
    latents: torch.Tensor,
    predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    generator: torch.Generator | None,
    callback_on_step_end: Callable | None,
    tensor_inputs: Sequence[str],
    description: str,
    known: TileStage | None = None,
) -> torch.Tensor:
    """The denoising loop over ``pipe.scheduler.timesteps`` (``set_timesteps`` already called and
    ``latents`` already scaled by ``init_noise_sigma``): ``scale_model_input`` (for the schedulers
    that have one; flow-matching schedulers do not) -> ``predict(model_input, t)`` ->
    ``scheduler.step``, then ``callback_on_step_end(pipe, i, t, {name: tensor})``, which may
    replace ``latents``. Works with any diffusers scheduler whose ``prediction_type`` (or, for
    flow matching, velocity ``noise - x0``) is what ``predict`` returns.

    ``known`` (tiled generation, `tiling`): after every step the latents the finished neighbours
    fixed are blended in, re-noised to the next timestep (RePaint); the final latents are recorded."""
    scheduler = pipe.scheduler
    step_kwargs = _step_kwargs(scheduler, generator)
    timesteps = scheduler.timesteps
    scale = getattr(scheduler, "scale_model_input", None)
    region = None if known is None else known.region(latents)
    with progress_bar(pipe, description, total=len(timesteps)) as bar:
        for i, t in enumerate(timesteps):
            model_output = predict(latents if scale is None else scale(latents, t), t)
            latents = scheduler.step(model_output, t, latents, **step_kwargs, return_dict=False)[0]
            if region is not None:
                next_t = timesteps[i + 1] if i + 1 < len(timesteps) else None
                latents = region.blend(scheduler, latents, next_t, generator)
            if callback_on_step_end is not None:
                local = {"latents": latents}
                outputs = callback_on_step_end(pipe, i, t, {k: local[k] for k in tensor_inputs})
                latents = (outputs or {}).get("latents", latents)
            bar.update()
    if known is not None:
        known.record(latents)
    return latents
