"""FID / KID through torchmetrics, run offline with a small random conv net standing in for
Inception-v3 (the Inception route needs weights that are not in the repository)."""

import numpy as np
import pytest
import torch
from torch import nn

from diffusers_city.metrics import frechet_inception_distance, inception_feature_extractor, kernel_inception_distance
from diffusers_city.metrics import inception as inception_module


@pytest.fixture
def net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(2)
    )


@pytest.fixture
def image_sets():
    rng = np.random.default_rng(0)
    a, b = (rng.random((40, 24, 32, 3)).astype(np.float32) for _ in range(2))
    shifted = np.clip(b * 0.6 + 0.35, 0, 1)  # less contrast, brighter
    return a, b, shifted


def test_fid_is_zero_for_identical_sets_and_grows_with_a_shift(net, image_sets):
    a, b, shifted = image_sets
    assert abs(frechet_inception_distance(a, a, feature_extractor=net, batch_size=7)) < 1e-6
    same = frechet_inception_distance(b, a, feature_extractor=net)
    far = frechet_inception_distance(shifted, a, feature_extractor=net)
    assert far > 3 * same > 0


def test_kid_is_near_zero_for_one_distribution_and_grows_with_a_shift(net, image_sets):
    a, b, shifted = image_sets
    same = kernel_inception_distance(b, a, feature_extractor=net, subsets=20, subset_size=30)
    far = kernel_inception_distance(shifted, a, feature_extractor=net, subsets=20, subset_size=30)
    assert far["kid_mean"] > 10 * abs(same["kid_mean"])
    assert far["kid_mean"] > 3 * far["kid_std"]
    again = kernel_inception_distance(shifted, a, feature_extractor=net, subsets=20, subset_size=30)
    assert again["kid_mean"] == pytest.approx(far["kid_mean"], rel=1e-5)  # subsets drawn from the seed


def test_a_feature_network_is_required_and_checked(net, image_sets):
    a, b, _ = image_sets
    with pytest.raises(ValueError, match="exactly one feature network"):
        frechet_inception_distance(a, b)
    with pytest.raises(ValueError, match="exactly one feature network"):
        kernel_inception_distance(a, b, feature_extractor=net, weights="x/y/z.pth")
    with pytest.raises(ValueError, match="RGB"):
        frechet_inception_distance(a[..., :2], b[..., :2], feature_extractor=net)
    with pytest.raises(ValueError, match="at least 2 images"):
        frechet_inception_distance(a[:1], b, feature_extractor=net)
    with pytest.raises(ValueError, match="neither an existing file nor a Hub id"):
        inception_feature_extractor("/no/such/inception.pth")
    with pytest.raises(ValueError, match="feature must be one of"):
        inception_feature_extractor("/no/such/inception.pth", feature=100)


def test_weights_resolve_to_a_local_file_or_a_hub_file(tmp_path, monkeypatch):
    local = tmp_path / "inception.pth"
    local.write_bytes(b"")
    assert inception_module._resolve_weights(local) == str(local)
    calls = []

    def fake_download(repo_id, filename):
        calls.append((repo_id, filename))
        return "/cache/" + filename

    monkeypatch.setattr("huggingface_hub.hf_hub_download", fake_download)
    assert inception_module._resolve_weights("owner/repo/weights/inception.pth") == "/cache/weights/inception.pth"
    assert calls == [("owner/repo", "weights/inception.pth")]
