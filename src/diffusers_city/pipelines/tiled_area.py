"""Generation of a whole area, tile by tile, into a folder (shared by every pipeline, knows no paper).

The folder (``index.json`` describes it, a user opens it):

- ``run.json``: the run's manifest (pipeline, hash of the inputs, settings); a folder holding
  another run is refused, the same run resumes;
- ``tiles/<tile>.ply`` (points, colours, normals, class ids when the pipeline classifies them,
  world coordinates with the PLY georeference comments), ``tiles/<tile>.glb`` (a mesh of the
  points' voxels, filled down to the tile's lowest voxel, z up, vertices relative to the index's
  ``origin``, recorded with the CRS in ``<tile>.glb.geo.json``), ``tiles/<tile>.splat.ply`` (3DGS
  layout, pipelines that make Gaussians), each cut to the part of the area the tile owns, so the
  tiles partition the area; ``tiles/<tile>.latents.safetensors``
  (what overlapping tiles are conditioned on) and ``tiles/<tile>.json`` (its record, written last:
  a tile is done when it exists);
- ``index.json``: every tile's file names, owned bounds and point count, the CRS (or the note
  that the frame is local), where the points' classes come from (``classes_from``, ``null``
  when unclassified) and the merged outputs asked for (`merge`; LAS / LAZ carry the classes).

Memory is one tile's plus the input raster, whatever the area; tiles of one wave are split
between the processes of ``accelerate launch`` (``PartialState.split_between_processes``); the
output folder must be shared between hosts. Every tile's seed derives from the run's seed and
the tile's index, so 1 or N processes, fresh or resumed, give the same tiles.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers.utils import BaseOutput
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..data.scene import CityScene
from ..export.atomic import atomic_write, write_text_atomic
from ..export.mesh import mesh_from_points, write_mesh
from ..export.ply import write_point_ply
from ..export.splat import write_gaussian_ply
from ..utils.memory import check_memory
from .tiling import Tile, TileLatents, TilePlan, plan_tiles

__all__ = [
    "AreaOutput",
    "MERGE_FORMATS",
    "area_inputs_hash",
    "check_merge_formats",
    "generate_area",
    "merge_area",
    "run_manifest",
    "tile_scene",
]

RUN_FORMAT = "diffusers-city-area-run"
INDEX_FORMAT = "diffusers-city-area"
MERGE_FORMATS = ("ply", "las", "laz", "3dtiles")
_BYTES_PER_POINT = 64  # a point with colour and normal in float32 / float64 copies while it is cut and written


@dataclass
class AreaOutput(BaseOutput):
    """A generated area: its folder, ``index.json`` and the tiles' records in grid order."""

    folder: Path
    index: Path
    tiles: list[dict]


def area_inputs_hash(scene: CityScene) -> str:
    """SHA-256 of what a tiled run reads from the area: its rasters and georeference."""
    digest = hashlib.sha256()
    for array in (scene.height, scene.semantic):
        digest.update(str(array.shape).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    digest.update(json.dumps([scene.meters_per_pixel, scene.origin, scene.crs]).encode())
    return digest.hexdigest()


def tile_scene(scene: CityScene, tile: Tile) -> CityScene:
    """The tile's window of the area (edge-padded beyond the area's far sides), in world coordinates."""
    H, W = scene.shape
    rows = np.clip(np.arange(tile.r0, tile.r0 + tile.size), 0, H - 1)
    cols = np.clip(np.arange(tile.c0, tile.c0 + tile.size), 0, W - 1)
    window = np.ix_(rows, cols)
    mpp = scene.meters_per_pixel
    ox, oy, oz = scene.origin
    return CityScene(
        height=scene.height[window],
        semantic=scene.semantic[window],
        meters_per_pixel=mpp,
        origin=(ox + tile.c0 * mpp, oy + tile.r0 * mpp, oz),
        ground=None if scene.ground is None else scene.ground[window],
        instance=np.zeros((tile.size, tile.size), np.int32),  # not used by the generators; labelling costs
        crs=scene.crs,
    )


def _owned_bounds(scene: CityScene, tile: Tile) -> list[float]:
    """World ``[xmin, ymin, xmax, ymax]`` of the pixels ``tile`` owns."""
    r_lo, r_hi, c_lo, c_hi = tile.own
    mpp, (ox, oy, _) = scene.meters_per_pixel, scene.origin
    return [ox + c_lo * mpp, oy + r_lo * mpp, ox + c_hi * mpp, oy + r_hi * mpp]


def _inside(xy: np.ndarray, bounds: Sequence[float]) -> np.ndarray:
    return (xy[:, 0] >= bounds[0]) & (xy[:, 0] < bounds[2]) & (xy[:, 1] >= bounds[1]) & (xy[:, 1] < bounds[3])


def _check_folder(folder: Path, manifest: dict) -> bool:
    """Whether ``folder`` resumes the run of ``manifest`` (``ValueError`` when it holds anything else)."""
    if not folder.exists():
        return False
    if not folder.is_dir():
        raise ValueError(f"output folder {folder} exists and is not a folder")
    entries = [p.name for p in folder.iterdir()]
    if not entries:
        return False
    run = folder / "run.json"
    if not run.is_file():
        raise ValueError(f"output folder {folder} holds other files ({', '.join(sorted(entries)[:5])}); choose a new folder")
    try:
        previous = json.loads(run.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"output folder {folder}: its run.json is unreadable ({err}); choose a new folder") from None
    if previous != manifest:
        changed = sorted(k for k in set(previous) | set(manifest) if previous.get(k) != manifest.get(k))
        raise ValueError(
            f"output folder {folder} holds another run (different {', '.join(changed)}); "
            "only the same inputs and settings resume there: choose a new folder"
        )
    return True


def _done(folder: Path, tile: Tile) -> dict | None:
    record = folder / "tiles" / f"{tile.name}.json"
    return json.loads(record.read_text()) if record.is_file() else None


def _known(folder: Path, plan: TilePlan, tile: Tile) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The latents of ``tile``'s finished neighbours, per stage (earlier waves first)."""
    parts: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    for other in sorted(plan.neighbours(tile), key=lambda t: (t.wave, t.row, t.col)):
        saved = load_file(folder / "tiles" / f"{other.name}.latents.safetensors")
        for key in saved:
            if key.endswith(".cells"):
                stage = key[: -len(".cells")]
                parts.setdefault(stage, []).append((saved[key], saved[f"{stage}.latents"]))
    return {s: (torch.cat([c for c, _ in p]), torch.cat([v for _, v in p])) for s, p in parts.items()}


def _write_tile(folder: Path, scene: CityScene, tile: Tile, output: Any, latents: TileLatents, classify: Callable | None) -> dict:
    """The tile's files, cut to its owned bounds; the record last."""
    bounds = _owned_bounds(scene, tile)
    tiles = folder / "tiles"
    files = {}
    points = np.asarray(output.points, dtype=np.float64).reshape(-1, 3)
    keep = _inside(points, bounds)
    normals = getattr(output, "normals", None)
    if keep.any():  # an empty tile (open ground the model left bare) has no files
        points, colors = points[keep], np.asarray(output.colors)[keep].clip(0, 1)
        normals = None if normals is None else np.asarray(normals)[keep]
        classes = None if classify is None else classify(points, normals)
        files["ply"] = write_point_ply(
            tiles / f"{tile.name}.ply", points, colors, normals, classes, crs=scene.crs, offset=scene.origin
        ).name
        mesh = mesh_from_points(points, colors, float(output.voxel_size))
        files["glb"] = write_mesh(tiles / f"{tile.name}.glb", mesh, crs=scene.crs, offset=scene.origin).name
    gaussians = getattr(output, "gaussians", None)
    inside = None if gaussians is None else torch.from_numpy(_inside(gaussians.means.double().numpy(), bounds))
    if inside is not None and bool(inside.any()):
        g = gaussians[inside]
        files["splat"] = write_gaussian_ply(
            tiles / f"{tile.name}.splat.ply",
            g.means.numpy(),
            g.colors.clamp(0, 1).numpy(),
            g.scales.clamp_min(1e-8).numpy(),
            g.opacities.numpy(),
            g.quats.numpy(),
            crs=scene.crs,
        ).name
    tensors = {}
    for stage, (cells, values) in latents.recorded.items():
        tensors[f"{stage}.cells"], tensors[f"{stage}.latents"] = cells.contiguous(), values.contiguous()
    with atomic_write(tiles / f"{tile.name}.latents.safetensors") as tmp:
        save_file(tensors, str(tmp))
    record = {"name": tile.name, "row": tile.row, "col": tile.col, "bounds": bounds, "points": int(keep.sum()), "files": files}
    write_text_atomic(tiles / f"{tile.name}.json", json.dumps(record, indent=1))
    return record


def _check_resources(
    scene: CityScene, plan: TilePlan, tile_bytes: int, folder: Path, max_memory_gb: float | None, device: Any
) -> None:
    """Refuse, before any work, an area whose one-tile memory or whose files do not fit this machine."""
    points = plan.tile * plan.tile * 4  # ~4 surface points per column, as the pipelines' own estimates
    raster = scene.height.nbytes + scene.semantic.nbytes + (0 if scene.ground is None else scene.ground.nbytes)
    what = f"area of {scene.shape[0]}x{scene.shape[1]} px in {len(plan.tiles())} tiles of {plan.tile} px"
    check_memory(tile_bytes, max_memory_gb, f"{what} (one tile)", device, hint="use a smaller model preset")
    check_memory(raster + points * _BYTES_PER_POINT * 9, max_memory_gb, f"{what} (the raster and a tile's neighbours)", None)
    disk = len(plan.tiles()) * points * _BYTES_PER_POINT
    parent = folder if folder.exists() else folder.absolute().parent
    while not parent.exists():
        parent = parent.parent
    free = shutil.disk_usage(parent).free
    if disk > free:
        raise ValueError(f"{what}: its tiles need about {disk / 1e9:.3g} GB of disk, {parent} has {free / 1e9:.3g} GB free")


def run_manifest(pipeline: Any, **settings: Any) -> dict:
    """The ``manifest`` of a run of ``pipeline``: its class, weights and scheduler, plus ``settings``
    (what must match for a rerun to resume the same run)."""
    return {
        "pipeline": type(pipeline).__name__,
        "model": str(pipeline.name_or_path),
        "scheduler": type(pipeline.scheduler).__name__,
        **settings,
    }


def generate_area(
    scene: CityScene,
    folder: str | Path,
    call_tile: Callable[[CityScene, TileLatents, torch.Generator], Any],
    *,
    tile_px: int,
    overlap_px: int,
    align_px: int,
    anchor_z: float,
    manifest: dict,
    seed: int = 0,
    inpaint: bool = True,
    tile_bytes: int = 0,
    max_memory_gb: float | None = None,
    device: Any = None,
    classify: Callable[[np.ndarray, np.ndarray | None], np.ndarray] | None = None,
    classes_from: str | None = None,
    callback_on_tile_end: Callable[[Tile, dict], None] | None = None,
) -> AreaOutput:
    """Generate ``scene`` tile by tile into ``folder`` (see the module docstring).

    ``call_tile(tile_scene, tile_latents, generator)`` is the pipeline's own call on one tile
    (returns its output: ``points``, ``colors``, optional ``normals`` / ``gaussians``, world
    coordinates). ``manifest``: the run's settings (the pipeline adds its own); ``anchor_z``: the
    area latent frame's base height (relative to ``scene.origin[2]``); ``inpaint=False`` makes
    every tile on its own (the seam baseline). ``classify(points, normals)``: class ids of a tile's
    points (world metres), ``classes_from`` saying where they come from (both or neither).
    ``callback_on_tile_end(tile, record)`` runs after each finished tile. Runs on every process
    of ``accelerate launch``; returns on all of them.
    """
    from accelerate import PartialState

    folder = Path(folder)
    if (classify is None) != (classes_from is None):
        raise ValueError("classify and classes_from go together (the index says where the classes come from)")
    plan = plan_tiles(scene.shape, tile_px, overlap_px, align_px)
    manifest = {
        "format": RUN_FORMAT,
        "inputs_sha256": area_inputs_hash(scene),
        "tile_px": tile_px,
        "overlap_px": overlap_px,
        "seed": int(seed),
        "inpaint": bool(inpaint),
        **manifest,
    }
    manifest = json.loads(json.dumps(manifest))
    state = PartialState(cpu=torch.device(device or "cpu").type == "cpu")
    resuming = _check_folder(folder, manifest)  # on every process: each one raises the same error
    _check_resources(scene, plan, tile_bytes, folder, max_memory_gb, device)
    if state.is_main_process and not resuming:
        (folder / "tiles").mkdir(parents=True, exist_ok=True)
        write_text_atomic(folder / "run.json", json.dumps(manifest, indent=1))
    state.wait_for_everyone()

    anchor = (scene.origin[0], scene.origin[1], scene.origin[2] + float(anchor_z))
    tiles = plan.tiles()
    with tqdm(total=len(tiles), desc="tiles", disable=not state.is_main_process) as bar:
        for wave in plan.waves():
            todo = [t for t in wave if _done(folder, t) is None]
            bar.n = sum(_done(folder, t) is not None for t in tiles)
            bar.refresh()
            with state.split_between_processes(todo) as mine:
                for tile in mine:
                    try:
                        latents = TileLatents(anchor, _known(folder, plan, tile), inpaint=inpaint)
                        generator = torch.Generator("cpu").manual_seed(tile.seed(seed))
                        output = call_tile(tile_scene(scene, tile), latents, generator)
                        record = _write_tile(folder, scene, tile, output, latents, classify)
                        if callback_on_tile_end is not None:
                            callback_on_tile_end(tile, record)
                    except (Exception, KeyboardInterrupt) as error:
                        finished = sum(_done(folder, t) is not None for t in tiles)
                        error.add_note(
                            f"(tile {tile.name}, row {tile.row} column {tile.col}, failed; {finished} of {len(tiles)} "
                            f"tiles are finished in {folder}: the same run resumes from them)"
                        )
                        raise
                    bar.update()
            state.wait_for_everyone()
    records = [_done(folder, t) for t in tiles]
    index = folder / "index.json"
    if state.is_main_process:
        write_text_atomic(index, json.dumps(_index(scene, plan, records, classes_from), indent=1))
    state.wait_for_everyone()
    return AreaOutput(folder=folder, index=index, tiles=records)


def check_merge_formats(formats: Sequence[str]) -> tuple[str, ...]:
    """``formats`` checked against `MERGE_FORMATS` (``ValueError`` naming an unknown one)."""
    unknown = [f for f in formats if f not in MERGE_FORMATS]
    if unknown:
        raise ValueError(f"unknown merged format(s) {unknown}; choose from {list(MERGE_FORMATS)}")
    return tuple(dict.fromkeys(formats))


def merge_area(folder: str | Path, formats: Sequence[str], max_memory_gb: float | None = None) -> list[Path]:
    """Whole-area files of a finished area folder, recorded in its ``index.json``: ``"ply"``
    (``area.ply``: one point cloud in memory, refused with its estimate when it does not fit),
    ``"las"`` / ``"laz"`` (``area.las`` / ``area.laz``, classified when the tiles are) and
    ``"3dtiles"`` (``tileset.json`` + ``3dtiles/*.pnts``), the last three streamed tile by tile
    at any size."""
    from ..data.readers import read_ply
    from ..export.las import write_las_chunks
    from ..export.tiles3d import write_tileset

    folder = Path(folder)
    formats = check_merge_formats(formats)
    index = json.loads((folder / "index.json").read_text())
    crs, (x0, y0, x1, y1), z0 = index["crs"], index["bounds"], index["origin"][2]
    filled = [t for t in index["tiles"] if "ply" in t["files"]]
    if not filled:
        raise ValueError(f"{folder}: the area has no points to merge")

    def clouds():
        for t in filled:
            yield t["name"], read_ply(folder / "tiles" / t["files"]["ply"])

    written: dict[str, Path] = {}
    if "ply" in formats:
        count = sum(t["points"] for t in filled)
        check_memory(
            count * _BYTES_PER_POINT, max_memory_gb, f"merged area.ply of {count} points", hint="merge to LAS / 3D Tiles"
        )
        parts = [c for _, c in clouds()]
        written["ply"] = write_point_ply(
            folder / "area.ply",
            np.concatenate([c.points for c in parts]),
            np.concatenate([c.colors for c in parts]),
            None if any(c.normals is None for c in parts) else np.concatenate([c.normals for c in parts]),
            None if any(c.classes is None for c in parts) else np.concatenate([c.classes for c in parts]),
            crs=crs,
            offset=index["origin"],
        )
        del parts
    for fmt in ("las", "laz"):
        if fmt in formats:
            chunks = ((c.points, c.colors, c.classes) for _, c in clouds())
            classified = index.get("classes_from") is not None
            written[fmt] = write_las_chunks(folder / f"area.{fmt}", chunks, (x0, y0, z0), classes=classified, crs=crs)
    if "3dtiles" in formats:
        tiles = ((name, c.points, c.colors) for name, c in clouds())
        written["3dtiles"] = write_tileset(folder, tiles, ((x0 + x1) / 2, (y0 + y1) / 2, z0), crs=crs)
    index["merged"] = {**index.get("merged", {}), **{f: p.name for f, p in written.items()}}
    write_text_atomic(folder / "index.json", json.dumps(index, indent=1))
    return list(written.values())


def _index(scene: CityScene, plan: TilePlan, records: list[dict], classes_from: str | None) -> dict:
    H, W = scene.shape
    mpp, (ox, oy, oz) = scene.meters_per_pixel, scene.origin
    return {
        "format": INDEX_FORMAT,
        "version": 1,
        "crs": scene.crs,
        "frame": "the CRS's coordinates in metres" if scene.crs else "local metres (the input had no georeference)",
        "origin": [ox, oy, oz],
        "meters_per_pixel": mpp,
        "shape_px": [H, W],
        "bounds": [ox, oy, ox + W * mpp, oy + H * mpp],
        "tile_px": plan.tile,
        "overlap_px": plan.overlap,
        "grid": list(plan.grid),
        "classes_from": classes_from,
        "tiles": records,
    }
