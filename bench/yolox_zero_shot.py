"""Zero-shot person AP@0.5 of the pretrained YOLOX-Nano (training/yolox.py) on MSRS pairs.

    .venv/bin/python bench/yolox_zero_shot.py [--root ../shared/data/msrs] [--names all]
        [--weights ../shared/weights/yolox_nano_coco.onnx] [--score 0.001] [--nms-iou 0.65]
    .venv/bin/python bench/yolox_zero_shot.py --split msrs_det:test   # merged labels, + mean

``--split`` takes the pairs of a named split (``evaluation.splits``) and scores them against the
merged fusion/infrared/visible labels (``evaluation.ground_truth``), and adds a third input,
``mean``: the mean of the IR image and the visible Y with the visible chroma (the runtime's
colour restore of a mean fusion).

Runs the torch module (weights copied from the ONNX file, classes person/bicycle/car kept)
at the images' own size (MSRS: 640x480, a multiple of 32, no letterbox) on the infrared image
(grey as 3 channels) and on the visible image (BGR) separately, decodes (score =
sigmoid(obj) * sigmoid(cls), class-aware OpenCV NMS through the runtime's
``core.processing.nms``, at most 100 boxes) and scores with the runtime's pycocotools mAP
(``evaluation.semantic_metrics.detection_map``) against ``labels/fusion``. Default names: the
8 held-out pairs ``training.datasets.MSRS_HOLDOUT_NAMES``. Prints person AP@0.5 and mAP@0.5
per input. ``../shared/weights/README.md`` reports 0.74 (IR) and 0.35 (visible) for these 8.

Measured with the defaults (torch 2.14 CPU): IR person AP@0.5 0.743, visible 0.355 on the 8
held-out pairs; with ``--root ../shared/data/msrs_det --names all`` (313 MSRS test pairs) IR
0.682, visible 0.391 (the README: 0.65 and 0.39 on "MSRS test pairs").
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import torch  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from ros2_bilevel_fusion.evaluation.ground_truth import read_merged_labels  # noqa: E402
from ros2_bilevel_fusion.evaluation.semantic_metrics import detection_map  # noqa: E402
from ros2_bilevel_fusion.evaluation.splits import split_folder, split_names  # noqa: E402
from training.datasets import MSRS_HOLDOUT_NAMES, list_pair_names, parse_yolo  # noqa: E402
from training.yolox import (  # noqa: E402
    MSRS_COCO_CLASSES,
    YoloxNano,
    decode,
    detect,
    load_yolox_nano_onnx,
    to_input,
)

CLASS_NAMES = ("person", "bicycle", "car")


def read_image(root: Path, modality: str, name: str):
    """IR as grey (made 3-channel by ``to_input``), visible as BGR, ``mean`` as BGR, uint8."""
    if modality == "mean":
        ir = read_image(root, "ir", name).astype(float)
        ycrcb = cv2.cvtColor(read_image(root, "vi", name), cv2.COLOR_BGR2YCrCb)
        ycrcb[..., 0] = ((ir + ycrcb[..., 0]) / 2.0).round().clip(0, 255).astype("uint8")
        return cv2.cvtColor(ycrcb, cv2.COLOR_YCrCb2BGR)
    folder = root / ("ir" if modality == "ir" else "vi")
    flag = cv2.IMREAD_GRAYSCALE if modality == "ir" else cv2.IMREAD_COLOR
    image = cv2.imread(str(folder / f"{name}.png"), flag)
    if image is None:
        raise FileNotFoundError(folder / f"{name}.png")
    return image


def zero_shot_ap(
    model: YoloxNano,
    root: Path,
    names: list[str],
    modality: str,
    score_threshold: float = 0.001,
    nms_iou: float = 0.65,
    labels_dir: str | None = "labels/fusion",
) -> dict:
    """detection_map's result for ``model`` on one modality ("ir" or "vi") of ``names``."""
    predictions, truths = [], []
    for name in names:
        image = read_image(root, modality, name)
        height, width = image.shape[:2]
        if height % 32 or width % 32:
            raise ValueError(f"{name}: {width}x{height} is not a multiple of 32")
        if labels_dir is None:  # the merged fusion/infrared/visible labels
            merged = read_merged_labels(root / "labels", name, width, height)
            if merged is None:  # no annotation labelled this pair: skip it, as fusion-eval does
                continue
            boxes, labels = merged
        else:
            boxes, labels = parse_yolo(root / labels_dir / f"{name}.txt", width, height)
        with torch.no_grad():
            decoded = decode(model(to_input(image)))
        predictions.append(
            detect(decoded, score_threshold, nms_iou, 100, image_hw=(height, width))[0]
        )
        truths.append({"boxes": boxes, "labels": labels})
    return detection_map(predictions, truths, CLASS_NAMES)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    data = REPO_ROOT.parent / "shared" / "data" / "msrs"
    weights = REPO_ROOT.parent / "shared" / "weights" / "yolox_nano_coco.onnx"
    parser.add_argument("--root", type=Path, default=data)
    parser.add_argument("--weights", type=Path, default=weights)
    parser.add_argument("--names", default="holdout", help="holdout | all | comma list")
    parser.add_argument("--score", type=float, default=0.001)
    parser.add_argument("--nms-iou", type=float, default=0.65)
    parser.add_argument("--split", help="a named split, e.g. msrs_det:test (merged labels)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    labels_dir: str | None = "labels/fusion"
    modalities = ("ir", "vi")
    if args.split:
        args.root = split_folder(args.split, args.root.parent)
        names = split_names(args.split, args.root.parent)
        labels_dir, modalities = None, ("ir", "vi", "mean")
    elif args.names == "holdout":
        names = list(MSRS_HOLDOUT_NAMES)
    elif args.names == "all":
        names = list_pair_names(args.root)
    else:
        names = args.names.split(",")
    model = load_yolox_nano_onnx(args.weights, keep_classes=MSRS_COCO_CLASSES)
    print(f"{len(names)} pairs of {args.root}, score > {args.score}, NMS IoU {args.nms_iou}")
    for modality in modalities:
        result = zero_shot_ap(
            model, args.root, names, modality, args.score, args.nms_iou, labels_dir
        )
        person = result["per_class_AP50"]["person"]
        print(
            f"{modality:>3}: person AP@0.5 {person:.3f}  mAP@0.5 {result['mAP50']:.3f}  "
            f"mAP@0.5:0.95 {result['mAP50_95']:.3f}  ({result['num_ground_truths']} boxes, "
            f"{result['num_predictions']} predictions)"
        )


if __name__ == "__main__":
    main()
