"""Sat2City components (Hua et al., "Sat2City: 3D City Generation from A Single Satellite Image
with Cascaded Latent Diffusion"): the triplet-bottleneck VAEs, the height-field condition encoder
and the dense / sparse 3D ADM denoisers."""

from .dense_geometry_vae import Sat2CityDenseVAE
from .dense_unet_3d import Sat2CityDenseUNet3D
from .height_field_encoder import HeightFieldEncoder
from .sparse_geometry_vae import Sat2CitySparseVAE
from .sparse_unet_3d import Sat2CitySparseUNet3D

# Names these classes were saved under before they carried their family's name (still loadable).
LEGACY_NAMES = {
    "DenseGeometryVAE": Sat2CityDenseVAE,
    "DenseUNet3D": Sat2CityDenseUNet3D,
    "SparseGeometryVAE": Sat2CitySparseVAE,
    "SparseUNet3D": Sat2CitySparseUNet3D,
}

__all__ = ["Sat2CityDenseVAE", "Sat2CityDenseUNet3D", "HeightFieldEncoder", "Sat2CitySparseVAE", "Sat2CitySparseUNet3D"]
