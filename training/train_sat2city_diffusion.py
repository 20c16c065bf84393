"""Train one stage of Sat2City's cascaded latent diffusion (Sec. 3.2) on frozen VAE latents.

``--stage dense``: ``Sat2CityDenseUNet3D`` (+ the ``HeightFieldEncoder`` condition encoder, trained
jointly) on X_D | c(P_h). ``--stage sparse``: ``Sat2CitySparseUNet3D`` on X_S | {G, A_N} (pooled normals
and occupancy of the grid). ``--stage appearance``: ``Sat2CitySparseUNet3D`` on the Re-Hash latent
X_C0 | struct (the geometry decoder's pruning decisions). v-prediction MSE, uniform timesteps,
condition dropout (the unet config's ``condition_dropout``) for guidance.

Latents are divided by their std, measured here on a few training batches before training (or,
with ``--init_from PIPELINE``, the std that pipeline uses, whose stage weights the run then
fine-tunes) and saved to ``<output_dir>/latent_scale.json`` (``assemble_sat2city.py`` writes it
into the VAE config, which the pipeline reads). Writes ``<output_dir>/<unet>`` (and ``condition_encoder``;
both or neither).

    accelerate launch training/train_sat2city_diffusion.py --stage dense --vae_dir runs/vae --output_dir runs/dense
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from diffusers import DDIMScheduler  # noqa: E402
from diffusers.optimization import get_scheduler  # noqa: E402
from diffusers.training_utils import compute_density_for_timestep_sampling  # noqa: E402
from sat2city_common import (  # noqa: E402
    load_preset,
    make_dataloader,
    normal_colors,
    pipeline_scale,
    prepare_batch,
    preview,
    read_latent_scale,
    save_model,
    step_generator,
    write_json_atomic,
)

from diffusers_city.export.atomic import atomic_folders  # noqa: E402
from diffusers_city.models.sat2city import (  # noqa: E402
    HeightFieldEncoder,
    Sat2CityDenseUNet3D,
    Sat2CityDenseVAE,
    Sat2CitySparseUNet3D,
    Sat2CitySparseVAE,
)
from diffusers_city.models.sat2city.conditions import (  # noqa: E402
    sparse_condition,
    sparse_condition_uses_height,
    struct_condition,
)
from diffusers_city.models.shared.sparse_vae import match_coords  # noqa: E402
from diffusers_city.sparse.tensor import take_rows  # noqa: E402
from diffusers_city.training_utils import (  # noqa: E402
    StepLosses,
    card_fields,
    create_ema,
    echo_batches,
    finish_step,
    maybe_resume,
    optimizer_step,
    push_folder_to_hub,
    setup_accelerator,
    step_emas,
    training_parser,
)

UNETS = {"dense": "dense_unet", "sparse": "sparse_unet", "appearance": "appearance_unet"}
SCALE_FILE = "latent_scale.json"
LATENT_TARGETS = ("sample", "mean")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = training_parser("Train one Sat2City latent diffusion stage on frozen VAE latents.")
    parser.add_argument("--stage", choices=tuple(UNETS), required=True)
    parser.add_argument("--vae_dir", type=Path, required=True, help="output_dir of train_sat2city_vae.py")
    parser.add_argument("--scale_batches", type=int, default=None, help="batches to measure the latent std on")
    parser.add_argument("--validation_inference_steps", type=int, default=10)
    parser.add_argument(
        "--init_from",
        type=Path,
        default=None,
        help="fine-tune: a saved Sat2CityPipeline folder whose stage weights (and latent scale) to start from",
    )
    parser.add_argument(
        "--latent_target",
        choices=LATENT_TARGETS,
        default=None,
        help="train on posterior samples or posterior means of the geometry latents (dense, sparse); "
        "default: the preset's training.diffusion.latent_target, else sample",
    )
    parser.add_argument(
        "--data_echo",
        type=int,
        default=1,
        help="optimizer micro-steps per loaded batch (fresh noise and timesteps each time); "
        "raise it when the procedural data loader is slower than the step",
    )
    args = parser.parse_args(argv)
    preset = load_preset(args)
    section = preset["training"]["diffusion"]
    parser.set_defaults(
        train_batch_size=section["train_batch_size"],
        learning_rate=section["learning_rate"],
        scale_batches=section["scale_batches"],
        latent_target=section.get("latent_target", "sample"),
    )
    args = parser.parse_args(argv)
    if args.data_echo < 1:
        parser.error(f"--data_echo must be >= 1, got {args.data_echo}")
    for name in ("dense_vae", "sparse_vae"):
        if not (args.vae_dir / name / "config.json").is_file():
            raise FileNotFoundError(f"--vae_dir {args.vae_dir}: no trained {name} there (run train_sat2city_vae.py first)")
    if args.init_from is not None and not (args.init_from / UNETS[args.stage] / "config.json").is_file():
        raise FileNotFoundError(f"--init_from {args.init_from}: no {UNETS[args.stage]} there (expected a saved Sat2CityPipeline)")
    args.preset_data = preset
    return args


class StageData:
    """Turns a prepared batch into (clean latent, condition, structure) of one stage.

    ``latent_target`` "sample" trains on posterior samples of the geometry latents (the usual
    latent-diffusion choice), "mean" on the posterior means: worth it when the decoder is much
    better on means than on samples (measured for the small dense VAE; see training/README.md).
    """

    def __init__(
        self,
        stage: str,
        dense_vae: Sat2CityDenseVAE,
        sparse_vae: Sat2CitySparseVAE,
        latent_target: str = "sample",
        sparse_height: bool = False,
    ) -> None:
        if latent_target not in LATENT_TARGETS:
            raise ValueError(f"latent_target must be one of {LATENT_TARGETS}, got {latent_target!r}")
        self.stage, self.dense_vae, self.sparse_vae, self.latent_target = stage, dense_vae, sparse_vae, latent_target
        self.sparse_height = sparse_height  # the sparse stage also sees P_h's height columns
        self._cached = None

    def _posterior(self, posterior, generator: torch.Generator | None):
        return posterior.mode() if self.latent_target == "mean" else posterior.sample(generator)

    def _encode(self, voxels):
        """The frozen VAE's encoding of ``voxels``, computed once per batch (echoed steps reuse it)."""
        if self._cached is None or self._cached[0] is not voxels:
            vae = self.dense_vae if self.stage == "dense" else self.sparse_vae
            self._cached = (voxels, vae.encode(voxels))
        return self._cached[1]

    @torch.no_grad()
    def latent(self, prepared: dict, generator: torch.Generator | None = None) -> tuple[torch.Tensor, object]:
        """Unscaled clean latent (dense ``[B, C, X, Y, Z]`` or per-voxel ``[N, C]``) and the sparse structure."""
        voxels = prepared["voxels"]
        if self.stage == "dense":
            return self._posterior(self._encode(voxels).latent_dist, generator), None
        enc = self._encode(voxels)
        if self.stage == "sparse":
            return self._posterior(enc.latent_dist, generator).feats, enc
        return enc.appearance.feats, enc

    def condition(self, prepared: dict, enc, encoder: torch.nn.Module | None) -> torch.Tensor:
        voxels = prepared["voxels"]
        if self.stage == "dense":
            shape = self.dense_vae.latent_shape()
            return encoder(prepared["ph_points"], prepared["ph_batch"], shape, voxels.batch_size)
        with torch.no_grad():
            if self.stage == "sparse":
                height = (prepared["ph_points"], prepared["ph_batch"]) if self.sparse_height else None
                coords, cond = sparse_condition(voxels, self.sparse_vae.downsample_factor, height)
                return cond[match_coords(enc.appearance.coords, coords, voxels.batch_size)]
            geometry = self.sparse_vae.decode(enc.latent_dist.mode(), target=voxels)
            return struct_condition(geometry, enc.appearance)


def widen_condition(unet: Sat2CitySparseUNet3D, condition_channels: int) -> Sat2CitySparseUNet3D:
    """``unet`` taking ``condition_channels`` condition channels, the new ones appended with zero
    input weights: it starts as exactly the old model (a trained sparse stage gains the height
    columns without starting over, like widening a U-Net's conv_in for inpainting)."""
    old = unet.config.condition_channels
    if condition_channels < old:
        raise ValueError(f"cannot narrow the condition from {old} to {condition_channels} channels")
    wide = Sat2CitySparseUNet3D.from_config({**unet.config, "condition_channels": condition_channels})
    state = unet.state_dict()
    weight = state["conv_in.weight"]  # [out, k, k, k, in_channels + condition_channels]
    state["conv_in.weight"] = torch.cat([weight, weight.new_zeros(*weight.shape[:-1], condition_channels - old)], -1)
    wide.load_state_dict(state)
    return wide


def measure_scale(data: StageData, loader, args, grid, device) -> float:
    """``1 / std`` of the clean latents over ``--scale_batches`` batches (diffusers' ``scaling_factor``)."""
    total = total_sq = count = 0.0
    for batch in itertools.islice(iter(loader), args.scale_batches):
        x, _ = data.latent(prepare_batch(batch, grid, device))
        x = x.double()
        total, total_sq, count = total + float(x.sum()), total_sq + float((x * x).sum()), count + x.numel()
    mean = total / count
    return 1.0 / math.sqrt(max(total_sq / count - mean * mean, 1e-12))


def diffusion_loss(
    data: StageData,
    unet: torch.nn.Module,
    encoder: torch.nn.Module | None,
    scheduler: DDIMScheduler,
    prepared: dict,
    scale: float,
    p_drop: float,
    generator: torch.Generator | None = None,
    autocast: Callable[[], AbstractContextManager] = nullcontext,
) -> torch.Tensor:
    """v-prediction MSE of one batch: frozen clean latent * ``scale``, the condition zeroed per
    batch item with probability ``p_drop``, uniform timesteps; the condition encoder and the unet
    run under ``autocast``. Per-voxel latents take their item's timestep and dropout."""
    device = prepared["voxels"].device
    num_t = scheduler.config.num_train_timesteps
    x0, enc = data.latent(prepared, generator)
    x0 = x0 * scale
    b = prepared["voxels"].batch_size
    rows = None if enc is None else enc.appearance.coords[:, 0].long()
    with autocast():
        cond = data.condition(prepared, enc, encoder)
        keep = (torch.rand(b, device=device, generator=generator) >= p_drop).to(cond.dtype)
        cond = cond * (keep.view(-1, *[1] * (cond.ndim - 1)) if rows is None else take_rows(keep, rows).unsqueeze(1))
        u = compute_density_for_timestep_sampling("none", b, device=device, generator=generator)
        t = (u * num_t).long().clamp(max=num_t - 1)
        t_rows = t if rows is None else take_rows(t, rows)
        noise = torch.randn(x0.shape, device=device, dtype=x0.dtype, generator=generator)
        noisy = scheduler.add_noise(x0, noise, t_rows)
        target = scheduler.get_velocity(x0, noise, t_rows)
        sample = noisy if enc is None else enc.appearance.replace(noisy)
        pred = unet(sample, t, cond).sample
        pred = pred if enc is None else pred.feats
        return F.mse_loss(pred.float(), target.float())


@torch.no_grad()
def validation_images(data: StageData, unet, encoder, scheduler: DDIMScheduler, prepared: dict, scale: float, steps: int) -> dict:
    """Sample the stage on a held-out batch with DDIM and decode it (teacher-forced for the later stages)."""
    x0, enc = data.latent(prepared)
    cond = data.condition(prepared, enc, encoder)
    generator = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(x0.shape, generator=generator).to(x0.device, x0.dtype)
    scheduler.set_timesteps(steps, device=x0.device)
    for t in scheduler.timesteps:
        sample = x if enc is None else enc.appearance.replace(x)
        v = unet(sample, t, cond).sample
        x = scheduler.step(v if enc is None else v.feats, t, x).prev_sample
    x = x / scale
    voxels = prepared["voxels"]
    images = {"ground_truth": preview(voxels.world_positions(), normal_colors(voxels.feats))}
    if data.stage == "dense":
        out = data.dense_vae.decode(x).sample
        images["dense_sample"] = preview(out.world_positions(), normal_colors(out.feats))
        return images
    svae = data.sparse_vae
    if data.stage == "sparse":
        out = svae.decode(enc.appearance.replace(x)).sample
        images["sparse_sample"] = preview(out.world_positions(), normal_colors(out.feats))
        return images
    geometry = svae.decode(enc.latent_dist.mode(), target=voxels)
    feats = svae.decode_appearance(svae.rehash(enc.appearance.replace(x)), geometry)
    out = geometry.sample
    images["appearance_sample"] = preview(
        out.world_positions(), svae.inverse_sample(feats, out.world_positions(), out.coords[:, 0].long())
    )
    return images


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    preset = args.preset_data
    accelerator = setup_accelerator(
        args, run={"script": "train_sat2city_diffusion", "preset": str(args.preset), "stage": args.stage}
    )
    device = accelerator.device
    saved = {"dtype": torch.float32, "use_safetensors": True}  # fp32 also when --vae_dir is fp16; never a pickle
    dense_vae = Sat2CityDenseVAE.from_pretrained(args.vae_dir / "dense_vae", **saved).to(device).eval().requires_grad_(False)
    sparse_vae = Sat2CitySparseVAE.from_pretrained(args.vae_dir / "sparse_vae", **saved).to(device).eval().requires_grad_(False)
    grid = tuple(dense_vae.config.grid_size)
    unet_name = UNETS[args.stage]
    unet_cls = Sat2CityDenseUNet3D if args.stage == "dense" else Sat2CitySparseUNet3D
    if args.init_from is not None:
        unet = unet_cls.from_pretrained(args.init_from / unet_name, **saved)
        encoder = (
            HeightFieldEncoder.from_pretrained(args.init_from / "condition_encoder", **saved) if args.stage == "dense" else None
        )
        wanted = preset["components"][unet_name]["condition_channels"]
        if args.stage == "sparse" and unet.config.condition_channels < wanted:
            accelerator.print(f"sparse_unet from {args.init_from} widened to the preset's {wanted} condition channels")
            unet = widen_condition(unet, wanted)
    else:
        unet = unet_cls.from_config(preset["components"][unet_name])
        encoder = HeightFieldEncoder.from_config(preset["components"]["condition_encoder"]) if args.stage == "dense" else None
    sparse_height = args.stage == "sparse" and sparse_condition_uses_height(
        unet.config.condition_channels, sparse_vae.downsample_factor
    )
    data = StageData(args.stage, dense_vae, sparse_vae, args.latent_target, sparse_height)
    scheduler = DDIMScheduler.from_config(preset["scheduler"])
    if scheduler.config.prediction_type != "v_prediction":
        raise ValueError(f"Sat2City trains with v_prediction, the preset's scheduler has {scheduler.config.prediction_type!r}")

    out_dir = Path(args.output_dir)
    loader = make_dataloader(preset, args, args.train_batch_size)
    scale_path = out_dir / SCALE_FILE
    if scale_path.is_file():
        scale = read_latent_scale(scale_path)
    else:
        if args.init_from is not None:
            scale, source = pipeline_scale(args.init_from, args.stage), {"from_pipeline": str(args.init_from)}
        else:
            scale, source = measure_scale(data, loader, args, grid, device), {"batches": args.scale_batches}
        if accelerator.is_main_process:
            write_json_atomic(scale_path, {"stage": args.stage, "scaling_factor": scale, "latent_std": 1 / scale, **source})
    accelerator.print(f"{args.stage} scaling_factor (1 / latent std): {scale:.5g}")

    modules = [unet] + ([encoder] if encoder is not None else [])
    emas = [create_ema(m, args) for m in modules]
    params = list(itertools.chain.from_iterable(m.parameters() for m in modules))
    optimizer = torch.optim.AdamW(params, lr=args.learning_rate)
    lr_scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=args.max_train_steps * accelerator.num_processes,
    )
    prepared_modules = accelerator.prepare(*modules, optimizer, loader, lr_scheduler)
    unet = prepared_modules[0]
    encoder = prepared_modules[1] if encoder is not None else None
    optimizer, loader, lr_scheduler = prepared_modules[-3:]
    global_step = maybe_resume(accelerator, args)
    val_batch = prepare_batch(next(iter(make_dataloader(preset, args, 1, "validation"))), grid, device)
    batches = echo_batches(loader, args.data_echo, global_step * args.gradient_accumulation_steps)
    p_drop = float(accelerator.unwrap_model(unet).config.condition_dropout)
    t0 = time.time()
    for m in modules:
        m.train()
    losses = StepLosses(args.gradient_accumulation_steps)
    last_batch = prepared = None
    while global_step < args.max_train_steps:
        with accelerator.accumulate(*[unet] + ([encoder] if encoder is not None else [])):
            batch = next(batches)
            if batch is not last_batch:  # an echoed batch keeps its device copy (and cached VAE encoding)
                last_batch, prepared = batch, prepare_batch(batch, grid, device)
            generator = step_generator(args.seed, global_step, device)
            loss = diffusion_loss(data, unet, encoder, scheduler, prepared, scale, p_drop, generator, accelerator.autocast)
            optimizer_step(accelerator, loss, params, optimizer, lr_scheduler)
        losses.add({"loss": loss})
        if not accelerator.sync_gradients:
            continue
        step_loss = losses.finish(global_step)
        global_step += 1
        step_emas(emas, [unet] + ([encoder] if encoder is not None else []))
        if finish_step(
            accelerator,
            args,
            global_step,
            t0,
            lambda: losses.logs(accelerator, step_loss, lr_scheduler),
            lambda: validation_images(
                data,
                accelerator.unwrap_model(unet),
                encoder and accelerator.unwrap_model(encoder),
                scheduler,
                val_batch,
                scale,
                args.validation_inference_steps,
            ),
        ):
            break
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        names = [unet_name] + (["condition_encoder"] if encoder is not None else [])
        with atomic_folders(*(out_dir / name for name in names)) as folders:
            for module, ema, folder in zip([unet] + ([encoder] if encoder is not None else []), emas, folders):
                save_model(accelerator.unwrap_model(module), ema, folder)
        if args.push_to_hub:
            fields = card_fields(args, "Sat2City", f"{args.stage} diffusion stage")
            push_folder_to_hub(args, out_dir, "sat2city", fields)
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    sys.exit(main())
