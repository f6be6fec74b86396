"""Checkpoint -> model bundle (model.yaml + model.onnx + model.pt), with an ORT parity check.

    python -m training.export --checkpoint CKPT --out models/<name> [--name N] [--opset 17]
        [--dynamic] [--check-parity] [--score-threshold T] [--nms-iou I] [--max-detections N]
        [--tensorrt [--fp16] [--int8 --calib DIR] [--timing-cache PATH]]

``python -m training.train`` calls the same :func:`export_checkpoint` at the end of a run, with
its config's ``export`` section; the bundle and its provenance are the same either way.

The checkpoint is what the trainer saves: {"architecture": {...}, "fusion": state_dict,
"detector": state_dict | None, "segmenter": state_dict | None, "config": dict, "step": int,
...}; its "data" and "metrics" (finite values only) are copied into the bundle's provenance.

Files: ``model.onnx`` (every runtime backend; dynamic H and W, the runtime pads to
``pad_multiple``; ``--dynamic`` also makes the batch axis dynamic), ``model.pt`` (TorchScript,
``torch.jit.trace`` of the same module the ONNX exporter traces, for the torch backend, which
loads it with ``torch.jit.load`` and needs no training code; its ``state_dict()`` is the
ExportModel's, see :func:`model_from_torchscript`), ``model.yaml`` (naming model.pt as
``torchscript``). Detection defaults not given here are the bundle contract's
(``core.bundle.DetectionSpec``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ros2_bilevel_fusion.core.bundle import (
    DEFAULT_MAX_DETECTIONS,
    DEFAULT_NMS_IOU,
    DEFAULT_SCORE_THRESHOLD,
    DetectionLevel,
    DetectionSpec,
    FusedStretchSpec,
    InputSpec,
    ModelBundle,
    SegmentationSpec,
    YoloxLevel,
    load_bundle,
    parse_fused_stretch,
    save_bundle,
)
from training.models import (
    DETECTION_CLASSES,
    SEGMENTATION_CLASSES,
    SEGMENTATION_PALETTE,
    ExportModel,
    build_detector,
    build_export_model,
    build_fusion,
    build_segmenter,
    detector_head,
)

INPUT_NAMES = ("ir", "visible_ycrcb")
PAD_MULTIPLE = 32
TORCHSCRIPT_FILE = "model.pt"
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PARITY_SIZES: tuple[tuple[int, int], ...] = ((256, 320), (480, 640))


def git_commit(repo: Path | None = None) -> str:
    """HEAD of the repository holding this file ("unknown" outside a git checkout)."""
    repo = repo or REPO_ROOT
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def model_from_checkpoint(checkpoint: dict[str, Any]) -> ExportModel:
    """ExportModel.from_parts with the trainer's state dicts loaded (strictly)."""
    architecture = checkpoint["architecture"]
    fusion = build_fusion(architecture["fusion"])
    fusion.load_state_dict(checkpoint["fusion"])
    detector = segmenter = None
    if architecture.get("detector"):
        if checkpoint.get("detector") is None:
            raise ValueError("architecture has a detector but the checkpoint has no weights")
        detector = build_detector(
            int(architecture["detector"]["num_classes"]),
            str(architecture["detector"].get("arch", "fcos")),
        )
        detector.load_state_dict(checkpoint["detector"])
    if architecture.get("segmenter"):
        if checkpoint.get("segmenter") is None:
            raise ValueError("architecture has a segmenter but the checkpoint has no weights")
        segmenter = build_segmenter(
            int(architecture["segmenter"]["num_classes"]),
            str(architecture["segmenter"].get("arch", "compact")),
        )
        segmenter.load_state_dict(checkpoint["segmenter"])
    return ExportModel.from_parts(fusion, detector, segmenter, architecture).eval()


def model_from_torchscript(path: Path, architecture: dict[str, Any]) -> ExportModel:
    """The eager ExportModel of a bundle's TorchScript file (its weights, strictly)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=FutureWarning)  # torch.jit's deprecation
        scripted = torch.jit.load(str(path), map_location="cpu")
    model = build_export_model(architecture)
    model.load_state_dict(scripted.state_dict())
    return model.eval()


def runtime_spec(name: str = "training") -> ModelBundle:
    """The input side of the bundle this package writes (no graph yet): what
    ``core.processing.prepare_inputs`` needs to feed a network as the runtime will."""
    return ModelBundle(
        name=name, onnx_path=Path("model.onnx"), inputs=InputSpec(pad_multiple=PAD_MULTIPLE)
    )


def detection_spec(
    detector: torch.nn.Module,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    nms_iou: float = DEFAULT_NMS_IOU,
    max_detections: int = DEFAULT_MAX_DETECTIONS,
) -> DetectionSpec:
    """The bundle's detection section of a detector module: head ``fcos`` (FcosLevel) or
    ``yolox`` (YoloxLevel), output names as ``ExportModel.output_names`` writes them. Training's
    evaluation decodes YOLOX outputs with the runtime's decode through this same spec."""
    num_classes = detector.num_classes
    classes = (
        DETECTION_CLASSES
        if num_classes == len(DETECTION_CLASSES)
        else tuple(f"class_{i}" for i in range(num_classes))
    )
    head = detector_head(detector)
    if head == "yolox":
        levels: tuple = tuple(
            YoloxLevel(stride=s, reg=f"det_reg_s{s}", obj=f"det_obj_s{s}", cls=f"det_cls_s{s}")
            for s in detector.strides
        )
    else:
        levels = tuple(
            DetectionLevel(stride=s, cls=f"det_cls_s{s}", box=f"det_box_s{s}", ctr=f"det_ctr_s{s}")
            for s in detector.strides
        )
    return DetectionSpec(
        classes=classes,
        levels=levels,
        score_threshold=float(score_threshold),
        nms_iou=float(nms_iou),
        max_detections=int(max_detections),
        head=head,
    )


def checkpoint_from_bundle(torchscript_path: Path) -> dict[str, Any]:
    """A trainer-checkpoint-shaped mapping (architecture + state dicts, nothing else) of a
    bundle's TorchScript file, its architecture read from the sibling ``model.yaml``'s
    provenance; what config ``init_from: models/default/model.pt`` loads, so a second stage can
    start from a shipped bundle without the run folder that produced it."""
    torchscript_path = Path(torchscript_path)
    bundle = load_bundle(torchscript_path.parent / "model.yaml")
    architecture = dict((bundle.provenance or {})["architecture"])
    model = model_from_torchscript(torchscript_path, architecture)
    return {
        "architecture": model.architecture,
        "fusion": model.fusion.state_dict(),
        "detector": model.detector.state_dict() if model.detector is not None else None,
        "segmenter": model.segmenter.state_dict() if model.segmenter is not None else None,
        "source": {"bundle": str(torchscript_path), "name": bundle.name},
    }


def bundle_spec(
    model: ExportModel,
    onnx_path: Path,
    *,
    name: str,
    provenance: dict[str, Any],
    torchscript_path: Path | None = None,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    nms_iou: float = DEFAULT_NMS_IOU,
    max_detections: int = DEFAULT_MAX_DETECTIONS,
    fused_stretch: FusedStretchSpec | None = None,
) -> ModelBundle:
    detection = (
        detection_spec(model.detector, score_threshold, nms_iou, max_detections)
        if model.detector is not None
        else None
    )
    segmentation = None
    if model.segmenter is not None:
        num_classes = model.segmenter.num_classes
        if num_classes == len(SEGMENTATION_CLASSES):
            classes, palette = SEGMENTATION_CLASSES, SEGMENTATION_PALETTE
        else:
            classes = tuple(f"class_{i}" for i in range(num_classes))
            rng = np.random.default_rng(0)
            palette = tuple(tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in classes)
        segmentation = SegmentationSpec(classes=classes, palette=palette, logits="seg_logits")
    return ModelBundle(
        name=name,
        onnx_path=onnx_path,
        torchscript_path=torchscript_path,
        inputs=runtime_spec().inputs,
        fused_name="fused_y",
        detection=detection,
        segmentation=segmentation,
        fused_stretch=fused_stretch,
        provenance=provenance,
    )


def _sample_inputs(hw: tuple[int, int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    height, width = hw
    ir = torch.rand(1, 1, height, width, generator=generator)
    visible = torch.rand(1, 3, height, width, generator=generator)
    return ir, visible


def export_onnx(
    model: ExportModel,
    onnx_path: Path,
    *,
    opset: int = 17,
    sample_hw: tuple[int, int] = (256, 320),
    dynamic_batch: bool = False,
) -> Path:
    """torch.onnx.export (TorchScript exporter) with dynamic H/W, then onnx.checker."""
    import onnx

    model = model.eval()
    output_names = model.output_names
    dynamic_axes: dict[str, dict[int, str]] = {}
    for tensor_name in (*INPUT_NAMES, *output_names):
        axes = {2: f"{tensor_name}_height", 3: f"{tensor_name}_width"}
        if tensor_name in INPUT_NAMES:
            axes = {2: "height", 3: "width"}
        if dynamic_batch:
            axes[0] = "batch"
        dynamic_axes[tensor_name] = axes
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of dynamo (needs onnxscript, which is
        # not installed); it is still the one that handles dynamic H/W in these graphs cleanly.
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            model,
            _sample_inputs(sample_hw),
            str(onnx_path),
            input_names=list(INPUT_NAMES),
            output_names=output_names,
            opset_version=opset,
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
            dynamo=False,
        )
    onnx.checker.check_model(onnx.load(str(onnx_path)), full_check=True)
    return onnx_path


def export_torchscript(
    model: ExportModel, path: Path, sample_hw: tuple[int, int] = (256, 320)
) -> Path:
    """``torch.jit.trace`` of the eval-mode model, saved for ``torch.jit.load``.

    Trace, not script: the ONNX file is traced from the same module, so both files hold the same
    graph; H and W stay dynamic (shapes are recorded as ``size`` ops; checked at several sizes
    in test/test_export.py); scripting would need the networks rewritten for TorchScript's type
    rules. torch.export's program format would need dynamic-shape declarations and a newer
    loader on the robot for no gain here."""
    model = model.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        warnings.simplefilter("ignore", category=FutureWarning)  # torch.jit's deprecation
        traced = torch.jit.trace(model, _sample_inputs(sample_hw), check_trace=False)
        torch.jit.save(traced, str(path))
    return path


def export_bundle(
    model: ExportModel,
    out_dir: Path,
    *,
    name: str,
    provenance: dict[str, Any],
    opset: int = 17,
    sample_hw: tuple[int, int] = (256, 320),
    dynamic_batch: bool = False,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    nms_iou: float = DEFAULT_NMS_IOU,
    max_detections: int = DEFAULT_MAX_DETECTIONS,
    fused_stretch: FusedStretchSpec | None = None,
) -> Path:
    """Write model.onnx, model.pt (TorchScript) and model.yaml into out_dir.

    ``fused_stretch``: the runtime's per-frame contrast stretch of the fused image, written to
    model.yaml (None: the network's output is published as it is).

    provenance gets "architecture" (from the model), "git_commit", "exported_at" and "opset"
    added when absent; pass the training config, data and metrics in it.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    onnx_path = export_onnx(
        model, out_dir / "model.onnx", opset=opset, sample_hw=sample_hw,
        dynamic_batch=dynamic_batch,
    )
    torchscript_path = export_torchscript(model, out_dir / TORCHSCRIPT_FILE, sample_hw=sample_hw)
    full_provenance = dict(provenance)
    full_provenance.setdefault("architecture", model.architecture)
    full_provenance.setdefault("git_commit", git_commit())
    full_provenance.setdefault(
        "exported_at", dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    )
    full_provenance.setdefault("opset", opset)
    bundle = bundle_spec(
        model, onnx_path, name=name, provenance=full_provenance, torchscript_path=torchscript_path,
        score_threshold=score_threshold, nms_iou=nms_iou, max_detections=max_detections,
        fused_stretch=fused_stretch,
    )
    save_bundle(bundle, out_dir)
    load_bundle(out_dir)  # fail here, not in the node, if the written bundle is invalid
    return out_dir


def checkpoint_provenance(checkpoint: dict[str, Any], checkpoint_path: Path) -> dict[str, Any]:
    """The bundle provenance of a trainer checkpoint (one schema for every export): its
    architecture, path (relative to the repository when inside it), step, config, data and
    the finite metrics measured at that checkpoint."""
    path = Path(checkpoint_path)
    try:
        shown = str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        shown = str(path)
    provenance: dict[str, Any] = {
        "architecture": checkpoint["architecture"],
        "checkpoint": shown,
        "step": checkpoint.get("step"),
        "config": checkpoint.get("config", {}),
    }
    if "data" in checkpoint:
        provenance["data"] = checkpoint["data"]
    if "soup" in checkpoint:  # training.soup: the members whose weights were averaged
        provenance["soup"] = checkpoint["soup"]
    # a pretrained detector's file, sha256 and licence (training.yolox.provenance()), top level
    provenance.update(checkpoint.get("detector_provenance") or {})
    # likewise for a segmenter whose backbone came from that file (pretrained_segmenter*)
    provenance.update(checkpoint.get("segmenter_provenance") or {})
    metrics = {
        k: float(v) for k, v in (checkpoint.get("metrics") or {}).items()
        if isinstance(v, (int, float)) and math.isfinite(v)
    }
    if metrics:
        provenance["metrics"] = metrics
    return provenance


def export_checkpoint(
    checkpoint_path: Path,
    out_dir: Path,
    *,
    name: str | None = None,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    nms_iou: float = DEFAULT_NMS_IOU,
    max_detections: int = DEFAULT_MAX_DETECTIONS,
    fused_stretch: FusedStretchSpec | None = None,
    opset: int = 17,
    dynamic_batch: bool = False,
    parity_sizes: list[tuple[int, int]] | tuple[tuple[int, int], ...] | None = None,
) -> tuple[ExportModel, dict[str, Any] | None]:
    """Trainer checkpoint -> bundle in ``out_dir``; with ``parity_sizes``, the ORT parity report
    (:func:`check_parity`). The one export path: ``training.train`` and this module's CLI."""
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    model = model_from_checkpoint(checkpoint)
    out_dir = Path(out_dir)
    export_bundle(
        model, out_dir, name=name or out_dir.name,
        provenance=checkpoint_provenance(checkpoint, Path(checkpoint_path)),
        opset=opset, dynamic_batch=dynamic_batch, score_threshold=score_threshold,
        nms_iou=nms_iou, max_detections=max_detections, fused_stretch=fused_stretch,
    )
    report = None
    if parity_sizes:
        report = check_parity(model, out_dir, [tuple(int(v) for v in s) for s in parity_sizes])
    return model, report


def parity_failed(report: dict[str, Any], tolerance: float = 1e-3) -> bool:
    """The fused image differs by ``tolerance`` or more between ORT and torch."""
    return report["max"]["fused_y"] >= tolerance


def check_parity(
    model: ExportModel,
    bundle_dir: Path,
    hw_list: tuple[tuple[int, int], ...] | list[tuple[int, int]] = DEFAULT_PARITY_SIZES,
) -> dict[str, Any]:
    """Max abs difference per output between ORT (CPU) on the bundle and torch on the model.

    Returns {"HxW": {output_name: max_abs_diff, ...}, ..., "max": {output_name: worst}}.
    Sizes must be multiples of the bundle's pad_multiple.
    """
    import onnxruntime as ort

    bundle = load_bundle(bundle_dir)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(
        str(bundle.onnx_path), options, providers=["CPUExecutionProvider"]
    )
    names = bundle.output_names
    model = model.eval()
    report: dict[str, Any] = {}
    worst: dict[str, float] = {}
    for index, hw in enumerate(hw_list):
        ir, visible = _sample_inputs(tuple(hw), seed=index + 1)
        with torch.no_grad():
            expected = [t.numpy() for t in model(ir, visible)]
        got = session.run(names, {"ir": ir.numpy(), "visible_ycrcb": visible.numpy()})
        diffs = {}
        for tensor_name, a, b in zip(names, expected, got, strict=True):
            if a.shape != b.shape:
                raise AssertionError(f"{tensor_name}: torch {a.shape} vs onnxruntime {b.shape}")
            diffs[tensor_name] = float(np.abs(a - b).max())
            worst[tensor_name] = max(worst.get(tensor_name, 0.0), diffs[tensor_name])
        report[f"{hw[0]}x{hw[1]}"] = diffs
    report["max"] = worst
    return report


def print_parity(report: dict[str, Any]) -> None:
    for size, diffs in report.items():
        line = ", ".join(f"{k} {v:.2e}" for k, v in diffs.items())
        print(f"parity ORT vs torch, max abs diff, {size}: {line}", flush=True)


def _build_tensorrt(args: argparse.Namespace, onnx_path: Path) -> Path:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        sys.exit("--tensorrt: the tensorrt module is not importable here (it needs an NVIDIA "
                 "GPU and TensorRT 10); build the engine on the target, the node does it on "
                 "first start.")
    from ros2_bilevel_fusion.backends.tensorrt_backend import build_engine, make_int8_calibrator

    calibrator = None
    if args.int8:
        if not args.calib:
            sys.exit("--int8 needs --calib DIR (folder of calibration image pairs)")
        calibrator = make_int8_calibrator(Path(args.calib))
    engine = build_engine(
        onnx_path,
        fp16=args.fp16,
        int8_calibrator=calibrator,
        timing_cache_path=Path(args.timing_cache) if args.timing_cache else None,
        # min / max H, W: the backend's defaults (32x32 .. 1088x1920); tuned for 640x480
        opt_hw=(480, 640),
    )
    engine_path = onnx_path.with_suffix(".engine")
    engine_path.write_bytes(engine)
    return engine_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="trainer checkpoint (.pt)")
    parser.add_argument("--out", required=True, help="bundle folder to write")
    parser.add_argument("--name", default=None, help="bundle name (default: folder name)")
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--dynamic", action="store_true", help="dynamic batch axis as well")
    parser.add_argument("--check-parity", action="store_true", help="ORT vs torch report")
    parser.add_argument("--tensorrt", action="store_true", help="also build a TensorRT engine")
    parser.add_argument("--fp16", action="store_true")
    parser.add_argument("--int8", action="store_true")
    parser.add_argument("--calib", default=None, help="calibration data folder for --int8")
    parser.add_argument("--timing-cache", default=None)
    parser.add_argument(
        "--score-threshold", type=float, default=DEFAULT_SCORE_THRESHOLD,
        help="the bundle's default detection score threshold (the node's score_threshold)",
    )
    parser.add_argument("--nms-iou", type=float, default=DEFAULT_NMS_IOU)
    parser.add_argument("--max-detections", type=int, default=DEFAULT_MAX_DETECTIONS)
    parser.add_argument(
        "--fused-stretch", type=parse_fused_stretch, default=None,
        metavar="off|LOW:HIGH[:MIN_STD]",
        help="the fused image's per-frame contrast stretch written to model.yaml (0:100 = "
        "min-max; a third value: the contrast floor in grey levels; default off: the "
        "network's output as it is)",
    )
    args = parser.parse_args(argv)

    out_dir = Path(args.out)
    _, report = export_checkpoint(
        Path(args.checkpoint), out_dir, name=args.name, score_threshold=args.score_threshold,
        nms_iou=args.nms_iou, max_detections=args.max_detections,
        fused_stretch=args.fused_stretch, opset=args.opset,
        dynamic_batch=args.dynamic,
        parity_sizes=DEFAULT_PARITY_SIZES if args.check_parity else None,
    )
    print(f"wrote bundle {out_dir} (model.yaml, model.onnx, {TORCHSCRIPT_FILE})")
    if report is not None:
        print_parity(report)
        if parity_failed(report):
            print("parity FAILED: fused_y differs by >= 1e-3", file=sys.stderr)
            return 1
    if args.tensorrt:
        print(f"wrote TensorRT engine {_build_tensorrt(args, out_dir / 'model.onnx')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
