"""EarthCrafter demo: a coloured 3D tile from the shipped held-out semantic map, with the shipped
default; also the tile writer of ``diffusers-city generate earthcrafter``."""

from __future__ import annotations

from pathlib import Path

import torch

from ...presets import bundled_path
from .pipeline_earthcrafter import EarthCrafterPipeline
from .pipeline_output import EarthCrafterPipelineOutput

__all__ = ["APP_INPUTS", "APP_SETTINGS", "APP_UPLOAD_SUFFIXES", "generate", "load_pipeline", "run_demo", "write_tile"]

EXAMPLE = ("earthcrafter", "examples", "semantic_map.png")
"""A held-out procedural semantic map (validation split, tile 0 of the small preset), class ids as gray."""
DEMO_STEPS = 25  # the pipeline's default, a constant so that tests can shorten the demo
DEMO_FRAMES = 24
DEMO_SIZE = (384, 384)
FRAME_SIZE = (800, 600)  # the rendered frame of input_output.png; the semantic map is FRAME_SIZE[1] square

APP_INPUTS = {"shipped example semantic map": EXAMPLE}
APP_UPLOAD_SUFFIXES = (".png", ".npy")
APP_SETTINGS: dict[str, int | float | None] = {"steps": DEMO_STEPS, "guidance": None}


def write_tile(
    pipe: EarthCrafterPipeline,
    output: EarthCrafterPipelineOutput,
    out_dir: Path,
    *,
    frames: int = DEMO_FRAMES,
    size: tuple[int, int] = DEMO_SIZE,
    video: str = "gif",
    fps: float = 12.0,
    semantic_map=None,
) -> list[Path]:
    """Write ``tile.ply`` (3DGS layout, each 2D Gaussian flat), ``tile_points.ply``, ``tile.glb`` (when
    the output has a mesh) and ``orbit.<video>`` (an orbit of ``frames`` renders) into ``out_dir``;
    with the tile's ``semantic_map`` (anything the pipeline takes) also ``input_output.png``."""
    from ...export.mesh import write_mesh
    from ...export.ply import write_point_ply
    from ...export.splat import write_gaussian_ply
    from ...export.video import write_video
    from ..pipeline_utils import frames_to_output

    g = output.gaussians
    if len(g) == 0:
        raise ValueError("the pipeline generated an empty tile: nothing to write")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    width, height = size
    orbit = pipe.render_orbit(g.to(pipe.device), output.voxels.to(pipe.device), frames, width, height)
    crs = output.crs
    paths = [
        write_gaussian_ply(
            out_dir / "tile.ply",
            g.means.numpy(),
            g.colors.clamp(0, 1).numpy(),
            g.scales.clamp_min(1e-8).numpy(),
            g.opacities.numpy(),
            g.quats.numpy(),
            crs=crs,
        ),
        write_point_ply(out_dir / "tile_points.ply", output.points, output.colors, crs=crs),
    ]
    if output.mesh is not None:
        paths.append(write_mesh(out_dir / "tile.glb", output.mesh, crs=crs))
    paths.append(write_video(out_dir / f"orbit.{video}", frames_to_output(orbit, "np"), fps=fps))
    if semantic_map is not None:
        paths.append(write_input_output(pipe, output, semantic_map, out_dir / "input_output.png"))
    return paths


def write_input_output(pipe: EarthCrafterPipeline, output: EarthCrafterPipelineOutput, semantic_map, path: Path) -> Path:
    """The semantic map's classes (north up; a ``CityScene``'s own) beside one ``FRAME_SIZE`` render
    of the tile (the orbit's first camera)."""
    from ...data import semantic_to_rgb
    from ...export.preview import captioned, grid, raster_image, write_image
    from ..pipeline_utils import frames_to_output

    classes = pipe._semantic_tensor(getattr(semantic_map, "semantic", semantic_map))[0].numpy()
    width, height = FRAME_SIZE
    frame = pipe.render_orbit(output.gaussians.to(pipe.device), output.voxels.to(pipe.device), 1, width, height)
    size = pipe.resolution * pipe.voxel_size
    tiles = [
        captioned(raster_image(semantic_to_rgb(classes), (height, height)), f"input: semantic map, {size:g} m, north up", 20),
        captioned(frames_to_output(frame, "pil")[0], f"output: the generated tile, {width}x{height}", 20),
    ]
    return write_image(path, grid(tiles, 2))


def load_pipeline(device: str) -> EarthCrafterPipeline:
    """The shipped default pipeline (``pipelines/earthcrafter/default/``) on ``device``, in fp32."""
    folder = bundled_path("earthcrafter", "default")
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(f"no shipped EarthCrafter pipeline at {folder}")
    return EarthCrafterPipeline.from_pretrained(folder, dtype=torch.float32).to(device)


def generate(
    pipe: EarthCrafterPipeline,
    semantic_map: Path,
    out_dir: Path,
    *,
    seed: int = 0,
    steps: int = DEMO_STEPS,
    guidance: float | None = None,
) -> list[Path]:
    """A tile from the semantic map file ``semantic_map`` (PNG of class ids or ``.npy``), written by
    :func:`write_tile`; ``guidance`` ``None`` is the pipeline's default."""
    output = pipe(
        semantic_map,
        num_inference_steps=steps,
        **({} if guidance is None else {"guidance_scale": guidance}),
        generator=torch.Generator("cpu").manual_seed(seed),
        output_type="mesh",
    )
    return write_tile(pipe, output, out_dir, semantic_map=semantic_map)


def run_demo(out_dir: Path, device: str) -> list[Path]:
    """:func:`generate` on the shipped held-out semantic map with the shipped default and the
    pipeline's default settings."""
    return generate(load_pipeline(device), bundled_path(*EXAMPLE), out_dir)
