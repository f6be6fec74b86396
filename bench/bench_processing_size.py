"""The processing-size knob: rate and accuracy of the node's pipeline at smaller network sizes.

    .venv/bin/python bench/bench_processing_size.py [--bundle models/default]
        [--sizes 640x480,480x360,320x240] [--split msrs_det:test] [--limit N]

The node's ``max_input_pixels`` parameter shrinks a pair before inference and maps the fused
image, segmentation and boxes back to the visible geometry. This runs the node's pipeline
(``evaluation.folder.build_pipeline``, onnxruntime) on the REAL 640x480 pairs of
``msrs_det:test`` once per size, with ``max_input_pixels`` = width x height, and prints per size:
the median pipeline time per pair (inference, and everything the pipeline does), and person
AP@0.5 / mAP@0.5 against the merged labels (score threshold 0.001, NMS 0.65, as the README's
detection numbers). Sizes run one after another in one process; medians, because the 2-core
machine is shared. Needs ../shared/data (skips with a message without it).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from ros2_bilevel_fusion.core.registration import Registration  # noqa: E402
from ros2_bilevel_fusion.evaluation.folder import (  # noqa: E402
    MAP_NMS_IOU,
    MAP_SCORE_THRESHOLD,
    build_pipeline,
    pipeline_runner,
    score_pairs,
    split_pairs,
)

DATA_ROOT = REPO_ROOT.parent / "shared" / "data"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default=str(REPO_ROOT / "models" / "default"))
    parser.add_argument("--sizes", default="640x480,480x360,320x240")
    parser.add_argument("--split", default="msrs_det:test")
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args(argv)
    if not (DATA_ROOT / "msrs_det").is_dir():
        print(f"skipped: {DATA_ROOT}/msrs_det is not present")
        return 0
    pairs, truth = split_pairs(args.split, DATA_ROOT, args.limit)
    print(f"| network size | pipeline ms per pair (median) | inference ms (median) | "
          f"person AP@0.5 | mAP@0.5 |  ({len(pairs)} pairs of {args.split}, {args.bundle})")
    print("|---|---|---|---|---|")
    for size in args.sizes.split(","):
        width, height = (int(v) for v in size.lower().split("x"))
        pipeline, bundle = build_pipeline(Path(args.bundle), "onnxruntime",
                                          Registration.identity())
        pipeline.max_input_pixels = width * height
        pipeline.config.score_threshold = MAP_SCORE_THRESHOLD
        pipeline.config.nms_iou = MAP_NMS_IOU
        totals: list[float] = []
        inference: list[float] = []
        run = pipeline_runner(pipeline)

        def timed(ir, visible, run=run, totals=totals, inference=inference):
            output = run(ir, visible)
            totals.append(output.total_ms)
            inference.append(output.inference_ms)
            return output

        result = score_pairs(
            pairs, timed, method=f"{bundle.name} at {size}", registration=Registration.identity(),
            ground_truth=truth, detection_classes=bundle.detection.classes,
            max_detections=pipeline.config.max_detections,
        )
        detection = result.detection or {}
        person = (detection.get("per_class_AP50") or {}).get("person", float("nan"))
        print(f"| {size} | {statistics.median(totals):.1f} | {statistics.median(inference):.1f} | "
              f"{person:.3f} | {detection.get('mAP50', float('nan')):.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
