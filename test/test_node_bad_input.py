"""fusion_node under bad input: wrong encoding, short data, inconsistent header, thermal 16UC1 and
32FC1 input, a broken bundle at start, a camera that stops, invalid parameters.

The node (separate process) must survive, keep serving the good pairs, and count every problem
in /diagnostics. Parameter validation is also tested as pure functions.
"""

from __future__ import annotations

import array
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rclpy")

from node_helpers import (  # noqa: E402
    drop_count,
    fixture_params,
    make_pair,
    matched,
    node_session,
    stamp_ns,
    synthetic_ir,
)

from ros2_bilevel_fusion.node.fusion_node import message_filters  # noqa: E402
from ros2_bilevel_fusion.node.parameters import (  # noqa: E402
    FROM_BUNDLE,
    PARAMETERS,
    FusionParameters,
    repair_parameters,
    validate,
)


def _defaults() -> FusionParameters:
    return FusionParameters.from_values({s.name: s.default for s in PARAMETERS})


# ------------------------------------------------------------------ pure parameter validation
def test_default_parameters_are_valid() -> None:
    assert validate(_defaults()) is None


@pytest.mark.parametrize(
    ("changes", "reason_part"),
    [
        ({"qos": "best_effort"}, "qos"),
        ({"backend": "openvino"}, "backend"),
        ({"agc_low_percentile": 99.0, "agc_high_percentile": 1.0}, "agc_low_percentile"),
        ({"score_threshold": 1.5}, "score_threshold"),
        ({"homography": (1.0, 0.0, 0.0)}, "9"),
        ({"homography": (0.0,) * 9}, "homography"),
        ({"qos_depth": 0}, "qos_depth"),
    ],
)
def test_invalid_parameter_combinations_give_a_reason(changes, reason_part) -> None:
    reason = validate(_defaults().replace(changes))
    assert reason is not None and reason_part in reason


def test_repair_resets_only_the_bad_parameters() -> None:
    bad = _defaults().replace(
        {"qos": "bogus", "score_threshold": 0.7, "agc_low_percentile": 99.5, "slop": 0.2}
    )
    repaired, fixes = repair_parameters(bad)
    assert validate(repaired) is None
    assert sorted(name for name, _ in fixes) == ["agc_low_percentile", "qos"]
    assert repaired.score_threshold == 0.7 and repaired.slop == 0.2
    assert repaired.qos == "auto" and repaired.agc_low_percentile == FROM_BUNDLE


def test_integer_overrides_for_doubles_are_coerced() -> None:
    from rclpy.parameter import Parameter

    from ros2_bilevel_fusion.node.fusion_node import _coerce_override

    assert _coerce_override(Parameter("slop", value=1), 0.05) == 1.0
    assert _coerce_override(Parameter("h", value=[1, 0, 0, 0, 1, 0, 0, 0, 1]), [1.0] * 9) == [
        1.0,
        0.0,
        0.0,
        0.0,
        1.0,
        0.0,
        0.0,
        0.0,
        1.0,
    ]
    assert _coerce_override(Parameter("qos", value=3), "sensor_data") is None
    assert _coerce_override(None, 0.05) is None


# ------------------------------------------------------------------ node process
@pytest.fixture(scope="module")
def fixture_node(fixture_bundle: Path, tmp_path_factory) -> Iterator:
    with node_session(
        "/it_bad",
        *fixture_params(
            fixture_bundle,
            "qos:=reliable",
            "qos_depth:=50",
            "diagnostics_period:=0.3",
            "stream_timeout:=0.6",
        ),
        log_path=tmp_path_factory.mktemp("node_log") / "fusion_node.log",
    ) as (harness, process):
        harness.wait_for_node_ready()
        yield harness, process


def test_bad_images_are_counted_and_good_ones_still_served(fixture_node) -> None:
    harness, process = fixture_node
    base_ns = 1_750_000_000 * 10**9
    good_stamps: list[int] = []
    index = 0

    def send(ir_msg, visible_msg, good: bool) -> None:
        nonlocal index
        harness.publish_pair(ir_msg, visible_msg)
        if good:
            good_stamps.append(stamp_ns(visible_msg.header))
        index += 1
        time.sleep(0.1)

    # Wrong (unknown) IR encoding.
    for _ in range(2):
        ir_msg, visible_msg = make_pair(index, base_ns)
        ir_msg.encoding = "synthetic_unknown8"
        send(ir_msg, visible_msg, good=False)
    # Visible data shorter than step * height (a truncated message).
    for _ in range(2):
        ir_msg, visible_msg = make_pair(index, base_ns)
        visible_msg.data = array.array("B", bytes(visible_msg.data)[: len(visible_msg.data) // 2])
        send(ir_msg, visible_msg, good=False)
    # Header width larger than the row step says (consistent length, impossible layout).
    ir_msg, visible_msg = make_pair(index, base_ns)
    visible_msg.width = visible_msg.width + 10
    send(ir_msg, visible_msg, good=False)
    # A driver that never sets its header stamps (in-package pairing path).
    ir_msg, visible_msg = make_pair(index, base_ns)
    ir_msg.header.stamp.sec = ir_msg.header.stamp.nanosec = 0
    visible_msg.header.stamp.sec = visible_msg.header.stamp.nanosec = 0
    send(ir_msg, visible_msg, good=False)
    # Thermal cameras: 16UC1 counts and 32FC1 kelvin with a NaN pixel, through gain control.
    thermal16 = 3000 + synthetic_ir(index).astype(np.uint16) * 4
    send(*make_pair(index, base_ns, ir=thermal16, ir_encoding="16UC1"), good=True)
    kelvin = 280.0 + synthetic_ir(index).astype(np.float32) / 10.0
    kelvin[0, 0] = np.nan
    send(*make_pair(index, base_ns, ir=kelvin, ir_encoding="32FC1"), good=True)
    # Good pairs afterwards.
    for _ in range(3):
        send(*make_pair(index, base_ns), good=True)

    def superseded() -> int:
        return harness.drops("superseded")

    harness.wait_for(
        lambda: harness.fused_count() + superseded() >= len(good_stamps),
        20.0,
        "fused images of the good pairs",
    )
    assert process.poll() is None, "the node must survive bad input"
    fused = harness.received.get("fused")
    fused_stamps = [stamp_ns(m.header) for m in fused]
    # Every output is a good pair, in order; only superseded pairs (counted) may be missing.
    assert fused_stamps == [s for s in good_stamps if s in set(fused_stamps)]
    assert len(fused_stamps) >= len(good_stamps) - superseded()
    assert {m.encoding for m in fused} == {"bgr8"}

    def counted() -> bool:
        status = harness.status()
        return (
            drop_count(status, "decode_error_ir") >= 2
            and drop_count(status, "size_mismatch_visible") >= 2
            and drop_count(status, "decode_error_visible") >= 1
            and (message_filters is not None or drop_count(status, "zero_stamp_visible") >= 1)
            and int(status.get("processed", 0)) >= len(fused_stamps)
        )

    harness.wait_for(counted, 10.0, "diagnostics to count every dropped image by reason")


def test_silent_camera_is_reported(fixture_node) -> None:
    harness, process = fixture_node
    base_ns = 1_760_000_000 * 10**9
    for index in range(12):  # 1.2 s of visible only; stream_timeout is 0.6 s
        _, visible_msg = make_pair(index, base_ns)
        harness.pub_visible.publish(visible_msg)
        time.sleep(0.1)

    def silent_reported() -> bool:
        status = harness.status()
        return "silent_ir_s" in status and drop_count(status, "stream_silent_ir") >= 1

    harness.wait_for(silent_reported, 10.0, "diagnostics to report the silent IR stream")
    status = harness.node_status()
    assert status["level"] == "1" and "ir" in status["message"]
    assert process.poll() is None


def test_broken_bundle_keeps_node_alive_and_reloads(fixture_bundle: Path, tmp_path_factory) -> None:
    from rclpy.parameter import Parameter

    missing = tmp_path_factory.mktemp("no_bundle") / "synthetic_missing_bundle"
    with node_session(
        "/it_broken",
        *fixture_params(missing, "qos:=reliable", "diagnostics_period:=0.3"),
        log_path=tmp_path_factory.mktemp("node_log") / "fusion_node.log",
    ) as (harness, process):
        harness.wait_for(
            lambda: harness.status().get("level") == "2",
            60.0,
            "diagnostics ERROR for the missing bundle",
        )
        status = harness.node_status()
        assert "model.yaml" in status["model_error"] and status["backend"] == "none"
        harness.wait_for(lambda: matched([harness.pub_ir], harness.subs), 30.0, "discovery")
        ir_msg, visible_msg = make_pair(0, 1_770_000_000 * 10**9)
        harness.publish_pair(ir_msg, visible_msg)
        harness.wait_for(
            lambda: harness.drops("no_model") >= 1,
            10.0,
            "the pair without a model to be counted",
        )

        harness.parameter_client()
        result = harness.set_parameters(Parameter("bundle_path", value=str(fixture_bundle)))
        assert result[0].successful
        harness.wait_for(
            lambda: harness.status().get("backend", "none").startswith("onnx"),
            30.0,
            "the node to load the bundle after bundle_path changed",
        )
        ir_msg, visible_msg = make_pair(1, 1_770_000_000 * 10**9)
        harness.publish_pair(ir_msg, visible_msg)
        harness.wait_for(lambda: harness.fused_count() >= 1, 10.0, "fused image")
        assert process.poll() is None
