"""GaussianCity pipeline: BEV layout (semantic + height maps) + cameras -> 3D Gaussians -> frames.

Xie et al., "Generative Gaussian Splatting for Unbounded 3D City Generation". Per frame: the BEV
points visible from the camera are found by ray casting (Sec. 3.2), decoded into Gaussian colours
by the background and building decoders (Sec. 3.3-3.4), and rasterized. Memory per frame depends
on the image size and the view distance, not on the layout size.

Frames: the decoders see positions in the layout frame (metres from the layout's origin, as in
training, see ``models/gaussiancity/bev.py``), and rasterization runs there too; cameras given in
world coordinates are moved into it, and returned Gaussians are moved back to world coordinates.

Style codes form a table ``[num_instances + 1, style_dim]``: row 0 styles the background, row ``i``
building instance ``i`` (``layout.instance``). Codes are standard normal (the decoders'
``style_distribution``), in training and inference alike.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline

from ...models.gaussiancity import BEVPointDecoder, BEVSceneEncoder
from ...models.gaussiancity.bev import (
    BEVLayout,
    BEVPoints,
    ViewCache,
    bev_points,
    visible_bev_points_per_camera,
)
from ...render import Cameras, Gaussians, render_gaussians
from ...utils.device import upload
from ...utils.memory import check_memory, memory_limit_gb
from ..pipeline_utils import (
    IMAGE_OUTPUT_TYPES,
    check_callback_inputs,
    check_output_type,
    check_positive_int,
    frames_to_output,
    progress_bar,
)
from .cuda_graph import GraphedPointDecoder
from .pipeline_output import GaussianCityPipelineOutput
from .style_fitting import check_views, fit_styles

__all__ = ["GaussianCityPipeline", "GaussianCityPipelineOutput"]

OUTPUT_TYPES = (*IMAGE_OUTPUT_TYPES, "gaussians")
TRAJECTORIES = ("orbit", "drone", "street")
SKY = (0.62, 0.75, 0.9)  # the default background: frames from the CLI, the README and the demo share this sky
# Rough peak bytes, measured on the CPU with the tiny preset and scaled by the decoders' width:
# per layout pixel (the maps as tensors, instance labels, visibility tables), per layout pixel
# again when the whole layout's Gaussians are decoded, per rendered pixel of a decoded chunk
# (visible points' activations, rasterizer tiles) per decoder channel, and per kept frame pixel.
_BYTES_PER_LAYOUT_PIXEL = 160
_BYTES_PER_LAYOUT_GAUSSIAN_PIXEL = 256
_BYTES_PER_VIEW_PIXEL_CHANNEL = 96
_BYTES_PER_FRAME_PIXEL = 28
logger = logging.getLogger(__name__)


def _concat_gaussians(parts: Sequence[Gaussians], device: torch.device, rows: torch.Tensor | None = None) -> Gaussians:
    """``parts`` one after the other; with ``rows``, row ``i`` of that goes to row ``rows[i]``."""
    names = ("means", "quats", "scales", "opacities", "colors")
    if not parts:
        empty = {n: torch.empty((0, 4 if n == "quats" else 3) if n != "opacities" else (0,), device=device) for n in names}
        return Gaussians(**empty)
    fields = {n: torch.cat([getattr(p, n) for p in parts]) for n in names}
    if rows is not None:
        fields = {n: torch.empty_like(t).index_copy_(0, rows, t) for n, t in fields.items()}
    return Gaussians(**fields)


class GaussianCityPipeline(DiffusionPipeline):
    """Feed-forward 3D city generation with Gaussian splatting (single pass, no denoising steps).

    Components:
        scene_encoder: :class:`BEVSceneEncoder` (background context; also holds the BEV settings).
        background_decoder: :class:`BEVPointDecoder` without point transformer (background points).
        building_decoder: :class:`BEVPointDecoder` with point transformer (building points).
    """

    model_cpu_offload_seq = "scene_encoder->background_decoder->building_decoder"
    _callback_tensor_inputs = ["image"]

    def __init__(
        self, scene_encoder: BEVSceneEncoder, background_decoder: BEVPointDecoder, building_decoder: BEVPointDecoder
    ) -> None:
        super().__init__()
        if background_decoder.config.style_dim != building_decoder.config.style_dim:
            raise ValueError(
                f"background and building decoders must share style_dim, got "
                f"{background_decoder.config.style_dim} and {building_decoder.config.style_dim}"
            )
        if background_decoder.config.scene_channels != scene_encoder.config.out_channels:
            raise ValueError(
                f"background_decoder.scene_channels ({background_decoder.config.scene_channels}) must equal "
                f"scene_encoder.out_channels ({scene_encoder.config.out_channels})"
            )
        self.register_modules(
            scene_encoder=scene_encoder, background_decoder=background_decoder, building_decoder=building_decoder
        )

    _graphed: GraphedPointDecoder | None = None

    def enable_cuda_graphs(self, enabled: bool = True) -> None:
        """Replay the building decoder as a CUDA graph in inference (the frames' visible points
        padded to a capacity that grows to fit; see ``cuda_graph.py``). On CUDA only; other
        devices, and calls with gradients, ignore it. Call it again after moving the pipeline."""
        self._graphed = GraphedPointDecoder(self.building_decoder) if enabled else None

    def _use_graph(self, device: torch.device) -> bool:
        if self._graphed is None or torch.is_grad_enabled():
            return False
        if self._graphed.decoder is not self.building_decoder:
            self._graphed = GraphedPointDecoder(self.building_decoder)
        return device.type == "cuda"

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def from_preset(cls, size: str = "tiny", seed: int = 0) -> GaussianCityPipeline:
        """An untrained pipeline of preset ``size`` (``pipelines/gaussiancity/presets/<size>.json``)."""
        from ...presets import load_preset

        return cls.from_preset_dict(load_preset("gaussiancity", size), seed=seed, name=f"gaussiancity/{size}")

    @classmethod
    def from_preset_dict(cls, preset: dict[str, Any], seed: int = 0, name: str = "preset") -> GaussianCityPipeline:
        """An untrained pipeline from a parsed preset (``{"components": {name: config}}``), seeded."""
        from ...presets import build_from_preset

        missing = sorted({"scene_encoder", "background_decoder", "building_decoder"} - set(preset["components"]))
        if missing:
            raise ValueError(f"{name} lacks components {missing}")
        pipe = build_from_preset(preset, seed=seed, where=name)
        if not isinstance(pipe, cls):
            raise ValueError(f"{name} builds {type(pipe).__name__}, not {cls.__name__}")
        return pipe

    # -- layouts and styles ---------------------------------------------------------------
    def prepare_layout(
        self,
        semantic_map: Any,
        height_map: Any,
        ground_map: Any = None,
        instance_map: Any = None,
        meters_per_pixel: float = 1.0,
        origin: Sequence[float] = (0.0, 0.0, 0.0),
    ) -> BEVLayout:
        """Validated :class:`BEVLayout` with this pipeline's sampling strides."""
        return BEVLayout.from_maps(
            semantic_map,
            height_map,
            ground=ground_map,
            instance=instance_map,
            meters_per_pixel=meters_per_pixel,
            origin=origin,
            class_strides=self.scene_encoder.config.class_strides,
        )

    @property
    def style_dim(self) -> int:
        return int(self.building_decoder.config.style_dim)

    def estimate_memory_bytes(
        self,
        layout_shape: tuple[int, int],
        num_frames: int = 0,
        width: int = 0,
        height: int = 0,
        decode_chunk_size: int = 1,
        layout_gaussians: bool = False,
    ) -> int:
        """Rough peak memory of a call on a layout of ``layout_shape`` pixels rendering
        ``num_frames`` frames of ``width`` x ``height`` (``decode_chunk_size`` decoded together),
        with the whole layout's Gaussians when ``layout_gaussians``."""
        pixels = int(layout_shape[0]) * int(layout_shape[1])
        channels = max(
            self.building_decoder.config.mlp_hidden,
            self.background_decoder.config.mlp_hidden,
            *self.building_decoder.config.enc_channels,
        )
        view = width * height * min(decode_chunk_size, max(num_frames, 1))
        need = pixels * (_BYTES_PER_LAYOUT_PIXEL + (_BYTES_PER_LAYOUT_GAUSSIAN_PIXEL if layout_gaussians else 0))
        if num_frames:
            need += view * channels * _BYTES_PER_VIEW_PIXEL_CHANNEL + num_frames * width * height * _BYTES_PER_FRAME_PIXEL
        return int(need)

    def _check_memory(
        self, shape: tuple[int, ...], frames: int, size: tuple[int, int], chunk: int, layout_gaussians: bool, max_memory_gb
    ) -> None:
        """``MemoryLimitError`` (a ``ValueError``) with the estimate when a call on a layout of
        ``shape`` rendering ``frames`` frames of ``size`` would need more than ``max_memory_gb``;
        from the shapes alone, before the maps are converted."""
        if len(shape) != 2:
            memory_limit_gb(max_memory_gb)  # a bad limit is named first; prepare_layout names the bad rank
            return
        need = self.estimate_memory_bytes(shape, frames, *size, chunk, layout_gaussians=layout_gaussians)
        what = f"a {shape[0]}x{shape[1]} px layout" + (f" rendered as {frames} frames of {size[0]}x{size[1]}" if frames else "")
        check_memory(
            need,
            max_memory_gb,
            f"GaussianCityPipeline: {what}",
            self._execution_device,
            hint="crop the layout, render fewer or smaller frames",
        )

    @staticmethod
    def _frames_to_render(cameras, trajectory, num_frames, width, height, output_type) -> tuple[int, tuple[int, int]]:
        """How many frames of which size (width, height) a call renders; ``ValueError`` for a bad
        trajectory or frame size."""
        if cameras is None and trajectory is not None:
            if trajectory not in TRAJECTORIES:
                raise ValueError(f"trajectory must be one of {TRAJECTORIES}, got {trajectory!r}")
            for name, value in (("width", width), ("height", height), ("num_frames", num_frames)):
                if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                    raise ValueError(f"{name} must be a positive int, got {value!r}")
        if output_type == "gaussians" or (cameras is None and trajectory is None):
            return 0, (0, 0)
        if cameras is not None:
            # a bad type is named by _cameras
            return (len(cameras), (cameras.width, cameras.height)) if isinstance(cameras, Cameras) else (0, (0, 0))
        return num_frames, (width, height)

    def sample_styles(self, layout: BEVLayout, generator: torch.Generator | None = None) -> torch.Tensor:
        """A style table ``[I + 1, style_dim]`` drawn from the decoders' distribution (standard normal)."""
        return self.building_decoder.sample_styles(layout.num_instances + 1, generator, device="cpu")

    @staticmethod
    def edit_style(styles: torch.Tensor, instance_id: int, code: torch.Tensor) -> torch.Tensor:
        """A copy of ``styles`` with building ``instance_id``'s code replaced (local editing, App. B.1)."""
        if not 1 <= instance_id < styles.shape[0]:
            raise ValueError(f"instance_id must be in 1..{styles.shape[0] - 1}, got {instance_id}")
        if code.shape != styles.shape[1:]:
            raise ValueError(f"code must have shape [{styles.shape[1]}], got {list(code.shape)}")
        out = styles.clone()
        out[instance_id] = code.to(out)
        return out

    @staticmethod
    def interpolate_styles(
        layout: BEVLayout, styles: torch.Tensor, start: torch.Tensor, end: torch.Tensor, axis: str = "x"
    ) -> torch.Tensor:
        """A copy of ``styles`` whose building codes go linearly from ``start`` to ``end`` with the
        buildings' centre position along ``axis`` (``"x"``: columns, ``"y"``: rows), App. B.1."""
        if axis not in ("x", "y"):
            raise ValueError(f"axis must be 'x' or 'y', got {axis!r}")
        if start.shape != styles.shape[1:] or end.shape != styles.shape[1:]:
            raise ValueError(f"start and end must have shape [{styles.shape[1]}]")
        out = styles.clone()
        if layout.num_instances == 0:
            return out
        centre = layout.instance_centers()[1:, 0 if axis == "x" else 1]
        span = (centre.max() - centre.min()).clamp(min=1e-9)
        t = ((centre - centre.min()) / span).to(out.dtype)[:, None]
        out[1:] = (1 - t) * start.to(out) + t * end.to(out)
        return out

    def fit_styles(
        self,
        layout: BEVLayout,
        cameras: Cameras,
        images: torch.Tensor,
        masks: torch.Tensor | None = None,
        *,
        styles: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        num_steps: int = 100,
        learning_rate: float = 0.05,
        prior_weight: float = 1e-3,
    ) -> torch.Tensor:
        """The style table whose renders from ``cameras`` best match ``images`` (decoders frozen).

        Adam on the masked mean squared error of every view's render plus ``prior_weight`` x the
        codes' mean square (their standard-normal prior), starting from ``styles`` or from codes
        sampled with ``generator``. Codes of buildings no view shows barely move. Use it to give
        a layout the look of photos of its city, then render new views with ``styles=``.

        Args:
            layout: from ``prepare_layout``.
            cameras, images: the views, ``images [N, H, W, 3]`` in [0, 1] at the cameras' size.
            masks: ``[N, H, W]`` bool, the pixels to match (default: all).

        Raises:
            ValueError: naming the problem, before any work, for images or masks of the wrong
                shape or range, an empty mask, a style table of the wrong size or bad options.
        """
        masks = check_views(cameras, images, masks)
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps <= 0:
            raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")
        if not learning_rate > 0 or not prior_weight >= 0:
            raise ValueError(f"learning_rate must be > 0 and prior_weight >= 0, got {learning_rate!r}, {prior_weight!r}")
        start = self.sample_styles(layout, generator) if styles is None else self._check_styles(styles, layout)
        return fit_styles(self, layout, cameras, images, masks, start, num_steps, learning_rate, prior_weight)

    # -- decoding -------------------------------------------------------------------------
    def _scene_features(self, layout: BEVLayout, xy_layout: torch.Tensor) -> torch.Tensor:
        """Scene-encoder features at the points (layout-frame ``xy``), computed on the layout crop
        around them (on the points' device)."""
        mpp = layout.meters_per_pixel
        xy = xy_layout.double() / mpp
        margin = self.scene_encoder.receptive_margin
        step = 2**self.scene_encoder.config.num_down
        h, w = layout.shape
        lo, hi = torch.stack([xy.amin(0).floor() - margin, xy.amax(0).ceil() + margin]).long().tolist()
        c0, r0 = max(0, lo[0] // step * step), max(0, lo[1] // step * step)
        c1, r1 = min(w, hi[0]), min(h, hi[1])
        device = xy_layout.device
        sem = upload(layout.semantic[r0:r1, c0:c1][None], device)
        hgt = upload(layout.top[r0:r1, c0:c1][None], device).double() * mpp
        feats = self.scene_encoder(sem, hgt)
        local = xy - upload(torch.tensor([c0, r0], dtype=torch.float64), device)
        return BEVSceneEncoder.sample(feats, local, (r1 - r0, c1 - c0))

    def decode_points(
        self, layout: BEVLayout, points: BEVPoints, styles: torch.Tensor, device: torch.device | None = None
    ) -> Gaussians:
        """Layout-frame Gaussians of ``points``, row for row: background points through the background decoder
        with scene features and style row 0, building points through the building decoder, one
        batch item (and style row) per instance. Decoded on ``device`` (default: the pipeline's
        execution device, which model CPU offload moves components to; callers decoding many
        frames pass it once, as finding it walks the components)."""
        device = self._execution_device if device is None else device
        points = points.to(device)
        styles = styles.to(device)
        parts = []
        # Background rows first: one host sync splits the points, not one per part.
        is_building = points.instances > 0
        order = torch.argsort(is_building.to(torch.uint8), stable=True)
        num_bg = len(points) - int(is_building.sum())
        bg, bd = points.select(order[:num_bg]), points.select(order[num_bg:])
        if len(bg):
            feats = self._scene_features(layout, bg.positions[:, :2])
            zeros = torch.zeros(len(bg), dtype=torch.long, device=device)
            rgb = self.background_decoder(
                bg.positions, bg.relative, bg.voxels, bg.classes, zeros, styles[:1], scene_features=feats
            )
            parts.append(self.background_decoder.gaussians(bg.positions, bg.strides, bg.classes, rgb, layout.meters_per_pixel))
        if len(bd):
            # Batch item = instance id, over the whole style table: no per-frame unique (a host sync).
            decoder = self._graphed if self._use_graph(device) else self.building_decoder
            rgb = decoder(bd.positions, bd.relative, bd.voxels, bd.classes, bd.instances, styles)
            parts.append(self.building_decoder.gaussians(bd.positions, bd.strides, bd.classes, rgb, layout.meters_per_pixel))
        return _concat_gaussians(parts, device, rows=order)

    def decode_visible(
        self,
        layout: BEVLayout,
        cameras: Cameras,
        styles: torch.Tensor,
        device: torch.device | None = None,
        cache: ViewCache | None = None,
        ray_step: int = 1,
    ) -> list[Gaussians]:
        """Each camera's visible Gaussians (host layout-frame ``cameras``, frames of a trajectory;
        Gaussians in the layout frame), the points
        that any of them sees decoded together, once: the decoders see the union of the views as
        context, so the colours of a point agree across these frames, and the decoders run once
        for all of them. Visibility stops at the scene encoder's ``max_view_distance``; ``cache``
        keeps its tables across calls (:class:`~diffusers_city.models.gaussiancity.bev.ViewCache`)."""
        device = self._execution_device if device is None else device
        options = {
            "max_distance": float(self.scene_encoder.config.max_view_distance),
            "ray_step": ray_step,
            "device": device,
            "cache": cache,
        }
        points, rows = visible_bev_points_per_camera(layout, cameras, **options)
        gaussians = self.decode_points(layout, points, styles, device)
        return [gaussians] if len(rows) == 1 else [gaussians[r] for r in rows]

    def layout_gaussians(self, layout: BEVLayout, styles: torch.Tensor, tile: int = 512) -> Gaussians:
        """Layout-frame Gaussians of every BEV point of the layout, decoded tile by tile (bounded memory)."""
        device = self._execution_device
        h, w = layout.shape
        parts = []
        done = torch.zeros(layout.num_instances + 1, dtype=torch.bool)
        for r in range(0, h, tile):
            for c in range(0, w, tile):
                pts = bev_points(layout, window=(r, min(r + tile, h), c, min(c + tile, w)))
                # A building is decoded whole, with the tile holding its first pixel.
                ids = torch.unique(pts.instances[pts.instances > 0])
                new = ids[~done[ids]]
                done[new] = True
                keep = (pts.instances == 0) | torch.isin(pts.instances, new)
                pts = pts.select(keep)
                for inst in new.tolist():
                    pts = _append_instance(layout, pts, inst, (r, min(r + tile, h), c, min(c + tile, w)))
                if len(pts):
                    parts.append(self.decode_points(layout, pts, styles, device))
        return _concat_gaussians(parts, device)

    # -- checks ---------------------------------------------------------------------------
    def _check_styles(self, styles: Any, layout: BEVLayout) -> torch.Tensor:
        if not isinstance(styles, torch.Tensor):
            raise ValueError(f"styles must be a torch.Tensor [num_instances + 1, {self.style_dim}], got {type(styles).__name__}")
        expected = (layout.num_instances + 1, self.style_dim)
        if tuple(styles.shape) != expected:
            raise ValueError(
                f"styles must have shape [num_instances + 1, style_dim] = {list(expected)} "
                f"(row 0: background, rows 1..{layout.num_instances}: buildings), got {list(styles.shape)}"
            )
        if not styles.is_floating_point() or not bool(torch.isfinite(styles).all()):
            raise ValueError("styles must be a finite floating-point tensor")
        return styles.float().cpu()

    def _cameras(self, cameras, trajectory, layout, num_frames, width, height, scene) -> Cameras | None:
        """The layout-frame cameras of a call: world ``cameras`` moved into the layout frame, or the
        ``trajectory`` planned there (over the scene's maps, else the layout's): exact, where a
        path planned at georeferenced coordinates in float32 would be rounded to ~0.5 m."""
        if cameras is not None and trajectory is not None:
            raise ValueError("pass either cameras or trajectory, not both")
        if cameras is not None:
            if not isinstance(cameras, Cameras):
                raise ValueError(f"cameras must be a diffusers_city.render.Cameras, got {type(cameras).__name__}")
            return layout.layout_cameras(cameras)
        if trajectory is None:
            return None
        from ... import render

        mpp = layout.meters_per_pixel
        if scene is None:
            maps = {"height": layout.top.double().numpy() * mpp, "ground": layout.bottom.double().numpy() * mpp}
            maps["semantic"] = layout.semantic.numpy()
        else:
            maps = {k: getattr(scene, k, None) for k in ("height", "ground", "semantic")}
        frame = SimpleNamespace(**maps, meters_per_pixel=mpp, origin=(0.0, 0.0, 0.0))
        make = getattr(render, f"{trajectory}_trajectory")
        return make(frame, num_frames, width=width, height=height)

    def check_inputs(
        self,
        output_type: Any,
        return_gaussians: Any,
        decode_chunk_size: Any,
        background: Any,
        callback_on_step_end_tensor_inputs: Sequence[str] | None,
    ) -> list[str]:
        """``ValueError`` naming the first bad option, before any work; returns the callback's tensor names."""
        check_output_type(output_type, OUTPUT_TYPES, "GaussianCityPipeline")
        if return_gaussians not in (None, "visible", "layout"):
            raise ValueError(f"return_gaussians must be None, 'visible' or 'layout', got {return_gaussians!r}")
        check_positive_int("decode_chunk_size", decode_chunk_size)
        if background is not None:
            bg = torch.as_tensor(background, dtype=torch.float32)
            if bg.shape != (3,) or not bool(torch.isfinite(bg).all()):
                raise ValueError(f"background must be 3 finite values (RGB), got {background!r}")
        if self._graphed is not None and getattr(self.building_decoder, "_hf_hook", None) is not None:
            raise ValueError(
                "enable_cuda_graphs does not mix with enable_model_cpu_offload (its hooks move modules during a call)"
            )
        return check_callback_inputs(callback_on_step_end_tensor_inputs, self._callback_tensor_inputs, ["image"])

    # -- call -----------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        semantic_map: Any = None,
        height_map: Any = None,
        *,
        scene: Any = None,
        ground_map: Any = None,
        instance_map: Any = None,
        meters_per_pixel: float = 1.0,
        origin: Sequence[float] = (0.0, 0.0, 0.0),
        cameras: Cameras | None = None,
        trajectory: str | None = None,
        num_frames: int = 16,
        width: int = 256,
        height: int = 256,
        styles: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        output_type: str = "pil",
        return_gaussians: str | None = None,
        background: Sequence[float] | None = SKY,
        ray_step: int = 1,
        decode_chunk_size: int = 1,
        max_memory_gb: float | None = None,
        callback_on_step_end: Callable[[Any, int, None, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] | None = None,
        return_dict: bool = True,
    ) -> GaussianCityPipelineOutput | tuple:
        """Render a BEV layout.

        Args:
            semantic_map, height_map: ``[H, W]`` class ids and heights (metres); or ``scene``.
            scene: a ``CityScene`` (its semantic, height, ground, instance, mpp, origin).
            ground_map, instance_map, meters_per_pixel, origin: the rest of the layout.
            cameras: ``Cameras`` in world coordinates to render from (float64 ones keep their
                precision at georeferenced coordinates); or ``trajectory`` (``"orbit"``,
                ``"drone"``, ``"street"``) with ``num_frames``, ``width``, ``height``.
            styles: ``[num_instances + 1, style_dim]`` style table (``None``: sampled with ``generator``).
            output_type: ``"pil"``, ``"np"``, ``"pt"`` (frames) or ``"gaussians"`` (the whole
                layout's Gaussians, no frames; cameras optional).
            return_gaussians: also return ``"visible"`` (per frame) or ``"layout"`` Gaussians.
                Returned Gaussians are in world coordinates (float64 means away from origin 0).
            background: RGB fill of uncovered pixels (default :data:`SKY`, a light blue; ``None``: black).
            ray_step: visibility rays every ``ray_step`` pixels.
            decode_chunk_size: frames whose visible points are decoded together, once
                (:meth:`decode_visible`): 1 decodes every frame on its own as in the paper; more
                give colours that agree across a chunk's frames and run the decoders once per
                chunk (faster on a GPU), for memory that grows with the chunk's union of views.
            max_memory_gb: refuse (``MemoryLimitError``, a ``ValueError``, with the estimate) a call
                whose estimated peak memory exceeds this many GB (default: the memory available
                now, on the execution device).
            callback_on_step_end: called after each frame as ``fn(pipe, frame, None, kwargs)`` with
                ``kwargs["image"]`` the frame ``[H, W, 3]``; may return a dict replacing it. (One
                pass, no denoising steps: a frame is this pipeline's step.)
            callback_on_step_end_tensor_inputs: keys passed to the callback (``["image"]``).

        Raises:
            ValueError: naming the problem, before any work, for inconsistent maps, unknown
                classes, NaN or off-Earth heights, zero-size images, wrong style sizes, bad options
                or an estimated peak memory above ``max_memory_gb``.

        A warning names the frames whose cameras see no part of the layout (background only).
        """
        tensor_inputs = self.check_inputs(
            output_type, return_gaussians, decode_chunk_size, background, callback_on_step_end_tensor_inputs
        )
        if scene is not None:
            if semantic_map is not None or height_map is not None:
                raise ValueError("pass either scene or semantic_map/height_map, not both")
            if not all(hasattr(scene, k) for k in ("semantic", "height", "meters_per_pixel", "origin")):
                raise ValueError(
                    f"scene must be a CityScene (semantic, height, meters_per_pixel, origin), got {type(scene).__name__}"
                )
            semantic_map, height_map = scene.semantic, scene.height
            ground_map, instance_map = getattr(scene, "ground", None), getattr(scene, "instance", None)
            meters_per_pixel, origin = scene.meters_per_pixel, tuple(scene.origin)
        if semantic_map is None or height_map is None:
            raise ValueError("semantic_map and height_map (or scene) are required")
        frames, size = self._frames_to_render(cameras, trajectory, num_frames, width, height, output_type)
        layout_gaussians = output_type == "gaussians" or return_gaussians == "layout"
        self._check_memory(np.shape(semantic_map), frames, size, decode_chunk_size, layout_gaussians, max_memory_gb)
        layout = self.prepare_layout(semantic_map, height_map, ground_map, instance_map, meters_per_pixel, origin)
        cams = self._cameras(cameras, trajectory, layout, num_frames, width, height, scene)
        if cams is None and output_type != "gaussians":
            raise ValueError("rendering frames needs cameras or a trajectory (or use output_type='gaussians')")
        styles = self.sample_styles(layout, generator) if styles is None else self._check_styles(styles, layout)
        bg = None if background is None else torch.as_tensor(background, dtype=torch.float32)

        device = self._execution_device
        layout_g = layout.world_gaussians(self.layout_gaussians(layout, styles)) if layout_gaussians else None
        frames, visible = [], []
        if output_type != "gaussians":
            # Visibility reads the host cameras (no device sync), the rasterizer the device ones.
            host_cams, cams = cams.to("cpu"), cams.to(device)
            device_styles = styles.to(device)
            fill = None if bg is None else bg.to(device)
            views = ViewCache(layout, device)
            blind = []
            with progress_bar(self, "gaussiancity frames", total=len(cams)) as progress:
                for start in range(0, len(cams), decode_chunk_size):
                    chunk = range(start, min(start + decode_chunk_size, len(cams)))
                    decoded = self.decode_visible(layout, host_cams[start : chunk.stop], device_styles, device, views, ray_step)
                    for i, g in zip(chunk, decoded):
                        if len(g) == 0:
                            blind.append(i)
                        image = render_gaussians(g, cams[i], background=fill).rgb[0].clamp(0, 1)
                        if callback_on_step_end is not None:
                            local = {"image": image}
                            out = callback_on_step_end(self, i, None, {k: local[k] for k in tensor_inputs})
                            image = (out or {}).get("image", image)
                        frames.append(image)
                        if return_gaussians == "visible":
                            visible.append(layout.world_gaussians(g))
                        progress.update()
            _warn_blind_cameras(blind, len(cams))
        images = frames_to_output(torch.stack(frames), output_type) if frames else None
        gaussians = visible if return_gaussians == "visible" else layout_g
        if not return_dict:
            return images, gaussians, styles, layout
        return GaussianCityPipelineOutput(images=images, gaussians=gaussians, styles=styles, layout=layout)


def _warn_blind_cameras(blind: list[int], num_frames: int) -> None:
    """Warn about frames that show no part of the layout: a camera behind, below or beyond it."""
    if blind:
        shown = ", ".join(map(str, blind[:8])) + (", ..." if len(blind) > 8 else "")
        logger.warning(
            f"{len(blind)} of {num_frames} cameras see no part of the layout (frames {shown}): "
            "those frames show only the background; check the cameras' positions and directions"
        )


def _append_instance(layout: BEVLayout, pts: BEVPoints, inst: int, window: tuple[int, int, int, int]) -> BEVPoints:
    """``pts`` plus the points of building ``inst`` lying outside ``window``."""
    rows, cols = torch.nonzero(layout.instance == inst, as_tuple=True)
    r0, r1, c0, c1 = window
    if int(rows.min()) >= r0 and int(rows.max()) < r1 and int(cols.min()) >= c0 and int(cols.max()) < c1:
        return pts
    full = bev_points(layout, window=(int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1))
    vx, vy = full.voxels[:, 0], full.voxels[:, 1]
    outside = (vy < r0) | (vy >= r1) | (vx < c0) | (vx >= c1)
    return BEVPoints.cat([pts, full.select((full.instances == inst) & outside)])
