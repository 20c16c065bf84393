"""VGG19 perceptual loss (Johnson et al. 2016), used in training (GaussianCity Sec. 3.5).

The network is defined here (torchvision is not a dependency) with torchvision's layer indexing,
so a safetensors export of torchvision's ``vgg19().features`` state dict (keys ``features.N.*``
or ``N.*``) loads as is. Features relu3_1, relu4_1 and relu5_1 are compared with L1, weighted
0.125, 0.25 and 1.0.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["VGG19PerceptualLoss"]

_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512)
_LAYERS = {11: 0.125, 20: 0.25, 29: 1.0}  # torchvision indices of relu3_1, relu4_1, relu5_1
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


class VGG19PerceptualLoss(nn.Module):
    """Weighted L1 between VGG19 features of two image batches ``[B, 3, H, W]`` in 0..1."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = 3
        for v in _CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(prev, v, 3, padding=1), nn.ReLU(inplace=False)]
                prev = v
        self.features = nn.Sequential(*layers[: max(_LAYERS) + 1])
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)

    @classmethod
    def from_weights(cls, path_or_repo: str | Path, filename: str = "model.safetensors") -> VGG19PerceptualLoss:
        """Load weights from a local safetensors file or ``filename`` of a Hub repo id."""
        from safetensors.torch import load_file

        path = Path(path_or_repo)
        if not path.is_file():
            if path.exists() or str(path_or_repo).endswith(".safetensors"):
                raise FileNotFoundError(f"VGG19 weights not found: {path_or_repo}")
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(str(path_or_repo), filename))
        state = {k.removeprefix("features."): v for k, v in load_file(str(path)).items()}
        model = cls()
        own = model.features.state_dict()
        missing = [k for k in own if k not in state]
        if missing:
            raise ValueError(f"{path} lacks VGG19 weights {missing[:4]} (expected torchvision vgg19 'features' keys)")
        model.features.load_state_dict({k: state[k] for k in own})
        return model

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        x = torch.cat([pred, target]).to(self.mean.dtype)
        x = (x - self.mean) / self.std
        loss = x.new_zeros(())
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in _LAYERS:
                a, b = x.chunk(2)
                loss = loss + _LAYERS[i] * F.l1_loss(a, b)
        return loss
