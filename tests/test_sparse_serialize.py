import pytest
import torch

from diffusers_city.sparse.serialize import MAX_BITS, inverse_permutation, serialize, sort_by_key


def _cube(bits: int, batch: int = 0) -> torch.Tensor:
    r = torch.arange(2**bits)
    xyz = torch.stack(torch.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
    return torch.cat([torch.full((xyz.shape[0], 1), batch), xyz], 1)


def _morton_reference(x: int, y: int, z: int, bits: int) -> int:
    code = 0
    for i in range(bits):
        code |= ((x >> i) & 1) << (3 * i + 2) | ((y >> i) & 1) << (3 * i + 1) | ((z >> i) & 1) << (3 * i)
    return code


@pytest.mark.parametrize("order", ["z", "hilbert", "grid"])
def test_bijective_on_full_cube(order):
    keys = serialize(_cube(3), order)
    assert keys.dtype == torch.int64
    assert sorted(keys.tolist()) == list(range(8**3))


def test_morton_matches_bit_interleave():
    g = torch.Generator().manual_seed(0)
    xyz = torch.randint(0, 2**MAX_BITS, (200, 3), generator=g)
    xyz[0] = 2**MAX_BITS - 1
    xyz[1] = 0  # the shift by the minimum is then a no-op
    coords = torch.cat([torch.zeros(200, 1, dtype=torch.long), xyz], 1)
    keys = serialize(coords, "z")
    expected = [_morton_reference(*p, MAX_BITS) for p in xyz.tolist()]
    assert keys.tolist() == expected


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_hilbert_consecutive_cells_are_face_neighbours(bits):
    cube = _cube(bits)
    walk = cube[torch.argsort(serialize(cube, "hilbert")), 1:]
    steps = (walk[1:] - walk[:-1]).abs().sum(1)
    assert torch.all(steps == 1)


def test_z_order_is_not_face_continuous():
    cube = _cube(2)
    walk = cube[torch.argsort(serialize(cube, "z")), 1:]
    assert (walk[1:] - walk[:-1]).abs().sum(1).max() > 1


@pytest.mark.parametrize("order", ["z", "hilbert"])
def test_aligned_octants_are_contiguous(order):
    bits = 3
    cube = _cube(bits)
    walk = cube[torch.argsort(serialize(cube, order)), 1:]
    for level in (1, 2):
        side = 2**level
        for chunk in walk.split(side**3):
            blocks = torch.div(chunk, side, rounding_mode="floor")
            assert torch.all(blocks == blocks[0])


def test_grid_order_equals_formula():
    g = torch.Generator().manual_seed(1)
    coords = torch.cat([torch.randint(0, 3, (300, 1), generator=g), torch.randint(-40, 40, (300, 3), generator=g)], 1)
    grid = 3
    keys = serialize(coords.int(), "grid", grid_size=grid)
    cells = torch.div(coords[:, 1:] - coords[:, 1:].min(0).values, grid, rounding_mode="floor")
    bits = int(cells.max()).bit_length()
    n = 2**bits
    qx, qy, qz = cells.unbind(1)
    expected = coords[:, 0] * n**3 + (qx * n + qy) * n + qz
    assert torch.equal(keys, expected)
    lexicographic = sorted(range(300), key=lambda i: (coords[i, 0].item(), *cells[i].tolist()))
    assert torch.equal(keys[torch.tensor(lexicographic)], keys.sort().values)


@pytest.mark.parametrize("order", ["z", "hilbert", "grid"])
def test_batch_in_high_bits_and_translation_invariance(order):
    g = torch.Generator().manual_seed(2)
    coords = torch.cat([torch.randint(0, 4, (100, 1), generator=g), torch.randint(-50, 50, (100, 3), generator=g)], 1)
    keys = serialize(coords, order, grid_size=2)
    order_by_key = torch.argsort(keys)
    assert torch.all(coords[order_by_key, 0].diff() >= 0)
    shifted = coords + torch.tensor([0, 1000, -7, 33])
    assert torch.equal(serialize(shifted, order, grid_size=2), keys)


def test_points_in_one_cell_share_a_key():
    coords = torch.tensor([[0, 0, 0, 0], [0, 3, 3, 3], [0, 4, 0, 0], [0, 9, 9, 9]])
    keys = serialize(coords, "z", grid_size=4)
    assert keys[0] == keys[1] and keys[0] != keys[2] and keys[2] != keys[3]


def test_fixed_bits_layout():
    coords = torch.tensor([[1, 0, 0, 1]])
    assert serialize(coords, "grid", bits=5).item() == (1 << 15) | 0  # shifted to the origin
    coords = torch.tensor([[1, 0, 0, 0], [0, 0, 0, 1]])
    assert serialize(coords, "grid", bits=5).tolist() == [1 << 15, 1]


def test_empty_input():
    keys = serialize(torch.zeros(0, 4, dtype=torch.int32), "hilbert")
    assert keys.shape == (0,) and keys.dtype == torch.int64


def test_sort_helpers_roundtrip():
    keys = torch.tensor([5, 1, 5, 0, 3])
    order, inverse = sort_by_key(keys)
    assert order.tolist() == [3, 1, 4, 0, 2]  # stable: equal keys keep input order
    values = torch.arange(5) * 10
    assert torch.equal(values[order][inverse], values)
    assert torch.equal(inverse_permutation(inverse), order)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(coords=torch.zeros(5, 3, dtype=torch.long)), "shape"),
        (dict(coords=torch.zeros(5, 4)), "integer dtype"),
        (dict(coords=torch.zeros(5, 4, dtype=torch.long), order="morton"), "order"),
        (dict(coords=torch.zeros(5, 4, dtype=torch.long), grid_size=0), "grid_size"),
        (dict(coords=torch.zeros(5, 4, dtype=torch.long), bits=0), "bits"),
        (dict(coords=torch.zeros(5, 4, dtype=torch.long), bits=MAX_BITS + 1), "bits"),
        (dict(coords=torch.tensor([[0, 0, 0, 0], [0, 16, 0, 0]]), bits=4), "needs 5 bits"),
        (dict(coords=torch.tensor([[0, 0, 0, 0], [0, 2**MAX_BITS, 0, 0]])), "MAX_BITS"),
        (dict(coords=torch.tensor([[-1, 0, 0, 0]])), "batch indices"),
        (dict(coords=torch.tensor([[4, 0, 0, 0], [0, 2**MAX_BITS - 1, 0, 0]])), "batch index 4"),
    ],
)
def test_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        serialize(**kwargs)


def test_sort_by_key_rejects_2d():
    with pytest.raises(ValueError, match="keys"):
        sort_by_key(torch.zeros(2, 2, dtype=torch.long))


def test_all_orders_cover_each_batch_item_independently():
    coords = torch.cat([_cube(2, batch=0), _cube(2, batch=1)])
    for order in ("z", "hilbert", "grid"):
        keys = serialize(coords, order)
        assert sorted(keys[:64].tolist()) == list(range(64))
        assert sorted(keys[64:].tolist()) == list(range(64, 128))
