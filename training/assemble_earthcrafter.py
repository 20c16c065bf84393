"""Assemble trained EarthCrafter components + scheduler into one saved ``EarthCrafterPipeline`` folder.

Reads the outputs of ``train_earthcrafter_vae.py`` (``--struct_vae_dir``, ``--tex_vae_dir``) and
of the three ``train_earthcrafter_flow.py`` runs (``--occupancy_dir``, ``--struct_dir``,
``--tex_dir``), writes the latent scales the flow runs measured (``latent_scale.json``) into the
VAE configs' ``scaling_factor``, and saves the pipeline (safetensors, fp32 or fp16), written
beside its destination and renamed into place once complete. The pipeline's one
``condition_encoder`` is the occupancy run's; the structure and texture runs must have read it
frozen (``train_earthcrafter_flow.py --condition_encoder``), which is checked weight by weight.

The shipped folder (``pipelines/earthcrafter/default``) is written only with ``--update_shipped``:

    python training/assemble_earthcrafter.py --preset small --struct_vae_dir runs/ec/struct_vae \
        --tex_vae_dir runs/ec/tex_vae --occupancy_dir runs/ec/occupancy --struct_dir runs/ec/struct \
        --tex_dir runs/ec/tex --output_dir runs/ec/pipeline
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))

from diffusers import FlowMatchEulerDiscreteScheduler  # noqa: E402
from earthcrafter_common import load_preset, read_latent_scale  # noqa: E402

from diffusers_city.export.atomic import atomic_folders  # noqa: E402
from diffusers_city.training_utils import refuse_shipped_paths  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
RUNS = {  # flag -> (component folder in that run, class name)
    "struct_vae_dir": ("struct_vae", "EarthCrafterStructVAE"),
    "tex_vae_dir": ("tex_vae", "EarthCrafterTexVAE"),
    "occupancy_dir": ("occupancy_transformer", "EarthCrafterOccupancyTransformer"),
    "struct_dir": ("struct_flow", "EarthCrafterStructFlow"),
    "tex_dir": ("tex_flow", "EarthCrafterTexFlow"),
}
FLOW_RUNS = {"occupancy": "occupancy_dir", "struct": "struct_dir", "tex": "tex_dir"}
WEIGHTS = "diffusion_pytorch_model.safetensors"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Assemble a trained EarthCrafter pipeline folder.")
    parser.add_argument("--preset", default="small", help="preset name or JSON path (for the scheduler config)")
    for flag in RUNS:
        parser.add_argument(f"--{flag}", type=Path, required=True)
    parser.add_argument("--output_dir", type=Path, required=True)
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="fp32", help="dtype of the saved weights")
    parser.add_argument("--update_shipped", action="store_true", help="allow --output_dir inside the shipped pipelines/ folder")
    args = parser.parse_args(argv)
    refuse_shipped_paths({"--output_dir": args.output_dir}, args.update_shipped)
    needed = [getattr(args, flag) / folder for flag, (folder, _) in RUNS.items()]
    needed += [getattr(args, flag) / "condition_encoder" for flag in FLOW_RUNS.values()]
    needed += [getattr(args, FLOW_RUNS[stage]) / "latent_scale.json" for stage in ("struct", "tex")]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        raise FileNotFoundError(f"missing trained components (train those stages first): {', '.join(missing)}")
    if args.output_dir.exists() and not (args.output_dir / "model_index.json").is_file() and any(args.output_dir.iterdir()):
        raise ValueError(f"--output_dir {args.output_dir} exists and is not a pipeline folder; refusing to replace it")
    return args


def shared_encoder(args: argparse.Namespace) -> Path:
    """The occupancy run's condition encoder, after checking the later flows were trained on it."""
    reference = load_file(args.occupancy_dir / "condition_encoder" / WEIGHTS)
    for flag in ("struct_dir", "tex_dir"):
        other = load_file(getattr(args, flag) / "condition_encoder" / WEIGHTS)
        if other.keys() != reference.keys() or any(not torch.equal(other[k], reference[k]) for k in reference):
            raise ValueError(
                f"--{flag} {getattr(args, flag)} was trained with another condition encoder than --occupancy_dir's: "
                "train it with --condition_encoder OCCUPANCY_DIR/condition_encoder"
            )
    return args.occupancy_dir / "condition_encoder"


def components(args: argparse.Namespace) -> dict:
    """The pipeline's components, loaded fp32 from safetensors, the VAEs with their latent scales."""
    from diffusers_city.models import earthcrafter

    fp32 = {"dtype": torch.float32, "use_safetensors": True}
    out = {
        folder: getattr(earthcrafter, cls).from_pretrained(getattr(args, flag) / folder, **fp32)
        for flag, (folder, cls) in RUNS.items()
    }
    out["struct_vae"].register_to_config(scaling_factor=read_latent_scale(args.struct_dir / "latent_scale.json"))
    out["tex_vae"].register_to_config(scaling_factor=read_latent_scale(args.tex_dir / "latent_scale.json"))
    out["condition_encoder"] = earthcrafter.EarthCrafterConditionEncoder.from_pretrained(shared_encoder(args), **fp32)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from diffusers_city.pipelines.earthcrafter import EarthCrafterPipeline

    preset = load_preset(argparse.Namespace(preset=args.preset))
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(preset.get("scheduler", {}))
    pipe = EarthCrafterPipeline(**components(args), scheduler=scheduler)
    if args.dtype != "fp32":
        pipe.to(DTYPES[args.dtype])
    with atomic_folders(args.output_dir.resolve()) as (tmp,):
        pipe.save_pretrained(tmp)
    print(f"saved {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
