"""fusion_node: pairs IR + visible images, fuses them with the bundle's network, publishes the
fused image, detections, segmentation, a debug view and /diagnostics.

Threads: the executor thread runs subscription callbacks (no decoding: stamp -> pairer ->
newest-pair slot), parameter callbacks and the diagnostics timer; one inference thread takes
the newest pair, decodes, runs the pipeline and publishes. The only lock shared by the two is
the slot's, held just to swap a reference, so inference never blocks subscriptions. When
inference is slower than the cameras the newest pair wins and the superseded one is counted.
A model loader thread builds, checks and warms up a new model after a ``bundle_path`` or
``backend`` change while the serving one keeps fusing (node/model_slot.py); a failed load
keeps the serving model and is reported on /diagnostics.

Detections: vision_msgs/Detection2DArray on ``~/detections`` when vision_msgs imports (it is not
on PyPI, so pip-only installs lack it; the node then logs once that the topic is off). The same
detections are always published as JSON (std_msgs/String) on ``~/detections/json``; both
conversions and the JSON schema are in :mod:`ros2_bilevel_fusion.messages.detections`.

Rendered views cost CPU, so ``~/debug_image`` and ``~/segmentation/color`` are computed and
published only while someone subscribes to them; ``~/fused``, ``~/segmentation`` and the
detections are published for every processed pair (subject to the publish_* toggles).

Run: ``python -m ros2_bilevel_fusion.node.fusion_node --ros-args -p bundle_path:=...
-r ir/image:=/cam``.
"""

from __future__ import annotations

import dataclasses
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.exceptions import InvalidParameterTypeException, ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import String

from ros2_bilevel_fusion.core.bundle import PreprocessSpec
from ros2_bilevel_fusion.core.pairing import (
    IR_STREAM,
    VISIBLE_STREAM,
    ApproximateTimePairer,
    LatestPairSlot,
    PairAccounting,
)
from ros2_bilevel_fusion.core.pipeline import (
    FusionPipeline,
    PostprocessConfig,
    render_debug,
    render_segmentation_color,
)
from ros2_bilevel_fusion.core.registration import Registration
from ros2_bilevel_fusion.core.resources import default_bundle_path
from ros2_bilevel_fusion.messages.codec import (
    AutoGain,
    GainControl,
    ImageCodecError,
    array_to_msg,
    to_bgr8,
    to_mono8,
)
from ros2_bilevel_fusion.messages.cv_bridge_path import (
    message_to_array as image_message_to_array,
)
from ros2_bilevel_fusion.messages.detections import (
    DetectionsJson,
    detection2d_array_class,
    to_detection2d_array,
)
from ros2_bilevel_fusion.messages.stamps import stamp_to_ns
from ros2_bilevel_fusion.node.diagnostics import (
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
from ros2_bilevel_fusion.node.inputs import NodeInputs, output_camera_info
from ros2_bilevel_fusion.node.model_slot import (
    LoadedModel,
    LoadRequest,
    ModelSlot,
    check_bundle_path,
)
from ros2_bilevel_fusion.node.parameters import (
    PARAMETERS,
    SPECS,
    FusionParameters,
    descriptor,
    gain_percentiles,
    repair_parameters,
    validate,
)

try:  # Not on PyPI: present only in a full ROS 2 install.
    import message_filters
except ImportError:
    message_filters = None

STREAM_NAMES = ("ir", "visible")
NODE_NAME = "fusion_node"
# Throttle period of every repeated error/warning log.
LOG_THROTTLE_S = 5.0


def check_image_size(msg: Image) -> str | None:
    """Reason the data length disagrees with the header, or None (cheap, before decoding)."""
    expected = int(msg.step) * int(msg.height)
    actual = len(msg.data)
    if msg.height == 0 or msg.width == 0:
        return f"empty image {msg.width}x{msg.height}"
    if actual != expected:
        return f"data has {actual} bytes, header says step*height = {expected}"
    return None


def _coerce_override(override: Parameter | None, default: Any) -> Any:
    """Integer (array) overrides for double (array) parameters, as floats; else None."""
    if override is None:
        return None
    value = override.value
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, list) and all(isinstance(v, float) for v in default):
        try:
            items = list(value)
        except TypeError:
            return None
        if all(isinstance(v, int) and not isinstance(v, bool) for v in items):
            return [float(v) for v in items]
    return None


class FusionNode(Node):
    def __init__(self, **node_kwargs: Any) -> None:
        super().__init__(NODE_NAME, **node_kwargs)
        self.params = self._declare_parameters()
        self._use_sim_time = bool(self.get_parameter("use_sim_time").value)
        self._steady = Clock(clock_type=ClockType.STEADY_TIME)

        self._drops = DropCounter()
        self._last_logged: dict[str, float] = {}
        self._log_lock = threading.Lock()
        self._rates = {name: RateMeter() for name in (*STREAM_NAMES, "pairs", "processed")}
        self._inference_ms = LatencyWindow()
        self._total_ms = LatencyWindow()
        # a pair's work in this node beyond inference: decode, pipeline pre/post-processing,
        # colour restore, encode and publish (bench/bench_node_overhead.py reads it)
        self._overhead_ms = LatencyWindow()
        # Latency on the node's ROS clock; stamps from another clock are reported, not averaged.
        self._latency = LatencyTracker()
        self._silence = SilentStreamWatch(after_s=self.params.stream_timeout)
        self._stamp_offsets = StampOffsetMeter()
        self._counters = DropCounter()  # counts that are not drops (non-finite pixels)
        # Frames seen vs frames paired, for message_filters (which counts nothing itself).
        self._accounting = PairAccounting(keep=max(100, 4 * self.params.queue_size))
        self._last_output_stamp_ns: int | None = None
        self._processed = 0
        self._pairs = 0
        self._ir_gain, self._visible_gain = self._make_gains(self.params)

        # Loads are tried whole before a swap; a failed reload keeps the serving model.
        self._models = ModelSlot()
        self._model_error = "loading"  # why there is no model (only while none serves)
        self._reload = threading.Event()
        self._reload.set()  # the first load happens in the loader thread
        self._stop = threading.Event()
        self._slot: LatestPairSlot[tuple[Image, Image]] = LatestPairSlot()

        self._make_publishers()
        self._pairer: ApproximateTimePairer | None = None
        self._make_subscriptions()
        self.add_on_set_parameters_callback(self._validate_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)
        self._diagnostics_timer = self.create_timer(
            self.params.diagnostics_period, self._publish_diagnostics, clock=self._steady
        )
        self._worker = threading.Thread(target=self._inference_loop, name="fusion_inference")
        self._worker.daemon = True
        self._worker.start()
        # Loads run beside inference: the serving model keeps fusing while a candidate loads.
        self._loader = threading.Thread(target=self._loader_loop, name="fusion_model_loader")
        self._loader.daemon = True
        self._loader.start()

    # ---------------------------------------------------------------- parameters
    def _declare_parameters(self) -> FusionParameters:
        values: dict[str, Any] = {}
        for spec in PARAMETERS:
            default = list(spec.default) if isinstance(spec.default, tuple) else spec.default
            try:
                param = self.declare_parameter(spec.name, default, descriptor(spec))
            except (InvalidParameterTypeException, ParameterException) as exc:
                # A launch file or YAML gave e.g. `1` for a double: accept what converts
                # losslessly, otherwise keep the default; never die on a typo.
                value = _coerce_override(self._parameter_overrides.get(spec.name), default)
                if value is None:
                    self.get_logger().error(
                        f"parameter {spec.name}: override rejected ({exc}); using {default!r}"
                    )
                    value = default
                if not self.has_parameter(spec.name):
                    param = self.declare_parameter(
                        spec.name, value, descriptor(spec), ignore_override=True
                    )
                else:
                    param = self.get_parameter(spec.name)
            values[spec.name] = param.value
        params, fixes = repair_parameters(FusionParameters.from_values(values))
        for name, reason in fixes:
            self.get_logger().error(
                f"invalid parameter at start ({reason}); {name} reset to {SPECS[name].default!r}"
            )
        return params

    def _validate_parameters(self, params: list[Parameter]) -> SetParametersResult:
        changes = {p.name: p.value for p in params if p.name in SPECS}
        if not changes:
            return SetParametersResult(successful=True)
        if "bundle_path" in changes:
            reason = check_bundle_path(str(changes["bundle_path"]))
            if reason is not None:
                self._drops.add("rejected_parameter")
                return SetParametersResult(successful=False, reason=reason)
        try:
            candidate = self.params.replace(changes)
        except (TypeError, ValueError) as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        model = self._model  # percentiles left to the bundle (< 0) are checked against it
        reason = validate(candidate, model.bundle.preprocessing if model is not None else None)
        if reason is not None:
            self._drops.add("rejected_parameter")
            return SetParametersResult(successful=False, reason=reason)
        return SetParametersResult(successful=True)

    def _apply_parameters(self, params: list[Parameter]) -> None:
        changes = {p.name: p.value for p in params if p.name in SPECS}
        if not changes:
            return
        self.params = self.params.replace(changes)
        names = set(changes)
        if any(SPECS[n].reload for n in names):
            self.get_logger().info(f"reloading the model after a change of {sorted(names)}")
            self._reload.set()
            return
        model = self._model
        if names & {"agc_low_percentile", "agc_high_percentile", "agc_smoothing"}:
            bundle = model.bundle if model is not None else None
            self._ir_gain, self._visible_gain = self._make_gains(self.params, bundle)
        if model is not None:
            if "homography" in names:
                model.pipeline.registration = Registration(self.params.homography)
            model.pipeline.max_input_pixels = self.params.max_input_pixels
            model.pipeline.config = self._postprocess_config(model.bundle)

    @staticmethod
    def _make_gains(params: FusionParameters, bundle: Any = None) -> tuple[AutoGain, AutoGain]:
        """Percentiles from the parameters, or the bundle's (model.yaml) where they are < 0."""
        preprocessing = bundle.preprocessing if bundle is not None else PreprocessSpec()
        low, high = gain_percentiles(params, preprocessing)

        def gain() -> AutoGain:
            return AutoGain(
                GainControl(
                    low_percentile=low,
                    high_percentile=high,
                    smoothing=params.agc_smoothing,
                )
            )

        return gain(), gain()

    def _postprocess_config(self, bundle: Any) -> Any:
        config = PostprocessConfig.from_bundle(bundle)
        p = self.params
        changes: dict[str, Any] = {
            "overlay_alpha": p.overlay_alpha,
            "colour_output": p.colour_output,
            "fused_stretch_smoothing": p.fused_stretch_smoothing,
        }
        if not p.fused_stretch:
            changes["fused_stretch"] = None
        if p.score_threshold >= 0.0:
            changes["score_threshold"] = p.score_threshold
        if p.nms_iou >= 0.0:
            changes["nms_iou"] = p.nms_iou
        if p.max_detections > 0:
            changes["max_detections"] = p.max_detections
        return dataclasses.replace(config, **changes)

    # ---------------------------------------------------------------- model
    @property
    def _model(self) -> LoadedModel | None:
        return self._models.model

    def _build_pipeline(self, bundle: Any, backend: Any) -> FusionPipeline:
        return FusionPipeline(
            backend,
            Registration(self.params.homography),
            self._postprocess_config(bundle),
            max_input_pixels=self.params.max_input_pixels,
        )

    def _load_model(self) -> None:
        """Load and warm up a candidate; swap it in, or keep the serving model on failure."""
        p = self.params
        path = Path(p.bundle_path).expanduser() if p.bundle_path else default_bundle_path()
        request = LoadRequest(
            path=path, backend=p.backend, fp16=p.fp16, threads=p.threads, precision=p.precision
        )
        outcome = self._models.load(request, self._build_pipeline)
        if not outcome.ok:
            self._drops.add("model_load_error")
            if outcome.model is None:
                self._model_error = outcome.error
                self.get_logger().error(
                    f"cannot load model bundle {path} (backend {p.backend}): {outcome.error}; "
                    "the node stays up, publishes diagnostics ERROR and retries when "
                    "bundle_path/backend change"
                )
            else:
                self.get_logger().error(
                    f"cannot load model bundle {path} (backend {p.backend}): {outcome.error}; "
                    f"still serving '{outcome.model.bundle.name}' from {outcome.model.path} "
                    f"on {outcome.model.backend.name} (diagnostics WARN until a load succeeds)"
                )
            return
        model = outcome.model
        self._ir_gain, self._visible_gain = self._make_gains(p, model.bundle)
        self._model_error = ""
        self.get_logger().info(
            f"model '{model.bundle.name}' ({model.bundle.precision}) from {path} on backend "
            f"{model.backend.name} "
            f"(detector: {model.bundle.detection is not None}, "
            f"segmenter: {model.bundle.segmentation is not None}; "
            f"loaded and warmed up in {outcome.seconds:.2f} s)"
        )

    # ---------------------------------------------------------------- ROS I/O
    def _make_publishers(self) -> None:
        # Reliable outputs: both reliable and best-effort subscribers can match them.
        out_qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE
        )
        self._pub_fused = self.create_publisher(Image, "~/fused", out_qos)
        self._pub_seg = self.create_publisher(Image, "~/segmentation", out_qos)
        self._pub_seg_color = self.create_publisher(Image, "~/segmentation/color", out_qos)
        self._pub_debug = self.create_publisher(Image, "~/debug_image", out_qos)
        # image_transport / RViz name camera_info beside the image: ~/camera_info serves
        # ~/fused, ~/segmentation and ~/debug_image; ~/segmentation/camera_info serves
        # ~/segmentation/color. Published only once the visible camera_info has arrived.
        self._pub_camera_info = self.create_publisher(CameraInfo, "~/camera_info", out_qos)
        self._pub_seg_camera_info = self.create_publisher(
            CameraInfo, "~/segmentation/camera_info", out_qos
        )
        self._pub_det_json = self.create_publisher(String, "~/detections/json", out_qos)
        self._pub_det = None
        detection_array = detection2d_array_class()
        if detection_array is not None:
            self._pub_det = self.create_publisher(detection_array, "~/detections", out_qos)
        else:
            self.get_logger().warning(
                "vision_msgs is not importable: ~/detections (Detection2DArray) is off; "
                "detections are published as JSON on ~/detections/json"
            )
        self._pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)

    def _make_subscriptions(self) -> None:
        """Subscriptions, QoS choice and camera_info live in node/inputs.py; here: pairing."""
        p = self.params
        if message_filters is not None:
            # The synchroniser is fed from our own subscriptions (their QoS can change).
            filters = [message_filters.SimpleFilter() for _ in STREAM_NAMES]
            self._sync = message_filters.ApproximateTimeSynchronizer(filters, p.queue_size, p.slop)
            self._sync.registerCallback(self._on_synced_pair)

            def feeding(stream: int) -> Callable[[Any], None]:
                seen = self._seen_callback(stream)

                def callback(msg: Any) -> None:
                    seen(msg)
                    filters[stream].signalMessage(msg)

                return callback

            callbacks = [feeding(stream) for stream in range(len(STREAM_NAMES))]
            pairing = "message_filters.ApproximateTimeSynchronizer"
        else:
            self._pairer = ApproximateTimePairer(
                p.queue_size, p.slop, clock_ns=lambda: self.get_clock().now().nanoseconds
            )
            callbacks = [self._image_callback(stream) for stream in range(len(STREAM_NAMES))]
            pairing = "in-package ApproximateTimePairer (message_filters not importable)"
        self._inputs = NodeInputs(
            self,
            p,
            callbacks,
            now_s=lambda: self._steady.now().nanoseconds * 1e-9,
            clock=self._steady,
        )
        ir_topic, visible_topic = self._inputs.topics()
        self.get_logger().info(
            f"subscribing IR {ir_topic} and visible {visible_topic} (qos:={p.qos}, keep last "
            f"{p.qos_depth}); pairing: {pairing}, slop {p.slop} s, queue {p.queue_size}. "
            "Outputs are reliable, depth 10."
        )

    def _seen(self, stream: int, stamp_ns: int) -> None:
        now = self._steady.now().nanoseconds * 1e-9
        self._rates[STREAM_NAMES[stream]].tick(now)
        self._silence.seen(STREAM_NAMES[stream], now)
        if stamp_ns:
            self._stamp_offsets.add(STREAM_NAMES[stream], stamp_ns)

    def _seen_callback(self, stream: int) -> Callable[[Image], None]:
        def callback(msg: Image) -> None:
            stamp_ns = stamp_to_ns(msg.header.stamp)
            self._seen(stream, stamp_ns)
            self._accounting.seen(stream, stamp_ns)

        return callback

    def _image_callback(self, stream: int) -> Callable[[Image], None]:
        def callback(msg: Image) -> None:
            # No decoding here: the executor thread only pairs and hands over.
            stamp_ns = stamp_to_ns(msg.header.stamp)
            self._seen(stream, stamp_ns)
            if stamp_ns == 0:
                # A driver that never stamps its images cannot be paired by time; queued, it
                # would pair once and then be dropped as a duplicate stamp with no clear reason.
                name = STREAM_NAMES[stream]
                self._count_error(
                    f"zero_stamp_{name}",
                    f"{name} image dropped: header stamp is 0, so it cannot be paired by time; "
                    "make the camera driver stamp its images",
                )
                return
            for pair in self._pairer.add(stream, stamp_ns, msg):
                self._hand_over(pair)

        return callback

    def _on_synced_pair(self, ir_msg: Image, visible_msg: Image) -> None:
        self._accounting.paired(
            stamp_to_ns(ir_msg.header.stamp), stamp_to_ns(visible_msg.header.stamp)
        )
        self._hand_over((ir_msg, visible_msg))

    def _hand_over(self, pair: tuple[Image, Image]) -> None:
        self._pairs += 1
        self._rates["pairs"].tick(self._steady.now().nanoseconds * 1e-9)
        self._slot.put(pair)

    # ---------------------------------------------------------------- inference thread
    def _loader_loop(self) -> None:
        while not self._stop.is_set():
            if not self._reload.wait(0.1):
                continue
            self._reload.clear()
            if self._stop.is_set():
                break
            try:
                self._load_model()
            except Exception as exc:  # _load_model catches load errors; this is a bug guard
                self._count_error("model_load_error", f"model loader failed: {exc!r}")

    def _inference_loop(self) -> None:
        while not self._stop.is_set():
            pair = self._slot.take(0.1)
            if pair is None:
                continue
            try:
                self._process_pair(*pair)
            except Exception as exc:  # never let one bad frame end the thread
                self._count_error("processing_error", f"processing a pair failed: {exc!r}")

    def _count_error(self, reason: str, message: str) -> None:
        """Count always; log at most once per LOG_THROTTLE_S *per reason*.

        rclpy's throttle_duration_sec throttles per call site, and every reason passes through
        this one site: a flood of one error would hide the first occurrence of another.
        """
        self._drops.add(reason)
        now = time.monotonic()
        with self._log_lock:
            last = self._last_logged.get(reason)
            if last is not None and now - last < LOG_THROTTLE_S:
                return
            self._last_logged[reason] = now
        self.get_logger().error(f"{message} [{reason}, repeats logged every {LOG_THROTTLE_S:g} s]")

    def _warn_throttled(self, key: str, message: str) -> None:
        """A warning logged at most once per LOG_THROTTLE_S per key (as _count_error)."""
        now = time.monotonic()
        with self._log_lock:
            last = self._last_logged.get(f"warn:{key}")
            if last is not None and now - last < LOG_THROTTLE_S:
                return
            self._last_logged[f"warn:{key}"] = now
        self.get_logger().warning(f"{message} [{key}, repeats logged every {LOG_THROTTLE_S:g} s]")

    def _decode(self, msg: Any, stream: int) -> np.ndarray | None:
        """An Image or CompressedImage (the transport) as mono8 (IR) / bgr8 (visible)."""
        name = STREAM_NAMES[stream]
        encoding = getattr(msg, "encoding", None) or f"compressed {getattr(msg, 'format', '')!r}"
        problem = check_image_size(msg) if isinstance(msg, Image) else None
        if problem is not None:
            self._count_error(f"size_mismatch_{name}", f"{name} image dropped: {problem}")
            return None
        try:
            array, encoding = image_message_to_array(msg)  # cv_bridge where installed
            if array.dtype.kind == "f":
                nonfinite = int(array.size - np.count_nonzero(np.isfinite(array)))
                if nonfinite:
                    self._counters.add(f"nonfinite_pixels_{name}", nonfinite)
                    self._warn_throttled(
                        f"nonfinite_{name}",
                        f"{name} image ({encoding}) has {nonfinite} NaN/inf pixels of "
                        f"{array.size}; they are left out of the gain and shown as 0",
                    )
            if stream == IR_STREAM:
                return to_mono8(array, encoding, self._ir_gain)
            return to_bgr8(array, encoding, self._visible_gain)
        except (ImageCodecError, ValueError) as exc:
            self._count_error(
                f"decode_error_{name}",
                f"{name} image dropped (encoding {encoding!r}): {exc}",
            )
            return None

    def _process_pair(self, ir_msg: Image, visible_msg: Image) -> None:
        start = time.perf_counter()
        model = self._model
        if model is None:
            self._count_error("no_model", f"pair dropped: no model loaded ({self._model_error})")
            return
        ir = self._decode(ir_msg, IR_STREAM)
        visible = self._decode(visible_msg, VISIBLE_STREAM)
        if ir is None or visible is None:
            return
        try:
            result = model.pipeline.process(ir, visible)
        except Exception as exc:  # BackendError, ValueError from bad sizes, ...
            self._count_error("inference_error", f"inference failed: {exc}")
            return
        header = visible_msg.header
        output_stamp = stamp_to_ns(header.stamp)
        if output_stamp == self._last_output_stamp_ns:
            # Two outputs with one stamp break every consumer that pairs by stamp (TF, bags).
            self._count_error(
                "duplicate_output_stamp",
                f"pair dropped: its visible stamp {output_stamp} ns was already published",
            )
            return
        if self._stop.is_set():
            return  # shutting down: publishers are being destroyed
        self._publish_camera_info(model, result, header, visible.shape[:2])
        self._publish_result(model, result, header)
        self._last_output_stamp_ns = output_stamp
        self._processed += 1
        now_steady = self._steady.now().nanoseconds * 1e-9
        self._rates["processed"].tick(now_steady)
        self._inference_ms.add(result.inference_ms)
        self._total_ms.add(result.total_ms)
        self._overhead_ms.add((time.perf_counter() - start) * 1e3 - result.inference_ms)
        if not self._use_sim_time:
            self._latency.add(self.get_clock().now().nanoseconds, output_stamp)

    def _publish_camera_info(
        self, model: LoadedModel, result: Any, header: Any, input_hw: tuple[int, int]
    ) -> None:
        """The visible camera_info in the outputs' geometry, with their header (none until the
        visible camera_info has arrived)."""
        info = self._inputs.camera_info(VISIBLE_STREAM)
        if info is None:
            return
        out = output_camera_info(info, header, result.fused_y.shape[:2], input_hw)
        self._pub_camera_info.publish(out)
        segmentation = model.bundle.segmentation
        if self.params.publish_segmentation and result.seg_labels is not None and segmentation:
            self._pub_seg_camera_info.publish(out)

    def _publish_result(self, model: LoadedModel, result: Any, header: Any) -> None:
        p = self.params
        config = model.pipeline.config
        if config.colour_output and result.fused_bgr is not None:
            self._pub_fused.publish(array_to_msg(result.fused_bgr, "bgr8", header))
        else:
            self._pub_fused.publish(array_to_msg(result.fused_y, "mono8", header))
        bundle = model.bundle
        image_hw = result.fused_y.shape[:2]
        if p.publish_detections and result.detections is not None and bundle.detection:
            classes = tuple(bundle.detection.classes)
            self._pub_det_json.publish(
                String(
                    data=DetectionsJson.from_detections(
                        result.detections, classes, header, image_hw
                    ).to_json()
                )
            )
            if self._pub_det is not None:
                self._pub_det.publish(to_detection2d_array(result.detections, classes, header))
        if p.publish_segmentation and result.seg_labels is not None and bundle.segmentation:
            self._pub_seg.publish(array_to_msg(result.seg_labels, "mono8", header))
            if self._pub_seg_color.get_subscription_count() > 0:
                colour = render_segmentation_color(result, bundle.segmentation.palette)
                self._pub_seg_color.publish(array_to_msg(colour, "bgr8", header))
        if p.publish_debug and self._pub_debug.get_subscription_count() > 0:
            self._pub_debug.publish(
                array_to_msg(render_debug(result, bundle, config), "bgr8", header)
            )

    # ---------------------------------------------------------------- diagnostics
    def _all_drops(self) -> dict[str, int]:
        drops = self._drops.snapshot()
        if self._pairer is not None:
            for reason, count in self._pairer.stats.dropped.items():
                drops[f"pairing_{reason}"] = count
        else:  # message_filters: unpaired frames counted from outside the synchroniser
            for reason, count in self._accounting.dropped().items():
                drops[f"pairing_{reason}"] = count
        drops["superseded"] = self._slot.dropped_superseded
        return drops

    def health(self) -> HealthSnapshot:
        now = self._steady.now().nanoseconds * 1e-9
        silent = self._silence.silent(now, STREAM_NAMES)
        model = self._model
        p = self.params
        return HealthSnapshot(
            backend=model.backend.name if model else "",
            model=model.bundle.name if model else "",
            precision=model.bundle.precision if model else "",
            qos=self._inputs.qos_summary(),
            rates_hz={name: meter.rate(now) for name, meter in self._rates.items()},
            pairs=self._pairs,
            processed=self._processed,
            drops=self._all_drops(),
            inference_ms=self._inference_ms.percentiles(),
            total_ms=self._total_ms.percentiles(),
            overhead_ms=self._overhead_ms.percentiles(),
            latency_ms=self._latency.percentiles(),
            use_sim_time=self._use_sim_time,
            silent_streams=silent,
            model_error=self._model_error if model is None else "",
            window_counts={name: meter.count(now) for name, meter in self._rates.items()},
            window_s=self._rates["pairs"].window_s,
            slop_s=p.slop,
            stamp_offset_s=self._stamp_offsets.nearest_offset_s(*STREAM_NAMES),
            latency_unavailable=self._latency.unavailable(),
            clock_offset_s=self._latency.clock_offset_s,
            reload_error=self._models.failure if model is not None else "",
            counters=self._counters.snapshot(),
            never_seen=tuple(s for s in STREAM_NAMES if self._silence.never_seen(s)),
        )

    def _publish_diagnostics(self) -> None:
        now = self._steady.now().nanoseconds * 1e-9
        for stream in self._silence.update(now, STREAM_NAMES):
            self._drops.add(f"stream_silent_{stream}")
        snapshot = self.health()
        level, message = health_level(snapshot)
        if snapshot.backend:  # without a model the load error is what is logged
            for key, text in health_warnings(snapshot):
                self._warn_throttled(key, text)
        if snapshot.latency_unavailable and not snapshot.use_sim_time:
            self._warn_throttled(
                "latency_clock", f"latency not reported: {snapshot.latency_unavailable}"
            )
        status = make_status(
            f"{self.get_fully_qualified_name()}: fusion",
            snapshot.backend or "none",
            level,
            message,
            health_key_values(snapshot),
        )
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        array.status = [status]
        self._pub_diag.publish(array)

    # ---------------------------------------------------------------- shutdown
    def destroy_node(self) -> None:
        """Stop and join the inference and loader threads, then destroy; safe to call twice."""
        if getattr(self, "_destroyed", False):
            return
        self._destroyed = True
        self._stop.set()
        self._slot.close()
        for thread, what in ((self._worker, "a frame"), (self._loader, "a model load")):
            if thread.is_alive() and thread is not threading.current_thread():
                thread.join(timeout=5.0)
                if thread.is_alive():
                    self.get_logger().warning(
                        f"{thread.name} is still in {what} after 5 s; destroying the node anyway"
                    )
        super().destroy_node()


def main(args: list[str] | None = None) -> None:
    """Spin until SIGINT/SIGTERM (or an external shutdown), then shut down; exit status 0.

    The signals only set a flag that the spin loop checks between waits (at most 0.1 s), so
    no KeyboardInterrupt can surface in the middle of the clean-up, and a second signal while
    shutting down (``ros2 launch`` forwards SIGINT and the terminal sends its own) is absorbed.
    rclpy's own signal handlers are off for the same reason.
    """
    from rclpy.signals import SignalHandlerOptions

    stop = threading.Event()
    received: list[str] = []

    def request_stop(number: int, _frame: Any) -> None:
        received.append(signal.Signals(number).name)
        stop.set()

    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, request_stop)
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    node: FusionNode | None = None
    executor: SingleThreadedExecutor | None = None
    try:
        node = FusionNode()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
        if received:
            node.get_logger().info(f"{received[0]} received: shutting down")
    except ExternalShutdownException:
        pass
    finally:
        if executor is not None:
            executor.shutdown(timeout_sec=1.0)
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
