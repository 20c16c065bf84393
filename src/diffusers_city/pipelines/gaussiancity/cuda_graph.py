"""The building decoder replayed as a CUDA graph, frame after frame.

The visible points change every frame, so their number does too. Per frame the point U-Net's
structure (pooled levels, serialized patches) is built eagerly, then padded to a capacity: fixed
rows and patches per level, with headroom. At fixed capacity the feature pass (every layer of
the point transformer and the modulated MLP) has static shapes and replays one captured graph.
A frame that does not fit grows the capacity and is captured again; over a trajectory the
capacity settles after a few frames.
"""

from __future__ import annotations

import torch

from ...models.gaussiancity import BEVPointDecoder
from ...models.gaussiancity.point_hierarchy import HierarchyCapacity, PointHierarchy
from ...utils.cuda_graph import CapturedCall


def _pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    return torch.cat([t, t.new_zeros(rows - t.shape[0], *t.shape[1:])])


class GraphedPointDecoder:
    """``decoder(positions, relative, voxels, classes, batch_index, styles)`` (no gradients, CUDA)
    through a captured graph at a growing capacity; ``captures`` counts the captures so far."""

    def __init__(self, decoder: BEVPointDecoder) -> None:
        self.decoder = decoder
        self.capacity: HierarchyCapacity | None = None
        self.call: CapturedCall | None = None
        self.key: tuple | None = None
        self.captures = 0

    def _state(self, styles: torch.Tensor) -> tuple:
        """What a captured graph depends on besides the capacity: style table, weights, autocast."""
        weight = next(self.decoder.parameters())
        autocast = torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")
        return tuple(styles.shape), styles.dtype, weight.data_ptr(), weight.dtype, autocast

    def __call__(
        self,
        positions: torch.Tensor,
        relative: torch.Tensor,
        voxels: torch.Tensor,
        classes: torch.Tensor,
        batch_index: torch.Tensor,
        styles: torch.Tensor,
    ) -> torch.Tensor:
        n = positions.shape[0]
        hierarchy = self.decoder.hierarchy(voxels, batch_index, styles.shape[0])
        state = self._state(styles)
        if self.capacity is None or not hierarchy.fits(self.capacity):
            fresh = hierarchy.capacity()
            grown = fresh if self.capacity is None else self.capacity.grown_for(fresh)
            self.capacity = grown if hierarchy.fits(grown) else fresh
            self.call = None
        if state != self.key:
            self.call, self.key = None, state
        padded = hierarchy.padded(self.capacity)
        rows = self.capacity.points[0]
        inputs = [
            _pad_rows(positions, rows),
            _pad_rows(relative, rows),
            _pad_rows(classes, rows),
            _pad_rows(batch_index, rows),
            styles,
            *padded.device_tensors(),
        ]
        if self.call is None:
            self.call = CapturedCall(self._feature_pass(padded), inputs)
            self.captures += 1
        return self.call(*inputs)[:n].clone()

    def _feature_pass(self, template: PointHierarchy):
        def run(positions, relative, classes, batch_index, styles, *index_tensors):
            hierarchy = template.from_device_tensors(index_tensors)
            return self.decoder(positions, relative, None, classes, batch_index, styles, hierarchy=hierarchy)

        return run
