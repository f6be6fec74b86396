"""A bundle's int8 graph: onnxruntime static quantisation, measured, and written into the bundle.

    python -m training.quantize --bundle models/default [--calib-split msrs_det:train]
        [--calib-pairs 16] [--scope all|semantic] [--val-split msrs_det:val] [--threads 2]

What it does, in order:

1. Calibration inputs: ``--calib-pairs`` pairs of ``--calib-split`` (spread evenly over its
   names, so day and night both appear; never a val or test split), prepared exactly as the
   node prepares a frame (``core.processing.prepare_inputs``) at their own size.
2. ``onnxruntime.quantization``: ``quant_pre_process`` (shape inference and graph
   clean-up), then ``quantize_static`` in QDQ format with per-channel int8 weights and int8
   activations, both symmetric (the only Q/DQ form TensorRT's ONNX parser accepts; uint8
   activations scored better under onnxruntime but no faster, docs/cpu_speed.md), and MinMax
   calibration by default. ``--scope semantic`` leaves the fusion net's nodes in
   float (the fused image is the product; its TNO metrics have a 1 % budget) and quantises
   the detector and segmenter; ``--scope backbone`` quantises only the YOLOX backbone and neck
   (the convolution-heavy part), leaving every head and the colour conversion in float.
3. The measurement that decides ``default_precision``: both graphs through the runtime
   (``evaluation.folder``) on ``--val-split`` (person AP@0.5, mAP@0.5, segmentation person IoU
   against the split's pseudo-labels when ``training.pseudo_masks`` has made them, and the
   eight fusion metrics), and their speed at 640x480 (onnxruntime CPU, ``--threads``, medians of
   interleaved rounds in this process). int8 becomes the default only when it is faster and
   within the budget: at most 0.01 lower person AP@0.5, mAP@0.5 and person IoU and at most 1 %
   worse on each fusion metric (the budget of issue 11).
4. ``model_int8.onnx`` is written beside ``model.onnx``; model.yaml gets ``precisions: {int8:
   model_int8.onnx}``, ``default_precision`` and the measurement under
   ``provenance.quantization``.

Test-set numbers are not measured here (the choice is made on val); report them with
``fusion-eval folder --precision int8``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import cv2
import numpy as np

from ros2_bilevel_fusion.core.bundle import ModelBundle, load_bundle, save_bundle
from ros2_bilevel_fusion.core.processing import prepare_inputs
from ros2_bilevel_fusion.evaluation import splits
from ros2_bilevel_fusion.evaluation.folder import split_pairs
from training.yolox import BACKBONE_AND_NECK

INT8_FILE = "model_int8.onnx"
SCOPES = ("all", "semantic", "backbone")
# activation-range calibration of quantize_graph (onnxruntime's CalibrationMethod)
CALIBRATIONS = ("minmax", "percentile", "entropy")
T = TypeVar("T")

# The accuracy budget (issue 11): AP points as fractions, fusion metrics as relative change.
MAX_AP_DROP = 0.01
MAX_FUSION_METRIC_CHANGE = 0.01
# and segmentation person IoU (against the split's pseudo-labels) in IoU points
MAX_IOU_DROP = 0.01
FUSION_METRICS = ("EN", "SD", "SF", "MI", "SCD", "VIF", "Qabf", "SSIM")
# int8 must be at least this much faster (ratio of medians) to be worth a default change
MIN_SPEEDUP = 1.03


@dataclasses.dataclass(frozen=True)
class Feeds:
    """Graph inputs of one pair, named as the bundle's graph names them."""

    values: dict[str, np.ndarray]


def spread(names: Sequence[T], count: int) -> list[T]:
    """``count`` items evenly spread over ``names`` (all of them when there are fewer)."""
    if count <= 0:
        raise ValueError("count must be >= 1")
    if count >= len(names):
        return list(names)
    positions = np.linspace(0, len(names) - 1, count).round().astype(int)
    return [names[i] for i in positions]


def pair_feeds(ir_u8: np.ndarray, visible_bgr: np.ndarray, bundle: ModelBundle) -> Feeds:
    prepared = prepare_inputs(ir_u8, visible_bgr, bundle)
    return Feeds({
        bundle.inputs.ir_name: prepared.ir,
        bundle.inputs.visible_name: prepared.visible_ycrcb,
    })


def split_feeds(
    bundle: ModelBundle, split: str, count: int, data_root: Path = splits.DEFAULT_DATA_ROOT
) -> tuple[list[Feeds], list[str]]:
    """Calibration feeds of ``count`` pairs spread over ``split`` (refuses val and test)."""
    if not split.endswith(":train"):
        raise ValueError(f"calibrate on a training split, not {split!r} (val and test stay unseen)")
    pairs = spread(split_pairs(split, data_root)[0], count)
    feeds = []
    for pair in pairs:
        ir = cv2.imread(str(pair.ir_path), cv2.IMREAD_GRAYSCALE)
        visible = cv2.imread(str(pair.visible_path), cv2.IMREAD_COLOR)
        if ir is None or visible is None:
            raise FileNotFoundError(f"{split}: cannot read the pair {pair.stem}")
        feeds.append(pair_feeds(ir, visible, bundle))
    names = [pair.stem for pair in pairs]
    return feeds, names


def scope_nodes(onnx_path: Path, scope: str) -> tuple[list[str], list[str]]:
    """(nodes to quantise, nodes to exclude) for ``scope``; an empty first list means "all".

    ``all``: every node; ``semantic``: all but the fusion net (the exporter names its nodes
    ``/fusion/...``); ``backbone``: only the YOLOX backbone and neck (``yolox.BACKBONE_AND_NECK``),
    leaving the fusion net, the colour conversion and every head in float."""
    import onnx

    names = [node.name for node in onnx.load(str(onnx_path)).graph.node]
    if scope == "semantic":
        return [], [n for n in names if n.startswith("/fusion/")]
    if scope == "backbone":
        chosen = [n for n in names if n.split("/")[1:2] and n.split("/")[1] in BACKBONE_AND_NECK]
        if not chosen:
            raise ValueError(f"{onnx_path} has no YOLOX backbone nodes to quantise")
        return chosen, []
    return [], []


def quantize_graph(
    fp32_path: Path,
    int8_path: Path,
    feeds: Sequence[Feeds],
    scope: str = "all",
    calibration: str = "minmax",
) -> Path:
    """Static QDQ quantisation of ``fp32_path`` calibrated on ``feeds``; writes ``int8_path``.
    ``calibration``: activation ranges from the extremes seen (``minmax``), the 99.999th
    percentile of their histogram (``percentile``) or the KL-optimal cut (``entropy``)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    methods = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }
    if calibration not in CALIBRATIONS:
        raise ValueError(f"calibration must be one of {CALIBRATIONS}, got {calibration!r}")
    if not feeds:
        raise ValueError("no calibration feeds")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._feeds: Iterator[Feeds] = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            item = next(self._feeds, None)
            return None if item is None else item.values

    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        # symbolic shape inference cannot follow the dynamic H/W through Resize; ONNX's own does
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        chosen, excluded = scope_nodes(prepared, scope)
        quantize_static(
            str(prepared),
            str(int8_path),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            # symmetric int8 activations and weights (zero points 0): the only Q/DQ form
            # TensorRT's ONNX parser accepts, so one int8 file serves onnxruntime and TensorRT
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
            calibrate_method=methods[calibration],
            nodes_to_quantize=chosen,
            nodes_to_exclude=excluded,
        )
    return int8_path


def time_graphs(
    paths: dict[str, Path], feeds: Feeds, threads: int = 2, rounds: int = 15, warmup: int = 3
) -> dict[str, float]:
    """Median ms per run of each graph on ``feeds``, rounds interleaved (one process, so a
    busy spell of the machine hits every graph alike)."""
    import onnxruntime as ort

    sessions = {}
    for name, path in paths.items():
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        sessions[name] = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        for _ in range(warmup):
            sessions[name].run(None, feeds.values)
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(rounds):
        for name, session in sessions.items():
            start = time.perf_counter()
            session.run(None, feeds.values)
            times[name].append((time.perf_counter() - start) * 1000.0)
    return {name: statistics.median(values) for name, values in times.items()}


def accuracy(bundle_path: Path, precision: str, split: str, data_root: Path) -> dict[str, float]:
    """Person AP@0.5, mAP@0.5 and the fusion metrics of one precision on ``split``, through the
    runtime (the node's pipeline, the bundle's post-processing with mAP's usual low threshold)."""
    from ros2_bilevel_fusion.core.registration import Registration
    from ros2_bilevel_fusion.evaluation.folder import (
        MAP_NMS_IOU,
        MAP_SCORE_THRESHOLD,
        build_pipeline,
        pipeline_runner,
        score_pairs,
        split_pairs,
    )
    from training.pseudo_masks import default_folder

    pairs, truth = split_pairs(split, data_root)
    masks = default_folder(split)  # the teacher's labels of this split, when made before
    pipeline, bundle = build_pipeline(
        bundle_path, "onnxruntime", Registration.identity(), precision
    )
    pipeline.config.score_threshold = MAP_SCORE_THRESHOLD
    pipeline.config.nms_iou = MAP_NMS_IOU
    result = score_pairs(
        pairs, pipeline_runner(pipeline), method=precision, ground_truth=truth,
        detection_classes=bundle.detection.classes if bundle.detection else None,
        max_detections=pipeline.config.max_detections,
        masks_dir=masks if (masks / "manifest.json").is_file() else None,
        segmentation_classes=bundle.segmentation.classes if bundle.segmentation else None,
    )
    scores = {k: float(result.means[precision][k]) for k in FUSION_METRICS}
    if result.segmentation is not None:
        classes = list(result.segmentation["classes"])
        scores["person_IoU"] = float(
            result.segmentation["per_class_iou"][classes.index("person")]
        )
    if result.detection is not None:
        scores["person_AP50"] = float(result.detection["per_class_AP50"]["person"])
        scores["mAP50"] = float(result.detection["mAP50"])
    return scores


def within_budget(fp32: dict[str, float], int8: dict[str, float]) -> tuple[bool, list[str]]:
    """Whether int8's scores are within the accuracy budget of fp32's; and what breaks it."""
    faults = []
    for key, limit in (("person_AP50", MAX_AP_DROP), ("mAP50", MAX_AP_DROP),
                       ("person_IoU", MAX_IOU_DROP)):
        if key in fp32 and fp32[key] - int8[key] > limit:
            faults.append(f"{key} {int8[key]:.3f} vs {fp32[key]:.3f}")
    for key in FUSION_METRICS:
        reference = fp32[key]
        change = abs(int8[key] - reference) / max(abs(reference), 1e-12)
        if not math.isfinite(change) or change > MAX_FUSION_METRIC_CHANGE:
            faults.append(f"{key} {int8[key]:.4f} vs {reference:.4f} ({100 * change:.2f} %)")
    return not faults, faults


def add_int8(
    bundle_dir: Path,
    feeds: Sequence[Feeds],
    *,
    scope: str = "all",
    calibration: dict[str, Any] | None = None,
    method: str = "minmax",
) -> ModelBundle:
    """Quantise the bundle's fp32 graph into ``model_int8.onnx`` and name it in model.yaml
    (``default_precision`` stays fp32 until :func:`record_measurement`). Returns the bundle."""
    bundle = load_bundle(bundle_dir)
    int8_path = bundle.folder / INT8_FILE
    quantize_graph(bundle.onnx_path, int8_path, feeds, scope, method)
    provenance = dict(bundle.provenance)
    provenance["quantization"] = {
        "tool": "onnxruntime.quantization.quantize_static",
        "format": "QDQ",
        "weights": "int8 per channel, symmetric",
        "activations": "int8, symmetric",
        "calibration_method": method,
        "scope": scope,
        **({"calibration": calibration} if calibration else {}),
    }
    updated = dataclasses.replace(
        bundle,
        onnx_variants={**bundle.onnx_variants, "int8": int8_path},
        default_precision="fp32",
        provenance=provenance,
    )
    save_bundle(updated, bundle.folder)
    return load_bundle(bundle.folder)


def record_measurement(
    bundle_dir: Path, measurement: dict[str, Any], make_default: bool
) -> ModelBundle:
    """Write the measurement into ``provenance.quantization.measured`` and set
    ``default_precision`` (int8 only when ``make_default``)."""
    bundle = load_bundle(bundle_dir)
    if "int8" not in bundle.onnx_variants:
        raise ValueError(f"{bundle_dir} has no int8 graph to measure")
    provenance = dict(bundle.provenance)
    provenance["quantization"] = {**provenance.get("quantization", {}), "measured": measurement}
    updated = dataclasses.replace(
        bundle, default_precision="int8" if make_default else "fp32", provenance=provenance
    )
    save_bundle(updated, bundle.folder)
    return load_bundle(bundle.folder)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--data-root", default=str(splits.DEFAULT_DATA_ROOT))
    parser.add_argument("--calib-split", default="msrs_det:train")
    parser.add_argument("--calib-pairs", type=int, default=16)
    parser.add_argument("--scope", default="all", choices=SCOPES)
    parser.add_argument("--calibration", default="minmax", choices=CALIBRATIONS)
    parser.add_argument("--val-split", default="msrs_det:val")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args(argv)

    bundle_dir = Path(args.bundle)
    data_root = Path(args.data_root)
    bundle = load_bundle(bundle_dir)
    feeds, names = split_feeds(bundle, args.calib_split, args.calib_pairs, data_root)
    calibration = {"split": args.calib_split, "names": names}
    # first a default-less int8 graph, so the runtime can score and time it
    bundle = add_int8(bundle_dir, feeds, scope=args.scope, calibration=calibration,
                      method=args.calibration)
    print(f"wrote {bundle.onnx_variants['int8']} (scope {args.scope}, {args.calibration} on "
          f"{len(names)} pairs)")
    timing_feeds = feeds[0]
    ms = time_graphs(
        {"fp32": bundle.onnx_path, "int8": bundle.onnx_variants["int8"]}, timing_feeds,
        threads=args.threads, rounds=args.rounds,
    )
    scores = {p: accuracy(bundle_dir, p, args.val_split, data_root) for p in ("fp32", "int8")}
    ok, faults = within_budget(scores["fp32"], scores["int8"])
    faster = ms["fp32"] / ms["int8"] >= MIN_SPEEDUP
    hw = timing_feeds.values[bundle.inputs.ir_name].shape[2:]
    measurement = {
        "split": args.val_split,
        "scores": scores,
        "ms_per_run": {k: round(v, 2) for k, v in ms.items()},
        "timing": f"onnxruntime CPU, {args.threads} threads, {hw[1]}x{hw[0]}, "
                  f"median of {args.rounds} interleaved rounds",
        "within_budget": ok,
        "budget_faults": faults,
        "faster": faster,
    }
    record_measurement(bundle_dir, measurement, make_default=ok and faster)
    print(f"ms per run: fp32 {ms['fp32']:.1f}, int8 {ms['int8']:.1f}")
    for key in scores["fp32"]:
        print(f"{key}: fp32 {scores['fp32'][key]:.4f}  int8 {scores['int8'][key]:.4f}")
    print(f"within budget: {ok} {faults}; faster: {faster}; "
          f"default_precision: {'int8' if ok and faster else 'fp32'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
