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
    LatencyTracker,
    LatencyWindow,
    RateMeter,
    SilentStreamWatch,
    StampOffsetMeter,
    health_key_values,
    health_level,
    health_warnings,
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
    for t in (1.0, 2.0, 3.0):  # visible keeps flowing, IR stopped at 0
        watch.seen("visible", t)
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


def test_after_a_common_pause_the_first_to_resume_does_not_make_the_other_silent() -> None:
    """Both cameras paused for 10 s; visible resumes first: IR is silent only once after_s has
    passed since the resume (today: reported at once, with the 10 s pause counted)."""
    watch = SilentStreamWatch(after_s=2.0)
    streams = ("ir", "visible")
    watch.seen("ir", 0.0)
    watch.seen("visible", 0.0)
    for t in np.arange(10.0, 11.95, 0.1):  # visible only, 1.9 s after the resume
        watch.seen("visible", float(t))
        assert watch.update(float(t), streams) == {}, t
    watch.seen("visible", 12.1)
    assert watch.update(12.1, streams) == {"ir": pytest.approx(2.1)}


def test_never_seen_stream_is_silent_for_a_finite_time() -> None:
    watch = SilentStreamWatch(after_s=1.0)
    watch.seen("visible", 10.0)
    watch.seen("visible", 11.0)
    assert watch.silent(11.5, ("ir", "visible")) == {"ir": pytest.approx(1.5)}
    assert watch.never_seen("ir") and not watch.never_seen("visible")
    level, message = health_level(_snapshot(silent_streams={"ir": 1.5}, never_seen=("ir",)))
    assert level == WARN and "inf" not in message and "never received" in message
    kv = dict(health_key_values(_snapshot(silent_streams={"ir": float("inf")})))
    assert kv["silent_ir_s"] == "n/a"  # defensive: an infinity is never printed


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


def test_rate_imbalance_warns_with_both_rates() -> None:
    snapshot = _snapshot(
        rates_hz={"ir": 2.0, "visible": 10.0, "pairs": 2.0, "processed": 2.0},
        window_counts={"ir": 10, "visible": 50, "pairs": 10, "processed": 10},
    )
    level, message = health_level(snapshot)
    assert level == WARN
    assert "ir arrives at 2.0 Hz, below half of visible's 10.0 Hz" in message
    even = _snapshot(window_counts={"ir": 50, "visible": 48, "pairs": 48, "processed": 48})
    assert health_level(even)[0] == OK


def test_no_pairs_while_both_flow_names_the_measured_offset_and_slop() -> None:
    snapshot = _snapshot(
        window_counts={"ir": 50, "visible": 50, "pairs": 0, "processed": 0},
        slop_s=0.05,
        stamp_offset_s=0.2,
    )
    level, message = health_level(snapshot)
    assert level == WARN
    assert "no pair formed" in message and "200.0 ms apart" in message and "slop 50.0 ms" in message
    assert dict(health_key_values(snapshot))["stamp_offset_ms"] == "200.00"
    assert [key for key, _ in health_warnings(snapshot)] == ["no_pairs"]


def test_high_drop_ratio_warns() -> None:
    snapshot = _snapshot(
        window_counts={"ir": 50, "visible": 50, "pairs": 50, "processed": 10},
        drops={"superseded": 40},
    )
    level, message = health_level(snapshot)
    assert level == WARN and "80% of the 100 input frames" in message and "superseded 40" in message
    assert dict(health_key_values(snapshot))["drop_ratio"] == "0.80"
    fine = _snapshot(window_counts={"ir": 50, "visible": 50, "pairs": 48, "processed": 46})
    assert health_level(fine)[0] == OK


def test_stamp_offset_meter_finds_the_nearest_stamps() -> None:
    meter = StampOffsetMeter()
    assert meter.nearest_offset_s() is None
    for i in range(5):
        meter.add("ir", 1_000_000_000 + i * 100_000_000)
        meter.add("visible", 1_000_000_000 + i * 100_000_000 + 30_000_000)
    assert meter.nearest_offset_s() == pytest.approx(0.03)


def test_latency_from_another_clock_is_unavailable_not_garbage() -> None:
    """Bag stamps vs the node's wall clock: the ~96e9 ms 'latency' at level OK of the issue."""
    tracker = LatencyTracker()
    now = 1_800_000_000 * 10**9
    assert tracker.add(now, now - 20_000_000)  # 20 ms: plausible
    assert tracker.percentiles() == pytest.approx([20.0, 20.0])
    bag_stamp = now - int(95_999_328.3 * 1e9)
    assert not tracker.add(now, bag_stamp)
    assert tracker.percentiles() is None
    reason = tracker.unavailable()
    assert "95999328.3 s behind the node clock" in reason and "use_sim_time" in reason
    kv = dict(
        health_key_values(
            _snapshot(
                latency_ms=None,
                latency_unavailable=reason,
                clock_offset_s=tracker.clock_offset_s,
            )
        )
    )
    assert "latency_ms_p50" not in kv and kv["latency_ms"].startswith("n/a (input stamps")
    assert float(kv["stamp_clock_offset_s"]) == pytest.approx(95_999_328.3, abs=0.01)
    assert tracker.add(now, now - 10_000_000)  # back on one clock
    assert tracker.unavailable() == "" and tracker.percentiles() is not None
    assert not tracker.add(now, now + 5 * 10**9)  # 5 s in the future
    assert "ahead of" in tracker.unavailable()


def test_failed_reload_while_serving_is_a_warning_with_the_error() -> None:
    snapshot = _snapshot(reload_error="BundleError: /x/model.yaml: not a text file")
    level, message = health_level(snapshot)
    assert (
        level == WARN and "model reload failed" in message and "still serving 'fixture'" in message
    )
    assert dict(health_key_values(snapshot))["model_reload_error"].startswith("BundleError")
