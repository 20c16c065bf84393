"""GaussianCity models: BEV-point decoder, scene encoder, discriminator, VGG19 loss, layers."""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from diffusers_city import BEVPointDecoder, BEVSceneEncoder, SemanticDiscriminator
from diffusers_city.data.classes import GROUND, ROAD, ROOF
from diffusers_city.models.gaussiancity.bev import BEVLayout, bev_points
from diffusers_city.models.gaussiancity.layers import ModulatedLinear, pool_features, sincos_encoding
from diffusers_city.models.gaussiancity.point_hierarchy import HierarchyCapacity, PointHierarchy
from diffusers_city.models.shared import VGG19PerceptualLoss
from diffusers_city.sparse import SparseTensor
from diffusers_city.sparse.attention import SerializedAttention

TINY = dict(
    num_freqs=4,
    enc_depths=(1, 1),
    enc_channels=(16, 32),
    dec_depths=(1,),
    dec_channels=(16,),
    head_dim=8,
    patch_size=64,
    style_dim=16,
    mlp_hidden=32,
    mlp_layers=2,
)


def _points():
    sem = np.full((16, 16), ROAD)
    hgt = np.zeros((16, 16))
    sem[4:9, 4:9] = ROOF
    hgt[4:9, 4:9] = 6
    sem[10:14, 2:6] = ROOF
    hgt[10:14, 2:6] = 3
    sem[:, 14:] = GROUND
    return bev_points(BEVLayout.from_maps(sem, hgt))


def _decode(decoder, pts, styles):
    b = pts.instances[pts.instances > 0]
    sel = pts.select(pts.instances > 0)
    return decoder(sel.positions, sel.relative, sel.voxels, sel.classes, b - 1, styles), sel


def test_building_decoder_output_range_and_style_locality():
    torch.manual_seed(0)
    decoder = BEVPointDecoder(**TINY).eval()
    pts = _points()
    styles = decoder.sample_styles(2, torch.Generator().manual_seed(0))
    rgb, sel = _decode(decoder, pts, styles)
    assert rgb.shape == (len(sel), 3)
    assert float(rgb.min()) >= 0 and float(rgb.max()) <= 1
    # Changing instance 2's style changes only its points (each instance is its own batch item).
    edited = styles.clone()
    edited[1] = torch.randn(16)
    rgb2, _ = _decode(decoder, pts, edited)
    first = sel.instances == 1
    assert torch.allclose(rgb[first], rgb2[first], atol=1e-6)
    assert not torch.allclose(rgb[~first], rgb2[~first])


def test_decoder_gradients_and_point_order_invariance():
    torch.manual_seed(0)
    decoder = BEVPointDecoder(**TINY)
    pts = _points()
    styles = torch.randn(2, 16)
    rgb, sel = _decode(decoder, pts, styles)
    rgb.mean().backward()
    assert decoder.embed[0].weight.grad is not None and decoder.embed[0].weight.grad.abs().sum() > 0
    perm = torch.randperm(len(sel))
    with torch.no_grad():
        rgb_p = decoder(
            sel.positions[perm], sel.relative[perm], sel.voxels[perm], sel.classes[perm], sel.instances[perm] - 1, styles
        )
    assert torch.allclose(rgb.detach()[perm], rgb_p, atol=1e-5)


def test_padded_hierarchy_gives_the_same_colours():
    """The static-shape path of enable_cuda_graphs: padding every level to a capacity leaves the
    real points' colours unchanged (padding rows pool and attend only among themselves)."""
    torch.manual_seed(0)
    decoder = BEVPointDecoder(**TINY).eval()
    sel = _points().select(_points().instances > 0)
    styles = torch.randn(3, 16)
    with torch.no_grad():
        ref = decoder(sel.positions, sel.relative, sel.voxels, sel.classes, sel.instances, styles)
        hierarchy = decoder.hierarchy(sel.voxels, sel.instances, 3)
        cap = hierarchy.capacity()
        padded = hierarchy.padded(cap)
        assert padded.sizes == cap.points and tuple(g.num_groups for g in padded.groups) == cap.groups
        assert all(int(g.lengths.min()) >= 1 and int(g.lengths.max()) <= cap.patch_size for g in padded.groups)
        n, rows = len(sel), cap.points[0]

        def pad(t):
            return torch.cat([t, t.new_zeros(rows - n, *t.shape[1:])])

        out = decoder(pad(sel.positions), pad(sel.relative), None, pad(sel.classes), pad(sel.instances), styles, hierarchy=padded)
    assert out.shape == (rows, 3)
    assert torch.allclose(out[:n], ref, atol=1e-5)
    small = HierarchyCapacity(tuple(p // 4 for p in cap.points), cap.groups, cap.patch_size)
    assert not hierarchy.fits(small) and hierarchy.fits(small.grown_for(cap))
    with pytest.raises(ValueError, match="does not fit capacity"):
        hierarchy.padded(small)
    with pytest.raises(ValueError, match="hierarchy was built for"):
        decoder(sel.positions, sel.relative, None, sel.classes, sel.instances, styles, hierarchy=padded)


@pytest.mark.parametrize("order, grid_size", [("grid", 1), ("z", 1), ("hilbert", 2), ("grid", 3)])
def test_hierarchy_equals_unique_pooling_and_per_level_serialization(order, grid_size):
    """The sort-based build (two host syncs) against the direct definition: each level is the
    unique coarsened cells, parents and counts link the levels, and each level's patches are those
    SerializedAttention cuts on that level's coordinates."""
    g = torch.Generator().manual_seed(1)
    voxels = torch.randint(-9, 12, (300, 3), generator=g)  # dense: cells merge at every level
    voxels[:20] = voxels[20:40]  # duplicate points stay separate rows at level 0
    batch = torch.randint(0, 4, (300,), generator=g)
    batch[batch == 2] = 3  # an empty batch item
    attention = SerializedAttention(8, 2, patch_size=7, order=order, grid_size=grid_size)
    h = PointHierarchy.build(voxels, batch, 5, attention, levels=4)
    assert torch.equal(h.coords[0].long(), torch.cat([batch[:, None], voxels], 1))
    for level, coords in enumerate(h.coords):
        cells = torch.cat([batch[:, None], voxels >> level], 1)
        if level:
            assert torch.equal(torch.unique(coords.long(), dim=0), torch.unique(cells, dim=0))
            assert coords.shape[0] == torch.unique(cells, dim=0).shape[0]
        ref = SerializedAttention(8, 2, patch_size=7, order=order, grid_size=grid_size).groups(
            SparseTensor(torch.zeros(coords.shape[0], 1), coords, batch_size=5, validate=False)
        )
        got = h.groups[level]
        assert torch.equal(coords[got.order], coords[ref.order]) and torch.equal(got.lengths, ref.lengths)
        if level + 1 < len(h.coords):
            parent = h.parents[level]
            up = h.coords[level + 1].long()[parent]
            assert torch.equal(up, torch.cat([coords[:, :1].long(), coords[:, 1:].long() >> 1], 1))
            assert torch.equal(h.counts[level], torch.bincount(parent, minlength=h.coords[level + 1].shape[0]))
    with pytest.raises(ValueError, match="batch_index must lie in"):
        PointHierarchy.build(voxels, batch, 3, attention, levels=2)
    with pytest.raises(ValueError, match="at least one point"):
        PointHierarchy.build(voxels[:0], batch[:0], 5, attention, levels=2)


def test_background_decoder_with_scene_features_and_gaussian_defaults():
    enc = BEVSceneEncoder(base_channels=8, out_channels=4, num_down=1)
    dec = BEVPointDecoder(
        num_freqs=2,
        use_relative=False,
        scene_channels=4,
        enc_depths=(),
        enc_channels=(),
        dec_depths=(),
        dec_channels=(),
        style_dim=8,
        mlp_hidden=16,
        mlp_layers=1,
    )
    sem = torch.full((1, 16, 16), ROAD)
    feats = enc(sem, torch.zeros(1, 16, 16))
    assert feats.shape == (1, 4, 8, 8)
    pts = _points().select(_points().instances == 0)
    f = BEVSceneEncoder.sample(feats, pts.positions[:, :2].double(), (16, 16))
    rgb = dec(
        pts.positions,
        pts.relative,
        pts.voxels,
        pts.classes,
        torch.zeros(len(pts), dtype=torch.long),
        torch.randn(1, 8),
        scene_features=f,
    )
    g = dec.gaussians(pts.positions, pts.strides, pts.classes, rgb, 1.0)
    assert torch.allclose(g.opacities, torch.ones(len(pts)))
    assert torch.allclose(g.quats, torch.tensor([1.0, 0, 0, 0]).expand(len(pts), 4))
    assert torch.allclose(g.scales[:, 0], pts.strides.float() * 0.55)
    assert torch.allclose(g.scales[:, 2], torch.full((len(pts),), 0.1))  # road and ground are flat
    with pytest.raises(ValueError, match="scene_features"):
        dec(pts.positions, pts.relative, pts.voxels, pts.classes, torch.zeros(len(pts), dtype=torch.long), torch.randn(1, 8))


def test_decoder_config_validation_and_wrong_style_size(tmp_path):
    with pytest.raises(ValueError, match="style_distribution"):
        BEVPointDecoder(style_distribution="uniform")
    with pytest.raises(ValueError, match="gaussian_scale_factor"):
        BEVPointDecoder(gaussian_scale_factor=2.0)
    decoder = BEVPointDecoder(**TINY)
    pts = _points()
    with pytest.raises(ValueError, match="styles must be"):
        _decode(decoder, pts, torch.randn(2, 5))
    decoder.save_pretrained(tmp_path)
    again = BEVPointDecoder.from_pretrained(tmp_path)
    assert again.config.style_distribution == "normal" and again.config.style_dim == 16
    for a, b in zip(decoder.parameters(), again.parameters()):
        assert torch.equal(a, b)


def test_layers():
    x = torch.tensor([[0.25, -0.5, 1.0]])
    enc = sincos_encoding(x, 3)
    assert enc.shape == (1, 3 * 7)
    assert torch.allclose(enc[0, 3], torch.sin(torch.tensor(0.25 * torch.pi)))
    pooled = pool_features(torch.tensor([[1.0], [3.0], [5.0], [7.0]]), torch.tensor([0, 0, 2, 1]), torch.tensor([2, 1, 1]))
    assert pooled.flatten().tolist() == [2.0, 7.0, 5.0]
    lin = ModulatedLinear(4, 3, 2)
    out = lin(torch.randn(5, 4), torch.randn(2, 2), torch.tensor([0, 1, 0, 1, 1]))
    assert out.shape == (5, 3)


def test_discriminator_shapes_and_loss():
    d = SemanticDiscriminator(num_classes=8, base_channels=8)
    img = torch.rand(2, 3, 64, 48)
    logits = d(img)
    assert logits.shape == (2, 9, 64, 48)
    seg = torch.randint(0, 8, (2, 64, 48))
    real, fake = d.loss(logits, seg, True), d.loss(logits, seg, False)
    assert real > 0 and fake > 0
    masked = d.loss(logits, seg, True, mask=torch.zeros(2, 64, 48))
    assert float(masked) == 0.0


def test_vgg19_loss_loads_torchvision_keys(tmp_path):
    torch.manual_seed(0)
    ref = VGG19PerceptualLoss()
    state = {f"features.{k}": v.contiguous() for k, v in ref.features.state_dict().items()}
    save_file(state, tmp_path / "vgg.safetensors")
    loaded = VGG19PerceptualLoss.from_weights(tmp_path / "vgg.safetensors")
    a, b = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    assert torch.allclose(ref(a, b), loaded(a, b))
    assert float(loaded(a, a)) == 0.0 and float(loaded(a, b)) > 0
    save_file({"x": torch.zeros(1)}, tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match="lacks VGG19 weights"):
        VGG19PerceptualLoss.from_weights(tmp_path / "bad.safetensors")
    with pytest.raises(FileNotFoundError):
        VGG19PerceptualLoss.from_weights(tmp_path / "missing.safetensors")
