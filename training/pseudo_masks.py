"""Segmentation pseudo-labels from a pretrained teacher, cut by the boxes of a pair.

MSRS has person masks on 8 pairs only (kept for evaluation), so the segmenter learns from
pseudo-labels: DeepLabV3-MobileNetV2 (PASCAL VOC, ``../shared/weights``) run on the infrared and
on the visible image of every labelled training pair, merged, and cut by the merged boxes.

The rule, fixed before looking at any score (the 8 real masks only measure it afterwards):

1. **Teacher views.** The ONNX file takes a fixed 257x257 RGB input; a 640x480 frame squeezed to
   257 px loses the small, distant people MSRS is full of. Each image is seen whole and as a
   2x2 grid of overlapping tiles (each half the frame plus a 1/8 overlap); every view is resized
   to 257x257, its 21 VOC softmax probabilities are resized back, and the views covering a pixel
   are averaged.
2. **Classes.** VOC person -> person; bicycle and motorbike -> bicycle (MSRS "bicycle" boxes are
   mostly riders on two-wheelers, motorised ones included); car and bus -> car; every other VOC
   class counts as background.
3. **Modalities.** A union: an object class's probability is the larger of the infrared and the
   visible one (the IR image shows people at night, the visible one shows colour cues by day);
   background's is the smaller. Label = argmax.
4. **Boxes.** A pixel of class c outside every box of class c becomes background (the teacher's
   false positives, e.g. a VOC "person" on a poster, are not MSRS objects). A box of class c in
   which the teacher labels no pixel c is a miss, not background: the whole box becomes
   ``IGNORE_INDEX`` (255) so the student is never taught that a missed object is background.

Pure numpy / OpenCV / onnxruntime: no torch, no ROS. The CLI writes one PNG per pair (uint8
segmentation ids, 255 = no label) and a ``manifest.json`` (teacher sha256, names, rule)::

    python -m training.pseudo_masks --split msrs_det:train --out runs/pseudo_masks/msrs_det_train
    python -m training.pseudo_masks --measure-holdout   # the rule against the 8 real masks
    python -m training.pseudo_masks --masked-out DIR    # its labels of the masked msrs/ pairs
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from ros2_bilevel_fusion.core.resources import sha256_of_file
from ros2_bilevel_fusion.evaluation.ground_truth import MSRS_ANNOTATIONS, read_merged_labels
from ros2_bilevel_fusion.evaluation.splits import split_folder, split_names
from training.config import REPO_ROOT

TEACHER = Path("../shared/weights/deeplabv3_mobilenetv2_voc.onnx")
TEACHER_SIZE = 257
IGNORE_INDEX = 255
#: VOC class id -> segmentation id (models.SEGMENTATION_CLASSES: background, person, bicycle, car).
VOC_TO_SEGMENTATION: dict[int, int] = {15: 1, 2: 2, 14: 2, 7: 3, 6: 3}
NUM_CLASSES = 4
#: Manifest version: bump when the rule changes so cached folders are rebuilt.
RULE_VERSION = 1


def teacher_session(path: Path | None = None, threads: int = 0):
    """An onnxruntime session of the teacher (CPU)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    model = Path(path) if path is not None else (REPO_ROOT / TEACHER)
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


def views(height: int, width: int) -> list[tuple[int, int, int, int]]:
    """(y0, x0, h, w) of the whole frame and of a 2x2 grid of overlapping tiles."""
    tile_h, tile_w = height // 2 + height // 8, width // 2 + width // 8
    out = [(0, 0, height, width)]
    for y0 in (0, height - tile_h):
        for x0 in (0, width - tile_w):
            out.append((y0, x0, tile_h, tile_w))
    return out


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def collapse_voc(probabilities: np.ndarray) -> np.ndarray:
    """[..., 21] VOC probabilities -> [..., 4] (background gets every unmapped class)."""
    out = np.zeros(probabilities.shape[:-1] + (NUM_CLASSES,), np.float32)
    for voc_id, seg_id in VOC_TO_SEGMENTATION.items():
        out[..., seg_id] += probabilities[..., voc_id]
    out[..., 0] = np.clip(1.0 - out[..., 1:].sum(axis=-1), 0.0, 1.0)
    return out


def teacher_probabilities(session, rgb: np.ndarray) -> np.ndarray:
    """[H, W, 4] class probabilities of an RGB uint8 image, averaged over :func:`views`."""
    height, width = rgb.shape[:2]
    total = np.zeros((height, width, NUM_CLASSES), np.float32)
    count = np.zeros((height, width, 1), np.float32)
    input_name = session.get_inputs()[0].name
    for y0, x0, h, w in views(height, width):
        view = cv2.resize(rgb[y0 : y0 + h, x0 : x0 + w], (TEACHER_SIZE, TEACHER_SIZE),
                          interpolation=cv2.INTER_AREA)
        x = (view.astype(np.float32) / 127.5 - 1.0)[None]
        logits = session.run(None, {input_name: x})[0][0]
        probs = collapse_voc(_softmax(logits.astype(np.float32)))
        total[y0 : y0 + h, x0 : x0 + w] += cv2.resize(probs, (w, h), interpolation=cv2.INTER_LINEAR)
        count[y0 : y0 + h, x0 : x0 + w] += 1.0
    return total / count


def merge_modalities(prob_ir: np.ndarray, prob_visible: np.ndarray) -> np.ndarray:
    """Union of two [H, W, 4] probability maps -> [H, W] segmentation ids (rule 3)."""
    merged = np.maximum(prob_ir, prob_visible)
    merged[..., 0] = np.minimum(prob_ir[..., 0], prob_visible[..., 0])
    return merged.argmax(axis=-1).astype(np.uint8)


def cut_by_boxes(labels: np.ndarray, boxes: np.ndarray, box_classes: np.ndarray) -> np.ndarray:
    """Rule 4. ``boxes`` [K, 4] xyxy pixels, ``box_classes`` [K] detection ids (0 = person), so
    box class k is segmentation id k + 1."""
    height, width = labels.shape
    out = labels.copy()
    inside = np.zeros((NUM_CLASSES, height, width), bool)
    rects = []
    for box, det_id in zip(np.asarray(boxes, np.float64), np.asarray(box_classes), strict=True):
        x0, y0 = max(int(np.floor(box[0])), 0), max(int(np.floor(box[1])), 0)
        x1, y1 = min(int(np.ceil(box[2])), width), min(int(np.ceil(box[3])), height)
        if x1 <= x0 or y1 <= y0:
            continue
        seg_id = int(det_id) + 1
        inside[seg_id, y0:y1, x0:x1] = True
        rects.append((seg_id, y0, y1, x0, x1))
    for seg_id in range(1, NUM_CLASSES):
        out[(labels == seg_id) & ~inside[seg_id]] = 0
    for seg_id, y0, y1, x0, x1 in rects:
        if not (labels[y0:y1, x0:x1] == seg_id).any():
            out[y0:y1, x0:x1] = IGNORE_INDEX
    return out


def pseudo_mask(
    session, ir: np.ndarray, visible_bgr: np.ndarray, boxes: np.ndarray, box_classes: np.ndarray
) -> np.ndarray:
    """The pseudo-label of one pair: ir [H, W] uint8, visible [H, W, 3] BGR uint8."""
    ir_rgb = cv2.cvtColor(ir, cv2.COLOR_GRAY2RGB)
    visible_rgb = cv2.cvtColor(visible_bgr, cv2.COLOR_BGR2RGB)
    labels = merge_modalities(
        teacher_probabilities(session, ir_rgb), teacher_probabilities(session, visible_rgb)
    )
    return cut_by_boxes(labels, boxes, box_classes)


def _read_pair(folder: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    ir = cv2.imread(str(folder / "ir" / f"{name}.png"), cv2.IMREAD_GRAYSCALE)
    visible = cv2.imread(str(folder / "vi" / f"{name}.png"), cv2.IMREAD_COLOR)
    if ir is None or visible is None:
        raise OSError(f"cannot read pair {name} in {folder}")
    return ir, visible


def _labelled_pair(
    folder: Path, name: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """ir, visible, merged boxes and their classes of one pair (no label file: no boxes)."""
    ir, visible = _read_pair(folder, name)
    height, width = ir.shape
    truth = read_merged_labels(folder / "labels", name, width, height)
    boxes, classes = truth if truth is not None else (np.zeros((0, 4)), np.zeros(0, int))
    return ir, visible, boxes, classes


def _manifest(split: str, names: Sequence[str], teacher: Path) -> dict:
    return {
        "rule_version": RULE_VERSION,
        "split": split,
        "names": list(names),
        "teacher": str(TEACHER),
        "teacher_sha256": sha256_of_file(teacher),
        "teacher_licence": "Apache-2.0 (TensorFlow Hub deeplabv3/1/default/1)",
        "voc_to_segmentation": {str(k): v for k, v in VOC_TO_SEGMENTATION.items()},
        "annotations": list(MSRS_ANNOTATIONS),
    }


def write_split(
    split: str, out: Path, data_root: Path, teacher: Path | None = None, threads: int = 0,
    quiet: bool = False,
) -> Path:
    """Pseudo-labels of every pair of ``split`` into ``out`` (skipped when ``out`` already holds
    the same split, rule and teacher). Returns ``out``."""
    teacher = Path(teacher) if teacher is not None else REPO_ROOT / TEACHER
    names = split_names(split, data_root)
    manifest = _manifest(split, names, teacher)
    manifest_path = out / "manifest.json"
    if manifest_path.is_file() and json.loads(manifest_path.read_text()) == manifest:
        return out
    out.mkdir(parents=True, exist_ok=True)
    folder = split_folder(split, data_root)
    session = teacher_session(teacher, threads)
    for index, name in enumerate(names):
        ir, visible, boxes, classes = _labelled_pair(folder, name)
        cv2.imwrite(str(out / f"{name}.png"), pseudo_mask(session, ir, visible, boxes, classes))
        if not quiet and (index + 1) % 20 == 0:
            print(f"[pseudo_masks] {index + 1}/{len(names)}", file=sys.stderr)
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    return out


def measure_holdout(data_root: Path, teacher: Path | None = None) -> dict[str, float]:
    """Person IoU of the rule's pseudo-labels (and of the teacher on each modality alone)
    against the real masks of the held-out MSRS pairs: a measurement, never a choice."""
    from ros2_bilevel_fusion.evaluation.splits import MSRS_HOLDOUT_NAMES

    folder = data_root / "msrs"
    session = teacher_session(teacher)
    counts = {key: np.zeros(2) for key in ("rule", "ir", "visible", "union_uncut")}
    for name in MSRS_HOLDOUT_NAMES:
        mask_path = folder / "masks" / f"{name}.png"
        if not mask_path.is_file():
            continue
        truth_mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE) == 255
        ir, visible, boxes, classes = _labelled_pair(folder, name)
        p_ir = teacher_probabilities(session, cv2.cvtColor(ir, cv2.COLOR_GRAY2RGB))
        p_vi = teacher_probabilities(session, cv2.cvtColor(visible, cv2.COLOR_BGR2RGB))
        union = merge_modalities(p_ir, p_vi)
        predictions = {
            "rule": cut_by_boxes(union, boxes, classes),
            "ir": p_ir.argmax(-1),
            "visible": p_vi.argmax(-1),
            "union_uncut": union,
        }
        for key, labels in predictions.items():
            person = labels == 1
            valid = labels != IGNORE_INDEX
            counts[key] += [(person & truth_mask).sum(), ((person | truth_mask) & valid).sum()]
    return {key: float(c[0] / max(c[1], 1)) for key, c in counts.items()}


def write_masked(
    out: Path, data_root: Path, teacher: Path | None = None, threads: int = 0
) -> list[str]:
    """The rule's pseudo-labels of every ``msrs/`` pair that has a real mask (the 8 pairs of the
    segmentation test) into ``out``, one PNG each; returns their names. A bundle can then be
    scored against both label sources on the same images (``fusion-eval folder --masks out``
    beside ``--masks msrs/masks --mask-map 255:1``), which separates how good the pseudo-labels
    are as a measure from how much the images differ. A measurement, never a choice."""
    folder = data_root / "msrs"
    names = sorted(path.stem for path in (folder / "masks").glob("*.png"))
    out.mkdir(parents=True, exist_ok=True)
    session = teacher_session(teacher, threads)
    for name in names:
        ir, visible, boxes, classes = _labelled_pair(folder, name)
        cv2.imwrite(str(out / f"{name}.png"), pseudo_mask(session, ir, visible, boxes, classes))
    return names


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", default="msrs_det:train")
    parser.add_argument("--out", default=None, help="default runs/pseudo_masks/<split>")
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--measure-holdout", action="store_true",
                        help="print the person IoU of the rule on the 8 held-out MSRS masks")
    parser.add_argument("--masked-out", default=None, metavar="DIR",
                        help="write the rule's pseudo-labels of the msrs/ pairs with real masks")
    args = parser.parse_args(argv)
    data_root = (REPO_ROOT / args.data_root).resolve()
    if args.measure_holdout:
        print(json.dumps(measure_holdout(data_root), indent=1))
        return 0
    if args.masked_out:
        names = write_masked(Path(args.masked_out), data_root, threads=args.threads)
        print(f"{len(names)} pseudo-labels in {args.masked_out}")
        return 0
    out = Path(args.out) if args.out else default_folder(args.split)
    write_split(args.split, out, data_root, threads=args.threads)
    print(out)
    return 0


def default_folder(split: str) -> Path:
    return REPO_ROOT / "runs" / "pseudo_masks" / split.replace(":", "_")


if __name__ == "__main__":
    raise SystemExit(main())
