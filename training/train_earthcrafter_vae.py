"""Train one of EarthCrafter's VAEs on procedural voxel tiles.

``--model struct``: ``EarthCrafterStructVAE``, surface voxels at L^3 -> 32-ch latent on (L/8)^3 ->
voxels, XCube-style: occupancy BCE over every decoder level (teacher forced on the ground truth)
+ ``kl_weight`` KL.

``--model tex``: ``EarthCrafterTexVAE``, the 10 per-voxel view features (``data.tiles``) -> 8-ch
latent per voxel -> per-voxel 2D Gaussian splats, on the ground-truth structure, rendered with
the 2DGS rasterizer (``render_gaussians(mode="2dgs")``: gsplat on CUDA, the torch reference on
CPU) from the tile's training views: ``l1_weight`` L1 + ``ssim_weight`` (1 - SSIM) +
``vgg_weight`` VGG19 perceptual (only with ``--vgg_weights``; said in the log) + ``kl_weight`` KL.

One device (CPU or one GPU). Weights and batch sizes: the preset's ``training.struct_vae`` / ``training.tex_vae``. Writes
``<output_dir>/struct_vae`` or ``<output_dir>/tex_vae`` (EMA weights with ``--use_ema``).

    accelerate launch training/train_earthcrafter_vae.py --model struct --preset small --output_dir runs/ec/struct_vae
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from diffusers.optimization import get_scheduler  # noqa: E402
from earthcrafter_common import (  # noqa: E402
    add_init_from,
    image_row,
    load_preset,
    make_dataloader,
    preview_voxels,
    save_model,
    step_generator,
    to_device,
)

from diffusers_city.export.atomic import atomic_folders  # noqa: E402
from diffusers_city.metrics.image import ssim  # noqa: E402
from diffusers_city.render import render_gaussians  # noqa: E402
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
    training_parser,
)

MODELS = {"struct": "struct_vae", "tex": "tex_vae"}


def model_class(model: str):
    from diffusers_city.models import earthcrafter

    return earthcrafter.EarthCrafterStructVAE if model == "struct" else earthcrafter.EarthCrafterTexVAE


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = training_parser("Train EarthCrafter's structure VAE or texture VAE.")
    parser.add_argument("--model", choices=tuple(MODELS), required=True)
    parser.add_argument(
        "--vgg_weights", default=None, help="VGG19 safetensors file or Hub repo id (tex; without: no perceptual term)"
    )
    add_init_from(parser)
    parser.add_argument(
        "--freeze_encoder",
        action="store_true",
        help="train the decoder only: the latent space stays that of the flows trained on it (use with --init_from)",
    )
    args = parser.parse_args(argv)
    preset = load_preset(args)
    section = preset["training"][MODELS[args.model]]
    parser.set_defaults(train_batch_size=section["train_batch_size"], learning_rate=section["learning_rate"])
    args = parser.parse_args(argv)
    args.preset_data = preset
    return args


def struct_losses(vae, batch: dict, weights: dict, generator: torch.Generator | None) -> dict[str, torch.Tensor]:
    """Occupancy BCE over every decoder level (teacher forced) + KL."""
    voxels = batch["voxels"]
    posterior = vae.encode(voxels).latent_dist
    decoding = vae.decode(posterior.sample(generator), target=voxels)
    logits = torch.cat(decoding.logits).float()
    bce = F.binary_cross_entropy_with_logits(logits, torch.cat(decoding.targets).float())
    kl = posterior.kl()
    return {"bce": bce, "kl": kl, "loss": bce + weights["kl_weight"] * kl}


def render_tiles(vae, params, cameras: list) -> torch.Tensor:
    """``[B, V, H, W, 3]`` 2DGS renders of each tile's decoded splats from its cameras (black background)."""
    frames = []
    for b, cams in enumerate(cameras):
        gaussians = vae.to_gaussians(params.batch(b))
        frames.append(render_gaussians(gaussians, cams, mode="2dgs").rgb)
    return torch.stack(frames)


def tex_losses(vae, batch: dict, weights: dict, generator: torch.Generator | None, perceptual=None) -> dict[str, torch.Tensor]:
    """L1 + (1 - SSIM) (+ VGG19) of the rendered splats against the ground-truth views, + KL."""
    posterior = vae.encode(batch["features"]).latent_dist
    params = vae.decode(posterior.sample(generator)).sample
    pred = render_tiles(vae, params, batch["cameras"]).float()
    target = batch["views"].float()
    flat_pred, flat_target = pred.flatten(0, 1), target.flatten(0, 1)
    l1 = (flat_pred - flat_target).abs().mean()
    dssim = 1 - ssim(flat_pred, flat_target, reduction="none").float().mean()
    kl = posterior.kl()
    terms = {"l1": l1, "dssim": dssim, "kl": kl}
    loss = weights["l1_weight"] * l1 + weights["ssim_weight"] * dssim + weights["kl_weight"] * kl
    if perceptual is not None:
        terms["vgg"] = perceptual(flat_pred.permute(0, 3, 1, 2), flat_target.permute(0, 3, 1, 2))
        loss = loss + weights["vgg_weight"] * terms["vgg"]
    terms["loss"] = loss
    return terms


@torch.no_grad()
def validation_images(model: str, vae, batch: dict) -> dict:
    """Ground truth vs. free-running reconstruction of the first tile of a held-out batch."""
    voxels = batch["voxels"].batch(0)
    colors = voxels.feats[:, 3:6]
    images = {"ground_truth": preview_voxels(voxels.world_positions(), colors)}
    if model == "struct":
        out = vae.decode(vae.encode(voxels).latent_dist.mode()).sample
        images["reconstruction"] = preview_voxels(out.world_positions())
        return images
    params = vae.decode(vae.encode(batch["features"].batch(0)).latent_dist.mode()).sample
    images["views"] = image_row(batch["views"][0])
    images["rendered"] = image_row(render_tiles(vae, params, batch["cameras"][:1])[0])
    return images


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    preset = args.preset_data
    name = MODELS[args.model]
    weights = preset["training"][name]
    accelerator = setup_accelerator(
        args, run={"script": "train_earthcrafter_vae", "preset": str(args.preset), "model": args.model}
    )
    if accelerator.num_processes > 1:
        raise ValueError("train_earthcrafter_vae.py runs on one device (the VAEs train through encode/decode, not a DDP forward)")
    vae = model_from_preset_or_folder(model_class(args.model), preset["components"][name], args.init_from)
    if args.freeze_encoder:
        for part in vae.encoder_modules:
            getattr(vae, part).requires_grad_(False)
    ema = create_ema(vae, args)
    perceptual = None
    if args.model == "tex":
        if args.vgg_weights:
            from diffusers_city.models.shared.vgg19_perceptual import VGG19PerceptualLoss

            perceptual = VGG19PerceptualLoss.from_weights(args.vgg_weights).to(accelerator.device)
        else:
            accelerator.print("no --vgg_weights given: VGG19 perceptual term off (L1 + SSIM only)")
    optimizer = torch.optim.AdamW([p for p in vae.parameters() if p.requires_grad], lr=args.learning_rate)
    lr_scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer,
        num_warmup_steps=args.lr_warmup_steps,
        num_training_steps=args.max_train_steps,
    )
    vae, optimizer, lr_scheduler = accelerator.prepare(vae, optimizer, lr_scheduler)
    global_step = maybe_resume(accelerator, args)
    # consecutive tiles are deterministic: a resumed run starts at the first tile it has not used
    used = global_step * args.gradient_accumulation_steps * args.train_batch_size
    views = args.model == "tex"  # the structure VAE needs no rendered views
    loader = accelerator.prepare(make_dataloader(preset, args, args.train_batch_size, start=used, with_views=views))
    val_batch = to_device(next(iter(make_dataloader(preset, args, 1, "validation", with_views=views))), accelerator.device)
    unwrap = accelerator.unwrap_model
    t0 = time.time()
    batches = iter(loader)
    vae.train()
    losses = StepLosses(args.gradient_accumulation_steps)
    while global_step < args.max_train_steps:
        with accelerator.accumulate(vae):
            batch = to_device(next(batches), accelerator.device)
            with accelerator.autocast():
                generator = step_generator(args.seed, global_step, accelerator.device)
                if args.model == "struct":
                    terms = struct_losses(unwrap(vae), batch, weights, generator)
                else:
                    terms = tex_losses(unwrap(vae), batch, weights, generator, perceptual)
            optimizer_step(accelerator, terms["loss"], vae.parameters(), optimizer, lr_scheduler)
        losses.add(terms)
        if not accelerator.sync_gradients:
            continue
        step_terms = losses.finish(global_step)
        global_step += 1
        step_emas([ema], [vae])
        if finish_step(
            accelerator,
            args,
            global_step,
            t0,
            lambda: losses.logs(accelerator, step_terms, lr_scheduler),
            lambda: validation_images(args.model, unwrap(vae), val_batch),
        ):
            break
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        out = Path(args.output_dir)
        with atomic_folders(out / name) as (folder,):
            save_model(unwrap(vae), ema, folder)
        if args.push_to_hub:
            push_folder_to_hub(args, out, "earthcrafter", card_fields(args, "EarthCrafter", f"{args.model} VAE"))
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    sys.exit(main())
