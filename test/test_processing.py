"""Pre/post-processing on synthetic arrays and hand-made detection heads."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from ros2_bilevel_fusion.core.bundle import (
    DETECTION_HEADS,
    DetectionLevel,
    DetectionSpec,
    FcosLevel,
    InputSpec,
    ModelBundle,
    PreprocessSpec,
    YoloxLevel,
)
from ros2_bilevel_fusion.core.processing import (
    HEAD_DECODERS,
    PRE_NMS_TOP_K,
    Detections,
    blend,
    colorize_labels,
    decode_detections,
    draw_detections,
    fused_to_u8,
    nms,
    pad_to_multiple,
    prepare_inputs,
    restore_colour,
    segmentation_labels,
)

SPEC = DetectionSpec(
    classes=("person", "car"),
    levels=(
        DetectionLevel(8, "cls8", "box8", "ctr8"),
        DetectionLevel(16, "cls16", "box16", "ctr16"),
    ),
)
LOGIT_OFF = -30.0
LOGIT_ON = 30.0  # sigmoid ~ 1: score ~ 1 when centerness is on too


def synthetic_heads(padded_hw: tuple[int, int]) -> dict[str, np.ndarray]:
    """All-cold synthetic FCOS heads for SPEC on a padded input of this size."""
    outputs = {}
    for level in SPEC.levels:
        grid = (padded_hw[0] // level.stride, padded_hw[1] // level.stride)
        outputs[level.cls] = np.full((1, len(SPEC.classes), *grid), LOGIT_OFF, np.float32)
        outputs[level.box] = np.ones((1, 4, *grid), np.float32)
        outputs[level.ctr] = np.full((1, 1, *grid), LOGIT_ON, np.float32)
    return outputs


def hot_cell(
    outputs: dict, level: int, class_id: int, row: int, col: int, ltrb, cls_logit=LOGIT_ON
) -> None:
    spec_level = SPEC.levels[level]
    outputs[spec_level.cls][0, class_id, row, col] = cls_logit
    outputs[spec_level.box][0, :, row, col] = ltrb


def bundle_for(
    pad_multiple: int = 32, pad_mode: str = "reflect_101", fixed_hw: tuple[int, int] = (0, 0)
) -> ModelBundle:
    """A bundle carrying only what preprocessing reads (no ONNX file is opened)."""
    return ModelBundle(
        name="preprocessing",
        onnx_path=Path("unused.onnx"),
        inputs=InputSpec(pad_multiple=pad_multiple, height=fixed_hw[0], width=fixed_hw[1]),
        preprocessing=PreprocessSpec(pad_mode=pad_mode),
    )


def decode(outputs: dict, image_hw=(64, 96), threshold=0.3, iou=0.5, max_det=100) -> Detections:
    return decode_detections(outputs, SPEC, image_hw, threshold, iou, max_det)


def test_pad_to_multiple_reflects_bottom_right() -> None:
    image = np.arange(5 * 6, dtype=np.uint8).reshape(5, 6)
    padded = pad_to_multiple(image, 4)
    assert padded.shape == (8, 8)
    np.testing.assert_array_equal(padded[:5, :6], image)
    np.testing.assert_array_equal(padded[5], image[3, list(range(6)) + [4, 3]])
    np.testing.assert_array_equal(padded[:5, 6], image[:, 4])
    square = image[:4, :4]
    np.testing.assert_array_equal(pad_to_multiple(square, 4), square)  # already a multiple
    exact = np.zeros((8, 8, 3), np.uint8)
    assert pad_to_multiple(exact, 4) is exact
    colour = pad_to_multiple(np.zeros((5, 6, 3), np.uint8), 32)
    assert colour.shape == (32, 32, 3)


def test_pad_to_multiple_tiny_images() -> None:
    assert pad_to_multiple(np.arange(6, dtype=np.uint8).reshape(2, 3), 32).shape == (32, 32)
    assert pad_to_multiple(np.full((1, 1), 7, np.uint8), 8).min() == 7


def test_prepare_inputs_layout_and_values() -> None:
    rng = np.random.default_rng(0)
    ir = rng.integers(0, 256, (30, 50), dtype=np.uint8)
    bgr = rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)
    prepared = prepare_inputs(ir, bgr, bundle_for(16))
    assert prepared.image_hw == prepared.network_hw == (30, 50)
    assert prepared.ir.shape == (1, 1, 32, 64) and prepared.ir.dtype == np.float32
    assert prepared.visible_ycrcb.shape == (1, 3, 32, 64)
    assert prepared.visible_ycrcb.dtype == np.float32
    assert prepared.visible_ycrcb.flags.c_contiguous
    ycrcb = cv2.cvtColor(bgr, cv2.COLOR_BGR2YCrCb)
    np.testing.assert_array_equal(prepared.visible_ycrcb_u8, ycrcb)
    np.testing.assert_allclose(prepared.ir[0, 0, :30, :50], ir / 255.0, atol=1e-6)
    np.testing.assert_allclose(
        prepared.visible_ycrcb[0, :, :30, :50], ycrcb.transpose(2, 0, 1) / 255.0, atol=1e-6
    )
    assert 0.0 <= prepared.ir.min() and prepared.ir.max() <= 1.0


def test_prepare_inputs_pads_with_the_bundle_pad_mode() -> None:
    ir = np.full((30, 50), 200, np.uint8)
    ir[-1] = 10  # the mirrored row under the image is the second last: 200, not 10
    bgr = np.full((30, 50, 3), 255, np.uint8)
    reflected = prepare_inputs(ir, bgr, bundle_for(16, "reflect_101"))
    np.testing.assert_allclose(reflected.ir[0, 0, 30], 200 / 255.0, atol=1e-6)
    np.testing.assert_allclose(reflected.visible_ycrcb[0, 0, 31, 60], 1.0, atol=1e-6)
    black = prepare_inputs(ir, bgr, bundle_for(16, "constant"))
    assert black.ir[0, 0, 30:].max() == 0.0 and black.ir[0, 0, :, 50:].max() == 0.0
    # Black in YCrCb: Y 0, Cr and Cb 128.
    np.testing.assert_allclose(
        black.visible_ycrcb[0, :, 31, 60], np.array([0, 128, 128]) / 255.0, atol=1e-6
    )
    np.testing.assert_array_equal(black.ir[0, 0, :30, :50], reflected.ir[0, 0, :30, :50])


def test_prepare_inputs_resizes_to_a_fixed_size_graph() -> None:
    ir = np.tile(np.arange(40, dtype=np.uint8) * 6, (20, 1))
    bgr = cv2.cvtColor(ir, cv2.COLOR_GRAY2BGR)
    prepared = prepare_inputs(ir, bgr, bundle_for(8, fixed_hw=(32, 64)))
    assert prepared.image_hw == (20, 40) and prepared.network_hw == (32, 64)
    assert prepared.ir.shape == (1, 1, 32, 64)
    expected = cv2.resize(ir, (64, 32), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(prepared.ir[0, 0], expected / 255.0, atol=1e-6)
    assert prepared.visible_ycrcb_u8.shape == (32, 64, 3)


def test_pad_to_multiple_rejects_unknown_modes() -> None:
    with pytest.raises(ValueError, match="pad mode"):
        pad_to_multiple(np.zeros((5, 5), np.uint8), 4, "wrap")


@pytest.mark.parametrize(
    ("ir", "bgr"),
    [
        (np.zeros((10, 10), np.uint8), np.zeros((10, 12, 3), np.uint8)),
        (np.zeros((10, 10), np.uint16), np.zeros((10, 10, 3), np.uint8)),
        (np.zeros((10, 10), np.uint8), np.zeros((10, 10), np.uint8)),
    ],
)
def test_prepare_inputs_rejects_bad_arrays(ir: np.ndarray, bgr: np.ndarray) -> None:
    with pytest.raises(ValueError):
        prepare_inputs(ir, bgr, bundle_for(8))


def test_fused_to_u8_crops_clips_and_rounds() -> None:
    fused = np.zeros((1, 1, 8, 8), np.float32)
    fused[0, 0, 0, :4] = [-0.5, 0.5, 1.5, 100 / 255 + 0.4 / 255]
    fused[0, 0, 1, 0] = np.nan
    fused[0, 0, 7, 7] = 0.9  # in the padding: cropped away
    out = fused_to_u8(fused, (5, 6))
    assert out.shape == (5, 6) and out.dtype == np.uint8
    assert out[0, :4].tolist() == [0, 128, 255, 100]
    assert out[1, 0] == 0
    np.testing.assert_array_equal(fused_to_u8(fused[0, 0], (5, 6)), out)
    with pytest.raises(ValueError):
        fused_to_u8(fused, (9, 9))


def test_restore_colour_keeps_visible_chroma() -> None:
    rng = np.random.default_rng(1)
    bgr = cv2.GaussianBlur(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8), (5, 5), 2)
    ycrcb = cv2.cvtColor(bgr, cv2.COLOR_BGR2YCrCb)
    # Fused Y equal to the visible Y must give back the visible image (up to rounding).
    same = restore_colour(ycrcb[..., 0].copy(), ycrcb)
    assert np.abs(same.astype(int) - bgr.astype(int)).max() <= 3
    brighter = restore_colour(np.full((20, 30), 200, np.uint8), ycrcb)
    back = cv2.cvtColor(brighter, cv2.COLOR_BGR2YCrCb)
    # Chroma survives wherever the colour is in gamut.
    assert np.median(np.abs(back[..., 1:].astype(int) - ycrcb[..., 1:].astype(int))) <= 2


def test_single_hot_cell_decodes_to_known_box() -> None:
    outputs = synthetic_heads((64, 96))
    # Stride 8, row 3, col 5: anchor (44, 28); ltrb (1, 2, 3, 0.5) strides -> (36, 12, 68, 32).
    hot_cell(outputs, 0, 1, 3, 5, (1.0, 2.0, 3.0, 0.5))
    detections = decode(outputs)
    assert len(detections) == 1
    np.testing.assert_allclose(detections.boxes[0], [36, 12, 68, 32])
    assert detections.class_ids.tolist() == [1]
    assert detections.scores[0] == pytest.approx(1.0, abs=1e-6)
    assert detections.boxes.dtype == np.float32 and detections.class_ids.dtype == np.int64


def test_score_is_sqrt_of_class_times_centerness() -> None:
    outputs = synthetic_heads((64, 96))
    hot_cell(outputs, 1, 0, 1, 1, (1, 1, 1, 1), cls_logit=0.0)  # sigmoid 0.5
    outputs["ctr16"][0, 0, 1, 1] = np.log(0.5 / 0.5)  # sigmoid 0.5
    detections = decode(outputs)
    assert detections.scores.tolist() == pytest.approx([0.5])
    np.testing.assert_allclose(detections.boxes[0], [8, 8, 40, 40])
    assert len(decode(outputs, threshold=0.51)) == 0
    assert len(decode(outputs, threshold=0.5)) == 0  # strict, as training's decoder


def test_boxes_are_clipped_and_padding_only_boxes_dropped() -> None:
    outputs = synthetic_heads((64, 96))
    hot_cell(outputs, 0, 0, 0, 0, (5, 5, 1, 1))  # extends past the top-left corner
    hot_cell(outputs, 0, 0, 7, 11, (0.2, 0.2, 0.2, 0.2))  # centre (92, 60): in the padding
    detections = decode(outputs, image_hw=(50, 90))
    assert len(detections) == 1
    np.testing.assert_allclose(detections.boxes[0], [0, 0, 12, 12])


def test_negative_distances_clamp_to_zero() -> None:
    outputs = synthetic_heads((64, 96))
    hot_cell(outputs, 0, 0, 2, 2, (-1, 1, 1, 1))
    detections = decode(outputs)
    np.testing.assert_allclose(detections.boxes[0], [20, 12, 28, 28])


def test_nms_is_class_aware_and_keeps_the_best() -> None:
    outputs = synthetic_heads((64, 96))
    # Two overlapping "person" boxes at neighbouring stride-8 cells, one weaker.
    hot_cell(outputs, 0, 0, 3, 3, (2, 2, 2, 2), cls_logit=5.0)
    hot_cell(outputs, 0, 0, 3, 4, (2, 2, 2, 2), cls_logit=2.0)
    # The same place as a "car": a different class is never suppressed.
    hot_cell(outputs, 0, 1, 3, 3, (2, 2, 2, 2), cls_logit=1.0)
    # A distant person survives.
    hot_cell(outputs, 1, 0, 3, 5, (0.5, 0.5, 0.5, 0.5), cls_logit=3.0)
    detections = decode(outputs, threshold=0.1, iou=0.5)
    assert detections.class_ids.tolist() == [0, 0, 1]
    np.testing.assert_allclose(detections.boxes[0], [12, 12, 44, 44])
    np.testing.assert_allclose(detections.boxes[1], [80, 48, 96, 64])
    assert np.all(np.diff(detections.scores) <= 0)
    # A looser IoU threshold keeps the overlapping pair (IoU 24*32/(2*32*32-24*32) = 0.6).
    assert len(decode(outputs, threshold=0.1, iou=0.7)) == 4
    assert len(decode(outputs, threshold=0.1, iou=0.7, max_det=2)) == 2


@pytest.mark.parametrize("opencv_batched", [True, False])
def test_nms_function_directly(opencv_batched: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if not opencv_batched:  # OpenCV < 4.7 has no NMSBoxesBatched: the NMSBoxes path
        monkeypatch.delattr(cv2.dnn, "NMSBoxesBatched", raising=False)
    boxes = np.array(
        [[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [1, 1, 11, 11]], np.float32
    )
    scores = np.array([0.5, 0.9, 0.7, 0.9], np.float32)
    classes = np.array([0, 0, 0, 1])
    # IoU(0, 1) = 81 / 119 = 0.68: suppressed at 0.5, kept at 0.7; the class-1 twin of box 1
    # survives (class-aware) and, tied on score, comes after it (input order).
    assert nms(boxes, scores, classes, 0.5, 10).tolist() == [1, 3, 2]
    assert nms(boxes, scores, classes, 0.7, 10).tolist() == [1, 3, 2, 0]
    assert nms(boxes, scores, np.zeros(4, np.int64), 0.5, 10).tolist() == [1, 2]
    assert nms(boxes, scores, classes, 0.5, 1).tolist() == [1]
    empty = nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0), 0.5, 10)
    assert empty.tolist() == [] and empty.dtype == np.int64


def test_pre_nms_top_k_bounds_candidates() -> None:
    outputs = synthetic_heads((512, 512))
    outputs["cls8"][:] = LOGIT_ON  # every cell of every class fires
    detections = decode(outputs, image_hw=(512, 512), iou=1.0, max_det=100000)
    assert len(detections) == PRE_NMS_TOP_K  # stride 8 only; stride 16 stays cold


def test_decode_rejects_missing_or_misshapen_outputs() -> None:
    outputs = synthetic_heads((64, 96))
    del outputs["ctr16"]
    with pytest.raises(ValueError, match="ctr16"):
        decode(outputs)
    outputs = synthetic_heads((64, 96))
    outputs["box8"] = outputs["box8"][:, :3]
    with pytest.raises(ValueError, match="box8"):
        decode(outputs)
    outputs = synthetic_heads((64, 96))
    outputs["ctr8"] = outputs["ctr8"][:, :, :4]
    with pytest.raises(ValueError, match="grid"):
        decode(outputs)


def test_no_detections_gives_empty() -> None:
    detections = decode(synthetic_heads((64, 96)))
    assert len(detections) == 0 and detections.boxes.shape == (0, 4)
    assert len(Detections.empty()) == 0


def test_segmentation_labels_argmax_and_crop() -> None:
    logits = np.zeros((1, 3, 8, 8), np.float32)
    logits[0, 2, :2, :3] = 5.0
    logits[0, 1, 4:, :] = 1.0
    labels = segmentation_labels(logits, (6, 7))
    assert labels.shape == (6, 7) and labels.dtype == np.uint8
    assert labels[:2, :3].tolist() == [[2, 2, 2]] * 2
    assert np.all(labels[4:] == 1) and labels[3, 5] == 0
    with pytest.raises(ValueError):
        segmentation_labels(logits[0, 0], (6, 7))


def test_segmentation_labels_equal_argmax_on_random_logits() -> None:
    logits = np.random.default_rng(3).normal(0, 1, (1, 7, 40, 48)).astype(np.float32)
    logits[0, 3, 0, :5] = logits[0, 5, 0, :5] = 10.0  # ties go to the lower class, as argmax
    expected = np.argmax(logits[0, :, :33, :47], axis=0)
    np.testing.assert_array_equal(segmentation_labels(logits, (33, 47)), expected)
    logits[0, 2, 1, 1] = np.nan
    assert segmentation_labels(logits, (33, 47))[1, 1] != 2  # NaN never wins


def test_colorize_labels_uses_bgr_and_blacks_out_unknown_ids() -> None:
    labels = np.array([[0, 1, 2, 9]], np.uint8)
    colour = colorize_labels(labels, [(0, 0, 0), (255, 0, 0), (10, 20, 30)])
    assert colour.shape == (1, 4, 3) and colour.dtype == np.uint8
    assert colour[0, 1].tolist() == [0, 0, 255]  # RGB red -> BGR
    assert colour[0, 2].tolist() == [30, 20, 10]
    assert colour[0, 3].tolist() == [0, 0, 0]


def test_blend_with_and_without_mask() -> None:
    base = np.full((4, 4, 3), 100, np.uint8)
    overlay = np.full((4, 4, 3), 200, np.uint8)
    assert np.all(blend(base, overlay, 0.5) == 150)
    mask = np.zeros((4, 4), bool)
    mask[0, 0] = True
    out = blend(base, overlay, 0.25, mask)
    assert out[0, 0].tolist() == [125] * 3 and np.all(out[1:] == 100)
    assert np.all(base == 100)  # input untouched


def test_draw_detections_draws_on_a_copy() -> None:
    image = np.zeros((100, 120, 3), np.uint8)
    detections = Detections(
        boxes=np.array([[10, 30, 60, 80]], np.float32),
        scores=np.array([0.87], np.float32),
        class_ids=np.array([1], np.int64),
    )
    out = draw_detections(image, detections, ["person", "car"])
    assert np.all(image == 0)
    assert out[55, 10].any() and out[55, 60].any()  # left and right edges drawn
    assert not out[55, 35].any()  # box interior untouched
    assert out[15:30, 10:60].any()  # label above the box
    assert draw_detections(image, Detections.empty(), []).sum() == 0


def test_matches_the_training_decoder_on_random_heads() -> None:
    """Runtime and training decode the same heads to the same detections (agreed rule)."""
    torch = pytest.importorskip("torch")
    models = pytest.importorskip("training.models")
    torch.set_num_threads(1)
    rng = np.random.default_rng(5)
    outputs = synthetic_heads((128, 160))
    heads = []
    for level in SPEC.levels:
        cls = rng.normal(-3.0, 2.0, outputs[level.cls].shape).astype(np.float32)
        # Small boxes near their anchors: clipping to the image (runtime only) is a no-op.
        box = rng.uniform(0.1, 2.0, outputs[level.box].shape).astype(np.float32)
        ctr = rng.normal(0.0, 1.0, outputs[level.ctr].shape).astype(np.float32)
        box[:, :, [0, 1, -2, -1], :] = 0.1  # keep border cells inside the 128x160 image
        box[:, :, :, [0, 1, -2, -1]] = 0.1
        outputs.update({level.cls: cls, level.box: box, level.ctr: ctr})
        heads.append(tuple(torch.from_numpy(a) for a in (cls, box, ctr)))
    ours = decode(outputs, image_hw=(128, 160), threshold=0.3, iou=0.5, max_det=50)
    theirs = models.decode_detections_torch(
        heads, strides=(8, 16), score_threshold=0.3, nms_iou=0.5, max_detections=50
    )[0]
    assert len(ours) > 10
    np.testing.assert_allclose(ours.boxes, theirs["boxes"].numpy(), atol=1e-4)
    np.testing.assert_allclose(ours.scores, theirs["scores"].numpy(), atol=1e-6)
    np.testing.assert_array_equal(ours.class_ids, theirs["labels"].numpy())


# --- yolox head ---------------------------------------------------------------------------------
YOLOX_SPEC = DetectionSpec(
    head="yolox",
    classes=("person", "bicycle", "car"),
    levels=(
        YoloxLevel(8, "reg8", "obj8", "cls8"),
        YoloxLevel(16, "reg16", "obj16", "cls16"),
        YoloxLevel(32, "reg32", "obj32", "cls32"),
    ),
)


def yolox_heads(padded_hw: tuple[int, int]) -> dict[str, np.ndarray]:
    """All-cold SYNTHETIC yolox heads for YOLOX_SPEC: objectness off, classes on, unit boxes."""
    outputs = {}
    for level in YOLOX_SPEC.levels:
        grid = (padded_hw[0] // level.stride, padded_hw[1] // level.stride)
        outputs[level.reg] = np.zeros((1, 4, *grid), np.float32)
        outputs[level.obj] = np.full((1, 1, *grid), LOGIT_OFF, np.float32)
        outputs[level.cls] = np.full((1, len(YOLOX_SPEC.classes), *grid), LOGIT_ON, np.float32)
    return outputs


def decode_yolox(outputs: dict, image_hw=(64, 96), threshold=0.3, iou=0.5, max_det=100):
    return decode_detections(outputs, YOLOX_SPEC, image_hw, threshold, iou, max_det)


def _sigmoid64(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def reference_yolox_candidates(
    outputs: dict, spec: DetectionSpec, image_hw: tuple[int, int], threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The yolox rule written out cell by cell and class by class in float64, no shortcut:
    every (cell, class) with sigmoid(obj) * sigmoid(cls) > threshold, its box clipped to the
    image, dropped when empty. Boxes, scores and class ids before NMS, in no particular order."""
    height, width = image_hw
    boxes, scores, class_ids = [], [], []
    for level in spec.levels:
        reg, obj, cls = (outputs[name][0].astype(np.float64) for name in level.output_names)
        s = level.stride
        for i in range(obj.shape[1]):
            for j in range(obj.shape[2]):
                cx, cy = (reg[0, i, j] + j) * s, (reg[1, i, j] + i) * s
                w, h = math.exp(reg[2, i, j]) * s, math.exp(reg[3, i, j]) * s
                x1, x2 = min(max(cx - w / 2, 0), width), min(max(cx + w / 2, 0), width)
                y1, y2 = min(max(cy - h / 2, 0), height), min(max(cy + h / 2, 0), height)
                for c in range(cls.shape[0]):
                    score = _sigmoid64(obj[0, i, j]) * _sigmoid64(cls[c, i, j])
                    if score > threshold and x2 > x1 and y2 > y1:
                        boxes.append((x1, y1, x2, y2))
                        scores.append(score)
                        class_ids.append(c)
    return np.array(boxes).reshape(-1, 4), np.array(scores), np.array(class_ids, np.int64)


def random_yolox_heads(padded_hw: tuple[int, int], seed: int) -> dict[str, np.ndarray]:
    """SYNTHETIC random yolox heads: ~10% of cells with objectness above 0.5, boxes of 0.3 to 7
    strides, some reaching past the image (clipped) and some cells in the padding."""
    rng = np.random.default_rng(seed)
    outputs = yolox_heads(padded_hw)
    for level in YOLOX_SPEC.levels:
        grid = outputs[level.obj].shape[2:]
        reg = np.concatenate(
            [rng.uniform(0.0, 1.0, (1, 2, *grid)), rng.uniform(-1.2, 2.0, (1, 2, *grid))], axis=1
        )
        outputs[level.reg] = reg.astype(np.float32)
        outputs[level.obj] = rng.normal(-2.0, 2.0, (1, 1, *grid)).astype(np.float32)
        outputs[level.cls] = rng.normal(-0.5, 2.0, outputs[level.cls].shape).astype(np.float32)
    return outputs


def _by_class_then_box(boxes, scores, class_ids) -> tuple[np.ndarray, ...]:
    order = np.lexsort((boxes[:, 1], boxes[:, 0], class_ids))
    return boxes[order], scores[order], class_ids[order]


def test_every_head_of_the_contract_has_a_decoder() -> None:
    assert set(HEAD_DECODERS) == set(DETECTION_HEADS) == {"fcos", "yolox"}
    assert SPEC.head == "fcos" and SPEC.box_encoding == "ltrb_stride"
    assert YOLOX_SPEC.box_encoding == "xy_offset_log_wh_stride"
    assert DetectionLevel is FcosLevel  # the former name still builds FCOS levels


def test_yolox_single_cell_decodes_to_known_box_score_and_class() -> None:
    outputs = yolox_heads((64, 96))
    # Stride 16, row 2, col 3; dx 0.25, dy 0.75 -> centre (52, 44); w 2 s = 32, h 0.5 s = 8.
    outputs["obj16"][0, 0, 2, 3] = 1.5
    outputs["cls16"][0, :, 2, 3] = (-1.0, 0.5, -3.0)
    outputs["reg16"][0, :, 2, 3] = (0.25, 0.75, math.log(2.0), math.log(0.5))
    detections = decode_yolox(outputs, threshold=0.3)
    assert len(detections) == 1
    np.testing.assert_allclose(detections.boxes[0], [36, 40, 68, 48], atol=1e-5)
    assert detections.class_ids.tolist() == [1]
    # score_c = sigmoid(obj) * sigmoid(cls_c): 0.8176 * 0.6225; class 0 gives 0.22 < 0.3.
    assert detections.scores[0] == pytest.approx(_sigmoid64(1.5) * _sigmoid64(0.5), abs=1e-6)
    assert detections.boxes.dtype == np.float32 and detections.class_ids.dtype == np.int64
    assert len(decode_yolox(outputs, threshold=0.2)) == 2  # class 0 (0.2195) joins
    exact = float(detections.scores[0])
    assert len(decode_yolox(outputs, threshold=exact)) == 0  # strict, as the fcos head


def test_yolox_objectness_bounds_every_class_score() -> None:
    """A cell whose objectness is below the threshold gives nothing, whatever its classes."""
    outputs = yolox_heads((64, 96))
    outputs["obj8"][0, 0, 1, 1] = 0.0  # sigmoid 0.5; all three classes at +30 (sigmoid ~1)
    # One box per class at the same place (NMS is class-aware), each scored 0.5 * 1.
    detections = decode_yolox(outputs, threshold=0.49)
    assert detections.scores.tolist() == pytest.approx([0.5] * 3)
    assert sorted(detections.class_ids.tolist()) == [0, 1, 2]
    assert len(decode_yolox(outputs, threshold=0.5)) == 0


def test_yolox_decode_matches_a_reference_on_random_heads() -> None:
    image_hw = (120, 150)  # padded to 128x160: cells in the padding are dropped or clipped
    outputs = random_yolox_heads((128, 160), seed=11)
    ref_boxes, ref_scores, ref_classes = reference_yolox_candidates(
        outputs, YOLOX_SPEC, image_hw, 0.3
    )
    assert 100 < len(ref_scores) < PRE_NMS_TOP_K
    # Boundary cases would make float32 and float64 disagree on the candidate set.
    assert np.min(np.abs(ref_scores - 0.3)) > 1e-5
    # No suppression (IoU never exceeds 1) and no cap: every candidate, compared as a set.
    everything = decode_yolox(outputs, image_hw, threshold=0.3, iou=1.0, max_det=100000)
    got = _by_class_then_box(everything.boxes, everything.scores, everything.class_ids)
    want = _by_class_then_box(ref_boxes, ref_scores, ref_classes)
    np.testing.assert_array_equal(got[2], want[2])
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-6)
    # With NMS and a cap: the reference candidates through the same class-aware NMS.
    final = decode_yolox(outputs, image_hw, threshold=0.3, iou=0.5, max_det=25)
    keep = nms(ref_boxes.astype(np.float32), ref_scores.astype(np.float32), ref_classes, 0.5, 25)
    assert len(final) == 25
    np.testing.assert_array_equal(final.class_ids, ref_classes[keep])
    np.testing.assert_allclose(final.boxes, ref_boxes[keep], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(final.scores, ref_scores[keep], rtol=1e-5, atol=1e-6)


def test_yolox_pre_nms_top_k_bounds_candidates() -> None:
    outputs = yolox_heads((512, 512))
    outputs["obj8"][:] = LOGIT_ON  # every cell of every class fires at stride 8 (12288 pairs)
    outputs["reg8"][:, :2] = 0.5
    detections = decode_yolox(outputs, image_hw=(512, 512), iou=1.0, max_det=100000)
    assert len(detections) == PRE_NMS_TOP_K  # strides 16 and 32 stay cold


def test_yolox_huge_sizes_clip_and_non_finite_values_drop_without_warnings() -> None:
    outputs = yolox_heads((64, 96))
    outputs["obj8"][0, 0, 2, 2] = LOGIT_ON
    outputs["reg8"][0, :, 2, 2] = (0.5, 0.5, 200.0, 0.0)  # exp overflows float32: inf wide
    outputs["obj8"][0, 0, 5, 5] = LOGIT_ON
    outputs["reg8"][0, :, 5, 5] = (np.nan, 0.5, 0.0, 0.0)
    outputs["obj16"][0, 0, 1, 1] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        detections = decode_yolox(outputs, threshold=0.5)
    assert len(detections) == 3  # the inf-wide box, once per class; NaN box and obj dropped
    np.testing.assert_allclose(detections.boxes, [[0, 16, 96, 24]] * 3)


def test_yolox_decode_rejects_missing_or_misshapen_outputs() -> None:
    outputs = yolox_heads((64, 96))
    del outputs["obj16"]
    with pytest.raises(ValueError, match="obj16"):
        decode_yolox(outputs)
    outputs = yolox_heads((64, 96))
    outputs["cls8"] = outputs["cls8"][:, :2]
    with pytest.raises(ValueError, match="cls8"):
        decode_yolox(outputs)
    outputs = yolox_heads((64, 96))
    outputs["reg32"] = outputs["reg32"][:, :, :1]
    with pytest.raises(ValueError, match="grid"):
        decode_yolox(outputs)


def test_detection_spec_refuses_levels_of_the_other_head_and_foreign_encodings() -> None:
    with pytest.raises(ValueError, match="YoloxLevel"):
        DetectionSpec(head="yolox", classes=("a",), levels=(FcosLevel(8, "c", "b", "t"),))
    with pytest.raises(ValueError, match="FcosLevel"):
        DetectionSpec(classes=("a",), levels=(YoloxLevel(8, "r", "o", "c"),))
    with pytest.raises(ValueError, match="head must be one of"):
        DetectionSpec(head="ssd", classes=("a",), levels=())
    with pytest.raises(ValueError, match="box_encoding"):
        DetectionSpec(head="yolox", classes=("a",), levels=(), box_encoding="ltrb_stride")
    with pytest.raises(ValueError, match="stride"):
        YoloxLevel(0, "r", "o", "c")


def test_fused_to_u8_takes_any_memory_order_and_empty_sizes() -> None:
    from ros2_bilevel_fusion.core.processing import colorize_labels, fused_to_u8

    rng = np.random.default_rng(0)
    plane = rng.random((40, 30), dtype=np.float32)  # SYNTHETIC
    want = np.clip(np.rint(plane * 255), 0, 255).astype(np.uint8)
    assert np.array_equal(fused_to_u8(np.asfortranarray(plane), (40, 30)), want)
    assert np.array_equal(fused_to_u8(plane.T.copy().T, (40, 30)), want)
    assert fused_to_u8(plane, (0, 30)).shape == (0, 30)
    assert colorize_labels(np.zeros((0, 5), np.uint8), [(1, 2, 3)]).shape == (0, 5, 3)
