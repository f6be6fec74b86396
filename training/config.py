"""The training config: typed sections, one default per key, unknown keys rejected by name.

A YAML file overrides :class:`TrainConfig`'s defaults; ``base: other.yaml`` (relative to the
file) chains files, merged section by section; ``--override dotted.key=yaml_value`` replaces one
value (a mapping value replaces the whole mapping). Every key must be a field below:
a misspelt key is an error naming it, never a silently ignored setting.

The ``export`` section's detection defaults are the bundle contract's
(:class:`ros2_bilevel_fusion.core.bundle.DetectionSpec`), so training never restates them.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ros2_bilevel_fusion.core.bundle import DetectionSpec, parse_fused_stretch
from training.losses import STRETCHES, TARGETS, FusionLossWeights
from training.models import DETECTOR_ARCHS, SEGMENTER_ARCHS

REPO_ROOT = Path(__file__).resolve().parents[1]
MODES = ("bilevel", "joint", "fusion_only")
DEVICES = ("cpu", "cuda", "auto")
MODULES = ("discriminator", "detector", "segmenter")

_DETECTION_DEFAULTS = {f.name: f.default for f in dataclasses.fields(DetectionSpec)}


@dataclass
class ModulesConfig:
    """Which lower-level modules a run trains."""

    discriminator: bool = True
    detector: bool = True
    segmenter: bool = True


@dataclass
class LambdasConfig:
    """lambda_k of F_k = L_fusion + lambda_k l_k."""

    discriminator: float = 0.05
    detector: float = 0.1
    segmenter: float = 0.1


@dataclass
class LearningRates:
    fusion: float = 1e-3
    discriminator: float = 1e-4
    detector: float = 1e-3
    segmenter: float = 1e-3


@dataclass
class AggregationConfig:
    """:class:`training.bilevel.DynamicAggregator`'s settings."""

    kind: str = "loss_rate"
    temperature: float = 0.05
    ema: float = 0.95
    fixed_weights: dict[str, float] | None = None
    # Continuing with a changed aggregation signal or temperature starts its history afresh
    # instead of mixing two definitions (breaks exact resume on purpose).
    reset_on_resume: bool = False


@dataclass
class DataConfig:
    root: str = "../shared/data"  # relative to the repository root
    fusion_sets: list[str] = field(default_factory=lambda: ["roadscene", "msrs"])
    msrs_labels: str = "labels/fusion"
    # Held-out MSRS names, never trained on (fusion pool or labelled pool); null means
    # training.datasets.MSRS_HOLDOUT_NAMES (8 of 28, 4 of the 8 masked pairs, day and night).
    msrs_eval_names: list[str] | None = None
    synthetic_train: int = 64
    synthetic_eval: int = 16
    synthetic_seed_train: int = 1
    synthetic_seed_eval: int = 2
    # Labelled pool mix and crop. MSRS-train is 20 pairs against hundreds of synthetic
    # scenes, so without repeats ~7 % of detector samples are real and the detector fits
    # the synthetic domain only (held-out MSRS mAP@0.5 ~0.02). msrs_repeat lists MSRS-train
    # that many times in the labelled pool (the per-epoch permutations then draw it that
    # much more often). labelled_crop (null = crop) is the labelled pool's crop: MSRS
    # persons are up to ~300 px tall at 640x480 and are evaluated at full size, so 128 px
    # crops only ever show fragments of them. labelled_scale_range (null =
    # datasets.DEFAULT_SCALE_RANGE) is the random rescale of the labelled MSRS pairs.
    msrs_repeat: int = 1
    labelled_crop: int | None = None
    labelled_scale_range: list[float] | None = None
    # Merged boxes (ground_truth.merge_annotations) instead of one folder: msrs_labels is then
    # the folder holding one YOLO folder per name listed here (e.g. [fusion, infrared,
    # visible]); null = the single folder msrs_labels.
    msrs_label_annotations: list[str] | None = None
    # Extra labelled pool from a named split of ros2_bilevel_fusion.evaluation.splits (only a
    # ":train" split is accepted, e.g. "msrs_det:train"), merged labels of
    # msrs_label_annotations (null = fusion, infrared, visible), listed msrs_det_repeat times.
    msrs_det_split: str | None = None
    msrs_det_repeat: int = 1
    # Segmentation pseudo-labels for the msrs_det_split pairs (training.pseudo_masks: the
    # DeepLabV3 teacher on IR and visible, merged, cut by the boxes), built into
    # runs/pseudo_masks/<split> on first use; false = those pairs carry no mask.
    msrs_det_pseudo_masks: bool = False
    # Extra semantic evaluation set (e.g. "msrs_det:val", where thresholds and checkpoints are
    # chosen), merged labels, full size; logged as eval/<split name with ':' -> '_'>/...
    msrs_det_eval_split: str | None = None


@dataclass
class EvalConfig:
    every: int = 50  # 0 = never
    folder: str | None = "tno"  # held-out pair folder under data.root for fusion metrics
    max_images: int = 25
    max_side: int = 0  # 0 = full resolution
    semantic: bool = True
    score_metrics: list[str] = field(
        default_factory=lambda: ["EN", "SD", "SF", "MI", "SCD", "VIF", "Qabf", "SSIM"]
    )
    # The logged scalar that chooses best.pt instead of the fusion-folder score, e.g.
    # "eval/msrs_det_val/mAP50" for a stage that trains only the detector (null = fusion score).
    select_metric: str | None = None


@dataclass
class DetectorConfig:
    """The detector network (``training.models.build_detector``).

    ``arch``: ``fcos`` (the compact FCOS detector, trained from scratch; the default, so configs
    without this section are unchanged) or ``yolox_nano`` (YOLOX-Nano, bundle head ``yolox``).
    ``pretrained`` (relative to the repository root): the YOLOX-Nano COCO ONNX file whose
    weights start the detector (sha256 checked; its name, sha256 and Apache-2.0 licence go into
    checkpoint and bundle provenance); null = fresh weights (or those of ``init_from``).
    ``keep_classes``: the COCO ids kept as the detection classes, one per
    ``models.DETECTION_CLASSES`` entry (person, bicycle, car = COCO 0, 1, 2).
    """

    arch: str = "fcos"
    pretrained: str | None = None
    keep_classes: list[int] = field(default_factory=lambda: [0, 1, 2])


@dataclass
class SegmenterConfig:
    """The segmenter network (``training.models.build_segmenter``).

    ``arch``: ``compact`` (the compact encoder-decoder; the default, so configs without this
    section are unchanged) or ``yolox_nano`` (YOLOX-Nano's backbone and neck with a light
    segmentation head). ``pretrained``: the YOLOX-Nano COCO ONNX file whose backbone and neck
    start it (sha256 checked; in the provenance as ``pretrained_segmenter*``); null = fresh
    weights (or those of ``init_from``). ``backbone_from_detector`` (yolox_nano with a YOLOX
    detector): after ``init_from`` is loaded, copy the detector's backbone and neck into the
    segmenter (frozen unless ``train_backbone``), so that the exported graph computes them once
    for both (``models.ExportModel.shares_backbone``).
    """

    arch: str = "compact"
    pretrained: str | None = None
    # yolox_nano only: also train the backbone and neck (default: the head alone)
    train_backbone: bool = False
    backbone_from_detector: bool = False


@dataclass
class ExportConfig:
    """The bundle train.py writes at the end (the same function as ``python -m
    training.export``). The detection defaults are the bundle contract's."""

    enabled: bool = False
    out: str | None = None  # relative to the repository root
    name: str | None = None  # the bundle's name (model.yaml ``name``); null = the run's name
    parity_sizes: list[list[int]] = field(default_factory=lambda: [[256, 320]])
    score_threshold: float = _DETECTION_DEFAULTS["score_threshold"]
    nms_iou: float = _DETECTION_DEFAULTS["nms_iou"]
    max_detections: int = _DETECTION_DEFAULTS["max_detections"]
    # model.yaml's fused_stretch, quoted: "off", "LOW:HIGH" or "LOW:HIGH:MIN_STD"
    # (core.bundle.parse_fused_stretch)
    fused_stretch: str = "off"


@dataclass
class TrainConfig:
    name: str = "run"
    seed: int = 0
    mode: str = "bilevel"  # one of MODES
    fusion: str = "realtime"  # training.models.build_fusion's names
    steps: int = 100
    warmup_steps: int = 0  # fusion-only steps before the bi-level ones
    batch_size: int = 2
    crop: int = 128
    lower_steps: int = 1
    modules: ModulesConfig = field(default_factory=ModulesConfig)
    lambdas: LambdasConfig = field(default_factory=LambdasConfig)
    lr: LearningRates = field(default_factory=LearningRates)
    grad_clip: float = 1.0  # 0 = no clipping
    # Trust region of the hypergradient's implicit term (bilevel.first_order_hypergradient);
    # null = no cap. Without it the critic's term reached 1000x |grad_theta F| and the fused
    # image collapsed (runs/default phase 2, steps 800-1200).
    max_correction_ratio: float | None = 1.0
    # Weight of the soft Dice term added to the segmenter's cross-entropy
    # (losses.segmentation_loss); 0 = cross-entropy alone, as stages 1-3 were trained.
    segmentation_dice: float = 0.0
    # Cross-entropy weight of the background class (the object classes weigh 1): MSRS objects
    # are ~1 % of the pseudo-labelled pixels.
    segmentation_background_weight: float = 1.0
    # losses.FusionLossWeights: its defaults are the loss module's.
    fusion_loss: FusionLossWeights = field(default_factory=FusionLossWeights)
    # Checkpoint whose network weights (fusion and every module it has that this run trains)
    # start this run; step, optimisers and aggregator start afresh. For a second stage, e.g.
    # semantic heads fine-tuned on a frozen bi-level fusion net (configs/default_semantic.yaml).
    # Unlike --resume, which continues the same run exactly.
    init_from: str | None = None
    # The modules init_from loads (fusion, discriminator, detector, segmenter); null = all the
    # run has. A stage that restarts the detector from its pretrained file lists the others.
    init_modules: list[str] | None = None
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    segmenter: SegmenterConfig = field(default_factory=SegmenterConfig)
    aggregation: AggregationConfig = field(default_factory=AggregationConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log_every: int = 1  # TensorBoard scalars every N steps (0 = never)
    tensorboard: bool = True  # write runs/<name>/tb
    checkpoint_every: int = 50
    out_dir: str | None = None  # default runs/<name>
    export: ExportConfig = field(default_factory=ExportConfig)
    threads: int = 0  # torch intra-op threads (0 = leave torch's default)
    # Where the networks train: "cpu" (what every shipped bundle was trained on), "cuda" (one
    # GPU; an error where there is none) or "auto" (cuda when one is visible, else cpu).
    # Data loading, augmentation and the metric code stay on the CPU.
    device: str = "cpu"

    def to_dict(self) -> dict[str, Any]:
        """Plain mapping (what checkpoints and bundle provenance store)."""
        return dataclasses.asdict(self)

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) if self.out_dir else REPO_ROOT / "runs" / self.name


# ------------------------------------------------------------------------------------------
# Building and checking
# ------------------------------------------------------------------------------------------


def _dataclass_type(hint: Any) -> type | None:
    """The dataclass a field holds (``X`` or ``X | None``), else None."""
    if dataclasses.is_dataclass(hint):
        return hint
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        for arg in typing.get_args(hint):
            if dataclasses.is_dataclass(arg):
                return arg
    return None


def from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping; unknown keys are a ValueError naming them."""
    if not isinstance(data, dict):
        raise ValueError(f"{where or 'config'}: expected a mapping, got {data!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        keys = ", ".join(f"{where}{k}" for k in unknown)
        raise ValueError(f"unknown config key(s): {keys}")
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for key, value in data.items():
        nested = _dataclass_type(hints[key])
        if nested is not None and isinstance(value, dict):
            value = from_dict(nested, value, f"{where}{key}.")
        elif hints[key] is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        values[key] = value
    return cls(**values)


def validate(config: TrainConfig) -> TrainConfig:
    if config.mode not in MODES:
        raise ValueError(f"mode {config.mode!r} not in {MODES}")
    try:
        parse_fused_stretch(config.export.fused_stretch)
    except ValueError as exc:
        raise ValueError(f"export.fused_stretch: {exc}") from exc
    if config.device not in DEVICES:
        raise ValueError(f"device {config.device!r} not in {DEVICES}")
    if int(config.steps) < 0 or int(config.batch_size) < 1:
        raise ValueError("steps must be >= 0 and batch_size >= 1")
    if int(config.crop) % 32:
        raise ValueError("crop must be a multiple of 32 (the detector's largest stride)")
    if config.data.labelled_crop is not None and int(config.data.labelled_crop) % 32:
        raise ValueError("data.labelled_crop must be a multiple of 32 (the detector's stride)")
    if int(config.data.msrs_repeat) < 0:
        raise ValueError("data.msrs_repeat must be >= 0 (0 = no MSRS pairs in the labelled pool)")
    if int(config.data.msrs_repeat) and config.data.msrs_det_eval_split:
        # Every msrs name lies in msrs_det:val's frame range (evaluation.splits): choosing on
        # msrs_det:val after training on msrs would validate on training frames.
        raise ValueError(
            "data.msrs_repeat must be 0 with data.msrs_det_eval_split: msrs pairs lie in "
            "msrs_det:val's frame range"
        )
    unknown_modules = set(config.init_modules or ()) - {
        "fusion", "discriminator", "detector", "segmenter"
    }
    if unknown_modules:
        raise ValueError(f"init_modules: unknown modules {sorted(unknown_modules)}")
    if config.init_modules is not None and not config.init_from:
        raise ValueError("init_modules needs init_from")
    if config.detector.arch not in DETECTOR_ARCHS:
        raise ValueError(
            f"detector.arch {config.detector.arch!r} not in {sorted(DETECTOR_ARCHS)}"
        )
    if config.detector.arch == "fcos" and config.detector.pretrained:
        raise ValueError("detector.pretrained is only for detector.arch yolox_nano")
    if config.segmenter.arch not in SEGMENTER_ARCHS:
        raise ValueError(
            f"segmenter.arch {config.segmenter.arch!r} not in {list(SEGMENTER_ARCHS)}"
        )
    if config.segmenter.arch == "compact" and config.segmenter.pretrained:
        raise ValueError("segmenter.pretrained is only for segmenter.arch yolox_nano")
    if config.fusion_loss.target not in TARGETS:
        raise ValueError(f"fusion_loss.target must be one of {list(TARGETS)}")
    if config.fusion_loss.stretch not in STRETCHES:
        raise ValueError(f"fusion_loss.stretch must be one of {list(STRETCHES)}")
    if config.segmenter.backbone_from_detector and (
        config.segmenter.arch != "yolox_nano" or config.detector.arch != "yolox_nano"
    ):
        raise ValueError(
            "segmenter.backbone_from_detector needs segmenter.arch and detector.arch yolox_nano"
        )
    split = config.data.msrs_det_split
    if split is not None and not str(split).endswith(":train"):
        raise ValueError(f"data.msrs_det_split must be a ':train' split, got {split!r}")
    if int(config.data.msrs_det_repeat) < 1:
        raise ValueError("data.msrs_det_repeat must be >= 1")
    if "tno" in config.data.fusion_sets:
        raise ValueError("tno is the evaluation set; it must not be a training set")
    return config


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read_chain(path: Path) -> dict[str, Any]:
    """The file's mapping merged over its ``base:`` chain (no defaults yet)."""
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config is a mapping")
    base_name = data.pop("base", None)
    base = _read_chain(path.parent / base_name) if base_name else {}
    return _merge(base, data)


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} is not key=value")
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(raw)
    return data


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> TrainConfig:
    """The typed config of a YAML file (``base:`` chain, then ``dotted.key=value`` overrides)."""
    data = apply_overrides(_read_chain(Path(path)), overrides)
    return validate(from_dict(TrainConfig, data))
