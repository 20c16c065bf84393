"""GaussianCity demo: an orbit GIF of the shipped example layout rendered by the shipped pipeline,
and the layout's classes beside one large rendered frame."""

from __future__ import annotations

from pathlib import Path

import torch

from ...presets import bundled_path
from .pipeline_gaussiancity import GaussianCityPipeline

__all__ = ["DEMO_FRAMES", "DEMO_SIZE", "FRAME_SIZE", "example_scene", "generate", "load_pipeline", "run_demo"]

DEMO_SIZE = (320, 240)
DEMO_FRAMES = 24
FRAME_SIZE = (800, 600)  # the rendered frame of input_output.png; the semantic map is FRAME_SIZE[1] square


def example_scene():
    """The shipped example layout (``pipelines/gaussiancity/example_layout/``), else procedural city 7."""
    from ...data import CityScene, procedural_city

    folder = bundled_path("gaussiancity", "example_layout")
    if (folder / "scene.json").is_file():
        return CityScene.load(folder)
    return procedural_city(7, size_m=192.0, meters_per_pixel=1.0, with_points=False, with_image=False)


APP_INPUTS = {"shipped example layout": ("gaussiancity", "example_layout")}
"""Example inputs of ``diffusers-city app`` (label -> bundled path parts): scene folders."""
APP_UPLOAD_SUFFIXES = (".zip",)
APP_SETTINGS: dict[str, int | float | None] = {}
"""Settings ``generate`` takes besides ``seed`` (none: the style codes are sampled from the seed)."""


def load_pipeline(device: str) -> GaussianCityPipeline:
    """The shipped default pipeline (``pipelines/gaussiancity/default/``) on ``device``."""
    folder = bundled_path("gaussiancity", "default")
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(f"no shipped GaussianCity pipeline at {folder}")
    return GaussianCityPipeline.from_pretrained(folder).to(device)


def generate(pipeline: GaussianCityPipeline, scene, out_dir: Path, *, seed: int = 0) -> list[Path]:
    """Render ``DEMO_FRAMES`` orbit frames of ``scene`` (a ``CityScene`` or its folder) at ``DEMO_SIZE``
    and write ``orbit.gif``, the first frame, ``input_output.png`` (:func:`write_input_output`) and
    the layout's Gaussians (``city.ply``) under ``out_dir``."""
    from ...data import CityScene
    from ...export.atomic import atomic_write
    from ...export.splat import write_gaussian_ply
    from ...export.video import write_video

    if not isinstance(scene, CityScene):
        scene = CityScene.load(scene)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    width, height = DEMO_SIZE
    out = pipeline(
        scene=scene,
        trajectory="orbit",
        num_frames=DEMO_FRAMES,
        width=width,
        height=height,
        generator=torch.Generator().manual_seed(seed),
        output_type="pil",
        return_gaussians="layout",
    )
    g = out.gaussians.to("cpu")
    paths = [write_video(out_dir / "orbit.gif", out.images, fps=8)]
    first = out_dir / "frame_000.png"
    with atomic_write(first) as tmp:
        out.images[0].save(tmp)
    paths.append(first)
    paths.append(write_input_output(pipeline, scene, out_dir / "input_output.png", out.styles))
    paths.append(
        write_gaussian_ply(
            out_dir / "city.ply",
            g.means.numpy(),
            g.colors.numpy(),
            g.scales.numpy(),
            g.opacities.numpy(),
            g.quats.numpy(),
            sh_degree=0,
        )
    )
    return paths


def write_input_output(pipeline: GaussianCityPipeline, scene, path: Path, styles) -> Path:
    """The layout's classes (north up) beside one ``FRAME_SIZE`` frame rendered with ``styles`` by an
    orbit camera south of the centre, so that both show north up. The scene is rendered at origin 0
    (the same frame: the pipeline renders in the layout's frame) so that the camera is exact in float32."""
    from ...data import semantic_to_rgb
    from ...export.preview import captioned, grid, raster_image, write_image
    from ...render import orbit_trajectory

    local = scene.replace(origin=(0.0, 0.0, 0.0))
    width, height = FRAME_SIZE
    camera = orbit_trajectory(local, 1, start_deg=-90.0, width=width, height=height)
    frame = pipeline(scene=local, cameras=camera, styles=styles, output_type="pil").images[0]
    rows, cols = scene.semantic.shape
    tiles = [
        captioned(
            raster_image(semantic_to_rgb(scene.semantic), (height, height)),
            f"input: layout classes, {cols}x{rows} px, north up",
            20,
        ),
        captioned(frame, f"output: a {width}x{height} frame, camera south of the centre", 20),
    ]
    return write_image(path, grid(tiles, 2))


def run_demo(out_dir: Path, device: str, pipeline: GaussianCityPipeline | None = None, seed: int = 0) -> list[Path]:
    """:func:`generate` on the example layout (:func:`example_scene`) with ``pipeline``, by default
    the shipped ``pipelines/gaussiancity/default/``."""
    pipeline = load_pipeline(device) if pipeline is None else pipeline.to(device)
    return generate(pipeline, example_scene(), out_dir, seed=seed)
