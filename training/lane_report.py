"""One row per ``fusion-eval folder --out`` report: the 8 fusion metrics, the two criteria against
CDDFuse's figures, and detection / segmentation when the report has them; then the mean
criteria over the reports given (the lane rules of docs/fusion_protocol.md average the
``roadscene:val`` and ``msrs_det:val`` reports of one bundle)::

    python -m training.lane_report runs/eval/roadscene_val runs/eval/msrs_det_val

With ``--against`` (as many folders, in the same order: the incumbent's reports of the same
splits) it also prints, per pair of reports, each metric's ratio to the incumbent's, their
geometric mean and how many are not below it: a comparison that keeps every metric in play,
where ``reach`` stops counting a metric once it passes CDDFuse's TNO figure
(docs/fusion_protocol.md, stop 13)::

    python -m training.lane_report cand/roadscene_val cand/msrs_det_val \
        --against inc/roadscene_val inc/msrs_det_val

Reads only ``summary.json`` (no model is run). Imports ``training.evaluation`` for its two
criteria (which brings torch, as every training module does) and the standard library.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from training.evaluation import PAPER_METRICS as METRICS
from training.evaluation import reference_reach, reference_score


@dataclass(frozen=True)
class ReportRow:
    """What one report says about the bundle it scored."""

    folder: str
    metrics: dict[str, float]
    score: float
    reach: float
    map50: float | None = None
    person_ap50: float | None = None
    person_iou: float | None = None


def read_report(folder: Path) -> ReportRow:
    """The row of one report folder (its ``summary.json``)."""
    summary = json.loads((folder / "summary.json").read_text())
    metrics = {name: float(summary["means"][summary["model"]][name]) for name in METRICS}
    detection = summary.get("detection") or {}
    segmentation = summary.get("segmentation") or {}
    iou = dict(zip(segmentation.get("classes", []), segmentation.get("per_class_iou", []),
                   strict=False))
    return ReportRow(
        folder=str(folder), metrics=metrics,
        score=reference_score(metrics),
        reach=reference_reach(metrics),
        map50=detection.get("mAP50"),
        person_ap50=(detection.get("per_class_AP50") or {}).get("person"),
        person_iou=iou.get("person"),
    )


def _cell(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_rows(rows: Sequence[ReportRow]) -> str:
    """A Markdown table of the rows and a last line with the mean score and reach."""
    lines = ["| report | " + " | ".join(METRICS)
             + " | score | reach | mAP@0.5 | person AP@0.5 | person IoU |",
             "|---" * (len(METRICS) + 6) + "|"]
    for row in rows:
        lines.append(
            f"| {row.folder} | " + " | ".join(f"{row.metrics[m]:.3f}" for m in METRICS)
            + f" | {row.score:.4f} | {row.reach:.4f} | {_cell(row.map50)}"
            f" | {_cell(row.person_ap50)} | {_cell(row.person_iou)} |"
        )
    if rows:
        lines.append(f"mean over {len(rows)} reports: score "
                     f"{sum(r.score for r in rows) / len(rows):.4f}, reach "
                     f"{sum(r.reach for r in rows) / len(rows):.4f}")
    return "\n".join(lines)


@dataclass(frozen=True)
class RelativeRow:
    """One report against the incumbent's report of the same split."""

    folder: str
    against: str
    ratios: dict[str, float]  # metric -> candidate / incumbent
    geometric_mean: float
    not_below: int  # metrics with a ratio >= 1


def relative_row(candidate: ReportRow, incumbent: ReportRow) -> RelativeRow:
    """Each metric of ``candidate`` over ``incumbent``'s; every metric of both must be > 0."""
    ratios = {m: candidate.metrics[m] / incumbent.metrics[m] for m in METRICS}
    if not all(math.isfinite(r) and r > 0 for r in ratios.values()):
        raise ValueError(f"{candidate.folder} vs {incumbent.folder}: a metric is not positive")
    geometric_mean = math.exp(sum(math.log(r) for r in ratios.values()) / len(ratios))
    return RelativeRow(candidate.folder, incumbent.folder, ratios, geometric_mean,
                       sum(r >= 1.0 for r in ratios.values()))


def format_relative(rows: Sequence[RelativeRow]) -> str:
    """A Markdown table: per-metric ratios, their geometric mean, the count not below 1."""
    lines = ["| report / incumbent | " + " | ".join(METRICS) + " | geo. mean | not below |",
             "|---" * (len(METRICS) + 3) + "|"]
    for row in rows:
        lines.append(
            f"| {row.folder} / {row.against} | "
            + " | ".join(f"{row.ratios[m]:.4f}" for m in METRICS)
            + f" | {row.geometric_mean:.4f} | {row.not_below} of {len(METRICS)} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reports", nargs="+", help="fusion-eval folder --out folders")
    parser.add_argument(
        "--against", nargs="+", default=[],
        help="the incumbent's report folders, one per report, same order (same splits)",
    )
    args = parser.parse_args(argv)
    if args.against and len(args.against) != len(args.reports):
        print(f"--against needs {len(args.reports)} folders, got {len(args.against)}",
              file=sys.stderr)
        return 2
    missing = [r for r in [*args.reports, *args.against]
               if not (Path(r) / "summary.json").is_file()]
    if missing:
        print(f"no summary.json in: {', '.join(missing)}", file=sys.stderr)
        return 2
    rows = [read_report(Path(r)) for r in args.reports]
    print(format_rows(rows))
    if args.against:
        incumbents = [read_report(Path(r)) for r in args.against]
        try:
            relative = [relative_row(c, i) for c, i in zip(rows, incumbents, strict=True)]
        except ValueError as exc:
            print(exc, file=sys.stderr)
            return 2
        print()
        print(format_relative(relative))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
