"""fusion_node's /diagnostics under real rclpy + Fast DDS (the node in its own process): the
warnings name their numbers, silence after a common pause, latency on one clock, non-finite
thermal pixels; and model hot swap with rollback to the serving model.

All images are synthetic (node_helpers' generators); stamps are chosen per test.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rclpy")

from node_helpers import (  # noqa: E402
    Harness,
    fixture_params,
    make_pair,
    node_session,
    publish_until,
    stamped,
    synthetic_ir,
)


def _now_ns() -> int:
    return time.time_ns()


@pytest.fixture(scope="module")
def health_node(fixture_bundle: Path, tmp_path_factory) -> Iterator:
    log_path = tmp_path_factory.mktemp("node_log") / "fusion_node.log"
    with node_session(
        "/it_health",
        *fixture_params(
            fixture_bundle,
            "qos:=reliable",
            "qos_depth:=50",
            "diagnostics_period:=0.25",
            "stream_timeout:=1.5",
        ),
        log_path=log_path,
        log_tail=6000,
    ) as (harness, process):
        harness.wait_for_node_ready()
        yield harness, process, log_path


def _quiet(harness: Harness, seconds: float = 5.5) -> None:
    """Let the 5 s rate window empty, so one test's frames do not colour the next."""
    time.sleep(seconds)


def test_resume_after_common_pause_is_not_a_silent_camera(health_node) -> None:
    """Both cameras pause for longer than stream_timeout; visible resumes 1 s before IR: no
    'silent' warning for IR (stream_timeout 1.5 s has not passed since the resume)."""
    harness, process, _ = health_node
    base = _now_ns()
    for index in range(8):
        harness.publish_pair(*make_pair(index, base))
        time.sleep(0.1)
    time.sleep(3.0)  # both paused: 3 s > stream_timeout
    seen: list[dict[str, str]] = []
    for index in range(8, 16):  # visible alone for 0.8 s
        harness.pub_visible.publish(make_pair(index, base)[1])
        time.sleep(0.1)
        seen.append(harness.status())
    time.sleep(0.3)  # two more diagnostics periods with the visible frames received
    seen.append(harness.status())
    for index in range(16, 24):  # then IR is back too
        harness.publish_pair(*make_pair(index, base))
        time.sleep(0.1)
        seen.append(harness.status())
    assert all("silent_ir_s" not in status for status in seen), [
        s.get("message") for s in seen if "silent_ir_s" in s
    ]
    assert all(int(s.get("drops.stream_silent_ir", 0)) == 0 for s in seen)
    assert process.poll() is None


def test_no_pairs_warning_names_the_stamp_offset(health_node) -> None:
    """Frames 300 ms apart in stamp, IR stamped 150 ms after each visible one (slop 50 ms):
    both flow, nothing pairs -> WARN with the measured offset, in /diagnostics and the log."""
    harness, _, log_path = health_node
    _quiet(harness)
    base = _now_ns()

    def publish(index: int) -> None:
        ir_msg, visible_msg = make_pair(index, base)
        stamped(visible_msg, base + index * 300_000_000)
        stamped(ir_msg, base + index * 300_000_000 + 150_000_000)
        harness.publish_pair(ir_msg, visible_msg)

    publish_until(publish, lambda: "no pair formed" in harness.status().get("message", ""))
    status = harness.status()
    assert status["level"] == "1", status
    assert "150.0 ms apart" in status["message"] and "slop 50.0 ms" in status["message"]
    assert float(status["stamp_offset_ms"]) == pytest.approx(150.0, abs=0.5)
    harness.wait_for(
        lambda: "no pair formed" in log_path.read_text(), 10.0, "the throttled warning in the log"
    )


def test_slow_stream_warns_with_both_rates(health_node) -> None:
    """IR at 2 Hz, visible at 10 Hz: WARN 'ir arrives at ~2 Hz, below half of visible's'."""
    harness, _, log_path = health_node
    _quiet(harness)
    base = _now_ns()

    def publish(index: int) -> None:
        ir_msg, visible_msg = make_pair(index, base)
        if index % 5 == 0:
            harness.pub_ir.publish(ir_msg)
        harness.pub_visible.publish(visible_msg)

    publish_until(publish, lambda: "below half of visible" in harness.status().get("message", ""))
    status = harness.status()
    assert status["level"] == "1" and "ir arrives at" in status["message"], status
    assert float(status["rate_ir_hz"]) < 0.5 * float(status["rate_visible_hz"])
    harness.wait_for(
        lambda: "below half of visible" in log_path.read_text(), 10.0, "the warning in the log"
    )


def test_latency_is_measured_on_one_clock(health_node) -> None:
    """Stamps from this machine's clock: a latency in milliseconds. Stamps from a bag of years
    ago played without use_sim_time: 'n/a' with the offset, never ~1e11 ms at level OK."""
    harness, _, _ = health_node

    def send(base: int, count: int) -> None:
        for index in range(count):
            harness.publish_pair(*make_pair(index, base))
            time.sleep(0.1)

    send(_now_ns(), 5)
    harness.wait_for(lambda: "latency_ms_p50" in harness.status(), 15.0, "a latency")
    assert 0.0 <= float(harness.status()["latency_ms_p50"]) < 10_000.0
    bag_base = 1_600_000_000 * 10**9  # September 2020
    send(bag_base, 5)
    harness.wait_for(
        lambda: harness.status().get("latency_ms", "").startswith("n/a (input stamps"),
        15.0,
        "latency reported as unavailable",
    )
    status = harness.status()
    assert "latency_ms_p50" not in status
    assert float(status["stamp_clock_offset_s"]) > 86400 * 365


def test_nonfinite_and_huge_thermal_pixels(health_node) -> None:
    """32FC1 thermal with NaN/inf pixels and one 1e30 value on a tiny range: NaN/inf counted in
    /diagnostics, no numpy overflow warning in the node's output, the pair still fused."""
    harness, _, log_path = health_node
    base = _now_ns()
    thermal = (synthetic_ir(0).astype(np.float32) / 255.0) * 1e-7
    thermal[0, :5] = np.nan
    thermal[1, :3] = np.inf
    thermal[2, 0] = 1e30
    before = harness.fused_count()
    harness.publish_pair(*make_pair(0, base, ir=thermal, ir_encoding="32FC1"))
    harness.wait_for(
        lambda: int(harness.status().get("nonfinite_pixels_ir", 0)) >= 8, 15.0, "the count"
    )
    harness.wait_for(lambda: harness.fused_count() > before, 10.0, "a fused image")
    log = log_path.read_text()
    assert "RuntimeWarning" not in log and "overflow" not in log, log[-2000:]
    assert "8 NaN/inf pixels" in log


def test_high_drop_ratio_warns_with_the_reason(health_node) -> None:
    """Every IR frame has an unknown encoding: pairs form, none is fused -> WARN naming the
    share of dropped frames and the reason."""
    harness, _, log_path = health_node
    _quiet(harness)
    base = _now_ns()

    def publish(index: int) -> None:
        ir_msg, visible_msg = make_pair(index, base)
        ir_msg.encoding = "synthetic_unknown8"
        harness.publish_pair(ir_msg, visible_msg)

    publish_until(publish, lambda: "ended in no output" in harness.status().get("message", ""))
    status = harness.status()
    assert status["level"] == "1" and "100% of the" in status["message"], status
    assert "decode_error_ir" in status["message"] and float(status["drop_ratio"]) == 1.0
    harness.wait_for(
        lambda: "ended in no output" in log_path.read_text(), 10.0, "the warning in the log"
    )


def test_never_seen_stream_is_reported_with_a_finite_time(
    fixture_bundle: Path, tmp_path_factory
) -> None:
    """Only the visible camera ever publishes: 'no ir images for N s (never received)', not
    'for inf s'."""
    log_path = tmp_path_factory.mktemp("node_log") / "fusion_node.log"
    with node_session(
        "/it_never",
        *fixture_params(
            fixture_bundle, "qos:=reliable", "diagnostics_period:=0.25", "stream_timeout:=0.6"
        ),
        log_path=log_path,
        log_tail=3000,
    ) as (harness, _):
        harness.wait_for_node_ready()
        base = _now_ns()
        for index in range(15):
            harness.pub_visible.publish(make_pair(index, base)[1])
            time.sleep(0.1)
        harness.wait_for(lambda: "silent_ir_s" in harness.status(), 10.0, "silent IR")
        status = harness.status()
        assert 0.6 < float(status["silent_ir_s"]) < 60.0
        assert "never received" in status["message"] and "inf" not in status["message"]
        harness.wait_for(lambda: "(never received)" in log_path.read_text(), 10.0, "the log line")
        assert " inf s" not in log_path.read_text()


# ------------------------------------------------------------------ model hot swap
def _bad_bundles(fixture_bundle: Path, root: Path) -> dict[str, Path]:
    """Synthetic broken copies of the fixture bundle, one per failure a user can cause."""
    bundles = {}
    for name in ("truncated_onnx", "garbage_yaml", "wrong_input_name", "missing_onnx"):
        bundles[name] = root / f"synthetic_{name}"
        shutil.copytree(fixture_bundle, bundles[name])
    onnx = bundles["truncated_onnx"] / "model.onnx"
    onnx.write_bytes(onnx.read_bytes()[: onnx.stat().st_size // 2])
    (bundles["garbage_yaml"] / "model.yaml").write_bytes(bytes(range(256)) * 4)
    yaml_path = bundles["wrong_input_name"] / "model.yaml"
    yaml_path.write_text(yaml_path.read_text().replace("ir_name: ir", "ir_name: thermal"))
    (bundles["missing_onnx"] / "model.onnx").unlink()
    (root / "synthetic_no_yaml").mkdir()
    return bundles


def test_failed_reload_keeps_serving_the_old_model(fixture_bundle: Path, tmp_path_factory) -> None:
    from rclpy.parameter import Parameter

    root = tmp_path_factory.mktemp("bad_bundles")
    bad = _bad_bundles(fixture_bundle, root)
    log_path = tmp_path_factory.mktemp("node_log") / "fusion_node.log"
    with node_session(
        "/it_swap",
        *fixture_params(
            fixture_bundle,
            "qos:=reliable",
            "qos_depth:=50",
            "diagnostics_period:=0.25",
        ),
        log_path=log_path,
        log_tail=6000,
    ) as (harness, process):
        harness.wait_for_node_ready()
        harness.parameter_client()

        def set_param(name: str, value: str):
            return harness.set_parameters(Parameter(name, value=value))[0]

        base = _now_ns()
        index = 0

        def still_fuses() -> None:
            nonlocal index
            before = harness.fused_count()
            harness.publish_pair(*make_pair(index, base))
            index += 1
            harness.wait_for(lambda: harness.fused_count() > before, 15.0, "a fused image")

        # Rejected by the parameter callback, with the reason.
        for value, reason in (
            (str(root / "synthetic_does_not_exist"), "does not exist"),
            (str(root / "synthetic_no_yaml"), "without model.yaml"),
        ):
            result = set_param("bundle_path", value)
            assert not result.successful and reason in result.reason, result.reason
        # Accepted (they look like bundles) but fail to load: the old model keeps serving.
        expected = {
            "truncated_onnx": "onnxruntime cannot load",
            "garbage_yaml": "not a text file",
            "wrong_input_name": "do not match",
            "missing_onnx": "is missing",
        }
        for name, text in expected.items():
            failures = int(harness.status().get("drops.model_load_error", 0))
            assert set_param("bundle_path", str(bad[name])).successful
            harness.wait_for(
                lambda f=failures: int(harness.status().get("drops.model_load_error", 0)) > f,
                30.0,
                f"the failed load of {name}",
            )
            status = harness.status()
            assert status["level"] == "1", status
            assert text in status["model_reload_error"], (name, status["model_reload_error"])
            assert status["model"] == "fixture" and status["backend"].startswith("onnxruntime")
            assert "model reload failed" in status["message"]
            still_fuses()
        assert "UnicodeDecodeError" not in log_path.read_text()
        assert str(bad["garbage_yaml"] / "model.yaml") in log_path.read_text()
        # A backend that cannot be created (TensorRT absent here): also a rollback.
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            assert set_param("bundle_path", str(fixture_bundle)).successful
            harness.wait_for(
                lambda: "model_reload_error" not in harness.status(), 30.0, "a good reload"
            )
            assert set_param("backend", "tensorrt").successful
            harness.wait_for(
                lambda: "tensorrt" in harness.status().get("model_reload_error", ""),
                30.0,
                "the failed backend change",
            )
            assert harness.status()["backend"].startswith("onnxruntime")
            still_fuses()
            assert set_param("backend", "onnxruntime").successful
        # A good bundle again: the warning clears.
        assert set_param("bundle_path", str(fixture_bundle)).successful
        harness.wait_for(
            lambda: (
                "model_reload_error" not in harness.status() and harness.status()["level"] == "0"
            ),
            30.0,
            "a clean status after a good reload",
        )
        still_fuses()
        assert process.poll() is None
