"""The model bundle: the one contract between training and runtime.

A bundle is a folder holding ``model.yaml`` and the ONNX file it names. Training writes it
with :func:`save_bundle` (``python -m training.export``); every runtime part (node, backends,
evaluation) learns how to run a model only through :func:`load_bundle`. TensorRT engines are
built from the ONNX on the target GPU and cached next to it (see ``backends/tensorrt_backend``).

Graph convention (format_version 1), one ONNX graph holding every network:

* inputs ``ir``: float32 ``[N, 1, H, W]`` in [0, 1] (8-bit thermal / 255; 16-bit and float
  thermal first go through the percentile stretch of ``preprocessing``),
  ``visible_ycrcb``: float32 ``[N, 3, H, W]`` in [0, 1], OpenCV's YCrCb (``cv2.COLOR_BGR2YCrCb``)
  / 255. H and W are dynamic and must be multiples of ``inputs.pad_multiple``; the runtime pads
  (``preprocessing.pad_mode``) and crops outputs back. ``processing.prepare_inputs`` is the one
  implementation of these rules.
* outputs: ``fused_y`` ``[N, 1, H, W]`` in [0, 1]; if the bundle has a detector, one triple of raw
  head tensors per stride (see :class:`DetectionSpec`); if it has a segmenter, logits
  ``[N, C, H, W]``. The semantic networks inside the graph see the colour image made of the
  fused Y and the visible CrCb, as the runtime's colour restore does.

Detection heads (model.yaml ``detection.head``; absent means ``fcos``, so bundles written before
the key existed decode as they always did). Every tensor is raw (logits, not probabilities), per
stride s, of grid size ``[H/s, W/s]``; the cell (i, j) is row i, column j:

* ``fcos``: levels ``{stride, cls, box, ctr}``. ``cls`` ``[N, C, h, w]`` class logits, ``box``
  ``[N, 4, h, w]`` (l, t, r, b) distances in units of the stride (negative clamps to 0), ``ctr``
  ``[N, 1, h, w]`` centerness logits. Anchor point ((j + 0.5) s, (i + 0.5) s); box
  (x - l s, y - t s, x + r s, y + b s); score_c = sqrt(sigmoid(cls_c) * sigmoid(ctr)).
  ``box_encoding: ltrb_stride``.
* ``yolox``: levels ``{stride, reg, obj, cls}``. ``reg`` ``[N, 4, h, w]`` (dx, dy, log w, log h),
  ``obj`` ``[N, 1, h, w]`` objectness logits, ``cls`` ``[N, C, h, w]`` class logits. Box centre
  ((dx + j) s, (dy + i) s), size (exp(log w) s, exp(log h) s); score_c = sigmoid(obj) *
  sigmoid(cls_c). ``box_encoding: xy_offset_log_wh_stride``.

Fused stretch (optional): ``fused_stretch`` ``{low_percentile, high_percentile, max_gain,
min_std}`` stretches the published fused luma per frame (:class:`FusedStretchSpec`); absent,
the network's ``fused_y`` is published as it is.

Precisions (optional): ``precisions`` maps a precision name to another ONNX file of the same
graph with the same inputs and outputs (``int8``: statically quantised, QDQ, written by
``python -m training.quantize``); ``onnx`` is always the ``fp32`` graph. ``default_precision``
names the one the runtime's ``auto`` runs: the quantiser sets it to the fastest file it measured
within the accuracy budget, so a bundle whose int8 graph is slower or less accurate keeps fp32.
:func:`select_precision` turns a bundle into the bundle of one precision.

Both heads then share the rest (``processing.decode_detections``): boxes in padded-input pixels
clipped to the image, candidates with score > ``score_threshold`` (strict), class-aware NMS at
``nms_iou`` (OpenCV ``NMSBoxesBatched``), the ``max_detections`` best. A level whose keys are not
its head's exact keys, or an unknown head, is refused at load with a :class:`BundleError`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

FORMAT_VERSION = 1
MODEL_YAML = "model.yaml"

# Every default the runtime applies lives here, once. A key missing from model.yaml takes the
# value below, so bundles written before a key existed behave exactly as they did then.
DEFAULT_SCORE_THRESHOLD = 0.3
DEFAULT_NMS_IOU = 0.5
DEFAULT_MAX_DETECTIONS = 100
# reflect_101: mirror without repeating the edge pixel (OpenCV BORDER_REFLECT_101, numpy
# "reflect"); constant: black (IR 0, YCrCb (0, 128, 128)), as training pads its batches.
PAD_MODES = ("reflect_101", "constant")
# fp32 is model.yaml's ``onnx``; the others come from its ``precisions`` mapping.
PRECISIONS = ("fp32", "int8")
# what a runtime asks for when it wants the bundle's own choice (``default_precision``)
AUTO_PRECISION = "auto"
PRECISION_CHOICES = (AUTO_PRECISION, *PRECISIONS)
DEFAULT_PAD_MODE = "reflect_101"
DEFAULT_THERMAL_LOW_PERCENTILE = 1.0
DEFAULT_THERMAL_HIGH_PERCENTILE = 99.0


class BundleError(RuntimeError):
    """A model bundle is missing, unreadable or does not follow the contract."""


@dataclass(frozen=True)
class InputSpec:
    ir_name: str = "ir"
    visible_name: str = "visible_ycrcb"
    layout: str = "NCHW"
    dtype: str = "float32"
    value_range: tuple[float, float] = (0.0, 1.0)
    # 0 means dynamic; otherwise the graph was exported for this fixed size only.
    height: int = 0
    width: int = 0
    # Dynamic H and W must be padded up to a multiple of this (the detector's largest stride).
    pad_multiple: int = 32


def _check_stride(stride: Any) -> None:
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ValueError(f"stride must be an integer >= 1, got {stride!r}")


# One dataclass per head rather than one level with optional fields: the two heads share no
# tensor but the stride, so each level is complete by construction (no per-head None checks at
# decode time), its fields are exactly the keys model.yaml must hold for that head (the loader's
# unknown/missing-key check is the dataclass's own), and FcosLevel keeps DetectionLevel's
# positional order, so code and bundles written before the yolox head work unchanged.
@dataclass(frozen=True)
class FcosLevel:
    """One stride of the ``fcos`` head (see the module docstring for the decoding)."""

    stride: int
    cls: str  # [N, num_classes, H/s, W/s] logits
    box: str  # [N, 4, H/s, W/s] (l, t, r, b) distances in units of the stride, >= 0
    ctr: str  # [N, 1, H/s, W/s] centerness logits

    def __post_init__(self) -> None:
        _check_stride(self.stride)

    @property
    def output_names(self) -> tuple[str, ...]:
        return (self.cls, self.box, self.ctr)


# Former name of FcosLevel (the only level there was); kept for existing callers.
DetectionLevel = FcosLevel


@dataclass(frozen=True)
class YoloxLevel:
    """One stride of the ``yolox`` head (see the module docstring for the decoding)."""

    stride: int
    reg: str  # [N, 4, H/s, W/s] (dx, dy, log w, log h); centre ((dx + j) s, (dy + i) s)
    obj: str  # [N, 1, H/s, W/s] objectness logits
    cls: str  # [N, num_classes, H/s, W/s] class logits

    def __post_init__(self) -> None:
        _check_stride(self.stride)

    @property
    def output_names(self) -> tuple[str, ...]:
        return (self.reg, self.obj, self.cls)


# model.yaml ``detection.head`` -> (level dataclass, the one box encoding of that head).
DETECTION_HEADS: dict[str, tuple[type, str]] = {
    "fcos": (FcosLevel, "ltrb_stride"),
    "yolox": (YoloxLevel, "xy_offset_log_wh_stride"),
}
DEFAULT_DETECTION_HEAD = "fcos"


@dataclass(frozen=True)
class DetectionSpec:
    """Raw anchor-free head outputs, decoded by the runtime (``processing.decode_detections``).

    ``head`` picks the head format and its level type (FcosLevel or YoloxLevel); the box
    coordinates and score of each are in the module docstring. ``box_encoding`` is implied by
    the head (left empty, it is filled in); a different value is refused.
    """

    classes: tuple[str, ...]
    levels: tuple[FcosLevel | YoloxLevel, ...]
    box_encoding: str = ""
    # Defaults of the node's score_threshold / nms_iou / max_detections parameters.
    score_threshold: float = DEFAULT_SCORE_THRESHOLD
    nms_iou: float = DEFAULT_NMS_IOU
    max_detections: int = DEFAULT_MAX_DETECTIONS
    head: str = DEFAULT_DETECTION_HEAD

    def __post_init__(self) -> None:
        if self.head not in DETECTION_HEADS:
            raise ValueError(f"head must be one of {sorted(DETECTION_HEADS)}, got {self.head!r}")
        level_type, encoding = DETECTION_HEADS[self.head]
        if not self.box_encoding:
            object.__setattr__(self, "box_encoding", encoding)
        elif self.box_encoding != encoding:
            raise ValueError(
                f"box_encoding of the {self.head} head is {encoding!r}, got {self.box_encoding!r}"
            )
        for level in self.levels:
            if not isinstance(level, level_type):
                raise ValueError(
                    f"the {self.head} head takes {level_type.__name__} levels, "
                    f"got {type(level).__name__}"
                )
        if not 0.0 <= self.score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be in [0, 1], got {self.score_threshold}")
        if not 0.0 <= self.nms_iou <= 1.0:
            raise ValueError(f"nms_iou must be in [0, 1], got {self.nms_iou}")
        if int(self.max_detections) < 1:
            raise ValueError(f"max_detections must be >= 1, got {self.max_detections}")

    @property
    def output_names(self) -> list[str]:
        """Every raw head tensor, level by level."""
        return [name for level in self.levels for name in level.output_names]


def check_percentile_range(
    low: float, high: float, names: tuple[str, str] = ("low_percentile", "high_percentile")
) -> None:
    """Refuse percentile limits outside ``0 <= low < high <= 100`` (the thermal stretch, the
    fused stretch and the gain control share this one check); ``names`` are the fields the
    message names."""
    if not 0.0 <= low < high <= 100.0:
        raise ValueError(f"need 0 <= {names[0]} < {names[1]} <= 100, got {low}, {high}")


@dataclass(frozen=True)
class PreprocessSpec:
    """How camera images become graph inputs (model.yaml ``preprocessing``, optional).

    ``thermal_*_percentile``: 16-bit and float thermal images are stretched to 8 bits between
    these percentiles of each frame (the node's ``agc_*_percentile`` parameters default to
    them). ``pad_mode``: how the bottom and right are padded to ``inputs.pad_multiple``.
    """

    pad_mode: str = DEFAULT_PAD_MODE
    thermal_low_percentile: float = DEFAULT_THERMAL_LOW_PERCENTILE
    thermal_high_percentile: float = DEFAULT_THERMAL_HIGH_PERCENTILE

    def __post_init__(self) -> None:
        if self.pad_mode not in PAD_MODES:
            raise ValueError(f"pad_mode must be one of {PAD_MODES}, got {self.pad_mode!r}")
        check_percentile_range(
            self.thermal_low_percentile, self.thermal_high_percentile,
            ("thermal_low_percentile", "thermal_high_percentile"),
        )


@dataclass(frozen=True)
class FusedStretchSpec:
    """A per-frame contrast stretch of the fused luma (model.yaml ``fused_stretch``, optional;
    absent: the network's output is published as it is).

    The fused image is mapped linearly from its ``low_percentile`` and ``high_percentile``
    (0 / 100: its minimum and maximum, the normalisation CDDFuse's test script applies to
    every fused image) to the full 8-bit range. A frame whose limits are closer than
    255 / ``max_gain`` grey levels (a flat scene, where any gain would amplify noise) is kept
    as it is, with no floor either. ``min_std`` (0: off) then raises a frame whose standard
    deviation is below that many grey levels to it, scaling its deviations about its mean (the
    gain capped by ``max_gain``): a contrast floor for scenes that span the range through a few
    pixels and are flat elsewhere. Only the published fused image changes: detection and
    segmentation run inside the graph on the network's output.
    """

    low_percentile: float = 0.0
    high_percentile: float = 100.0
    max_gain: float = 4.0
    min_std: float = 0.0

    def __post_init__(self) -> None:
        check_percentile_range(self.low_percentile, self.high_percentile)
        if not 1.0 <= self.max_gain < math.inf:
            raise ValueError(f"max_gain must be finite and >= 1, got {self.max_gain}")
        if not 0.0 <= self.min_std <= 127.5:
            raise ValueError(f"min_std must be in [0, 127.5] grey levels, got {self.min_std}")


@dataclass(frozen=True)
class SegmentationSpec:
    classes: tuple[str, ...]
    # One RGB triple per class; index 0 is usually background.
    palette: tuple[tuple[int, int, int], ...]
    logits: str = "seg_logits"


@dataclass(frozen=True)
class ModelBundle:
    name: str
    onnx_path: Path
    inputs: InputSpec
    fused_name: str = "fused_y"
    detection: DetectionSpec | None = None
    segmentation: SegmentationSpec | None = None
    preprocessing: PreprocessSpec = field(default_factory=PreprocessSpec)
    fused_stretch: FusedStretchSpec | None = None
    # TorchScript file of the same graph for the torch backend (model.yaml ``torchscript``);
    # None when the bundle ships ONNX only.
    torchscript_path: Path | None = None
    # Free-form: training config, data, git commit, metrics measured at export.
    provenance: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    # precision -> ONNX file of the same graph (model.yaml ``precisions``); fp32 is onnx_path
    onnx_variants: dict[str, Path] = field(default_factory=dict)
    default_precision: str = "fp32"
    # the precision of onnx_path (select_precision sets it)
    precision: str = "fp32"

    @property
    def precisions(self) -> tuple[str, ...]:
        """Every precision this bundle can run, fp32 first."""
        return ("fp32", *sorted(self.onnx_variants))

    @property
    def folder(self) -> Path:
        return self.onnx_path.parent

    @property
    def output_names(self) -> list[str]:
        names = [self.fused_name]
        if self.detection is not None:
            names += self.detection.output_names
        if self.segmentation is not None:
            names.append(self.segmentation.logits)
        return names


def _as_tuple(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_as_tuple(v) for v in value)
    return value


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise BundleError(f"{where}: unknown keys {sorted(unknown)}")
    try:
        return cls(**{k: _as_tuple(v) for k, v in data.items()})
    except (TypeError, ValueError) as exc:
        raise BundleError(f"{where}: {exc}") from exc


def _load_detection(section: Any, yaml_path: Path) -> DetectionSpec:
    """model.yaml ``detection`` -> DetectionSpec; every fault a BundleError naming file and key."""
    if not isinstance(section, dict):
        raise BundleError(f"{yaml_path}: detection must be a mapping, got {type(section).__name__}")
    det = dict(section)
    head = det.get("head", DEFAULT_DETECTION_HEAD)
    if not isinstance(head, str) or head not in DETECTION_HEADS:
        raise BundleError(
            f"{yaml_path}: detection.head {head!r} is not supported; "
            f"expected one of {', '.join(DETECTION_HEADS)} (absent means {DEFAULT_DETECTION_HEAD})"
        )
    level_type = DETECTION_HEADS[head][0]
    keys = [f.name for f in dataclasses.fields(level_type)]
    raw_levels = det.get("levels") or []
    if not isinstance(raw_levels, list):
        raise BundleError(f"{yaml_path}: detection.levels must be a list of mappings")
    levels = []
    for index, raw in enumerate(raw_levels):
        where = f"{yaml_path}: detection.levels[{index}]"
        if not isinstance(raw, dict):
            raise BundleError(f"{where}: expected a mapping with keys {keys}, got {raw!r}")
        unknown = sorted(set(raw) - set(keys))
        missing = [k for k in keys if k not in raw]
        if unknown or missing:
            others = [
                name
                for name, (other_type, _) in DETECTION_HEADS.items()
                if set(raw) == {f.name for f in dataclasses.fields(other_type)}
            ]
            faults = [f"unknown keys {unknown}"] if unknown else []
            faults += [f"missing keys {missing}"] if missing else []
            if others:
                faults.append(f"these are {others[0]} level keys (detection.head: {others[0]})")
            raise BundleError(
                f"{where}: a {head} level has keys {keys} (detection.head: {head}); "
                + "; ".join(faults)
            )
        levels.append(_build(level_type, raw, where))
    if not levels:
        raise BundleError(f"{yaml_path}: detection has no levels")
    det["levels"] = tuple(levels)
    return _build(DetectionSpec, det, f"{yaml_path}: detection")


def load_bundle(path: str | Path) -> ModelBundle:
    """Read and validate a bundle from its folder (or its model.yaml path)."""
    path = Path(path)
    yaml_path = path / MODEL_YAML if path.is_dir() else path
    if not yaml_path.is_file():
        raise BundleError(f"no {MODEL_YAML} at {yaml_path}")
    try:
        data = yaml.safe_load(yaml_path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:  # a binary or truncated file written over model.yaml
        raise BundleError(
            f"{yaml_path}: not a text file (byte {exc.start} is not UTF-8); "
            f"{MODEL_YAML} must be YAML text"
        ) from exc
    except OSError as exc:
        raise BundleError(f"{yaml_path}: cannot read: {exc}") from exc
    except yaml.YAMLError as exc:
        raise BundleError(f"{yaml_path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise BundleError(f"{yaml_path}: expected a mapping at the top level")
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"{yaml_path}: format_version {version!r} is not supported (expected {FORMAT_VERSION})"
        )
    onnx_path = yaml_path.parent / str(data.get("onnx", "model.onnx"))
    if not onnx_path.is_file():
        raise BundleError(f"{yaml_path}: ONNX file {onnx_path} is missing")
    torchscript_path = None
    if data.get("torchscript"):
        torchscript_path = yaml_path.parent / str(data["torchscript"])
        if not torchscript_path.is_file():
            raise BundleError(f"{yaml_path}: TorchScript file {torchscript_path} is missing")
    detection = None
    if data.get("detection"):
        detection = _load_detection(data["detection"], yaml_path)
    segmentation = None
    if data.get("segmentation"):
        segmentation = _build(SegmentationSpec, data["segmentation"], f"{yaml_path}: segmentation")
        if len(segmentation.palette) != len(segmentation.classes):
            raise BundleError(f"{yaml_path}: segmentation palette and classes differ in length")
    variants, default_precision = _load_precisions(data, yaml_path)
    return ModelBundle(
        name=str(data.get("name", yaml_path.parent.name)),
        onnx_path=onnx_path,
        inputs=_build(InputSpec, data.get("inputs", {}), f"{yaml_path}: inputs"),
        fused_name=str(data.get("fused_name", "fused_y")),
        detection=detection,
        segmentation=segmentation,
        preprocessing=_build(
            PreprocessSpec, data.get("preprocessing") or {}, f"{yaml_path}: preprocessing"
        ),
        fused_stretch=_load_fused_stretch(data.get("fused_stretch"), yaml_path),
        torchscript_path=torchscript_path,
        provenance=dict(data.get("provenance") or {}),
        format_version=FORMAT_VERSION,
        onnx_variants=variants,
        default_precision=default_precision,
    )


def parse_fused_stretch(text: object) -> FusedStretchSpec | None:
    """``off`` -> None; ``LOW:HIGH`` percentiles (``0:100`` = min-max), optionally
    ``LOW:HIGH:MIN_STD`` (the contrast floor, grey levels) -> a FusedStretchSpec with the
    default ``max_gain``. Raises ValueError for anything else (the command lines' spelling of
    model.yaml's ``fused_stretch``)."""
    if text is False:  # YAML reads an unquoted off as false
        return None
    if not isinstance(text, str):  # and an unquoted 1:59 as the sexagesimal integer 119
        raise ValueError(f"expected off, LOW:HIGH or LOW:HIGH:MIN_STD as text (quote it in "
                         f"YAML), got {text!r}")
    cleaned = text.strip().lower()
    if cleaned == "off":
        return None
    parts = cleaned.split(":")
    if len(parts) not in (2, 3):
        raise ValueError(f"expected off, LOW:HIGH or LOW:HIGH:MIN_STD, got {text!r}")
    values = [float(part) for part in parts]
    return FusedStretchSpec(values[0], values[1], min_std=values[2] if len(values) == 3 else 0.0)


def _load_fused_stretch(section: Any, yaml_path: Path) -> FusedStretchSpec | None:
    if section is None:
        return None
    if not isinstance(section, dict):
        raise BundleError(
            f"{yaml_path}: fused_stretch must be a mapping, got {type(section).__name__}"
        )
    return _build(FusedStretchSpec, section, f"{yaml_path}: fused_stretch")


def select_precision(bundle: ModelBundle, precision: str) -> ModelBundle:
    """The bundle whose ``onnx_path`` is the graph of ``precision`` (``auto``: the bundle's
    ``default_precision``). Other precisions than fp32 are ONNX only, so their bundle has no
    TorchScript file (the torch backend then says so). Raises BundleError for a precision the
    bundle does not have, naming the ones it has."""
    wanted = str(precision).strip().lower()
    if wanted == AUTO_PRECISION:
        wanted = bundle.default_precision
    if wanted == bundle.precision:
        return bundle
    if wanted == "fp32":
        raise BundleError(f"{bundle.name}: select precisions from the loaded (fp32) bundle")
    if wanted not in bundle.onnx_variants:
        raise BundleError(
            f"bundle {bundle.name!r} has no {wanted!r} graph; it has {list(bundle.precisions)} "
            f"(an int8 graph is made by python -m training.quantize)"
        )
    return dataclasses.replace(
        bundle, onnx_path=bundle.onnx_variants[wanted], torchscript_path=None, precision=wanted
    )


def _load_precisions(data: dict[str, Any], yaml_path: Path) -> tuple[dict[str, Path], str]:
    raw = data.get("precisions") or {}
    if not isinstance(raw, dict):
        raise BundleError(f"{yaml_path}: precisions must map a precision to an ONNX file")
    variants: dict[str, Path] = {}
    for name, file in raw.items():
        if name not in PRECISIONS or name == "fp32":
            raise BundleError(
                f"{yaml_path}: precisions: {name!r} is not one of {list(PRECISIONS[1:])} "
                "(fp32 is the onnx key)"
            )
        path = yaml_path.parent / str(file)
        if not path.is_file():
            raise BundleError(f"{yaml_path}: {name} ONNX file {path} is missing")
        variants[str(name)] = path
    default = str(data.get("default_precision", "fp32"))
    if default != "fp32" and default not in variants:
        raise BundleError(
            f"{yaml_path}: default_precision {default!r} is not among {['fp32', *variants]}"
        )
    return variants, default


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {k: _plain(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _detection_dict(detection: DetectionSpec) -> dict[str, Any]:
    plain = _plain(detection)
    return {"head": plain.pop("head"), **plain}  # the head first: it says how to read the rest


def bundle_to_dict(bundle: ModelBundle) -> dict[str, Any]:
    if bundle.precision != "fp32":
        raise BundleError("write the fp32 bundle; its precisions mapping names the other graphs")
    return {
        "format_version": bundle.format_version,
        "name": bundle.name,
        "onnx": bundle.onnx_path.name,
        **({"torchscript": bundle.torchscript_path.name} if bundle.torchscript_path else {}),
        **(
            {
                "precisions": {k: p.name for k, p in sorted(bundle.onnx_variants.items())},
                "default_precision": bundle.default_precision,
            }
            if bundle.onnx_variants
            else {}
        ),
        "inputs": _plain(bundle.inputs),
        "fused_name": bundle.fused_name,
        "detection": _detection_dict(bundle.detection) if bundle.detection else None,
        "segmentation": _plain(bundle.segmentation) if bundle.segmentation else None,
        "preprocessing": _plain(bundle.preprocessing),
        **({"fused_stretch": _plain(bundle.fused_stretch)} if bundle.fused_stretch else {}),
        "provenance": _plain(bundle.provenance),
    }


def save_bundle(bundle: ModelBundle, folder: str | Path | None = None) -> Path:
    """Write model.yaml next to the bundle's ONNX file (which must already be there)."""
    folder = Path(folder) if folder is not None else bundle.folder
    folder.mkdir(parents=True, exist_ok=True)
    yaml_path = folder / MODEL_YAML
    yaml_path.write_text(yaml.safe_dump(bundle_to_dict(bundle), sort_keys=False))
    return yaml_path
