"""Sat2City demo: the shipped default pipeline on the shipped example height map (CPU-friendly)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ...export.mesh import write_mesh
from ...export.ply import write_point_ply
from ...export.preview import captioned, grid, raster_image, write_image, write_orbit, write_preview
from ...presets import bundled_path
from ...render import render_points_preview
from .pipeline_output import Sat2CityPipelineOutput
from .pipeline_sat2city import Sat2CityPipeline, load_height_map

DEMO_STEPS = 50  # the pipeline's default, a constant so that tests can shorten the demo
EXAMPLE = ("sat2city", "examples", "height_map.png")
ORBIT_FRAMES = 24
ORBIT_SIZE = (480, 360)
PANEL_SIZE = (800, 640)  # the oblique render of input_output.png; the height map is PANEL_SIZE[1] square


def write_city(output: Sat2CityPipelineOutput, out_dir: Path, stem: str = "city") -> list[Path]:
    """Write ``<stem>.ply`` (points, colours, normals), ``<stem>.glb`` (mesh) and ``<stem>_preview.png``."""
    if output.points is None or len(output.points) == 0:
        raise ValueError("the pipeline produced no voxels: nothing to write")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"output folder {out_dir} exists and is not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    colors = output.colors.clip(0, 1)
    paths = [write_point_ply(out_dir / f"{stem}.ply", output.points, colors, output.normals, crs=output.crs)]
    if output.mesh is not None:
        paths.append(write_mesh(out_dir / f"{stem}.glb", output.mesh, crs=output.crs))
    paths.append(write_preview(out_dir / f"{stem}_preview.png", output.points, colors))
    return paths


def stretched(height: np.ndarray) -> np.ndarray:
    """A height raster in 0..1, its 1st..99th percentile stretched to the whole range."""
    lo, hi = np.percentile(height, [1, 99])
    return np.clip((height - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0)


def write_pictures(
    output: Sat2CityPipelineOutput, height_map, out_dir: Path, *, steps: int, meters_per_pixel: float | None = None
) -> list[Path]:
    """``orbit.gif`` (point renders turning once around the city) and ``input_output.png``: the
    input height map (any input :func:`load_height_map` reads, at ``meters_per_pixel`` as the
    pipeline read it) beside a large oblique render of the city from the same side."""
    colors = output.colors.clip(0, 1)
    width, height = ORBIT_SIZE
    orbit = write_orbit(Path(out_dir) / "orbit.gif", output.points, colors, num_frames=ORBIT_FRAMES, width=width, height=height)
    heights = load_height_map(height_map, meters_per_pixel, (0.0, 1.0), 1.0).height  # z scale: undone by the stretch
    city = render_points_preview(output.points, colors, "oblique", *PANEL_SIZE, azimuth_deg=-90.0)
    sheet = grid(
        [
            captioned(
                raster_image(stretched(heights), (PANEL_SIZE[1],) * 2),
                f"input: height map, {heights.shape[1]}x{heights.shape[0]} px, north up (contrast stretched)",
                20,
            ),
            captioned(city, f"output: {len(output.points):,} coloured voxels from the south ({steps} steps/stage)", 20),
        ],
        2,
    )
    return [orbit, write_image(Path(out_dir) / "input_output.png", sheet)]


APP_INPUTS = {"shipped example height map": EXAMPLE}
"""Example inputs of ``diffusers-city app`` (label -> bundled path parts)."""
APP_UPLOAD_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".ply", ".las", ".laz")
APP_SETTINGS = {"steps": DEMO_STEPS, "guidance": None}
"""Settings ``generate`` takes, with their defaults (None: the shipped pipeline's own)."""


def load_pipeline(device: str) -> Sat2CityPipeline:
    """The shipped default pipeline on ``device``."""
    model = bundled_path("sat2city", "default")
    if not (model / "model_index.json").is_file():
        raise FileNotFoundError(f"no shipped Sat2City weights at {model}")
    return Sat2CityPipeline.from_pretrained(model, dtype=torch.float32).to(device)


def generate(
    pipe: Sat2CityPipeline,
    height_map: Path,
    out_dir: Path,
    *,
    seed: int = 0,
    steps: int = DEMO_STEPS,
    guidance: float | None = None,
) -> list[Path]:
    """A city from the height map file ``height_map`` (a ``<name>.json`` beside it may give the metres
    of gray 0 / 255 and the metres per pixel), written by :func:`write_city`."""
    if not Path(height_map).is_file():
        raise FileNotFoundError(f"no height map at {height_map}")
    meta_path = Path(height_map).with_suffix(".json")
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    output = pipe(
        height_map,
        num_inference_steps=steps,
        generator=torch.Generator("cpu").manual_seed(seed),
        output_type="mesh",
        meters_per_pixel=meta.get("meters_per_pixel"),
        height_range=meta.get("height_range"),
        guidance_scale=guidance,
    )
    paths = write_city(output, out_dir)
    return paths + write_pictures(output, height_map, out_dir, steps=steps, meters_per_pixel=meta.get("meters_per_pixel"))


def run_demo(out_dir: Path, device: str) -> list[Path]:
    """Generate a city from ``pipelines/sat2city/examples/height_map.png`` with the shipped default,
    with the pipeline's own default settings (the shipped model stores its measured best ones)."""
    return generate(load_pipeline(device), bundled_path(*EXAMPLE), out_dir, steps=DEMO_STEPS)
