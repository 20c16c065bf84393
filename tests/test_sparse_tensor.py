"""SparseTensor: validation, metadata, replace/cache, dense round trip, per-batch iteration and cat."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from diffusers_city.sparse import SparseTensor


def make(n=20, batch=2, seed=0, low=-3, span=6, channels=3):
    g = torch.Generator().manual_seed(seed)
    coords = torch.cat([torch.randint(0, batch, (n, 1), generator=g), torch.randint(low, low + span, (n, 3), generator=g)], 1)
    coords = torch.unique(coords, dim=0)
    feats = torch.randn(coords.shape[0], channels, generator=g)
    return SparseTensor(feats, coords.int(), batch_size=batch)


@pytest.mark.parametrize(
    "feats,coords,kwargs,message",
    [
        (torch.zeros(2, 3, dtype=torch.int64), torch.zeros(2, 4, dtype=torch.int32), {}, "floating-point"),
        (torch.zeros(2), torch.zeros(2, 4, dtype=torch.int32), {}, r"\[N, C\]"),
        (torch.zeros(2, 0), torch.zeros(2, 4, dtype=torch.int32), {}, "at least one channel"),
        (torch.zeros(2, 3), torch.zeros(2, 4), {}, "integer tensor"),
        (torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.int32), {}, r"\[N, 4\]"),
        (torch.zeros(3, 3), torch.tensor([[0, 0, 0, 0], [0, 1, 0, 0]], dtype=torch.int32), {}, "3 rows"),
        (torch.zeros(2, 3), torch.tensor([[0, 1, 2, 3], [0, 1, 2, 3]], dtype=torch.int32), {}, "duplicate"),
        (torch.zeros(2, 3), torch.tensor([[-1, 1, 2, 3], [0, 1, 2, 3]], dtype=torch.int32), {}, "batch indices"),
        (torch.zeros(2, 3), torch.tensor([[0, 1, 2, 3], [2, 1, 2, 3]], dtype=torch.int32), {"batch_size": 2}, "out of range"),
        (torch.zeros(1, 3), torch.tensor([[0, 2**31, 0, 0]]), {}, "int32"),
        (torch.zeros(1, 3), torch.zeros(1, 4, dtype=torch.int32), {"voxel_size": 0.0}, "voxel_size"),
        (torch.zeros(1, 3), torch.zeros(1, 4, dtype=torch.int32), {"stride": 0}, "stride"),
        (torch.zeros(1, 3), torch.zeros(1, 4, dtype=torch.int32), {"origin": (0.0, 1.0)}, "origin"),
    ],
)
def test_bad_input_raises(feats, coords, kwargs, message):
    with pytest.raises(ValueError, match=message):
        SparseTensor(feats, coords, **kwargs)


def test_accepts_int64_negative_and_same_voxel_in_two_items():
    coords = torch.tensor([[0, -5, 7, -100000], [1, -5, 7, -100000]])
    x = SparseTensor(torch.ones(2, 1), coords, voxel_size=0.5, origin=(1.0, 2.0, 3.0))
    assert x.coords.dtype == torch.int32 and x.batch_size == 2 and x.num_channels == 1
    expected = torch.tensor([[1 - 2.5, 2 + 3.5, 3 - 50000.0]] * 2)
    torch.testing.assert_close(x.world_positions(), expected)


def test_validation_can_be_skipped():
    dup = torch.zeros(2, 4, dtype=torch.int32)
    x = SparseTensor(torch.zeros(2, 1), dup, validate=False)
    assert x.num_voxels == 2 and x.batch_size == 1


def test_empty_tensor():
    x = SparseTensor(torch.zeros(0, 2), torch.zeros(0, 4, dtype=torch.int64))
    assert x.batch_size == 0 and x.num_voxels == 0
    dense, offset = x.to_dense()
    assert dense.shape == (0, 2, 0, 0, 0) and offset.tolist() == [0, 0, 0]


def test_replace_shares_cache_and_checks_shape():
    x = make()
    x.cache["probe"] = object()
    y = x.replace(x.feats * 2)
    assert y.cache is x.cache and y.coords is x.coords and y.origin == x.origin
    with pytest.raises(ValueError, match="replace needs"):
        x.replace(torch.zeros(x.num_voxels + 1, 3))


def test_dense_round_trip():
    x = make(seed=1)
    dense, offset = x.to_dense()
    assert dense.shape[:2] == (2, 3)
    assert offset.tolist() == x.coords[:, 1:].min(0).values.tolist()
    back = SparseTensor.from_dense(dense, offset)
    key = lambda t: sorted(zip(map(tuple, t.coords.tolist()), map(tuple, t.feats.tolist())))  # noqa: E731
    assert key(back) == key(x)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 1000), low=st.integers(-50, 50), span=st.integers(1, 5), batch=st.integers(1, 3))
def test_dense_round_trip_property(seed, low, span, batch):
    x = make(n=15, batch=batch, seed=seed, low=low, span=span)
    dense, offset = x.to_dense()
    back = SparseTensor.from_dense(dense, offset)
    key = lambda t: sorted(zip(map(tuple, t.coords.tolist()), map(tuple, t.feats.tolist())))  # noqa: E731
    assert key(back) == key(x) and back.batch_size == batch


def test_from_dense_mask_keeps_zero_features():
    dense = torch.zeros(1, 2, 3, 3, 3)
    mask = torch.zeros(1, 3, 3, 3, dtype=torch.bool)
    mask[0, 1, 2, 0] = True
    x = SparseTensor.from_dense(dense, (-1, 0, 4), mask=mask, voxel_size=2.0)
    assert x.coords.tolist() == [[0, 0, 2, 4]] and x.voxel_size == 2.0
    with pytest.raises(ValueError, match="mask"):
        SparseTensor.from_dense(dense, mask=mask[0])


def test_batch_iteration_and_cat():
    x = make(seed=2, batch=3)
    items = list(x)
    assert len(items) == 3 and all(t.batch_size == 1 and (t.coords[:, 0] == 0).all() for t in items)
    assert sum(t.num_voxels for t in items) == x.num_voxels
    for i, item in enumerate(items):
        rows = x.coords[:, 0] == i
        assert torch.equal(item.feats, x.feats[rows]) and torch.equal(item.coords[:, 1:], x.coords[rows, 1:])
    back = SparseTensor.cat(items)
    assert back.batch_size == 3 and torch.equal(back.coords, x.coords[torch.argsort(x.coords[:, 0], stable=True)])
    with pytest.raises(ValueError, match="voxel_size"):
        SparseTensor.cat([items[0], SparseTensor(items[1].feats, items[1].coords, voxel_size=2.0)])
    with pytest.raises(ValueError, match="out of range"):
        x.batch(3)


def test_to_keeps_cache_on_same_device():
    x = make()
    x.cache["probe"] = 1
    y = x.to(torch.float64)
    assert y.dtype == torch.float64 and y.cache is x.cache


def test_huge_extent_is_reported():
    big = torch.tensor([[0, -(2**31), -(2**31), -(2**31)], [0, 2**31 - 1, 2**31 - 1, 2**31 - 1]])
    with pytest.raises(ValueError, match="too large to hash"):
        SparseTensor(torch.zeros(2, 1), big)
    far = torch.tensor([[0, -(2**31), 0, 5], [0, 2**31 - 1, 7, 5]])  # one axis spanning all of int32 is fine
    assert SparseTensor(torch.zeros(2, 1), far).num_voxels == 2
