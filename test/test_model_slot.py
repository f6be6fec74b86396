"""node/model_slot.py without ROS: a candidate is loaded, created and warmed up before the swap;
any failure keeps the serving model; bundle_path checks; a binary model.yaml is a BundleError."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from ros2_bilevel_fusion.core.bundle import BundleError, load_bundle
from ros2_bilevel_fusion.core.pipeline import FusionPipeline
from ros2_bilevel_fusion.node.model_slot import (
    LoadRequest,
    ModelSlot,
    check_bundle_path,
    warm_up_size,
)

pytest.importorskip("onnxruntime")


def _pipeline(bundle, backend) -> FusionPipeline:
    return FusionPipeline(backend)


def test_good_load_swaps_in_a_warmed_up_model(fixture_bundle: Path) -> None:
    slot = ModelSlot()
    outcome = slot.load(LoadRequest(fixture_bundle, "onnxruntime", threads=1), _pipeline)
    assert outcome.ok and slot.model is outcome.model and slot.failure == ""
    assert slot.model.bundle.name == "fixture"
    assert warm_up_size(slot.model.bundle) == (32, 32)


def test_failures_keep_the_serving_model(fixture_bundle: Path, tmp_path: Path) -> None:
    slot = ModelSlot()
    assert slot.load(LoadRequest(fixture_bundle, "onnxruntime", threads=1), _pipeline).ok
    serving = slot.model

    truncated = tmp_path / "synthetic_truncated"
    shutil.copytree(fixture_bundle, truncated)
    onnx = truncated / "model.onnx"
    onnx.write_bytes(onnx.read_bytes()[:100])
    outcome = slot.load(LoadRequest(truncated, "onnxruntime", threads=1), _pipeline)
    assert not outcome.ok and outcome.model is serving and slot.model is serving
    assert outcome.error.startswith("BackendError") and slot.failure == outcome.error

    outcome = slot.load(LoadRequest(fixture_bundle, "synthetic_no_such_backend"), _pipeline)
    assert not outcome.ok and "unknown backend" in outcome.error and slot.model is serving

    class FailingWarmUp:
        """A synthetic backend that loads but cannot run: caught by the warm-up, not a frame."""

        name = "synthetic_failing"

        def __init__(self, bundle, **_kwargs) -> None:
            self.bundle = bundle

        def infer(self, ir: np.ndarray, visible: np.ndarray) -> dict:
            raise RuntimeError("synthetic: kernel not supported")

    outcome = slot.load(
        LoadRequest(fixture_bundle, "onnxruntime"),
        _pipeline,
        create=lambda kind, bundle, **kw: FailingWarmUp(bundle),
    )
    assert not outcome.ok and "kernel not supported" in outcome.error and slot.model is serving
    assert slot.failures == 3 and slot.attempts == 4

    assert slot.load(LoadRequest(fixture_bundle, "onnxruntime", threads=1), _pipeline).ok
    assert slot.failure == "" and slot.model is not serving


def test_first_load_failure_leaves_no_model(tmp_path: Path) -> None:
    slot = ModelSlot()
    outcome = slot.load(LoadRequest(tmp_path / "synthetic_missing", "onnxruntime"), _pipeline)
    assert not outcome.ok and outcome.model is None and "model.yaml" in outcome.error


def test_check_bundle_path_reasons(fixture_bundle: Path, tmp_path: Path) -> None:
    assert check_bundle_path("") is None
    assert check_bundle_path(str(fixture_bundle)) is None
    assert check_bundle_path(str(fixture_bundle / "model.yaml")) is None
    assert "does not exist" in check_bundle_path(str(tmp_path / "synthetic_nothing"))
    assert "without model.yaml" in check_bundle_path(str(tmp_path))


def test_binary_model_yaml_is_a_bundle_error_naming_the_file(
    fixture_bundle: Path, tmp_path: Path
) -> None:
    bundle = tmp_path / "synthetic_garbage"
    shutil.copytree(fixture_bundle, bundle)
    (bundle / "model.yaml").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    with pytest.raises(BundleError, match="not a text file") as info:
        load_bundle(bundle)
    assert str(bundle / "model.yaml") in str(info.value)
    assert not isinstance(info.value, UnicodeDecodeError)
