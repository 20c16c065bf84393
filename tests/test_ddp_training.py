"""Data-parallel training on CPU (gloo): 2 processes follow 1 process's loss curve at the same global batch.

The 2-process runs go through ``accelerate launch --multi_gpu --num_processes 2`` with the
scripts' own ``--cpu`` flag: that launcher (torchrun) starts the 2 processes and ``--cpu`` makes
each one a CPU process talking gloo. (``accelerate launch --cpu --num_processes 2`` would start a
single process: ``--cpu`` picks accelerate's one-process launcher.) The 1-process runs happen in
this test process.

Same global batch of 2, and why the runs agree up to float rounding:

- Sat2City VAE: 2 x ``--train_batch_size 1`` against 1 process with ``--gradient_accumulation_steps 2``.
  The loader is sequential and accelerate shards it batch by batch, so rank r gets sample
  ``2 * step + r``, exactly micro-step r of the accumulating run; both use ``step_generator(seed,
  step)``. DDP averages the two gradients, accumulation sums the two halved ones. (A batch of 2 in
  one process would not be the same loss: the VAE losses average over all voxels of a batch,
  not per sample.)
- GaussianCity: 2 x ``--train_batch_size 1`` against 1 process with ``--train_batch_size 2``. Every
  process draws the same global batch of views and styles and renders its slice; the losses are
  per-view means, so DDP's gradient average is the batch mean. (Accumulation would not match
  exactly: each discriminator forward runs a spectral-norm power iteration, and accumulation
  runs twice as many.)
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from script_loader import load_script
from training_helpers import SAT2CITY_TINY, launch_two_processes, logged

from diffusers_city import GaussianCityPipeline

WEIGHTS = "diffusion_pytorch_model.safetensors"

# Both tests start 2 training processes each; run them one after the other on one xdist worker
# (concurrent launches once hung a CI run past the 180 s timeout).
pytestmark = pytest.mark.xdist_group("ddp")


def assert_same_curve(one: dict, two: dict, steps: int, **tolerance) -> None:
    assert sorted(one) == sorted(two) == list(range(1, steps + 1))
    for step, logs in one.items():
        assert logs.keys() == two[step].keys() and len(logs) >= 3
        for name, value in logs.items():
            assert two[step][name] == pytest.approx(value, **tolerance), f"step {step} {name}: {value} vs {two[step][name]}"


def test_sat2city_vae_two_processes_match_accumulation(tmp_path):
    args = [*SAT2CITY_TINY, "--max_train_steps", "3", "--geometry_only_steps", "1", "--train_batch_size", "1"]
    launch_two_processes("train_sat2city_vae.py", [*args, "--output_dir", str(tmp_path / "two")])
    assert (tmp_path / "two" / "checkpoint-2").is_dir()
    vae = load_script("training/train_sat2city_vae.py")
    assert vae.main([*args, "--gradient_accumulation_steps", "2", "--output_dir", str(tmp_path / "one")]) == 0
    # the runs differ by float rounding only (~1e-7 relative)
    assert_same_curve(logged(tmp_path / "one"), logged(tmp_path / "two"), 3, rel=1e-5, abs=1e-7)
    for name in ("dense_vae", "sparse_vae"):
        a, b = load_file(tmp_path / "one" / name / WEIGHTS), load_file(tmp_path / "two" / name / WEIGHTS)
        assert a.keys() == b.keys()
        for key in a:  # same per-sample computations, gradients summed in a different order only
            torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-5, msg=f"{name}.{key}")


def test_gaussiancity_two_processes_match_one_process(tmp_path):
    args = [
        "--preset",
        "tiny",
        "--num_cities",
        "3",
        "--city_size_m",
        "48",
        "--points_per_m2",
        "1",
        "--views_per_city",
        "3",
        "--resolution",
        "24x16",
        "--discriminator_channels",
        "8",
        "--report_to",
        "none",
        "--checkpointing_steps",
        "2",
        "--validation_steps",
        "2",
        "--max_train_steps",
        "4",
        "--logging_steps",
        "1",
        "--cpu",
        "--use_ema",
        "--ema_decay",
        "0.5",
        "--learning_rate",
        "1e-3",
        "--discriminator_lr",
        "1e-3",
        "--discriminator_warmup_steps",
        "1",
    ]
    two = launch_two_processes("train_gaussiancity.py", [*args, "--train_batch_size", "1", "--output_dir", str(tmp_path / "two")])
    assert "global batch 2 = 1 per process x 2 processes x 1 accumulation steps" in two
    assert (tmp_path / "two" / "checkpoint-2").is_dir()
    assert (tmp_path / "two" / "validation" / "step-4" / "held_out.png").is_file()
    gc = load_script("training/train_gaussiancity.py")
    assert gc.main([*args, "--train_batch_size", "2", "--output_dir", str(tmp_path / "one")]) == 0
    # the runs differ by float rounding of batched vs per-process convolutions (~1e-6)
    assert_same_curve(logged(tmp_path / "one"), logged(tmp_path / "two"), 4, rel=0, abs=2e-5)
    # Weights: Adam turns rounding-level gradient differences on near-zero gradients into up to
    # lr-sized steps, so compare the 1- vs 2-process difference with how far training moved them.
    init = GaussianCityPipeline.from_preset("tiny", seed=0)
    for name in ("scene_encoder", "background_decoder", "building_decoder"):
        a = load_file(tmp_path / "one" / "pipeline" / name / WEIGHTS)
        b = load_file(tmp_path / "two" / "pipeline" / name / WEIGHTS)
        w0 = getattr(init, name).state_dict()
        moved = torch.cat([(a[k] - w0[k]).flatten() for k in a]).norm()
        apart = torch.cat([(a[k] - b[k]).flatten() for k in a]).norm()
        assert moved > 0 and apart < 1e-2 * moved, f"{name}: 1 vs 2 processes {apart:.3g}, trained {moved:.3g}"
