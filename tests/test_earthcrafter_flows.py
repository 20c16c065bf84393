"""EarthCrafter's condition network and flow models (tiny sizes): shapes, zero-initialised output,
the condition reaching the output through cross-attention and the column condition, mode "none",
bad input, save / load."""

from __future__ import annotations

import pytest
import torch

from diffusers_city.models.earthcrafter import (
    EarthCrafterConditionEncoder,
    EarthCrafterOccupancyTransformer,
    EarthCrafterStructFlow,
    EarthCrafterTexFlow,
)
from diffusers_city.models.earthcrafter.layers import ColumnCondition
from diffusers_city.sparse import SparseTensor

L, G, D = 16, 2, 32
ENCODER = dict(resolution=L, image_size=2 * L, patch_size=4, hidden_dim=D, num_layers=1, num_heads=2, num_null_tokens=4)
OCCUPANCY = dict(grid_size=G, hidden_dim=D, num_layers=2, num_heads=2, context_dim=D)
STRUCT = dict(in_channels=8, grid_size=G, block_channels=(16, 32), window_size=2, num_heads=2, context_dim=D)
TEX = dict(in_channels=8, resolution=L, block_channels=(16, 16, 32, 32), window_size=4, num_heads=2, context_dim=D)


def _seeded(cls, config, seed=0):
    torch.manual_seed(seed)
    return cls(**config).eval()


def _randomized(model, seed=1):
    """``model`` with every parameter drawn at random, so zero-initialised layers pass signal."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return model


def _semantic(seed=0, batch=1):
    return torch.randint(0, 8, (batch, L, L), generator=torch.Generator().manual_seed(seed))


def _cells(batch=1, grid=G, seed=0):
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for b in range(batch):
        occupied = torch.nonzero(torch.rand(grid, grid, grid, generator=gen) < 0.6)
        occupied = occupied if len(occupied) else torch.zeros(1, 3, dtype=torch.long)
        rows.append(torch.cat([torch.full((len(occupied), 1), b), occupied], 1))
    return torch.cat(rows).int()


def _sparse(coords, channels, seed=0):
    feats = torch.randn(len(coords), channels, generator=torch.Generator().manual_seed(seed))
    return SparseTensor(feats, coords, batch_size=int(coords[:, 0].max()) + 1)


def _surface(batch=1):
    """A ground plane and a block of walls of an L^3 tile."""
    x, y = torch.meshgrid(torch.arange(L), torch.arange(L), indexing="ij")
    ground = torch.stack([x.flatten(), y.flatten(), torch.zeros(L * L, dtype=torch.long)], 1)
    wall = torch.stack([torch.full((6,), 5), torch.full((6,), 5), torch.arange(1, 7)], 1)
    xyz = torch.cat([ground, wall])
    return torch.cat([torch.cat([torch.full((len(xyz), 1), b), xyz], 1) for b in range(batch)]).int()


def _flows():
    return {
        "occupancy": (EarthCrafterOccupancyTransformer, OCCUPANCY, lambda b: torch.randn(b, 1, G, G, G)),
        "struct": (EarthCrafterStructFlow, STRUCT, lambda b: _sparse(_cells(b), 8)),
        "tex": (EarthCrafterTexFlow, TEX, lambda b: _sparse(_surface(b), 8)),
    }


def _feats(out):
    return out.feats if isinstance(out, SparseTensor) else out


@pytest.mark.parametrize("mode", ["semantic", "image", "none"])
def test_condition_encoder_modes(mode):
    enc = _seeded(EarthCrafterConditionEncoder, ENCODER)
    args = {"semantic": dict(semantic_map=_semantic(batch=2)), "image": dict(image=torch.rand(2, 3, 2 * L, 2 * L))}
    with torch.no_grad():
        tokens, lengths, condition_map = enc(**args.get(mode, {}), batch_size=2)
    expected = 4 if mode == "none" else (L // 4) ** 2
    assert tokens.shape == (2, expected, D) and lengths.tolist() == [expected, expected]
    assert torch.isfinite(tokens).all()
    g = L // 4
    assert condition_map.shape == (2, D, g, g)
    if mode == "none":
        assert torch.all(condition_map == 0), "mode 'none' has no map"
    else:  # token (i, j) of the row-major patch grid is the map's pixel [i, j] (row = y)
        torch.testing.assert_close(condition_map.permute(0, 2, 3, 1).reshape(2, g * g, D), tokens)


def test_condition_encoder_lifts_pixels_to_their_columns():
    enc = _seeded(EarthCrafterConditionEncoder, ENCODER)
    pos = enc.token_positions()
    # token (i, j) of the 4x4 grid covers rows 4i..4i+3 (y) and columns 4j..4j+3 (x), at the dummy height
    assert pos[1].tolist() == [6.0, 2.0, 0.0] and pos[4].tolist() == [2.0, 6.0, 0.0]
    sem = _semantic()
    changed = sem.clone()
    changed[0, 0:4, 4:8] = (changed[0, 0:4, 4:8] + 1) % 8  # the pixels of token (0, 1)
    with torch.no_grad():
        a = _randomized(enc)(sem).tokens
        b = enc(changed).tokens
    assert not torch.allclose(a, b)


def test_condition_encoder_drop_gives_null_tokens():
    enc = _seeded(EarthCrafterConditionEncoder, ENCODER)
    with torch.no_grad():
        tokens, lengths, condition_map = enc(_semantic(batch=2), drop=torch.tensor([False, True]))
        null = enc(batch_size=1).tokens
    assert lengths.tolist() == [16, 4]
    assert torch.allclose(tokens[1, :4], null[0], atol=1e-6) and torch.all(tokens[1, 4:] == 0)
    assert torch.all(condition_map[1] == 0) and condition_map[0].abs().sum() > 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(semantic_map=torch.full((1, L, L), 8)), "class ids outside"),
        (dict(semantic_map=torch.zeros(L, L, dtype=torch.long)), r"\[B, 16, 16\]"),
        (dict(semantic_map=torch.zeros(1, L, L)), "integer class ids"),
        (dict(image=torch.rand(1, 3, L, L)), r"\[B, 3, 32, 32\]"),
        (dict(image=torch.rand(1, 4, 2 * L, 2 * L)), r"\[B, 3, 32, 32\]"),
        (dict(image=torch.full((1, 3, 2 * L, 2 * L), float("nan"))), "finite"),
        (dict(semantic_map=_semantic(), image=torch.rand(1, 3, 2 * L, 2 * L)), "not both"),
        (dict(), "batch_size"),
    ],
)
def test_condition_encoder_refuses_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _seeded(EarthCrafterConditionEncoder, ENCODER)(**kwargs)


def test_condition_encoder_accepts_both_when_configured():
    enc = _seeded(EarthCrafterConditionEncoder, {**ENCODER, "accepts_both": True})
    with torch.no_grad():
        tokens, lengths, condition_map = enc(_semantic(), torch.rand(1, 3, 2 * L, 2 * L))
    assert tokens.shape == (1, 32, D) and lengths.tolist() == [32]
    semantic_part, image_part = tokens[0].split(16)
    torch.testing.assert_close(condition_map[0].flatten(1).T, semantic_part + image_part)


def test_column_condition_reads_each_voxels_own_column():
    torch.manual_seed(0)
    column = ColumnCondition(D, 8, resolution=2)  # a 4 x 4 map pooled onto 2 x 2 columns
    condition_map = torch.randn(1, D, 4, 4)
    coords = torch.tensor([[0, 0, 0, 0], [0, 1, 0, 1], [0, 0, 1, 1]], dtype=torch.int32)  # (b, x, y, z)
    with torch.no_grad():
        feats = column(condition_map, coords, 1, "test")
        changed = condition_map.clone()
        changed[0, :, 0:2, 2:4] += 1.0  # rows y 0..1, columns x 2..3: the column (x=1, y=0)
        moved = column(changed, coords, 1, "test")
        pooled = condition_map[0, :, 2:4, 0:2].mean((1, 2))  # column (x=0, y=1)
        torch.testing.assert_close(feats[2], column.proj(pooled))
    assert torch.equal(moved[[0, 2]], feats[[0, 2]]) and not torch.allclose(moved[1], feats[1])
    with pytest.raises(ValueError, match=r"condition_map must be \[1, 32, g, g\]"):
        column(torch.randn(1, D + 1, 4, 4), coords, 1, "test")


@pytest.mark.parametrize("name", ["occupancy", "struct", "tex"])
def test_flow_column_condition_is_optional_and_required_when_built(name):
    cls, config, make = _flows()[name]
    enc = _randomized(_seeded(EarthCrafterConditionEncoder, ENCODER), seed=2)
    sample = make(1)
    with torch.no_grad():
        tokens, lengths, condition_map = enc(_semantic(0))
        plain = _randomized(_seeded(cls, {**config, "column_condition": False}))
        a = _feats(plain(sample, 500.0, tokens, lengths).sample)
        torch.testing.assert_close(a, _feats(plain(sample, 500.0, tokens, lengths, condition_map * 3).sample))
        with_map = _randomized(_seeded(cls, config))
        b = _feats(with_map(sample, 500.0, tokens, lengths, condition_map).sample)
        assert not torch.allclose(b, _feats(with_map(sample, 500.0, tokens, lengths, condition_map * 3).sample))
    with pytest.raises(ValueError, match="column_condition: pass the condition's condition_map"):
        with_map(sample, 500.0, tokens, lengths)


@pytest.mark.parametrize("name", ["occupancy", "struct", "tex"])
def test_flow_shapes_and_zero_initial_velocity(name):
    cls, config, make = _flows()[name]
    model = _seeded(cls, config)
    enc = _seeded(EarthCrafterConditionEncoder, ENCODER)
    sample = make(2)
    with torch.no_grad():
        out = model(sample, torch.tensor([100.0, 900.0]), *enc(_semantic(batch=2))).sample
    if isinstance(sample, SparseTensor):
        assert torch.equal(out.coords, sample.coords) and out.feats.shape == sample.feats.shape
    else:
        assert out.shape == sample.shape
    assert torch.all(_feats(out) == 0), "a fresh flow predicts zero velocity (zero-initialised output layer)"


@pytest.mark.parametrize("name", ["occupancy", "struct", "tex"])
def test_flow_output_depends_on_condition_and_timestep(name):
    cls, config, make = _flows()[name]
    model = _randomized(_seeded(cls, config))
    enc = _randomized(_seeded(EarthCrafterConditionEncoder, ENCODER), seed=2)
    sample = make(1)
    with torch.no_grad():
        sem, other = enc(_semantic(0)), enc(_semantic(5))
        none = enc(batch_size=1)
        run = lambda cond, t=500.0: _feats(model(sample, t, *cond).sample)  # noqa: E731
        base = run(sem)
        assert torch.isfinite(base).all() and base.abs().max() > 0
        assert not torch.allclose(base, run(other)), "changing the semantic map changes the velocity"
        assert not torch.allclose(base, run(none)), "mode 'none' differs from the semantic condition"
        assert not torch.allclose(base, run(sem, 100.0)), "the timestep changes the velocity"
        torch.testing.assert_close(base, run(sem))


@pytest.mark.parametrize("name", ["occupancy", "struct", "tex"])
def test_flow_batch_items_see_their_own_condition(name):
    cls, config, make = _flows()[name]
    model = _randomized(_seeded(cls, config))
    enc = _randomized(_seeded(EarthCrafterConditionEncoder, ENCODER), seed=2)
    sample = make(2)
    with torch.no_grad():
        cond = enc(_semantic(0), batch_size=1)
        null = enc(batch_size=1)
        width = cond.tokens.shape[1]
        pad = torch.nn.functional.pad(null.tokens, (0, 0, 0, width - null.tokens.shape[1]))
        maps = torch.cat([cond.condition_map, null.condition_map])
        both = model(sample, 500.0, torch.cat([cond.tokens, pad]), torch.cat([cond.lengths, null.lengths]), maps).sample
        if isinstance(sample, SparseTensor):
            first = model(sample.batch(0), 500.0, *cond).sample.feats
            second = model(sample.batch(1), 500.0, *null).sample.feats
            torch.testing.assert_close(both.feats, torch.cat([first, second]), atol=1e-4, rtol=1e-4)
        else:
            torch.testing.assert_close(both[:1], model(sample[:1], 500.0, *cond).sample, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(both[1:], model(sample[1:], 500.0, *null).sample, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["occupancy", "struct", "tex"])
def test_flow_refuses_mismatched_condition(name):
    cls, config, make = _flows()[name]
    model = _seeded(cls, config)
    sample = make(1)
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        model(sample, 500.0, torch.zeros(1, 4, D + 1), torch.tensor([4]))
    with pytest.raises(ValueError, match="encoder_lengths"):
        model(sample, 500.0, torch.zeros(1, 4, D), torch.tensor([5]))


@pytest.mark.parametrize("name", ["occupancy", "struct", "tex", "encoder"])
def test_save_load_round_trip(name, tmp_path):
    if name == "encoder":
        cls, config = EarthCrafterConditionEncoder, ENCODER
    else:
        cls, config, make = _flows()[name]
    model = _randomized(_seeded(cls, config))
    model.save_pretrained(tmp_path)
    loaded = cls.from_pretrained(tmp_path).eval()
    public = lambda c: {k: list(v) if isinstance(v, tuple) else v for k, v in c.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.config) == public(model.config)
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    enc = _seeded(EarthCrafterConditionEncoder, ENCODER)
    with torch.no_grad():
        if name == "encoder":
            a, b = model(_semantic()).tokens, loaded(_semantic()).tokens
        else:
            sample, cond = make(1), enc(_semantic())
            a, b = (_feats(m(sample, 300.0, *cond).sample) for m in (model, loaded))
    torch.testing.assert_close(a, b)
