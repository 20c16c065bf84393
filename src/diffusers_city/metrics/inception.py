"""FID and KID of rendered images through torchmetrics, with the feature network chosen by the
caller: Inception-v3 from a weights file given as a local path or a Hub id (never downloaded
behind the caller's back), or any module mapping images to feature vectors.

Needs the ``metrics`` extra (torchmetrics; the Inception route also torch-fidelity and
torchvision, ``torchmetrics[image]``). Nothing is imported or downloaded at import time.
"""

from __future__ import annotations

import importlib
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from ._common import as_images

__all__ = ["frechet_inception_distance", "inception_feature_extractor", "kernel_inception_distance"]

_INCEPTION_FEATURES = (64, 192, 768, 2048)
_WEIGHTS_HINT = (
    "torch-fidelity's converted Inception-v3 weights (weights-inception-2015-12-05-6726825d.pth), "
    "as a local file path or a Hub id 'owner/repo/path/in/repo.pth'"
)


def _torchmetrics(module: str, name: str):
    """``torchmetrics.image.<module>.<name>``, with the install hint when torchmetrics is missing."""
    try:
        return getattr(importlib.import_module(f"torchmetrics.image.{module}"), name)
    except ImportError as err:
        raise ImportError(f"FID / KID need torchmetrics ({err}): pip install 'diffusers-city[metrics]'") from err


def _resolve_weights(weights: str | os.PathLike) -> str:
    """A local weights file: ``weights`` itself when it exists, else a Hub file ``owner/repo/filename``."""
    path = Path(weights).expanduser()
    if path.is_file():
        return str(path)
    parts = str(weights).split("/")
    if isinstance(weights, os.PathLike) or len(parts) < 3 or not all(parts):
        raise ValueError(f"Inception weights {str(weights)!r} is neither an existing file nor a Hub id; expected {_WEIGHTS_HINT}")
    from huggingface_hub import hf_hub_download

    return hf_hub_download(repo_id="/".join(parts[:2]), filename="/".join(parts[2:]))


class _Features(nn.Module):
    """A feature network with the ``num_features`` torchmetrics reads, outputs flattened; with
    ``uint8`` the float images in 0..1 are quantised first (torch-fidelity's Inception takes uint8)."""

    def __init__(self, net: nn.Module, num_features: int, uint8: bool = False):
        super().__init__()
        self.net = net
        self.num_features = num_features
        self.uint8 = uint8

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.uint8:
            images = (images * 255).round().clamp(0, 255).to(torch.uint8)
        return self.net(images).reshape(len(images), -1)


def inception_feature_extractor(weights: str | os.PathLike, *, feature: int = 2048) -> nn.Module:
    """The FID Inception-v3 (torch-fidelity's port of the TensorFlow graph, as torchmetrics uses
    it) loaded from ``weights`` (a local file or a Hub id ``owner/repo/filename``), returning
    ``feature``-dimensional features (64, 192, 768 or 2048, the pool-3 layer) of float images
    ``[B, 3, H, W]`` in 0..1. For :func:`frechet_inception_distance` / :func:`kernel_inception_distance`."""
    if feature not in _INCEPTION_FEATURES:
        raise ValueError(f"feature must be one of {_INCEPTION_FEATURES}, got {feature!r}")
    path = _resolve_weights(weights)
    NoTrainInceptionV3 = _torchmetrics("fid", "NoTrainInceptionV3")
    try:
        net = NoTrainInceptionV3(name="inception-v3-compat", features_list=[str(feature)], feature_extractor_weights_path=path)
    except ModuleNotFoundError as err:
        raise ImportError(
            f"the Inception network needs torch-fidelity and torchvision ({err}): pip install 'diffusers-city[metrics]'"
        ) from err
    return _Features(net, feature, uint8=True)


def _prepare(generated, reference, feature_extractor, weights, min_images: int):
    """Both image sets as float32 ``[B, 3, H, W]`` and the feature network, after every check."""
    if (feature_extractor is None) == (weights is None):
        raise ValueError(
            "FID / KID need exactly one feature network: weights= "
            f"{_WEIGHTS_HINT}, or feature_extractor= a module mapping [B, 3, H, W] images in 0..1 to [B, F] features"
        )
    sets = []
    for name, x in (("generated", generated), ("reference", reference)):
        x = as_images(name, x)
        if x.shape[1] != 3:
            raise ValueError(f"{name} must be RGB images [B, H, W, 3], got {x.shape[1]} channels")
        if len(x) < min_images:
            raise ValueError(f"{name} needs at least {min_images} images, got {len(x)}")
        sets.append(x.float())
    if feature_extractor is None:
        feature_extractor = inception_feature_extractor(weights)
    elif not isinstance(feature_extractor, nn.Module):
        raise ValueError(f"feature_extractor must be a torch.nn.Module, got {type(feature_extractor).__name__}")
    device = next(iter(feature_extractor.parameters()), torch.empty(0)).device
    feature_extractor.eval()
    if not hasattr(feature_extractor, "num_features"):
        with torch.no_grad():
            probe = feature_extractor(sets[1][:1].to(device))
        feature_extractor = _Features(feature_extractor, int(probe[0].numel()))
    return sets[0], sets[1], feature_extractor, device


def _feed(metric, images: torch.Tensor, real: bool, batch_size: int, device) -> None:
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            metric.update(images[i : i + batch_size].to(device), real=real)


def frechet_inception_distance(
    generated,
    reference,
    *,
    weights: str | os.PathLike | None = None,
    feature_extractor: nn.Module | None = None,
    batch_size: int = 32,
) -> float:
    """Fréchet distance between Gaussians fitted to the features of ``generated`` and
    ``reference`` images (``[B, H, W, 3]`` in 0..1, at least 2 each), computed by
    ``torchmetrics.image.FrechetInceptionDistance``. The features come from Inception-v3
    loaded from ``weights`` (FID proper, see :func:`inception_feature_extractor`) or from
    ``feature_extractor`` (comparable only with numbers from the same network)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    gen, ref, net, device = _prepare(generated, reference, feature_extractor, weights, 2)
    metric = _torchmetrics("fid", "FrechetInceptionDistance")(feature=net).to(device)
    _feed(metric, ref, True, batch_size, device)
    _feed(metric, gen, False, batch_size, device)
    return float(metric.compute())


def kernel_inception_distance(
    generated,
    reference,
    *,
    weights: str | os.PathLike | None = None,
    feature_extractor: nn.Module | None = None,
    subsets: int = 100,
    subset_size: int = 1000,
    batch_size: int = 32,
    seed: int = 0,
) -> dict[str, float]:
    """Kernel Inception distance (unbiased polynomial-kernel MMD^2 of the features, Binkowski
    et al. 2018) by ``torchmetrics.image.KernelInceptionDistance``: ``{"kid_mean", "kid_std"}``
    over ``subsets`` random subsets of ``min(subset_size, smallest set)`` images drawn from
    ``seed``. Images and feature networks as for :func:`frechet_inception_distance`."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if subsets < 1 or subset_size < 2:
        raise ValueError(f"subsets must be >= 1 and subset_size >= 2, got {subsets} and {subset_size}")
    gen, ref, net, device = _prepare(generated, reference, feature_extractor, weights, 2)
    size = min(subset_size, len(gen), len(ref))
    with warnings.catch_warnings():  # KID keeps every feature vector (torchmetrics warns); the images are in memory already
        warnings.filterwarnings("ignore", message=".*will save all extracted features", category=UserWarning)
        metric = _torchmetrics("kid", "KernelInceptionDistance")(feature=net, subsets=subsets, subset_size=size).to(device)
    _feed(metric, ref, True, batch_size, device)
    _feed(metric, gen, False, batch_size, device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        mean, std = metric.compute()
    return {"kid_mean": float(mean), "kid_std": float(std)}
