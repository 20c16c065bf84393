"""Sat2City models: shapes, subdivide/prune structure, Re-Hash levels, inverse sampling, KL placement."""

from __future__ import annotations

import pytest
import torch

from diffusers_city.models.sat2city import (
    HeightFieldEncoder,
    Sat2CityDenseUNet3D,
    Sat2CityDenseVAE,
    Sat2CitySparseUNet3D,
    Sat2CitySparseVAE,
)
from diffusers_city.models.sat2city.conditions import (
    grid_condition,
    height_columns,
    sparse_condition,
    sparse_condition_uses_height,
    struct_condition,
)
from diffusers_city.models.shared.sparse_vae import coarsen_coords, match_coords
from diffusers_city.sparse import SparseTensor
from diffusers_city.sparse.ops import trilinear_interpolate

V = 2.0
GRID = (16, 16, 8)


def toy_city(batch: int = 1) -> SparseTensor:
    """Ground plane + a hollow box building per batch item, normals as features."""
    coords = []
    for b in range(batch):
        for x in range(GRID[0]):
            for y in range(GRID[1]):
                coords.append((b, x, y, 0))
        for z in range(1, 5 + b):
            for x in range(4, 9):
                for y in range(5, 10):
                    if x in (4, 8) or y in (5, 9) or z == 4 + b:
                        coords.append((b, x, y, z))
    c = torch.tensor(coords, dtype=torch.int32)
    normals = torch.nn.functional.normalize(torch.randn(c.shape[0], 3, generator=torch.Generator().manual_seed(1)), dim=1)
    return SparseTensor(normals, c, voxel_size=V, origin=(V / 2,) * 3, batch_size=batch)


def key_set(coords: torch.Tensor) -> set[tuple[int, ...]]:
    return {tuple(r) for r in coords.tolist()}


@pytest.fixture
def dense_vae() -> Sat2CityDenseVAE:
    torch.manual_seed(0)
    return Sat2CityDenseVAE(
        latent_channels=4, encoder_channels=(8, 8, 16), decoder_channels=(16, 8, 8), grid_size=GRID, voxel_size=V
    )


@pytest.fixture
def sparse_vae() -> Sat2CitySparseVAE:
    torch.manual_seed(0)
    return Sat2CitySparseVAE(
        latent_channels=4,
        encoder_channels=(8, 16),
        decoder_channels=(16, 8),
        appearance_decoder_channels=(8, 8),
        appearance_channels=4,
        num_rehash_levels=2,
        color_hidden_channels=16,
        grid_size=GRID,
        voxel_size=V,
    )


def test_dense_vae_densified_latent_and_teacher_forced_structure(dense_vae):
    g = toy_city(batch=2)
    out = dense_vae(g)
    assert out.latent_dist.mean.shape == (2, 4, 4, 4, 2) and out.latent_dist.logvar.shape == out.latent_dist.mean.shape
    dec = out.decoding
    # level 0 is the whole dense latent grid, every later level 8 candidates per kept parent
    assert dec.candidates[0].shape[0] == 2 * 4 * 4 * 2
    for level in range(1, 3):
        assert dec.candidates[level].shape[0] == 8 * int(dec.struct[level - 1].sum())
    for logits, targets, keep in zip(dec.logits, dec.targets, dec.struct):
        assert logits.shape == targets.shape == keep.shape
        assert torch.equal(keep, targets)  # teacher forcing prunes by the ground truth
    assert key_set(dec.sample.coords) == key_set(g.coords)
    assert dec.sample.num_channels == 3 and dec.sample.voxel_size == V and dec.sample.origin == g.origin
    for level, structure in enumerate(dec.structures):
        expected = key_set(coarsen_coords(g.coords, 2 ** (2 - level), 2)[0])
        assert key_set(structure.coords) == expected


def test_decoder_prunes_by_prediction_and_replays_struct(dense_vae):
    latent = torch.randn(1, 4, 4, 4, 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        free = dense_vae.decode(latent)
        for keep, logits in zip(free.struct, free.logits):
            assert torch.equal(keep, logits > 0)
        replay = dense_vae.decoder(
            SparseTensor.from_dense(
                latent, mask=torch.ones(1, 4, 4, 2, dtype=torch.bool), voxel_size=4 * V, origin=(2.5 * V,) * 3, stride=4
            ),
            struct=free.struct,
        )
    assert key_set(replay.sample.coords) == key_set(free.sample.coords)


def test_struct_must_fit_the_candidates(dense_vae):
    latent = torch.randn(1, 4, 4, 4, 2)
    bad = [torch.ones(3, dtype=torch.bool)] * 3
    grid = SparseTensor.from_dense(latent, mask=torch.ones(1, 4, 4, 2, dtype=torch.bool), voxel_size=4 * V, origin=(2.5 * V,) * 3)
    with pytest.raises(ValueError, match="struct level 0"):
        dense_vae.decoder(grid, struct=bad)


def test_rehash_levels_follow_the_paper(sparse_vae):
    enc = sparse_vae.encode(toy_city())
    levels = sparse_vae.rehash(enc.appearance)
    assert len(levels) == 3
    v0 = levels[0].voxel_size
    assert v0 == 2 * V
    for k, level in enumerate(levels):
        assert level.voxel_size == pytest.approx(2**k * v0)
        assert level.origin == pytest.approx((level.voxel_size / 2,) * 3)  # o_n = v_n / 2
    assert levels[0].num_voxels > levels[1].num_voxels > levels[2].num_voxels
    expected = trilinear_interpolate(levels[0], levels[1].world_positions(), levels[1].coords[:, 0].long())
    assert torch.allclose(levels[1].feats, expected)  # Eq. 1: X_Cn = Tri(G_Cn, X_Cn-1)


def test_inverse_sampling_colours_points_and_trains_appearance(sparse_vae):
    g = toy_city()
    points = g.world_positions() + 0.3
    out = sparse_vae(g, points=points, batch_idx=torch.zeros(points.shape[0], dtype=torch.long))
    assert out.colors.shape == (points.shape[0], 3)
    assert bool(((out.colors > 0) & (out.colors < 1)).all())
    out.colors.sum().backward()
    assert sparse_vae.appearance_head.weight.grad.abs().sum() > 0
    assert sparse_vae.color_mlp[0].weight.grad.abs().sum() > 0
    # colours reach the geometry only through the shared encoder trunk, not the X_S head
    assert sparse_vae.geometry_head.weight.grad is None or sparse_vae.geometry_head.weight.grad.abs().sum() == 0


def test_appearance_latent_has_no_posterior_and_starts_as_copy(sparse_vae):
    enc = sparse_vae.encode(toy_city())
    assert not hasattr(enc, "appearance_logvar")
    posterior = enc.latent_dist
    assert posterior.mean.num_channels == posterior.logvar.num_channels == enc.appearance.num_channels == 4
    sparse_vae.init_appearance_from_geometry()
    enc = sparse_vae.encode(toy_city())
    assert torch.allclose(enc.appearance.feats, enc.latent_dist.mean.feats)


def test_geometry_decoder_records_struct_for_appearance(sparse_vae):
    g = toy_city()
    with torch.no_grad():
        enc = sparse_vae.encode(g)
        geometry = sparse_vae.decode(enc.latent_dist.mode())
        features = sparse_vae.decode_appearance(sparse_vae.rehash(enc.appearance), geometry)
    assert key_set(features.coords) == key_set(geometry.sample.coords)
    assert features.num_channels == 3 * 4
    cond = struct_condition(geometry, enc.appearance)
    assert cond.shape == (enc.appearance.num_voxels, len(geometry.struct) + 3)
    assert torch.equal(cond[:, 0], geometry.struct[0].float())


def test_grid_condition_pools_normals_and_occupancy():
    g = toy_city()
    coords, cond = grid_condition(g, 2)
    assert key_set(coords) == key_set(coarsen_coords(g.coords, 2, 1)[0])
    ground = match_coords(torch.tensor([[0, 0, 0, 0]]), coords, 1)
    assert cond[ground[0], 3] == pytest.approx(4 / 8)  # 2x2 ground voxels of 8 in the cell


def test_height_columns_are_column_tops_relative_to_each_latent_voxel():
    # Fine voxels of V = 2 m, latent voxels of factor 2 (4 m): item 0 has a 6 m roof over fine
    # column (1, 0) and the ground (0 m) elsewhere; item 1 holds a single 1 m point.
    points = torch.tensor([[1.0, 1.0, 0.0], [3.0, 1.0, 6.0], [3.5, 1.5, 5.0], [1.0, 3.0, 0.0], [1.0, 1.0, 1.0]])
    batch = torch.tensor([0, 0, 0, 0, 1])
    coords = torch.tensor([[0, 0, 0, 0], [0, 0, 0, 1], [1, 0, 0, 0]], dtype=torch.int32)
    cols = height_columns(points, batch, coords, V, 2)  # columns in (x, y) order (0,0) (0,1) (1,0) (1,1)
    assert torch.allclose(cols[0], torch.tensor([0.0, 0.0, 1.5, -1.0]))  # 6 m over a 0-4 m voxel: 1.5 heights
    assert torch.allclose(cols[1], torch.tensor([-1.0, -1.0, 0.5, -1.0]))  # ground below the 4-8 m voxel: clamped
    assert torch.allclose(cols[2], torch.tensor([0.25, -1.0, -1.0, -1.0]))  # item 1 sees only its own point
    assert height_columns(points, batch, coords[:0], V, 2).shape == (0, 4)


def test_sparse_condition_appends_height_columns_when_asked():
    g = toy_city()
    coords, grid_only = sparse_condition(g, 2)
    top = g.world_positions()[:, :3] + torch.tensor([0.0, 0.0, V / 2])
    coords_h, with_height = sparse_condition(g, 2, (top, torch.zeros(top.shape[0], dtype=torch.long)))
    assert torch.equal(coords, coords_h) and torch.equal(with_height[:, :4], grid_only)
    assert with_height.shape == (coords.shape[0], 4 + 4) and (with_height[:, 4:] > -1).any()
    assert not sparse_condition_uses_height(4, 2) and sparse_condition_uses_height(8, 2)
    with pytest.raises(ValueError, match="must be 4 .* or 8"):
        sparse_condition_uses_height(6, 2)


def test_height_field_encoder_max_pools_points_per_voxel():
    torch.manual_seed(0)
    enc = HeightFieldEncoder(point_channels=8, encoder_channels=(8, 8, 16), condition_channels=4, voxel_size=V, max_height_m=16.0)
    points = torch.tensor([[1.0, 1.0, 0.5], [1.5, 1.2, 0.9], [9.0, 9.0, 5.0]])
    x = enc.voxelize_points(points, torch.zeros(3, dtype=torch.long), 1)
    assert x.num_voxels == 2
    h = enc.point_blocks(enc.point_in(torch.tensor([[-0.0, -0.0, 0.25 - 0.5, 0.5 / 16], [0.25, 0.1, 0.45 - 0.5, 0.9 / 16]])))
    row = match_coords(torch.tensor([[0, 0, 0, 0]]), x.coords, 1)[0]
    assert torch.allclose(x.feats[row], h.max(0).values, atol=1e-5)
    cond = enc(torch.rand(500, 3) * torch.tensor([32.0, 32.0, 16.0]), torch.zeros(500, dtype=torch.long), (4, 4, 2), 1)
    assert cond.shape == (1, 4, 4, 4, 2)


def test_dense_unet_anisotropic_grid_and_zero_init():
    torch.manual_seed(0)
    unet = Sat2CityDenseUNet3D(
        in_channels=4, condition_channels=3, block_channels=(16, 32, 32), attention_levels=(2,), norm_num_groups=8
    )
    x, c = torch.randn(2, 4, 8, 8, 2), torch.randn(2, 3, 8, 8, 2)
    out = unet(x, torch.tensor([3, 700]), c).sample
    assert out.shape == x.shape and torch.count_nonzero(out) == 0  # zero-initialised output conv
    torch.nn.init.normal_(unet.conv_out.weight)
    a = unet(x, 10, c).sample
    b = unet(x, 10, torch.zeros_like(c)).sample
    assert not torch.allclose(a, b)  # the condition is used
    with pytest.raises(ValueError, match="condition grid"):
        unet(x, 10, c[:, :, :4])


def test_sparse_unet_shapes_and_condition():
    torch.manual_seed(0)
    g = toy_city(batch=2)
    unet = Sat2CitySparseUNet3D(
        in_channels=3, condition_channels=2, block_channels=(16, 32), attention_levels=(1,), attention_window=4
    )
    torch.nn.init.normal_(unet.conv_out.weight)
    cond = torch.randn(g.num_voxels, 2)
    out = unet(g, torch.tensor([5, 900]), cond).sample
    assert out.num_voxels == g.num_voxels and out.num_channels == 3 and torch.equal(out.coords, g.coords)
    assert not torch.allclose(out.feats, unet(g, torch.tensor([5, 900]), torch.zeros_like(cond)).sample.feats)
    with pytest.raises(ValueError, match="condition must have shape"):
        unet(g, 5, cond[:, :1])
