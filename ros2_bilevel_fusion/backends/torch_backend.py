"""PyTorch backend: runs the bundle's TorchScript file, for parity checks against the ONNX.

The export writes ``model.pt``, a ``torch.jit.trace`` of the same module the ONNX file was traced
from, and names it in model.yaml (``torchscript``, :attr:`ModelBundle.torchscript_path`); a
bundle without one, or whose file is a plain state_dict, is refused with a clear error.
``torch.jit.load`` needs no training code. Its ``forward(ir, visible_ycrcb)`` returns the outputs in
``bundle.output_names`` order. torch is imported only when this backend is created.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from ros2_bilevel_fusion.backends.base import BackendError, check_inputs
from ros2_bilevel_fusion.core.bundle import ModelBundle


class TorchBackend:
    def __init__(self, bundle: ModelBundle, *, device: str = "cpu", threads: int = 0) -> None:
        self.bundle = bundle
        path = bundle.torchscript_path
        if path is None:
            raise BackendError(
                f"bundle {bundle.folder} names no TorchScript file (model.yaml 'torchscript'); "
                "re-export it with python -m training.export"
            )
        try:
            import torch
        except ImportError as exc:
            raise BackendError(f"torch is not installed ({exc})") from exc
        if threads > 0:
            torch.set_num_threads(threads)
        self.torch = torch
        self.device = torch.device(device)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", category=FutureWarning)  # torch.jit deprecation
                module = torch.jit.load(str(path), map_location=self.device)
        except Exception as exc:  # a state_dict, a corrupt file, not TorchScript
            raise BackendError(
                f"cannot load {path} as TorchScript with torch.jit.load "
                f"(re-export the bundle with python -m training.export): {exc}"
            ) from exc
        self.module = module.eval()
        self.name = f"torch:{self.device}"

    def infer(self, ir: np.ndarray, visible_ycrcb: np.ndarray) -> dict[str, np.ndarray]:
        ir, visible_ycrcb = check_inputs(self.bundle, ir, visible_ycrcb)
        torch = self.torch
        with torch.inference_mode():
            outputs: Any = self.module(
                torch.from_numpy(ir).to(self.device),
                torch.from_numpy(visible_ycrcb).to(self.device),
            )
        if isinstance(outputs, torch.Tensor):
            outputs = (outputs,)
        if isinstance(outputs, dict):
            outputs = [outputs[n] for n in self.bundle.output_names]
        names = self.bundle.output_names
        if len(outputs) != len(names):
            raise BackendError(f"module returned {len(outputs)} outputs, bundle names {len(names)}")
        return {n: o.detach().float().cpu().numpy() for n, o in zip(names, outputs, strict=True)}
