"""Train CityDreamer's BEV layout generator (Xie et al., Sec. 3.1) on diffusers' own networks.

``--stage vq``: the tokenizer, a ``VQModel`` over layout crops (``layout_codec.layout_tensor``:
scaled height + one-hot classes), with ``layout_vq_loss`` (5 L1 height + 10 smoothness + class CE
+ the quantiser's codebook / commitment loss). diffusers' ``VectorQuantizer`` never revives a
code once the encoder stops choosing it, so every ``--codebook_restart_every`` steps the codes no
batch used since the last restart are re-initialised from encoder outputs of the step's global
batch, drawn k-means++ style (far from the live codes, so restarts do not duplicate them; the
EMA's copy of the codebook too; ``0`` turns restarts off). Codebook use and perplexity are logged.
Writes ``<output_dir>/vqvae`` (EMA weights with ``--use_ema``).

``--stage tokens --vqvae DIR``: the generator, a ``CityLayoutTransformer2DModel`` (``UVit2DModel``
with position embeddings) trained with the MaskGIT objective on the frozen tokenizer's token
grids: per sample r ~ U(0, 1), a fraction cos(r pi / 2) of the tokens (the ``AmusedScheduler``'s
cosine schedule; at least one) is replaced by the mask id ``num_vq_embeddings`` and
cross-entropy is taken on the masked tokens only, unconditionally
(``null_condition``). Each city of the cache is tokenized once, whole, in its 8 orientations
(the token cache, ``<latent_cache_dir>/tokens-<key>.safetensors``, keyed by the data settings and
the tokenizer's weights); each sample is a random ``window_tokens`` crop of one grid. With
probability ``--outpaint_prob`` a sample is instead fully masked except border bands
``window_tokens - window_stride`` tokens wide: the input the sliding-window sampler gives every
window after the first (the overlap with windows already generated, the rest to extrapolate),
which the cosine schedule alone would almost never show. Writes the whole
``CityLayoutPipeline`` (tokenizer, transformer, ``AmusedScheduler``, the preset's settings) to
``--pipeline_out`` (default ``<output_dir>/pipeline``), written beside it and renamed into place.

Data: ``--num_cities`` procedural layouts (``procedural_city``, seeds 1000, 1001, ... at the
preset's metres per pixel, class ids of ``diffusers_city.data.classes``) of ``--city_size_m``,
generated once (``--dataloader_num_workers`` processes; kept as ``.npz`` in ``--cache_dir``
when given). Seeds 7000+ and 9000+ are the benchmarks' held-out layouts: never train on them
(``parse_args`` refuses a seed range reaching them); the previews use seed 999. Each step draws
its crops (``--resolution`` px, random 90 degree rotations and flips), masks and restarts from
``(seed, step)`` alone (``step_seed``), so the loop needs no loader and a resumed run repeats an
uninterrupted one exactly.

Data parallel (``accelerate launch --num_processes N``): every process draws the same global batch
of ``train_batch_size x N x gradient_accumulation_steps`` samples and trains on its slice; logged
terms are global-batch means, and codebook use is counted over the global batch.

    accelerate launch training/train_citylayout.py --stage vq --preset small --output_dir runs/layout/vq
    accelerate launch training/train_citylayout.py --stage tokens --preset small \\
        --vqvae runs/layout/vq/vqvae --output_dir runs/layout/tokens
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from diffusers import AmusedScheduler, VQModel  # noqa: E402
from diffusers.optimization import get_scheduler  # noqa: E402
from sat2city_common import save_model  # noqa: E402

from diffusers_city.data import procedural_city  # noqa: E402
from diffusers_city.data.classes import semantic_to_rgb  # noqa: E402
from diffusers_city.export.atomic import atomic_folders, atomic_write  # noqa: E402
from diffusers_city.models.citylayout import CityLayoutTransformer2DModel  # noqa: E402
from diffusers_city.models.citylayout.layout_codec import (  # noqa: E402
    decode_tokens,
    layout_tensor,
    layout_vq_loss,
    null_condition,
    split_output,
    token_factor,
)
from diffusers_city.training_utils import (  # noqa: E402
    StepLosses,
    create_ema,
    finish_step,
    load_training_preset,
    maybe_resume,
    model_from_preset_or_folder,
    optimizer_step,
    push_folder_to_hub,
    refuse_shipped_paths,
    setup_accelerator,
    step_emas,
    step_seed,
    training_parser,
)

TRAIN_SEED = 1000  # first training city
HELD_OUT_SEEDS = (7000, 9000)  # first seeds of the benchmarks' held-out layouts
PREVIEW_SEED = 999  # the previews' city: no training city, no benchmark one
_SAVED = {"torch_dtype": torch.float32, "use_safetensors": True}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = training_parser(__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--stage", choices=("vq", "tokens"), required=True)
    add("--num_cities", type=int, default=16, help="procedural training cities (seeds 1000, 1001, ...)")
    add("--city_size_m", type=float, default=None, help="side of each city (default: 4 crops, 1024 m for small)")
    add("--cache_dir", type=Path, default=None, help="keep the generated cities here as .npz (shared between runs)")
    add("--resolution", type=int, default=None, help="vq crop side in px (default: window_tokens x token factor)")
    add("--init_from", type=Path, default=None, help="warm start: a saved VQModel (vq) or transformer (tokens) folder")
    add("--codebook_restart_every", type=int, default=200, help="vq: steps between dead-code restarts (0: off)")
    add("--vqvae", type=Path, default=None, help="tokens: the trained VQModel folder (or a pipeline folder holding vqvae/)")
    add("--latent_cache_dir", type=Path, default=None, help="tokens: where token caches live (default OUTPUT_DIR/token_cache)")
    add("--label_smoothing", type=float, default=0.1, help="tokens: label smoothing of the masked-token cross-entropy")
    add("--outpaint_prob", type=float, default=0.25, help="tokens: share of samples masked as a sliding window's extrapolation")
    add("--validation_inference_steps", type=int, default=12, help="tokens: AmusedScheduler steps of the preview sample")
    add("--pipeline_out", type=Path, default=None, help="tokens: where to save the pipeline (default OUTPUT_DIR/pipeline)")
    add("--update_shipped", action="store_true", help="allow --pipeline_out inside the shipped pipelines/ folder")
    args = parser.parse_args(argv)
    refuse_shipped_paths({"--pipeline_out": args.pipeline_out}, args.update_shipped)
    if args.num_cities < 1:
        parser.error(f"--num_cities must be >= 1, got {args.num_cities}")
    last = TRAIN_SEED + args.num_cities - 1
    if last >= min(HELD_OUT_SEEDS):
        parser.error(
            f"--num_cities {args.num_cities} reaches seed {last}: seeds {HELD_OUT_SEEDS[0]}+ are held out for benchmarks"
        )
    if args.codebook_restart_every < 0:
        parser.error(f"--codebook_restart_every must be >= 0, got {args.codebook_restart_every}")
    if not 0.0 <= args.label_smoothing < 1.0:
        parser.error(f"--label_smoothing must be in [0, 1), got {args.label_smoothing}")
    if not 0.0 <= args.outpaint_prob <= 1.0:
        parser.error(f"--outpaint_prob must be in [0, 1], got {args.outpaint_prob}")
    if args.validation_inference_steps < 1:
        parser.error(f"--validation_inference_steps must be >= 1, got {args.validation_inference_steps}")
    if args.stage == "vq":
        given = [flag for flag in ("vqvae", "pipeline_out") if getattr(args, flag) is not None]
        if given:
            parser.error(f"--stage vq trains the tokenizer: --{given[0]} belongs to --stage tokens")
    else:
        if args.vqvae is not None and (args.vqvae / "vqvae" / "config.json").is_file():
            args.vqvae = args.vqvae / "vqvae"
        if args.vqvae is None or not (args.vqvae / "config.json").is_file():
            parser.error(
                f"--stage tokens needs --vqvae DIR of a trained VQModel (or a pipeline holding vqvae/), got {args.vqvae}"
            )
    preset = load_training_preset(args, "citylayout")
    settings = preset.get("config", {})
    missing = [k for k in ("meters_per_pixel", "height_scale", "window_tokens", "window_stride") if k not in settings]
    if missing:
        parser.error(f"--preset {args.preset}: its 'config' lacks {missing}")
    if not 0 < settings["window_stride"] <= settings["window_tokens"]:
        parser.error(f"--preset {args.preset}: window_stride must be in 1..window_tokens, got {settings['window_stride']}")
    factor = token_factor(VQModel.from_config(preset["components"]["vqvae"]))
    args.window_px = settings["window_tokens"] * factor
    args.resolution = args.resolution or args.window_px
    if args.resolution % factor:
        parser.error(f"--resolution {args.resolution} must be a multiple of the tokenizer's {factor} px tokens")
    mpp = float(settings["meters_per_pixel"])
    args.city_size_m = args.city_size_m or 4 * args.resolution * mpp
    args.city_px = int(round(args.city_size_m / mpp)) // factor * factor
    needed = max(args.resolution, args.window_px)
    if args.city_px < needed:
        parser.error(f"--city_size_m {args.city_size_m}: {args.city_px} px, less than one {needed} px crop / window")
    args.preset_data, args.factor = preset, factor
    return args


# -- data -------------------------------------------------------------------------------------
def load_cities(args: argparse.Namespace, accelerator) -> tuple[np.ndarray, np.ndarray]:
    """Class ids ``[N, S, S]`` (uint8) and heights in metres ``[N, S, S]`` (float32) of the training
    cities, generated in ``--dataloader_num_workers`` processes (or read from ``--cache_dir``)."""
    mpp = float(args.preset_data["config"]["meters_per_pixel"])
    seeds = [TRAIN_SEED + i for i in range(args.num_cities)]
    if args.cache_dir is None:
        return generate_cities(seeds, args.city_px, mpp, args.dataloader_num_workers)
    paths = [args.cache_dir / f"city-{s}-{args.city_px}px-{mpp:g}m.npz" for s in seeds]
    if accelerator.is_main_process:
        todo = [(s, p) for s, p in zip(seeds, paths) if not p.is_file()]
        if todo:
            accelerator.print(f"generating {len(todo)} cities into {args.cache_dir} ...")
            sem, hgt = generate_cities([s for s, _ in todo], args.city_px, mpp, args.dataloader_num_workers)
            args.cache_dir.mkdir(parents=True, exist_ok=True)
            for (_, path), s, h in zip(todo, sem, hgt):
                with atomic_write(path) as tmp, open(tmp, "wb") as f:
                    np.savez(f, semantic=s, height=h)
    accelerator.wait_for_everyone()
    loaded = [np.load(p, allow_pickle=False) for p in paths]
    return np.stack([d["semantic"] for d in loaded]), np.stack([d["height"] for d in loaded])


def generate_cities(seeds: list[int], size_px: int, mpp: float, workers: int) -> tuple[np.ndarray, np.ndarray]:
    make = partial(procedural_city, size_m=size_px * mpp, meters_per_pixel=mpp, with_points=False, with_image=False)
    if workers > 0:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            scenes = list(pool.map(make, seeds))
    else:
        scenes = [make(s) for s in seeds]
    sem = np.stack([np.asarray(s.semantic, np.uint8)[:size_px, :size_px] for s in scenes])
    return sem, np.stack([np.asarray(s.height, np.float32)[:size_px, :size_px] for s in scenes])


def draw_crops(rng: np.random.Generator, count: int, num_cities: int, city_px: int, crop: int, turns: bool = True) -> np.ndarray:
    """``[count, 5]`` crops: city, row, column, quarter turns, flip (``[count, 3]`` without ``turns``)."""
    columns = [rng.integers(0, num_cities, count), *(rng.integers(0, city_px - crop + 1, count) for _ in range(2))]
    if turns:
        columns += [rng.integers(0, 4, count), rng.integers(0, 2, count)]
    return np.stack(columns, 1)


def orient(a: np.ndarray, turns: int, flip: int) -> np.ndarray:
    """``a [..., H, W]`` turned by ``turns`` quarter turns, then mirrored left-right when ``flip``."""
    a = np.rot90(a, int(turns), axes=(-2, -1))
    return a[..., ::-1] if flip else a


def take_crops(cities: tuple[np.ndarray, np.ndarray], crops: np.ndarray, size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Class ids ``[B, size, size]`` (long) and heights ``[B, size, size]`` of ``crops`` (``draw_crops``)."""
    sem, hgt = [], []
    for c, i, j, turns, flip in crops.tolist():
        sem.append(orient(cities[0][c, i : i + size, j : j + size], turns, flip).copy())
        hgt.append(orient(cities[1][c, i : i + size, j : j + size], turns, flip).copy())
    return torch.from_numpy(np.stack(sem)).long().to(device), torch.from_numpy(np.stack(hgt)).to(device)


def preview_layout(args: argparse.Namespace, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The previews' crop: the centre of city ``PREVIEW_SEED``, ``[1, R, R]`` class ids and heights."""
    mpp = float(args.preset_data["config"]["meters_per_pixel"])
    r = args.resolution
    scene = procedural_city(PREVIEW_SEED, size_m=r * mpp, meters_per_pixel=mpp, with_points=False, with_image=False)
    sem = torch.from_numpy(np.asarray(scene.semantic, np.int64)[:r, :r]).to(device)[None]
    return sem, torch.from_numpy(np.asarray(scene.height, np.float32)[:r, :r]).to(device)[None]


# -- previews ---------------------------------------------------------------------------------
def class_image(*semantics: torch.Tensor) -> Image.Image:
    """Class maps ``[H, W]`` side by side, in the class table's colours."""
    rgb = np.concatenate([semantic_to_rgb(s.cpu().numpy()) for s in semantics], 1)
    return Image.fromarray((rgb * 255).round().astype(np.uint8))


def height_image(*heights: torch.Tensor) -> Image.Image:
    """Height maps ``[H, W]`` side by side in gray, 0 m black, the highest of them white."""
    both = torch.cat([h.float().cpu() for h in heights], 1).clamp(min=0)
    return Image.fromarray((both / both.max().clamp(min=1e-6) * 255).round().to(torch.uint8).numpy())


def decoded_images(vqvae, tokens: torch.Tensor, height_scale: float) -> dict[str, Image.Image]:
    logits, height = split_output(decode_tokens(vqvae, tokens), height_scale)
    return {"sample_classes": class_image(logits[0].argmax(0)), "sample_heights": height_image(height[0])}


# -- stage vq ---------------------------------------------------------------------------------
class Tokenizer(nn.Module):
    """The ``VQModel`` with the per-code usage since the last restart (a buffer, so checkpoints
    carry it), as one module whose forward also returns the chosen codes and the encoder outputs
    (one forward per step for distributed data parallel)."""

    def __init__(self, vqvae: VQModel) -> None:
        super().__init__()
        self.vqvae = vqvae
        self.register_buffer("code_usage", torch.zeros(vqvae.config.num_vq_embeddings))

    def forward(self, layout: torch.Tensor):
        """Reconstruction, codebook loss, codes ``[B * h * w]`` and encoder outputs ``[B, D, h, w]``."""
        latents = self.vqvae.encode(layout).latents
        quant, commit_loss, (_, _, codes) = self.vqvae.quantize(latents)
        return self.vqvae.decode(quant, force_not_quantize=True).sample, commit_loss, codes.flatten(), latents


def code_stats(counts: torch.Tensor) -> dict[str, float]:
    """Perplexity of the code histogram ``counts`` and the share of codes it uses."""
    p = counts / counts.sum().clamp(min=1)
    perplexity = torch.exp(-(p * torch.log(p.clamp(min=1e-12))).sum())
    return {"perplexity": float(perplexity), "codes_used": float((counts > 0).float().mean())}


@torch.no_grad()
def restart_dead_codes(tokenizer: Tokenizer, ema, latents: torch.Tensor, generator: torch.Generator) -> int:
    """Re-initialise the codes ``tokenizer.code_usage`` saw unused from rows of the encoder outputs
    ``latents [M, D]`` (the same on every process), in the EMA too; reset the usage. Rows are drawn
    with probability proportional to their squared distance to the nearest live code (k-means++
    seeding): uniform draws mostly copy the frequent patches (streets, roof interiors) that live
    codes already hold. Returns how many codes were restarted."""
    embedding = tokenizer.vqvae.quantize.embedding.weight
    dead = (tokenizer.code_usage == 0).nonzero().flatten()
    if len(dead):
        live = embedding[tokenizer.code_usage > 0].float()
        weights = torch.ones(len(latents))
        if len(live):
            weights = torch.cdist(latents.float(), live).amin(1).square().cpu().double()
        if not float(weights.sum()) > 0:
            weights = torch.ones(len(latents), dtype=torch.float64)
        rows = torch.multinomial(weights, len(dead), replacement=True, generator=generator).to(latents.device)
        embedding[dead] = latents[rows].to(embedding.dtype)
        if ema is not None:
            index = next(i for i, p in enumerate(tokenizer.vqvae.parameters()) if p is embedding)
            ema.shadow_params[index][dead] = embedding[dead].to(ema.shadow_params[index].dtype)
    tokenizer.code_usage.zero_()
    return len(dead)


def train_vq(args: argparse.Namespace, accelerator, cities) -> Path:
    preset, device = args.preset_data, accelerator.device
    height_scale = float(preset["config"]["height_scale"])
    vqvae = model_from_preset_or_folder(VQModel, preset["components"]["vqvae"], args.init_from)
    tokenizer = Tokenizer(vqvae)
    ema = create_ema(vqvae, args)
    optimizer = torch.optim.AdamW(tokenizer.parameters(), lr=args.learning_rate)
    lr_scheduler = get_scheduler(
        args.lr_scheduler, optimizer, num_warmup_steps=args.lr_warmup_steps, num_training_steps=args.max_train_steps
    )
    model, optimizer, lr_scheduler = accelerator.prepare(tokenizer, optimizer, lr_scheduler)
    global_step = maybe_resume(accelerator, args)
    preview = preview_layout(args, device) if accelerator.is_main_process else None
    num_codes = vqvae.config.num_vq_embeddings
    per_process, accumulation, processes = args.train_batch_size, args.gradient_accumulation_steps, accelerator.num_processes
    losses = StepLosses(accumulation)

    @torch.no_grad()
    def images() -> dict[str, Image.Image]:
        sem, hgt = preview
        vqvae.eval()
        logits, height = split_output(vqvae(layout_tensor(sem, hgt, height_scale)).sample, height_scale)
        vqvae.train()
        return {"classes": class_image(sem[0], logits[0].argmax(0)), "heights": height_image(hgt[0], height[0])}

    start = time.time()
    model.train()
    while global_step < args.max_train_steps:
        crops = draw_crops(
            np.random.default_rng(step_seed(args.seed, global_step)),
            per_process * processes * accumulation,
            args.num_cities,
            args.city_px,
            args.resolution,
        )
        counts = torch.zeros(num_codes, device=device)
        for micro in range(accumulation):
            first = (micro * processes + accelerator.process_index) * per_process
            sem, hgt = take_crops(cities, crops[first : first + per_process], args.resolution, device)
            with accelerator.accumulate(model):
                with accelerator.autocast():
                    sample, commit_loss, codes, latents = model(layout_tensor(sem, hgt, height_scale))
                terms = layout_vq_loss(sample.float(), sem, hgt, commit_loss.float(), height_scale)
                optimizer_step(accelerator, terms["loss"], model.parameters(), optimizer, lr_scheduler)
            losses.add(terms)
            counts += torch.bincount(codes, minlength=num_codes).float()
        means = losses.finish(global_step)
        global_step += 1
        step_emas([ema], [vqvae])
        counts = accelerator.reduce(counts, "sum")
        tokenizer.code_usage += counts
        restarted = 0
        if args.codebook_restart_every and global_step % args.codebook_restart_every == 0:
            pool = accelerator.gather(latents.detach().permute(0, 2, 3, 1).reshape(-1, latents.shape[1]).contiguous())
            generator = torch.Generator().manual_seed(step_seed(args.seed, global_step))
            restarted = restart_dead_codes(tokenizer, ema, pool, generator)
        if finish_step(
            accelerator,
            args,
            global_step,
            start,
            lambda: (
                losses.logs(accelerator, means, lr_scheduler)
                | code_stats(counts)
                | ({"restarted_codes": restarted} if args.codebook_restart_every else {})
            ),
            images,
        ):
            break
    accelerator.wait_for_everyone()
    folder = Path(args.output_dir) / "vqvae"
    if accelerator.is_main_process:
        with atomic_folders(folder) as (tmp,):
            save_model(vqvae, ema, tmp)
        accelerator.print(f"saved the tokenizer to {folder}")
    return folder


# -- stage tokens -----------------------------------------------------------------------------
def cosine_mask_ratio(r: torch.Tensor) -> torch.Tensor:
    """Share of masked tokens at schedule position ``r`` in [0, 1]: the AmusedScheduler's cosine schedule."""
    return torch.cos(r * math.pi / 2)


def mask_tokens(
    tokens: torch.Tensor, mask_id: int, outpaint_prob: float, band: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Transformer inputs (masked tokens set to ``mask_id``) and the mask ``[B, h, w]`` (bool) of
    token grids ``tokens [B, h, w]``, drawn on the CPU from ``generator``.

    MaskGIT: a random cos(r pi / 2) share of each grid (at least one token). With probability
    ``outpaint_prob`` a grid is masked as a sliding window's extrapolation instead: all but a
    random non-empty set of its border bands, ``band`` tokens wide, are masked.
    """
    b, h, w = tokens.shape
    ratio = cosine_mask_ratio(torch.rand(b, generator=generator))
    count = (ratio * h * w).floor().clamp(min=1)
    noise = torch.rand(b, h * w, generator=generator)
    kth = noise.sort(1).values.gather(1, count.long()[:, None] - 1)
    masked = (noise <= kth).reshape(b, h, w)  # the `count` smallest draws
    outpaint = torch.rand(b, generator=generator) < outpaint_prob
    sides = torch.rand(b, 4, generator=generator) < 0.5
    sides[torch.arange(b), torch.randint(4, (b,), generator=generator)] = True  # at least one band
    rows, cols = torch.arange(h)[:, None], torch.arange(w)[None]
    bands = torch.stack(
        [(rows < band).expand(h, w), (rows >= h - band).expand(h, w), (cols < band).expand(h, w), (cols >= w - band).expand(h, w)]
    )
    context = (sides[:, :, None, None] & bands).any(1)
    masked = torch.where(outpaint[:, None, None], ~context, masked).to(tokens.device)
    return torch.where(masked, torch.full_like(tokens, mask_id), tokens), masked


def masked_token_loss(
    logits: torch.Tensor, targets: torch.Tensor, masked: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Cross-entropy of logits ``[B, K, h, w]`` against the tokens ``[B, h, w]`` over the masked
    positions only (``masked [B, h, w]``), averaged over them: unmasked tokens are given, not scored."""
    flat = logits.permute(0, 2, 3, 1)[masked]
    return F.cross_entropy(flat.float(), targets[masked], label_smoothing=label_smoothing)


def load_vqvae(path: Path, device) -> VQModel:
    return VQModel.from_pretrained(path, **_SAVED).to(device).eval().requires_grad_(False)


def token_cache_key(args: argparse.Namespace) -> str:
    mpp = float(args.preset_data["config"]["meters_per_pixel"])
    parts = {"cities": args.num_cities, "first_seed": TRAIN_SEED, "city_px": args.city_px, "mpp": mpp}
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode())
    for path in sorted(args.vqvae.glob("*.safetensors")) + [args.vqvae / "config.json"]:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


@torch.no_grad()
def encode_cities(vqvae: VQModel, cities, height_scale: float, device) -> torch.Tensor:
    """Token grids ``[8 N, S / f, S / f]`` (int32) of every city in its 8 orientations, each encoded whole."""
    grids = []
    for sem, hgt in zip(*cities):
        for turns in range(4):
            for flip in range(2):
                s = torch.from_numpy(orient(sem, turns, flip).copy()).long().to(device)[None]
                h = torch.from_numpy(orient(hgt, turns, flip).copy()).to(device)[None]
                latents = vqvae.encode(layout_tensor(s, h, height_scale)).latents
                _, _, (_, _, codes) = vqvae.quantize(latents)
                grids.append(codes.reshape(latents.shape[2:]).to(torch.int32).cpu())
    return torch.stack(grids)


def token_cache(args: argparse.Namespace, accelerator, vqvae: VQModel, cities) -> torch.Tensor:
    """The token grids of the training cities, encoded once by the main process into the cache file."""
    folder = args.latent_cache_dir or Path(args.output_dir) / "token_cache"
    path = folder / f"tokens-{token_cache_key(args)}.safetensors"
    if accelerator.is_main_process and not path.is_file():
        accelerator.print(f"tokenizing {args.num_cities} cities x 8 orientations into {path}")
        grids = encode_cities(vqvae, cities, float(args.preset_data["config"]["height_scale"]), accelerator.device)
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as tmp:
            save_file({"tokens": grids}, str(tmp))
    accelerator.wait_for_everyone()
    return load_file(str(path))["tokens"].long()


@torch.no_grad()
def sample_tokens(transformer, scheduler: AmusedScheduler, size: int, steps: int, generator: torch.Generator) -> torch.Tensor:
    """One ``[1, size, size]`` token grid sampled from all-masked with the AmusedScheduler."""
    device = transformer.device
    tokens = torch.full((1, size, size), scheduler.config.mask_token_id, dtype=torch.long, device=device)
    condition = null_condition(transformer, 1, device, transformer.dtype)
    scheduler.set_timesteps(steps, device=device)
    for t in scheduler.timesteps:
        logits = transformer(tokens, **condition)
        tokens = scheduler.step(logits, t, tokens, generator=generator).prev_sample
    return tokens


def train_tokens(args: argparse.Namespace, accelerator, cities) -> Path:
    preset, device = args.preset_data, accelerator.device
    settings = preset["config"]
    height_scale, window = float(settings["height_scale"]), int(settings["window_tokens"])
    band = window - int(settings["window_stride"])
    vqvae = load_vqvae(args.vqvae, device)
    num_codes = vqvae.config.num_vq_embeddings
    config = preset["components"]["transformer"]
    if config["codebook_size"] != num_codes or config["vocab_size"] != num_codes + 1:
        raise ValueError(
            f"--vqvae {args.vqvae} has {num_codes} codes; the preset's transformer expects codebook_size "
            f"{config['codebook_size']} and vocab_size {config['vocab_size']} (codes + the mask token)"
        )
    if token_factor(vqvae) != args.factor:
        raise ValueError(f"--vqvae {args.vqvae}: {token_factor(vqvae)} px tokens, the preset's tokenizer has {args.factor}")
    transformer = model_from_preset_or_folder(CityLayoutTransformer2DModel, config, args.init_from)
    grids = token_cache(args, accelerator, vqvae, cities)
    scheduler_config = preset.get("scheduler", {})
    scheduler = AmusedScheduler(mask_token_id=num_codes, masking_schedule=scheduler_config.get("masking_schedule", "cosine"))
    ema = create_ema(transformer, args)
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=args.learning_rate)
    lr_scheduler = get_scheduler(
        args.lr_scheduler, optimizer, num_warmup_steps=args.lr_warmup_steps, num_training_steps=args.max_train_steps
    )
    model, optimizer, lr_scheduler = accelerator.prepare(transformer, optimizer, lr_scheduler)
    global_step = maybe_resume(accelerator, args)
    per_process, accumulation, processes = args.train_batch_size, args.gradient_accumulation_steps, accelerator.num_processes
    losses = StepLosses(accumulation)
    grid_size = grids.shape[1]

    def images() -> dict[str, Image.Image]:
        transformer.eval()
        generator = torch.Generator().manual_seed(0)
        tokens = sample_tokens(transformer, scheduler, window, args.validation_inference_steps, generator)
        transformer.train()
        return decoded_images(vqvae, tokens, height_scale)

    start = time.time()
    model.train()
    while global_step < args.max_train_steps:
        seed = step_seed(args.seed, global_step)
        count = per_process * processes * accumulation
        crops = draw_crops(np.random.default_rng(seed), count, len(grids), grid_size, window, turns=False)
        generator = torch.Generator().manual_seed(seed)
        for micro in range(accumulation):
            first = (micro * processes + accelerator.process_index) * per_process
            targets = torch.stack([grids[c, i : i + window, j : j + window] for c, i, j in crops[first : first + per_process]])
            inputs, masked = mask_tokens(targets, num_codes, args.outpaint_prob, band, generator)
            inputs, masked, targets = inputs.to(device), masked.to(device), targets.to(device)
            with accelerator.accumulate(model):
                with accelerator.autocast():
                    logits = model(inputs, **null_condition(transformer, len(inputs), device, transformer.dtype))
                loss = masked_token_loss(logits, targets, masked, args.label_smoothing)
                optimizer_step(accelerator, loss, model.parameters(), optimizer, lr_scheduler)
            accuracy = (logits.detach().argmax(1) == targets)[masked].float().mean()
            losses.add({"masked_accuracy": accuracy, "loss": loss})
        means = losses.finish(global_step)
        global_step += 1
        step_emas([ema], [transformer])
        if finish_step(accelerator, args, global_step, start, lambda: losses.logs(accelerator, means, lr_scheduler), images):
            break
    accelerator.wait_for_everyone()
    folder = args.pipeline_out or Path(args.output_dir) / "pipeline"
    if accelerator.is_main_process:
        from diffusers_city.pipelines.citylayout import CityLayoutPipeline

        if ema is not None:
            ema.copy_to(transformer.parameters())
        pipe = CityLayoutPipeline(vqvae=vqvae, transformer=transformer, scheduler=scheduler, **settings)
        with atomic_folders(folder) as (tmp,):
            pipe.save_pretrained(tmp)
        accelerator.print(f"saved the pipeline to {folder}")
    return folder


def card_fields(args: argparse.Namespace) -> dict[str, str]:
    """Fields of the ``citylayout`` model card of this run."""
    return {
        "title": f"CityLayout {'tokenizer' if args.stage == 'vq' else 'generator'} ({args.preset})",
        "description": "CityDreamer's BEV layout generator: a VQ tokenizer and a masked-token transformer.",
        "preset": str(args.preset),
        "stage": args.stage,
        "num_cities": str(args.num_cities),
        "city_size_m": f"{args.city_size_m:g}",
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = {"script": "train_citylayout", "preset": str(args.preset), "stage": args.stage}
    accelerator = setup_accelerator(args, run=run)
    cities = load_cities(args, accelerator)
    accelerator.print(f"{args.num_cities} training cities of {args.city_px} px (seeds {TRAIN_SEED}..)")
    folder = (train_vq if args.stage == "vq" else train_tokens)(args, accelerator, cities)
    if accelerator.is_main_process and args.push_to_hub:
        push_folder_to_hub(args, folder, "citylayout", card_fields(args))
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    sys.exit(main())
