"""Sat2City components (Hua et al., "Sat2City: 3D City Generation from A Single Satellite Image
with Cascaded Latent Diffusion"): the triplet-bottleneck VAEs, the height-field condition encoder
and the dense / sparse 3D ADM denoisers."""

from .dense_geometry_vae import DenseGeometryVAE
from .dense_unet_3d import DenseUNet3D
from .height_field_encoder import HeightFieldEncoder
from .sparse_geometry_vae import SparseGeometryVAE
from .sparse_unet_3d import SparseUNet3D

__all__ = ["DenseGeometryVAE", "DenseUNet3D", "HeightFieldEncoder", "SparseGeometryVAE", "SparseUNet3D"]
