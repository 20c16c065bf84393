"""EarthCrafter VAEs (tiny presets): latent grid, teacher forcing and pruning, save/load, seeded
determinism, splat activation and world positions, gradients through the 2DGS rasterizer, bad
input, and short overfits that must lower the training losses."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from diffusers_city.models.earthcrafter import EarthCrafterStructVAE, EarthCrafterTexVAE
from diffusers_city.models.earthcrafter.tex_vae import PARAM_LAYOUT
from diffusers_city.models.shared.sparse_vae import coarsen_coords, level_geometry
from diffusers_city.render import Cameras, Gaussians, render_gaussians
from diffusers_city.sparse import SparseTensor

TINY_STRUCT = dict(
    resolution=16,
    latent_channels=8,
    encoder_channels=(16, 16, 32, 32),
    decoder_channels=(32, 32, 16, 16),
    layers_per_block=1,
    attention_head_dim=16,
    window_size=4,
    num_frequencies=4,
)
TINY_TEX = dict(resolution=16, model_channels=32, num_layers=2, attention_head_dim=16, window_size=4, num_frequencies=4)
L, V, ORIGIN = 16, 4.0, (2.0, 2.0, 2.0)


def tile(batch: int = 1, channels: int = 1) -> SparseTensor:
    """Ground plane over the tile and a hollow box building per batch item (surface voxels)."""
    coords = []
    for b in range(batch):
        coords += [(b, x, y, 0) for x in range(L) for y in range(L)]
        top = 6 + 2 * b
        for z in range(1, top + 1):
            for x in range(3, 9):
                for y in range(5, 12):
                    if x in (3, 8) or y in (5, 11) or z == top:
                        coords.append((b, x, y, z))
    c = torch.tensor(coords, dtype=torch.int32)
    feats = torch.rand(len(c), channels, generator=torch.Generator().manual_seed(3))
    return SparseTensor(feats, c, voxel_size=V, origin=ORIGIN, batch_size=batch)


def key_set(coords: torch.Tensor) -> set[tuple[int, ...]]:
    return {tuple(r) for r in coords.tolist()}


def struct_vae(seed: int = 0) -> EarthCrafterStructVAE:
    torch.manual_seed(seed)
    return EarthCrafterStructVAE(**TINY_STRUCT)


def tex_vae(seed: int = 0) -> EarthCrafterTexVAE:
    torch.manual_seed(seed)
    return EarthCrafterTexVAE(**TINY_TEX)


def occupancy_bce(decoding) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(torch.cat(decoding.logits), torch.cat(decoding.targets).float())


def cameras() -> Cameras:
    centre = [L * V / 2] * 2 + [8.0]
    return Cameras.look_at([[centre[0] - 30.0, centre[1] - 50.0, 70.0]], centre, width=24, height=24, fov_deg=70)


# -- StructVAE ---------------------------------------------------------------------------------


def test_struct_vae_latent_on_the_coarse_grid():
    vae, x = struct_vae(), tile(batch=2)
    posterior = vae.encode(x).latent_dist
    z = posterior.mode()
    assert z.num_channels == 8 and vae.latent_resolution == 2
    assert key_set(z.coords) == key_set(coarsen_coords(x.coords, 8, 2)[0])
    assert z.stride == 8 and z.batch_size == 2
    voxel_size, origin = level_geometry(V, ORIGIN, 8)
    assert z.voxel_size == voxel_size and z.origin == pytest.approx(origin)
    kl = posterior.kl()
    assert torch.isfinite(kl) and kl > 0


def test_struct_vae_teacher_forcing_keeps_the_target_structure():
    vae, x = struct_vae(), tile(batch=2)
    decoding = vae.decode(vae.encode(x).latent_dist.mode(), target=x)
    assert key_set(decoding.sample.coords) == key_set(x.coords)
    out = decoding.sample
    assert out.voxel_size == V and out.origin == pytest.approx(ORIGIN) and out.stride == 1
    assert ((out.feats > 0) & (out.feats < 1)).all()  # occupancy probabilities
    assert len(decoding.logits) == len(decoding.targets) == 4
    for level, (logits, targets, cands) in enumerate(zip(decoding.logits, decoding.targets, decoding.candidates)):
        assert logits.shape == targets.shape == (len(cands),)
        factor = 2 ** (3 - level)
        truth = key_set(coarsen_coords(x.coords, factor, 2)[0]) if factor > 1 else key_set(x.coords)
        assert [tuple(c) in truth for c in cands.tolist()] == targets.tolist()
    assert decoding.targets[0].all() and not decoding.targets[-1].all()  # children get pruned


def test_struct_vae_inference_prunes_by_threshold():
    vae, x = struct_vae(), tile()
    z = vae.encode(x).latent_dist.mode()
    decoding = vae.decode(z)
    for level, (logits, keep) in enumerate(zip(decoding.logits, decoding.struct)):
        assert torch.equal(keep, logits > 0)
        if level + 1 < len(decoding.struct):
            assert len(decoding.candidates[level + 1]) == 8 * int(keep.sum())
    assert decoding.sample.num_voxels == int(decoding.struct[-1].sum())
    with torch.no_grad():
        vae.decoder.occupancy_heads[1][1].bias.fill_(-1e4)  # every child at L/4 predicted empty
    pruned = vae.decode(z)
    assert pruned.sample.num_voxels == 0 and len(pruned.candidates[2]) == 0


def test_struct_vae_overfits_one_tile():
    vae, x = struct_vae(), tile()
    optimizer = torch.optim.Adam(vae.parameters(), lr=5e-3)
    losses = []
    for _ in range(15):
        posterior = vae.encode(x).latent_dist
        loss = occupancy_bce(vae.decode(posterior.mode(), target=x)) + 1e-3 * posterior.kl()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]  # 0.29 measured


# -- TexVAE ------------------------------------------------------------------------------------


def test_tex_vae_is_a_tube():
    vae, x = tex_vae(), tile(batch=2, channels=10)
    posterior = vae.encode(x).latent_dist
    z = posterior.mode()
    assert z.num_channels == 8 and torch.equal(z.coords, x.coords)
    assert torch.isfinite(posterior.kl())
    params = vae.decode(z).sample
    assert params.num_channels == 13 and torch.equal(params.coords, x.coords)
    assert (params.voxel_size, params.origin) == (V, ORIGIN)


def test_to_gaussians_valid_and_at_the_voxels():
    vae, x = tex_vae(), tile(channels=10)
    centres = x.world_positions()
    zero = x.replace(torch.zeros(x.num_voxels, 13))
    g = vae.to_gaussians(zero)
    assert isinstance(g, Gaussians) and len(g) == x.num_voxels
    torch.testing.assert_close(g.means, centres)
    torch.testing.assert_close(g.scales[:, :2], torch.full((x.num_voxels, 2), 0.5 * V))
    assert (g.scales[:, 2] < 0.01 * V).all() and (g.scales[:, 2] > 0).all()
    torch.testing.assert_close(g.opacities, torch.full((x.num_voxels,), 0.5))
    torch.testing.assert_close(g.quats, torch.tensor([1.0, 0.0, 0.0, 0.0]).expand(x.num_voxels, 4))
    wild = torch.randn(x.num_voxels, 13, generator=torch.Generator().manual_seed(0)) * 50
    wild[:, PARAM_LAYOUT["rotation"]] = 0
    wild[:3, PARAM_LAYOUT["rotation"]] = torch.tensor([-1.0, 0.0, 0.0, 0.0])  # a zero quaternion before the fallback
    g = vae.to_gaussians(x.replace(wild))  # Gaussians validates scales >= 0, opacities in [0, 1], quats != 0
    assert ((g.means - centres).abs() <= V + 1e-4).all()
    assert (g.scales[:, :2] <= 2 * V).all() and ((g.colors >= 0) & (g.colors <= 1)).all()
    torch.testing.assert_close(g.quats.norm(dim=1), torch.ones(x.num_voxels))


def test_tex_vae_gradients_flow_through_the_2dgs_rasterizer():
    vae, x = tex_vae(), tile(channels=10)
    g = vae.to_gaussians(vae(x).sample)
    rgb = render_gaussians(g, cameras(), mode="2dgs", backend="torch").rgb
    assert rgb.abs().sum() > 0
    rgb.mean().backward()
    for name in ("encoder_in.weight", "decoder_in.weight", "head.weight"):
        grad = dict(vae.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_tex_vae_overfits_rendered_views():
    vae, x = tex_vae(), tile(channels=10)
    truth = Gaussians.from_points(x.world_positions(), x.feats[:, :3], scale=0.5 * V)
    cams = cameras()
    with torch.no_grad():
        target = render_gaussians(truth, cams, mode="2dgs", backend="torch").rgb
    optimizer = torch.optim.Adam(vae.parameters(), lr=5e-3)
    losses = []
    for _ in range(20):
        g = vae.to_gaussians(vae(x).sample)
        loss = (render_gaussians(g, cams, mode="2dgs", backend="torch").rgb - target).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.75 * losses[0]  # 0.66 measured


# -- both --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["struct", "tex"])
def test_save_load_round_trip(kind, tmp_path):
    vae, x = (struct_vae(), tile()) if kind == "struct" else (tex_vae(), tile(channels=10))
    vae.save_pretrained(tmp_path)
    loaded = type(vae).from_pretrained(tmp_path)
    public = lambda config: json.dumps({k: v for k, v in config.items() if not k.startswith("_")}, sort_keys=True)  # noqa: E731
    assert public(loaded.config) == public(vae.config)
    with torch.no_grad():
        a, b = vae(x).sample, loaded(x).sample
    assert torch.equal(a.coords, b.coords)
    torch.testing.assert_close(a.feats, b.feats)


@pytest.mark.parametrize("kind", ["struct", "tex"])
def test_seeded_determinism(kind):
    make, x = (struct_vae, tile()) if kind == "struct" else (tex_vae, tile(channels=10))
    a, b = make(0), make(0)
    with torch.no_grad():
        za = a.encode(x).latent_dist.sample(torch.Generator().manual_seed(7))
        zb = b.encode(x).latent_dist.sample(torch.Generator().manual_seed(7))
        zc = b.encode(x).latent_dist.sample(torch.Generator().manual_seed(8))
        torch.testing.assert_close(za.feats, zb.feats)
        assert not torch.allclose(za.feats, zc.feats)
        torch.testing.assert_close(a.decode(za).sample.feats, b.decode(zb).sample.feats)


def _bad_inputs():
    good = tile(channels=10)
    outside = SparseTensor(torch.ones(2, 10), torch.tensor([[0, 0, 0, 0], [0, 3, 16, 2]]), voxel_size=V)
    negative = SparseTensor(torch.ones(1, 10), torch.tensor([[0, -1, 0, 0]]), voxel_size=V)
    empty = SparseTensor(torch.ones(0, 10), torch.zeros(0, 4, dtype=torch.int32), voxel_size=V)
    nan = good.replace(torch.full((good.num_voxels, 10), float("nan")))
    return [
        ("struct", "encode", outside, "outside the grid"),
        ("struct", "encode", negative, "outside the grid"),
        ("struct", "encode", empty, "empty"),
        ("struct", "encode", torch.zeros(3, 4), "must be a SparseTensor"),
        ("struct", "decode", tile(channels=8), "outside the grid"),  # an L^3 tensor is not a latent
        ("struct", "decode", SparseTensor(torch.ones(1, 7), torch.zeros(1, 4, dtype=torch.int32)), "8 feature channels"),
        ("tex", "encode", good.replace(torch.ones(good.num_voxels, 9)), "10 feature channels"),
        ("tex", "encode", outside, "outside the grid"),
        ("tex", "encode", empty, "empty"),
        ("tex", "encode", nan, "NaN"),
        ("tex", "decode", good, "8 feature channels"),
        ("tex", "to_gaussians", good, "13 channels"),
        ("tex", "to_gaussians", tile(batch=2).replace(torch.zeros(tile(batch=2).num_voxels, 13)), "one batch item"),
    ]


@pytest.mark.parametrize(("kind", "method", "arg", "message"), _bad_inputs())
def test_bad_input_is_refused(kind, method, arg, message):
    vae = struct_vae() if kind == "struct" else tex_vae()
    with pytest.raises(ValueError, match=message):
        getattr(vae, method)(arg)


def test_struct_vae_refuses_a_target_outside_the_tile():
    vae, x = struct_vae(), tile()
    z = vae.encode(x).latent_dist.mode()
    bad = SparseTensor(torch.ones(1, 1), torch.tensor([[0, 0, 0, 16]]), voxel_size=V)
    with pytest.raises(ValueError, match="target has voxel coordinates"):
        vae.decode(z, target=bad)


@pytest.mark.parametrize(
    ("cls", "kwargs", "message"),
    [
        (EarthCrafterStructVAE, {"resolution": 20}, "multiple of 8"),
        (EarthCrafterStructVAE, {"encoder_channels": (16, 32)}, "4 widths"),
        (EarthCrafterStructVAE, {"attention_head_dim": 24}, "multiple of attention_head_dim"),
        (EarthCrafterTexVAE, {"init_scale": 3.0}, "init_scale"),
    ],
)
def test_bad_config_is_refused(cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)
