"""EarthCrafter pipeline: semantic map, aerial image or nothing -> a 3D tile of voxels and 2D Gaussians."""

from ..._systems import System, lazy_exports

# No default ships yet (the training state in training/state/ is not city-like): the demo leaves it out.
SYSTEM = System(
    name="earthcrafter",
    pipeline="EarthCrafterPipeline",
    description="semantic map / aerial image / nothing -> 3D tile with the EarthCrafter pipeline",
    has_demo=False,
)

__all__ = ["EarthCrafterPipeline", "EarthCrafterPipelineOutput"]
# imported on first use, so that the CLI lists the systems without importing a pipeline
__getattr__ = lazy_exports(
    globals(), {"EarthCrafterPipeline": "pipeline_earthcrafter", "EarthCrafterPipelineOutput": "pipeline_output"}
)
