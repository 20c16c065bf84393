"""The torch reference convolutions equal dense ``conv3d`` / ``conv_transpose3d`` (float64)."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from diffusers_city.sparse import SparseTensor, use_backend
from diffusers_city.sparse import nn as snn


def random_tensor(seed: int, n: int = 40, channels: int = 3, batch: int = 2, span: int = 6, low: int = -4):
    g = torch.Generator().manual_seed(seed)
    coords = torch.cat([torch.randint(0, batch, (n, 1), generator=g), torch.randint(low, low + span, (n, 3), generator=g)], 1)
    coords = torch.unique(coords, dim=0)
    coords = coords[torch.randperm(coords.shape[0], generator=g)]  # unsorted input order
    feats = torch.randn(coords.shape[0], channels, generator=g, dtype=torch.float64)
    return SparseTensor(feats, coords.int(), batch_size=batch)


def dense_box(x: SparseTensor, low: int, high: int) -> torch.Tensor:
    """Dense [B, C, D, D, D] grid of x over voxel indices low..high-1 on every axis."""
    d = high - low
    dense = torch.zeros(x.batch_size, d, d, d, x.num_channels, dtype=x.dtype)
    c = x.coords.long()
    dense[c[:, 0], c[:, 1] - low, c[:, 2] - low, c[:, 3] - low] = x.feats
    return dense.permute(0, 4, 1, 2, 3)


def read_sites(dense: torch.Tensor, coords: torch.Tensor, low: int) -> torch.Tensor:
    c = coords.long()
    return dense.permute(0, 2, 3, 4, 1)[c[:, 0], c[:, 1] - low, c[:, 2] - low, c[:, 3] - low]


def torch_weight(conv) -> torch.Tensor:
    return conv.weight.permute(0, 4, 1, 2, 3)  # [out, in, kx, ky, kz]


@pytest.mark.parametrize("kernel_size", [1, 3, 5])
def test_subm_equals_dense(kernel_size):
    x = random_tensor(0)
    conv = snn.SubMConv3d(3, 4, kernel_size).double()
    y = conv(x)
    assert torch.equal(y.coords, x.coords) and y.voxel_size == x.voxel_size and y.origin == x.origin
    low, high = -10, 10
    ref = F.conv3d(dense_box(x, low, high), torch_weight(conv), conv.bias, padding=kernel_size // 2)
    torch.testing.assert_close(y.feats, read_sites(ref, x.coords, low), rtol=1e-10, atol=1e-10)


def check_strided(x: SparseTensor, kernel_size: int, stride: int, padding: int):
    conv = snn.SparseConv3d(x.num_channels, 5, kernel_size, stride, padding=padding).double()
    y = conv(x)
    margin = kernel_size + stride
    c = x.coords.long()[:, 1:]
    base = int(c.min()) - margin
    base -= (base + padding) % stride  # base + padding divisible by stride
    high = int(c.max()) + margin
    dense = dense_box(x, base, high)
    ref = F.conv3d(dense, torch_weight(conv), conv.bias, stride=stride)
    occupied = F.conv3d(
        (dense != 0).any(1, keepdim=True).double(), torch.ones(1, 1, *[kernel_size] * 3, dtype=torch.float64), stride=stride
    )
    low_out = (base + padding) // stride
    sites = occupied[:, 0].nonzero()
    sites[:, 1:] += low_out
    assert sorted(map(tuple, sites.tolist())) == sorted(map(tuple, y.coords.long().tolist()))
    torch.testing.assert_close(y.feats, read_sites(ref, y.coords, low_out), rtol=1e-10, atol=1e-10)
    return conv, y


@pytest.mark.parametrize("kernel_size,stride,padding", [(2, 2, 0), (3, 2, 1), (3, 2, 0), (3, 1, 1), (4, 2, 1), (3, 3, 2)])
def test_strided_equals_dense(kernel_size, stride, padding):
    check_strided(random_tensor(1), kernel_size, stride, padding)


def test_strided_metadata_follows_design_levels():
    x = random_tensor(2)
    x = SparseTensor(x.feats, x.coords, voxel_size=0.5, origin=(0.25, 1.25, -0.75), stride=2, batch_size=2)
    y = snn.SparseConv3d(3, 3).double()(x)
    assert y.voxel_size == 1.0 and y.stride == 4
    assert y.origin == pytest.approx((0.5, 1.5, -0.5))  # o_n = o_0 + (v_n - v_0) / 2
    parents = torch.div(x.coords[:, 1:].long(), 2, rounding_mode="floor")
    with_batch = torch.cat([x.coords[:, :1].long(), parents], 1)
    assert set(map(tuple, with_batch.tolist())) == set(map(tuple, y.coords.long().tolist()))
    # every fine voxel lies inside its parent's cell
    fine = x.world_positions()
    parent_centre = torch.tensor(y.origin, dtype=torch.float64) + parents.double() * y.voxel_size
    assert ((fine - parent_centre).abs() <= y.voxel_size / 2).all()


def inverse_reference(conv, x: SparseTensor, target: SparseTensor) -> torch.Tensor:
    k, s, p = conv.kernel_size, conv.stride, conv.padding
    margin = k + 2
    cl = min(int(x.coords[:, 1:].min()), (int(target.coords[:, 1:].min()) + p - k) // s) - margin
    ch = max(int(x.coords[:, 1:].max()), (int(target.coords[:, 1:].max()) + p) // s) + margin
    dense = F.conv_transpose3d(dense_box(x, cl, ch), conv.weight.permute(4, 0, 1, 2, 3), conv.bias, stride=s)
    return read_sites(dense, target.coords, cl * s - p)


@pytest.mark.parametrize("kernel_size,stride,padding", [(2, 2, 0), (3, 2, 1)])
def test_inverse_equals_dense_after_down(kernel_size, stride, padding):
    target = random_tensor(3)
    down, y = check_strided(target, kernel_size, stride, padding)
    inv = snn.SparseInverseConv3d(5, 2, kernel_size, stride, padding=padding).double()
    out = inv(y, target)
    assert torch.equal(out.coords, target.coords) and out.cache is target.cache
    torch.testing.assert_close(out.feats, inverse_reference(inv, y, target), rtol=1e-10, atol=1e-10)


def test_inverse_from_unrelated_coarse_structure():
    target = random_tensor(4)
    coarse = random_tensor(5, n=12, channels=5, span=4, low=-2)
    inv = snn.SparseInverseConv3d(5, 2, 2, 2).double()
    out = inv(coarse, target)
    torch.testing.assert_close(out.feats, inverse_reference(inv, coarse, target), rtol=1e-10, atol=1e-10)


@settings(max_examples=12, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    low=st.integers(-1000, 1000),
    span=st.integers(1, 7),
    kernel_stride=st.sampled_from([(3, 1, 0), (2, 2, 0), (3, 2, 1)]),
)
def test_random_coords_property(seed, low, span, kernel_stride):
    x = random_tensor(seed, n=30, span=span, low=low)
    k, s, p = kernel_stride
    if s == 1 and p == 0:
        conv = snn.SubMConv3d(3, 2, k).double()
        ref = F.conv3d(dense_box(x, low - 2, low + span + 2), torch_weight(conv), conv.bias, padding=k // 2)
        torch.testing.assert_close(conv(x).feats, read_sites(ref, x.coords, low - 2), rtol=1e-10, atol=1e-10)
    else:
        check_strided(x, k, s, p)


def test_gradcheck_all_convs():
    x = random_tensor(6, n=10, channels=2, span=3)
    subm = snn.SubMConv3d(2, 2, 3).double()
    down = snn.SparseConv3d(2, 2, 2, 2).double()
    inv = snn.SparseInverseConv3d(2, 2, 2, 2).double()
    call = torch.func.functional_call

    def f(feats, w1, w2, w3, bias):
        a = call(subm, {"weight": w1, "bias": bias}, (x.replace(feats),))
        b = call(down, {"weight": w2, "bias": bias}, (a,))
        return call(inv, {"weight": w3, "bias": bias}, (b, x)).feats

    args = [t.detach().clone().requires_grad_() for t in (x.feats, subm.weight, down.weight, inv.weight, subm.bias)]
    assert torch.autograd.gradcheck(f, args)


def test_weight_layout_is_spconv():
    conv = snn.SparseConv3d(3, 7, 3, 2)
    assert conv.weight.shape == (7, 3, 3, 3, 3) and conv.bias.shape == (7,)


def test_empty_inputs():
    empty = SparseTensor(torch.zeros(0, 3), torch.zeros(0, 4, dtype=torch.int32))
    assert snn.SubMConv3d(3, 4)(empty).feats.shape == (0, 4)
    down = snn.SparseConv3d(3, 4)(empty)
    assert down.feats.shape == (0, 4) and down.coords.shape == (0, 4) and down.voxel_size == 2.0
    target = random_tensor(7, channels=4)
    coarse = SparseTensor(torch.zeros(0, 3), torch.zeros(0, 4, dtype=torch.int32), batch_size=2)
    inv = snn.SparseInverseConv3d(3, 2)
    out = inv(coarse, target.to(torch.float32))
    torch.testing.assert_close(out.feats, inv.bias.expand(target.num_voxels, 2).detach())
    # one empty batch item among full ones
    x = random_tensor(8, batch=1)
    x3 = SparseTensor.cat(
        [x, SparseTensor(torch.zeros(0, 3, dtype=torch.float64), torch.zeros(0, 4, dtype=torch.int32), batch_size=1), x]
    )
    y = snn.SparseConv3d(3, 2).double()(x3)
    assert set(y.coords[:, 0].tolist()) == {0, 2}


def test_bad_kernel_and_channels():
    with pytest.raises(ValueError, match="odd kernel_size"):
        snn.SubMConv3d(3, 3, 2)
    with pytest.raises(ValueError, match="kernel_size"):
        snn.SparseConv3d(3, 3, 0)
    with pytest.raises(ValueError, match="padding"):
        snn.SparseConv3d(3, 3, 2, 2, padding=2)
    with pytest.raises(ValueError, match="channels"):
        snn.SubMConv3d(4, 3)(random_tensor(0).to(torch.float32))


def test_backend_selection():
    from diffusers_city.sparse import available_backends, backend_name

    assert "torch" in available_backends()
    assert backend_name(torch.device("cpu")) == "torch"
    with use_backend("torch"):
        assert backend_name(torch.device("cpu")) == "torch"
    with pytest.raises(ValueError, match="unknown sparse backend"):
        with use_backend("minkowski"):
            pass
    if "spconv" not in available_backends():
        with pytest.raises(ValueError, match="not available"):
            with use_backend("spconv"):
                pass


def test_kernel_maps_cached_and_shared():
    x = random_tensor(9).to(torch.float32)
    conv = snn.SubMConv3d(3, 3)
    y = conv(x)
    assert ("torch", "subm", 3) in x.cache and y.cache is x.cache
    kmap = x.cache[("torch", "subm", 3)]
    conv(y)
    assert y.cache[("torch", "subm", 3)] is kmap


def test_benchmark_cpu_quick_run(tmp_path):
    import json

    from script_loader import load_script

    bench = load_script("benchmarks/sparse_conv.py")
    assert bench.main(["--device", "cpu", "--quick", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "sparse_conv.json").read_text())
    assert len(result["rows"]) == 16 and not any("error" in r for r in result["rows"])
    assert all(r["conv_torch_ms"] > 0 and r["map_torch_ms"] > 0 for r in result["rows"])
    assert (tmp_path / "sparse_conv.md").read_text().count("\n| ") == 17
    with pytest.raises(ValueError, match="--kinds"):
        bench.parse_args(["--out", str(tmp_path), "--device", "cpu", "--kinds", "pool"])
    voxels = bench.city_voxels(4000, seed=1)
    assert abs(len(voxels) - 4000) < 400 and len(torch.unique(voxels, dim=0)) == len(voxels)


def test_dtype_and_device_mismatch_raise():
    x = random_tensor(10)  # float64
    with pytest.raises(ValueError, match="float32 but the features are torch.float64"):
        snn.SubMConv3d(3, 3)(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = snn.SubMConv3d(3, 3)(x.to(torch.float32))
    assert out.dtype == torch.bfloat16


def test_backend_environment_variable(monkeypatch):
    """``DIFFUSERS_CITY_SPARSE_BACKEND`` picks the backend at call time; unknown names are refused."""
    from diffusers_city.sparse.backend import backend_name

    monkeypatch.setenv("DIFFUSERS_CITY_SPARSE_BACKEND", "torch")
    assert backend_name(torch.device("cpu")) == "torch"
    monkeypatch.setenv("DIFFUSERS_CITY_SPARSE_BACKEND", "cuda-magic")
    with pytest.raises(ValueError, match="DIFFUSERS_CITY_SPARSE_BACKEND"):
        backend_name(torch.device("cpu"))
