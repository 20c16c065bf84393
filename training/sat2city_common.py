"""Shared data and loss plumbing of the Sat2City training scripts (VAE and diffusion stages).

Data: procedural cities generated on the fly (``diffusers_city.data.VoxelCropDataset``), one
city per ``crops_per_scene`` samples, with Sat2City-style noisy height maps; training and
validation use different base seeds (a held-out seed range).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from diffusers_city.data import VoxelCropDataset  # noqa: E402
from diffusers_city.export import write_text_atomic  # noqa: E402
from diffusers_city.models.shared.sparse_vae import StructureDecoding, match_coords  # noqa: E402
from diffusers_city.pipelines.sat2city.pipeline_sat2city import HeightMap  # noqa: E402
from diffusers_city.render import render_points_preview  # noqa: E402
from diffusers_city.sparse import SparseTensor  # noqa: E402
from diffusers_city.sparse.tensor import take_rows  # noqa: E402
from diffusers_city.training_utils import load_training_preset, step_seed  # noqa: E402

SYSTEM = "sat2city"
NUM_SCENES = 1_000_000  # per split; every sample index is its own deterministic crop


def load_preset(args: argparse.Namespace) -> dict[str, Any]:
    preset = load_training_preset(args, SYSTEM)
    for key in ("components", "scheduler", "training"):
        if key not in preset:
            raise ValueError(f"preset {args.preset} has no {key!r} section")
    return preset


def make_dataset(preset: dict[str, Any], split: str, palette_seed_offset: int | None = None) -> VoxelCropDataset:
    """Procedural crops of the preset's size; ``split`` "train" or "validation" picks the seed range;
    ``palette_seed_offset`` repaints the same crops (`SceneSource`)."""
    data = preset["training"]["data"]
    vae = preset["components"]["dense_vae"]
    crop_px = int(round(data["crop_size_m"] / data["meters_per_pixel"]))
    return VoxelCropDataset(
        num_scenes=NUM_SCENES,
        crops_per_scene=int(data.get("crops_per_scene", 4)),
        crop_size_px=crop_px,
        voxel_size=float(vae["voxel_size"]),
        base_seed=int(data["train_base_seed"] if split == "train" else data["validation_base_seed"]),
        scene_size_m=float(data["scene_size_m"]),
        meters_per_pixel=float(data["meters_per_pixel"]),
        points_per_m2=float(data["points_per_m2"]),
        max_points=int(data["max_points"]),
        style=data.get("style"),
        palette_seed_offset=palette_seed_offset,
    )


class _CollateWithHeightPoints:
    """``VoxelCropDataset.collate`` plus each item's P_h (``height_points``), so that the loader
    workers, not the training step, build them (picklable for worker processes)."""

    def __init__(self, grid: tuple[int, int, int]) -> None:
        self.grid = tuple(int(g) for g in grid)

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = VoxelCropDataset.collate(samples)
        batch["ph_points"], batch["ph_batch"] = height_points(batch, self.grid)
        batch["ph_grid"] = self.grid
        return batch


def make_dataloader(preset: dict[str, Any], args: argparse.Namespace, batch_size: int, split: str = "train"):
    """Sequential loader (consecutive samples share a generated city; randomness is in the seeds);
    its batches carry P_h for the preset's grid."""
    return torch.utils.data.DataLoader(
        make_dataset(preset, split),
        batch_size=batch_size,
        shuffle=False,
        num_workers=args.dataloader_num_workers,
        collate_fn=_CollateWithHeightPoints(preset["components"]["dense_vae"]["grid_size"]),
        persistent_workers=args.dataloader_num_workers > 0,
    )


def height_points(batch: dict[str, Any], grid: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The condition point cloud P_h of every item (CPU) and its batch index.

    P_h is built exactly as the pipeline builds it (``HeightMap.points``) from the noisy gray map
    in metres (gray / 255 over the scene's height range).
    """
    v = batch["voxels"].voxel_size
    gray = batch["height_noisy"].detach().cpu()
    mpp = float(v * grid[0] / gray.shape[-1])
    ph, ph_batch = [], []
    for b in range(gray.shape[0]):
        zmin, zmax = float(batch["z_min"][b]), float(batch["z_max"][b])
        metres = zmin + gray[b, 0].numpy() * (zmax - zmin)
        p = torch.from_numpy(HeightMap(metres, mpp, (0.0, 0.0, 0.0), None).points())
        p[:, 2] = p[:, 2].clamp(0, grid[2] * v - 1e-3)
        ph.append(p)
        ph_batch.append(torch.full((p.shape[0],), b, dtype=torch.long))
    return torch.cat(ph), torch.cat(ph_batch)


def prepare_batch(batch: dict[str, Any], grid: tuple[int, int, int], device: torch.device) -> dict[str, Any]:
    """Voxels and points inside the model grid, and the condition point cloud P_h of each item
    (built by the loader workers of ``make_dataloader`` for this ``grid``)."""
    voxels: SparseTensor = batch["voxels"].to(device)
    c = voxels.coords.long()
    inside = ((c[:, 1:] >= 0) & (c[:, 1:] < torch.tensor(grid, device=c.device))).all(1)
    voxels = SparseTensor(
        voxels.feats[inside],
        voxels.coords[inside],
        voxel_size=voxels.voxel_size,
        origin=voxels.origin,
        batch_size=voxels.batch_size,
        validate=False,
    )  # a subset of valid voxels
    v = voxels.voxel_size
    pts = batch["points"].to(device)
    extent = torch.tensor([grid[0] * v, grid[1] * v, grid[2] * v], device=device)
    keep = ((pts >= 0) & (pts < extent)).all(1)
    if batch.get("ph_grid") != tuple(int(g) for g in grid):
        raise ValueError(
            f"batch carries P_h for grid {batch.get('ph_grid')}, the model grid is {tuple(grid)}: "
            "load it with make_dataloader of the same preset"
        )
    ph, ph_batch = batch["ph_points"], batch["ph_batch"]
    out = {
        "voxels": voxels,
        "points": pts[keep],
        "points_batch": batch["points_batch"].to(device)[keep],
        "ph_points": ph.to(device),
        "ph_batch": ph_batch.to(device),
    }
    if "colors" in batch:
        out["colors"] = batch["colors"].to(device)[keep]
    return out


def subsample_points(prepared: dict[str, Any], per_item: int, generator: torch.Generator | None = None) -> tuple:
    """At most ``per_item`` points per batch item for inverse sampling (their colours are the target):
    the first ``per_item`` of each item in a random order (vectorized: no host sync but the last mask)."""
    pts, b, colors = prepared["points"], prepared["points_batch"], prepared["colors"]
    n = pts.shape[0]
    order = torch.randperm(n, generator=generator, device=pts.device)
    by_item, pos = torch.sort(b[order], stable=True)
    arange = torch.arange(n, device=pts.device)
    run_start = torch.ones(n, dtype=torch.bool, device=pts.device)
    run_start[1:] = by_item[1:] != by_item[:-1]
    rank = torch.empty_like(arange)
    rank[pos] = arange - torch.where(run_start, arange, 0).cummax(0).values
    chosen = order[rank < per_item]
    return pts[chosen], b[chosen], colors[chosen]


def geometry_losses(decoding: StructureDecoding, target: SparseTensor) -> tuple[torch.Tensor, torch.Tensor]:
    """BCE of the occupancy logits of every level and L1 of the decoded normals (teacher forced)."""
    logits = torch.cat(decoding.logits)
    targets = torch.cat(decoding.targets).to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits.float(), targets.float())
    out = decoding.sample
    rows = match_coords(out.coords, target.coords, target.batch_size)
    found = (rows >= 0).nonzero().squeeze(1)
    pred = F.normalize(take_rows(out.feats, found).float(), dim=1)
    if not found.numel():
        return bce, pred.sum() * 0
    return bce, (pred - take_rows(target.feats, take_rows(rows, found)).float()).abs().mean()


def preview(points: torch.Tensor, colors: torch.Tensor | None = None, point_size: int = 2) -> Image.Image:
    """Oblique 256 x 256 point preview (colours in 0..1, or by height) as a PIL image."""
    pts = points.detach().float().cpu().numpy()
    if pts.shape[0] == 0:
        return Image.new("RGB", (256, 256), (255, 255, 255))
    cols = None if colors is None else colors.detach().float().cpu().clamp(0, 1).numpy()
    return render_points_preview(pts, cols, width=256, height=256, point_size=point_size)


def normal_colors(normals: torch.Tensor) -> torch.Tensor:
    return (F.normalize(normals.float(), dim=1) + 1) / 2


def step_generator(seed: int, step: int, device: torch.device) -> torch.Generator:
    """Generator of one optimizer step (``step_seed``): the run's randomness depends only on
    (seed, step), so a resumed run repeats exactly what an uninterrupted one does."""
    return torch.Generator(device=device).manual_seed(step_seed(seed, step))


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """``data`` as indented JSON at ``path`` (folders created), written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(data, indent=2))


def pipeline_scale(folder: Path, stage: str) -> float:
    """The ``scaling_factor`` (1 / latent std) a saved pipeline multiplies a stage's latents by
    (from its VAE configs); ``stage`` is "dense", "sparse" or "appearance"."""
    vae = "dense_vae" if stage == "dense" else "sparse_vae"
    key = "appearance_scaling_factor" if stage == "appearance" else "scaling_factor"
    return float(json.loads((folder / vae / "config.json").read_text())[key])


def read_latent_scale(path: Path) -> float:
    """The ``scaling_factor`` (1 / latent std) of a stage's ``latent_scale.json``. Files without a
    ``latent_std`` entry are older and store the std itself under ``scaling_factor``."""
    data = json.loads(Path(path).read_text())
    return float(data["scaling_factor"]) if "latent_std" in data else 1.0 / float(data["scaling_factor"])


def save_model(model: torch.nn.Module, ema, folder: Path) -> None:
    """``save_pretrained`` (safetensors) of the EMA weights when there is an EMA, else of the trained
    weights. Save into a folder of ``export.atomic.atomic_folders``, so a failed save replaces nothing."""
    if ema is not None:
        ema.store(model.parameters())
        ema.copy_to(model.parameters())
    model.save_pretrained(folder)
    if ema is not None:
        ema.restore(model.parameters())


def example_height_map(preset: dict[str, Any], index: int = 0) -> tuple[np.ndarray, dict[str, float]]:
    """A held-out noisy height map (uint8) and its metadata (metres of gray 0 / 255, m/px)."""
    sample = make_dataset(preset, "validation")[index]
    gray = np.round(sample["height_noisy"][0].numpy() * 255).astype(np.uint8)
    meta = {
        "height_range": [0.0, float(sample["z_max"]) - float(sample["z_min"])],
        "meters_per_pixel": float(preset["training"]["data"]["meters_per_pixel"]),
    }
    return gray, meta
