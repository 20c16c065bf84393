"""sparse.ops: trilinear interpolation, Re-Hash re-gridding, voxelization, dense conversion."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from diffusers_city.sparse import SparseTensor, ops


def block_tensor(low=-3, high=4, voxel_size=0.5, origin=(0.25, -1.0, 2.0), batch=2):
    """All voxels of a cube, features = an affine field of the world position (+ batch offset)."""
    r = torch.arange(low, high)
    xyz = torch.stack(torch.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
    coords = torch.cat([torch.arange(batch).repeat_interleave(len(xyz))[:, None], xyz.repeat(batch, 1)], 1)
    x = SparseTensor(torch.zeros(len(coords), 2, dtype=torch.float64), coords.int(), voxel_size=voxel_size, origin=origin)
    return x.replace(linear_field(x.world_positions(), coords[:, 0]))


def linear_field(p: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.stack([1.5 * p[:, 0] - 2 * p[:, 1] + 0.5 * p[:, 2] + 3 * b, p.sum(1) - b], 1).double()


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_trilinear_exact_on_linear_field(seed):
    x = block_tensor()
    g = torch.Generator().manual_seed(seed)
    lo = torch.tensor(x.origin, dtype=torch.float64) + (-3) * x.voxel_size
    points = lo + torch.rand(50, 3, generator=g, dtype=torch.float64) * (6 * x.voxel_size)  # inside the hull
    b = torch.randint(0, 2, (50,), generator=g)
    for missing in ("renormalize", "zero"):
        torch.testing.assert_close(ops.trilinear_interpolate(x, points, b, missing=missing), linear_field(points, b))


def test_trilinear_missing_corners():
    coords = torch.tensor([[0, 0, 0, 0], [0, 1, 0, 0]], dtype=torch.int32)
    x = SparseTensor(torch.tensor([[2.0], [4.0]], dtype=torch.float64), coords)
    p = torch.tensor([[0.25, 0.5, 0.0], [0.5, 0.0, 0.0], [5.0, 5.0, 5.0]], dtype=torch.float64)
    renorm = ops.trilinear_interpolate(x, p)
    # weights 0.5/0.5 in y are halved by the missing y=1 corners and renormalized back
    torch.testing.assert_close(renorm[:, 0], torch.tensor([2.5, 3.0, 0.0], dtype=torch.float64))
    zero = ops.trilinear_interpolate(x, p, missing="zero")
    torch.testing.assert_close(zero[:, 0], torch.tensor([1.25, 3.0, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="missing"):
        ops.trilinear_interpolate(x, p, missing="nearest")


def test_trilinear_gradients_and_validation():
    x = block_tensor()
    feats = x.feats.clone().requires_grad_()
    points = torch.tensor([[0.1, -0.7, 2.2]], dtype=torch.float64, requires_grad=True)
    out = ops.trilinear_interpolate(x.replace(feats), points, torch.tensor([1]))
    out.sum().backward()
    torch.testing.assert_close(points.grad[0], torch.tensor([1.5 + 1, -2 + 1, 0.5 + 1], dtype=torch.float64))
    assert feats.grad.sum() == pytest.approx(2.0)
    with pytest.raises(ValueError, match=r"\[M, 3\]"):
        ops.trilinear_interpolate(x, torch.zeros(4, 2))
    with pytest.raises(ValueError, match="batch_idx"):
        ops.trilinear_interpolate(x, torch.zeros(4, 3), torch.tensor([0, 1, 2, 0]))
    assert ops.trilinear_interpolate(x, torch.zeros(0, 3)).shape == (0, 2)
    empty = x.derive(x.feats[:0], x.coords[:0])
    assert torch.equal(ops.trilinear_interpolate(empty, torch.zeros(3, 3)), torch.zeros(3, 2, dtype=torch.float64))


def test_regrid_rehash_levels():
    v0 = 0.5
    x = block_tensor(low=0, high=6, voxel_size=v0, origin=(v0 / 2,) * 3, batch=1)
    level = x
    for n in (1, 2):
        vn = 2**n * v0
        level = ops.regrid(level, vn, (vn / 2,) * 3)  # Sat2City Re-Hash: v_n = 2^n v_0, o_n = v_n / 2
        assert level.voxel_size == vn and level.origin == (vn / 2,) * 3 and level.stride == 2**n
        # every fine voxel centre lies in an active coarse cell
        idx = torch.floor((x.world_positions() - vn / 2) / vn + 0.5).long()
        active = set(map(tuple, level.coords[:, 1:].tolist()))
        assert set(map(tuple, idx.tolist())) == active
        # features are the (linear) field at the new centres wherever the 8 corners exist
        inside = ((level.world_positions() > v0 / 2) & (level.world_positions() < 5.5 * v0)).all(1)
        expected = linear_field(level.world_positions(), level.coords[:, 0].long())
        torch.testing.assert_close(level.feats[inside], expected[inside])
    with pytest.raises(ValueError, match="coarser"):
        ops.regrid(x, v0 / 2, (0.0, 0.0, 0.0))


def test_voxelize_mean():
    points = torch.tensor([[0.1, 0.2, 0.0], [0.4, -0.4, 0.3], [1.2, 0.0, 0.0], [-3.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    feats = torch.tensor([[1.0], [3.0], [5.0], [7.0], [11.0]])
    b = torch.tensor([0, 0, 0, 0, 1])
    x = ops.voxelize(points, feats, b, voxel_size=1.0, origin=(0.0, 0.0, 0.0))
    got = dict(zip(map(tuple, x.coords.tolist()), x.feats[:, 0].tolist()))
    assert got == {(0, 0, 0, 0): 2.0, (0, 1, 0, 0): 5.0, (0, -3, 0, 0): 7.0, (1, 0, 0, 0): 11.0}
    assert x.batch_size == 2 and x.voxel_size == 1.0
    # a point exactly at a voxel centre lands in that voxel (origin = centre of voxel 0)
    y = ops.voxelize(torch.tensor([[2.0, 2.0, 2.0]]), torch.ones(1, 1), voxel_size=0.5, origin=(1.0, 1.0, 1.0))
    assert y.coords.tolist() == [[0, 2, 2, 2]]
    torch.testing.assert_close(y.world_positions(), torch.tensor([[2.0, 2.0, 2.0]]))
    empty = ops.voxelize(torch.zeros(0, 3), torch.zeros(0, 4))
    assert empty.num_voxels == 0 and empty.num_channels == 4
    with pytest.raises(ValueError, match="feats must have shape"):
        ops.voxelize(points, feats[:2], b)
    with pytest.raises(ValueError, match="voxel_size"):
        ops.voxelize(points, feats, b, voxel_size=0.0)


def test_dense_conversion_aliases():
    x = block_tensor(low=-1, high=1, batch=1)
    dense, offset = ops.to_dense(x)
    assert dense.shape == (1, 2, 2, 2, 2) and offset.tolist() == [-1, -1, -1]
    back = ops.from_dense(dense, offset, mask=torch.ones(1, 2, 2, 2, dtype=torch.bool))
    key = lambda t: sorted(zip(map(tuple, t.coords.tolist()), map(tuple, t.feats.tolist())))  # noqa: E731
    assert key(back) == key(x)
