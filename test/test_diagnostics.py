"""Pure diagnostics parts: rate meter, latency percentiles, drop counters, silent streams,
DiagnosticStatus content. No ROS graph, no sleeping: times are passed in."""

from __future__ import annotations

import numpy as np
import pytest

from ros2_bilevel_fusion.node.diagnostics import (
    ERROR,
    OK,
    WARN,
    DropCounter,
    HealthSnapshot,
    LatencyWindow,
    RateMeter,
    SilentStreamWatch,
    health_key_values,
    health_level,
    make_status,
)


def test_rate_meter_measures_steady_rate_and_forgets_old_events() -> None:
    meter = RateMeter(window_s=2.0)
    assert meter.rate(0.0) == 0.0
    for i in range(31):  # 10 Hz for 3 s
        meter.tick(i * 0.1)
    assert meter.rate(3.0) == pytest.approx(10.0, rel=0.05)
    assert meter.total == 31
    assert meter.rate(10.0) == 0.0  # nothing in the last 2 s
    assert meter.last() == pytest.approx(3.0)


def test_rate_meter_is_right_soon_after_start() -> None:
    meter = RateMeter(window_s=5.0)
    for i in range(5):  # 20 Hz, only 0.2 s of history
        meter.tick(i * 0.05)
    assert meter.rate(0.2) == pytest.approx(20.0)


def test_latency_window_percentiles_over_last_samples() -> None:
    window = LatencyWindow(size=100)
    assert window.percentiles() is None
    for value in range(1000):  # only the last 100 (900..999) are kept
        window.add(value)
    p50, p95 = window.percentiles()
    expected = np.percentile(np.arange(900, 1000), [50, 95])
    assert (p50, p95) == pytest.approx(tuple(expected))
    assert len(window) == 100


def test_drop_counter_counts_by_reason() -> None:
    drops = DropCounter()
    drops.add("decode_error_ir")
    drops.add("decode_error_ir")
    drops.add("superseded", 3)
    assert drops.snapshot() == {"decode_error_ir": 2, "superseded": 3}


def test_silent_stream_reported_once_while_other_flows() -> None:
    watch = SilentStreamWatch(after_s=2.0)
    streams = ("ir", "visible")
    watch.seen("ir", 0.0)
    watch.seen("visible", 0.0)
    assert watch.update(1.0, streams) == {}
    watch.seen("visible", 2.5)
    watch.seen("visible", 3.0)
    assert watch.update(3.0, streams) == {"ir": pytest.approx(3.0)}
    assert watch.update(3.1, streams) == {}  # already reported
    assert "ir" in watch.silent(3.1, streams)
    watch.seen("ir", 3.2)  # the camera came back
    assert watch.silent(3.2, streams) == {}


def test_both_streams_stopped_is_not_one_dead_camera() -> None:
    watch = SilentStreamWatch(after_s=1.0)
    watch.seen("ir", 0.0)
    watch.seen("visible", 0.0)
    assert watch.silent(5.0, ("ir", "visible")) == {}


def test_never_seen_stream_is_silent_forever() -> None:
    watch = SilentStreamWatch(after_s=1.0)
    watch.seen("visible", 10.0)
    assert watch.silent(10.5, ("ir", "visible")) == {"ir": float("inf")}


def _snapshot(**overrides) -> HealthSnapshot:
    values = dict(
        backend="onnxruntime:CPUExecutionProvider",
        model="fixture",
        qos="sensor_data depth 10",
        rates_hz={"ir": 10.0, "visible": 9.5, "pairs": 9.5},
        pairs=20,
        processed=18,
        drops={"superseded": 2, "decode_error_ir": 1},
        inference_ms=[4.0, 6.5],
        total_ms=[8.0, 12.25],
        latency_ms=[15.0, 30.0],
        use_sim_time=False,
    )
    values.update(overrides)
    return HealthSnapshot(**values)


def test_key_values_carry_rates_drops_and_percentiles() -> None:
    kv = dict(health_key_values(_snapshot()))
    assert kv["backend"] == "onnxruntime:CPUExecutionProvider"
    assert kv["model"] == "fixture"
    assert kv["rate_ir_hz"] == "10.00"
    assert kv["pairs"] == "20" and kv["processed"] == "18"
    assert kv["drops_total"] == "3"
    assert kv["drops.superseded"] == "2" and kv["drops.decode_error_ir"] == "1"
    assert kv["inference_ms_p95"] == "6.50" and kv["total_ms_p95"] == "12.25"
    assert kv["latency_ms_p50"] == "15.00"


def test_sim_time_hides_latency() -> None:
    kv = dict(health_key_values(_snapshot(use_sim_time=True)))
    assert "latency_ms_p50" not in kv and kv["latency_ms"].startswith("n/a")


def test_levels() -> None:
    assert health_level(_snapshot())[0] == OK
    level, message = health_level(_snapshot(backend="", model_error="no model.yaml at /x"))
    assert level == ERROR and "no model.yaml" in message
    level, message = health_level(_snapshot(silent_streams={"ir": 4.0}))
    assert level == WARN and "ir" in message
    kv = dict(health_key_values(_snapshot(silent_streams={"ir": 4.0})))
    assert kv["silent_ir_s"] == "4.00"


def test_make_status_builds_the_ros_message() -> None:
    pytest.importorskip("diagnostic_msgs")
    status = make_status("fusion_node: pipeline", "cpu", WARN, "msg", [("a", "1")])
    assert status.level == bytes([WARN])
    assert status.values[0].key == "a" and status.values[0].value == "1"
