"""ONNX Runtime backend: CPU by default, CUDAExecutionProvider when the installed build has it."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ros2_bilevel_fusion.backends.base import BackendError, check_inputs
from ros2_bilevel_fusion.core.bundle import ModelBundle

try:  # onnxruntime is a runtime requirement, but keep the node importable without it.
    import onnxruntime as ort
except ImportError:  # pragma: no cover - exercised only where onnxruntime is absent
    ort = None


def choose_providers(available: Sequence[str], device: int = 0) -> list[str | tuple[str, dict]]:
    """CUDA first when this onnxruntime build offers it, CPU always as the fallback."""
    providers: list[str | tuple[str, dict]] = []
    if "CUDAExecutionProvider" in available:
        providers.append(("CUDAExecutionProvider", {"device_id": int(device)}))
    providers.append("CPUExecutionProvider")
    return providers


# A run this many times smaller (in pixels) than the previous one shrinks the CPU arena.
ARENA_SHRINK_RATIO = 1.25


class OnnxRuntimeBackend:
    """Runs the bundle's ONNX graph with onnxruntime; validates graph I/O names at load.

    Memory: onnxruntime's CPU arena keeps the peak of every run for the session's life, so
    one 4096x3072 frame would hold gigabytes until the node exits. The arena stays on (without
    it, steady frames of one size ran ~30% slower here), but the first run after a larger one
    asks onnxruntime to shrink it at the end of that run (``memory.enable_memory_arena_
    shrinkage``): the big frame's buffers are free by then and go back to the system. Steady
    streams of one size never pay for a shrink.
    """

    def __init__(
        self,
        bundle: ModelBundle,
        *,
        threads: int = 0,
        device: int = 0,
        providers: Sequence[str | tuple[str, dict]] | None = None,
    ) -> None:
        if ort is None:
            raise BackendError("onnxruntime is not installed (pip install onnxruntime)")
        self.bundle = bundle
        if not bundle.onnx_path.is_file():
            raise BackendError(f"ONNX file {bundle.onnx_path} is missing")
        options = ort.SessionOptions()
        # 0 lets onnxruntime pick (one thread per core); the node exposes this as `threads`.
        options.intra_op_num_threads = max(0, int(threads))
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only; ORT warnings otherwise flood the node log
        if providers is None:
            providers = choose_providers(ort.get_available_providers(), device)
        try:
            self.session = ort.InferenceSession(
                str(bundle.onnx_path), sess_options=options, providers=list(providers)
            )
        except Exception as exc:  # ORT raises several private exception types for bad files
            raise BackendError(
                f"onnxruntime cannot load {bundle.onnx_path} (corrupt or unsupported ONNX): {exc}"
            ) from exc
        self._validate_io()
        used = self.session.get_providers()[0]
        self.name = f"onnxruntime:{used}"
        self._last_pixels = 0
        self._shrink = ort.RunOptions()
        devices = ["cpu:0"] + (["gpu:0"] if used == "CUDAExecutionProvider" else [])
        self._shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage", ";".join(devices))
        self.arena_shrinks = 0

    def _validate_io(self) -> None:
        inputs = {i.name: i for i in self.session.get_inputs()}
        expected_inputs = {self.bundle.inputs.ir_name: 1, self.bundle.inputs.visible_name: 3}
        if set(inputs) != set(expected_inputs):
            raise BackendError(
                f"{self.bundle.onnx_path}: graph inputs {sorted(inputs)} do not match the "
                f"bundle's {sorted(expected_inputs)}"
            )
        for name, channels in expected_inputs.items():
            shape = inputs[name].shape
            if len(shape) != 4:
                raise BackendError(f"{self.bundle.onnx_path}: input {name} has rank {len(shape)}")
            if isinstance(shape[1], int) and shape[1] != channels:
                raise BackendError(
                    f"{self.bundle.onnx_path}: input {name} has {shape[1]} channels, "
                    f"expected {channels}"
                )
        outputs = {o.name for o in self.session.get_outputs()}
        missing = [n for n in self.bundle.output_names if n not in outputs]
        if missing:
            raise BackendError(
                f"{self.bundle.onnx_path}: graph lacks outputs {missing} named in model.yaml "
                f"(graph has {sorted(outputs)})"
            )

    def infer(self, ir: np.ndarray, visible_ycrcb: np.ndarray) -> dict[str, np.ndarray]:
        ir, visible_ycrcb = check_inputs(self.bundle, ir, visible_ycrcb)
        names = self.bundle.output_names
        pixels = int(ir.shape[2]) * int(ir.shape[3])
        options = None
        if pixels * ARENA_SHRINK_RATIO < self._last_pixels:
            options = self._shrink  # the previous, larger run's buffers go back to the system
            self.arena_shrinks += 1
        self._last_pixels = pixels
        try:
            values = self.session.run(
                names,
                {self.bundle.inputs.ir_name: ir, self.bundle.inputs.visible_name: visible_ycrcb},
                options,
            )
        except Exception as exc:
            raise BackendError(f"onnxruntime inference failed: {exc}") from exc
        return {n: np.asarray(v, dtype=np.float32) for n, v in zip(names, values, strict=True)}
