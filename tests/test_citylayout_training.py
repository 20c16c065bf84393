"""training/train_citylayout.py: both stages for a few CPU steps, exact resume, the saved tokenizer
and pipeline, the masked-token objective, argument errors."""

import math
from pathlib import Path

import pytest
import torch
from script_loader import load_script
from training_helpers import logged

from diffusers_city.presets import load_preset


@pytest.fixture(scope="module")
def train():
    return load_script("training/train_citylayout.py")


# tiny preset: 2 cities of 96 m, 64 px crops / 8x8-token windows, a checkpoint every 2 steps
COMMON = [
    "--preset",
    "tiny",
    "--cpu",
    "--report_to",
    "none",
    "--num_cities",
    "2",
    "--city_size_m",
    "96",
    "--train_batch_size",
    "2",
    "--logging_steps",
    "1",
    "--checkpointing_steps",
    "2",
    "--validation_steps",
    "100",
    "--use_ema",
    "--ema_decay",
    "0.5",
    "--learning_rate",
    "1e-3",
]


@pytest.fixture(scope="module")
def vq_dir(tmp_path_factory) -> Path:
    """An untrained tiny tokenizer, as the vq stage saves it."""
    from diffusers import VQModel

    folder = tmp_path_factory.mktemp("vq") / "vqvae"
    torch.manual_seed(0)
    VQModel.from_config(load_preset("citylayout", "tiny")["components"]["vqvae"]).save_pretrained(folder)
    return folder


def test_vq_stage_trains_restarts_codes_and_saves_the_tokenizer(train, tmp_path):
    from diffusers import VQModel

    out = tmp_path / "vq"
    args = [*COMMON, "--stage", "vq", "--codebook_restart_every", "2", "--validation_steps", "3", "--output_dir", str(out)]
    assert train.main([*args, "--max_train_steps", "3"]) == 0
    log = logged(out)
    assert sorted(log) == [1, 2, 3]
    for step, terms in log.items():
        assert {"height_l1", "smoothness", "class_ce", "vq", "loss", "perplexity", "codes_used"} <= set(terms)
        assert all(math.isfinite(v) for v in terms.values()), (step, terms)
    assert log[2]["restarted_codes"] > 0 and log[1]["restarted_codes"] == 0  # restarts only every 2 steps
    assert 1 <= log[1]["perplexity"] <= 64 and 0 < log[1]["codes_used"] <= 1
    assert {p.name for p in (out / "validation" / "step-3").iterdir()} == {"classes.png", "heights.png"}
    vqvae = VQModel.from_pretrained(out / "vqvae", use_safetensors=True)
    assert vqvae.config.num_vq_embeddings == 64
    assert not list((out / "vqvae").glob("*.bin"))


@pytest.mark.parametrize("stage", ["vq", "tokens"])
def test_resume_repeats_an_uninterrupted_run(train, stage, vq_dir, tmp_path):
    """Stopped at checkpoint 2 and resumed to step 5, a run logs and saves exactly what an
    uninterrupted one does (vq: the restart at step 3 needs the code usage of steps 1-2, carried by the checkpoint)."""
    extra = ["--codebook_restart_every", "3"] if stage == "vq" else ["--vqvae", str(vq_dir), "--outpaint_prob", "0.5"]
    args = [*COMMON, "--stage", stage, *extra]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert train.main([*args, "--output_dir", str(whole), "--max_train_steps", "5"]) == 0
    assert train.main([*args, "--output_dir", str(parts), "--max_train_steps", "2"]) == 0
    assert train.main([*args, "--output_dir", str(parts), "--max_train_steps", "5", "--resume_from_checkpoint", "latest"]) == 0
    assert sorted(logged(parts)) == [1, 2, 3, 4, 5]
    assert logged(parts) == logged(whole)
    if stage == "vq":
        assert logged(whole)[3]["restarted_codes"] > 0
    model = "vqvae" if stage == "vq" else "pipeline/transformer"
    weights = sorted((whole / model).glob("*.safetensors"))
    assert weights and all(a.read_bytes() == (parts / model / a.name).read_bytes() for a in weights)


def test_tokens_stage_writes_a_loadable_pipeline(train, vq_dir, tmp_path):
    from diffusers import AmusedScheduler, DiffusionPipeline, UVit2DModel, VQModel

    out, folder = tmp_path / "run", tmp_path / "pipe"
    args = [*COMMON, "--stage", "tokens", "--vqvae", str(vq_dir), "--output_dir", str(out), "--pipeline_out", str(folder)]
    assert train.main([*args, "--max_train_steps", "2", "--validation_steps", "2"]) == 0
    assert {p.name for p in (out / "validation" / "step-2").iterdir()} == {"sample_classes.png", "sample_heights.png"}
    assert all(math.isfinite(v) for terms in logged(out).values() for v in terms.values())
    pipe = DiffusionPipeline.from_pretrained(folder, use_safetensors=True)
    assert type(pipe).__name__ == "CityLayoutPipeline"
    assert isinstance(pipe.vqvae, VQModel) and isinstance(pipe.transformer, UVit2DModel)
    assert isinstance(pipe.scheduler, AmusedScheduler) and pipe.scheduler.config.mask_token_id == 64
    frozen = VQModel.from_pretrained(vq_dir)
    assert all(torch.equal(a, b) for a, b in zip(frozen.state_dict().values(), pipe.vqvae.state_dict().values()))
    assert not list(folder.rglob("*.bin")) and sorted(p.name for p in tmp_path.iterdir()) == ["pipe", "run"]
    (cache,) = (out / "token_cache").iterdir()  # tokenized once; a resumed run reads it back
    assert train.main([*args, "--max_train_steps", "3", "--resume_from_checkpoint", "latest"]) == 0
    assert list((out / "token_cache").iterdir()) == [cache]


def test_restarts_seed_dead_codes_far_from_the_live_ones(train):
    """Restarts draw encoder outputs k-means++ style: rows a live code already holds are never drawn."""
    from diffusers import VQModel

    vq = VQModel(
        in_channels=9,
        out_channels=9,
        latent_channels=2,
        num_vq_embeddings=4,
        vq_embed_dim=2,
        norm_num_groups=2,
        block_out_channels=(2,),
    )
    tokenizer = train.Tokenizer(vq)
    codes = vq.quantize.embedding.weight
    with torch.no_grad():
        codes.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [5.0, 5.0], [6.0, 6.0]]))
    tokenizer.code_usage.copy_(torch.tensor([3.0, 1.0, 0.0, 0.0]))
    latents = torch.cat([torch.zeros(50, 2), torch.ones(50, 1) * torch.tensor([[1.0, 0.0]]), torch.tensor([[-4.0, 3.0]])])
    assert train.restart_dead_codes(tokenizer, None, latents, torch.Generator().manual_seed(0)) == 2
    assert torch.equal(codes[2:], torch.tensor([[-4.0, 3.0], [-4.0, 3.0]]))  # the only row no live code holds
    assert torch.equal(codes[:2], torch.tensor([[0.0, 0.0], [1.0, 0.0]])) and int(tokenizer.code_usage.sum()) == 0


def test_masked_token_loss_scores_only_masked_tokens(train):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 16, 4, 4, generator=generator)
    targets = torch.randint(16, (2, 4, 4), generator=generator)
    masked = torch.zeros(2, 4, 4, dtype=torch.bool)
    masked[0, 1, 2] = masked[1, 3, 0] = masked[1, 0, 0] = True
    loss = train.masked_token_loss(logits, targets, masked, label_smoothing=0.1)
    changed = logits.clone()
    changed[0, :, 0, 0] += torch.randn(16, generator=generator) * 10  # an unmasked token
    changed[1, targets[1, 2, 2], 2, 2] -= 50.0
    assert torch.equal(train.masked_token_loss(changed, targets, masked, label_smoothing=0.1), loss)
    changed[1, targets[1, 3, 0], 3, 0] -= 5.0  # a masked token
    assert train.masked_token_loss(changed, targets, masked, label_smoothing=0.1) > loss


def test_mask_tokens(train):
    tokens = torch.randint(64, (64, 8, 8), generator=torch.Generator().manual_seed(1))
    inputs, masked = train.mask_tokens(tokens, 64, 0.0, 2, torch.Generator().manual_seed(2))
    assert torch.equal(inputs[masked], torch.full_like(inputs[masked], 64)) and torch.equal(inputs[~masked], tokens[~masked])
    counts = masked.flatten(1).sum(1)
    assert counts.min() >= 1 and counts.max() <= 64 and len(counts.unique()) > 10  # a cosine-distributed share
    _, band = train.mask_tokens(tokens, 64, 1.0, 2, torch.Generator().manual_seed(2))
    inner = band[:, 2:-2, 2:-2]
    assert inner.all()  # everything but the border bands is to extrapolate
    context = ~band
    sides = torch.stack([context[:, 0].all(1), context[:, -1].all(1), context[:, :, 0].all(1), context[:, :, -1].all(1)], 1)
    assert sides.any(1).all() and (context.flatten(1).sum(1) < 64).all()


def test_bad_arguments(train, vq_dir, tmp_path, capsys):
    from diffusers import VQModel

    from diffusers_city.presets import bundled_path

    cases = {
        "belongs to --stage tokens": ["--stage", "vq", "--vqvae", str(vq_dir)],
        "needs --vqvae": ["--stage", "tokens"],
        "held out": ["--stage", "vq", "--num_cities", "6001"],
        "multiple of": ["--stage", "vq", "--resolution", "60"],
        "less than one": ["--stage", "vq", "--city_size_m", "32"],
        "codebook_restart_every": ["--stage", "vq", "--codebook_restart_every", "-1"],
        "outpaint_prob": ["--stage", "tokens", "--vqvae", str(vq_dir), "--outpaint_prob", "2"],
    }
    for message, argv in cases.items():
        with pytest.raises(SystemExit):
            train.parse_args(argv)
        assert message in capsys.readouterr().err, message
    shipped = str(bundled_path("citylayout", "default"))
    with pytest.raises(ValueError, match="--pipeline_out .*inside the shipped files.*--update_shipped"):
        train.parse_args(["--stage", "tokens", "--vqvae", str(vq_dir), "--pipeline_out", shipped])
    assert train.parse_args(["--stage", "tokens", "--vqvae", str(vq_dir), "--pipeline_out", shipped, "--update_shipped"])
    other = tmp_path / "other_vq"
    config = {**load_preset("citylayout", "tiny")["components"]["vqvae"], "num_vq_embeddings": 32}
    VQModel.from_config(config).save_pretrained(other)
    with pytest.raises(ValueError, match="32 codes"):
        train.main([*COMMON, "--stage", "tokens", "--vqvae", str(other), "--output_dir", str(tmp_path / "run")])


def test_model_card(train, vq_dir):
    from diffusers_city.training_utils import render_model_card

    args = train.parse_args(["--stage", "tokens", "--vqvae", str(vq_dir), "--preset", "tiny"])
    card = render_model_card(args, "org/layout", "citylayout", train.card_fields(args))
    assert card.startswith("# CityLayout generator (tiny)") and "UVit2DModel" in card and "256 m" in card
