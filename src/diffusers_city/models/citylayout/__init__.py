"""The learned BEV layout generator of CityDreamer (Xie et al., "CityDreamer: Compositional Generative
Model of Unbounded 3D Cities", Sec. 3.1): a VQ tokenizer over BEV crops and a masked-token
(MaskGIT / absorbing diffusion) transformer over its token grid.

Both networks are diffusers' own components -- ``VQModel`` (the tokenizer) and ``UVit2DModel``
(aMUSEd's masked-token transformer, sampled with ``AmusedScheduler``) -- configured by the
presets in ``pipelines/citylayout/presets/``. This package holds what is particular to layouts:
the map <-> tensor codec, the tokenizer's losses and the transformer's (null) conditioning.
"""

# No model classes of its own (the networks are diffusers' VQModel / UVit2DModel): nothing joins
# the package's exports; import the codec from ``models.citylayout.layout_codec``.
__all__: list[str] = []
