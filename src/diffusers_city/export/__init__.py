"""Writers for scenes and generated content: point PLY, mesh GLB / OBJ, 3D Gaussian splat PLY,
LAS / LAZ, preview PNG, orbit GIF, captioned sheets, GIF / MP4. Every writer goes through `atomic_write` (temp file in the
destination folder, then rename) and validates its input before opening any file."""

from .atomic import atomic_write, crs_to_wkt, resolve_offset, write_georef_sidecar, write_text_atomic
from .las import write_las
from .mesh import mesh_from_points, mesh_from_voxels, write_mesh
from .ply import write_point_ply
from .preview import captioned, grid, raster_image, write_image, write_orbit, write_preview
from .splat import SH_C0, GaussianSplat, read_gaussian_ply, write_gaussian_ply
from .video import write_video

__all__ = [
    "GaussianSplat",
    "SH_C0",
    "atomic_write",
    "captioned",
    "crs_to_wkt",
    "grid",
    "mesh_from_points",
    "mesh_from_voxels",
    "raster_image",
    "read_gaussian_ply",
    "resolve_offset",
    "write_georef_sidecar",
    "write_gaussian_ply",
    "write_image",
    "write_las",
    "write_mesh",
    "write_orbit",
    "write_point_ply",
    "write_preview",
    "write_text_atomic",
    "write_video",
]
