"""EarthCrafter pipeline: semantic map, aerial image or nothing -> a 3D tile of voxels and 2D Gaussians."""

from ..._registration import System
from .pipeline_earthcrafter import EarthCrafterPipeline
from .pipeline_output import EarthCrafterPipelineOutput

# No trained default ships yet: the demo leaves EarthCrafter out until one does.
SYSTEM = System(
    name="earthcrafter",
    pipeline="EarthCrafterPipeline",
    description="semantic map / aerial image / nothing -> 3D tile with the EarthCrafter pipeline",
    has_demo=False,
)

__all__ = ["EarthCrafterPipeline", "EarthCrafterPipelineOutput"]
