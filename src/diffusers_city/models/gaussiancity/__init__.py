"""GaussianCity components (Xie et al., "Generative Gaussian Splatting for Unbounded 3D City
Generation"): the BEV scene encoder, the BEV-point decoder (building and background instances)
and the semantic discriminator used in training."""

from .bev_point_decoder import BEVPointDecoder
from .bev_scene_encoder import BEVSceneEncoder
from .semantic_discriminator import SemanticDiscriminator

__all__ = ["BEVPointDecoder", "BEVSceneEncoder", "SemanticDiscriminator"]
