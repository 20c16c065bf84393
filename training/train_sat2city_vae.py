"""Train Sat2City's two VAEs (Sec. 3.1, supplementary 6.1) on procedural cities.

Both VAEs train in one loop on the same batches:

- ``Sat2CityDenseVAE``: 20 BCE(occupancy, all levels) + 50 L1(normals) + 0.03 KL(X_D);
- ``Sat2CitySparseVAE``: 20 BCE + 50 L1(normals) + 0.03 KL(X_S) and, after the geometry-only
  phase, + 50 L1(inverse-sampled colours at the points). KL never touches the appearance
  latents. The paper trains geometry only for E = 10 epochs; our data is generated on the fly
  (no epochs), so E is counted in optimizer steps: ``training.vae.geometry_only_steps`` of the
  preset (or ``--geometry_only_steps``). At that step X_C0's head is copied from X_S's.

Writes ``<output_dir>/dense_vae`` and ``<output_dir>/sparse_vae`` (EMA weights with ``--use_ema``),
both or neither (``atomic_folders``).

    accelerate launch training/train_sat2city_vae.py --preset small --output_dir runs/vae
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from diffusers.optimization import get_scheduler  # noqa: E402
from sat2city_common import (  # noqa: E402
    geometry_losses,
    load_preset,
    make_dataloader,
    normal_colors,
    prepare_batch,
    preview,
    save_model,
    step_generator,
    subsample_points,
)

from diffusers_city.export.atomic import atomic_folders  # noqa: E402
from diffusers_city.models.sat2city import Sat2CityDenseVAE, Sat2CitySparseVAE  # noqa: E402
from diffusers_city.training_utils import (  # noqa: E402
    StepLosses,
    card_fields,
    create_ema,
    finish_step,
    maybe_resume,
    optimizer_step,
    push_folder_to_hub,
    setup_accelerator,
    training_parser,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = training_parser("Train the Sat2City dense and sparse (Re-Hash) VAEs.")
    parser.add_argument(
        "--geometry_only_steps",
        type=int,
        default=None,
        help="optimizer steps of geometry-only training before colours (default: the preset's)",
    )
    args = parser.parse_args(argv)
    preset = load_preset(args)
    section = preset["training"]["vae"]
    parser.set_defaults(
        train_batch_size=section["train_batch_size"],
        learning_rate=section["learning_rate"],
        geometry_only_steps=section["geometry_only_steps"],
    )
    args = parser.parse_args(argv)
    args.preset_data = preset
    return args


def vae_losses(
    dense: torch.nn.Module,
    sparse: torch.nn.Module,
    prepared: dict,
    weights: dict,
    color_points: int,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Every loss term of one batch (weighted terms summed into ``loss``).

    The colour branch always runs (weight 0 in the geometry-only phase) so that every parameter
    takes part in every step, as distributed data parallel requires.
    """
    voxels = prepared["voxels"]
    d = dense(voxels, generator=generator)
    d_bce, d_l1 = geometry_losses(d.decoding, voxels)
    d_kl = d.latent_dist.kl()
    points, batch_idx, colors = subsample_points(prepared, color_points, generator)
    s = sparse(voxels, points=points, batch_idx=batch_idx, generator=generator)
    s_bce, s_l1 = geometry_losses(s.geometry, voxels)
    s_kl = s.encoding.latent_dist.kl()
    color_l1 = (s.colors.float() - colors.float()).abs().mean()
    terms = {
        "dense_bce": d_bce,
        "dense_normal_l1": d_l1,
        "dense_kl": d_kl,
        "sparse_bce": s_bce,
        "sparse_normal_l1": s_l1,
        "sparse_kl": s_kl,
        "color_l1": color_l1,
    }
    terms["loss"] = (
        weights["occupancy"] * (d_bce + s_bce)
        + weights["normals"] * (d_l1 + s_l1)
        + weights["kl"] * (d_kl + s_kl)
        + weights["color"] * color_l1
    )
    return terms


@torch.no_grad()
def validation_images(dense: Sat2CityDenseVAE, sparse: Sat2CitySparseVAE, prepared: dict) -> dict:
    """Ground truth vs. free-running (not teacher-forced) reconstructions of the first item."""
    voxels = next(iter(prepared["voxels"]))
    d = dense.decode(dense.encode(voxels).latent_dist.mode()).sample
    enc = sparse.encode(voxels)
    geometry = sparse.decode(enc.latent_dist.mode())
    images = {
        "ground_truth": preview(voxels.world_positions(), normal_colors(voxels.feats)),
        "dense_reconstruction": preview(d.world_positions(), normal_colors(d.feats)),
    }
    out = geometry.sample
    if out.num_voxels:
        feats = sparse.decode_appearance(sparse.rehash(enc.appearance), geometry)
        colors = sparse.inverse_sample(feats, out.world_positions(), out.coords[:, 0].long())
        images["sparse_reconstruction"] = preview(out.world_positions(), colors)
    return images


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    preset = args.preset_data
    weights = preset["training"]["vae"]["loss_weights"]
    color_points = int(preset["training"]["vae"]["color_points_per_scene"])
    accelerator = setup_accelerator(args, run={"script": "train_sat2city_vae", "preset": str(args.preset)})
    dense = Sat2CityDenseVAE.from_config(preset["components"]["dense_vae"])
    sparse = Sat2CitySparseVAE.from_config(preset["components"]["sparse_vae"])
    grid = tuple(dense.config.grid_size)
    ema_dense, ema_sparse = create_ema(dense, args), create_ema(sparse, args)
    optimizer = torch.optim.AdamW(itertools.chain(dense.parameters(), sparse.parameters()), lr=args.learning_rate)
    lr_scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=args.max_train_steps * accelerator.num_processes,
    )
    loader = make_dataloader(preset, args, args.train_batch_size)
    dense, sparse, optimizer, loader, lr_scheduler = accelerator.prepare(dense, sparse, optimizer, loader, lr_scheduler)
    global_step = maybe_resume(accelerator, args)
    val_batch = prepare_batch(next(iter(make_dataloader(preset, args, 1, "validation"))), grid, accelerator.device)
    unwrap = accelerator.unwrap_model
    t0 = time.time()
    batches = iter(loader)
    if global_step:
        # consecutive samples are deterministic crops: skip what the resumed run already used
        batches = itertools.islice(iter(loader), global_step * args.gradient_accumulation_steps, None)
    dense.train()
    sparse.train()
    params = list(itertools.chain(dense.parameters(), sparse.parameters()))
    losses = StepLosses(args.gradient_accumulation_steps)
    while global_step < args.max_train_steps:
        if global_step == args.geometry_only_steps:
            unwrap(sparse).init_appearance_from_geometry()
        color_weight = weights["color"] if global_step >= args.geometry_only_steps else 0.0
        with accelerator.accumulate(dense, sparse):
            prepared = prepare_batch(next(batches), grid, accelerator.device)
            with accelerator.autocast():
                generator = step_generator(args.seed, global_step, accelerator.device)
                terms = vae_losses(dense, sparse, prepared, {**weights, "color": color_weight}, color_points, generator)
            optimizer_step(accelerator, terms["loss"], params, optimizer, lr_scheduler)
        losses.add(terms)
        if not accelerator.sync_gradients:
            continue
        step_terms = losses.finish(global_step)
        global_step += 1
        if ema_dense is not None:
            ema_dense.step(dense.parameters())
            ema_sparse.step(sparse.parameters())
        if finish_step(
            accelerator,
            args,
            global_step,
            t0,
            lambda: losses.logs(accelerator, step_terms, lr_scheduler),
            lambda: validation_images(unwrap(dense), unwrap(sparse), val_batch),
        ):
            break
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        out = Path(args.output_dir)
        with atomic_folders(out / "dense_vae", out / "sparse_vae") as (dense_dir, sparse_dir):
            save_model(unwrap(dense), ema_dense, dense_dir)
            save_model(unwrap(sparse), ema_sparse, sparse_dir)
        if args.push_to_hub:
            push_folder_to_hub(args, out, "sat2city", card_fields(args, "Sat2City", "VAEs (dense + sparse / Re-Hash)"))
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    sys.exit(main())
