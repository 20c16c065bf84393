"""Fit a layout's style table to photos of the city: inversion of the style codes, decoders frozen.

GaussianCity draws one style code per building at random (Sec. 3.4); the layout alone cannot say
which facade colour a real building has. Given views of the city (images + cameras), the codes
that make the renders match them are found by gradient descent through the differentiable decode
and rasterization, with the codes' standard-normal prior as a penalty so they stay where the
decoders were trained. The fitted table then renders new views of the same city, or is edited
like any other style table.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ...models.gaussiancity.bev import BEVLayout, visible_bev_points
from ...render import Cameras, render_gaussians
from ..pipeline_utils import progress_bar

if TYPE_CHECKING:
    from .pipeline_gaussiancity import GaussianCityPipeline


def check_views(cameras: Cameras, images: torch.Tensor, masks: torch.Tensor | None) -> torch.Tensor:
    """The views' masks ``[N, H, W]`` (all True when ``masks`` is None), after checking that
    ``images`` are ``[N, H, W, 3]`` finite values in [0, 1] matching ``cameras`` and ``masks``."""
    if not isinstance(cameras, Cameras):
        raise ValueError(f"cameras must be a diffusers_city.render.Cameras, got {type(cameras).__name__}")
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        raise ValueError("images must be a float torch.Tensor [N, H, W, 3] with values in [0, 1]")
    expected = (len(cameras), cameras.height, cameras.width, 3)
    if tuple(images.shape) != expected:
        raise ValueError(f"images must have shape [num_cameras, height, width, 3] = {list(expected)}, got {list(images.shape)}")
    if not bool(torch.isfinite(images).all()):
        raise ValueError("images contain NaN or infinite values")
    if float(images.min()) < 0 or float(images.max()) > 1:
        raise ValueError(f"images must lie in [0, 1], got [{float(images.min()):.3g}, {float(images.max()):.3g}]")
    if masks is None:
        return torch.ones(expected[:3], dtype=torch.bool)
    if not isinstance(masks, torch.Tensor) or masks.dtype != torch.bool or tuple(masks.shape) != expected[:3]:
        got = list(masks.shape) if isinstance(masks, torch.Tensor) else type(masks).__name__
        raise ValueError(f"masks must be a bool torch.Tensor [num_cameras, height, width] = {list(expected[:3])}, got {got}")
    if not bool(masks.any()):
        raise ValueError("masks cover no pixel: nothing to fit")
    return masks


def fit_styles(
    pipe: GaussianCityPipeline,
    layout: BEVLayout,
    cameras: Cameras,
    images: torch.Tensor,
    masks: torch.Tensor | None,
    styles: torch.Tensor,
    num_steps: int,
    learning_rate: float,
    prior_weight: float,
) -> torch.Tensor:
    """``styles`` after ``num_steps`` Adam steps on the masked mean squared error of the views'
    renders (every view each step) plus ``prior_weight`` x the mean squared code. See
    ``GaussianCityPipeline.fit_styles``."""
    device = pipe._execution_device
    host_cams = layout.layout_cameras(cameras.to("cpu"))  # world -> layout frame, where decoding and rasterization run
    cams = host_cams.to(device)
    max_distance = float(pipe.scene_encoder.config.max_view_distance)
    with torch.no_grad():  # visibility does not depend on the styles: one ray cast per view
        points = [visible_bev_points(layout, host_cams[i], max_distance=max_distance, device=device) for i in range(len(cams))]
    shown = [i for i, pts in enumerate(points) if len(pts)]  # a view that shows nothing adds no gradient
    if not shown:
        raise ValueError("no camera sees the layout: nothing to fit")
    targets, weights = images.to(device), masks.to(device)[..., None].float()
    norm = weights.sum() * 3
    codes = styles.detach().to(device).clone().requires_grad_(True)
    optimizer = torch.optim.Adam([codes], lr=learning_rate)
    for _ in progress_bar(pipe, "gaussiancity fit styles", iterable=range(num_steps)):
        optimizer.zero_grad(set_to_none=True)
        grad = torch.zeros_like(codes)
        for i in shown:  # one view's graph at a time: the memory of one frame
            rgb = render_gaussians(pipe.decode_points(layout, points[i], codes, device), cams[i]).rgb[0]
            loss = ((rgb - targets[i]).square() * weights[i]).sum() / norm
            grad += torch.autograd.grad(loss, codes)[0]  # codes only: no decoder weight gradients
        grad += torch.autograd.grad(prior_weight * codes.square().mean(), codes)[0]
        codes.grad = grad
        optimizer.step()
    return codes.detach().to(styles.device)
