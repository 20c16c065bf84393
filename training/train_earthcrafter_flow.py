"""Train one of EarthCrafter's flow models by rectified flow on frozen VAE latents.

``--model occupancy``: ``EarthCrafterOccupancyTransformer`` (StructFM stage 1) on the dense
(L/8)^3 occupancy of the tile's voxels, targets {-1, 1}. ``--model struct``:
``EarthCrafterStructFlow`` (StructFM stage 2) on the 32-ch ``EarthCrafterStructVAE`` latent of the
occupied cells. ``--model tex``: ``EarthCrafterTexFlow`` (TexFM) on the 8-ch ``EarthCrafterTexVAE``
latent of the ground-truth voxels. The pipeline's one ``EarthCrafterConditionEncoder`` trains
jointly with the first flow (occupancy); the later flows read it frozen (``--condition_encoder``).
Condition dropout over semantic map / orthophoto / none (``training.flow.condition_probs``) lets
one checkpoint serve the three modes and classifier-free guidance.

Latent caching: ``--cache_tiles`` training tiles are encoded once by the frozen VAE (posterior
mean and log-variance, plus the conditions) into ``<latent_cache_dir>/<model>-<key>.safetensors``,
the key a digest of the data settings and the VAE weights; a later run with the same key reads
it back. Every step draws its tiles, posterior samples, noise levels (``training.flow``:
``compute_density_for_timestep_sampling``) and condition modes from ``(seed, step)`` alone, so a
resumed run repeats an uninterrupted one exactly. The latents' std, measured on the cache, is
written to ``<output_dir>/latent_scale.json`` (``assemble_earthcrafter.py`` puts ``1 / std`` into
the VAE config's ``scaling_factor``).

Held-out loss: ``--held_out_tiles`` validation tiles (from validation tile ``HELD_OUT_START`` on,
past those the benchmarks report) are cached the same way; every logging step scores the flow
loss on them with the same noise, noise levels and condition modes each time (``held_out_loss``,
and ``held_out_loss_ema`` with the EMA weights), so the log shows when the flow starts to fit its
cache rather than the data.

Convention of diffusers' ``FlowMatchEulerDiscreteScheduler``: ``x_t = (1 - s) x0 + s noise``,
target ``noise - x0``, ``timestep = 1000 s``.

Writes ``<output_dir>/<model folder>`` and ``<output_dir>/condition_encoder`` (both or neither).
One device (CPU or one GPU).

    accelerate launch training/train_earthcrafter_flow.py --model struct --preset small \
        --struct_vae runs/ec/struct_vae/struct_vae --output_dir runs/ec/struct_flow
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))

from diffusers import FlowMatchEulerDiscreteScheduler  # noqa: E402
from diffusers.optimization import get_scheduler  # noqa: E402
from earthcrafter_common import (  # noqa: E402
    add_init_from,
    draw_condition_modes,
    encode_conditions,
    image_row,
    load_preset,
    make_dataloader,
    preview_voxels,
    read_latent_scale,
    sample_sigmas,
    save_model,
    step_generator,
    to_device,
    write_json_atomic,
)

from diffusers_city.export.atomic import atomic_folders, atomic_write  # noqa: E402
from diffusers_city.render import render_gaussians  # noqa: E402
from diffusers_city.sparse import SparseTensor  # noqa: E402
from diffusers_city.training_utils import (  # noqa: E402
    StepLosses,
    card_fields,
    create_ema,
    finish_step,
    maybe_resume,
    model_from_preset_or_folder,
    optimizer_step,
    push_folder_to_hub,
    setup_accelerator,
    step_emas,
    step_seed,
    training_parser,
)

FOLDERS = {"occupancy": "occupancy_transformer", "struct": "struct_flow", "tex": "tex_flow"}
VAES = {"struct": "struct_vae", "tex": "tex_vae"}
SCALE_FILE = "latent_scale.json"
HELD_OUT_START = 64  # first validation tile of the held-out loss; the benchmarks report tiles 0..13
_SAVED = {"dtype": torch.float32, "use_safetensors": True}  # fp32 even from fp16 folders; never a pickle


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = training_parser("Train an EarthCrafter flow model (occupancy, structure or texture) on frozen VAE latents.")
    parser.add_argument("--model", choices=tuple(FOLDERS), required=True)
    parser.add_argument("--struct_vae", type=Path, default=None, help="trained EarthCrafterStructVAE folder (--model struct)")
    parser.add_argument("--tex_vae", type=Path, default=None, help="trained EarthCrafterTexVAE folder (--model tex)")
    parser.add_argument(
        "--cache_tiles", type=int, default=None, help="training tiles in the latent cache (default: the preset's)"
    )
    parser.add_argument(
        "--latent_cache_dir", type=Path, default=None, help="where latent caches live (default: OUTPUT_DIR/latent_cache)"
    )
    parser.add_argument(
        "--condition_encoder",
        type=Path,
        default=None,
        help="a trained EarthCrafterConditionEncoder folder to use frozen (default: train one jointly)",
    )
    parser.add_argument("--held_out_tiles", type=int, default=32, help="validation tiles scored at every logging step (0: none)")
    parser.add_argument("--validation_inference_steps", type=int, default=10)
    add_init_from(parser)
    args = parser.parse_args(argv)
    preset = load_preset(args)
    section = preset["training"]["flow"]
    parser.set_defaults(
        train_batch_size=section["train_batch_size"], learning_rate=section["learning_rate"], cache_tiles=section["cache_tiles"]
    )
    args = parser.parse_args(argv)
    if args.cache_tiles < 1:
        parser.error(f"--cache_tiles must be >= 1, got {args.cache_tiles}")
    if args.held_out_tiles < 0:
        parser.error(f"--held_out_tiles must be >= 0, got {args.held_out_tiles}")
    if args.condition_encoder is not None and not (args.condition_encoder / "config.json").is_file():
        parser.error(f"--condition_encoder {args.condition_encoder}: not a saved EarthCrafterConditionEncoder folder")
    if args.model in VAES:
        folder = getattr(args, VAES[args.model])
        if folder is None or not (folder / "config.json").is_file():
            parser.error(f"--model {args.model} needs --{VAES[args.model]} FOLDER of a trained {VAES[args.model]}, got {folder}")
    args.preset_data = preset
    return args


def load_vae(args: argparse.Namespace, device: torch.device):
    if args.model == "occupancy":
        return None
    from diffusers_city.models import earthcrafter

    cls = earthcrafter.EarthCrafterStructVAE if args.model == "struct" else earthcrafter.EarthCrafterTexVAE
    return cls.from_pretrained(getattr(args, VAES[args.model]), **_SAVED).to(device).eval().requires_grad_(False)


def build_models(args: argparse.Namespace):
    from diffusers_city.models import earthcrafter

    components = args.preset_data["components"]
    cls = {
        "occupancy": earthcrafter.EarthCrafterOccupancyTransformer,
        "struct": earthcrafter.EarthCrafterStructFlow,
        "tex": earthcrafter.EarthCrafterTexFlow,
    }[args.model]
    model = model_from_preset_or_folder(cls, components[FOLDERS[args.model]], args.init_from)
    if args.condition_encoder is None:
        encoder = earthcrafter.EarthCrafterConditionEncoder.from_config(components["condition_encoder"])
    else:
        encoder = earthcrafter.EarthCrafterConditionEncoder.from_pretrained(args.condition_encoder, **_SAVED)
        encoder.eval().requires_grad_(False)
    return model, encoder


# ---------------------------------------------------------------------------------------------
# latent cache


def cell_size(preset: dict) -> int:
    """Voxels per coarse cell edge: L / G of the occupancy grid (8 in the paper)."""
    occ = preset["components"]["occupancy_transformer"]
    return int(occ.get("cell_size", int(preset["training"]["data"]["resolution"]) // int(occ["grid_size"])))


@torch.no_grad()
def encode_batch(model: str, vae, batch: dict, cell: int) -> tuple[list[dict[str, torch.Tensor]], torch.Tensor]:
    """Per tile: ``coords [n, 3]`` of the latent (coarse cells for occupancy) and posterior
    ``mean``/``logvar`` (no channels for occupancy); and the latent grid's
    ``[voxel_size, origin x, y, z, stride]``."""
    voxels = batch["voxels"]
    if model == "occupancy":
        coarse = torch.cat([voxels.coords[:, :1], torch.div(voxels.coords[:, 1:], cell, rounding_mode="floor")], 1)
        coarse = torch.unique(coarse, dim=0)
        empty = torch.zeros(0, 0, device=coarse.device)
        items = [{"coords": coarse[coarse[:, 0] == b, 1:], "mean": empty, "logvar": empty} for b in range(voxels.batch_size)]
        return items, torch.tensor([voxels.voxel_size * cell, *(voxels.voxel_size * cell / 2,) * 3, cell], dtype=torch.float64)
    posterior = vae.encode(voxels if model == "struct" else batch["features"]).latent_dist
    mean, logvar = posterior.mean, posterior.logvar
    items = [{"coords": m.coords[:, 1:], "mean": m.feats.float(), "logvar": lv.feats.float()} for m, lv in zip(mean, logvar)]
    return items, torch.tensor([mean.voxel_size, *mean.origin, mean.stride], dtype=torch.float64)


def cache_key(args: argparse.Namespace, split: str, tiles: int) -> str:
    data = args.preset_data["training"]["data"]
    parts = {
        "model": args.model,
        "split": split,
        "tiles": tiles,
        "data": data,
        "image_size": args.preset_data["components"]["condition_encoder"].get("image_size"),
    }
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode())
    if args.model in VAES:
        folder = getattr(args, VAES[args.model])
        for path in sorted(folder.glob("*.safetensors")) + [folder / "config.json"]:
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def build_cache(args: argparse.Namespace, vae, device: torch.device, path: Path, split: str, count: int) -> None:
    """Encode ``count`` tiles of ``split`` (the held-out ones from ``HELD_OUT_START`` on) and write
    them as one safetensors file (atomically)."""
    preset = args.preset_data
    cell = cell_size(preset)
    tiles = []
    start = 0 if split == "train" else HELD_OUT_START
    loader = make_dataloader(preset, args, min(count, 4), split, start, with_views=args.model == "tex")
    for batch in loader:
        batch = to_device(batch, device)
        items, grid = encode_batch(args.model, vae, batch, cell)
        for item, semantic, image in zip(items, batch["semantic"], batch["image"]):
            tiles.append({**item, "semantic": semantic, "image": image})
        if len(tiles) >= count:
            break
    tiles = tiles[:count]
    counts = torch.tensor([0] + [t["coords"].shape[0] for t in tiles])
    tensors = {
        "offsets": counts.cumsum(0),
        "coords": torch.cat([t["coords"] for t in tiles]).to(torch.int32),
        "mean": torch.cat([t["mean"] for t in tiles]),
        "logvar": torch.cat([t["logvar"] for t in tiles]),
        "semantic": torch.stack([t["semantic"] for t in tiles]).to(torch.uint8),
        "image": (torch.stack([t["image"] for t in tiles]) * 255).round().to(torch.uint8),  # 8-bit orthophotos: exact
        "grid": grid,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))


def grid_geometry(grid: torch.Tensor) -> dict:
    """``SparseTensor`` keywords of a latent grid stored as ``[voxel_size, origin x, y, z, stride]``."""
    g = grid.tolist()
    return {"voxel_size": g[0], "origin": tuple(g[1:4]), "stride": int(g[4])}


class LatentCache:
    """The cached tiles on ``device``; ``batch(idx, ...)`` assembles one training batch."""

    def __init__(self, path: Path, device: torch.device) -> None:
        self.t = {k: v.to(device) for k, v in load_file(str(path)).items()}
        self.num_tiles = self.t["semantic"].shape[0]
        self.device = device
        self.geometry = grid_geometry(self.t["grid"])

    def rows(self, i: int) -> slice:
        return slice(int(self.t["offsets"][i]), int(self.t["offsets"][i + 1]))

    def latent_std(self) -> float:
        """Std of posterior samples over the cache: ``sqrt(var(mean) + E[exp(logvar)])``."""
        mean, logvar = self.t["mean"].double(), self.t["logvar"].double()
        return math.sqrt(float(mean.var(unbiased=False) + logvar.exp().mean()))

    def batch(self, idx: list[int], generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """``coords [N, 4]`` (batch index first), posterior samples ``feats [N, C]``, ``semantic``, ``image``."""
        coords, feats = [], []
        for b, i in enumerate(idx):
            r = self.rows(i)
            c = self.t["coords"][r]
            coords.append(torch.cat([torch.full_like(c[:, :1], b), c], 1))
            mean, logvar = self.t["mean"][r], self.t["logvar"][r]
            noise = torch.randn(mean.shape, generator=generator, device=self.device)
            feats.append(mean + (0.5 * logvar).exp() * noise)
        index = torch.tensor(idx, device=self.device)
        return {
            "coords": torch.cat(coords),
            "feats": torch.cat(feats),
            "semantic": self.t["semantic"][index].long(),
            "image": self.t["image"][index].float() / 255,
        }


def prepare_cache(args: argparse.Namespace, accelerator, vae, split: str = "train") -> LatentCache:
    """The latent cache of ``--cache_tiles`` training tiles, or of ``--held_out_tiles`` validation tiles."""
    count = args.cache_tiles if split == "train" else args.held_out_tiles
    folder = args.latent_cache_dir or Path(args.output_dir) / "latent_cache"
    prefix = args.model if split == "train" else f"{args.model}-held-out"
    path = folder / f"{prefix}-{cache_key(args, split, count)}.safetensors"
    if accelerator.is_main_process and not path.is_file():
        accelerator.print(f"encoding {count} {split} tiles into the latent cache {path}")
        build_cache(args, vae, accelerator.device, path, split, count)
    accelerator.wait_for_everyone()
    return LatentCache(path, accelerator.device)


# ---------------------------------------------------------------------------------------------
# rectified flow


def clean_sample(model: str, batch: dict, grid: int, geometry: dict, scale: float):
    """``x0`` of the flow: dense occupancy in {-1, 1} ``[B, 1, G, G, G]``, or the scaled latent as a
    SparseTensor on the VAE's latent grid (``geometry``: voxel_size, origin, stride)."""
    coords = batch["coords"]
    b = int(batch["semantic"].shape[0])
    if model == "occupancy":
        occ = torch.full((b, 1, grid, grid, grid), -1.0, device=coords.device)
        c = coords.long()
        occ[c[:, 0], 0, c[:, 1], c[:, 2], c[:, 3]] = 1.0
        return occ
    return SparseTensor(batch["feats"] * scale, coords, batch_size=b, **geometry)


def _feats(x):
    return x.feats if isinstance(x, SparseTensor) else x


def _per_item(x, values: torch.Tensor) -> torch.Tensor:
    """``values [B]`` broadcast to the rows of ``x`` (per voxel for sparse, per item for dense)."""
    if isinstance(x, SparseTensor):
        return values[x.coords[:, 0].long()].unsqueeze(1)
    return values.view(-1, *[1] * (x.ndim - 1))


def flow_loss(model, encoder, x0, batch: dict, flow: dict, generator) -> torch.Tensor:
    """MSE between the predicted velocity and ``noise - x0`` at noise levels drawn by ``sample_sigmas``."""
    b = int(batch["semantic"].shape[0])
    device = batch["semantic"].device
    sigma = sample_sigmas(b, flow, float(flow["shift"]), generator, device)
    clean = _feats(x0)
    noise = torch.randn(clean.shape, generator=generator, device=device, dtype=clean.dtype)
    s = _per_item(x0, sigma)
    noisy = (1 - s) * clean + s * noise
    modes = draw_condition_modes(b, flow["condition_probs"], generator, device)
    condition = encode_conditions(encoder, batch["semantic"], batch["image"], modes)
    sample = x0.replace(noisy) if isinstance(x0, SparseTensor) else noisy
    pred = _feats(model(sample, sigma * 1000, *condition).sample)
    return F.mse_loss(pred.float(), (noise - clean).float())


@torch.no_grad()
def held_out_loss(model, encoder, cache: LatentCache, args, grid: int, scale: float, emas=()) -> float:
    """The flow loss over every tile of ``cache``, drawn from a fixed seed (the same draws at every
    call), with the models' weights or, given ``emas`` (one per model, ``None`` for none), their EMA's."""
    swapped = [(ema, m) for ema, m in zip(emas, (model, encoder)) if ema is not None]
    for ema, module in swapped:
        ema.store(module.parameters())
        ema.copy_to(module.parameters())
    modes = [(m, m.training) for m in (model, encoder)]
    model.eval(), encoder.eval()
    flow = args.preset_data["training"]["flow"]
    total = 0.0
    try:
        for start in range(0, cache.num_tiles, args.train_batch_size):
            idx = list(range(start, min(start + args.train_batch_size, cache.num_tiles)))
            generator = step_generator(args.seed + 1, start, cache.device)
            batch = cache.batch(idx, generator)
            x0 = clean_sample(args.model, batch, grid, cache.geometry, scale)
            total += float(flow_loss(model, encoder, x0, batch, flow, generator)) * len(idx)
    finally:
        for module, training in modes:
            module.train(training)
        for ema, module in swapped:
            ema.restore(module.parameters())
    return total / cache.num_tiles


@torch.no_grad()
def euler_sample(model, x, condition, scheduler: FlowMatchEulerDiscreteScheduler, steps: int):
    """Integrate the flow from noise ``x`` (a tensor or SparseTensor) with the scheduler's Euler steps."""
    feats = _feats(x)
    scheduler.set_timesteps(steps, device=feats.device)
    batch_size = x.batch_size if isinstance(x, SparseTensor) else x.shape[0]
    for t in scheduler.timesteps:
        sample = x.replace(feats) if isinstance(x, SparseTensor) else feats
        v = _feats(model(sample, t.expand(batch_size), *condition).sample)
        feats = scheduler.step(v, t, feats).prev_sample
    return x.replace(feats) if isinstance(x, SparseTensor) else feats


@torch.no_grad()
def validation_images(args, model, encoder, vae, scheduler, val: dict, scale: float) -> dict:
    """Sample the held-out tile's latent given its semantic map (later stages on its true structure) and decode it."""
    condition = encoder(semantic_map=val["semantic"])
    x0 = val["x0"]
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(_feats(x0).shape, generator=generator).to(_feats(x0).device)
    x = euler_sample(
        model,
        x0.replace(noise) if isinstance(x0, SparseTensor) else noise,
        condition,
        scheduler,
        args.validation_inference_steps,
    )
    voxels = val["voxels"]
    images = {"ground_truth": preview_voxels(voxels.world_positions(), voxels.feats[:, 3:6])}
    if args.model == "occupancy":
        cell = cell_size(args.preset_data) * voxels.voxel_size
        occupied = (x[0, 0] > 0).nonzero().float()
        images["occupancy_sample"] = preview_voxels((occupied + 0.5) * cell)
    elif args.model == "struct":
        out = vae.decode(x.replace(x.feats / scale)).sample
        images["structure_sample"] = preview_voxels(out.world_positions())
    else:
        params = vae.decode(x.replace(x.feats / scale)).sample
        images["views"] = image_row(val["views"][0])
        images["texture_sample"] = image_row(render_gaussians(vae.to_gaussians(params), val["cameras"][0], mode="2dgs").rgb)
    return images


def validation_tile(args, vae, device, scale: float) -> dict:
    """The first held-out tile with its clean flow sample ``x0``."""
    preset = args.preset_data
    batch = to_device(next(iter(make_dataloader(preset, args, 1, "validation", with_views=args.model == "tex"))), device)
    items, geometry = encode_batch(args.model, vae, batch, cell_size(preset))
    grid = int(preset["components"]["occupancy_transformer"]["grid_size"])
    coords = torch.cat([torch.zeros_like(items[0]["coords"][:, :1]), items[0]["coords"]], 1)
    x0 = clean_sample(
        args.model,
        {"coords": coords, "feats": items[0]["mean"], "semantic": batch["semantic"]},
        grid,
        grid_geometry(geometry),
        scale,
    )
    return {**batch, "x0": x0}


def held_out_logs(model, encoder, held_out: LatentCache | None, args, grid: int, scale: float, emas) -> dict:
    """``held_out_loss`` (and ``held_out_loss_ema`` when there are EMAs) for the step's log."""
    if held_out is None:
        return {}
    logs = {"held_out_loss": held_out_loss(model, encoder, held_out, args, grid, scale)}
    if any(ema is not None for ema in emas):
        logs["held_out_loss_ema"] = held_out_loss(model, encoder, held_out, args, grid, scale, emas)
    return logs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    preset = args.preset_data
    flow = preset["training"]["flow"]
    run = {"script": "train_earthcrafter_flow", "preset": str(args.preset), "model": args.model}
    accelerator = setup_accelerator(args, run=run)
    if accelerator.num_processes > 1:
        raise ValueError("train_earthcrafter_flow.py runs on one device (the condition encoder runs once per mode group)")
    device = accelerator.device
    model, encoder = build_models(args)  # first: their initialisation draws from the freshly seeded RNG
    trained = [model] if args.condition_encoder is not None else [model, encoder]
    vae = load_vae(args, device)
    cache = prepare_cache(args, accelerator, vae)
    held_out = prepare_cache(args, accelerator, vae, "validation") if args.held_out_tiles else None
    out_dir = Path(args.output_dir)
    scale = 1.0
    if args.model in VAES:
        scale_path = out_dir / SCALE_FILE
        if scale_path.is_file():
            scale = read_latent_scale(scale_path)
        else:
            std = cache.latent_std()
            scale = 1.0 / max(std, 1e-12)
            write_json_atomic(
                scale_path, {"model": args.model, "scaling_factor": scale, "latent_std": std, "tiles": cache.num_tiles}
            )
        accelerator.print(f"{args.model} latent scaling_factor (1 / std): {scale:.5g}")
    emas = [create_ema(m, args) for m in trained] + [None] * (2 - len(trained))
    params = [p for m in trained for p in m.parameters()]
    optimizer = torch.optim.AdamW(params, lr=args.learning_rate)
    lr_scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer,
        num_warmup_steps=args.lr_warmup_steps,
        num_training_steps=args.max_train_steps,
    )
    model, encoder, optimizer, lr_scheduler = accelerator.prepare(model, encoder, optimizer, lr_scheduler)
    global_step = maybe_resume(accelerator, args)
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(preset.get("scheduler", {}))
    grid = int(preset["components"]["occupancy_transformer"]["grid_size"])
    val = validation_tile(args, vae, device, scale) if accelerator.is_main_process else None
    unwrap = accelerator.unwrap_model
    t0 = time.time()
    for m in trained:
        m.train()
    losses = StepLosses(args.gradient_accumulation_steps)
    micro_step = global_step * args.gradient_accumulation_steps
    while global_step < args.max_train_steps:
        with accelerator.accumulate(model, encoder):
            draw = torch.Generator().manual_seed(step_seed(args.seed, micro_step))
            idx = torch.randint(cache.num_tiles, (args.train_batch_size,), generator=draw).tolist()
            generator = step_generator(args.seed, micro_step, device)
            batch = cache.batch(idx, generator)
            x0 = clean_sample(args.model, batch, grid, cache.geometry, scale)
            with accelerator.autocast():
                loss = flow_loss(model, encoder, x0, batch, flow, generator)
            optimizer_step(accelerator, loss, params, optimizer, lr_scheduler)
        micro_step += 1
        losses.add({"loss": loss})
        if not accelerator.sync_gradients:
            continue
        step_loss = losses.finish(global_step)
        global_step += 1
        step_emas(emas, (model, encoder))
        if finish_step(
            accelerator,
            args,
            global_step,
            t0,
            lambda: (
                losses.logs(accelerator, step_loss, lr_scheduler)
                | held_out_logs(unwrap(model), unwrap(encoder), held_out, args, grid, scale, emas)
            ),
            lambda: validation_images(args, unwrap(model), unwrap(encoder), vae, scheduler, val, scale),
        ):
            break
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with atomic_folders(out_dir / FOLDERS[args.model], out_dir / "condition_encoder") as (model_dir, encoder_dir):
            save_model(unwrap(model), emas[0], model_dir)
            save_model(unwrap(encoder), emas[1], encoder_dir)
        if args.push_to_hub:
            push_folder_to_hub(args, out_dir, "earthcrafter", card_fields(args, "EarthCrafter", f"{args.model} flow"))
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    sys.exit(main())
