"""The perception ablation's table (docs/ablation.md) from the runs' evaluation reports.

Reads ``runs/ablation_yolox_<row>_s<seed>/eval_{test,msrs,tno}/summary.json``, written by
``training/ablation_lane.sh`` (``fusion-eval folder`` on msrs_det:test, the MSRS masks and
TNO-25), and prints Markdown: one table per seed and the mean +- half the spread of the seeds.
Numbers are read, never typed::

    python -m training.ablation_table            # all rows and seeds found under runs/
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path

from training.config import REPO_ROOT

ROWS = ("visible", "infrared", "mean", "fusion_only", "joint", "bilevel_fixed", "bilevel_dynamic")
ROW_LABELS = {
    "visible": "(a) visible only",
    "infrared": "(b) infrared only",
    "mean": "(c) mean of the two",
    "fusion_only": "(d) fusion-only net",
    "joint": "(e) joint, single level",
    "bilevel_fixed": "(f) bi-level, fixed weights",
    "bilevel_dynamic": "(g) bi-level, dynamic weights",
}
FUSION_METRICS = ("EN", "SD", "SF", "MI", "SCD", "VIF", "Qabf", "SSIM")
COLUMNS = ("person AP@0.5", "mAP@0.5", "mAP@0.5:0.95", "seg person IoU", *FUSION_METRICS)


def _summary(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def row_numbers(run_dir: Path) -> dict[str, float]:
    """The table's columns of one run (nan where a report is missing)."""
    out = {column: math.nan for column in COLUMNS}
    test = _summary(run_dir / "eval_test" / "summary.json")
    if test and test.get("detection"):
        detection = test["detection"]
        out["person AP@0.5"] = detection["per_class_AP50"]["person"]
        out["mAP@0.5"] = detection["mAP50"]
        out["mAP@0.5:0.95"] = detection["mAP50_95"]
    msrs = _summary(run_dir / "eval_msrs" / "summary.json")
    if msrs and msrs.get("segmentation"):
        segmentation = msrs["segmentation"]
        out["seg person IoU"] = segmentation["per_class_iou"][
            list(segmentation["classes"]).index("person")
        ]
    tno = _summary(run_dir / "eval_tno" / "summary.json")
    if tno:
        means = next(iter(tno["means"].values()))
        for metric in FUSION_METRICS:
            out[metric] = means[metric]
    return out


def person_ap_by_time_of_day(run_dir: Path) -> dict[str, float]:
    """Person AP@0.5 of the run's msrs_det:test detections on its day (``D``) and night
    (``N``) pairs separately (pycocotools on the COCO files ``fusion-eval`` wrote)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    folder = run_dir / "eval_test"
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(str(folder / "ground_truth_coco.json"))
        detections = truth.loadRes(str(folder / "detections_coco.json"))
    out = {}
    for label, suffix in (("day", "D"), ("night", "N")):
        image_ids = [i["id"] for i in truth.dataset["images"]
                     if Path(i["file_name"]).stem.endswith(suffix)]
        evaluator = COCOeval(truth, detections, "bbox")
        evaluator.params.imgIds = image_ids
        evaluator.params.catIds = [1]  # person
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        out[f"{label} ({len(image_ids)} pairs)"] = float(evaluator.stats[1])  # AP@0.5
    return out


def _format(value: float | None, spread: float | None = None) -> str:
    if value is None or math.isnan(value):  # strict JSON writes NaN as null
        return "-"
    digits = 2 if abs(value) >= 10 else 3
    text = f"{value:.{digits}f}"
    return text if spread is None else f"{text} ± {spread:.{digits}f}"


def markdown(runs_root: Path, seeds: Sequence[int]) -> str:
    header = "| row | " + " | ".join(COLUMNS) + " |\n|---|" + "---|" * len(COLUMNS) + "\n"
    table: dict[str, dict[int, dict[str, float]]] = {}
    for row in ROWS:
        for seed in seeds:
            run_dir = runs_root / f"ablation_yolox_{row}_s{seed}"
            if (run_dir / "eval_test" / "summary.json").is_file():
                table.setdefault(row, {})[seed] = row_numbers(run_dir)
    parts = []
    for seed in seeds:
        lines = [
            f"| {ROW_LABELS[row]} | " + " | ".join(_format(v[seed][c]) for c in COLUMNS) + " |"
            for row, v in table.items() if seed in v
        ]
        if lines:
            parts.append(f"Seed {seed}:\n\n" + header + "\n".join(lines) + "\n")
    lines = []
    for row, by_seed in table.items():
        if len(by_seed) < 2:
            continue
        cells = []
        for column in COLUMNS:
            values = [by_seed[s][column] for s in by_seed]
            if any(v is None or math.isnan(v) for v in values):
                cells.append("-")
                continue
            mean = sum(values) / len(values)
            cells.append(_format(mean, (max(values) - min(values)) / 2))
        lines.append(f"| {ROW_LABELS[row]} | " + " | ".join(cells) + " |")
    if lines:
        parts.append("Mean ± half the spread of the seeds:\n\n" + header + "\n".join(lines) + "\n")
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default=str(REPO_ROOT / "runs"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--day-night", action="store_true",
                        help="also person AP@0.5 on the day and the night test pairs")
    args = parser.parse_args(argv)
    print(markdown(Path(args.runs), args.seeds))
    if args.day_night:
        print("Person AP@0.5 on msrs_det:test by time of day:\n")
        for row in ROWS:
            for seed in args.seeds:
                run_dir = Path(args.runs) / f"ablation_yolox_{row}_s{seed}"
                if (run_dir / "eval_test" / "detections_coco.json").is_file():
                    split = person_ap_by_time_of_day(run_dir)
                    cells = ", ".join(f"{k} {v:.3f}" for k, v in split.items())
                    print(f"* {ROW_LABELS[row]}, seed {seed}: {cells}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
