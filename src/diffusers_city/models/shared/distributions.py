"""The diagonal-Gaussian posterior of every VAE here, on dense grids and on sparse voxels.

It has the interface of diffusers' ``DiagonalGaussianDistribution`` (``sample``, ``mode``,
``kl``, ``mean``, ``logvar``, ``std``), but its parameters are channels-second dense tensors of
any rank or a :class:`~diffusers_city.sparse.SparseTensor` (channels last, one row per voxel),
and its KL is summed over channels and averaged over latent positions, so that the same KL
weight means the same for a dense and a sparse latent.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from ...sparse import SparseTensor

__all__ = ["AutoencoderOutput", "DiagonalGaussianDistribution"]


class DiagonalGaussianDistribution:
    """N(mean, exp(logvar)) from ``parameters`` = ``[mean, logvar]`` stacked along the channels
    (dim 1 of a dense ``[B, 2C, ...]`` tensor, the feature columns of a sparse ``[N, 2C]``).
    ``logvar`` is clamped to [-30, 20] as in diffusers."""

    def __init__(self, parameters: torch.Tensor | SparseTensor, deterministic: bool = False) -> None:
        self.parameters = parameters
        feats = parameters.feats if isinstance(parameters, SparseTensor) else parameters
        mean, logvar = torch.chunk(feats, 2, dim=1)
        self._mean, self._logvar = mean, torch.clamp(logvar, -30.0, 20.0)
        self.deterministic = deterministic
        if deterministic:
            self._logvar = torch.full_like(mean, -30.0)

    def _wrap(self, t: torch.Tensor) -> torch.Tensor | SparseTensor:
        return self.parameters.replace(t) if isinstance(self.parameters, SparseTensor) else t

    @property
    def mean(self) -> torch.Tensor | SparseTensor:
        return self._wrap(self._mean)

    @property
    def logvar(self) -> torch.Tensor | SparseTensor:
        return self._wrap(self._logvar)

    @property
    def std(self) -> torch.Tensor | SparseTensor:
        return self._wrap(torch.exp(0.5 * self._logvar))

    def mode(self) -> torch.Tensor | SparseTensor:
        return self.mean

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor | SparseTensor:
        """Reparameterised sample (differentiable in mean and logvar)."""
        noise = randn_tensor(self._mean.shape, generator=generator, device=self._mean.device, dtype=self._mean.dtype)
        return self._wrap(self._mean + torch.exp(0.5 * self._logvar) * noise)

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)), summed over channels, averaged over latent positions (a scalar)."""
        if self.deterministic:
            return self._mean.new_zeros(())
        kl = 0.5 * (self._mean.square() + self._logvar.exp() - 1.0 - self._logvar)
        return kl.sum(1).mean()


@dataclass
class AutoencoderOutput(BaseOutput):
    """What ``encode`` returns (diffusers' ``AutoencoderKLOutput``): ``latent_dist``, the posterior."""

    latent_dist: DiagonalGaussianDistribution
