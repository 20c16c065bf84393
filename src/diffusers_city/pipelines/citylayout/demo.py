"""CityLayout demo: a 1 km² layout generated from nothing by the shipped default, with a large
picture of its classes and heights, rendered by the shipped GaussianCity default as the
GaussianCity demo renders its example layout. The app also outpaints an uploaded (or the GaussianCity example)
layout into a larger area."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ...presets import bundled_path
from .pipeline_citylayout import CityLayoutPipeline
from .pipeline_citylayout_gaussiancity import CityLayoutGaussianCityPipeline

__all__ = [
    "APP_INPUTS",
    "APP_SETTINGS",
    "APP_UPLOAD_SUFFIXES",
    "DEMO_SIZE_M",
    "generate",
    "load_pipeline",
    "outpaint_canvas",
    "run_demo",
    "write_layout_preview",
]

DEMO_SIZE_M = 1000.0  # a 1 km x 1 km layout
DEMO_STEPS = 16
PREVIEW_PX = 600  # side of each panel of layout.png

APP_INPUTS = {"outpaint the GaussianCity example layout": ("gaussiancity", "example_layout")}
"""Example inputs of ``diffusers-city app``: scene folders, outpainted to a square twice their size."""
APP_UPLOAD_SUFFIXES = (".zip",)
APP_SETTINGS: dict[str, int | float | None] = {"steps": DEMO_STEPS}


def load_pipeline(device: str) -> CityLayoutGaussianCityPipeline:
    """The shipped CityLayout default (``pipelines/citylayout/default/``) chained into the shipped
    GaussianCity default, on ``device``, in fp32."""
    from ..gaussiancity.demo import load_pipeline as load_gaussiancity

    folder = bundled_path("citylayout", "default")
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(f"no shipped CityLayout pipeline at {folder}")
    layout = CityLayoutPipeline.from_pretrained(folder, dtype=torch.float32).to(device)
    return CityLayoutGaussianCityPipeline.from_pipes(layout, load_gaussiancity(device))


def write_layout_preview(scene, path: Path) -> Path:
    """The layout's classes beside its heights (grey, 0 m black to the 99th percentile white),
    ``PREVIEW_PX`` square each, north up."""
    from ...data import semantic_to_rgb
    from ...export.preview import captioned, grid, raster_image, write_image

    rows, cols = scene.shape
    size = (PREVIEW_PX, round(PREVIEW_PX * rows / cols))
    top = max(1.0, float(np.percentile(scene.height, 99)))
    w, h = scene.size_m
    tiles = [
        captioned(raster_image(semantic_to_rgb(scene.semantic), size), f"classes, {w:g} x {h:g} m, north up", 18),
        captioned(raster_image(np.clip(scene.height / top, 0, 1), size), f"heights, 0 (black) to {top:.0f} m (white)", 18),
    ]
    return write_image(path, grid(tiles, 2))


def outpaint_canvas(scene, factor: int = 2):
    """A square canvas ``factor`` times the scene's larger side with the scene in its centre, and
    the mask (True where the layout is generated) that outpaints around it."""
    from ...data import CityScene

    rows, cols = scene.shape
    side = factor * max(rows, cols)
    r0, c0 = (side - rows) // 2, (side - cols) // 2
    semantic = np.zeros((side, side), np.uint8)
    height = np.zeros((side, side), np.float32)
    mask = np.ones((side, side), bool)
    semantic[r0 : r0 + rows, c0 : c0 + cols] = scene.semantic
    height[r0 : r0 + rows, c0 : c0 + cols] = scene.height
    mask[r0 : r0 + rows, c0 : c0 + cols] = False
    mpp = scene.meters_per_pixel
    origin = (scene.origin[0] - c0 * mpp, scene.origin[1] - r0 * mpp, scene.origin[2])
    return CityScene(height, semantic, mpp, origin=origin, crs=scene.crs), mask


def generate(
    pipeline: CityLayoutGaussianCityPipeline,
    source: Path | None,
    out_dir: Path,
    *,
    seed: int = 0,
    steps: int = DEMO_STEPS,
    size_m: float = DEMO_SIZE_M,
) -> list[Path]:
    """A layout -- ``size_m`` square from nothing when ``source`` is None, else the scene folder
    ``source`` outpainted (:func:`outpaint_canvas`) -- written under ``out_dir`` as ``layout/`` (the
    scene folder) and ``layout.png``, then rendered by the GaussianCity demo's
    :func:`~diffusers_city.pipelines.gaussiancity.demo.generate` (``orbit.gif``, ``frame_000.png``,
    ``input_output.png``, ``city.ply``)."""
    from ...data import CityScene
    from ..gaussiancity.demo import generate as render_city

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if source is None:
        area = {"width_m": size_m, "height_m": size_m}
    else:
        canvas, mask = outpaint_canvas(CityScene.load(source))
        area = {"scene": canvas, "mask": mask}
    generator = torch.Generator().manual_seed(seed)
    scene = pipeline.layout_pipe(**area, num_inference_steps=steps, generator=generator).scene
    paths = [scene.save(out_dir / "layout"), write_layout_preview(scene, out_dir / "layout.png")]
    return paths + render_city(pipeline.city_pipe, scene, out_dir, seed=seed)


def run_demo(out_dir: Path, device: str, pipeline: CityLayoutGaussianCityPipeline | None = None, seed: int = 0) -> list[Path]:
    """:func:`generate` from nothing with ``pipeline``, by default the shipped defaults chained."""
    pipeline = load_pipeline(device) if pipeline is None else pipeline.to(device)
    return generate(pipeline, None, out_dir, seed=seed)
