"""Eager PyTorch backend, for parity checks against the exported ONNX (CPU by default).

Needs ``model.pt`` (a state_dict) in the bundle folder and the training package, whose
``training.models.build_export_model(architecture)`` builds the module named by
``bundle.provenance["architecture"]``; that module's ``forward(ir, visible_ycrcb)`` returns the
outputs in ``bundle.output_names`` order. torch is imported only when this backend is created.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ros2_bilevel_fusion.backends.base import BackendError, check_inputs
from ros2_bilevel_fusion.core.bundle import ModelBundle

STATE_DICT_FILE = "model.pt"


class TorchBackend:
    def __init__(self, bundle: ModelBundle, *, device: str = "cpu", threads: int = 0) -> None:
        self.bundle = bundle
        weights = bundle.folder / STATE_DICT_FILE
        if not weights.is_file():
            raise BackendError(f"torch backend needs {weights} (a state_dict); it is missing")
        architecture = bundle.provenance.get("architecture")
        if not architecture:
            raise BackendError("model.yaml provenance has no 'architecture' for the torch backend")
        try:
            import torch
        except ImportError as exc:
            raise BackendError(f"torch is not installed ({exc})") from exc
        try:
            from training.models import build_export_model
        except ImportError as exc:
            raise BackendError(
                f"torch backend needs the training package (training.models): {exc}"
            ) from exc
        if threads > 0:
            torch.set_num_threads(threads)
        self.torch = torch
        self.device = torch.device(device)
        try:
            module = build_export_model(architecture)
            state = torch.load(weights, map_location="cpu", weights_only=True)
            module.load_state_dict(state)
        except Exception as exc:  # unknown architecture, corrupt file, key mismatch
            raise BackendError(f"cannot build {architecture!r} from {weights}: {exc}") from exc
        self.module = module.to(self.device).eval()
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
