"""Train GaussianCity's generator (scene encoder + background and building decoders) with its
semantic discriminator (Xie et al., Sec. 3.5).

Losses, all on masked images (pixels the ground truth covers): 10 L1 + 10 VGG19 perceptual
(relu3_1/4_1/5_1 weighted 0.125/0.25/1.0) + 0.5 GAN, the GAN term being the per-pixel
cross-entropy of a GANCraft (N+1)-class discriminator against the frame's segmentation. Adam
(0.9, 0.999): generator lr ``--learning_rate`` (1e-4), discriminator ``--discriminator_lr`` (1e-5)
with a linear warm-up over ``--discriminator_warmup_steps``. Style codes are drawn from the
decoders' distribution (standard normal) at every step, as at inference.

Data (``--data``):
- ``procedural``: ``--num_cities`` procedural cities; frames are orbit/drone views rendered from
  each city's coloured surface points as small Gaussians (``render_gaussians``, same cameras);
  the last city is held out for validation previews.
- ``googleearth``: the GoogleEarth layout of CityDreamer / GaussianCity, one folder per city::

      <data_dir>/<city>/semantic.png   uint8 [H, W] class ids of diffusers_city.data.CLASSES
                       /height.npy     float [H, W] surface height in metres (or height.png, uint8 metres)
                       /cameras.json   {"meters_per_pixel": m, "origin": [x, y, z],
                                        "frames": [{"file": "frames/0000.png", "K": 3x3,
                                                    "world_to_cam": 4x4 (OpenCV)}, ...]}
                       /frames/*.png|jpg  RGB frames of the trajectory

  (their per-city semantic map and height field, camera poses and frames; convert the class ids
  to this package's table once). Frames are resized to ``--resolution`` (K scaled to match).

Segmentations of every frame are rendered from the layout's own BEV points (class per pixel), so
both data sources need only layouts, cameras and frames.

Views and style codes of each optimizer step are drawn from generators seeded with (seed, step)
(``step_seed``), so a run resumed from any checkpoint repeats an uninterrupted one exactly.

The final pipeline is saved as a whole (written beside ``--pipeline_out``, then renamed into place:
never a mix of old and new components). Writing into the shipped ``pipelines/`` folder (the
default pipeline and the demo layout) needs ``--update_shipped``.

Data parallel (``accelerate launch --num_processes N``): every process draws the same global batch
of ``train_batch_size x N x gradient_accumulation_steps`` views per optimizer step (same seed) and
renders its own slice of it through the distributed generator and discriminator, so N processes
follow the loss curve of one process with the same global batch. Logged losses are global-batch
means.

    accelerate launch training/train_gaussiancity.py --preset small --max_train_steps 3000 \\
        --output_dir out/gc --pipeline_out pipelines/gaussiancity/default
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from diffusers_city.data import NUM_CLASSES, CityScene, procedural_city
from diffusers_city.export.atomic import atomic_folders
from diffusers_city.models.gaussiancity import SemanticDiscriminator
from diffusers_city.models.gaussiancity.bev import BEVLayout, visible_bev_points
from diffusers_city.models.shared import VGG19PerceptualLoss
from diffusers_city.pipelines.gaussiancity import GaussianCityPipeline
from diffusers_city.render import Cameras, Gaussians, drone_trajectory, orbit_trajectory, render_gaussians
from diffusers_city.training_utils import (
    create_ema,
    load_training_preset,
    log_step,
    log_validation_images,
    maybe_resume,
    out_of_time,
    push_folder_to_hub,
    refuse_shipped_paths,
    save_checkpoint,
    setup_accelerator,
    step_seed,
    stop_requested,
    training_parser,
)


def parse_args(argv: list[str] | None = None):
    parser = training_parser(__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--data", choices=("procedural", "googleearth"), default="procedural")
    add("--data_dir", type=Path, default=None, help="GoogleEarth root (one folder per city)")
    add("--num_cities", type=int, default=8, help="procedural cities (the last one is held out)")
    add("--city_size_m", type=float, default=192.0)
    add("--points_per_m2", type=float, default=4.0, help="surface points of the procedural ground truth")
    add("--views_per_city", type=int, default=24)
    add("--resolution", default="192x144", help="WxH of the training frames")
    add("--discriminator_lr", type=float, default=1e-5)
    add("--discriminator_warmup_steps", type=int, default=1000)
    add("--lambda_l1", type=float, default=10.0)
    add("--lambda_perceptual", type=float, default=10.0)
    add("--lambda_gan", type=float, default=0.5)
    add("--discriminator_channels", type=int, default=128)
    add("--init_from", type=Path, default=None, help="fine-tune a saved GaussianCity pipeline (its models replace the preset's)")
    add("--vgg_weights", default=None, help="VGG19 safetensors file or Hub repo id (without: perceptual term off)")
    add("--pipeline_out", type=Path, default=None, help="where to save the final pipeline (default OUTPUT_DIR/pipeline)")
    add("--example_layout_out", type=Path, default=None, help="also save the held-out layout there (demo layout)")
    add(
        "--update_shipped",
        action="store_true",
        help="allow --pipeline_out / --example_layout_out inside the shipped pipelines/ folder (the default, the demo's layout)",
    )
    args = parser.parse_args(argv)
    refuse_shipped_paths(
        {"--pipeline_out": args.pipeline_out, "--example_layout_out": args.example_layout_out}, args.update_shipped
    )
    try:
        w, h = (int(v) for v in args.resolution.lower().split("x"))
    except ValueError:
        raise ValueError(f"--resolution must look like 192x144, got {args.resolution!r}") from None
    if w <= 0 or h <= 0:
        raise ValueError(f"--resolution must be positive, got {args.resolution}")
    args.width, args.height = w, h
    if args.data == "googleearth" and (args.data_dir is None or not args.data_dir.is_dir()):
        raise FileNotFoundError(f"--data googleearth needs --data_dir pointing to a folder, got {args.data_dir}")
    if args.data == "procedural" and args.num_cities < 2:
        raise ValueError("--num_cities must be >= 2 (one city is held out)")
    if args.views_per_city < 1:
        raise ValueError("--views_per_city must be >= 1")
    return args


# -- data -------------------------------------------------------------------------------------
@dataclass
class View:
    """One training frame: ``rgb [H, W, 3]``, ``mask [H, W]`` (pixels the frame covers) and
    ``seg [H, W]`` class ids, of camera ``camera`` (in the layout frame of ``city``, where the
    decoders and rasterization run: ``BEVLayout.layout_cameras``) over layout ``city``."""

    city: int
    camera: Cameras
    rgb: torch.Tensor
    mask: torch.Tensor
    seg: torch.Tensor


def label_image(
    layout: BEVLayout, camera: Cameras, pts, labels: torch.Tensor, num_labels: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel label ids ``[H, W]`` and coverage ``[H, W]`` of BEV points ``pts`` carrying
    integer ``labels [N]`` in ``0..num_labels - 1``, seen by layout-frame ``camera``, rendered with
    the label encoded in one colour channel (the front-most points win; edges may take a
    neighbour's label)."""
    n = len(pts)
    device = pts.positions.device
    code = (labels.float() + 0.5) / num_labels
    scale = pts.strides.float() * layout.meters_per_pixel * 0.55
    quats = torch.zeros(n, 4, device=device)
    quats[:, 0] = 1
    g = Gaussians(
        pts.positions,
        quats,
        scale[:, None].expand(n, 3).contiguous(),
        torch.ones(n, device=device),
        torch.stack([code, torch.zeros_like(code), torch.zeros_like(code)], 1),
    )
    out = render_gaussians(g, camera.to(device))
    alpha = out.alpha[0, ..., 0]
    label = torch.floor(out.rgb[0, ..., 0] / alpha.clamp(min=1e-6) * num_labels).clamp(0, num_labels - 1).long()
    return label, alpha > 0.5


def segmentation(layout: BEVLayout, camera: Cameras, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel class ids ``[H, W]`` and coverage ``[H, W]`` of the layout's BEV points visible
    from layout-frame ``camera``."""
    pts = visible_bev_points(layout, camera, device=device)
    return label_image(layout, camera, pts, pts.classes, NUM_CLASSES)


def _point_gaussians(scene: CityScene, device: torch.device) -> Gaussians:
    """The procedural city's coloured surface points as small isotropic Gaussians."""
    pts = torch.from_numpy(np.asarray(scene.points, dtype=np.float32)).to(device)
    cols = torch.from_numpy(np.asarray(scene.colors, dtype=np.float32)).to(device)
    n = pts.shape[0]
    density = float(scene.metadata.get("points_per_m2", 4.0)) if scene.metadata else 4.0
    sigma = 0.6 / math.sqrt(density)
    quats = torch.zeros(n, 4, device=device)
    quats[:, 0] = 1
    return Gaussians(pts, quats, torch.full((n, 3), sigma, device=device), torch.ones(n, device=device), cols)


def procedural_views(args, device, first_seed: int = 1000) -> tuple[list[BEVLayout], list[View], list[CityScene]]:
    """``args.num_cities`` procedural cities (seeds ``first_seed + i``) and their ground-truth views."""
    layouts, views, scenes = [], [], []
    for c in range(args.num_cities):
        scene = procedural_city(first_seed + c, size_m=args.city_size_m, points_per_m2=args.points_per_m2, with_image=False)
        layout = BEVLayout.from_scene(scene)
        gt = _point_gaussians(scene, device)
        half = args.views_per_city // 2
        cams = Cameras.cat(
            [
                orbit_trajectory(
                    scene,
                    max(1, args.views_per_city - half),
                    width=args.width,
                    height=args.height,
                    elevation_deg=30.0 + 10.0 * (c % 3),
                ),
                *([drone_trajectory(scene, half, width=args.width, height=args.height)] if half else []),
            ]
        )
        for i in range(len(cams)):
            cam = layout.layout_cameras(cams[i])  # the scene's points are world, the layout's frame is not
            with torch.no_grad():
                ref = render_gaussians(gt, cams[i].to(device))
                seg, covered = segmentation(layout, cam.to(device), device)
            mask = (ref.alpha[0, ..., 0] > 0.5) & covered
            views.append(View(c, cam, ref.rgb[0].cpu(), mask.cpu(), seg.cpu()))
        layouts.append(layout)
        scenes.append(scene)
    return layouts, views, scenes


def load_googleearth_city(folder: Path, width: int, height: int) -> tuple[BEVLayout, list[tuple[Cameras, torch.Tensor]]]:
    """One city of the GoogleEarth layout (see the module docstring): its layout and its frames
    (resized to ``width x height``) with their cameras, moved into the layout frame in float64
    (georeferenced poses in float32 would be rounded to ~0.5 m)."""
    meta_path = folder / "cameras.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{folder}: no cameras.json")
    meta = json.loads(meta_path.read_text())
    sem = np.asarray(Image.open(folder / "semantic.png"))
    if (folder / "height.npy").is_file():
        hgt = np.load(folder / "height.npy", allow_pickle=False)
    elif (folder / "height.png").is_file():
        hgt = np.asarray(Image.open(folder / "height.png")).astype(np.float32)
    else:
        raise FileNotFoundError(f"{folder}: no height.npy or height.png")
    layout = BEVLayout.from_maps(
        sem, hgt, meters_per_pixel=float(meta.get("meters_per_pixel", 1.0)), origin=tuple(meta.get("origin", (0.0, 0.0, 0.0)))
    )
    frames = []
    for i, frame in enumerate(meta.get("frames", [])):
        path = folder / frame["file"]
        if not path.is_file():
            raise FileNotFoundError(f"{folder}: frame {i} file {frame['file']} is missing")
        image = Image.open(path).convert("RGB")
        K = torch.tensor(frame["K"], dtype=torch.float64)
        K[0] *= width / image.width
        K[1] *= height / image.height
        rgb = torch.from_numpy(np.asarray(image.resize((width, height), Image.BILINEAR), dtype=np.float32) / 255.0)
        cam = Cameras(K[None], torch.tensor(frame["world_to_cam"], dtype=torch.float64)[None], width, height)
        frames.append((layout.layout_cameras(cam).to(dtype=torch.float32), rgb))
    if not frames:
        raise ValueError(f"{folder}: cameras.json lists no frames")
    return layout, frames


def googleearth_views(args, device) -> tuple[list[BEVLayout], list[View], list[CityScene]]:
    cities = sorted(p for p in args.data_dir.iterdir() if (p / "cameras.json").is_file())
    if len(cities) < 2:
        raise ValueError(f"--data_dir {args.data_dir} needs >= 2 city folders with cameras.json (one is held out)")
    layouts, views = [], []
    for c, folder in enumerate(cities):
        layout, frames = load_googleearth_city(folder, args.width, args.height)
        for cam, rgb in frames:
            with torch.no_grad():
                seg, covered = segmentation(layout, cam.to(device), device)
            views.append(View(c, cam, rgb, covered.cpu(), seg.cpu()))
        layouts.append(layout)
    return layouts, views, []


# -- training ---------------------------------------------------------------------------------
def render_view(pipe: GaussianCityPipeline, layout: BEVLayout, camera: Cameras, styles: torch.Tensor, device):
    """The frame ``[H, W, 3]`` the generator renders from layout-frame ``camera``."""
    pts = visible_bev_points(layout, camera, max_distance=float(pipe.scene_encoder.config.max_view_distance), device=device)
    g = pipe.decode_points(layout, pts, styles, device)
    return render_gaussians(g, camera.to(device)).rgb[0]


class GaussianCityGenerator(nn.Module):
    """The pipeline's trainable components (scene encoder, background and building decoders) as
    one module whose forward renders a micro-batch of views, so that distributed data parallel
    sees a single forward per step. Its state dict keys are the component names."""

    def __init__(self, pipe: GaussianCityPipeline) -> None:
        super().__init__()
        self.scene_encoder = pipe.scene_encoder
        self.background_decoder = pipe.background_decoder
        self.building_decoder = pipe.building_decoder
        self.pipe = pipe  # not a module: decodes with the components above

    def forward(self, items: list[tuple[BEVLayout, Cameras, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames ``[B, H, W, 3]`` of ``(layout, camera, styles)`` items, and an exact zero that
        depends on every parameter. Added to the loss, the zero gives each parameter a gradient at
        every step, also when no view of the micro-batch shows a building (or any background), as
        distributed data parallel requires without ``find_unused_parameters``."""
        device = self.building_decoder.device
        frames = torch.stack([render_view(self.pipe, layout, camera, styles, device) for layout, camera, styles in items])
        zero = sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0
        return frames, zero


@contextmanager
def frozen(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` with ``requires_grad`` off: the generator's GAN term reaches the images, not the
    discriminator (whose accumulated gradients must come from its own loss only)."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield module
    finally:
        for p in params:
            p.requires_grad_(True)


def _per_view(loss_fn, logits: torch.Tensor, seg: torch.Tensor, mask: torch.Tensor, real: bool) -> torch.Tensor:
    """``[B]`` masked cross-entropies, one per view (each view averaged over its own pixels)."""
    return torch.stack([loss_fn(logits[i : i + 1], seg[i : i + 1], real, mask[i : i + 1]) for i in range(len(seg))])


def _side_by_side(pred: torch.Tensor, gt: torch.Tensor) -> Image.Image:
    both = torch.cat([pred, gt], 1).clamp(0, 1).detach().cpu().numpy()
    return Image.fromarray((both * 255).round().astype(np.uint8))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    preset = load_training_preset(args, "gaussiancity")
    accelerator = setup_accelerator(args, run={"script": "train_gaussiancity", "preset": str(args.preset), "data": args.data})
    device = accelerator.device
    if args.init_from is not None:
        pipe = GaussianCityPipeline.from_pretrained(args.init_from, dtype=torch.float32, use_safetensors=True)
    else:
        pipe = GaussianCityPipeline.from_preset_dict(preset, seed=args.seed, name=f"--preset {args.preset}")
    generator = GaussianCityGenerator(pipe)
    discriminator = SemanticDiscriminator(num_classes=NUM_CLASSES, base_channels=args.discriminator_channels)
    perceptual = None
    if args.vgg_weights:
        perceptual = VGG19PerceptualLoss.from_weights(args.vgg_weights).to(device)
    elif args.lambda_perceptual > 0:
        accelerator.print("no --vgg_weights given: VGG19 perceptual term off")

    accelerator.print(f"building the {args.data} training views ...")
    layouts, views, scenes = (procedural_views if args.data == "procedural" else googleearth_views)(args, device)
    held_out = len(layouts) - 1
    train_views = [v for v in views if v.city != held_out]
    val_view = next(v for v in views if v.city == held_out)
    accelerator.print(f"{len(train_views)} training views over {held_out} layouts, 1 held-out layout")

    ema = create_ema(generator, args)
    opt_g = torch.optim.Adam(generator.parameters(), lr=args.learning_rate, betas=(0.9, 0.999))
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=args.discriminator_lr, betas=(0.9, 0.999))
    generator, discriminator, opt_g, opt_d = accelerator.prepare(generator, discriminator, opt_g, opt_d)
    plain_discriminator = accelerator.unwrap_model(discriminator)
    global_step = maybe_resume(accelerator, args)
    per_process, accumulation = args.train_batch_size, args.gradient_accumulation_steps
    global_batch = per_process * accelerator.num_processes * accumulation
    accelerator.print(
        f"global batch {global_batch} = {per_process} per process x {accelerator.num_processes} "
        f"processes x {accumulation} accumulation steps"
    )
    start = time.time()
    generator.train()
    while global_step < args.max_train_steps:
        # Seeded with (seed, step) on every process: all draw the same global batch (views and styles),
        # each uses its slice, and a resumed run draws what an uninterrupted one does.
        seed = step_seed(args.seed, global_step)
        picks = np.random.default_rng(seed).integers(0, len(train_views), global_batch)
        style_gen = torch.Generator().manual_seed(seed)
        styles = [pipe.sample_styles(layouts[train_views[i].city], style_gen) for i in picks]
        sums = torch.zeros(3, device=device)  # l1, loss_g, loss_d summed over this process's views
        for micro in range(accumulation):
            first = (micro * accelerator.num_processes + accelerator.process_index) * per_process
            batch = [(train_views[i], s) for i, s in zip(picks[first : first + per_process], styles[first : first + per_process])]
            with accelerator.accumulate(generator, discriminator):
                pred, zero = generator([(layouts[v.city], v.camera, s) for v, s in batch])
                gt = torch.stack([v.rgb for v, _ in batch]).to(device)
                mask = torch.stack([v.mask for v, _ in batch]).to(device)
                seg = torch.stack([v.seg for v, _ in batch]).to(device)
                m = mask[..., None].float()
                l1 = ((pred - gt).abs() * m).flatten(1).sum(1) / (m.flatten(1).sum(1) * 3).clamp(min=1)
                loss = args.lambda_l1 * l1
                pred_m, gt_m = (pred * m).permute(0, 3, 1, 2), (gt * m).permute(0, 3, 1, 2)
                if perceptual is not None:
                    loss = loss + args.lambda_perceptual * torch.stack(
                        [perceptual(p[None], g[None]) for p, g in zip(pred_m, gt_m)]
                    )
                if args.lambda_gan > 0:
                    with frozen(plain_discriminator) as d:
                        loss = loss + args.lambda_gan * _per_view(d.loss, d(pred_m), seg, mask, True)
                accelerator.backward(loss.mean() + zero)
                opt_g.step()
                opt_g.zero_grad(set_to_none=True)
                loss_d = torch.zeros(len(batch), device=device)
                if args.lambda_gan > 0:
                    warm = min(1.0, (global_step + 1) / max(1, args.discriminator_warmup_steps))
                    for group in opt_d.param_groups:
                        group["lr"] = args.discriminator_lr * warm
                    logits = discriminator(torch.cat([gt_m, pred_m.detach()]))
                    real, fake = logits.chunk(2)
                    loss_d = _per_view(plain_discriminator.loss, real, seg, mask, True) + _per_view(
                        plain_discriminator.loss, fake, seg, mask, False
                    )
                    accelerator.backward(loss_d.mean())
                    opt_d.step()
                    opt_d.zero_grad(set_to_none=True)
            sums += torch.stack([l1.detach().sum(), loss.detach().sum(), loss_d.detach().sum()])
        global_step += 1
        if ema is not None:
            ema.step(generator.parameters())
        means = (accelerator.reduce(sums, "sum") / global_batch).tolist()
        logs = {"l1": means[0], **({"loss_d": means[2]} if args.lambda_gan > 0 else {}), "loss_g": means[1]}
        if global_step % args.logging_steps == 0:
            log_step(accelerator, args, logs, global_step, start)
        time_is_up = out_of_time(accelerator, args, start)
        if global_step % args.checkpointing_steps == 0 or time_is_up or global_step == args.max_train_steps:
            save_checkpoint(accelerator, args, global_step)
        validate = global_step % args.validation_steps == 0 or time_is_up or global_step == args.max_train_steps
        if validate and accelerator.is_main_process:
            with torch.no_grad():
                layout = layouts[val_view.city]
                frame = render_view(
                    pipe, layout, val_view.camera, pipe.sample_styles(layout, torch.Generator().manual_seed(0)), device
                )
            log_validation_images(accelerator, args, {"held_out": _side_by_side(frame, val_view.rgb.to(device))}, global_step)
        if time_is_up:
            why = "SIGTERM" if stop_requested() else f"--max_train_minutes {args.max_train_minutes}"
            accelerator.print(f"{why}: stopping at step {global_step}")
            break

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if ema is not None:
            ema.copy_to(generator.parameters())
        folder = args.pipeline_out or Path(args.output_dir) / "pipeline"
        layout = args.example_layout_out if scenes else None
        # the pipeline and the demo layout it was trained for replace their old versions together
        with atomic_folders(folder, *([layout] if layout is not None else [])) as (tmp, *tmp_layout):
            pipe.save_pretrained(tmp)
            if layout is not None:
                scenes[held_out].replace(points=None, colors=None, normals=None, point_classes=None).save(tmp_layout[0])
        accelerator.print(f"saved the pipeline to {folder}")
        if layout is not None:
            accelerator.print(f"saved the held-out layout to {layout}")
        if args.push_to_hub:
            push_folder_to_hub(
                args,
                folder,
                "gaussiancity",
                {
                    "title": "GaussianCity",
                    "description": "Generative Gaussian splatting of unbounded 3D cities from BEV layouts.",
                    "preset": args.preset,
                    "data": args.data,
                    "steps": global_step,
                },
            )
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
