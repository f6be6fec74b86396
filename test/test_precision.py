"""A bundle's int8 graph: training.quantize writes it, model.yaml names it, the runtime picks it
(core.bundle.select_precision, the node's ``precision`` parameter, fusion-eval --precision).

The bundle is the untrained fixture bundle (fixture_bundle.py); the calibration and test pairs
are SYNTHETIC (seeded random images with smooth structure), so these tests check the mechanism
and that the int8 graph computes the same function within int8 resolution, not accuracy.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("onnxruntime")

from ros2_bilevel_fusion.backends import create_backend  # noqa: E402
from ros2_bilevel_fusion.core.bundle import (  # noqa: E402
    BundleError,
    bundle_to_dict,
    load_bundle,
    select_precision,
)
from ros2_bilevel_fusion.core.pipeline import FusionPipeline  # noqa: E402
from ros2_bilevel_fusion.core.processing import prepare_inputs  # noqa: E402
from ros2_bilevel_fusion.node.model_slot import LoadRequest, ModelSlot  # noqa: E402
from ros2_bilevel_fusion.node.parameters import PARAMETERS, FusionParameters, validate  # noqa: E402
from training import quantize  # noqa: E402


def synthetic_pair(seed: int, hw: tuple[int, int] = (96, 128)) -> tuple[np.ndarray, np.ndarray]:
    """SYNTHETIC IR and visible images: smooth gradients plus a warm blob and noise."""
    rng = np.random.default_rng(seed)
    height, width = hw
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    cy, cx = rng.uniform(0.2, 0.8) * height, rng.uniform(0.2, 0.8) * width
    blob = 200.0 * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * (0.1 * width) ** 2))
    ir = np.clip(30 + 0.3 * x + blob + rng.normal(0, 4, hw), 0, 255).astype(np.uint8)
    visible = np.clip(
        np.stack([0.8 * x, 0.5 * y + 40, 90 + 0.2 * (x + y)], axis=2) + rng.normal(0, 6, (*hw, 3)),
        0, 255,
    ).astype(np.uint8)
    return ir, visible


@pytest.fixture()
def int8_bundle(fixture_bundle: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "bundle"
    shutil.copytree(fixture_bundle, folder)
    bundle = load_bundle(folder)
    feeds = [quantize.pair_feeds(*synthetic_pair(seed), bundle) for seed in range(4)]
    quantize.add_int8(folder, feeds, calibration={"pairs": "synthetic seeds 0-3"})
    return folder


def test_quantiser_writes_the_int8_graph_and_keeps_fp32_the_default(int8_bundle: Path) -> None:
    raw = yaml.safe_load((int8_bundle / "model.yaml").read_text())
    assert raw["precisions"] == {"int8": "model_int8.onnx"}
    assert raw["default_precision"] == "fp32"  # not measured yet
    assert raw["provenance"]["quantization"]["format"] == "QDQ"
    bundle = load_bundle(int8_bundle)
    assert bundle.precisions == ("fp32", "int8") and bundle.precision == "fp32"
    assert select_precision(bundle, "auto") is bundle
    int8 = select_precision(bundle, "int8")
    assert int8.onnx_path.name == "model_int8.onnx" and int8.precision == "int8"
    assert int8.torchscript_path is None and int8.output_names == bundle.output_names
    import onnx

    ops = {node.op_type for node in onnx.load(str(int8.onnx_path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_int8_graph_computes_the_fp32_function_within_int8_resolution(int8_bundle: Path) -> None:
    bundle = load_bundle(int8_bundle)
    ir, visible = synthetic_pair(11)  # not a calibration pair
    prepared = prepare_inputs(ir, visible, bundle)
    fp32 = create_backend("onnxruntime", bundle, threads=1).infer(prepared.ir,
                                                                   prepared.visible_ycrcb)
    int8 = create_backend("onnxruntime", select_precision(bundle, "int8"), threads=1).infer(
        prepared.ir, prepared.visible_ycrcb
    )
    difference = np.abs(int8["fused_y"] - fp32["fused_y"])
    # uint8 activations over [0, 1]: a few steps of 1/255 at most, and most pixels exact-ish
    assert float(difference.max()) < 4 / 255 and float(difference.mean()) < 1 / 255
    assert not np.allclose(int8["fused_y"], 0.0)


def test_measurement_sets_the_default_and_the_budget_decides() -> None:
    fp32 = {"person_AP50": 0.60, "mAP50": 0.55, **{k: 1.0 for k in quantize.FUSION_METRICS}}
    close = {**fp32, "person_AP50": 0.595, "EN": 1.009}
    assert quantize.within_budget(fp32, close) == (True, [])
    ok, faults = quantize.within_budget(fp32, {**fp32, "mAP50": 0.53, "SSIM": 0.98})
    assert not ok and len(faults) == 2 and faults[0].startswith("mAP50")
    ok, faults = quantize.within_budget(fp32, {**fp32, "VIF": float("nan")})
    assert not ok and faults[0].startswith("VIF")


def test_recorded_default_is_what_auto_runs(int8_bundle: Path) -> None:
    quantize.record_measurement(int8_bundle, {"note": "test"}, make_default=True)
    bundle = load_bundle(int8_bundle)
    assert bundle.default_precision == "int8"
    assert select_precision(bundle, "auto").precision == "int8"
    assert select_precision(bundle, "fp32") is bundle
    assert bundle.provenance["quantization"]["measured"] == {"note": "test"}
    with pytest.raises(BundleError, match="fp32 bundle"):
        bundle_to_dict(select_precision(bundle, "int8"))


def test_bad_precisions_in_model_yaml_are_refused(int8_bundle: Path) -> None:
    path = int8_bundle / "model.yaml"
    good = yaml.safe_load(path.read_text())
    for change, message in (
        ({"precisions": {"fp16": "model_int8.onnx"}}, "not one of"),
        ({"precisions": {"int8": "missing.onnx"}}, "missing"),
        ({"default_precision": "int4"}, "default_precision"),
        ({"precisions": ["model_int8.onnx"]}, "map a precision"),
    ):
        path.write_text(yaml.safe_dump({**good, **change}))
        with pytest.raises(BundleError, match=message):
            load_bundle(int8_bundle)


def test_a_bundle_without_int8_says_which_precisions_it_has(fixture_bundle: Path) -> None:
    bundle = load_bundle(fixture_bundle)
    assert bundle.precisions == ("fp32",)
    with pytest.raises(BundleError, match=r"no 'int8' graph; it has \['fp32'\]"):
        select_precision(bundle, "int8")


def test_node_model_slot_loads_the_requested_precision(
    int8_bundle: Path, fixture_bundle: Path
) -> None:
    slot = ModelSlot()

    def pipeline(bundle, backend):
        return FusionPipeline(backend)

    outcome = slot.load(LoadRequest(int8_bundle, "onnxruntime", threads=1, precision="int8"),
                        pipeline)
    assert outcome.ok and slot.model.bundle.precision == "int8"
    assert slot.model.backend.bundle.onnx_path.name == "model_int8.onnx"
    # a bundle without the asked precision is a failed load; the int8 model keeps serving
    outcome = slot.load(LoadRequest(fixture_bundle, "onnxruntime", threads=1, precision="int8"),
                        pipeline)
    assert not outcome.ok and "no 'int8' graph" in outcome.error
    assert slot.model.bundle.precision == "int8"


def test_precision_parameter_is_declared_and_checked() -> None:
    defaults = FusionParameters.from_values({spec.name: spec.default for spec in PARAMETERS})
    assert defaults.precision == "auto" and validate(defaults) is None
    assert "precision must be one of" in validate(defaults.replace({"precision": "fp16"}))


def test_calibration_pairs_are_spread_and_never_from_val_or_test() -> None:
    assert quantize.spread([str(i) for i in range(10)], 3) == ["0", "4", "9"]
    assert quantize.spread(["a", "b"], 5) == ["a", "b"]
    with pytest.raises(ValueError, match="training split"):
        quantize.split_feeds(None, "msrs_det:val", 4)
