"""Report helpers for ``fusion-eval`` and the benchmarks: markdown tables, CSV, figures.

No ROS and no torch; matplotlib (Agg) only for the latency histogram.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np

from ros2_bilevel_fusion.evaluation.metrics import CONVENTIONS, METRIC_NAMES

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
