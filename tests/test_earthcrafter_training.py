"""EarthCrafter training scripts on a tiny preset, CPU: each script trains and writes a loadable
result, resume repeats an uninterrupted run, the latent cache is reused, condition dropout."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "training"))

import assemble_earthcrafter  # noqa: E402
import earthcrafter_common  # noqa: E402
import train_earthcrafter_flow  # noqa: E402
import train_earthcrafter_vae  # noqa: E402
from diffusers.training_utils import EMAModel  # noqa: E402

from diffusers_city.models import earthcrafter  # noqa: E402
from diffusers_city.models.earthcrafter import EarthCrafterConditionEncoder, EarthCrafterOccupancyTransformer  # noqa: E402

FAST = ["--cpu", "--report_to", "none", "--logging_steps", "1"]
FLOW_FAST = [*FAST, "--validation_inference_steps", "2", "--held_out_tiles", "2"]
PRESET = "tiny"


@pytest.fixture(scope="module")
def components() -> dict:
    return earthcrafter_common.load_preset(argparse.Namespace(preset=PRESET))["components"]


@pytest.fixture(scope="module")
def struct_runs(tmp_path_factory) -> dict[str, Path]:
    """The structure stages trained for 2 steps: StructVAE, occupancy flow (+ the condition
    encoder), structure flow on the frozen encoder."""
    root = tmp_path_factory.mktemp("earthcrafter")
    runs = {name: root / name for name in ("struct_vae", "occupancy", "struct")}
    args = [*FAST, "--preset", PRESET, "--max_train_steps", "2", "--validation_steps", "2", "--train_batch_size", "2"]
    assert train_earthcrafter_vae.main([*args, "--model", "struct", "--output_dir", str(runs["struct_vae"])]) == 0
    flow = [*args, "--cache_tiles", "2", "--validation_inference_steps", "2", "--held_out_tiles", "2"]
    assert train_earthcrafter_flow.main([*flow, "--model", "occupancy", "--output_dir", str(runs["occupancy"])]) == 0
    shared = ["--condition_encoder", str(runs["occupancy"] / "condition_encoder")]
    vae = ["--struct_vae", str(runs["struct_vae"] / "struct_vae")]
    assert train_earthcrafter_flow.main([*flow, "--model", "struct", *vae, *shared, "--output_dir", str(runs["struct"])]) == 0
    return runs


@pytest.fixture(scope="module")
def tex_runs(struct_runs) -> dict[str, Path]:
    """The texture stages trained for 2 steps: TexVAE, texture flow on the frozen encoder."""
    root = struct_runs["struct"].parent
    runs = {**struct_runs, "tex_vae": root / "tex_vae", "tex": root / "tex"}
    args = [*FAST, "--preset", PRESET, "--max_train_steps", "2", "--validation_steps", "2", "--train_batch_size", "1"]
    assert train_earthcrafter_vae.main([*args, "--model", "tex", "--output_dir", str(runs["tex_vae"])]) == 0
    flow = [*args, "--cache_tiles", "2", "--validation_inference_steps", "2", "--held_out_tiles", "1"]
    shared = ["--condition_encoder", str(runs["occupancy"] / "condition_encoder")]
    vae = ["--tex_vae", str(runs["tex_vae"] / "tex_vae")]
    assert train_earthcrafter_flow.main([*flow, "--model", "tex", *vae, *shared, "--output_dir", str(runs["tex"])]) == 0
    return runs


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "diffusion_pytorch_model.safetensors")


def test_occupancy_flow_trains_resumes_exactly_and_reuses_its_cache(components, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    args = [
        *FLOW_FAST,
        "--preset",
        PRESET,
        "--model",
        "occupancy",
        "--latent_cache_dir",
        str(cache),
        "--checkpointing_steps",
        "2",
    ]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert (
        train_earthcrafter_flow.main([*args, "--output_dir", str(straight), "--max_train_steps", "3", "--validation_steps", "2"])
        == 0
    )
    assert (straight / "validation" / "step-2" / "occupancy_sample.png").is_file()
    assert len(list(cache.iterdir())) == 2  # the training tiles and the held-out tiles

    def no_rebuild(*_):
        raise AssertionError("the latent cache was built again")

    monkeypatch.setattr(train_earthcrafter_flow, "build_cache", no_rebuild)
    assert train_earthcrafter_flow.main([*args, "--output_dir", str(resumed), "--max_train_steps", "2"]) == 0
    assert (resumed / "checkpoint-2" / "checkpoint.json").is_file()
    resume = ["--max_train_steps", "3", "--resume_from_checkpoint", "latest"]
    assert train_earthcrafter_flow.main([*args, "--output_dir", str(resumed), *resume]) == 0
    for name in ("occupancy_transformer", "condition_encoder"):
        a, b = weights(straight / name), weights(resumed / name)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.allclose(a[key], b[key], atol=1e-6), f"{name}.{key} differs after resume"
    trained = EarthCrafterOccupancyTransformer.from_pretrained(straight / "occupancy_transformer")
    untrained = EarthCrafterOccupancyTransformer.from_config(components["occupancy_transformer"])
    changed = [k for k, v in trained.state_dict().items() if not torch.equal(v, untrained.state_dict()[k])]
    assert changed, "training changed no weight"
    log = [json.loads(line) for line in (resumed / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]
    straight_log = [json.loads(line) for line in (straight / "train_log.jsonl").read_text().splitlines()]
    assert abs(straight_log[-1]["held_out_loss"] - log[-1]["held_out_loss"]) < 1e-6
    assert len({r["held_out_loss"] for r in log}) == 3, "the held-out loss did not follow the training"


def test_held_out_loss_scores_the_ema_weights_and_restores_the_model(struct_runs):
    run = struct_runs["occupancy"]
    args = train_earthcrafter_flow.parse_args([*FLOW_FAST, "--preset", PRESET, "--model", "occupancy", "--output_dir", str(run)])
    (path,) = (run / "latent_cache").glob("occupancy-held-out-*.safetensors")
    cache = train_earthcrafter_flow.LatentCache(path, torch.device("cpu"))
    model = EarthCrafterOccupancyTransformer.from_pretrained(run / "occupancy_transformer").train()
    encoder = EarthCrafterConditionEncoder.from_pretrained(run / "condition_encoder")
    grid = model.config.grid_size
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plain = train_earthcrafter_flow.held_out_loss(model, encoder, cache, args, grid, 1.0)
    assert plain == train_earthcrafter_flow.held_out_loss(model, encoder, cache, args, grid, 1.0)
    ema = EMAModel(model.parameters())
    for p in ema.shadow_params:
        p.mul_(0.5)
    with_ema = train_earthcrafter_flow.held_out_loss(model, encoder, cache, args, grid, 1.0, (ema, None))
    assert abs(with_ema - plain) > 1e-6
    assert model.training and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_condition_dropout_mixes_modes_per_item(components):
    encoder = EarthCrafterConditionEncoder.from_config(components["condition_encoder"]).eval()
    gen = torch.Generator().manual_seed(0)
    semantic = torch.randint(0, 8, (3, 16, 16), generator=gen)
    image = torch.rand(3, 3, 32, 32, generator=gen)
    modes = torch.tensor([2, 0, 1])  # none, semantic, image
    with torch.no_grad():
        tokens, lengths, maps = earthcrafter_common.encode_conditions(encoder, semantic, image, modes)
        sem = encoder(semantic_map=semantic[1:2])
        img = encoder(image=image[2:3])
        null = encoder(batch_size=1)
    assert lengths.tolist() == [int(null.lengths), int(sem.lengths), int(img.lengths)]
    assert torch.allclose(tokens[1, : sem.tokens.shape[1]], sem.tokens[0], atol=1e-6)
    assert torch.allclose(tokens[2, : img.tokens.shape[1]], img.tokens[0], atol=1e-6)
    assert torch.allclose(tokens[0, : null.tokens.shape[1]], null.tokens[0], atol=1e-6)
    assert (tokens[0, null.tokens.shape[1] :] == 0).all()
    assert torch.allclose(maps[1], sem.condition_map[0], atol=1e-6) and torch.allclose(maps[2], img.condition_map[0], atol=1e-6)
    assert (maps[0] == 0).all() and maps[1].abs().sum() > 0
    drawn = earthcrafter_common.draw_condition_modes(4000, {"semantic": 0.5, "image": 0.3, "none": 0.2}, gen, "cpu")
    freq = torch.bincount(drawn, minlength=3).float() / 4000
    assert torch.allclose(freq, torch.tensor([0.5, 0.3, 0.2]), atol=0.04)
    with pytest.raises(ValueError, match="condition_probs"):
        earthcrafter_common.draw_condition_modes(2, {"semantic": -1.0}, gen, "cpu")


def test_flow_refuses_a_missing_vae(tmp_path):
    with pytest.raises(SystemExit):
        train_earthcrafter_flow.parse_args(["--preset", PRESET, "--model", "struct", "--output_dir", str(tmp_path / "x")])
    with pytest.raises(SystemExit):
        train_earthcrafter_flow.parse_args(["--preset", PRESET, "--model", "tex", "--tex_vae", str(tmp_path)])


def _log_steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "train_log.jsonl").read_text().splitlines()]


def test_struct_stages_train_and_write_loadable_models(struct_runs):
    vae = earthcrafter.EarthCrafterStructVAE.from_pretrained(struct_runs["struct_vae"] / "struct_vae")
    assert isinstance(vae, earthcrafter.EarthCrafterStructVAE) and _log_steps(struct_runs["struct_vae"]) == [1, 2]
    assert (struct_runs["struct_vae"] / "validation" / "step-2" / "reconstruction.png").is_file()
    scale = json.loads((struct_runs["struct"] / "latent_scale.json").read_text())
    assert scale["scaling_factor"] > 0 and abs(scale["scaling_factor"] * scale["latent_std"] - 1) < 1e-9
    assert isinstance(
        earthcrafter.EarthCrafterStructFlow.from_pretrained(struct_runs["struct"] / "struct_flow"),
        earthcrafter.EarthCrafterStructFlow,
    )
    assert (struct_runs["struct"] / "validation" / "step-2" / "structure_sample.png").is_file()
    # the structure flow read the occupancy run's condition encoder frozen
    shared, kept = (weights(struct_runs[r] / "condition_encoder") for r in ("occupancy", "struct"))
    assert shared.keys() == kept.keys() and all(torch.equal(shared[k], kept[k]) for k in shared)
    with pytest.raises(SystemExit):
        train_earthcrafter_flow.parse_args(
            ["--preset", PRESET, "--model", "occupancy", "--condition_encoder", str(struct_runs["struct"])]
        )


def test_tex_stages_train_and_write_loadable_models(tex_runs):
    vae = earthcrafter.EarthCrafterTexVAE.from_pretrained(tex_runs["tex_vae"] / "tex_vae")
    assert isinstance(vae, earthcrafter.EarthCrafterTexVAE) and _log_steps(tex_runs["tex_vae"]) == [1, 2]
    assert (tex_runs["tex_vae"] / "validation" / "step-2" / "rendered.png").is_file()
    assert json.loads((tex_runs["tex"] / "latent_scale.json").read_text())["scaling_factor"] > 0
    assert isinstance(
        earthcrafter.EarthCrafterTexFlow.from_pretrained(tex_runs["tex"] / "tex_flow"), earthcrafter.EarthCrafterTexFlow
    )


def test_assemble_writes_a_loadable_pipeline(tex_runs, tmp_path):
    from diffusers_city.pipelines.earthcrafter import EarthCrafterPipeline

    flags = {
        "--struct_vae_dir": tex_runs["struct_vae"],
        "--tex_vae_dir": tex_runs["tex_vae"],
        "--occupancy_dir": tex_runs["occupancy"],
        "--struct_dir": tex_runs["struct"],
        "--tex_dir": tex_runs["tex"],
    }

    def argv(out: Path, **changes: Path) -> list[str]:
        chosen = {**flags, **{f"--{k}": v for k, v in changes.items()}}
        return ["--preset", PRESET, "--output_dir", str(out)] + [str(v) for kv in chosen.items() for v in kv]

    assert assemble_earthcrafter.main(argv(tmp_path / "pipeline")) == 0
    pipe = EarthCrafterPipeline.from_pretrained(tmp_path / "pipeline")
    scale = json.loads((tex_runs["struct"] / "latent_scale.json").read_text())["scaling_factor"]
    assert pipe.struct_vae.config.scaling_factor == pytest.approx(scale)
    with pytest.raises(FileNotFoundError, match="tex_flow"):
        assemble_earthcrafter.main(argv(tmp_path / "p2", tex_dir=tmp_path / "nothing"))
    # a flow trained with a condition encoder of its own does not fit the pipeline's shared one
    own = tmp_path / "struct_own"
    shutil.copytree(tex_runs["struct"], own)
    encoder = own / "condition_encoder" / "diffusion_pytorch_model.safetensors"
    save_file({k: v + 1 for k, v in load_file(encoder).items()}, encoder)
    with pytest.raises(ValueError, match="another condition encoder"):
        assemble_earthcrafter.main(argv(tmp_path / "p3", struct_dir=own))
    assert not (tmp_path / "p3").exists()


def test_model_card_renders():
    from diffusers_city.training_utils import card_fields, render_model_card

    args = train_earthcrafter_flow.parse_args(["--preset", PRESET, "--model", "occupancy"])
    fields = card_fields(args, "EarthCrafter", "occupancy flow")
    card = render_model_card(args, "org/earthcrafter-tiny", "earthcrafter", fields)
    assert card.startswith("# EarthCrafter occupancy flow") and "EarthCrafterTexVAE" in card and "org/earthcrafter-tiny" in card


def test_train_all_refuses_the_shipped_folder_before_training(tmp_path):
    script = ROOT / "training" / "train_earthcrafter_all.sh"
    dest = ROOT / "pipelines" / "earthcrafter" / "default"
    result = subprocess.run(
        [str(script), "--preset", "tiny", "--cpu", "--output-dir", str(tmp_path), "--dest", str(dest)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "--update-shipped" in result.stderr
    assert not any(tmp_path.iterdir())
    bad = subprocess.run([str(script), "--no-such-flag"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown argument" in bad.stderr
    bad = subprocess.run([str(script), "--stages", "struct_vae,vae"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown stage vae" in bad.stderr


def test_continue_from_a_pipeline_warm_starts_with_frozen_encoders(tex_runs, tmp_path):
    """``--init_from`` starts from saved weights; ``--freeze_encoder`` moves only the decoder, so the
    latents the flows were trained on stay; a folder of another architecture is refused."""
    start = tex_runs["struct_vae"] / "struct_vae"
    out = tmp_path / "struct_vae"
    args = [*FAST, "--preset", PRESET, "--max_train_steps", "1", "--train_batch_size", "1", "--learning_rate", "1e-2"]
    argv = [*args, "--model", "struct", "--output_dir", str(out), "--init_from", str(start), "--freeze_encoder"]
    assert train_earthcrafter_vae.main(argv) == 0
    before, after = weights(start), weights(out / "struct_vae")
    encoder = earthcrafter.EarthCrafterStructVAE.encoder_modules
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(not k.startswith(encoder) for k in moved)
    assert any(k.startswith("decoder") for k in moved)
    wrong = tex_runs["tex_vae"] / "tex_vae"
    with pytest.raises(ValueError, match="EarthCrafterTexVAE"):
        train_earthcrafter_vae.main([*args, "--model", "struct", "--output_dir", str(tmp_path / "x"), "--init_from", str(wrong)])
    # a flow warm-started from its trained weights begins where that run ended
    flow_out = tmp_path / "occupancy"
    flow = [*args, "--cache_tiles", "1", "--validation_inference_steps", "2", "--learning_rate", "0"]
    init = ["--init_from", str(tex_runs["occupancy"] / "occupancy_transformer")]
    shared = ["--condition_encoder", str(tex_runs["occupancy"] / "condition_encoder")]
    assert train_earthcrafter_flow.main([*flow, "--model", "occupancy", "--output_dir", str(flow_out), *init, *shared]) == 0
    trained, continued = weights(tex_runs["occupancy"] / "occupancy_transformer"), weights(flow_out / "occupancy_transformer")
    assert all(torch.equal(trained[k], continued[k]) for k in trained)
