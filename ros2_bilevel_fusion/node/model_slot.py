"""The node's model: loaded whole, tried once, then swapped in; a failed load keeps the old one.

A reload (``bundle_path`` or ``backend`` changed) builds a complete candidate: the bundle is
read and checked, the backend created, the pipeline built, and one warm-up inference runs on a
tiny synthetic pair through the same ``FusionPipeline.process`` the frames take. Only then does
the candidate replace the serving model (a reference swap under a lock). When any step fails
the serving model stays, and the failure is kept in :attr:`ModelSlot.failure` for /diagnostics
and the log. No ROS here, so it is tested without a graph.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ros2_bilevel_fusion.backends import create_backend
from ros2_bilevel_fusion.core.bundle import (
    AUTO_PRECISION,
    MODEL_YAML,
    ModelBundle,
    load_bundle,
    select_precision,
)
from ros2_bilevel_fusion.core.pipeline import FusionPipeline


@dataclass
class LoadedModel:
    """What the inference thread runs; replaced as a whole on reload (a reference swap)."""

    bundle: ModelBundle
    backend: Any
    pipeline: FusionPipeline
    path: Path


@dataclass(frozen=True)
class LoadRequest:
    """Everything a load depends on (a snapshot of the parameters at request time)."""

    path: Path
    backend: str
    fp16: bool = False
    threads: int = 0
    precision: str = AUTO_PRECISION


@dataclass
class LoadOutcome:
    ok: bool
    request: LoadRequest
    model: LoadedModel | None  # the model serving after the attempt (old one on failure)
    error: str = ""  # "<ExceptionType>: message" on failure
    seconds: float = 0.0


def check_bundle_path(value: str) -> str | None:
    """Why ``value`` cannot be a bundle (nonexistent, or a folder without model.yaml), or None.

    '' means the shipped default and is always accepted. A file is accepted as the model.yaml
    path itself; its content is checked by the load (a bad one is reported there).
    """
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.exists():
        return f"bundle_path {value!r} does not exist"
    if path.is_dir() and not (path / MODEL_YAML).is_file():
        return f"bundle_path {value!r} is a folder without {MODEL_YAML}"
    if not path.is_dir() and not path.is_file():
        return f"bundle_path {value!r} is neither a folder nor a file"
    return None


def warm_up_size(bundle: ModelBundle) -> tuple[int, int]:
    """(H, W) of the warm-up pair: the graph's fixed size, else one padding block."""
    if bundle.inputs.height > 0 and bundle.inputs.width > 0:
        return int(bundle.inputs.height), int(bundle.inputs.width)
    side = max(1, int(bundle.inputs.pad_multiple))
    return side, side


def warm_up(pipeline: FusionPipeline) -> None:
    """One inference on a tiny synthetic pair (a grey ramp): raises whatever a frame would."""
    height, width = warm_up_size(pipeline.bundle)
    ramp = np.linspace(0, 255, height * width, dtype=np.float32).reshape(height, width)
    ir = ramp.astype(np.uint8)
    visible = np.repeat(ir[:, :, None], 3, axis=2)
    pipeline.process(ir, visible)
    pipeline.reset_state()  # the ramp's stretch limits must not seed the first real frame's


class ModelSlot:
    """The serving model and the outcome of the last load attempt; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._model: LoadedModel | None = None
        self._failure = ""  # last attempt's error while a model still serves ('' after success)
        self._failed_request: LoadRequest | None = None
        self.attempts = 0
        self.failures = 0

    @property
    def model(self) -> LoadedModel | None:
        return self._model

    @property
    def failure(self) -> str:
        """The last load's error ('' when it succeeded, or before any attempt)."""
        return self._failure

    @property
    def failed_request(self) -> LoadRequest | None:
        return self._failed_request

    def load(
        self,
        request: LoadRequest,
        build_pipeline: Callable[[ModelBundle, Any], FusionPipeline],
        create: Callable[..., Any] = create_backend,
    ) -> LoadOutcome:
        """Build and try a candidate for ``request``; swap it in only when everything worked.

        ``build_pipeline(bundle, backend)`` makes the pipeline (registration and thresholds
        come from the node's parameters). ``create`` is the backend factory (a test seam).
        """
        start = time.perf_counter()
        self.attempts += 1
        try:
            bundle = select_precision(load_bundle(request.path), request.precision)
            backend = create(request.backend, bundle, fp16=request.fp16, threads=request.threads)
            pipeline = build_pipeline(bundle, backend)
            warm_up(pipeline)
        except Exception as exc:  # BundleError, BackendError, or anything a bad file causes
            error = f"{type(exc).__name__}: {exc}"
            with self._lock:
                self.failures += 1
                self._failure = error
                self._failed_request = request
                serving = self._model
            return LoadOutcome(False, request, serving, error, time.perf_counter() - start)
        candidate = LoadedModel(bundle, backend, pipeline, request.path)
        with self._lock:
            self._model = candidate
            self._failure = ""
            self._failed_request = None
        return LoadOutcome(True, request, candidate, "", time.perf_counter() - start)
