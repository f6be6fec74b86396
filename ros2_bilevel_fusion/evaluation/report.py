"""Report writing for ``fusion-eval`` and the benchmarks: markdown tables, CSV, figures, and
the folder and bag reports (``summary.md`` / ``report.md``, CSVs, ``summary.json``, PNGs).

No ROS and no torch; matplotlib (Agg) only for the latency histogram.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from ros2_bilevel_fusion.evaluation.metrics import CONVENTIONS, METRIC_NAMES
from ros2_bilevel_fusion.messages.strict_json import write_json

if TYPE_CHECKING:
    from ros2_bilevel_fusion.evaluation.folder import FolderResult

#: CDDFuse (CVPR 2023) on the same 25 TNO pairs, as published (../shared/data/README.md).
#: A literature figure, never a measurement of ours; printed only when evaluating TNO.
CDDFUSE_TNO_PUBLISHED: dict[str, float] = {
    "EN": 7.12,
    "SD": 46.00,
    "SF": 13.15,
    "MI": 2.19,
    "SCD": 1.76,
    "VIF": 0.77,
    "Qabf": 0.54,
    "SSIM": 1.03,
}
CDDFUSE_LABEL = "CDDFuse (published, CVPR 2023; not measured here)"


def format_value(value: object, digits: int = 3) -> str:
    """Numbers with ``digits`` decimals; nan as 'n/a' and missing as '-'."""
    if value is None:
        return "-"
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return "n/a"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(
    rows: Sequence[Mapping[str, object]], columns: Sequence[str], digits: int = 3
) -> str:
    """A GitHub markdown table of ``rows`` (dicts) with these columns; missing cells are '-'."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(format_value(row.get(c), digits) for c in columns) + " |")
    return "\n".join(lines)


def fusion_table(
    method_means: Mapping[str, Mapping[str, float]],
    published: Mapping[str, Mapping[str, float]] | None = None,
    names: Sequence[str] = METRIC_NAMES,
) -> str:
    """Markdown table: one row per method (measured), then published rows, then conventions."""
    rows = [{"method": method, **values} for method, values in method_means.items()]
    for label, values in (published or {}).items():
        rows.append({"method": label, **values})
    return (
        markdown_table(rows, ["method", *names])
        + f"\n\nConventions: {CONVENTIONS}.\n"
        + ("Published rows are copied from the literature, not measured.\n" if published else "")
    )


def write_csv(path: Path, rows: Iterable[Mapping[str, object]], columns: Sequence[str]) -> Path:
    """CSV with a header; floats written with full precision (repr)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c, "") for c in columns})
    return path


def percentiles(values: Sequence[float], points: Sequence[float] = (50, 90, 95, 99)) -> dict:
    """{'p50': ..., ...} of the values (nan when empty), plus count, mean and max."""
    array = np.asarray(list(values), dtype=np.float64)
    if array.size == 0:
        return {f"p{int(p)}": float("nan") for p in points} | {
            "count": 0,
            "mean": float("nan"),
            "max": float("nan"),
        }
    result = {f"p{int(p)}": float(np.percentile(array, p)) for p in points}
    result.update(count=int(array.size), mean=float(array.mean()), max=float(array.max()))
    return result


def _labelled_tile(image: np.ndarray, label: str, height: int) -> np.ndarray:
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    scale = height / image.shape[0]
    tile = cv2.resize(image, (max(1, round(image.shape[1] * scale)), height), cv2.INTER_AREA)
    cv2.rectangle(tile, (0, 0), (tile.shape[1], 22), (0, 0, 0), thickness=-1)
    cv2.putText(tile, label, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1)
    return tile


def save_sample_grid(
    path: Path, samples: Sequence[Sequence[tuple[str, np.ndarray]]], tile_height: int = 200
) -> Path:
    """One row per sample, one labelled tile per (label, image); rows padded to equal width."""
    if not samples:
        raise ValueError("no samples to draw")
    rows = [
        np.hstack([_labelled_tile(image, label, tile_height) for label, image in sample])
        for sample in samples
    ]
    width = max(row.shape[1] for row in rows)
    rows = [
        cv2.copyMakeBorder(row, 0, 0, 0, width - row.shape[1], cv2.BORDER_CONSTANT, value=0)
        for row in rows
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), np.vstack(rows)):
        raise OSError(f"cannot write {path}")
    return path


def save_histogram(
    path: Path, values: Sequence[float], title: str, xlabel: str, bins: int = 40
) -> Path:
    """A histogram PNG (matplotlib, Agg backend) with p50/p95 marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.5), dpi=100)
    array = np.asarray(list(values), dtype=np.float64)
    if array.size:
        axis.hist(array, bins=bins, color="#4477aa")
        for point, style in ((50, "--"), (95, ":")):
            value = float(np.percentile(array, point))
            axis.axvline(value, color="k", linestyle=style, label=f"p{point} {value:.1f}")
        axis.legend()
    axis.set_title(title)
    axis.set_xlabel(xlabel)
    axis.set_ylabel("count")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path


# --------------------------------------------------------------------------- fusion-eval reports


def detection_markdown(detection: dict) -> str:
    per_class = ", ".join(
        f"{name} {format_value(ap)}" for name, ap in detection["per_class_AP50"].items()
    )
    return (
        "## Detection (COCO protocol, pycocotools)\n\n"
        f"{detection['labelled_images']} labelled images, {detection['num_ground_truths']} "
        f"ground-truth boxes, {detection['num_predictions']} predictions.\n\n"
        f"mAP@0.5 **{format_value(detection['mAP50'])}**, "
        f"mAP@0.5:0.95 **{format_value(detection['mAP50_95'])}**. "
        f"AP@0.5 per class: {per_class} (n/a: no ground truth of that class). "
        f"Up to {detection.get('max_dets', 100)} detections ranked per image.\n"
    )


def segmentation_markdown(segmentation: dict) -> str:
    per_class = ", ".join(
        f"{name} {format_value(iou)}"
        for name, iou in zip(segmentation["classes"], segmentation["per_class_iou"], strict=True)
    )
    return (
        "## Segmentation\n\n"
        f"mIoU **{format_value(segmentation['mIoU'])}** (over classes present in ground "
        "truth or prediction), mAcc "
        f"{format_value(segmentation['mAcc'])}, pixel accuracy "
        f"{format_value(segmentation['pixel_acc'])}. IoU per class: {per_class}.\n"
    )


def folder_markdown(result: FolderResult, published: dict | None) -> str:
    """``summary.md`` of a folder evaluation."""
    skipped = f" ({len(result.skipped)} unreadable, skipped)" if result.skipped else ""
    parts = [
        f"# fusion-eval: {result.model_name}, {result.images} image pairs{skipped}\n",
        "## Fusion metrics (mean over images)\n",
        fusion_table(result.means, published),
    ]
    if result.timing:
        parts += [
            "## Time per frame in ms (pipeline on this machine)\n",
            markdown_table(
                [{"stage": stage, **values} for stage, values in result.timing.items()],
                ["stage", "p50", "p95", "mean", "max", "count"],
                digits=1,
            )
            + "\n",
        ]
    if result.postprocess:
        parts.append(
            "Detection post-processing: "
            + ", ".join(f"{key} {value}" for key, value in result.postprocess.items())
            + ".\n"
        )
    if result.detection is not None:
        parts.append(detection_markdown(result.detection))
        parts.append(
            f"Re-score with pycocotools: {DETECTIONS_COCO} against {GROUND_TRUTH_COCO} "
            f"(COCOeval bbox, maxDets [1, 10, {result.detection.get('max_dets', 100)}]).\n"
        )
    if result.segmentation is not None:
        parts.append(segmentation_markdown(result.segmentation))
    return "\n".join(parts)


#: The COCO files of a folder evaluation with detection ground truth (pycocotools can re-score).
DETECTIONS_COCO = "detections_coco.json"
GROUND_TRUTH_COCO = "ground_truth_coco.json"


def write_folder_report(out_dir: Path, result: FolderResult, published: dict | None) -> str:
    """per_image.csv, samples.png, summary.md and summary.json of a folder evaluation into
    ``out_dir``, and with detection ground truth :data:`DETECTIONS_COCO` (COCO results format)
    and :data:`GROUND_TRUTH_COCO` (COCO annotation file), the documents the mAP was computed
    from; returns the markdown. ``published``: literature rows shown under the measured ones
    (label -> metric -> value), or None. All JSON is strict (non-finite numbers as null)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    columns = ["method", "name", *METRIC_NAMES, "inference_ms", "total_ms"]
    write_csv(out_dir / "per_image.csv", result.rows, columns)
    if result.samples:
        save_sample_grid(out_dir / "samples.png", result.samples)
    markdown = folder_markdown(result, published)
    (out_dir / "summary.md").write_text(markdown)
    files = {}
    if result.coco_ground_truth is not None:
        write_json(out_dir / GROUND_TRUTH_COCO, result.coco_ground_truth)
        write_json(out_dir / DETECTIONS_COCO, result.coco_detections or [])
        files = {"ground_truth_coco": GROUND_TRUTH_COCO, "detections_coco": DETECTIONS_COCO}
    write_json(
        out_dir / "summary.json",
        {
            "model": result.model_name,
            "images": result.images,
            "skipped": result.skipped,
            "means": result.means,
            "timing": result.timing,
            "postprocess": result.postprocess,
            "detection": result.detection,
            "segmentation": result.segmentation,
            "files": files,
            "published_reference": published,
            "conventions": CONVENTIONS,
        },
    )
    return markdown


def bag_markdown(summary: dict[str, Any]) -> str:
    """``report.md`` of a bag evaluation (the summary dict of ``summary.json``)."""
    latency = summary["latency_ms"]
    drops = summary["drops_by_reason"] or {}
    parts = [
        f"# fusion-eval bag: {summary['bag']}\n",
        f"Model {summary['model'] or '(node default)'}, backend {summary['backend']}.\n",
        "## Throughput and latency (live node, this machine)\n",
        markdown_table(
            [
                {"quantity": "input pairs published", "value": summary["input_pairs_published"]},
                {"quantity": "fused images published", "value": summary["fused_published"]},
                {
                    "quantity": "fused matched to bag frames",
                    "value": summary["fused_matched_to_inputs"],
                },
                {"quantity": "throughput (fused/s)", "value": summary["throughput_pairs_per_s"]},
                {"quantity": "latency p50 (ms)", "value": latency["p50"]},
                {"quantity": "latency p95 (ms)", "value": latency["p95"]},
                {"quantity": "latency max (ms)", "value": latency["max"]},
                {"quantity": "inference p50 (ms, node)", "value": summary["inference_ms_p50"]},
                {"quantity": "inference p95 (ms, node)", "value": summary["inference_ms_p95"]},
            ],
            ["quantity", "value"],
            digits=1,
        ),
        "\nLatency: fused image receive time minus its header stamp (the replayer stamps inputs "
        "with their wall-clock publish time); histogram in latency_hist.png.\n",
        "Drops by reason (node diagnostics): "
        + (", ".join(f"{k} {v}" for k, v in sorted(drops.items())) or "none reported")
        + "\n",
        "## Fusion metrics of the published fused images (mean over frames)\n",
        fusion_table(summary["means"]) if summary["means"] else "no frames matched\n",
        "Bag mode scores the grey levels of the published (colour-restored) image, so values "
        "can differ slightly from folder mode, which scores the fused Y.\n",
    ]
    if summary["detection"] is not None:
        parts.append(detection_markdown(summary["detection"]))
    parts.append(f"Detection: {summary['detection_note']}.\n")
    parts.append(
        "Segmentation: the label side-car carries boxes only, so bag mode reports no "
        "segmentation scores (use folder mode with --masks).\n"
    )
    return "\n".join(parts)


def write_bag_report(
    out_dir: Path,
    summary: dict[str, Any],
    rows: Sequence[Mapping[str, object]],
    samples: Sequence[Sequence[tuple[str, np.ndarray]]],
    latency_ms: Sequence[float],
) -> str:
    """latency_hist.png, samples.png, per_frame.csv, summary.json and report.md of a bag
    evaluation into ``out_dir``; returns the markdown."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if latency_ms:
        save_histogram(
            out_dir / "latency_hist.png",
            latency_ms,
            "camera publish -> fused received",
            "latency (ms)",
        )
    if samples:
        save_sample_grid(out_dir / "samples.png", samples)
    columns = ["method", "frame", "visible_stamp_ns", "latency_ms", *METRIC_NAMES]
    write_csv(out_dir / "per_frame.csv", rows, columns)
    write_json(out_dir / "summary.json", summary)
    markdown = bag_markdown(summary)
    (out_dir / "report.md").write_text(markdown)
    return markdown
