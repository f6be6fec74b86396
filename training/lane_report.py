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

With ``--arm NAME DIR...`` twice (each DIR a bundle's evaluation folder holding one report
per split, one DIR per training seed) it compares two arms per split the way stop 14's rule
does (docs/fusion_protocol.md): each metric's mean over an arm's seeds, the ratio of the
second arm to the first, their geometric mean G, and a margin equal to the largest seed-to-seed
move inside either arm (at least ``--min-margin``); the second arm is better if ln G is above
minus the margin on every split and above the margin on at least one::

    python -m training.lane_report --arm region R3 R4 --arm reach B3 B4

With ``--pick DIR...`` (evaluation folders of candidates of one arm, e.g. its stage-4 seeds)
it scores each per split against the mean of all candidates (ln of the geometric mean of the
8 metric ratios), takes the lower of the splits as the candidate's score and names the
highest (stop 14's seed-picking rule)::

    python -m training.lane_report --pick S0 S1 S2 S3 S4

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


def _log_geometric_ratio(numerator: dict[str, float], denominator: dict[str, float]) -> float:
    """ln of the geometric mean over the 8 metrics of numerator / denominator: the one scale
    --against, --arm and --pick compare on."""
    bad = [m for m in METRICS
           if not (math.isfinite(numerator[m]) and math.isfinite(denominator[m])
                   and numerator[m] > 0 and denominator[m] > 0)]
    if bad:  # a ratio of two negative values would pass as positive: check each value
        raise ValueError(f"not a positive number: {', '.join(bad)}")
    return sum(math.log(numerator[m] / denominator[m]) for m in METRICS) / len(METRICS)


def relative_row(candidate: ReportRow, incumbent: ReportRow) -> RelativeRow:
    """Each metric of ``candidate`` over ``incumbent``'s; every metric of both must be > 0."""
    ratios = {m: candidate.metrics[m] / incumbent.metrics[m] for m in METRICS}
    try:
        log_g = _log_geometric_ratio(candidate.metrics, incumbent.metrics)
    except ValueError as exc:
        raise ValueError(f"{candidate.folder} vs {incumbent.folder}: {exc}") from exc
    return RelativeRow(candidate.folder, incumbent.folder, ratios, math.exp(log_g),
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


def arm_means(arm: Sequence[ReportRow]) -> dict[str, float]:
    """Each metric's arithmetic mean over one arm's reports (its seeds) of one split."""
    if not arm:
        raise ValueError("an arm needs at least one report")
    return {m: sum(row.metrics[m] for row in arm) / len(arm) for m in METRICS}


def seed_spread(arm: Sequence[ReportRow]) -> float:
    """The largest |ln| of the geometric mean of metric ratios between two seeds of one arm
    (0 for a single seed): how far one seed moves the image, on the scale G is judged on."""
    return max((abs(_log_geometric_ratio(a.metrics, b.metrics))
                for i, a in enumerate(arm) for b in arm[i + 1:]), default=0.0)


@dataclass(frozen=True)
class ArmComparison:
    """Arm ``second`` against arm ``first`` on one split (stop 14's statistic)."""

    split: str
    ratios: dict[str, float]  # metric -> mean(second) / mean(first)
    log_g: float  # ln of the geometric mean of the ratios
    margin: float  # max(seed spread of either arm, min_margin)

    @property
    def verdict(self) -> str:
        """"second" / "first" when ln G clears the margin that way, else "tie"."""
        if self.log_g > self.margin:
            return "second"
        if self.log_g < -self.margin:
            return "first"
        return "tie"


def compare_arms(split: str, first: Sequence[ReportRow], second: Sequence[ReportRow],
                 min_margin: float = 0.01) -> ArmComparison:
    """Compare two arms' reports of one split: per-metric arm means, their ratios, ln G and the
    margin the difference has to clear."""
    means_first, means_second = arm_means(first), arm_means(second)
    log_g = _log_geometric_ratio(means_second, means_first)  # refuses metrics <= 0 first
    ratios = {m: means_second[m] / means_first[m] for m in METRICS}
    return ArmComparison(split, ratios, log_g,
                         max(seed_spread(first), seed_spread(second), min_margin))


def decide(comparisons: Sequence[ArmComparison]) -> str:
    """"second" if it is not worse beyond the margin on any split and better beyond it on one;
    "first" by the mirror condition; "neither" otherwise (stop 14's rule)."""
    for better, sign in (("second", 1.0), ("first", -1.0)):
        if (all(sign * c.log_g > -c.margin for c in comparisons)
                and any(sign * c.log_g > c.margin for c in comparisons)):
            return better
    return "neither"


def format_arms(names: Sequence[str], comparisons: Sequence[ArmComparison]) -> str:
    """A Markdown table per split (ratios, G, margin, verdict) and the decision line."""
    first, second = names
    lines = [f"| split: {second} / {first} | " + " | ".join(METRICS)
             + " | G | ln G | margin | verdict |", "|---" * (len(METRICS) + 5) + "|"]
    for c in comparisons:
        verdict = {"second": second, "first": first, "tie": "not told apart"}[c.verdict]
        lines.append(f"| {c.split} | " + " | ".join(f"{c.ratios[m]:.4f}" for m in METRICS)
                     + f" | {math.exp(c.log_g):.4f} | {c.log_g:+.4f} | {c.margin:.4f} | "
                     f"{verdict} |")
    decision = decide(comparisons)
    lines.append("decision: " + {"second": f"{second} is better", "first": f"{first} is better",
                                 "neither": "not told apart"}[decision])
    return "\n".join(lines)


@dataclass(frozen=True)
class PickRow:
    """One candidate against the mean of all candidates, per split."""

    folder: str
    log_g: dict[str, float]  # split -> ln geometric mean of the ratios to the candidates' mean

    @property
    def score(self) -> float:
        """The lower of the splits' ln G: a candidate must be good on every split."""
        return min(self.log_g.values())


def pick_rows(names: Sequence[str], reports: dict[str, Sequence[ReportRow]]) -> list[PickRow]:
    """``reports`` maps each split to the candidates' reports of it, in the order of ``names``;
    returns one row per candidate, scored against the candidates' mean per split."""
    if not reports or any(len(rows) != len(names) for rows in reports.values()):
        raise ValueError("every split needs one report per candidate")
    means = {split: arm_means(rows) for split, rows in reports.items()}
    picked = []
    for i, name in enumerate(names):
        log_g = {}
        for split, rows in reports.items():
            try:
                log_g[split] = _log_geometric_ratio(rows[i].metrics, means[split])
            except ValueError as exc:
                raise ValueError(f"{name} on {split}: {exc}") from exc
        picked.append(PickRow(name, log_g))
    return picked


def format_pick(rows: Sequence[PickRow]) -> str:
    """A Markdown table of the candidates' per-split ln G and score, and the pick."""
    splits = list(rows[0].log_g)
    lines = ["| candidate | " + " | ".join(f"ln G {s}" for s in splits) + " | score |",
             "|---" * (len(splits) + 2) + "|"]
    for row in rows:
        lines.append(f"| {row.folder} | " + " | ".join(f"{row.log_g[s]:+.4f}" for s in splits)
                     + f" | {row.score:+.4f} |")
    best = max(rows, key=lambda row: row.score)
    lines.append(f"highest score: {best.folder} ({best.score:+.4f})")
    return "\n".join(lines)


def _missing(folders: Sequence[str], splits: Sequence[str]) -> list[str]:
    return [str(Path(d) / s) for d in folders for s in splits
            if not (Path(d) / s / "summary.json").is_file()]


def _main_pick(folders: Sequence[str], splits: Sequence[str]) -> int:
    if len(folders) < 2:
        print("--pick needs at least two candidates", file=sys.stderr)
        return 2
    missing = _missing(folders, splits)
    if missing:
        print(f"no summary.json in: {', '.join(missing)}", file=sys.stderr)
        return 2
    reports = {split: [read_report(Path(d) / split) for d in folders] for split in splits}
    try:
        rows = pick_rows(folders, reports)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(format_pick(rows))
    return 0


def _main_arms(arms: Sequence[Sequence[str]], splits: Sequence[str], min_margin: float) -> int:
    if len(arms) != 2 or any(len(arm) < 2 for arm in arms):
        print("--arm takes a name and at least one folder, given exactly twice", file=sys.stderr)
        return 2
    named_like_folders = [arm[0] for arm in arms if Path(arm[0]).is_dir()]
    if named_like_folders:  # --arm R3 R4 would compare R4 alone under the name "R3"
        print(f"--arm starts with the arm's name, not a folder: {', '.join(named_like_folders)}",
              file=sys.stderr)
        return 2
    if min_margin < 0:
        print(f"--min-margin must be >= 0, got {min_margin}", file=sys.stderr)
        return 2
    missing = _missing([d for arm in arms for d in arm[1:]], splits)
    if missing:
        print(f"no summary.json in: {', '.join(missing)}", file=sys.stderr)
        return 2
    comparisons = []
    for split in splits:
        first, second = ([read_report(Path(d) / split) for d in arm[1:]] for arm in arms)
        print(format_rows([*first, *second]))
        print()
        try:
            comparisons.append(compare_arms(split, first, second, min_margin))
        except ValueError as exc:
            print(f"{split}: {exc}", file=sys.stderr)
            return 2
    print(format_arms([arms[0][0], arms[1][0]], comparisons))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reports", nargs="*", help="fusion-eval folder --out folders")
    parser.add_argument(
        "--arm", nargs="+", action="append", default=[], metavar="NAME_THEN_DIRS",
        help="an arm's name, then one evaluation folder per seed (each holding the --splits "
             "reports); give it twice: the second arm is compared with the first",
    )
    parser.add_argument(
        "--pick", nargs="+", default=[], metavar="DIR",
        help="candidates' evaluation folders (each holding the --splits reports): score each "
             "against their mean and name the best",
    )
    parser.add_argument("--splits", nargs="+", default=["roadscene_val", "msrs_det_val"],
                        help="report subfolders read by --arm and --pick (default: %(default)s)")
    parser.add_argument("--min-margin", type=float, default=0.01,
                        help="the least margin ln G has to clear (default: %(default)s)")
    parser.add_argument(
        "--against", nargs="+", default=[],
        help="the incumbent's report folders, one per report, same order (same splits)",
    )
    args = parser.parse_args(argv)
    if args.arm or args.pick:
        if args.reports or args.against or (args.arm and args.pick):
            print("--arm and --pick go alone (no report folders, no --against)",
                  file=sys.stderr)
            return 2
        if args.pick:
            return _main_pick(args.pick, args.splits)
        return _main_arms(args.arm, args.splits, args.min_margin)
    if not args.reports:
        print("give report folders, --arm twice or --pick", file=sys.stderr)
        return 2
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
