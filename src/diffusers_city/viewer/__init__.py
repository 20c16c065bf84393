"""Interactive 3D views in the browser: ``diffusers-city view PATH`` and ``diffusers-city app``.

Reading (``content``, ``layers``, ``tiles``) is plain numpy and knows no viewer library; the view
(``scene_view``), the server (``server``) and the app (``app``) use viser, the ``viewer`` extra.
"""

from .content import ViewContent, load_view
from .layers import GaussianLayer, Layer, MeshLayer, PointLayer
from .tiles import Tile, TileIndex, read_tile_index

__all__ = [
    "GaussianLayer",
    "Layer",
    "MeshLayer",
    "PointLayer",
    "Tile",
    "TileIndex",
    "ViewContent",
    "load_view",
    "read_tile_index",
]
