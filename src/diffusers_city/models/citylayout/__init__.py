"""The learned BEV layout generator of CityDreamer (Xie et al., "CityDreamer: Compositional Generative
Model of Unbounded 3D Cities", Sec. 3.1): a VQ tokenizer over BEV crops and a masked-token
(MaskGIT / absorbing diffusion) transformer over its token grid.

Both networks are diffusers' components -- ``VQModel`` (the tokenizer) and ``UVit2DModel``
(aMUSEd's masked-token transformer, sampled with ``AmusedScheduler``; as
``CityLayoutTransformer2DModel``, with the position embeddings it lacks) -- configured by the
presets in ``pipelines/citylayout/presets/``. This package holds what is particular to layouts:
the map <-> tensor codec, the tokenizer's losses, the transformer's (null) conditioning and its
position embeddings.
"""

from .transformer_citylayout import CityLayoutTransformer2DModel

__all__ = ["CityLayoutTransformer2DModel"]
