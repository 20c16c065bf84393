"""CityLayoutPipeline and CityLayoutGaussianCityPipeline: sliding-window sampling, inpainting,
decoding, save/load, the shared pipeline contract and bad input."""

import logging

import numpy as np
import pytest
import torch
from pipeline_contract import PipelineContract

from diffusers_city import CityLayoutGaussianCityPipeline, CityLayoutPipeline, GaussianCityPipeline
from diffusers_city.data import CityScene, procedural_city
from diffusers_city.data.classes import NUM_CLASSES
from diffusers_city.models.citylayout.layout_codec import decode_tokens

SIZE_M = 112.0  # 14 tokens of the tiny preset: 2 x 2 windows of 8 tokens stepping by 6


@pytest.fixture(scope="module")
def pipe():
    p = CityLayoutPipeline.from_preset("tiny", seed=0)
    p.set_progress_bar_config(disable=True)
    return p


def _seed(s):
    return torch.Generator().manual_seed(s)


def test_windows_resample_only_masked_tokens_and_fill_the_grid(pipe):
    seen = []

    def record(p, i, t, kwargs):
        seen.append(kwargs["latents"].clone())
        return kwargs

    out = pipe(SIZE_M, SIZE_M, num_inference_steps=3, generator=_seed(0), callback_on_step_end=record)
    grid = out.tokens
    assert grid.shape == (14, 14) and int(grid.max()) < pipe.mask_token_id
    assert pipe.window_starts(grid.shape) == [(0, 0), (0, 6), (6, 0), (6, 6)]
    # 4 windows (one per wave), 3 steps each; a later window starts from its overlap with earlier ones
    assert len(seen) == 12 and all(s.shape == (1, 8, 8) for s in seen)
    first_of_last = seen[9][0]
    kept = first_of_last != pipe.mask_token_id
    assert kept.any() and not kept.all()
    assert torch.equal(first_of_last[kept], grid[6:14, 6:14][kept])
    # tokens once unmasked in a window never change
    for a, b in zip(seen[9:], seen[10:]):
        fixed = a != pipe.mask_token_id
        assert torch.equal(a[fixed], b[fixed])


def test_memory_flat_windows_are_batched_at_most_window_batch_size(pipe):
    shapes = []
    handle = pipe.transformer.register_forward_hook(lambda m, args, kwargs_out: shapes.append(tuple(args[0].shape)))
    try:
        pipe(40 * 8.0, 30 * 8.0, num_inference_steps=1, window_batch_size=3, generator=_seed(0), output_type="latent")
    finally:
        handle.remove()
    assert shapes and all(s[0] <= 3 and s[1:] == (8, 8) for s in shapes)
    # every window of the plan is sampled once (one step each)
    assert sum(s[0] for s in shapes) == len(pipe.window_starts((30, 40)))


def test_decoding_one_window_is_the_tokenizer_and_blends_are_consistent(pipe):
    tokens = torch.randint(0, pipe.mask_token_id, (8, 8), generator=_seed(3))
    semantic, height = pipe.decode_tokens(tokens)
    with torch.no_grad():
        direct = decode_tokens(pipe.vqvae, tokens[None])[0]
    assert np.array_equal(semantic, direct[1:].argmax(0).numpy())
    np.testing.assert_allclose(height, direct[0].numpy() * pipe.config.height_scale, rtol=1e-5, atol=1e-5)
    big = torch.randint(0, pipe.mask_token_id, (14, 14), generator=_seed(4))
    sem_big, hgt_big = pipe.decode_tokens(big)
    assert sem_big.shape == (112, 112) and sem_big.max() < NUM_CLASSES and np.isfinite(hgt_big).all()
    with pytest.raises(ValueError, match="no mask tokens left"):
        pipe.decode_tokens(torch.full((8, 8), pipe.mask_token_id))
    # pixels only the first window covers (rows and columns < 6 tokens) are that window's own decode
    with torch.no_grad():
        first = decode_tokens(pipe.vqvae, big[None, :8, :8])[0]
    np.testing.assert_allclose(hgt_big[:40, :40], first[0, :40, :40].numpy() * pipe.config.height_scale, rtol=1e-4, atol=1e-3)


def test_inpainting_keeps_the_given_pixels_and_their_tokens(pipe):
    city = procedural_city(3, size_m=SIZE_M, meters_per_pixel=1.0, with_points=False, with_image=False, origin=(5e5, 4e6, 10))
    city = city.replace(crs="EPSG:32633")
    mask = np.zeros(city.shape, bool)
    mask[:, 56:] = True
    out = pipe(scene=city, mask=mask, num_inference_steps=3, generator=_seed(1))
    scene = out.scene
    assert scene.shape == city.shape and scene.origin == city.origin and scene.crs == "EPSG:32633"
    assert np.array_equal(scene.semantic[:, :56], city.semantic[:, :56])
    assert np.array_equal(scene.height[:, :56], city.height[:, :56])
    # the kept tokens are the tokenizer's codes of the map with the generated part blanked (ground, 0 m)
    encoded = pipe.encode_layout(np.where(mask, 0, city.semantic), np.where(mask, 0.0, city.height))
    assert torch.equal(out.tokens[:, :7], encoded[:, :7])
    other = pipe(scene=city, mask=mask, num_inference_steps=3, generator=_seed(2))
    assert not np.array_equal(other.scene.semantic[:, 56:], scene.semantic[:, 56:])


def test_sizes_resolution_and_padding(pipe, caplog):
    with caplog.at_level(logging.WARNING):
        out = pipe(100.0, 60.0, num_inference_steps=2, generator=_seed(0))
    assert out.scene.shape == (60, 100) and out.tokens.shape == (8, 13)
    assert "not whole 8 px tokens" in caplog.text
    coarse = pipe(100.0, 60.0, meters_per_pixel=2.0, num_inference_steps=2, generator=_seed(0))
    assert coarse.scene.shape == (30, 50) and coarse.scene.meters_per_pixel == 2.0
    assert np.array_equal(coarse.scene.semantic, out.scene.semantic[1::2, 1::2])  # the native pixel under each centre


def test_latents_start_the_grid(pipe):
    out = pipe(SIZE_M, SIZE_M, num_inference_steps=2, generator=_seed(0), output_type="latent")
    start = out.tokens.clone()
    start[:, 7:] = pipe.mask_token_id
    again = pipe(SIZE_M, SIZE_M, num_inference_steps=2, generator=_seed(5), latents=start, output_type="latent")
    assert torch.equal(again.tokens[:, :7], out.tokens[:, :7])


class TestCityLayoutPipelineContract(PipelineContract):
    pipeline_class = CityLayoutPipeline
    output_types = ("scene", "latent")
    callback_tensor_inputs = ("latents",)
    work_component = "transformer"
    bad_inputs = (
        ({"width_m": 0.0}, "width_m must be > 0"),
        ({"height_m": float("nan")}, "height_m must be a finite number"),
        ({"width_m": 0.2}, "smaller than one pixel"),
        ({"num_inference_steps": 0}, "num_inference_steps must be an integer"),
        ({"temperature": -1.0}, "temperature must be >= 0"),
        ({"temperature": (1.0, 2.0, 3.0)}, "temperature must be a number or a"),
        ({"window_batch_size": 0}, "window_batch_size must be an integer"),
        ({"output_type": "pil"}, "output_type must be one of"),
        ({"latents": torch.zeros(3, 3, dtype=torch.long)}, "latents must be the area's token grid"),
        ({"latents": torch.zeros(14, 14)}, "latents must be a torch.long"),
        ({"latents": torch.full((14, 14), 999, dtype=torch.long)}, "latents must hold codebook ids"),
        ({"mask": np.ones((112, 112), bool)}, "mask is given without a partial map"),
        ({"width_m": None, "height_m": None}, "pass width_m and height_m"),
        ({"semantic_map": np.zeros((16, 16), int), "height_map": np.zeros((16, 16))}, "a partial map needs mask"),
        (
            {"semantic_map": np.full((16, 16), 11), "height_map": np.zeros((16, 16)), "mask": np.zeros((16, 16), bool)},
            "class ids \\[11\\] outside the class table",
        ),
        (
            {"semantic_map": np.zeros((16, 16), int), "height_map": np.full((16, 16), np.nan), "mask": np.zeros((16, 16), bool)},
            "NaN",
        ),
        (
            {"semantic_map": np.zeros((16, 16), int), "height_map": np.zeros((16, 16)), "mask": np.zeros((16, 8), bool)},
            "mask shape",
        ),
        (
            {"semantic_map": np.zeros((16, 16), int), "height_map": np.zeros((16, 16)), "mask": np.full((16, 16), 2)},
            "mask must be boolean",
        ),
        ({"scene": {"semantic": 1}, "width_m": None, "height_m": None}, "scene must be a CityScene"),
        ({"meters_per_pixel": 0.0}, "meters_per_pixel must be >= "),
        ({"width_m": 1e7, "height_m": 1e7}, "estimated peak memory .* exceeds the available memory"),
        ({"max_memory_gb": 1e-6}, "estimated peak memory .* exceeds max_memory_gb"),
    )

    @classmethod
    def make_pipeline(cls):
        return CityLayoutPipeline.from_preset("tiny", seed=0)

    def call_arguments(self, seed=0):
        return dict(width_m=SIZE_M, height_m=SIZE_M, num_inference_steps=3, generator=_seed(seed))

    def main_output(self, output):
        if isinstance(output, tuple):
            output = output[1]
        else:
            output = output.tokens
        return output.numpy()

    def check_output(self, output, output_type):
        assert output.tokens.shape == (14, 14) and int(output.tokens.max()) < 64
        if output_type == "latent":
            assert output.scene is None
        else:
            assert isinstance(output.scene, CityScene) and output.scene.shape == (112, 112)
            assert output.scene.metadata["generator"] == "CityLayoutPipeline"

    def test_settings_survive_save_and_load(self, contract_pipe, tmp_path):
        contract_pipe.save_pretrained(tmp_path / "saved")
        loaded = CityLayoutPipeline.from_pretrained(tmp_path / "saved")
        assert (loaded.config.window_tokens, loaded.config.window_stride) == (8, 6)
        assert loaded.config.height_scale == contract_pipe.config.height_scale


def test_presets_and_component_checks():
    for size in ("tiny", "small"):
        p = CityLayoutPipeline.from_preset(size)
        assert p.pixels_per_token == 8 and p.mask_token_id == p.vqvae.config.num_vq_embeddings
    tiny = CityLayoutPipeline.from_preset("tiny")
    with pytest.raises(ValueError, match="window_stride .* at least half"):
        CityLayoutPipeline(tiny.vqvae, tiny.transformer, tiny.scheduler, window_tokens=8, window_stride=3)
    with pytest.raises(ValueError, match="mask token must be id 64"):
        CityLayoutPipeline(tiny.vqvae, tiny.transformer, type(tiny.scheduler)(mask_token_id=7))


@pytest.fixture(scope="module")
def combined(pipe):
    city = GaussianCityPipeline.from_preset("tiny", seed=0)
    p = CityLayoutGaussianCityPipeline.from_pipes(pipe, city)
    p.set_progress_bar_config(disable=True)
    return p


def test_combined_pipeline_renders_a_generated_layout(combined, pipe, tmp_path):
    kwargs = dict(width_m=64.0, height_m=64.0, num_inference_steps=2, num_frames=2, width=32, height=24, output_type="np")
    out = combined(generator=_seed(0), **kwargs)
    assert out.images.shape == (2, 24, 32, 3) and out.scene.shape == (64, 64)
    layout = pipe(64.0, 64.0, num_inference_steps=2, generator=_seed(0)).scene
    assert np.array_equal(out.scene.semantic, layout.semantic)
    combined.save_pretrained(tmp_path / "combined")
    loaded = CityLayoutGaussianCityPipeline.from_pretrained(tmp_path / "combined")
    loaded.set_progress_bar_config(disable=True)
    assert np.array_equal(loaded(generator=_seed(0), **kwargs).images, out.images)


def test_combined_pipeline_refuses_bad_render_options_before_the_layout(combined, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("the layout was generated before the render options were checked")

    monkeypatch.setattr(combined.transformer, "forward", no_work)
    with pytest.raises(ValueError, match="trajectory must be one of"):
        combined(64.0, 64.0, trajectory="spiral")
    with pytest.raises(ValueError, match="output_type"):
        combined(64.0, 64.0, output_type="scene")


def test_transformer_sees_token_positions(pipe):
    """An all-masked window: ``UVit2DModel`` alone gives every interior token the same logits; the
    position embeddings of ``CityLayoutTransformer2DModel`` tell the positions apart."""
    from diffusers import UVit2DModel

    from diffusers_city.models.citylayout import CityLayoutTransformer2DModel
    from diffusers_city.models.citylayout.layout_codec import null_condition

    assert isinstance(pipe.transformer, CityLayoutTransformer2DModel)
    size = pipe.config.window_tokens
    tokens = torch.full((1, size, size), pipe.mask_token_id)
    condition = null_condition(pipe.transformer, 1, "cpu", torch.float32)
    plain = UVit2DModel.from_config(pipe.transformer.config)
    plain.load_state_dict(pipe.transformer.state_dict())
    with torch.no_grad():
        for model, distinct in ((plain, False), (pipe.transformer, True)):
            inner = model.eval()(tokens, **condition)[0, :, 2:-2, 2:-2].flatten(1)
            assert bool((inner - inner[:, :1]).abs().amax() > 1e-4) is distinct
