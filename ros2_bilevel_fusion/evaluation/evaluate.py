"""``fusion-eval``: score a model bundle on image folders or on what the ROS node publishes.

This module is the command line only:

* folder mode (``--ir/--vi`` folders, or ``--split msrs_det:test``: a named split of
  :mod:`~ros2_bilevel_fusion.evaluation.splits` with merged ground truth):
  :func:`ros2_bilevel_fusion.evaluation.folder.score_pairs` runs every IR/visible pair through
  the node's pipeline (:class:`ros2_bilevel_fusion.core.pipeline.FusionPipeline`) and scores
  it (fusion metrics, baselines with the same code, detection mAP, segmentation IoU);
* bag mode: :mod:`ros2_bilevel_fusion.evaluation.bag_mode` replays a bag through the real node
  and scores what it published (fusion metrics, latency, throughput, drops);
* :mod:`ros2_bilevel_fusion.evaluation.report` writes the report folder: ``summary.md`` (or
  ``report.md``), CSVs, ``summary.json`` and PNGs.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ros2_bilevel_fusion.backends import BACKEND_KINDS
from ros2_bilevel_fusion.core.bundle import PRECISION_CHOICES, parse_fused_stretch
from ros2_bilevel_fusion.core.registration import Registration
from ros2_bilevel_fusion.evaluation import metrics, report
from ros2_bilevel_fusion.evaluation.folder import (
    EvaluationError,
    build_pipeline,
    find_folder_pairs,
    fused_png_writer,
    parse_mask_map,
    pipeline_runner,
    score_pairs,
    split_pairs,
)
from ros2_bilevel_fusion.evaluation.splits import DEFAULT_DATA_ROOT

LOG = logging.getLogger("fusion-eval")


def _looks_like_tno(ir_dir: Path) -> bool:
    return any(part.lower() == "tno" for part in ir_dir.resolve().parts)


def run_folder(args: argparse.Namespace) -> int:
    out_dir = Path(args.out)
    ground_truth = None
    if args.split:
        if args.ir or args.vi:
            raise EvaluationError("give --split or --ir/--vi, not both")
        # The split's pairs and, unless --labels names other labels, their merged labels.
        pairs, ground_truth = split_pairs(args.split, Path(args.data_root), args.limit)
        ir_dir = pairs[0].ir_path.parent
        if args.labels:
            ground_truth = None
    elif not (args.ir and args.vi):
        raise EvaluationError("give --ir and --vi, or --split")
    else:
        ir_dir, visible_dir = Path(args.ir), Path(args.vi)
        pairs = find_folder_pairs(ir_dir, visible_dir, args.limit)
    registration = Registration.identity()
    run_pair = bundle = None
    postprocess: dict = {}
    if args.bundle:
        pipeline, bundle = build_pipeline(
            Path(args.bundle), args.backend, registration, args.precision
        )
        postprocess = override_postprocess(pipeline.config, args)
        postprocess.update(override_fused_stretch(pipeline.config, args.fused_stretch))
        if args.max_input_pixels is not None:
            if args.max_input_pixels < 0:
                raise EvaluationError(
                    f"--max-input-pixels must be >= 0, got {args.max_input_pixels}"
                )
            # the node's processing-size knob: the network runs on the shrunk pair, results
            # are mapped back to the visible geometry (core.pipeline.FusionPipeline)
            pipeline.max_input_pixels = int(args.max_input_pixels)
        postprocess["max_input_pixels"] = pipeline.max_input_pixels
        postprocess["precision"] = bundle.precision
        run_pair = pipeline_runner(pipeline)
    elif not args.baselines:
        raise EvaluationError("give --bundle, or --baselines for the baselines alone")
    out_dir.mkdir(parents=True, exist_ok=True)
    result = score_pairs(
        pairs,
        run_pair,
        method=f"{bundle.name} (model)" if bundle is not None else "model",
        registration=registration,
        with_baselines=args.baselines,
        labels_dir=Path(args.labels) if args.labels else None,
        ground_truth=ground_truth,
        detection_classes=(
            bundle.detection.classes if bundle is not None and bundle.detection else None
        ),
        max_detections=postprocess.get("max_detections"),
        masks_dir=Path(args.masks) if args.masks else None,
        mask_map=parse_mask_map(args.mask_map),
        segmentation_classes=(
            bundle.segmentation.classes if bundle is not None and bundle.segmentation else None
        ),
        on_output=fused_png_writer(out_dir) if args.save_fused else None,
    )
    result.postprocess = postprocess
    published = (
        {report.CDDFUSE_LABEL: report.CDDFUSE_TNO_PUBLISHED} if _looks_like_tno(ir_dir) else None
    )
    markdown = report.write_folder_report(out_dir, result, published)
    print(markdown)
    if result.detection is not None:
        print(f"detection ground truth: {result.detection['ground_truth']}")
    print(f"report written to {out_dir}")
    return 0


def override_postprocess(config, args: argparse.Namespace) -> dict:
    """Apply ``--score-threshold``, ``--nms-iou`` and ``--max-detections`` (None: the bundle's
    model.yaml value stays) to the pipeline's PostprocessConfig; returns the values in use."""
    overrides = {
        "score_threshold": args.score_threshold,
        "nms_iou": args.nms_iou,
        "max_detections": args.max_detections,
    }
    if args.score_threshold is not None and not 0.0 <= args.score_threshold <= 1.0:
        raise EvaluationError(f"--score-threshold must be in [0, 1], got {args.score_threshold}")
    if args.nms_iou is not None and not 0.0 <= args.nms_iou <= 1.0:
        raise EvaluationError(f"--nms-iou must be in [0, 1], got {args.nms_iou}")
    if args.max_detections is not None and args.max_detections < 1:
        raise EvaluationError(f"--max-detections must be >= 1, got {args.max_detections}")
    used = {}
    for key, value in overrides.items():
        if value is not None:
            setattr(config, key, type(getattr(config, key))(value))
        used[key] = getattr(config, key)
        used[f"{key}_source"] = "command line" if value is not None else "bundle"
    return used


def override_fused_stretch(config, text: str) -> dict:
    """Apply ``--fused-stretch`` (``bundle``: model.yaml's stays; ``off``; ``LOW:HIGH`` or
    ``LOW:HIGH:MIN_STD``) to the pipeline's PostprocessConfig; returns the one in use."""
    from_bundle = text.strip().lower() == "bundle"
    if not from_bundle:
        try:
            config.fused_stretch = parse_fused_stretch(text)
        except ValueError as exc:
            raise EvaluationError(f"--fused-stretch: {exc}") from exc
    stretch = config.fused_stretch
    return {
        "fused_stretch": (
            f"{stretch.low_percentile:g}:{stretch.high_percentile:g} (max gain "
            f"{stretch.max_gain:g}, min std {stretch.min_std:g})" if stretch is not None
            else "off"
        ),
        "fused_stretch_source": "bundle" if from_bundle else "command line",
    }


def run_bag(args: argparse.Namespace) -> int:
    from ros2_bilevel_fusion.bag.live_run import LiveRunError, run_bag_through_node
    from ros2_bilevel_fusion.evaluation.bag_mode import evaluate_live_result

    bag, out_dir = Path(args.bag), Path(args.out)
    bundle = Path(args.bundle) if args.bundle else None
    try:
        live = run_bag_through_node(
            bag, bundle=bundle, backend=args.backend, rate=args.rate, out_dir=out_dir / "run",
            ir_topic=args.ir_topic, visible_topic=args.visible_topic,
        )
    except LiveRunError as exc:
        raise EvaluationError(str(exc)) from exc
    evaluation = evaluate_live_result(live, bag, out_dir, bundle=bundle, rate=args.rate)
    print(evaluation.markdown)
    print(f"report written to {out_dir}")
    return 0


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fusion-eval",
        description="Fusion metrics (with baselines), detection mAP and segmentation IoU of a "
        "model bundle on image folders, or of the running node on a bag.",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    modes = parser.add_subparsers(dest="mode", required=True)

    folder = modes.add_parser("folder", help="evaluate a bundle on IR/visible image folders")
    folder.add_argument(
        "--bundle", help="model bundle folder (model.yaml); omit with --baselines for baselines"
    )
    folder.add_argument("--ir", help="folder of infrared images (or --split)")
    folder.add_argument("--vi", help="folder of visible images, same names (or --split)")
    folder.add_argument(
        "--split",
        help="a named split instead of --ir/--vi, e.g. msrs_det:test (msrs_det:train|val|test, "
        "msrs:train|holdout; docs/data_splits.md): its pairs, scored for mAP against the merged "
        "fusion+infrared+visible labels (--labels DIR: those labels instead)",
    )
    folder.add_argument(
        "--data-root", default=str(DEFAULT_DATA_ROOT),
        help=f"folder holding the split's data set (default {DEFAULT_DATA_ROOT})",
    )
    folder.add_argument(
        "--labels",
        help="YOLO labels for mAP: a folder of <stem>.txt (one annotation), or a folder with "
        "fusion/ infrared/ visible/ subfolders of them (MSRS labels/: merged, as --split does)",
    )
    folder.add_argument("--masks", help="folder of PNG masks (same names) for segmentation IoU")
    folder.add_argument(
        "--mask-map", default="", help="mask value to class id, e.g. 255:1 (default: identity)"
    )
    folder.add_argument("--out", required=True, help="report folder")
    folder.add_argument("--save-fused", action="store_true", help="write fused PNGs")
    folder.add_argument("--baselines", action="store_true", help="mean/max/laplacian rows")
    folder.add_argument(
        "--backend", default="onnxruntime", choices=BACKEND_KINDS
    )
    folder.add_argument("--limit", type=int, default=None, help="first N pairs only")
    folder.add_argument(
        "--score-threshold", type=float, default=None,
        help="detection score threshold instead of the bundle's (mAP ranks every detection, so "
        "a low value such as 0.05 gives the usual mAP; the bundle's gives what the node shows)",
    )
    folder.add_argument(
        "--nms-iou", type=float, default=None,
        help="class-aware NMS IoU threshold instead of the bundle's detection.nms_iou",
    )
    folder.add_argument(
        "--max-detections", type=int, default=None,
        help="detections kept per image instead of the bundle's detection.max_detections; "
        "mAP then ranks max(100, this) per image (pycocotools maxDets)",
    )
    folder.add_argument(
        "--max-input-pixels", type=int, default=None,
        help="run the network on pairs shrunk to at most this many pixels (aspect kept) and map "
        "the results back, as the node's max_input_pixels parameter does (default 0: full size)",
    )
    folder.add_argument(
        "--precision", default="auto", choices=PRECISION_CHOICES,
        help="which of the bundle's graphs runs, as the node's precision parameter (auto: the "
        "bundle's default_precision)",
    )
    folder.add_argument(
        "--fused-stretch", default="bundle",
        help="the fused image's per-frame contrast stretch: bundle (model.yaml fused_stretch, "
        "the node's default), off (the network's output as it is), or LOW:HIGH percentiles "
        "(0:100 = min-max), or LOW:HIGH:MIN_STD with a contrast floor in grey levels",
    )
    folder.set_defaults(run=run_folder)

    bag = modes.add_parser("bag", help="replay a bag through the node and score its outputs")
    bag.add_argument("--bag", required=True, help="rosbag2 folder")
    bag.add_argument("--bundle", help="model bundle (default: the node's default)")
    bag.add_argument(
        "--backend", default="onnxruntime", choices=BACKEND_KINDS
    )
    bag.add_argument("--rate", type=float, default=1.0, help="replay rate factor")
    bag.add_argument("--out", required=True, help="report folder")
    # The bag's camera topics (checked before the node starts); defaults: the node's inputs.
    bag.add_argument("--ir-topic", default="/ir/image",
                     help="the bag's IR topic: sensor_msgs/Image, or CompressedImage on it or its "
                     "/compressed sibling (default /ir/image)")
    bag.add_argument("--visible-topic", default="/visible/image",
                     help="the bag's visible topic, Image or CompressedImage "
                     "(default /visible/image)")
    bag.set_defaults(run=run_bag)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    started = time.perf_counter()
    try:
        code = args.run(args)
    except (EvaluationError, metrics.MetricInputError, FileNotFoundError) as exc:
        LOG.error("%s", exc)
        return 2
    except Exception as exc:
        # Bundle, backend and bag errors are defined in other modules (imported lazily so
        # that --help works without them); a user error there is a message, not a traceback.
        if type(exc).__name__ in ("BundleError", "BackendError", "BagError", "ImageCodecError"):
            LOG.error("%s", exc)
            return 2
        raise
    LOG.info("done in %.1f s", time.perf_counter() - started)
    return code


if __name__ == "__main__":
    sys.exit(main())
