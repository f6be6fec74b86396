"""``fusion-eval bag``: replay a bag through the real node and score what it published.

:func:`ros2_bilevel_fusion.bag.live_run.run_bag_through_node` runs the node on the bag; this
module matches the published fused images and detections to the bag's input frames and scores
them: fusion metrics (with the baselines on the same inputs), detection mAP against the bag's
label side-car, latency, throughput and drops. :func:`ros2_bilevel_fusion.evaluation.report.
write_bag_report` writes the report.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ros2_bilevel_fusion.bag import bagio
from ros2_bilevel_fusion.core.registration import Registration
from ros2_bilevel_fusion.evaluation import baselines, metrics, report
from ros2_bilevel_fusion.evaluation.folder import (
    BASELINE_LABELS,
    SAMPLE_COUNT,
    EvaluationError,
    visible_luma,
)
from ros2_bilevel_fusion.evaluation.semantic_metrics import detection_map
from ros2_bilevel_fusion.messages import codec
from ros2_bilevel_fusion.messages.detections import DetectionsJson, payload_stamp_ns
from ros2_bilevel_fusion.messages.stamps import header_stamp_ns

LOG = logging.getLogger("fusion-eval")


@dataclass(frozen=True)
class BagFrame:
    stamp_ns: int  # original header stamp in the bag
    record_ns: int  # the bag's record time of the message
    image: np.ndarray  # IR: uint8 HxW; visible: uint8 HxWx3 BGR


def read_bag_frames(bag: Path, topic: str, grey: bool) -> list[BagFrame]:
    """Every image of ``topic`` (Image or CompressedImage) in bag order, converted as the node
    converts it (codec)."""
    frames = []
    for message in bagio.read_bag(bag, [topic]):
        msg = message.decode()
        array, encoding = codec.message_to_array(msg)
        # 16-bit/float IR: codec's default stretch per frame (the node's gain is stateful).
        image = codec.to_mono8(array, encoding) if grey else codec.to_bgr8(array, encoding)
        frames.append(
            BagFrame(header_stamp_ns(msg), message.timestamp_ns, np.ascontiguousarray(image))
        )
    return frames


def match_published_to_bag(
    published_stamps: Sequence[int],
    recorded_input_stamps: Sequence[int],
    expected_restamps: Sequence[float],
    tolerance_ns: int = 2_000,
) -> dict[int, int]:
    """Published (restamped) stamp -> index of the bag's visible frame it was made from.

    The replayer restamps inputs with their scheduled wall-clock publish time (plus the
    header's offset from its record time) and the node copies the visible stamp into its
    outputs. The recorder saw the restamped visible inputs in publish order, so when it saw all
    of them the k-th recorded input is the bag's k-th visible frame and a published stamp is
    found exactly among the recorded ones.

    When the recorder missed inputs, ``expected_restamps`` (each bag frame's restamp minus the
    unknown wall-clock start, see :func:`expected_restamps_ns`) are aligned with the recorded
    inputs: the first recorded input is tried as each bag frame it could be, and the alignment
    under which the most recorded inputs land within ``tolerance_ns`` of a bag frame wins. The
    restamp is computed, not measured, so only rounding separates them and stamp jitter in the
    bag makes the alignment unique. A perfectly periodic bag is ambiguous: then nothing is
    matched (a warning says so) rather than frames being scored against the wrong inputs.
    """
    matches: dict[int, int] = {}
    if len(recorded_input_stamps) == len(expected_restamps):
        index_of = {int(stamp): k for k, stamp in enumerate(recorded_input_stamps)}
        for stamp in published_stamps:
            if int(stamp) in index_of:
                matches[int(stamp)] = index_of[int(stamp)]
        return matches
    if not recorded_input_stamps or not len(expected_restamps):
        return matches
    LOG.warning(
        "recorder saw %d of %d visible inputs; matching by restamp alignment",
        len(recorded_input_stamps),
        len(expected_restamps),
    )
    # Work relative to the first recorded stamp: absolute ns (~1.8e18) do not fit a float64.
    origin = int(recorded_input_stamps[0])
    recorded = np.asarray([int(s) - origin for s in recorded_input_stamps], dtype=np.float64)
    expected = np.asarray(expected_restamps, dtype=np.float64)

    def nearest(relative: np.ndarray, shift: float) -> tuple[np.ndarray, np.ndarray]:
        shifted = relative + shift
        right = np.clip(np.searchsorted(expected, shifted), 0, len(expected) - 1)
        left = np.clip(right - 1, 0, len(expected) - 1)
        pick = np.where(
            np.abs(expected[left] - shifted) <= np.abs(expected[right] - shifted), left, right
        )
        return pick, np.abs(expected[pick] - shifted)

    # The first recorded input is bag frame j for some j <= the number of missed inputs.
    missed = max(0, len(expected) - len(recorded))
    scores = []
    for j in range(min(len(expected), missed + 1)):
        _, error = nearest(recorded, float(expected[j]))
        scores.append((int(np.sum(error <= tolerance_ns)), j))
    best_count = max(count for count, _ in scores)
    best = [j for count, j in scores if count == best_count]
    if len(best) != 1:
        LOG.warning(
            "restamp alignment is ambiguous (%d candidates); published frames not matched",
            len(best),
        )
        return matches
    shift = float(expected[best[0]])
    published = np.asarray([int(s) - origin for s in published_stamps], dtype=np.float64)
    if published.size:
        picks, errors = nearest(published, shift)
        for stamp, pick, error in zip(published_stamps, picks, errors, strict=True):
            if error <= tolerance_ns:
                matches[int(stamp)] = int(pick)
    return matches


def expected_restamps_ns(frames: Sequence[BagFrame], rate: float) -> np.ndarray:
    """Each frame's replay restamp minus the replay's wall-clock start (and a constant).

    The replayer publishes at (record - bag start) / rate and stamps record-relative, so the
    restamp is wall_start + (record - bag_start) / rate + (stamp - record).
    """
    if not frames:
        return np.zeros(0)
    first_record = frames[0].record_ns
    return np.asarray(
        [(f.record_ns - first_record) / rate + (f.stamp_ns - f.record_ns) for f in frames],
        dtype=np.float64,
    )


def nearest_frame(frames: Sequence[BagFrame], stamp_ns: int) -> BagFrame:
    stamps = np.asarray([f.stamp_ns for f in frames], dtype=np.int64)
    return frames[int(np.argmin(np.abs(stamps - stamp_ns)))]


def sidecar_to_truth(boxes: Sequence[dict]) -> dict[str, np.ndarray]:
    """Label side-car boxes (class, cx, cy, w, h in pixels) -> a detection_map ground truth."""
    xyxy = [
        [b["cx"] - b["w"] / 2, b["cy"] - b["h"] / 2, b["cx"] + b["w"] / 2, b["cy"] + b["h"] / 2]
        for b in boxes
    ]
    return {
        "boxes": np.asarray(xyxy, dtype=np.float64).reshape(-1, 4),
        "labels": np.asarray([b["class"] for b in boxes], dtype=np.int64),
    }


def detection_json_to_entry(payload: dict) -> dict[str, np.ndarray]:
    """The node's ~/detections/json payload -> a detection_map prediction entry."""
    return DetectionsJson.from_dict(payload).prediction_entry()


def _detection_class_names(
    bundle: Path | None, payloads: Sequence[dict], truths: Sequence[dict]
) -> list[str]:
    if bundle is not None:
        from ros2_bilevel_fusion.core.bundle import load_bundle

        loaded = load_bundle(bundle)
        if loaded.detection is not None:
            return list(loaded.detection.classes)
    names: dict[int, str] = {}
    for payload in payloads:
        for item in payload.get("detections", []):
            names[int(item["class_id"])] = str(item.get("class_name", item["class_id"]))
    largest = max(
        [*names, *(int(t["labels"].max()) for t in truths if t["labels"].size)], default=-1
    )
    return [names.get(i, str(i)) for i in range(largest + 1)]


@dataclass
class BagEvaluation:
    markdown: str
    summary: dict[str, Any]


def evaluate_live_result(
    live: Any,
    bag: Path,
    out_dir: Path,
    *,
    bundle: Path | None = None,
    rate: float = 1.0,
    with_baselines: bool = True,
) -> BagEvaluation:
    """Score a :class:`~ros2_bilevel_fusion.bag.live_run.LiveRunResult` against its bag's inputs."""
    out_dir.mkdir(parents=True, exist_ok=True)
    visible_topic = live.bag_inputs["visible"].bag_topic
    ir_topic = live.bag_inputs["ir"].bag_topic
    visible_frames = read_bag_frames(bag, visible_topic, grey=False)
    ir_frames = read_bag_frames(bag, ir_topic, grey=True)
    if not visible_frames or not ir_frames:
        raise EvaluationError(f"{bag} has no images on {visible_topic} and {ir_topic}")
    fused_records = [r for r in live.output("fused") if r.payload is not None]
    recorded_inputs = [r.stamp_ns for r in live.input_records("visible")]
    matches = match_published_to_bag(
        [r.stamp_ns for r in fused_records],
        recorded_inputs,
        expected_restamps_ns(visible_frames, rate),
    )
    registration = Registration.identity()
    rows: list[dict[str, Any]] = []
    per_method: dict[str, list[dict]] = {}
    samples: list[list[tuple[str, np.ndarray]]] = []
    for record in fused_records:
        index = matches.get(record.stamp_ns)
        if index is None:
            continue
        visible = visible_frames[index]
        ir = nearest_frame(ir_frames, visible.stamp_ns)
        fused = np.asarray(record.payload)
        if fused.shape[:2] != visible.image.shape[:2]:
            raise EvaluationError(
                f"published fused image {fused.shape} does not match the input "
                f"{visible.image.shape}"
            )
        ir_registered = registration.warp(ir.image, visible.image.shape[:2])
        ir_gray = ir_registered.astype(np.float64)
        visible_gray = metrics.to_gray_float(visible.image)
        candidates = {"node (published)": metrics.to_gray_float(fused)}
        if with_baselines:
            luma = visible_luma(visible.image)
            for name, fuse in baselines.BASELINES.items():
                candidates[BASELINE_LABELS[name]] = fuse(ir_registered, luma).astype(np.float64)
        for method, fused_gray in candidates.items():
            row: dict[str, Any] = {
                "method": method,
                "frame": index,
                "visible_stamp_ns": visible.stamp_ns,
                "latency_ms": (record.receive_ns - record.stamp_ns) / 1e6,
            }
            row.update(metrics.fusion_metrics(fused_gray, ir_gray, visible_gray))
            rows.append(row)
            per_method.setdefault(method, []).append(row)
        if len(samples) < SAMPLE_COUNT:
            samples.append([("IR", ir.image), ("VI", visible.image), ("node fused", fused)])

    means = {
        method: metrics.mean_metrics(method_rows) for method, method_rows in per_method.items()
    }

    # Detection: frames with both a published detection message and a side-car entry.
    labels = bagio.read_label_sidecar(bag)
    detection = None
    detection_payloads = [r.payload for r in live.output("detections/json") if r.payload]
    if labels:
        predictions, truths, used_payloads = [], [], []
        for payload in detection_payloads:
            stamp = payload_stamp_ns(payload)
            index = None if stamp is None else matches.get(stamp)
            if index is None:
                continue
            boxes = labels.get(visible_frames[index].stamp_ns)
            if boxes is None:
                continue
            predictions.append(detection_json_to_entry(payload))
            truths.append(sidecar_to_truth(boxes))
            used_payloads.append(payload)
        if truths:
            class_names = _detection_class_names(bundle, used_payloads, truths)
            detection = detection_map(predictions, truths, class_names)
            detection["labelled_images"] = len(truths)
        detection_note = (
            f"{len(truths)} of {len(labels)} labelled frames had published detections "
            "(frames the node dropped are not scored)"
        )
    else:
        detection_note = "the bag has no label side-car (labels.json): no detection scores"

    latency = report.percentiles(live.latency_ms)
    summary = {
        "bag": str(bag),
        "bag_topics": {stream: {"topic": i.bag_topic, "type": i.msgtype}
                       for stream, i in live.bag_inputs.items()},
        "model": live.model,
        "backend": live.backend,
        "input_pairs_published": live.input_pairs_published,
        "fused_published": live.pairs_out,
        "fused_matched_to_inputs": len({r["frame"] for r in rows}),
        "throughput_pairs_per_s": live.throughput_pairs_per_s,
        "latency_ms": latency,
        "inference_ms_p50": live.inference_ms_p50,
        "inference_ms_p95": live.inference_ms_p95,
        "drops_by_reason": live.drops_by_reason,
        "means": means,
        "detection": detection,
        "detection_note": detection_note,
        "segmentation": None,
        "conventions": metrics.CONVENTIONS,
    }
    markdown = report.write_bag_report(out_dir, summary, rows, samples, live.latency_ms)
    return BagEvaluation(markdown, summary)
