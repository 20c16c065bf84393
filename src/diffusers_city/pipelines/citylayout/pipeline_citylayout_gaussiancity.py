"""CityLayoutGaussianCityPipeline: from nothing (or a partial map) to a rendered city in one call.

Composed the way diffusers composes a prior and a decoder (``KandinskyV22CombinedPipeline``): the
combined pipeline holds the components of both, builds a :class:`CityLayoutPipeline` and a
:class:`GaussianCityPipeline` on them, and runs the layout, then the renderer. The layout's
arguments keep their names; GaussianCity's callbacks are ``callback_on_step_end`` and the
layout's ``layout_callback_on_step_end``, as Kandinsky names the prior's ``prior_callback_on_step_end``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from diffusers import AmusedScheduler, DiffusionPipeline, UVit2DModel, VQModel

from ...models.gaussiancity import BEVPointDecoder, BEVSceneEncoder
from ..gaussiancity.pipeline_gaussiancity import SKY, GaussianCityPipeline
from .pipeline_citylayout import CityLayoutPipeline
from .pipeline_output import CityLayoutGaussianCityPipelineOutput

__all__ = ["CityLayoutGaussianCityPipeline"]


class CityLayoutGaussianCityPipeline(DiffusionPipeline):
    """A generated layout (:class:`CityLayoutPipeline`) rendered by GaussianCity (:class:`GaussianCityPipeline`).

    Components: the layout's ``vqvae``, ``transformer``, ``scheduler`` and GaussianCity's
    ``scene_encoder``, ``background_decoder``, ``building_decoder``; settings: the layout's.
    Build it from two loaded pipelines with :meth:`from_pipes`.
    """

    model_cpu_offload_seq = "transformer->vqvae->scene_encoder->background_decoder->building_decoder"
    _callback_tensor_inputs = ["image"]

    def __init__(
        self,
        vqvae: VQModel,
        transformer: UVit2DModel,
        scheduler: AmusedScheduler,
        scene_encoder: BEVSceneEncoder,
        background_decoder: BEVPointDecoder,
        building_decoder: BEVPointDecoder,
        meters_per_pixel: float = 1.0,
        height_scale: float = 64.0,
        window_tokens: int = 32,
        window_stride: int = 24,
    ) -> None:
        super().__init__()
        settings = {
            "meters_per_pixel": meters_per_pixel,
            "height_scale": height_scale,
            "window_tokens": window_tokens,
            "window_stride": window_stride,
        }
        self.register_modules(
            vqvae=vqvae,
            transformer=transformer,
            scheduler=scheduler,
            scene_encoder=scene_encoder,
            background_decoder=background_decoder,
            building_decoder=building_decoder,
        )
        self.layout_pipe = CityLayoutPipeline(vqvae, transformer, scheduler, **settings)
        self.city_pipe = GaussianCityPipeline(scene_encoder, background_decoder, building_decoder)
        self.register_to_config(**{k: self.layout_pipe.config[k] for k in settings})

    @classmethod
    def from_pipes(cls, layout_pipe: CityLayoutPipeline, city_pipe: GaussianCityPipeline) -> CityLayoutGaussianCityPipeline:
        """The combined pipeline on the components (shared, not copied) of two loaded pipelines."""
        settings = {k: layout_pipe.config[k] for k in ("meters_per_pixel", "height_scale", "window_tokens", "window_stride")}
        return cls(**layout_pipe.components, **city_pipe.components, **settings)

    def set_progress_bar_config(self, **kwargs) -> None:
        super().set_progress_bar_config(**kwargs)
        self.layout_pipe.set_progress_bar_config(**kwargs)
        self.city_pipe.set_progress_bar_config(**kwargs)

    def check_inputs(
        self, output_type, return_gaussians, decode_chunk_size, background, cameras, trajectory, frames, size, tensors
    ):
        """GaussianCity's checks, made before the layout is generated (the layout checks its own)."""
        self.city_pipe._frames_to_render(cameras, trajectory, frames, size[0], size[1], output_type)
        return self.city_pipe.check_inputs(output_type, return_gaussians, decode_chunk_size, background, tensors)

    @torch.no_grad()
    def __call__(
        self,
        width_m: float | None = None,
        height_m: float | None = None,
        *,
        scene: Any = None,
        mask: Any = None,
        origin: Sequence[float] = (0.0, 0.0, 0.0),
        crs: str | None = None,
        num_inference_steps: int = 16,
        layout_latents: torch.Tensor | None = None,
        cameras: Any = None,
        trajectory: str | None = "orbit",
        num_frames: int = 16,
        width: int = 256,
        height: int = 256,
        generator: torch.Generator | None = None,
        output_type: str = "pil",
        return_gaussians: str | None = None,
        background: Sequence[float] | None = SKY,
        decode_chunk_size: int = 1,
        max_memory_gb: float | None = None,
        layout_callback_on_step_end: Callable | None = None,
        layout_callback_on_step_end_tensor_inputs: Sequence[str] | None = None,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] | None = None,
        return_dict: bool = True,
    ) -> CityLayoutGaussianCityPipelineOutput | tuple:
        """Generate a ``width_m`` x ``height_m`` layout (or fill ``scene`` where ``mask`` is True, see
        :meth:`CityLayoutPipeline.__call__`) and render it along ``trajectory`` / ``cameras``
        (see :meth:`GaussianCityPipeline.__call__`). ``generator`` seeds both stages;
        ``output_type`` is GaussianCity's (``"pil"``, ``"np"``, ``"pt"``, ``"gaussians"``)."""
        self.check_inputs(
            output_type,
            return_gaussians,
            decode_chunk_size,
            background,
            cameras,
            trajectory,
            num_frames,
            (width, height),
            callback_on_step_end_tensor_inputs,
        )
        layout = self.layout_pipe(
            width_m,
            height_m,
            scene=scene,
            mask=mask,
            origin=origin,
            crs=crs,
            num_inference_steps=num_inference_steps,
            generator=generator,
            latents=layout_latents,
            max_memory_gb=max_memory_gb,
            callback_on_step_end=layout_callback_on_step_end,
            callback_on_step_end_tensor_inputs=layout_callback_on_step_end_tensor_inputs,
        ).scene
        city = self.city_pipe(
            scene=layout,
            cameras=cameras,
            trajectory=None if cameras is not None else trajectory,
            num_frames=num_frames,
            width=width,
            height=height,
            generator=generator,
            output_type=output_type,
            return_gaussians=return_gaussians,
            background=background,
            decode_chunk_size=decode_chunk_size,
            max_memory_gb=max_memory_gb,
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
        )
        if not return_dict:
            return city.images, city.gaussians, layout
        return CityLayoutGaussianCityPipelineOutput(images=city.images, gaussians=city.gaussians, scene=layout)
