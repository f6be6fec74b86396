"""Evaluation during and after training: thin wrappers over the runtime's metrics.

* Fusion: :func:`ros2_bilevel_fusion.evaluation.metrics.fusion_metrics`
  (published evaluator's conventions:
  8-bit grey, EN log2, MI in nats, SSIM with data_range 2, see that module) on a held-out pair
  folder (TNO by default), the fused Y rounded to 8 bits.
* Detection: :func:`ros2_bilevel_fusion.evaluation.semantic_metrics.detection_map`
  (pycocotools) on boxes
  decoded by :func:`training.models.decode_detections_torch` (the runtime's decoding rule).
* Segmentation: :class:`ros2_bilevel_fusion.evaluation.semantic_metrics.ConfusionMatrix`
  over the images
  that have masks.

``score`` (the best-checkpoint criterion) is the mean over ``eval.score_metrics`` of
value / CDDFuse's published TNO value, so each metric counts relative to the reference.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import torch
from torch import nn

from ros2_bilevel_fusion.evaluation.metrics import fusion_metrics, list_images, mean_metrics
from ros2_bilevel_fusion.evaluation.report import CDDFUSE_TNO_PUBLISHED
from ros2_bilevel_fusion.evaluation.semantic_metrics import ConfusionMatrix, detection_map
from training.models import DETECTION_CLASSES, SEGMENTATION_CLASSES, decode_detections_torch

if TYPE_CHECKING:
    from training.trainer import Trainer

# CDDFuse (CVPR 2023) on the 25 TNO pairs: one copy of the published figures, the runtime's.
CDDFUSE_TNO: dict[str, float] = CDDFUSE_TNO_PUBLISHED


def read_pair_u8(folder: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(ir grey u8 [H, W], visible BGR u8 [H, W, 3]) of one pair of a folder with ir/ and vi/."""
    ir = cv2.imread(str(folder / "ir" / name), cv2.IMREAD_GRAYSCALE)
    vis = cv2.imread(str(folder / "vi" / name), cv2.IMREAD_COLOR)
    if ir is None or vis is None:
        raise OSError(f"cannot read pair {name} in {folder}")
    if ir.shape != vis.shape[:2]:
        ir = cv2.resize(ir, (vis.shape[1], vis.shape[0]), interpolation=cv2.INTER_LINEAR)
    return ir, vis


def _limit_side(image: np.ndarray, max_side: int) -> np.ndarray:
    if max_side <= 0 or max(image.shape[:2]) <= max_side:
        return image
    scale = max_side / max(image.shape[:2])
    size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


@torch.no_grad()
def fuse_u8(fusion: nn.Module, ir_u8: np.ndarray, vis_bgr_u8: np.ndarray) -> np.ndarray:
    """Fused Y (u8 [H, W]) of one pair, the way the runtime feeds the graph (YCrCb / 255)."""
    ycrcb = cv2.cvtColor(vis_bgr_u8, cv2.COLOR_BGR2YCrCb).astype(np.float32) / 255.0
    ir = torch.from_numpy(ir_u8.astype(np.float32) / 255.0)[None, None]
    vis_y = torch.from_numpy(np.ascontiguousarray(ycrcb[..., 0]))[None, None]
    fused = fusion(ir, vis_y)[0, 0].clamp(0.0, 1.0).numpy()
    return np.round(fused * 255.0).astype(np.uint8)


def evaluate_fusion_folder(
    fusion: nn.Module,
    folder: Path,
    max_images: int = 0,
    max_side: int = 0,
    names: list[str] | None = None,
) -> tuple[dict[str, float], list[np.ndarray]]:
    """Mean fusion metrics of ``fusion`` over a pair folder; also returns the fused images."""
    fusion.eval()
    files = [p.name for p in list_images(folder / "vi")]
    if names is not None:
        files = [f for f in files if Path(f).stem in set(names)]
    if max_images > 0:
        files = files[:max_images]
    rows, fused_images = [], []
    for name in files:
        ir, vis = read_pair_u8(folder, name)
        ir, vis = _limit_side(ir, max_side), _limit_side(vis, max_side)
        fused = fuse_u8(fusion, ir, vis)
        rows.append(fusion_metrics(fused, ir, vis))
        fused_images.append(fused)
    if not rows:
        raise ValueError(f"no pairs to evaluate in {folder}")
    return mean_metrics(rows), fused_images


def reference_score(metrics: dict[str, float], names: list[str]) -> float:
    """Mean of metric / CDDFuse reference over ``names`` (1.0 = on par on average)."""
    ratios = [metrics[n] / CDDFUSE_TNO[n] for n in names if math.isfinite(metrics.get(n, math.nan))]
    return float(np.mean(ratios)) if ratios else -math.inf


@torch.no_grad()
def evaluate_semantic(
    fusion: nn.Module,
    detector: nn.Module | None,
    segmenter: nn.Module | None,
    dataset: Any,
    score_threshold: float = 0.05,
) -> dict[str, float]:
    """Detection mAP and segmentation mIoU of the semantic heads on the fused colour image."""
    from training.trainer import colour_image

    fusion.eval()
    if detector is not None:
        detector.eval()
    if segmenter is not None:
        segmenter.eval()
    predictions, truths = [], []
    confusion = ConfusionMatrix(len(SEGMENTATION_CLASSES))
    masked = 0
    for index in range(len(dataset)):
        item = dataset[index]
        ir = item["ir"][None]
        ycrcb = item["visible_ycrcb"][None]
        fused = fusion(ir, ycrcb[:, :1])
        rgb = colour_image(fused, ycrcb)
        if detector is not None:
            decoded = decode_detections_torch(
                detector(rgb), detector.strides, score_threshold=score_threshold
            )[0]
            predictions.append({k: v.numpy() for k, v in decoded.items()})
            truths.append({"boxes": item["boxes"].numpy(), "labels": item["labels"].numpy()})
        if segmenter is not None and bool(item["has_mask"]):
            labels = segmenter(rgb)[0].argmax(0).numpy()
            confusion.update(labels, item["mask"].numpy())
            masked += 1
    out: dict[str, float] = {}
    if detector is not None and predictions:
        det = detection_map(predictions, truths, DETECTION_CLASSES)
        out["mAP50"] = float(det["mAP50"])
        out["mAP50_95"] = float(det["mAP50_95"])
        for name, ap in det["per_class_AP50"].items():
            out[f"AP50/{name}"] = float(ap)
    if segmenter is not None and masked:
        seg = confusion.scores()
        out["mIoU"] = seg["mIoU"]
        out["pixel_acc"] = seg["pixel_acc"]
        for name, iou in zip(SEGMENTATION_CLASSES, seg["per_class_iou"], strict=True):
            out[f"IoU/{name}"] = float(iou)
    return out


def evaluate_trainer(trainer: Trainer) -> dict[str, float]:
    """Every evaluation the config asks for, as flat ``eval/...`` scalars plus ``score``."""
    ecfg = trainer.config["eval"]
    data = trainer.data
    out: dict[str, float] = {}
    if data.fusion_eval_folder is not None:
        metrics, images = evaluate_fusion_folder(
            trainer.fusion,
            data.fusion_eval_folder,
            int(ecfg.get("max_images") or 0),
            int(ecfg.get("max_side") or 0),
        )
        out.update({f"eval/fusion/{k}": v for k, v in metrics.items()})
        out["score"] = reference_score(metrics, list(ecfg["score_metrics"]))
        if trainer.writer is not None and images:
            trainer.writer.add_image("eval/fused_0", images[0], trainer.step, dataformats="HW")
    if ecfg.get("semantic", True):
        detector = trainer.nets.get("detector")
        segmenter = trainer.nets.get("segmenter")
        for label, dataset in (("msrs", data.msrs_eval), ("synthetic", data.synthetic_eval)):
            if dataset is None or (detector is None and segmenter is None):
                continue
            scores = evaluate_semantic(trainer.fusion, detector, segmenter, dataset)
            out.update({f"eval/{label}/{k}": v for k, v in scores.items()})
    trainer.fusion.train()
    for net in trainer.nets.values():
        net.train()
    return out
