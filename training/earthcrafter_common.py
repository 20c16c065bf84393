"""Shared data, condition and flow plumbing of the EarthCrafter training scripts.

Data: voxel tiles of procedural cities generated on the fly (``diffusers_city.data.VoxelTileDataset``):
surface voxels at the preset's ``L`` and voxel size, their 10 view features, semantic map,
orthophoto and ground-truth aerial views. Training and validation use different base seeds.

The preset's ``training`` section is optional; every missing key takes ``TRAINING_DEFAULTS``.
Rectified flow follows diffusers' ``FlowMatchEulerDiscreteScheduler``: ``x_t = (1 - s) x0 + s noise``,
the model predicts ``noise - x0`` at ``timestep = s * 1000``.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from sat2city_common import preview, read_latent_scale, save_model, step_generator, write_json_atomic  # noqa: E402,F401

from diffusers_city.data import VoxelTileDataset  # noqa: E402
from diffusers_city.models.earthcrafter.condition_encoder import ConditionTokens  # noqa: E402
from diffusers_city.sparse import SparseTensor  # noqa: E402
from diffusers_city.training_utils import load_training_preset  # noqa: E402

SYSTEM = "earthcrafter"
NUM_SCENES = 1_000_000  # per split; every sample index is its own deterministic tile
CONDITION_MODES = ("semantic", "image", "none")
TRAINING_DEFAULTS: dict[str, Any] = {
    "data": {  # also resolution, voxel_size, n_views, view_size: from the condition encoder's config (load_preset)
        "nadir_views": 1,
        "tiles_per_scene": 4,
        "train_base_seed": 0,
        "validation_base_seed": 100_003,
        "style": None,
    },
    "struct_vae": {"train_batch_size": 4, "learning_rate": 2e-4, "kl_weight": 1e-3},
    "tex_vae": {
        "train_batch_size": 2,
        "learning_rate": 2e-4,
        "l1_weight": 1.0,
        "ssim_weight": 0.2,
        "vgg_weight": 0.1,
        "kl_weight": 1e-4,
    },
    "flow": {
        "train_batch_size": 8,
        "learning_rate": 5e-4,
        "cache_tiles": 256,
        "condition_probs": {"semantic": 0.45, "image": 0.45, "none": 0.1},
        "weighting_scheme": "logit_normal",
        "shift": 1.0,
        "logit_mean": 0.0,
        "logit_std": 1.0,
    },
}


def _merge(defaults: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(defaults)
    for key, value in given.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def add_init_from(parser: argparse.ArgumentParser) -> None:
    """``--init_from FOLDER``: warm-start the trained model from saved weights of the same architecture."""
    parser.add_argument(
        "--init_from",
        type=Path,
        default=None,
        help="warm start from a saved model folder of the preset's architecture (e.g. pipelines/earthcrafter/default/"
        "<component>); the optimizer starts fresh; a resumed checkpoint takes precedence",
    )


def load_preset(args: argparse.Namespace) -> dict[str, Any]:
    """The preset of ``--preset`` with its ``training`` section completed from ``TRAINING_DEFAULTS``."""
    preset = load_training_preset(args, SYSTEM)
    if "condition_encoder" not in preset.get("components", {}):
        raise ValueError(f"preset {args.preset} has no components.condition_encoder section")
    preset["training"] = _merge(TRAINING_DEFAULTS, preset.get("training", {}))
    data = preset["training"]["data"]
    L = int(preset["components"]["condition_encoder"]["resolution"])
    data.setdefault("resolution", L)
    if "voxel_size" not in data:
        if "voxel_size" not in preset["components"]["condition_encoder"]:
            raise ValueError(
                f"preset {args.preset}: no voxel size (training.data.voxel_size or components.condition_encoder.voxel_size)"
            )
        data["voxel_size"] = float(preset["components"]["condition_encoder"]["voxel_size"])
    data.setdefault("view_size", min(2 * L, 256))  # about one view pixel per orthophoto pixel
    data.setdefault("n_views", 4 if L <= 16 else 8)
    return preset


def make_dataset(preset: dict[str, Any], split: str, with_views: bool = True) -> VoxelTileDataset:
    """Tiles of the preset's size; ``split`` "train" or "validation" picks the seed range;
    ``with_views=False`` for structure-only training (no rendered views: about 4x faster)."""
    if split not in ("train", "validation"):
        raise ValueError(f"split must be 'train' or 'validation', got {split!r}")
    data = preset["training"]["data"]
    image_size = preset["components"].get("condition_encoder", {}).get("image_size")
    return VoxelTileDataset(
        num_scenes=NUM_SCENES,
        tiles_per_scene=int(data["tiles_per_scene"]),
        resolution=int(data["resolution"]),
        voxel_size=float(data["voxel_size"]),
        image_size=None if image_size is None else int(image_size),
        n_views=int(data["n_views"]),
        nadir_views=int(data["nadir_views"]),
        view_size=int(data["view_size"]),
        base_seed=int(data[f"{'train' if split == 'train' else 'validation'}_base_seed"]),
        style=data.get("style"),
        with_views=with_views,
    )


def make_dataloader(
    preset: dict[str, Any],
    args: argparse.Namespace,
    batch_size: int,
    split: str = "train",
    start: int = 0,
    with_views: bool = True,
):
    """Sequential loader (consecutive tiles share a generated city) from sample ``start`` on, so a
    resumed run reads the tiles an uninterrupted one would."""
    dataset = make_dataset(preset, split, with_views)
    indices = range(start, len(dataset))
    return torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, indices),
        batch_size=batch_size,
        shuffle=False,
        num_workers=args.dataloader_num_workers,
        collate_fn=VoxelTileDataset.collate,
        persistent_workers=args.dataloader_num_workers > 0,
    )


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """A collated tile batch on ``device`` (sparse tensors, rasters, views and cameras)."""
    out = {}
    for key, value in batch.items():
        if isinstance(value, (torch.Tensor, SparseTensor)):
            out[key] = value.to(device)
        elif key == "cameras":
            out[key] = [c.to(device) for c in value]
        else:
            out[key] = value
    return out


def draw_condition_modes(batch_size: int, probs: dict[str, float], generator: torch.Generator | None, device) -> torch.Tensor:
    """Condition dropout: per item an index into ``CONDITION_MODES`` drawn with ``probs``."""
    weights = torch.tensor([float(probs.get(m, 0.0)) for m in CONDITION_MODES])
    if (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(f"condition_probs must be >= 0 with a positive sum over {CONDITION_MODES}, got {probs}")
    u = torch.rand(batch_size, generator=generator, device=device).cpu()
    return torch.bucketize(u, (weights.cumsum(0) / weights.sum())[:-1], right=True).to(device)


def encode_conditions(encoder, semantic: torch.Tensor, image: torch.Tensor, modes: torch.Tensor) -> ConditionTokens:
    """Condition tokens ``[B, T, D]`` (zero-padded), lengths ``[B]`` and maps ``[B, D, g, g]`` of a
    batch whose items use different modes: each mode's items go through ``encoder`` together."""
    parts = []
    for m, name in enumerate(CONDITION_MODES):
        idx = (modes == m).nonzero().squeeze(1)
        if idx.numel() == 0:
            continue
        if name == "semantic":
            out = encoder(semantic_map=semantic[idx])
        elif name == "image":
            out = encoder(image=image[idx])
        else:
            out = encoder(batch_size=int(idx.numel()))
        parts.append((idx, out))
    width = max(out.tokens.shape[1] for _, out in parts)
    first = parts[0][1]
    b = modes.shape[0]
    tokens = first.tokens.new_zeros(b, width, first.tokens.shape[2])
    lengths = torch.zeros(b, dtype=torch.long, device=first.tokens.device)
    maps = first.condition_map.new_zeros(b, *first.condition_map.shape[1:])
    for idx, out in parts:
        tokens = tokens.index_copy(0, idx, F.pad(out.tokens, (0, 0, 0, width - out.tokens.shape[1])))
        lengths = lengths.index_copy(0, idx, out.lengths)
        maps = maps.index_copy(0, idx, out.condition_map)
    return ConditionTokens(tokens, lengths, maps)


def sample_sigmas(batch_size: int, flow: dict[str, Any], shift: float, generator, device) -> torch.Tensor:
    """Training noise levels in (0, 1): diffusers' ``compute_density_for_timestep_sampling``
    (``flow.weighting_scheme``), shifted like ``FlowMatchEulerDiscreteScheduler`` (``shift``)."""
    from diffusers.training_utils import compute_density_for_timestep_sampling

    u = compute_density_for_timestep_sampling(
        flow["weighting_scheme"],
        batch_size,
        logit_mean=float(flow["logit_mean"]),
        logit_std=float(flow["logit_std"]),
        mode_scale=float(flow.get("mode_scale", 1.29)),
        device=device,
        generator=generator,
    ).to(device)
    u = u.clamp(1e-4, 1 - 1e-4)
    return shift * u / (1 + (shift - 1) * u)


def preview_voxels(points: torch.Tensor, colors: torch.Tensor | None = None) -> Image.Image:
    """``preview`` of voxel centres, with points about large enough to close a tile's surface."""
    return preview(points, colors, point_size=max(2, int(256 / (2 * max(points.shape[0], 1) ** 0.5))))


def image_row(images: torch.Tensor) -> Image.Image:
    """``[V, H, W, 3]`` views in 0..1 side by side, enlarged (nearest) to at least 128 pixels high."""
    row = torch.cat(list(images.detach().float().cpu().clamp(0, 1)), dim=1)
    image = Image.fromarray((row.numpy() * 255).round().astype("uint8"))
    k = max(1, -(-128 // image.height))
    return image.resize((image.width * k, image.height * k), Image.NEAREST)
