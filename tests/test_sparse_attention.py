import math
from collections import defaultdict

import pytest
import torch

from diffusers_city.sparse.attention import (
    SerializedAttention,
    SparseTransformerBlock,
    SparseWindowAttention,
    grouped_attention,
    serialized_attention,
    serialized_groups,
    window_attention,
    window_groups,
)
from diffusers_city.sparse.serialize import serialize
from diffusers_city.sparse.tensor import SparseTensor

HEADS, DIM = 2, 4


def _qkv(n: int, seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, HEADS, DIM, generator=g, dtype=dtype) for _ in range(3)]


def _naive(q, k, v, groups: list[list[int]]) -> torch.Tensor:
    """Explicit loop over groups, float64 softmax attention."""
    out = torch.full(v.shape, float("nan"), dtype=torch.float64)
    for idx in groups:
        i = torch.tensor(idx)
        qi, ki, vi = (t[i].double().transpose(0, 1) for t in (q, k, v))
        w = torch.softmax(qi @ ki.transpose(1, 2) / math.sqrt(q.shape[-1]), dim=-1)
        out[i] = (w @ vi).transpose(0, 1)
    return out


def _window_reference_groups(coords: torch.Tensor, size, shift) -> list[list[int]]:
    groups = defaultdict(list)
    for i, (b, *xyz) in enumerate(coords.tolist()):
        groups[(b, *((c + s) // w for c, s, w in zip(xyz, shift, size)))].append(i)
    return list(groups.values())


def _serialized_reference_groups(keys, batch_idx, patch_size) -> list[list[int]]:
    items = defaultdict(list)
    for i, b in enumerate(batch_idx.tolist()):
        items[b].append(i)
    groups = []
    for members in items.values():
        members = sorted(members, key=lambda i: keys[i].item())  # Python's sort is stable
        groups += [members[s : s + patch_size] for s in range(0, len(members), patch_size)]
    return groups


def _scene(seed: int = 0) -> torch.Tensor:
    """Two populated batch items (0 and 2; item 1 empty) with negative coordinates: a sparse
    block (windows of many voxels) and scattered voxels (windows of one voxel)."""
    g = torch.Generator().manual_seed(seed)
    r = torch.arange(-4, 4)
    block = torch.stack(torch.meshgrid(r, r, torch.arange(0, 2), indexing="ij"), -1).reshape(-1, 3)[1::7]
    scattered = torch.randint(-30, 30, (40, 3), generator=g)
    item0 = torch.cat([torch.zeros(len(block), 1, dtype=torch.long), block], 1)
    item2 = torch.cat([torch.full((40, 1), 2), scattered], 1)
    coords = torch.cat([item0, item2])
    return coords[torch.randperm(len(coords), generator=g)].int()


@pytest.mark.parametrize("window_size, shift", [(4, 0), (4, 2), ((4, 2, 3), (1, 0, 2)), (1, 0), (64, 0)], ids=str)
def test_window_attention_matches_naive(window_size, shift):
    coords = _scene()
    q, k, v = _qkv(len(coords))
    size = (window_size,) * 3 if isinstance(window_size, int) else window_size
    offset = (shift,) * 3 if isinstance(shift, int) else shift
    out = window_attention(q, k, v, coords, window_size, shift)
    expected = _naive(q, k, v, _window_reference_groups(coords, size, offset))
    torch.testing.assert_close(out, expected)


def test_window_plan_uses_masked_and_unmasked_buckets():
    plan = window_groups(_scene(), 4, 2)
    masks = [mask for _, _, mask in plan.buckets]
    assert any(m is None for m in masks) and any(m is not None for m in masks)
    assert plan.lengths.sum() == len(_scene())
    assert len(plan.gather_index) == sum(count * length for count, length, _ in plan.buckets)
    assert torch.equal(plan.gather_index[plan.scatter_index], torch.arange(len(_scene())))
    for count, length, mask in plan.buckets:
        counts = torch.full((count,), length) if mask is None else mask.sum((1, 2, 3))
        assert torch.all((counts == length) | (length < 1.5 * counts))


@pytest.mark.parametrize("order", ["z", "hilbert", "grid"])
@pytest.mark.parametrize("patch_size", [1, 7, 64, 1000])
def test_serialized_attention_matches_naive(order, patch_size):
    coords = _scene(1)
    keys = serialize(coords, order, grid_size=2)
    q, k, v = _qkv(len(coords), seed=3)
    out = serialized_attention(q, k, v, keys, coords[:, 0], patch_size)
    expected = _naive(q, k, v, _serialized_reference_groups(keys, coords[:, 0], patch_size))
    torch.testing.assert_close(out, expected)


def test_serialized_patches_split_per_batch_item():
    batch = torch.tensor([0] * 10 + [3] * 1 + [5] * 4)
    keys = torch.arange(15).flip(0)
    plan = serialized_groups(keys, batch, 4)
    assert sorted(plan.lengths.tolist()) == [1, 2, 4, 4, 4]


def test_float32_and_value_dim_differs():
    coords = _scene()
    q, k, _ = _qkv(len(coords), dtype=torch.float32)
    v = torch.randn(len(coords), HEADS, 3)
    out = window_attention(q, k, v, coords, 4)
    expected = _naive(q, k, v, _window_reference_groups(coords, (4, 4, 4), (0, 0, 0)))
    assert out.shape == (len(coords), HEADS, 3) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)


def test_permutation_equivariance():
    coords = _scene()
    q, k, v = _qkv(len(coords))
    perm = torch.randperm(len(coords), generator=torch.Generator().manual_seed(5))
    out = window_attention(q, k, v, coords, 4, 2)
    out_perm = window_attention(q[perm], k[perm], v[perm], coords[perm], 4, 2)
    torch.testing.assert_close(out_perm, out[perm])


def test_empty_input():
    q, k, v = _qkv(0)
    assert window_attention(q, k, v, torch.zeros(0, 4, dtype=torch.int32), 4).shape == (0, HEADS, DIM)
    empty = torch.zeros(0, dtype=torch.long)
    assert serialized_attention(q, k, v, empty, empty, 8).shape == (0, HEADS, DIM)


def test_gradients_match_naive():
    coords = _scene()[:40]
    q, k, v = (t.requires_grad_() for t in _qkv(len(coords)))
    weights = torch.randn(len(coords), HEADS, DIM, dtype=torch.float64)
    (window_attention(q, k, v, coords, 8, 4) * weights).sum().backward()
    grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    (_naive(q, k, v, _window_reference_groups(coords, (8,) * 3, (4,) * 3)) * weights).sum().backward()
    for got, t in zip(grads, (q, k, v)):
        torch.testing.assert_close(got, t.grad)
        assert got.abs().sum() > 0


def test_gradcheck_serialized():
    coords = _scene()[:12]
    keys = serialize(coords, "hilbert")
    q, k, v = (t.requires_grad_() for t in _qkv(len(coords), seed=7))
    assert torch.autograd.gradcheck(lambda a, b, c: serialized_attention(a, b, c, keys, coords[:, 0], 5), (q, k, v))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda q, k, v, c: window_attention(q, k, v, c, 0), "window_size must be positive"),
        (lambda q, k, v, c: window_attention(q, k, v, c, (4, 4)), "window_size"),
        (lambda q, k, v, c: window_attention(q, k, v, c, 2.5), "window_size"),
        (lambda q, k, v, c: window_attention(q, k, v, c[:-1], 4), "coords has"),
        (lambda q, k, v, c: window_attention(q, k, v, c[:, :3], 4), "coords must have shape"),
        (lambda q, k, v, c: window_attention(q, k, v, c.float(), 4), "coords must be an integer"),
        (lambda q, k, v, c: window_attention(q[:, 0], k, v, c, 4), "q must have shape"),
        (lambda q, k, v, c: window_attention(q, k[:-1], v, c, 4), "same N"),
        (lambda q, k, v, c: window_attention(q, k[:, :1], v, c, 4), "heads"),
        (lambda q, k, v, c: window_attention(q, k[..., :2], v, c, 4), "head dim"),
        (lambda q, k, v, c: serialized_attention(q, k, v, c[:, 1].long(), c[:, 0], 0), "patch_size"),
        (lambda q, k, v, c: serialized_attention(q, k, v, c[:-1, 1].long(), c[:-1, 0], 4), "keys has"),
        (lambda q, k, v, c: serialized_attention(q, k, v, c[:, 1].long(), c[:-1, 0], 4), "batch_idx must have shape"),
        (lambda q, k, v, c: serialized_attention(q, k, v, c[:, 1].float(), c[:, 0], 4), "keys must be an integer"),
        (lambda q, k, v, c: grouped_attention(q[:-1], k[:-1], v[:-1], window_groups(c, 4)), "built for"),
    ],
)
def test_bad_input(call, message):
    coords = _scene()
    q, k, v = _qkv(len(coords))
    with pytest.raises(ValueError, match=message):
        call(q, k, v, coords)


def _sparse(feats: torch.Tensor, coords: torch.Tensor) -> SparseTensor:
    return SparseTensor(feats, coords)


def _split_heads(t: torch.Tensor) -> torch.Tensor:
    return t.view(t.shape[0], HEADS, -1)


@pytest.mark.parametrize("shift", [False, True])
def test_window_module_matches_functional_and_caches(shift):
    torch.manual_seed(0)
    coords = _scene()
    dim = HEADS * DIM
    x = _sparse(torch.randn(len(coords), dim), coords)
    attn = SparseWindowAttention(dim, HEADS, window_size=4, shift=shift)
    y = attn(x)
    assert torch.equal(y.coords, x.coords)
    q, k, v = attn.qkv(x.feats).chunk(3, dim=1)
    out = window_attention(*map(_split_heads, (q, k, v)), coords, 4, 2 if shift else 0)
    ref = attn.proj(out.reshape(len(coords), dim))
    torch.testing.assert_close(y.feats, ref)
    key = ("attention", "window", (4, 4, 4), (2, 2, 2) if shift else (0, 0, 0))
    assert key in x.cache
    plan = x.cache[key]
    attn(x.replace(x.feats * 2))
    assert x.cache[key] is plan


@pytest.mark.parametrize("order", ["z", "hilbert", "grid"])
def test_serialized_module_matches_functional(order):
    torch.manual_seed(1)
    coords = _scene(2)
    dim = HEADS * DIM
    x = _sparse(torch.randn(len(coords), dim), coords)
    attn = SerializedAttention(dim, HEADS, patch_size=16, order=order, grid_size=2)
    q, k, v = attn.qkv(x.feats).chunk(3, dim=1)
    keys = serialize(coords, order, grid_size=2)
    out = serialized_attention(*map(_split_heads, (q, k, v)), keys, coords[:, 0], 16)
    torch.testing.assert_close(attn(x).feats, attn.proj(out.reshape(len(coords), dim)))
    assert ("attention", "serialized", order, 2, 16) in x.cache


@pytest.mark.parametrize("attention", ["window", "serialized"])
def test_transformer_block_gradients_flow(attention):
    torch.manual_seed(2)
    coords = _scene()
    dim = HEADS * DIM
    block = SparseTransformerBlock(dim, HEADS, attention=attention, window_size=4, shift=True, patch_size=16)
    feats = torch.randn(len(coords), dim, requires_grad=True)
    y = block(_sparse(feats, coords))
    assert y.feats.shape == feats.shape and torch.equal(y.coords, coords)
    y.feats.square().sum().backward()
    assert feats.grad.abs().sum() > 0
    for name, p in block.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_block_output_depends_only_on_group():
    """Changing a voxel's features leaves every other window's output unchanged."""
    torch.manual_seed(3)
    coords = _scene()
    dim = HEADS * DIM
    block = SparseTransformerBlock(dim, HEADS, attention="window", window_size=4)
    feats = torch.randn(len(coords), dim)
    changed = feats.clone()
    changed[0] += 1.0
    same_window = torch.all(
        torch.div(coords[:, 1:], 4, rounding_mode="floor") == torch.div(coords[0, 1:], 4, rounding_mode="floor"), 1
    ) & (coords[:, 0] == coords[0, 0])
    y0, y1 = block(_sparse(feats, coords)).feats, block(_sparse(changed, coords)).feats
    torch.testing.assert_close(y0[~same_window], y1[~same_window])
    assert not torch.allclose(y0[same_window], y1[same_window])


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: SparseWindowAttention(10, 3, 4), "multiple of num_heads"),
        (lambda: SparseWindowAttention(8, 2, 0), "window_size"),
        (lambda: SerializedAttention(8, 2, patch_size=0), "patch_size"),
        (lambda: SerializedAttention(8, 2, order="peano"), "order"),
        (lambda: SerializedAttention(8, 2, grid_size=0), "grid_size"),
        (lambda: SparseTransformerBlock(8, 2, attention="full"), "attention"),
        (lambda: SparseTransformerBlock(8, 2, mlp_ratio=0), "mlp_ratio"),
    ],
)
def test_module_bad_config(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_module_rejects_wrong_feature_width():
    coords = torch.zeros(5, 4, dtype=torch.int32)
    coords[:, 1] = torch.arange(5)
    x = _sparse(torch.randn(5, 6), coords)
    with pytest.raises(ValueError, match="features"):
        SparseWindowAttention(8, 2, 4)(x)


def _layouts_agree(device: str, dtype: torch.dtype, atol: float, rtol: float = 0.0) -> None:
    """The varlen (one varlen kernel call) and padded-bucket layouts agree, forward and backward."""
    g = torch.Generator().manual_seed(7)
    n = 5000
    keys = torch.randint(0, 1 << 20, (n,), generator=g).to(device)
    batch = torch.randint(0, 9, (n,), generator=g).to(device)
    plan = serialized_groups(keys, batch, 300)
    assert plan.max_length == 300 and int(plan.lengths.min()) < 300
    q, k, v = (torch.randn(n, 4, 16, generator=g).to(device, dtype).requires_grad_() for _ in range(3))
    weights = torch.randn(n, 4, 16, generator=g).to(device, dtype)
    results = []
    for varlen in (True, False):
        out = grouped_attention(q, k, v, plan, varlen=varlen)
        (out.float() * weights).sum().backward()
        results.append([out.detach().float()] + [t.grad.float() for t in (q, k, v)])
        for t in (q, k, v):
            t.grad = None
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, atol=atol, rtol=rtol)
        assert want.abs().sum() > 0


def test_varlen_layout_refuses_cpu_tensors():
    q, k, v = _qkv(10)
    plan = serialized_groups(torch.arange(10), torch.zeros(10, dtype=torch.long), 4)
    with pytest.raises(ValueError, match="CUDA only"):
        grouped_attention(q, k, v, plan, varlen=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the varlen attention kernel runs on CUDA (GPU parity run)")
@pytest.mark.parametrize("dtype, atol, rtol", [(torch.float32, 2e-5, 0.0), (torch.bfloat16, 3e-2, 2e-2)], ids=["fp32", "bf16"])
def test_varlen_layout_matches_padded_buckets_cuda(dtype, atol, rtol):
    _layouts_agree("cuda", dtype, atol, rtol)
