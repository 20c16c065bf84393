import copy
import math

import pytest
import torch

from diffusers_city.sparse import attention
from diffusers_city.sparse.attention import SparseCrossAttention, cross_attention_groups, grouped_cross_attention
from diffusers_city.sparse.tensor import SparseTensor
from diffusers_city.sparse.transformer import SparseDiTBlock

HEADS, DIM = 2, 4
# Five batch items: item 1 has no voxels, item 2 no condition tokens; items 3 and 4 share a padded
# bucket (16 queries, 12 keys) with different real lengths, so the key mask and the query padding
# both matter.
VOXELS = [7, 0, 20, 13, 14]
TOKENS = [3, 5, 0, 11, 10]


def _batch_idx(counts=VOXELS, seed: int = 0) -> torch.Tensor:
    batch = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    return batch[torch.randperm(len(batch), generator=torch.Generator().manual_seed(seed))]


def _tensors(n: int, m: int, dim_v: int = DIM, seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, HEADS, DIM, generator=g, dtype=dtype)
    k = torch.randn(m, HEADS, DIM, generator=g, dtype=dtype)
    v = torch.randn(m, HEADS, dim_v, generator=g, dtype=dtype)
    return q, k, v


def _reference(q, k, v, batch_idx, lengths) -> torch.Tensor:
    """Per-item loop in float64: an explicit softmax over that item's keys; zero without keys."""
    out = torch.zeros(q.shape[0], q.shape[1], v.shape[2], dtype=torch.float64)
    start = 0
    for item, length in enumerate(lengths):
        rows = torch.nonzero(batch_idx == item).squeeze(1)
        if length and rows.numel():
            qi = q[rows].double().transpose(0, 1)
            ki, vi = (t[start : start + length].double().transpose(0, 1) for t in (k, v))
            w = torch.softmax(qi @ ki.transpose(1, 2) / math.sqrt(q.shape[-1]), dim=-1)
            out[rows] = (w @ vi).transpose(0, 1)
        start += length
    return out


def test_cross_attention_matches_per_item_reference():
    batch = _batch_idx()
    q, k, v = (t.requires_grad_() for t in _tensors(len(batch), sum(TOKENS), dim_v=3))
    plan = cross_attention_groups(batch, torch.tensor(TOKENS))
    masks = [mask for *_, mask in plan.buckets]
    assert any(m is None for m in masks) and any(m is not None for m in masks)
    assert any(length_q != length_k for _, length_q, length_k, _ in plan.buckets)
    weights = torch.randn(len(batch), HEADS, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out = grouped_cross_attention(q, k, v, plan)
    (out * weights).sum().backward()
    grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    expected = _reference(q, k, v, batch, TOKENS)
    (expected * weights).sum().backward()
    torch.testing.assert_close(out, expected)
    for got, t in zip(grads, (q, k, v)):
        torch.testing.assert_close(got, t.grad)
    no_keys = batch == 2
    assert out[no_keys].abs().sum() == 0 and grads[0][no_keys].abs().sum() == 0
    assert grads[1][3:8].abs().sum() == 0 and grads[2][3:8].abs().sum() == 0  # item 1's keys: no voxels attend
    assert out[~no_keys].abs().min() > 0


def _emulated_varlen_kernel(q, k, v, cu_seqlens_q, cu_seqlens_k, max_q, max_k, scale):
    """The varlen kernel's contract in plain torch: segment i of q attends to segment i of k, v."""
    assert cu_seqlens_q.dtype == cu_seqlens_k.dtype == torch.int32 and len(cu_seqlens_q) == len(cu_seqlens_k)
    assert int(cu_seqlens_q[-1]) == q.shape[0] and int(cu_seqlens_k[-1]) == k.shape[0] == v.shape[0]
    lengths_q, lengths_k = cu_seqlens_q.diff(), cu_seqlens_k.diff()
    assert int(lengths_q.min()) >= 1 and int(lengths_k.min()) >= 1, "no empty segment reaches the kernel"
    assert int(lengths_q.max()) <= max_q and int(lengths_k.max()) <= max_k
    out = []
    bounds_q, bounds_k = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    for q0, q1, k0, k1 in zip(bounds_q, bounds_q[1:], bounds_k, bounds_k[1:]):
        qi, ki, vi = (t.transpose(0, 1) for t in (q[q0:q1], k[k0:k1], v[k0:k1]))
        w = torch.softmax(qi @ ki.transpose(1, 2) * (scale or 1 / math.sqrt(q.shape[-1])), dim=-1)
        out.append((w @ vi).transpose(0, 1))
    return torch.cat(out)


def test_cross_attention_varlen_layout_matches_reference_on_cpu(monkeypatch):
    """The varlen path's bookkeeping (query order, the zero key row, cu_seqlens, max lengths,
    inverse) with the kernel emulated on the CPU; the kernel itself is the CUDA test's."""
    monkeypatch.setattr(attention, "_varlen_kernel", _emulated_varlen_kernel)
    batch = _batch_idx(seed=2)
    q, k, v = _tensors(len(batch), sum(TOKENS), seed=3)
    plan = cross_attention_groups(batch, torch.tensor(TOKENS))
    assert (plan.max_length_q, plan.max_length_k) == (20, 11)
    out = grouped_cross_attention(q, k, v, plan, varlen=True)
    torch.testing.assert_close(out, _reference(q, k, v, batch, TOKENS))


def test_cross_attention_empty_cases():
    q, k, v = _tensors(0, 4)
    no_voxels = cross_attention_groups(torch.zeros(0, dtype=torch.long), torch.tensor([4]))
    assert grouped_cross_attention(q, k, v, no_voxels).shape == (0, HEADS, DIM)
    batch = _batch_idx([3, 5])
    q, k, v = _tensors(8, 0)
    out = grouped_cross_attention(q, k, v, cross_attention_groups(batch, torch.tensor([0, 0])))
    assert torch.equal(out, torch.zeros(8, HEADS, DIM, dtype=torch.float64))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda q, k, v, b, n: grouped_cross_attention(q, k, v[:-1], cross_attention_groups(b, n)), "k and v must have the same"),
        (lambda q, k, v, b, n: grouped_cross_attention(q, k[..., :2], v, cross_attention_groups(b, n)), "head dim"),
        (lambda q, k, v, b, n: grouped_cross_attention(q, k[:, :1], v, cross_attention_groups(b, n)), "heads"),
        (lambda q, k, v, b, n: grouped_cross_attention(q[0], k, v, cross_attention_groups(b, n)), "q must have shape"),
        (lambda q, k, v, b, n: grouped_cross_attention(q[1:], k, v, cross_attention_groups(b, n)), "built for 54 queries"),
        (lambda q, k, v, b, n: grouped_cross_attention(q, k[1:], v[1:], cross_attention_groups(b, n)), "built for 29 keys"),
        (lambda q, k, v, b, n: cross_attention_groups(b, n[:-1]), "batch_idx must lie in"),
        (lambda q, k, v, b, n: cross_attention_groups(b, n - 4), "context_lengths must be >= 0"),
        (lambda q, k, v, b, n: cross_attention_groups(b, n.float()), "context_lengths must be an integer"),
        (lambda q, k, v, b, n: cross_attention_groups(b, n[None]), "context_lengths must have shape"),
        (lambda q, k, v, b, n: cross_attention_groups(b.float(), n), "batch_idx must be an integer"),
    ],
)
def test_cross_attention_bad_input(call, message):
    batch = _batch_idx()
    q, k, v = _tensors(len(batch), sum(TOKENS))
    with pytest.raises(ValueError, match=message):
        call(q, k, v, batch, torch.tensor(TOKENS))


# -- the block -----------------------------------------------------------------------------------
WIDTH, EMB, CONTEXT = 16, 12, 10


def _scene(seed: int = 0, dtype=torch.float32):
    """Voxels of ``VOXELS`` per item (unique coordinates), ``emb`` [5, EMB] and a context of
    ``TOKENS`` per item."""
    g = torch.Generator().manual_seed(seed)
    batch = _batch_idx(seed=seed)
    cells = torch.randperm(6**3, generator=g)[: len(batch)]
    xyz = torch.stack(torch.unravel_index(cells, (6, 6, 6)), 1) - 2
    feats = torch.randn(len(batch), WIDTH, generator=g, dtype=dtype)
    x = SparseTensor(feats, torch.cat([batch[:, None], xyz], 1), batch_size=len(VOXELS))
    emb = torch.randn(len(VOXELS), EMB, generator=g, dtype=dtype)
    context = torch.randn(sum(TOKENS), CONTEXT, generator=g, dtype=dtype)
    return x, emb, context, torch.tensor(TOKENS)


def _block(attention: str = "window", randomize: bool = True, **kwargs) -> SparseDiTBlock:
    """A block whose zero-initialised layers (modulation, cross-attention output) are randomised."""
    torch.manual_seed(0)
    block = SparseDiTBlock(WIDTH, HEADS, EMB, CONTEXT, attention=attention, window_size=4, patch_size=8, **kwargs)
    if randomize:
        g = torch.Generator().manual_seed(1)
        for layer in (block.adaLN_modulation[1], block.cross_attn.proj):
            for p in layer.parameters():
                p.data.normal_(0.0, 0.3, generator=g)
    return block


@pytest.mark.parametrize("attention", ["window", "serialized"])
def test_dit_block_starts_as_identity(attention):
    x, emb, context, lengths = _scene()
    block = _block(attention, randomize=False)
    assert torch.equal(block(x, emb, context, lengths).feats, x.feats)
    assert torch.equal(block(x, emb).feats, x.feats)


@pytest.mark.parametrize("change", ["context", "emb", "context_length"])
def test_dit_block_item_sees_only_its_condition(change):
    """Changing item 3's condition changes item 3's voxels and no others' (item 4 shares its bucket)."""
    x, emb, context, lengths = _scene()
    block = _block()
    other_context, other_emb, other_lengths = context.clone(), emb.clone(), lengths.clone()
    item3 = slice(sum(TOKENS[:3]), sum(TOKENS[:4]))
    if change == "context":
        other_context[item3] += 1.0
    elif change == "emb":
        other_emb[3] += 1.0
    else:
        other_context = torch.cat([context[: item3.stop - 1], context[item3.stop :]])
        other_lengths[3] -= 1
    y = block(x, emb, context, lengths).feats
    y_other = block(x, other_emb, other_context, other_lengths).feats
    rows = x.coords[:, 0] == 3
    torch.testing.assert_close(y_other[~rows], y[~rows])
    assert (y_other[rows] - y[rows]).abs().amin(1).min() > 0


def test_dit_block_empty_condition_is_no_cross_attention():
    x, emb, context, lengths = _scene()
    block = _block()
    unconditional = block(x, emb).feats
    conditioned = block(x, emb, context, lengths).feats
    rows = x.coords[:, 0] == 2  # item 2 has no condition tokens
    torch.testing.assert_close(conditioned[rows], unconditional[rows])
    assert (conditioned[~rows] - unconditional[~rows]).abs().amin(1).min() > 0
    empty = block(x, emb, context[:0], torch.zeros(len(VOXELS), dtype=torch.long)).feats
    torch.testing.assert_close(empty, unconditional)


@pytest.mark.parametrize("attention", ["window", "serialized"])
def test_dit_block_gradients_flow(attention):
    x, emb, context, lengths = _scene()
    block = _block(attention)
    feats, emb, context = (t.clone().requires_grad_() for t in (x.feats, emb, context))
    y = block(x.replace(feats), emb, context, lengths)
    assert y.feats.shape == feats.shape and torch.equal(y.coords, x.coords)
    y.feats.square().sum().backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert feats.grad.abs().sum() > 0
    has_voxels = torch.tensor(VOXELS) > 0
    assert torch.all(emb.grad.abs().sum(1).bool() == has_voxels)  # item 1 has no voxels
    item1 = slice(TOKENS[0], sum(TOKENS[:2]))
    assert context.grad[item1].abs().sum() == 0 and context.grad[: TOKENS[0]].abs().amin(1).min() > 0


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 6e-2)], ids=["fp32", "bf16"])
def test_dit_block_dtypes_match_float64(dtype, tol):
    x, emb, context, lengths = _scene(dtype=torch.float64)
    block = _block().double()
    expected = block(x, emb, context, lengths).feats
    block = copy.deepcopy(block).to(dtype)
    feats = x.feats.to(dtype).requires_grad_()
    y = block(x.replace(feats), emb.to(dtype), context.to(dtype), lengths).feats
    assert y.dtype == dtype
    torch.testing.assert_close(y.double(), expected, atol=tol, rtol=tol)
    y.float().square().sum().backward()
    assert feats.grad.dtype == dtype and torch.isfinite(feats.grad).all() and feats.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda b, x, e, c, n: b(x, e[:-1], c, n), r"emb must have shape \[B, emb_dim\] = \[5, 12\]"),
        (lambda b, x, e, c, n: b(x, e[:, :-1], c, n), "emb must have shape"),
        (lambda b, x, e, c, n: b(x, e, c[:-1], n), "context_lengths sum to 29 but context has 28 rows"),
        (lambda b, x, e, c, n: b(x, e, c[:, :-1], n), r"context must have shape \[M, 10\]"),
        (lambda b, x, e, c, n: b(x, e, c, n[:-1]), "context_lengths must have shape"),
        (lambda b, x, e, c, n: b(x, e, c, n.float()), "context_lengths must be an integer"),
        (lambda b, x, e, c, n: b(x, e, c, n - 3), "context_lengths must be >= 0"),
        (lambda b, x, e, c, n: b(x, e, c), "together"),
        (lambda b, x, e, c, n: b(x.replace(x.feats[:, :-1]), e, c, n), "features"),
        (lambda b, x, e, c, n: SparseDiTBlock(WIDTH, HEADS, EMB)(x, e, c, n), "no cross-attention"),
    ],
)
def test_dit_block_bad_input(call, message):
    x, emb, context, lengths = _scene()
    with pytest.raises(ValueError, match=message):
        call(_block(randomize=False), x, emb, context, lengths)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: SparseDiTBlock(10, 3), "multiple of num_heads"),
        (lambda: SparseDiTBlock(8, 2, attention="full"), "attention"),
        (lambda: SparseDiTBlock(8, 2, mlp_ratio=0), "mlp_ratio"),
        (lambda: SparseDiTBlock(8, 2, context_dim=0), "context_dim"),
        (lambda: SparseCrossAttention(8, 4, 3), "multiple of num_heads"),
    ],
)
def test_dit_block_bad_config(build, message):
    with pytest.raises(ValueError, match=message):
        build()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the varlen attention kernel runs on CUDA (GPU parity run)")
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)], ids=["fp32", "bf16"])
def test_cross_attention_varlen_matches_padded_cuda(dtype, tol):
    """One varlen kernel call (separate query and key lengths) == the padded buckets on the GPU,
    forward and backward, to ``tol`` of each tensor's largest entry (key gradients sum over up to
    700 queries); items without voxels, without tokens and with one of each included."""
    g = torch.Generator().manual_seed(11)
    voxels, tokens = [700, 0, 1500, 1, 333, 600, 64], [77, 20, 0, 300, 1, 128, 5]
    batch = _batch_idx(voxels, seed=11).cuda()
    plan = cross_attention_groups(batch, torch.tensor(tokens).cuda())
    assert (plan.max_length_q, plan.max_length_k) == (1500, 300)
    n, m = sum(voxels), sum(tokens)
    q = torch.randn(n, 4, 32, generator=g).to("cuda", dtype).requires_grad_()
    k, v = (torch.randn(m, 4, 32, generator=g).to("cuda", dtype).requires_grad_() for _ in range(2))
    weights = torch.randn(n, 4, 32, generator=g).to("cuda", dtype)
    results = []
    for varlen in (True, False):
        out = grouped_cross_attention(q, k, v, plan, varlen=varlen)
        (out.float() * weights).sum().backward()
        results.append([out.detach().float()] + [t.grad.float() for t in (q, k, v)])
        for t in (q, k, v):
            t.grad = None
    for got, want in zip(*results):
        assert torch.isfinite(got).all() and want.abs().sum() > 0
        torch.testing.assert_close(got, want, atol=tol * float(want.abs().max()), rtol=0.0)
    no_tokens = batch == 2
    for out, grad_q, _, _ in results:
        assert out[no_tokens].abs().sum() == 0 and grad_q[no_tokens].abs().sum() == 0
