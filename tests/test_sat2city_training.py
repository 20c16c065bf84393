"""Sat2City training scripts on the tiny preset, CPU: every stage, resume, KL placement, Hub push."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from training_helpers import fail_after_saving

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "training"))

import assemble_sat2city  # noqa: E402
import train_sat2city_diffusion  # noqa: E402
import train_sat2city_vae  # noqa: E402
from sat2city_common import load_preset, make_dataloader, prepare_batch  # noqa: E402

from diffusers_city.models.sat2city import Sat2CityDenseVAE, Sat2CitySparseUNet3D, Sat2CitySparseVAE  # noqa: E402
from diffusers_city.pipelines.sat2city import Sat2CityPipeline  # noqa: E402

FAST = ["--preset", "tiny", "--cpu", "--report_to", "none", "--logging_steps", "1", "--validation_steps", "2"]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "diffusion_pytorch_model.safetensors")


def test_vae_trains_and_resumes_exactly(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    args = [*FAST, "--use_ema", "--checkpointing_steps", "2", "--geometry_only_steps", "1"]
    assert train_sat2city_vae.main([*args, "--output_dir", str(straight), "--max_train_steps", "3"]) == 0
    assert train_sat2city_vae.main([*args, "--output_dir", str(resumed), "--max_train_steps", "2"]) == 0
    assert (resumed / "checkpoint-2").is_dir()
    assert (
        train_sat2city_vae.main(
            [*args, "--output_dir", str(resumed), "--max_train_steps", "3", "--resume_from_checkpoint", "latest"]
        )
        == 0
    )
    for name in ("dense_vae", "sparse_vae"):
        a, b = weights(straight / name), weights(resumed / name)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.allclose(a[key], b[key], atol=1e-6), f"{name}.{key} differs after resume"
    assert (straight / "validation" / "step-2" / "ground_truth.png").is_file()
    untrained = Sat2CitySparseVAE.from_config(load_preset(_ns()).get("components")["sparse_vae"])
    trained = Sat2CitySparseVAE.from_pretrained(straight / "sparse_vae")
    assert not torch.equal(untrained.geometry_head.weight, trained.geometry_head.weight)


def _ns():
    return argparse.Namespace(preset="tiny", dataloader_num_workers=0)


def test_kl_reaches_geometry_latents_only():
    preset = load_preset(_ns())
    torch.manual_seed(0)
    dense = Sat2CityDenseVAE.from_config(preset["components"]["dense_vae"])
    sparse = Sat2CitySparseVAE.from_config(preset["components"]["sparse_vae"])
    grid = tuple(dense.config.grid_size)
    prepared = prepare_batch(next(iter(make_dataloader(preset, _ns(), 1))), grid, torch.device("cpu"))
    weights_ = preset["training"]["vae"]["loss_weights"]
    terms = train_sat2city_vae.vae_losses(dense, sparse, prepared, weights_, 100)
    (terms["dense_kl"] + terms["sparse_kl"]).backward(retain_graph=True)
    assert sparse.geometry_head.weight.grad.abs().sum() > 0
    assert dense.quant_conv.weight.grad.abs().sum() > 0
    assert sparse.appearance_head.weight.grad is None or sparse.appearance_head.weight.grad.abs().sum() == 0
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in sparse.color_mlp.parameters())
    sparse.zero_grad()
    terms["color_l1"].backward()
    assert sparse.appearance_head.weight.grad.abs().sum() > 0
    expected = (
        20 * (terms["dense_bce"] + terms["sparse_bce"])
        + 50 * (terms["dense_normal_l1"] + terms["sparse_normal_l1"])
        + 0.03 * (terms["dense_kl"] + terms["sparse_kl"])
        + 50 * terms["color_l1"]
    )
    assert torch.allclose(terms["loss"], expected)


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("vae")
    preset = load_preset(_ns())
    torch.manual_seed(0)
    Sat2CityDenseVAE.from_config(preset["components"]["dense_vae"]).save_pretrained(folder / "dense_vae")
    sparse = Sat2CitySparseVAE.from_config(preset["components"]["sparse_vae"])
    for head in sparse.geometry_decoder.occupancy_heads:  # keep voxels, so validation decodes something
        torch.nn.init.constant_(head[1].bias, 3.0)
    sparse.save_pretrained(folder / "sparse_vae")
    return folder


@pytest.mark.parametrize(
    ("stage", "outputs"),
    [("dense", ("dense_unet", "condition_encoder")), ("sparse", ("sparse_unet",)), ("appearance", ("appearance_unet",))],
)
def test_diffusion_stage_trains_and_resumes(stage, outputs, vae_dir, tmp_path):
    out = tmp_path / stage
    args = [
        *FAST,
        "--stage",
        stage,
        "--vae_dir",
        str(vae_dir),
        "--output_dir",
        str(out),
        "--checkpointing_steps",
        "1",
        "--scale_batches",
        "1",
        "--validation_inference_steps",
        "2",
    ]
    assert train_sat2city_diffusion.main([*args, "--max_train_steps", "1"]) == 0
    scale = json.loads((out / "latent_scale.json").read_text())
    assert scale["stage"] == stage and scale["scaling_factor"] > 0
    first = weights(out / outputs[0])
    assert train_sat2city_diffusion.main([*args, "--max_train_steps", "2", "--resume_from_checkpoint", "latest"]) == 0
    assert (out / "checkpoint-2").is_dir() and json.loads((out / "latent_scale.json").read_text()) == scale
    second = weights(out / outputs[0])
    assert any(not torch.equal(first[k], second[k]) for k in first)
    for name in outputs:
        assert (out / name / "config.json").is_file()
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2] and all(r["loss"] > 0 and r["elapsed_s"] >= 0 for r in log)
    assert any((out / "validation" / "step-2").glob(f"{stage}_sample.png")) or stage == "appearance"


def test_data_echo_resumes_exactly_mid_batch(vae_dir, tmp_path):
    """With --data_echo 2, stopping after step 1 (half of a batch's repeats) and resuming gives the
    same weights as an uninterrupted run; and the echo changes what is trained on."""

    def run(out, steps, *extra):
        args = [
            *FAST,
            "--stage",
            "sparse",
            "--vae_dir",
            str(vae_dir),
            "--output_dir",
            str(out),
            "--checkpointing_steps",
            "1",
            "--scale_batches",
            "1",
            "--validation_steps",
            "100",
            "--max_train_steps",
            str(steps),
            *extra,
        ]
        assert train_sat2city_diffusion.main(args) == 0
        return weights(out / "sparse_unet")

    straight = run(tmp_path / "straight", 3, "--data_echo", "2")
    run(tmp_path / "resumed", 1, "--data_echo", "2")
    resumed = run(tmp_path / "resumed", 3, "--data_echo", "2", "--resume_from_checkpoint", "latest")
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    plain = run(tmp_path / "plain", 3)
    assert any(not torch.equal(straight[k], plain[k]) for k in straight)
    with pytest.raises(SystemExit):
        train_sat2city_diffusion.parse_args(
            [*FAST, "--stage", "sparse", "--vae_dir", str(vae_dir), "--output_dir", str(tmp_path / "bad"), "--data_echo", "0"]
        )


def test_fine_tune_from_a_pipeline_and_assemble_with_kept_stages(tmp_path):
    """--init_from starts from a saved pipeline's stage weights and latent scale; assembling with
    pipeline folders as stage folders keeps those stages and their scales."""
    pipe_dir = tmp_path / "pipe"
    pipe = Sat2CityPipeline.from_preset("tiny", seed=3)
    pipe.dense_vae.register_to_config(scaling_factor=0.7)
    pipe.sparse_vae.register_to_config(scaling_factor=0.8, appearance_scaling_factor=0.3)
    pipe.save_pretrained(pipe_dir)
    out = tmp_path / "dense"
    assert (
        train_sat2city_diffusion.main(
            [
                *FAST,
                "--stage",
                "dense",
                "--vae_dir",
                str(pipe_dir),
                "--init_from",
                str(pipe_dir),
                "--output_dir",
                str(out),
                "--max_train_steps",
                "1",
                "--learning_rate",
                "0",
                "--validation_steps",
                "100",
            ]
        )
        == 0
    )
    assert json.loads((out / "latent_scale.json").read_text())["scaling_factor"] == 0.7
    for name in ("dense_unet", "condition_encoder"):
        before, after = weights(pipe_dir / name), weights(out / name)
        assert all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(FileNotFoundError, match="no sparse_unet there"):
        train_sat2city_diffusion.parse_args(
            [
                *FAST,
                "--stage",
                "sparse",
                "--vae_dir",
                str(pipe_dir),
                "--init_from",
                str(tmp_path),
                "--output_dir",
                str(tmp_path / "bad"),
            ]
        )
    assert (
        assemble_sat2city.main(
            [
                "--preset",
                "tiny",
                "--vae_dir",
                str(pipe_dir),
                "--dense_dir",
                str(out),
                "--sparse_dir",
                str(pipe_dir),
                "--appearance_dir",
                str(pipe_dir),
                "--output_dir",
                str(tmp_path / "assembled"),
            ]
        )
        == 0
    )
    again = Sat2CityPipeline.from_pretrained(tmp_path / "assembled")
    assert again.dense_vae.config.scaling_factor == 0.7 and again.sparse_vae.config.appearance_scaling_factor == 0.3
    for name in ("sparse_unet", "appearance_unet", "dense_unet"):
        a, b = getattr(pipe, name).state_dict(), getattr(again, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_sparse_stage_gains_the_height_columns_from_a_grid_only_pipeline(vae_dir, tmp_path):
    """A sparse stage trained with the paper's 4-channel condition is widened to the preset's
    height-aware condition: zero new input weights, so the same predictions; then it trains on them."""
    preset = load_preset(_ns())
    old = Sat2CitySparseUNet3D.from_config({**preset["components"]["sparse_unet"], "condition_channels": 4})
    wide = train_sat2city_diffusion.widen_condition(old, 8)
    assert wide.config.condition_channels == 8
    grid = tuple(preset["components"]["dense_vae"]["grid_size"])
    prepared = prepare_batch(next(iter(make_dataloader(preset, _ns(), 1))), grid, torch.device("cpu"))
    dense, sparse = (
        Sat2CityDenseVAE.from_pretrained(vae_dir / "dense_vae"),
        Sat2CitySparseVAE.from_pretrained(vae_dir / "sparse_vae"),
    )
    data = train_sat2city_diffusion.StageData("sparse", dense, sparse, "mean", sparse_height=True)
    x, enc = data.latent(prepared)
    cond = data.condition(prepared, enc, None)
    assert cond.shape == (x.shape[0], 8) and (cond[:, 4:] > -1).any()
    t = torch.tensor([500])
    with torch.no_grad():
        narrow_v = old(enc.appearance.replace(x), t, cond[:, :4]).sample.feats
        assert torch.allclose(wide(enc.appearance.replace(x), t, cond).sample.feats, narrow_v, atol=1e-6)
    with pytest.raises(ValueError, match="cannot narrow"):
        train_sat2city_diffusion.widen_condition(wide, 4)

    pipe_dir, out = tmp_path / "pipe", tmp_path / "sparse"
    pipe = Sat2CityPipeline.from_preset("tiny", seed=3)
    pipe.register_modules(sparse_unet=old)
    pipe.save_pretrained(pipe_dir)
    assert (
        train_sat2city_diffusion.main(
            [
                *FAST,
                "--stage",
                "sparse",
                "--vae_dir",
                str(vae_dir),
                "--init_from",
                str(pipe_dir),
                "--output_dir",
                str(out),
                "--max_train_steps",
                "2",
                "--validation_steps",
                "100",
            ]
        )
        == 0
    )
    trained = weights(out / "sparse_unet")["conv_in.weight"]
    assert trained.shape[-1] == old.config.in_channels + 8 and trained[..., -4:].abs().sum() > 0  # the new channels learnt


def test_latent_target_mean_is_the_posterior_mean(vae_dir):
    preset = load_preset(_ns())
    grid = tuple(preset["components"]["dense_vae"]["grid_size"])
    prepared = prepare_batch(next(iter(make_dataloader(preset, _ns(), 1))), grid, torch.device("cpu"))
    dense, sparse = (
        Sat2CityDenseVAE.from_pretrained(vae_dir / "dense_vae"),
        Sat2CitySparseVAE.from_pretrained(vae_dir / "sparse_vae"),
    )
    mean = dense.encode(prepared["voxels"]).latent_dist.mean
    x, _ = train_sat2city_diffusion.StageData("dense", dense, sparse, "mean").latent(prepared)
    assert torch.equal(x, mean)
    sampled, _ = train_sat2city_diffusion.StageData("dense", dense, sparse, "sample").latent(
        prepared, torch.Generator().manual_seed(0)
    )
    assert not torch.allclose(sampled, mean)
    enc = sparse.encode(prepared["voxels"])
    x, _ = train_sat2city_diffusion.StageData("sparse", dense, sparse, "mean").latent(prepared)
    assert torch.equal(x, enc.latent_dist.mean.feats)
    with pytest.raises(ValueError, match="latent_target must be one of"):
        train_sat2city_diffusion.StageData("dense", dense, sparse, "mode")


def test_missing_vae_is_refused_before_training(tmp_path):
    with pytest.raises(FileNotFoundError, match="no trained dense_vae"):
        train_sat2city_diffusion.main(
            [*FAST, "--stage", "dense", "--vae_dir", str(tmp_path), "--output_dir", str(tmp_path / "o")]
        )
    assert not (tmp_path / "o").exists()


def test_push_to_hub_with_model_card(tmp_path, offline_hub):
    out = tmp_path / "vae"
    assert (
        train_sat2city_vae.main(
            [*FAST, "--output_dir", str(out), "--max_train_steps", "1", "--push_to_hub", "--hub_model_id", "org/s2c-vae"]
        )
        == 0
    )
    files = offline_hub.files("org/s2c-vae")
    assert "README.md" in files and "dense_vae/diffusion_pytorch_model.safetensors" in files
    card = (offline_hub.snapshot("org/s2c-vae") / "README.md").read_text()
    assert "Sat2City" in card and "Re-Hash" in card


def test_latent_target_defaults_to_the_presets(vae_dir, tmp_path):
    def target(*extra: str) -> str:
        base = ["--stage", "dense", "--vae_dir", str(vae_dir), "--output_dir", str(tmp_path), *extra]
        return train_sat2city_diffusion.parse_args(base).latent_target

    assert load_preset(_ns())["training"]["diffusion"].get("latent_target") is None  # tiny: no entry
    assert target("--preset", "tiny") == "sample"
    assert load_preset(argparse.Namespace(preset="small"))["training"]["diffusion"]["latent_target"] == "mean"
    assert target("--preset", "small") == "mean"
    assert target("--preset", "small", "--latent_target", "sample") == "sample"


def test_failed_final_save_keeps_the_previous_outputs(tmp_path, monkeypatch):
    """A final save failing at the second VAE leaves both previous VAEs (never a new dense_vae
    beside an old sparse_vae) and no temporary folder."""
    out = tmp_path / "vae"
    args = [*FAST, "--output_dir", str(out), "--checkpointing_steps", "1", "--validation_steps", "100"]
    assert train_sat2city_vae.main([*args, "--max_train_steps", "1"]) == 0
    names = ("dense_vae", "sparse_vae")
    before = {name: (out / name / "diffusion_pytorch_model.safetensors").read_bytes() for name in names}
    fail_after_saving(monkeypatch, Sat2CitySparseVAE)
    with pytest.raises(OSError, match="No space left"):
        train_sat2city_vae.main([*args, "--max_train_steps", "2", "--resume_from_checkpoint", "latest"])
    assert {name: (out / name / "diffusion_pytorch_model.safetensors").read_bytes() for name in names} == before
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


def test_output_dir_of_another_stage_is_refused(vae_dir, tmp_path):
    """A dense stage's output_dir (checkpoints, latent_scale.json) is not taken for the sparse stage's."""
    out = tmp_path / "stage"
    args = [
        *FAST,
        "--vae_dir",
        str(vae_dir),
        "--output_dir",
        str(out),
        "--max_train_steps",
        "1",
        "--scale_batches",
        "1",
        "--validation_steps",
        "100",
    ]
    assert train_sat2city_diffusion.main([*args, "--stage", "dense"]) == 0
    with pytest.raises(ValueError, match="holds another run .*'stage': 'dense'"):
        train_sat2city_diffusion.main([*args, "--stage", "sparse", "--resume_from_checkpoint", "latest"])
    with pytest.raises(ValueError, match="holds an earlier run's files"):
        train_sat2city_diffusion.main([*args, "--stage", "dense"])


def test_assemble_refuses_the_shipped_folders_without_update_shipped(tmp_path):
    from diffusers_city.presets import bundled_path

    stages = [f"--{s}_dir={tmp_path}" for s in ("vae", "dense", "sparse", "appearance")]
    for target in (
        ["--output_dir", str(bundled_path("sat2city", "default"))],
        ["--output_dir", str(tmp_path / "pipe"), "--examples_dir", str(bundled_path("sat2city", "examples"))],
    ):
        with pytest.raises(ValueError, match="inside the shipped files.*--update_shipped"):
            assemble_sat2city.parse_args([*stages, *target])
    with pytest.raises(FileNotFoundError, match="train that stage first"):  # past the check with the flag
        assemble_sat2city.parse_args([*stages, "--output_dir", str(bundled_path("sat2city", "default")), "--update_shipped"])
