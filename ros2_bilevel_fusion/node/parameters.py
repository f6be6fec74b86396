"""fusion_node's parameters: one table (name, default, range, description, restart needed),
the typed view the node works with, and the cross-parameter validation (pure, tested).

Every parameter is declared once from :data:`PARAMETERS`. Ranges go into the ROS descriptor
(so ``ros2 param set`` outside the range is refused by rclpy itself, with the range in the
reason); :func:`validate` adds the checks a single range cannot express.

Parameters that override a model's value (detection thresholds, thermal stretch percentiles)
default to a "use the bundle's value" sentinel, so each such default is written once, in
``core/bundle.py``, and a bundle can change it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from ros2_bilevel_fusion.backends import BACKEND_KINDS
from ros2_bilevel_fusion.core.bundle import PRECISION_CHOICES, PreprocessSpec
from ros2_bilevel_fusion.core.registration import parse_homography

IDENTITY_HOMOGRAPHY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
# auto: reliable when every publisher of the topic is reliable, else best effort (re-checked
# as publishers come and go); reliable / sensor_data (best effort) force one.
QOS_CHOICES = ("auto", "reliable", "sensor_data")
TRANSPORT_CHOICES = ("raw", "compressed")
# Not parameters: the node's input names, relative to its namespace. Topics are set one way
# only, by remapping them (-r ir/image:=/thermal/image_raw); the ``compressed`` transport and
# ``camera_info`` follow the remapped name as image_transport does
# (/thermal/image_raw/compressed, /thermal/camera_info).
IR_IMAGE_TOPIC = "ir/image"
VISIBLE_IMAGE_TOPIC = "visible/image"
# The value of an overriding parameter that means "the bundle's value" (model.yaml).
FROM_BUNDLE = -1.0


@dataclass(frozen=True)
class ParameterSpec:
    name: str
    default: Any
    description: str
    # Inclusive numeric range; None for strings, bools and arrays.
    low: float | None = None
    high: float | None = None
    # read_only: the value is used to build subscriptions/timers, so a change needs a restart.
    read_only: bool = False
    # reload: a change makes the inference thread reload the model (bundle, backend, ...).
    reload: bool = False


PARAMETERS: tuple[ParameterSpec, ...] = (
    ParameterSpec(
        "qos",
        "auto",
        "Input QoS: auto (reliable when every publisher is reliable, else best effort; "
        "re-checked as publishers come and go), reliable, or sensor_data (best effort)",
        read_only=True,
    ),
    ParameterSpec(
        "ir_transport",
        "raw",
        "IR input transport: raw (ir/image) or compressed (ir/image/compressed, JPEG/PNG)",
        read_only=True,
    ),
    ParameterSpec(
        "visible_transport",
        "raw",
        "Visible input transport: raw (visible/image) or compressed "
        "(visible/image/compressed, JPEG/PNG)",
        read_only=True,
    ),
    ParameterSpec("qos_depth", 10, "Input QoS history depth", 1, 1000, read_only=True),
    ParameterSpec(
        "slop",
        0.05,
        "Approximate-time pairing: max stamp difference [s]",
        0.0,
        10.0,
        read_only=True,
    ),
    ParameterSpec(
        "queue_size", 10, "Approximate-time pairing queue per stream", 1, 1000, read_only=True
    ),
    ParameterSpec(
        "stream_timeout",
        3.0,
        "Warn when one stream is silent this long [s] while the other flows",
        0.1,
        3600.0,
        read_only=True,
    ),
    ParameterSpec(
        "backend",
        "auto",
        f"Inference backend: {'|'.join(BACKEND_KINDS)} (changing it reloads the model)",
        reload=True,
    ),
    ParameterSpec(
        "bundle_path",
        "",
        "Model bundle folder; '' = the shipped default (changing it reloads the model)",
        reload=True,
    ),
    ParameterSpec("fp16", False, "TensorRT FP16 engine (changing it reloads)", reload=True),
    ParameterSpec(
        "precision",
        "auto",
        f"Which of the bundle's graphs runs: {'|'.join(PRECISION_CHOICES)}; auto = the "
        "bundle's default_precision, the fastest it measured within its accuracy budget "
        "(changing it reloads)",
        reload=True,
    ),
    ParameterSpec(
        "threads",
        0,
        "onnxruntime/torch intra-op threads, 0 = library default (changing it reloads)",
        0,
        256,
        reload=True,
    ),
    ParameterSpec(
        "max_input_pixels",
        2_100_000,
        "Largest image (pixels) the network runs at: a bigger visible image is shrunk (aspect "
        "kept) before inference and results are mapped back to its size; 0 = no limit. "
        "Bounds time and memory for large cameras (default: 1920x1080 runs unscaled)",
        0,
        1_000_000_000,
    ),
    ParameterSpec(
        "score_threshold",
        FROM_BUNDLE,
        "Detection score threshold; < 0 = the bundle's detection.score_threshold (model.yaml)",
        FROM_BUNDLE,
        1.0,
    ),
    ParameterSpec(
        "nms_iou",
        FROM_BUNDLE,
        "NMS IoU threshold; < 0 = the bundle's detection.nms_iou (model.yaml)",
        FROM_BUNDLE,
        1.0,
    ),
    ParameterSpec(
        "max_detections",
        0,
        "Max detections per image; 0 = the bundle's detection.max_detections (model.yaml)",
        0,
        10000,
    ),
    ParameterSpec(
        "overlay_alpha", 0.5, "Segmentation overlay opacity in debug/colour images", 0.0, 1.0
    ),
    ParameterSpec("colour_output", True, "~/fused as bgr8 with visible chroma (true) or mono8"),
    ParameterSpec(
        "fused_stretch",
        True,
        "Apply the bundle's per-frame contrast stretch of the fused image (model.yaml "
        "fused_stretch; no effect without one); false = the network's output as it is",
    ),
    ParameterSpec(
        "fused_stretch_smoothing",
        0.0,
        "Fused stretch limit smoothing across frames (0 = each frame alone, as evaluated)",
        0.0,
        0.99,
    ),
    ParameterSpec("publish_detections", True, "Publish ~/detections and ~/detections/json"),
    ParameterSpec("publish_segmentation", True, "Publish ~/segmentation and ~/segmentation/color"),
    ParameterSpec("publish_debug", True, "Publish ~/debug_image (only while subscribed)"),
    ParameterSpec(
        "homography",
        IDENTITY_HOMOGRAPHY,
        "IR->visible homography, 9 row-major values (identity = same field of view, IR resized)",
    ),
    ParameterSpec(
        "agc_low_percentile",
        FROM_BUNDLE,
        "16-bit/float thermal gain: low percentile; < 0 = the bundle's "
        "preprocessing.thermal_low_percentile (model.yaml)",
        FROM_BUNDLE,
        100.0,
    ),
    ParameterSpec(
        "agc_high_percentile",
        FROM_BUNDLE,
        "16-bit/float thermal gain: high percentile; < 0 = the bundle's "
        "preprocessing.thermal_high_percentile (model.yaml)",
        FROM_BUNDLE,
        100.0,
    ),
    ParameterSpec(
        "agc_smoothing", 0.0, "Thermal gain limit smoothing across frames, 0 = off", 0.0, 0.99
    ),
    ParameterSpec(
        "diagnostics_period",
        1.0,
        "Seconds between /diagnostics messages",
        0.1,
        60.0,
        read_only=True,
    ),
)
SPECS: dict[str, ParameterSpec] = {spec.name: spec for spec in PARAMETERS}


@dataclass(frozen=True)
class FusionParameters:
    """Typed snapshot of every parameter (field names = parameter names)."""

    qos: str
    ir_transport: str
    visible_transport: str
    qos_depth: int
    slop: float
    queue_size: int
    stream_timeout: float
    backend: str
    bundle_path: str
    fp16: bool
    precision: str
    threads: int
    max_input_pixels: int
    score_threshold: float
    nms_iou: float
    max_detections: int
    overlay_alpha: float
    colour_output: bool
    fused_stretch: bool
    fused_stretch_smoothing: float
    publish_detections: bool
    publish_segmentation: bool
    publish_debug: bool
    homography: tuple[float, ...]
    agc_low_percentile: float
    agc_high_percentile: float
    agc_smoothing: float
    diagnostics_period: float

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> FusionParameters:
        kwargs = {}
        for f in fields(cls):
            value = values[f.name]
            if f.name == "homography":
                value = tuple(float(v) for v in value)
            kwargs[f.name] = value
        return cls(**kwargs)

    def replace(self, changes: Mapping[str, Any]) -> FusionParameters:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return FusionParameters.from_values(values)


def validate(params: FusionParameters, preprocessing: PreprocessSpec | None = None) -> str | None:
    """None when the combination is usable, else the reason (shown to ``ros2 param set``).

    ``preprocessing``: the loaded bundle's, for the percentiles left to the bundle (< 0);
    without a bundle, the contract's defaults.
    """
    if params.qos not in QOS_CHOICES:
        return f"qos must be one of {QOS_CHOICES}, got {params.qos!r}"
    for name in ("ir_transport", "visible_transport"):
        if getattr(params, name) not in TRANSPORT_CHOICES:
            return f"{name} must be one of {TRANSPORT_CHOICES}, got {getattr(params, name)!r}"
    if params.backend.strip().lower() not in BACKEND_KINDS:
        return f"backend must be one of {BACKEND_KINDS}, got {params.backend!r}"
    if params.precision.strip().lower() not in PRECISION_CHOICES:
        return f"precision must be one of {PRECISION_CHOICES}, got {params.precision!r}"
    low, high = _percentiles(params, preprocessing or PreprocessSpec())
    if not low < high:
        return (
            f"agc_low_percentile ({low}) must be below agc_high_percentile ({high}); "
            "< 0 stands for the bundle's value"
        )
    for spec in PARAMETERS:
        if spec.low is None:
            continue
        value = getattr(params, spec.name)
        if not spec.low <= value <= spec.high:
            return f"{spec.name}={value} is outside [{spec.low}, {spec.high}]"
    try:
        parse_homography(params.homography)
    except ValueError as exc:
        return str(exc)
    return None


def repair_parameters(
    params: FusionParameters,
) -> tuple[FusionParameters, list[tuple[str, str]]]:
    """Reset only the parameters that make ``params`` invalid to their defaults.

    Returns the repaired parameters and (name, reason) for each reset, so a start-up typo in
    one parameter does not throw away the user's other settings.
    """
    fixes: list[tuple[str, str]] = []
    reason = validate(params)
    while reason is not None:
        for spec in PARAMETERS:
            default = spec.default
            if getattr(params, spec.name) == default:
                continue
            trial = params.replace({spec.name: default})
            if validate(trial) != reason:  # this reset removed the current problem
                fixes.append((spec.name, reason))
                params, reason = trial, validate(trial)
                break
        else:  # pragma: no cover - defaults are valid (tested), so some reset always helps
            raise ValueError(f"cannot repair parameters: {reason}")
    return params, fixes


def descriptor(spec: ParameterSpec) -> Any:
    """rcl_interfaces/ParameterDescriptor for one spec (ROS import kept local)."""
    from rcl_interfaces.msg import (
        FloatingPointRange,
        IntegerRange,
        ParameterDescriptor,
        ParameterType,
    )

    types = {
        bool: ParameterType.PARAMETER_BOOL,
        int: ParameterType.PARAMETER_INTEGER,
        float: ParameterType.PARAMETER_DOUBLE,
        str: ParameterType.PARAMETER_STRING,
        tuple: ParameterType.PARAMETER_DOUBLE_ARRAY,
    }
    desc = ParameterDescriptor(
        name=spec.name,
        type=types[type(spec.default)],
        description=spec.description,
        read_only=spec.read_only,
    )
    if spec.low is not None:
        if isinstance(spec.default, int) and not isinstance(spec.default, bool):
            desc.integer_range = [
                IntegerRange(from_value=int(spec.low), to_value=int(spec.high), step=1)
            ]
        else:
            desc.floating_point_range = [
                FloatingPointRange(from_value=float(spec.low), to_value=float(spec.high), step=0.0)
            ]
    return desc


def _percentiles(params: FusionParameters, preprocessing: PreprocessSpec) -> tuple[float, float]:
    low = params.agc_low_percentile
    high = params.agc_high_percentile
    low = low if low >= 0.0 else preprocessing.thermal_low_percentile
    high = high if high >= 0.0 else preprocessing.thermal_high_percentile
    return low, high


def gain_percentiles(
    params: FusionParameters, preprocessing: PreprocessSpec
) -> tuple[float, float]:
    """(low, high) thermal stretch percentiles: each parameter, or the bundle's where < 0.

    A mix that is not a range (a parameter validated against another bundle's values) falls
    back to the bundle's pair, so the node always has a usable stretch.
    """
    low, high = _percentiles(params, preprocessing)
    if not low < high:
        return preprocessing.thermal_low_percentile, preprocessing.thermal_high_percentile
    return low, high
