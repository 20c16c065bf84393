"""Assemble trained Sat2City VAEs + denoisers + scheduler into one saved ``Sat2CityPipeline`` folder.

Reads the outputs of ``train_sat2city_vae.py`` and the three ``train_sat2city_diffusion.py``
stages (a stage folder may also be a saved pipeline, to keep that pipeline's stage), writes each
stage's measured latent std into the VAE configs (``scaling_factor``,
``appearance_scaling_factor``), and saves the pipeline (safetensors, fp32 or fp16). With
``--examples_dir`` it also writes a held-out noisy height map (``height_map.png``) and its
``height_map.json`` (metres of gray 0/255, metres per pixel) for the demo. Everything is written
beside its destination first and renamed into place once complete: the pipeline folder is
replaced as a whole, never left with a mix of old and new components.

The shipped pipeline and example (``pipelines/sat2city/default``, ``pipelines/sat2city/examples``:
the demo's) are written only with ``--update_shipped``:

    python training/assemble_sat2city.py --preset small --vae_dir runs/vae --dense_dir runs/dense \
        --sparse_dir runs/sparse --appearance_dir runs/appearance --output_dir pipelines/sat2city/default \
        --examples_dir pipelines/sat2city/examples --update_shipped
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from diffusers import DDIMScheduler  # noqa: E402
from sat2city_common import example_height_map, load_preset, pipeline_scale, read_latent_scale  # noqa: E402

from diffusers_city.export.atomic import atomic_folders, atomic_write  # noqa: E402
from diffusers_city.models.sat2city import (  # noqa: E402
    HeightFieldEncoder,
    Sat2CityDenseUNet3D,
    Sat2CityDenseVAE,
    Sat2CitySparseUNet3D,
    Sat2CitySparseVAE,
)
from diffusers_city.pipelines.sat2city import Sat2CityPipeline  # noqa: E402
from diffusers_city.training_utils import refuse_shipped_paths  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Assemble a trained Sat2City pipeline folder.")
    parser.add_argument("--preset", default="small", help="preset name or JSON path (for the scheduler config)")
    for stage in ("vae", "dense", "sparse", "appearance"):
        parser.add_argument(f"--{stage}_dir", type=Path, required=True)
    parser.add_argument("--output_dir", type=Path, required=True)
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="fp32", help="dtype of the saved weights")
    parser.add_argument("--examples_dir", type=Path, default=None, help="also write an example height map here")
    parser.add_argument(
        "--update_shipped",
        action="store_true",
        help="allow --output_dir / --examples_dir inside the shipped pipelines/ folder (the demo's files)",
    )
    args = parser.parse_args(argv)
    refuse_shipped_paths({"--output_dir": args.output_dir, "--examples_dir": args.examples_dir}, args.update_shipped)
    expected = [
        (args.vae_dir, ("dense_vae", "sparse_vae")),
        (args.dense_dir, ("dense_unet", "condition_encoder", "latent_scale.json")),
        (args.sparse_dir, ("sparse_unet", "latent_scale.json")),
        (args.appearance_dir, ("appearance_unet", "latent_scale.json")),
    ]
    for folder, names in expected:
        for name in names:
            if name == "latent_scale.json" and _is_pipeline(folder):
                continue
            if not (folder / name).exists():
                raise FileNotFoundError(f"{folder / name} is missing: train that stage first")
    if args.output_dir.exists() and not (args.output_dir / "model_index.json").is_file() and any(args.output_dir.iterdir()):
        raise ValueError(f"--output_dir {args.output_dir} exists and is not a pipeline folder; refusing to replace it")
    return args


def _is_pipeline(folder: Path) -> bool:
    return (folder / "model_index.json").is_file()


def scale_of(folder: Path, stage: str) -> float:
    """The stage's ``scaling_factor`` (1 / latent std): its training run's ``latent_scale.json``,
    or, when ``folder`` is a saved pipeline (a stage kept from an earlier assembly), that pipeline's VAE config."""
    if _is_pipeline(folder):
        return pipeline_scale(folder, stage)
    return read_latent_scale(folder / "latent_scale.json")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    preset = load_preset(argparse.Namespace(preset=args.preset))
    fp32 = {"dtype": torch.float32, "use_safetensors": True}
    dense_vae = Sat2CityDenseVAE.from_pretrained(args.vae_dir / "dense_vae", **fp32)
    sparse_vae = Sat2CitySparseVAE.from_pretrained(args.vae_dir / "sparse_vae", **fp32)
    dense_vae.register_to_config(scaling_factor=scale_of(args.dense_dir, "dense"))
    sparse_vae.register_to_config(
        scaling_factor=scale_of(args.sparse_dir, "sparse"), appearance_scaling_factor=scale_of(args.appearance_dir, "appearance")
    )
    pipe = Sat2CityPipeline(
        dense_vae=dense_vae,
        sparse_vae=sparse_vae,
        condition_encoder=HeightFieldEncoder.from_pretrained(args.dense_dir / "condition_encoder", **fp32),
        dense_unet=Sat2CityDenseUNet3D.from_pretrained(args.dense_dir / "dense_unet", **fp32),
        sparse_unet=Sat2CitySparseUNet3D.from_pretrained(args.sparse_dir / "sparse_unet", **fp32),
        appearance_unet=Sat2CitySparseUNet3D.from_pretrained(args.appearance_dir / "appearance_unet", **fp32),
        scheduler=DDIMScheduler.from_config(preset["scheduler"]),
    )
    if args.dtype != "fp32":
        pipe.to(DTYPES[args.dtype])
    out = args.output_dir.resolve()
    with atomic_folders(out) as (tmp,):
        pipe.save_pretrained(tmp)
        if args.examples_dir is not None:
            gray, meta = example_height_map(preset)
            args.examples_dir.mkdir(parents=True, exist_ok=True)
            # both example files are complete before either replaces its old one
            with (
                atomic_write(args.examples_dir / "height_map.png") as png,
                atomic_write(args.examples_dir / "height_map.json") as js,
            ):
                Image.fromarray(gray).save(png, format="PNG")
                js.write_text(json.dumps(meta, indent=2))
    print(f"saved Sat2CityPipeline to {out}")
    if args.examples_dir is not None:
        print(f"wrote example height map to {args.examples_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
