"""subdivide/prune, per-batch-item norms, activations and the ADM-style SparseResBlock."""

import pytest
import torch
import torch.nn.functional as F

from diffusers_city.sparse import SparseTensor
from diffusers_city.sparse import nn as snn


def make(n=30, batch=2, channels=8, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    coords = torch.cat([torch.randint(0, batch, (n, 1), generator=g), torch.randint(-3, 3, (n, 3), generator=g)], 1)
    coords = torch.unique(coords, dim=0)
    feats = torch.randn(coords.shape[0], channels, generator=g, dtype=dtype) * 3 + 1
    return SparseTensor(feats, coords.int(), voxel_size=0.8, origin=(0.4, -1.0, 2.0), stride=4, batch_size=batch)


def test_subdivide_children_and_metadata():
    x = make()
    y = snn.subdivide(x)
    assert y.num_voxels == 8 * x.num_voxels and y.voxel_size == 0.4 and y.stride == 2
    assert y.origin == pytest.approx((0.2, -1.2, 1.8))
    parents = torch.div(y.coords[:, 1:].long(), 2, rounding_mode="floor")
    torch.testing.assert_close(parents, x.coords[:, 1:].long().repeat_interleave(8, 0), rtol=0, atol=0)
    torch.testing.assert_close(y.feats, x.feats.repeat_interleave(8, 0))
    # children centres sit at the parent centre +- voxel_size / 4
    offset = y.world_positions() - x.world_positions().repeat_interleave(8, 0)
    torch.testing.assert_close(offset.abs(), torch.full_like(offset, 0.2))
    # a strided conv (kernel 2, stride 2) brings the structure and metadata back
    down = snn.SparseConv3d(8, 8).double()(y)
    assert down.voxel_size == x.voxel_size and down.origin == pytest.approx(x.origin) and down.stride == x.stride
    assert sorted(map(tuple, down.coords.tolist())) == sorted(map(tuple, x.coords.tolist()))
    assert SparseTensor(y.feats, y.coords).num_voxels == y.num_voxels  # children are unique


def test_prune():
    x = make()
    mask = x.feats[:, 0] > 1
    y = snn.prune(x, mask)
    assert torch.equal(y.feats, x.feats[mask]) and y.batch_size == x.batch_size and y.origin == x.origin
    assert y.cache is not x.cache
    with pytest.raises(ValueError, match="bool mask"):
        snn.prune(x, mask.float())
    with pytest.raises(ValueError, match="bool mask"):
        snn.prune(x, mask[:-1])


def test_group_norm_per_batch_item():
    x = make()
    norm = snn.SparseGroupNorm(4, 8).double()
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    y = norm(x)
    for i in range(x.batch_size):
        rows = x.coords[:, 0] == i
        ref = F.group_norm(x.feats[rows].t()[None], 4, norm.weight, norm.bias, norm.eps)[0].t()
        torch.testing.assert_close(y.feats[rows], ref)
    with pytest.raises(ValueError, match="divisible"):
        snn.SparseGroupNorm(3, 8)


def test_group_norm_empty_batch_item():
    x = make(batch=1)
    empty = x.derive(x.feats[:0], x.coords[:0])
    x2 = SparseTensor.cat([x, empty])
    assert x2.batch_size == 2
    y = snn.SparseGroupNorm(2, 8).double()(x2)
    assert torch.isfinite(y.feats).all()


def test_layer_norm_activation_linear():
    x = make()
    ln = snn.SparseLayerNorm(8).double()
    torch.testing.assert_close(ln(x).feats, F.layer_norm(x.feats, (8,)))
    torch.testing.assert_close(snn.SparseSiLU()(x).feats, F.silu(x.feats))
    torch.testing.assert_close(snn.SparseReLU()(x).feats, F.relu(x.feats))
    torch.testing.assert_close(snn.SparseGELU()(x).feats, F.gelu(x.feats))
    lin = snn.SparseLinear(8, 3).double()
    assert lin(x).feats.shape == (x.num_voxels, 3)


def test_res_block_identity_at_init_and_embedding():
    x = make()
    block = snn.SparseResBlock(8, 8, emb_channels=5, num_groups=2).double()
    emb = torch.randn(2, 5, dtype=torch.float64)
    torch.testing.assert_close(block(x, emb).feats, x.feats)  # zero-initialised last conv
    with torch.no_grad():
        block.conv2.weight.normal_()
    out1 = block(x, emb)
    emb2 = emb.clone()
    emb2[1] += 1
    out2 = block(x, emb2)
    rows0 = x.coords[:, 0] == 0
    torch.testing.assert_close(out1.feats[rows0], out2.feats[rows0])  # item 0 untouched by item 1's emb
    assert not torch.allclose(out1.feats[~rows0], out2.feats[~rows0])
    with pytest.raises(ValueError, match="emb must have shape"):
        block(x, emb[:1])
    with pytest.raises(ValueError, match="pass emb exactly"):
        block(x)


def test_res_block_channel_change_and_gradients():
    x = make(channels=6)
    block = snn.SparseResBlock(6, 12, num_groups=3).double()
    assert block.skip is not None and block.skip.weight.shape == (12, 1, 1, 1, 6)
    feats = x.feats.clone().requires_grad_()
    out = block(x.replace(feats))
    assert out.num_channels == 12 and torch.equal(out.coords, x.coords)
    out.feats.square().sum().backward()
    assert feats.grad is not None and block.conv1.weight.grad is not None and block.skip.weight.grad.abs().sum() > 0


def test_group_count():
    assert snn.group_count(64) == 32 and snn.group_count(24) == 24 and snn.group_count(48) == 24 and snn.group_count(7) == 7


def test_norm_and_resblock_accept_zero_voxels():
    """A fully pruned structure (0 voxels) passes through norms and residual blocks."""
    x = SparseTensor(torch.zeros(0, 8), torch.zeros(0, 4, dtype=torch.int32), batch_size=2)
    assert snn.SparseGroupNorm(4, 8)(x).feats.shape == (0, 8)
    block = snn.SparseResBlock(8, 16, emb_channels=4, num_groups=4)
    assert block(x, torch.zeros(2, 4)).feats.shape == (0, 16)


def test_strided_conv_output_structure_keeps_its_cache():
    """A U-Net run again on x.replace(...) (each DDIM step) reuses the coarse levels' kernel maps;
    a new structure gets its own."""
    x = make(n=200, channels=4)
    down, subm = snn.SparseConv3d(4, 8).double(), snn.SubMConv3d(8, 8).double()
    first = down(x)
    subm(first)
    maps = {k: v for k, v in first.cache.items() if isinstance(k, tuple) and "subm" in k}
    assert maps
    again = down(x.replace(torch.randn_like(x.feats)))
    assert again.cache is first.cache and all(again.cache[k] is v for k, v in maps.items())
    fresh = SparseTensor(
        again.feats,
        again.coords.clone(),
        voxel_size=again.voxel_size,
        origin=again.origin,
        stride=again.stride,
        batch_size=again.batch_size,
    )
    torch.testing.assert_close(subm(again).feats, subm(fresh).feats)
    other = down(
        SparseTensor(
            x.feats, x.coords.clone(), voxel_size=x.voxel_size, origin=x.origin, stride=x.stride, batch_size=x.batch_size
        )
    )
    assert other.cache is not first.cache
