"""The one small interface every inference backend implements."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from ros2_bilevel_fusion.bundle import ModelBundle


class BackendError(RuntimeError):
    """A backend cannot be created or cannot run the bundle (missing library, bad model)."""


class InferenceBackend(Protocol):
    #: "onnxruntime", "tensorrt" or "torch", plus detail such as the provider, for diagnostics.
    name: str
    bundle: ModelBundle

    def infer(self, ir: np.ndarray, visible_ycrcb: np.ndarray) -> dict[str, np.ndarray]:
        """Run the graph.

        ir: float32 [1, 1, H, W], visible_ycrcb: float32 [1, 3, H, W], both in [0, 1], H and W
        already padded to bundle.inputs.pad_multiple. Returns every output of
        ``bundle.output_names`` by name, as float32 numpy arrays.
        """
        ...
