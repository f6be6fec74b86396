"""Inference backends behind one interface (base.InferenceBackend) and the factory that picks one.

Heavy or optional libraries (tensorrt, CUDA, torch) are imported only inside the factory branch
that needs them, so importing the node never pulls in torch or TensorRT.

May import: ``core``, numpy, OpenCV, onnxruntime, tensorrt and CUDA bindings; torch only in
``torch_backend`` (which loads the TorchScript file the export wrote) and for the optional
device buffers of ``tensorrt_backend``. Never rclpy, ROS messages or training.
"""

from __future__ import annotations

from ros2_bilevel_fusion.backends.base import BackendError, InferenceBackend
from ros2_bilevel_fusion.core.bundle import ModelBundle

BACKEND_KINDS = ("auto", "tensorrt", "onnxruntime", "torch")

__all__ = ["BACKEND_KINDS", "BackendError", "InferenceBackend", "create_backend", "tensorrt_usable"]


def tensorrt_usable(device: int = 0) -> tuple[bool, str]:
    """(True, "") when tensorrt imports and a CUDA device answers; else (False, why)."""
    try:
        import tensorrt  # noqa: F401
    except ImportError as exc:
        return False, f"tensorrt not importable ({exc})"
    from ros2_bilevel_fusion.backends.tensorrt_backend import open_cuda

    try:
        open_cuda(device)
    except BackendError as exc:
        return False, str(exc)
    return True, ""


def create_backend(
    kind: str,
    bundle: ModelBundle,
    *,
    fp16: bool = False,
    device: int = 0,
    threads: int = 0,
) -> InferenceBackend:
    """Create the named backend; ``auto`` = TensorRT when it and CUDA work, else onnxruntime."""
    kind = kind.strip().lower()
    if kind not in BACKEND_KINDS:
        raise BackendError(f"unknown backend {kind!r}; choose one of {', '.join(BACKEND_KINDS)}")
    if kind == "auto":
        usable, _why = tensorrt_usable(device)
        kind = "tensorrt" if usable else "onnxruntime"
    if kind == "tensorrt":
        from ros2_bilevel_fusion.backends.tensorrt_backend import TensorRTBackend

        return TensorRTBackend(bundle, fp16=fp16, device=device)
    if kind == "torch":
        from ros2_bilevel_fusion.backends.torch_backend import TorchBackend

        return TorchBackend(bundle, threads=threads)
    from ros2_bilevel_fusion.backends.onnxruntime_backend import OnnxRuntimeBackend

    return OnnxRuntimeBackend(bundle, threads=threads, device=device)
