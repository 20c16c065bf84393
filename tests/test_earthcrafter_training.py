"""EarthCrafter training scripts on a tiny preset, CPU: each script trains and writes a loadable
result, resume repeats an uninterrupted run, the latent cache is reused, condition dropout."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "training"))

import assemble_earthcrafter  # noqa: E402
import earthcrafter_common  # noqa: E402
import train_earthcrafter_flow  # noqa: E402
import train_earthcrafter_vae  # noqa: E402

from diffusers_city.models import earthcrafter  # noqa: E402
from diffusers_city.models.earthcrafter import EarthCrafterConditionEncoder, EarthCrafterOccupancyTransformer  # noqa: E402
from diffusers_city.presets import available_sizes  # noqa: E402

TINY = {
    "components": {
        "condition_encoder": {
            "resolution": 16,
            "image_size": 32,
            "patch_size": 4,
            "hidden_dim": 32,
            "num_layers": 1,
            "num_heads": 2,
            "num_null_tokens": 4,
        },
        "occupancy_transformer": {"grid_size": 2, "hidden_dim": 32, "num_layers": 2, "num_heads": 2, "context_dim": 32},
        "struct_flow": {
            "in_channels": 8,
            "grid_size": 2,
            "block_channels": [16, 32],
            "window_size": 2,
            "num_heads": 2,
            "context_dim": 32,
        },
        "tex_flow": {
            "in_channels": 8,
            "resolution": 16,
            "block_channels": [16, 16, 32, 32],
            "window_size": 4,
            "num_heads": 2,
            "context_dim": 32,
        },
    },
    "scheduler": {"shift": 1.0},
    "training": {"data": {"n_views": 2, "view_size": 24}, "flow": {"train_batch_size": 2, "cache_tiles": 3}},
}
FAST = ["--cpu", "--report_to", "none", "--logging_steps", "1"]
FLOW_FAST = [*FAST, "--validation_inference_steps", "2"]


HAS_VAES = hasattr(earthcrafter, "EarthCrafterStructVAE") and hasattr(earthcrafter, "EarthCrafterTexVAE")
needs_vaes = pytest.mark.skipif(
    not HAS_VAES, reason="EarthCrafterStructVAE / EarthCrafterTexVAE not in this tree (branch ec-vae)"
)


@pytest.fixture(scope="module")
def preset(tmp_path_factory) -> str:
    """The shipped tiny preset, or (before pipelines/earthcrafter/presets exists) its flow part above."""
    if "tiny" in available_sizes("earthcrafter"):
        return "tiny"
    path = tmp_path_factory.mktemp("preset") / "tiny.json"
    path.write_text(json.dumps(TINY))
    return str(path)


@pytest.fixture(scope="module")
def trained(preset, tmp_path_factory) -> dict[str, Path]:
    """Every stage trained for 2 steps on the tiny preset (each script's output folder)."""
    root = tmp_path_factory.mktemp("earthcrafter")
    runs = {name: root / name for name in ("struct_vae", "tex_vae", "occupancy", "struct", "tex")}
    args = [*FAST, "--preset", preset, "--max_train_steps", "2", "--validation_steps", "2", "--train_batch_size", "2"]
    assert train_earthcrafter_vae.main([*args, "--model", "struct", "--output_dir", str(runs["struct_vae"])]) == 0
    assert train_earthcrafter_vae.main([*args, "--model", "tex", "--output_dir", str(runs["tex_vae"])]) == 0
    flow = [*args, "--cache_tiles", "2", "--validation_inference_steps", "2"]
    assert train_earthcrafter_flow.main([*flow, "--model", "occupancy", "--output_dir", str(runs["occupancy"])]) == 0
    struct_vae = ["--struct_vae", str(runs["struct_vae"] / "struct_vae")]
    assert train_earthcrafter_flow.main([*flow, "--model", "struct", *struct_vae, "--output_dir", str(runs["struct"])]) == 0
    tex_vae = ["--tex_vae", str(runs["tex_vae"] / "tex_vae")]
    assert train_earthcrafter_flow.main([*flow, "--model", "tex", *tex_vae, "--output_dir", str(runs["tex"])]) == 0
    return runs


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "diffusion_pytorch_model.safetensors")


def test_occupancy_flow_trains_resumes_exactly_and_reuses_its_cache(preset, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    args = [
        *FLOW_FAST,
        "--preset",
        preset,
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
    assert len(list(cache.iterdir())) == 1

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
    untrained = EarthCrafterOccupancyTransformer.from_config(TINY["components"]["occupancy_transformer"])
    changed = [k for k, v in trained.state_dict().items() if not torch.equal(v, untrained.state_dict()[k])]
    assert changed, "training changed no weight"
    log = [json.loads(line) for line in (resumed / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]


def test_condition_dropout_mixes_modes_per_item():
    encoder = EarthCrafterConditionEncoder(**TINY["components"]["condition_encoder"]).eval()
    gen = torch.Generator().manual_seed(0)
    semantic = torch.randint(0, 8, (3, 16, 16), generator=gen)
    image = torch.rand(3, 3, 32, 32, generator=gen)
    modes = torch.tensor([2, 0, 1])  # none, semantic, image
    with torch.no_grad():
        tokens, lengths = earthcrafter_common.encode_conditions(encoder, semantic, image, modes)
        sem = encoder(semantic_map=semantic[1:2])
        img = encoder(image=image[2:3])
        null = encoder(batch_size=1)
    assert lengths.tolist() == [int(null[1]), int(sem[1]), int(img[1])]
    assert torch.allclose(tokens[1, : sem[0].shape[1]], sem[0][0], atol=1e-6)
    assert torch.allclose(tokens[2, : img[0].shape[1]], img[0][0], atol=1e-6)
    assert torch.allclose(tokens[0, : null[0].shape[1]], null[0][0], atol=1e-6)
    assert (tokens[0, null[0].shape[1] :] == 0).all()
    drawn = earthcrafter_common.draw_condition_modes(4000, {"semantic": 0.5, "image": 0.3, "none": 0.2}, gen, "cpu")
    freq = torch.bincount(drawn, minlength=3).float() / 4000
    assert torch.allclose(freq, torch.tensor([0.5, 0.3, 0.2]), atol=0.04)
    with pytest.raises(ValueError, match="condition_probs"):
        earthcrafter_common.draw_condition_modes(2, {"semantic": -1.0}, gen, "cpu")


def test_flow_refuses_a_missing_vae(preset, tmp_path):
    with pytest.raises(SystemExit):
        train_earthcrafter_flow.parse_args(["--preset", preset, "--model", "struct", "--output_dir", str(tmp_path / "x")])
    with pytest.raises(SystemExit):
        train_earthcrafter_flow.parse_args(["--preset", preset, "--model", "tex", "--tex_vae", str(tmp_path)])


@needs_vaes
def test_vaes_train_and_write_loadable_models(trained):
    for name, cls in (("struct_vae", earthcrafter.EarthCrafterStructVAE), ("tex_vae", earthcrafter.EarthCrafterTexVAE)):
        model = cls.from_pretrained(trained[name] / name)
        assert isinstance(model, cls)
        assert (trained[name] / "validation" / "step-2" / "ground_truth.png").is_file()
        log = [json.loads(line) for line in (trained[name] / "train_log.jsonl").read_text().splitlines()]
        assert [r["step"] for r in log] == [1, 2] and all(r["loss"] == r["loss"] for r in log)
    assert (trained["tex_vae"] / "validation" / "step-2" / "rendered.png").is_file()


@needs_vaes
def test_struct_and_tex_flows_measure_their_latent_scale(trained):
    for stage, folder, cls in (
        ("struct", "struct_flow", earthcrafter.EarthCrafterStructFlow),
        ("tex", "tex_flow", earthcrafter.EarthCrafterTexFlow),
    ):
        scale = json.loads((trained[stage] / "latent_scale.json").read_text())
        assert scale["scaling_factor"] > 0 and abs(scale["scaling_factor"] * scale["latent_std"] - 1) < 1e-9
        assert isinstance(cls.from_pretrained(trained[stage] / folder), cls)
        assert EarthCrafterConditionEncoder.from_pretrained(trained[stage] / "condition_encoder") is not None


@needs_vaes
def test_assemble_writes_a_loadable_pipeline(trained, preset, tmp_path):
    from diffusers_city.pipelines.earthcrafter import EarthCrafterPipeline

    out = tmp_path / "pipeline"
    flags = {
        "--struct_vae_dir": trained["struct_vae"],
        "--tex_vae_dir": trained["tex_vae"],
        "--occupancy_dir": trained["occupancy"],
        "--struct_dir": trained["struct"],
        "--tex_dir": trained["tex"],
    }
    argv = ["--preset", preset, "--output_dir", str(out)] + [str(v) for kv in flags.items() for v in kv]
    assert assemble_earthcrafter.main(argv) == 0
    pipe = EarthCrafterPipeline.from_pretrained(out)
    scale = json.loads((trained["struct"] / "latent_scale.json").read_text())["scaling_factor"]
    assert pipe.struct_vae.config.scaling_factor == pytest.approx(scale)
    missing = ["--preset", preset, "--output_dir", str(tmp_path / "p2")] + [str(v) for kv in flags.items() for v in kv]
    missing[missing.index("--tex_dir") + 1] = str(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="tex_flow"):
        assemble_earthcrafter.main(missing)


def test_model_card_renders(preset):
    from diffusers_city.training_utils import render_model_card

    args = train_earthcrafter_flow.parse_args(["--preset", preset, "--model", "occupancy"])
    card = render_model_card(
        args, "org/earthcrafter-tiny", "earthcrafter", earthcrafter_common.card_fields(args, "occupancy flow")
    )
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
