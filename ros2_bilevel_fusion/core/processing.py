"""Pre- and post-processing around the fusion graph: pure numpy/OpenCV, no ROS.

Tensor conventions are those of the model bundle (see ``bundle.py``): inputs are padded at the
bottom and right (``preprocessing.pad_mode``) to a multiple of ``inputs.pad_multiple``; every
output is cropped back to the unpadded image. :func:`prepare_inputs` is the one public
preprocessing function: the node, ``fusion-eval`` and training's evaluation all call it.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from ros2_bilevel_fusion.core.bundle import (
    DEFAULT_PAD_MODE,
    DETECTION_HEADS,
    PAD_MODES,
    DetectionSpec,
    FcosLevel,
    ModelBundle,
    YoloxLevel,
)

# Candidates kept per level before NMS: bounds NMS cost when a head fires everywhere.
PRE_NMS_TOP_K = 1000


def pad_to_multiple(
    image: np.ndarray,
    multiple: int,
    mode: str = DEFAULT_PAD_MODE,
    value: float | tuple[float, ...] = 0,
) -> np.ndarray:
    """Pad an HxW or HxWxC image at the bottom and right to a multiple of ``multiple``.

    Returns ``image`` itself when no padding is needed. ``mode`` is one of
    ``bundle.PAD_MODES``: ``reflect_101`` mirrors without repeating the edge pixel (OpenCV
    BORDER_REFLECT_101, numpy "reflect"; padding larger than the image repeats the mirror, a
    1-pixel side repeats its pixel); ``constant`` fills with ``value`` (a scalar or one value
    per channel).
    """
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    if mode not in PAD_MODES:
        raise ValueError(f"pad mode must be one of {PAD_MODES}, got {mode!r}")
    height, width = image.shape[:2]
    pad_bottom = -height % multiple
    pad_right = -width % multiple
    if pad_bottom == 0 and pad_right == 0:
        return image
    if mode == "constant":
        fill = value if isinstance(value, tuple) else (value,) * 4
        return cv2.copyMakeBorder(
            image, 0, pad_bottom, 0, pad_right, cv2.BORDER_CONSTANT, value=fill
        )
    if height > pad_bottom and width > pad_right:
        return cv2.copyMakeBorder(image, 0, pad_bottom, 0, pad_right, cv2.BORDER_REFLECT_101)
    # Tiny images (smaller than the padding): numpy reflects repeatedly, OpenCV may not.
    pad = [(0, pad_bottom), (0, pad_right)] + [(0, 0)] * (image.ndim - 2)
    numpy_mode = "reflect" if height > 1 and width > 1 else "edge"
    return np.pad(image, pad, mode=numpy_mode)


def limit_pixels(image_hw: tuple[int, int], max_pixels: int) -> tuple[int, int]:
    """(H, W) shrunk with its aspect ratio kept so that H * W <= ``max_pixels``.

    ``image_hw`` itself when it already fits or ``max_pixels`` <= 0 (no limit). Each side stays
    >= 1.
    """
    height, width = int(image_hw[0]), int(image_hw[1])
    if max_pixels <= 0 or height * width <= max_pixels:
        return height, width
    scale = (max_pixels / float(height * width)) ** 0.5
    new_h, new_w = max(1, int(height * scale)), max(1, int(width * scale))
    while new_h * new_w > max_pixels:  # rounding never lets the product exceed the limit
        if new_w >= new_h and new_w > 1:
            new_w -= 1
        elif new_h > 1:
            new_h -= 1
        else:
            break
    return new_h, new_w


@dataclass
class PreparedInputs:
    ir: np.ndarray  # float32 [1, 1, Hp, Wp] in [0, 1]
    visible_ycrcb: np.ndarray  # float32 [1, 3, Hp, Wp] in [0, 1]
    visible_ycrcb_u8: np.ndarray  # uint8 HnxWnx3, unpadded, network size, for the colour restore
    image_hw: tuple[int, int]  # (H, W) of the images given
    network_hw: tuple[int, int]  # (Hn, Wn) the graph sees before padding: outputs' crop size


# YCrCb of black: what "constant" padding puts under the visible image.
_BLACK_YCRCB = (0.0, 128.0, 128.0)


def prepare_inputs(
    ir_u8: np.ndarray, visible_bgr: np.ndarray, bundle: ModelBundle
) -> PreparedInputs:
    """The runtime's preprocessing: one IR + visible pair -> the graph's padded inputs.

    ``ir_u8``: uint8 HxW thermal, already in the visible image's geometry (registered) and
    already 8-bit (16-bit/float thermal goes through the percentile stretch of
    ``bundle.preprocessing`` first, ``core.gain.AutoGain``). ``visible_bgr``: uint8 HxWx3
    BGR of the same size.

    Steps, all from ``bundle``: a graph exported for a fixed size (``inputs.height/width``)
    gets both images resized (bilinear) to that size; the visible image becomes OpenCV YCrCb;
    both are padded at the bottom and right to ``inputs.pad_multiple`` with
    ``preprocessing.pad_mode`` and scaled by 1/255 into float32 NCHW tensors. Crop the graph's
    outputs to ``network_hw`` (then resize to ``image_hw`` if they differ). Raises ValueError
    for arrays of the wrong type or shape.
    """
    ir_u8 = np.asarray(ir_u8)
    visible_bgr = np.asarray(visible_bgr)
    if ir_u8.dtype != np.uint8 or ir_u8.ndim != 2:
        raise ValueError(f"IR must be uint8 HxW, got {ir_u8.dtype} {ir_u8.shape}")
    if visible_bgr.dtype != np.uint8 or visible_bgr.ndim != 3 or visible_bgr.shape[2] != 3:
        raise ValueError(
            f"visible must be uint8 HxWx3 BGR, got {visible_bgr.dtype} {visible_bgr.shape}"
        )
    if ir_u8.shape != visible_bgr.shape[:2]:
        raise ValueError(
            f"IR {ir_u8.shape} and visible {visible_bgr.shape[:2]} differ in size; register first"
        )
    if ir_u8.size == 0:
        raise ValueError("empty image")
    image_hw = (int(ir_u8.shape[0]), int(ir_u8.shape[1]))
    fixed_hw = (int(bundle.inputs.height), int(bundle.inputs.width))
    if fixed_hw[0] > 0 and fixed_hw[1] > 0 and fixed_hw != image_hw:
        size = (fixed_hw[1], fixed_hw[0])
        ir_u8 = cv2.resize(ir_u8, size, interpolation=cv2.INTER_LINEAR)
        visible_bgr = cv2.resize(visible_bgr, size, interpolation=cv2.INTER_LINEAR)
    network_hw = (int(ir_u8.shape[0]), int(ir_u8.shape[1]))
    multiple = bundle.inputs.pad_multiple
    mode = bundle.preprocessing.pad_mode
    ycrcb = cv2.cvtColor(visible_bgr, cv2.COLOR_BGR2YCrCb)
    ir_padded = pad_to_multiple(ir_u8, multiple, mode, 0)
    ycrcb_padded = pad_to_multiple(ycrcb, multiple, mode, _BLACK_YCRCB)
    scale = np.float32(1.0 / 255.0)
    padded_hw = ir_padded.shape
    ir_tensor = np.empty((1, 1, *padded_hw), np.float32)
    np.multiply(ir_padded, scale, out=ir_tensor[0, 0], dtype=np.float32)
    # Plane by plane: ~5x faster than converting HxWx3 and transposing to planar order.
    ycrcb_tensor = np.empty((1, 3, *padded_hw), np.float32)
    for channel, plane in enumerate(cv2.split(ycrcb_padded)):
        np.multiply(plane, scale, out=ycrcb_tensor[0, channel], dtype=np.float32)
    return PreparedInputs(
        ir=ir_tensor,
        visible_ycrcb=ycrcb_tensor,
        visible_ycrcb_u8=ycrcb,
        image_hw=image_hw,
        network_hw=network_hw,
    )


def _as_2d(tensor: np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(tensor)
    while array.ndim > 2 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise ValueError(f"{what}: expected [1, 1, H, W] or HxW, got shape {np.shape(tensor)}")
    return array


def fused_to_u8(fused_y: np.ndarray, image_hw: tuple[int, int]) -> np.ndarray:
    """Fused Y in [0, 1] ([1,1,Hp,Wp] or HxW) -> uint8 HxW cropped to ``image_hw``."""
    plane = _as_2d(fused_y, "fused_y")
    height, width = image_hw
    if plane.shape[0] < height or plane.shape[1] < width:
        raise ValueError(f"fused_y {plane.shape} is smaller than the image {image_hw}")
    # OpenCV in place on one float copy (NaN -> 0, clamp to [0, 1] so that +inf -> 255, then
    # x 255 rounded half to even, as np.rint): one pass each instead of numpy's allocating
    # chain. convertScaleAbs's abs() is a no-op after the clamp.
    cropped = np.array(plane[:height, :width], dtype=np.float32, order="C")
    if cropped.size == 0:
        return np.zeros(cropped.shape, np.uint8)
    cv2.patchNaNs(cropped, 0.0)
    cv2.max(cropped, 0.0, dst=cropped)
    cv2.min(cropped, 1.0, dst=cropped)
    return cv2.convertScaleAbs(cropped, alpha=255.0)


def restore_colour(fused_y_u8: np.ndarray, visible_ycrcb_u8: np.ndarray) -> np.ndarray:
    """BGR image made of the fused luma and the visible image's chroma."""
    if fused_y_u8.shape != visible_ycrcb_u8.shape[:2]:
        raise ValueError(f"fused {fused_y_u8.shape} and visible {visible_ycrcb_u8.shape} differ")
    _, cr, cb = cv2.split(visible_ycrcb_u8)
    return cv2.cvtColor(cv2.merge([fused_y_u8, cr, cb]), cv2.COLOR_YCrCb2BGR)


@dataclass
class Detections:
    boxes: np.ndarray  # float32 [N, 4] x1, y1, x2, y2 in visible pixels, clipped to the image
    scores: np.ndarray  # float32 [N], descending
    class_ids: np.ndarray  # int64 [N]

    @classmethod
    def empty(cls) -> Detections:
        return cls(
            boxes=np.zeros((0, 4), np.float32),
            scores=np.zeros(0, np.float32),
            class_ids=np.zeros(0, np.int64),
        )

    def __len__(self) -> int:
        return int(self.scores.shape[0])


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # exp of a negative argument only: no overflow warnings on large logits.
    positive = x >= 0
    z = np.exp(-np.abs(x))
    return np.where(positive, 1.0 / (1.0 + z), z / (1.0 + z)).astype(np.float32)


def _level_array(outputs: Mapping[str, np.ndarray], name: str, channels: int | None) -> np.ndarray:
    if name not in outputs:
        raise ValueError(f"model output {name!r} is missing (have {sorted(outputs)})")
    array = np.asarray(outputs[name], dtype=np.float32)
    if (
        array.ndim != 4
        or array.shape[0] != 1
        or (channels is not None and array.shape[1] != channels)
    ):
        wanted = f"[1, {channels if channels is not None else 'C'}, h, w]"
        raise ValueError(f"model output {name!r} has shape {array.shape}, expected {wanted}")
    return array[0]


def nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    class_ids: np.ndarray,
    iou_threshold: float,
    max_keep: int,
) -> np.ndarray:
    """Class-aware greedy NMS (OpenCV ``cv2.dnn.NMSBoxesBatched``); indices, best first.

    ``boxes`` are xyxy in continuous coordinates (area = w * h). A box is suppressed by a
    better-scored kept box of the same class when their IoU is above ``iou_threshold``; equal
    scores keep their input order (a stable sort). Only scores > 0 are candidates (every
    decoded score is). At most ``max_keep`` indices are returned.
    """
    if scores.size == 0 or max_keep < 1:
        return np.zeros(0, np.int64)
    xywh = np.asarray(boxes, np.float64).copy()
    xywh[:, 2:] -= xywh[:, :2]
    batched = getattr(cv2.dnn, "NMSBoxesBatched", None)
    class_ids = np.asarray(class_ids, np.int32)
    scores = np.asarray(scores, np.float32)
    if batched is not None:
        keep = batched(xywh, scores, class_ids, 0.0, float(iou_threshold))
    else:  # OpenCV < 4.7: what NMSBoxesBatched does, one disjoint coordinate range per class
        offset = class_ids.astype(np.float64) * (float(np.max(boxes[:, 2:])) + 1.0)
        xywh[:, :2] += offset[:, None]
        keep = cv2.dnn.NMSBoxes(xywh, scores, 0.0, float(iou_threshold))
    # top_k is not passed: OpenCV 4.x applies it to the candidates, not to the kept boxes.
    return np.asarray(keep, np.int64).reshape(-1)[:max_keep]


# One level's candidates before NMS: xyxy boxes [K, 4], scores [K], class ids [K] (or None).
_Candidates = tuple[np.ndarray, np.ndarray, np.ndarray]


def _top_candidates(
    class_ids: np.ndarray, cell_ids: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """At most PRE_NMS_TOP_K of a level's (class, cell, score) candidates, the best ones."""
    if scores.size <= PRE_NMS_TOP_K:
        return class_ids, cell_ids, scores
    top = np.argpartition(-scores, PRE_NMS_TOP_K - 1)[:PRE_NMS_TOP_K]
    return class_ids[top], cell_ids[top], scores[top]


def _grid_of(level: FcosLevel | YoloxLevel, arrays: dict[str, np.ndarray]) -> tuple[int, int]:
    grids = {tuple(a.shape[1:]) for a in arrays.values()}
    if len(grids) != 1:
        shapes = ", ".join(f"{key} {a.shape}" for key, a in arrays.items())
        raise ValueError(f"stride {level.stride}: {shapes} disagree on the grid size")
    return grids.pop()


def _fcos_candidates(
    outputs: Mapping[str, np.ndarray], level: FcosLevel, num_classes: int, threshold: float
) -> _Candidates | None:
    cls_logits = _level_array(outputs, level.cls, num_classes)
    box = _level_array(outputs, level.box, 4)
    ctr = _level_array(outputs, level.ctr, 1)
    grid_hw = _grid_of(level, {"cls": cls_logits, "box": box, "ctr": ctr})
    cells = grid_hw[0] * grid_hw[1]
    scores = np.sqrt(
        _sigmoid(cls_logits.reshape(num_classes, cells)) * _sigmoid(ctr.reshape(1, cells))
    )
    class_ids, cell_ids = np.nonzero(scores > threshold)
    if cell_ids.size == 0:
        return None
    class_ids, cell_ids, candidate_scores = _top_candidates(
        class_ids, cell_ids, scores[class_ids, cell_ids]
    )
    stride = np.float32(level.stride)
    rows, cols = np.divmod(cell_ids, grid_hw[1])
    anchor_x = (cols.astype(np.float32) + 0.5) * stride
    anchor_y = (rows.astype(np.float32) + 0.5) * stride
    ltrb = np.maximum(box.reshape(4, cells)[:, cell_ids], 0.0) * stride
    boxes = np.stack(
        [anchor_x - ltrb[0], anchor_y - ltrb[1], anchor_x + ltrb[2], anchor_y + ltrb[3]],
        axis=1,
    )
    return boxes, candidate_scores, class_ids


def _yolox_candidates(
    outputs: Mapping[str, np.ndarray], level: YoloxLevel, num_classes: int, threshold: float
) -> _Candidates | None:
    reg = _level_array(outputs, level.reg, 4)
    obj = _level_array(outputs, level.obj, 1)
    cls_logits = _level_array(outputs, level.cls, num_classes)
    grid_hw = _grid_of(level, {"reg": reg, "obj": obj, "cls": cls_logits})
    cells = grid_hw[0] * grid_hw[1]
    # score_c = sigmoid(obj) * sigmoid(cls_c) <= sigmoid(obj), also once rounded to float32: a
    # cell whose objectness does not clear the threshold holds no candidate. The class
    # sigmoids and the box exp run on the few cells that do.
    objectness = _sigmoid(obj.reshape(cells))
    cell_ids = np.flatnonzero(objectness > threshold)
    if cell_ids.size == 0:
        return None
    scores = _sigmoid(cls_logits.reshape(num_classes, cells)[:, cell_ids])
    scores *= objectness[cell_ids]
    class_ids, picked = np.nonzero(scores > threshold)
    if picked.size == 0:
        return None
    class_ids, picked, candidate_scores = _top_candidates(
        class_ids, picked, scores[class_ids, picked]
    )
    cell_ids = cell_ids[picked]
    stride = np.float32(level.stride)
    rows, cols = np.divmod(cell_ids, grid_hw[1])
    dx, dy, log_w, log_h = reg.reshape(4, cells)[:, cell_ids]
    centre_x = (dx + cols.astype(np.float32)) * stride
    centre_y = (dy + rows.astype(np.float32)) * stride
    with np.errstate(over="ignore"):  # a huge log size gives inf: the box clips to the image
        half_w = np.exp(log_w) * (stride * np.float32(0.5))
        half_h = np.exp(log_h) * (stride * np.float32(0.5))
    boxes = np.stack(
        [centre_x - half_w, centre_y - half_h, centre_x + half_w, centre_y + half_h], axis=1
    )
    return boxes, candidate_scores, class_ids


# model.yaml detection.head -> its per-level candidate decoder (one per bundle.DETECTION_HEADS).
HEAD_DECODERS = {"fcos": _fcos_candidates, "yolox": _yolox_candidates}


def decode_detections(
    outputs: Mapping[str, np.ndarray],
    spec: DetectionSpec,
    image_hw: tuple[int, int],
    score_threshold: float,
    nms_iou: float,
    max_detections: int,
) -> Detections:
    """Decode the raw heads of ``spec.head`` (see :mod:`bundle`) into final detections.

    Per level, the head's rule: ``fcos`` score = sqrt(sigmoid(cls) * sigmoid(ctr)), box from
    the anchor point ((j + 0.5) s, (i + 0.5) s) and the ``ltrb`` distances times the stride
    (negative distances clamp to 0); ``yolox`` score = sigmoid(obj) * sigmoid(cls), box of
    centre ((dx + j) s, (dy + i) s) and size (exp(log w) s, exp(log h) s). Then, for both:
    candidates with score > ``score_threshold`` (strict, as training's
    ``decode_detections_torch`` and torchvision's FCOS), at most PRE_NMS_TOP_K per level;
    boxes clipped to ``image_hw``; boxes empty after clipping (wholly in the padding) or not
    finite dropped; then class-aware NMS and the ``max_detections`` best. Raises ValueError for
    a missing or misshapen output. Vectorised over cells; no Python loop but over levels.
    """
    level_candidates = HEAD_DECODERS.get(spec.head)
    if level_candidates is None:
        raise ValueError(f"unsupported detection head {spec.head!r}")
    if spec.box_encoding != DETECTION_HEADS[spec.head][1]:
        raise ValueError(f"unsupported box encoding {spec.box_encoding!r} for {spec.head!r}")
    num_classes = len(spec.classes)
    height, width = image_hw
    all_boxes, all_scores, all_classes = [], [], []
    for level in spec.levels:
        found = level_candidates(outputs, level, num_classes, score_threshold)
        if found is None:
            continue
        all_boxes.append(found[0])
        all_scores.append(found[1])
        all_classes.append(found[2])
    if not all_boxes:
        return Detections.empty()
    boxes = np.concatenate(all_boxes).astype(np.float32)
    scores = np.concatenate(all_scores).astype(np.float32)
    class_ids = np.concatenate(all_classes).astype(np.int64)
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, width)
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, height)
    valid = np.all(np.isfinite(boxes), axis=1) & np.isfinite(scores)
    valid &= (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    boxes, scores, class_ids = boxes[valid], scores[valid], class_ids[valid]
    if scores.size == 0:
        return Detections.empty()
    keep = nms(boxes, scores, class_ids, nms_iou, max_detections)
    return Detections(boxes=boxes[keep], scores=scores[keep], class_ids=class_ids[keep])


def segmentation_labels(logits: np.ndarray, image_hw: tuple[int, int]) -> np.ndarray:
    """Per-pixel argmax of [1, C, Hp, Wp] logits, cropped to ``image_hw``, as uint8 HxW."""
    array = np.asarray(logits)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3:
        raise ValueError(f"segmentation logits must be [1, C, H, W], got {np.shape(logits)}")
    if array.shape[0] > 256:
        raise ValueError(f"{array.shape[0]} segmentation classes do not fit in uint8 labels")
    height, width = image_hw
    if array.shape[1] < height or array.shape[2] < width:
        raise ValueError(f"segmentation logits {array.shape} smaller than the image {image_hw}")
    cropped = array[:, :height, :width].astype(np.float32, copy=False)
    # A running maximum over classes with OpenCV is ~6x faster than np.argmax over the
    # (strided) class axis at 640x512. Ties go to the lower class id as with argmax; a NaN
    # logit never wins.
    best = np.array(cropped[0])
    labels = np.zeros((height, width), np.uint8)
    class_fill = np.empty((height, width), np.uint8)
    for class_id in range(1, cropped.shape[0]):
        better = cv2.compare(cropped[class_id], best, cv2.CMP_GT)
        cv2.max(best, cropped[class_id], dst=best)
        class_fill.fill(class_id)
        cv2.copyTo(class_fill, better, labels)
    return labels


def colorize_labels(labels: np.ndarray, palette_rgb: Sequence[tuple[int, int, int]]) -> np.ndarray:
    """uint8 label image -> BGR image via a lookup table; ids beyond the palette are black."""
    lut = np.zeros((256, 3), np.uint8)
    palette = np.asarray(palette_rgb, dtype=np.int64).reshape(-1, 3)[:256]
    lut[: len(palette)] = np.clip(palette[:, ::-1], 0, 255).astype(np.uint8)
    labels = np.ascontiguousarray(labels, dtype=np.uint8)
    if labels.ndim != 2 or labels.size == 0:
        return np.take(lut, labels, axis=0)
    # cv2.LUT on the labels repeated in three channels: ~5x faster than numpy's fancy-index
    # take at 640x480 (one full-frame pass per frame of the node's debug and colour outputs)
    return cv2.LUT(cv2.merge((labels, labels, labels)), lut.reshape(256, 1, 3))


def blend(
    base_bgr: np.ndarray,
    overlay_bgr: np.ndarray,
    alpha: float,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """``(1 - alpha) * base + alpha * overlay``, only where ``mask`` is true if given."""
    if base_bgr.shape != overlay_bgr.shape:
        raise ValueError(f"base {base_bgr.shape} and overlay {overlay_bgr.shape} differ")
    alpha = float(np.clip(alpha, 0.0, 1.0))
    mixed = cv2.addWeighted(base_bgr, 1.0 - alpha, overlay_bgr, alpha, 0.0)
    if mask is None:
        return mixed
    if mask.shape != base_bgr.shape[:2]:
        raise ValueError(f"mask {mask.shape} does not match image {base_bgr.shape[:2]}")
    result = base_bgr.copy()
    # cv2.copyTo with a uint8 mask is ~25x faster than numpy boolean indexing at 640x512.
    return cv2.copyTo(mixed, np.asarray(mask, dtype=bool).view(np.uint8), result)


def class_colour(class_id: int) -> tuple[int, int, int]:
    """A stable, saturated BGR colour per class id."""
    hue = (zlib.crc32(str(int(class_id)).encode()) % 180) if class_id >= 0 else 0
    hsv = np.array([[[hue, 220, 255]]], np.uint8)
    b, g, r = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0]
    return int(b), int(g), int(r)


@functools.lru_cache(maxsize=256)
def _label_size(name: str, font_scale: float) -> tuple[tuple[int, int], int]:
    """cv2.getTextSize of "<name> 0.00": Hershey digits all have one advance width, so every
    score's label has this size; cached because getTextSize cost ~0.1 ms per box per frame."""
    return cv2.getTextSize(f"{name} 0.00", cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)


def draw_detections(
    image_bgr: np.ndarray, detections: Detections, class_names: Sequence[str]
) -> np.ndarray:
    """A copy of ``image_bgr`` with one box and a "name 0.87" label per detection."""
    canvas = np.ascontiguousarray(image_bgr).copy()
    height, width = canvas.shape[:2]
    thickness = max(1, round(min(height, width) / 300))
    font_scale = max(0.35, min(height, width) / 900)
    for box, score, class_id in zip(
        detections.boxes, detections.scores, detections.class_ids, strict=True
    ):
        colour = class_colour(int(class_id))
        x1, y1, x2, y2 = (int(round(float(v))) for v in box)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, thickness)
        name = class_names[class_id] if 0 <= class_id < len(class_names) else str(class_id)
        label = f"{name} {float(score):.2f}"
        (text_w, text_h), baseline = _label_size(name, font_scale)
        top = y1 - text_h - baseline if y1 - text_h - baseline >= 0 else y1
        cv2.rectangle(canvas, (x1, top), (x1 + text_w, top + text_h + baseline), colour, -1)
        cv2.putText(
            canvas,
            label,
            (x1, top + text_h),
            cv2.FONT_HERSHEY_SIMPLEX,
            font_scale,
            (0, 0, 0),
            1,
            cv2.LINE_AA,
        )
    return canvas
