"""The one small interface every inference backend implements."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from ros2_bilevel_fusion.core.bundle import ModelBundle


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


def check_inputs(
    bundle: ModelBundle, ir: np.ndarray, visible_ycrcb: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Validate the shapes every backend expects and return contiguous float32 copies/views.

    Raises BackendError with the offending shape, so a caller's bug never turns into an opaque
    error from deep inside onnxruntime or TensorRT.
    """
    ir = np.ascontiguousarray(ir, dtype=np.float32)
    visible_ycrcb = np.ascontiguousarray(visible_ycrcb, dtype=np.float32)
    if ir.ndim != 4 or ir.shape[1] != 1:
        raise BackendError(f"ir must be [N, 1, H, W], got {list(ir.shape)}")
    if visible_ycrcb.ndim != 4 or visible_ycrcb.shape[1] != 3:
        raise BackendError(f"visible_ycrcb must be [N, 3, H, W], got {list(visible_ycrcb.shape)}")
    if ir.shape[0] != visible_ycrcb.shape[0] or ir.shape[2:] != visible_ycrcb.shape[2:]:
        raise BackendError(
            f"ir {list(ir.shape)} and visible_ycrcb {list(visible_ycrcb.shape)} differ in N/H/W"
        )
    height, width = ir.shape[2:]
    spec = bundle.inputs
    if spec.height and spec.width:
        if (height, width) != (spec.height, spec.width):
            raise BackendError(
                f"bundle was exported for {spec.height}x{spec.width} only, got {height}x{width}"
            )
    elif spec.pad_multiple > 1 and (height % spec.pad_multiple or width % spec.pad_multiple):
        raise BackendError(
            f"H and W ({height}x{width}) must be multiples of {spec.pad_multiple} (pad first)"
        )
    return ir, visible_ycrcb
