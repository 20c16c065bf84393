"""BEV layouts as tensors for diffusers' ``VQModel`` and ``UVit2DModel`` (CityDreamer Sec. 3.1).

A layout crop is ``1 + NUM_CLASSES`` channels: the height divided by ``height_scale`` (metres per
unit) and the one-hot classes of the project's class table. The tokenizer (``VQModel`` with
``in_channels = out_channels = LAYOUT_CHANNELS``) reconstructs the scaled height in channel 0 and
class logits in the others; its tokens are the codebook indices of the quantised latent grid,
``token_factor`` pixels on a side.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...data.classes import NUM_CLASSES

__all__ = [
    "LAYOUT_CHANNELS",
    "decode_tokens",
    "encode_tokens",
    "layout_tensor",
    "layout_vq_loss",
    "null_condition",
    "split_output",
    "token_factor",
]

LAYOUT_CHANNELS = 1 + NUM_CLASSES
"""Channels of a layout tensor: scaled height, then one per class."""

# Loss weights of the reference tokenizer: 5 L1 height + 10 smoothness + class CE + VQ.
_HEIGHT_WEIGHT, _SMOOTH_WEIGHT, _CLASS_WEIGHT, _VQ_WEIGHT = 5.0, 10.0, 1.0, 1.0


def token_factor(vqvae) -> int:
    """Pixels per token side: the tokenizer downsamples by 2 per encoder block after the first."""
    return 2 ** (len(vqvae.config.block_out_channels) - 1)


def layout_tensor(semantic: torch.Tensor, height: torch.Tensor, height_scale: float) -> torch.Tensor:
    """``[B, LAYOUT_CHANNELS, H, W]`` float tensor of class ids ``semantic`` and heights (metres)
    ``height``, both ``[B, H, W]``."""
    classes = F.one_hot(semantic.long(), NUM_CLASSES).permute(0, 3, 1, 2).to(height.dtype)
    return torch.cat([(height / height_scale)[:, None], classes], dim=1)


def split_output(sample: torch.Tensor, height_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Class logits ``[B, NUM_CLASSES, H, W]`` and heights in metres ``[B, H, W]`` of a tokenizer output."""
    return sample[:, 1:], sample[:, 0] * height_scale


def _gradient_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean L1 difference of the horizontal and vertical finite differences of two ``[B, H, W]`` maps:
    flat roofs and streets stay flat and height steps stay sharp (the smoothness term)."""
    dx = (pred.diff(dim=-1) - target.diff(dim=-1)).abs().mean()
    dy = (pred.diff(dim=-2) - target.diff(dim=-2)).abs().mean()
    return dx + dy


def layout_vq_loss(
    sample: torch.Tensor, semantic: torch.Tensor, height: torch.Tensor, commit_loss: torch.Tensor, height_scale: float
) -> dict[str, torch.Tensor]:
    """The tokenizer's objective on a reconstruction ``sample`` of the layout (``semantic``,
    ``height`` in metres, ``[B, H, W]``): 5 L1 on the scaled height, 10 smoothness (L1 of its
    finite differences), class cross-entropy and the codebook / commitment loss of the
    quantiser. Returns the terms and their weighted ``loss``."""
    scaled = height / height_scale
    terms = {
        "height_l1": (sample[:, 0] - scaled).abs().mean(),
        "smoothness": _gradient_l1(sample[:, 0], scaled),
        "class_ce": F.cross_entropy(sample[:, 1:], semantic.long()),
        "vq": commit_loss.mean(),
    }
    terms["loss"] = (
        _HEIGHT_WEIGHT * terms["height_l1"]
        + _SMOOTH_WEIGHT * terms["smoothness"]
        + _CLASS_WEIGHT * terms["class_ce"]
        + _VQ_WEIGHT * terms["vq"]
    )
    return terms


def _embed_dim(vqvae) -> int:
    return int(vqvae.config.vq_embed_dim or vqvae.config.latent_channels)


def encode_tokens(vqvae, layout: torch.Tensor) -> torch.Tensor:
    """Codebook indices ``[B, H / f, W / f]`` of layout tensors ``[B, C, H, W]`` (``f = token_factor``)."""
    latents = vqvae.encode(layout).latents
    _, _, (_, _, indices) = vqvae.quantize(latents)
    return indices.reshape(latents.shape[0], latents.shape[2], latents.shape[3])


def decode_tokens(vqvae, tokens: torch.Tensor) -> torch.Tensor:
    """Tokenizer output ``[B, LAYOUT_CHANNELS, h f, w f]`` of a token grid ``[B, h, w]``."""
    b, h, w = tokens.shape
    quant = vqvae.quantize.get_codebook_entry(tokens.reshape(-1), (b, h, w, _embed_dim(vqvae)))
    return vqvae.decode(quant.to(vqvae.dtype), force_not_quantize=True).sample


def null_condition(transformer, batch: int, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The conditioning inputs of ``UVit2DModel`` for an unconditional layout model: zeros for the
    text-encoder states, the pooled embedding and the micro-conditions (one token, constant)."""
    config = transformer.config
    micro = config.micro_cond_embed_dim // config.micro_cond_encode_dim
    return {
        "encoder_hidden_states": torch.zeros(batch, 1, config.encoder_hidden_size, device=device, dtype=dtype),
        "pooled_text_emb": torch.zeros(batch, config.cond_embed_dim, device=device, dtype=dtype),
        "micro_conds": torch.zeros(batch, micro, device=device, dtype=dtype),
    }
