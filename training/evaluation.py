"""Evaluation during and after training: the runtime's own preprocessing, loop and metrics.

Functions take models (and data sets), never a trainer.

* Fusion: :func:`ros2_bilevel_fusion.evaluation.folder.score_pairs`, the folder loop
  ``fusion-eval folder`` runs, with a per-pair callable (:func:`torch_runner`) that prepares the
  inputs with the runtime's :func:`ros2_bilevel_fusion.core.processing.prepare_inputs` (YCrCb,
  padding as the bundle says) and turns the output into 8 bits with ``fused_to_u8``: the numbers
  training reports are the numbers the node's pipeline gets from the exported bundle, up to the
  torch / ONNX Runtime difference (~1e-7).
* Detection: :func:`ros2_bilevel_fusion.evaluation.semantic_metrics.detection_map`
  (pycocotools) on boxes decoded by :func:`training.models.decode_detections_torch` (the
  runtime's decoding rule), on the held-out labelled data sets.
* Segmentation: :class:`ros2_bilevel_fusion.evaluation.semantic_metrics.ConfusionMatrix` over
  the images that have masks.

``score`` (the best-checkpoint criterion) is the mean over ``eval.score_metrics`` of
value / CDDFuse's published TNO value, so each metric counts relative to the reference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ros2_bilevel_fusion.core.bundle import ModelBundle
from ros2_bilevel_fusion.core.processing import (
    decode_detections,
    fused_to_u8,
    prepare_inputs,
)
from ros2_bilevel_fusion.core.registration import Registration
from ros2_bilevel_fusion.evaluation.folder import (
    FolderPair,
    PairOutput,
    RunPair,
    find_folder_pairs,
    score_pairs,
)
from ros2_bilevel_fusion.evaluation.report import CDDFUSE_TNO_PUBLISHED
from ros2_bilevel_fusion.evaluation.semantic_metrics import ConfusionMatrix, detection_map
from training.colour import colour_image
from training.export import detection_spec, runtime_spec
from training.models import (
    DETECTION_CLASSES,
    SEGMENTATION_CLASSES,
    decode_detections_torch,
    detector_head,
)

if TYPE_CHECKING:
    from training.config import EvalConfig
    from training.data import TrainingData

# CDDFuse (CVPR 2023) on the 25 TNO pairs: one copy of the published figures, the runtime's.
CDDFUSE_TNO: dict[str, float] = CDDFUSE_TNO_PUBLISHED
# The eight metrics the fusion tables and both criteria use, in the papers' order.
PAPER_METRICS: tuple[str, ...] = tuple(CDDFUSE_TNO)


def module_device(*modules: nn.Module | None) -> torch.device:
    """Where the first of ``modules`` that has parameters lives (the CPU if none has: a
    parameter-free fusion such as the mean runs anywhere): evaluation moves its inputs there
    and its outputs back to NumPy on the CPU."""
    for module in modules:
        parameter = next(module.parameters(), None) if module is not None else None
        if parameter is not None:
            return parameter.device
    return torch.device("cpu")


@torch.no_grad()
def fuse_u8(
    fusion: nn.Module, ir_u8: np.ndarray, vis_bgr_u8: np.ndarray, bundle: ModelBundle | None = None
) -> np.ndarray:
    """Fused Y (u8, the visible image's size) of one registered pair, as the runtime makes it:
    ``prepare_inputs`` (YCrCb / 255, padding), the network, then ``fused_to_u8``."""
    bundle = bundle or runtime_spec()
    prepared = prepare_inputs(ir_u8, vis_bgr_u8, bundle)
    device = module_device(fusion)
    fused = fusion(
        torch.from_numpy(prepared.ir).to(device),
        torch.from_numpy(prepared.visible_ycrcb[:, :1]).to(device),
    )
    if prepared.network_hw != prepared.image_hw:
        raise ValueError("training evaluates dynamic-size graphs only")
    return fused_to_u8(fused.cpu().numpy(), prepared.image_hw)


def torch_runner(fusion: nn.Module, bundle: ModelBundle | None = None) -> RunPair:
    """The fusion net as a ``run_pair`` callable of the runtime's folder loop (identity
    registration: the IR is resized to the visible image when the sizes differ)."""
    bundle = bundle or runtime_spec()
    registration = Registration.identity()

    def run_pair(ir_u8: np.ndarray, visible_bgr: np.ndarray) -> PairOutput:
        ir = registration.warp(ir_u8, visible_bgr.shape[:2])
        return PairOutput(fused_y=fuse_u8(fusion, ir, visible_bgr, bundle))

    return run_pair


def evaluate_fusion_folder(
    fusion: nn.Module,
    folder: str | Path | Sequence[FolderPair],
    max_images: int = 0,
    max_side: int = 0,
) -> tuple[dict[str, float], np.ndarray | None]:
    """Mean fusion metrics of ``fusion`` over a pair folder (``ir/``, ``vi/``) or a list of
    pairs (a split's), and the first fused image."""
    fusion.eval()
    if isinstance(folder, (str, Path)):
        folder = Path(folder)
        pairs = find_folder_pairs(folder / "ir", folder / "vi", limit=max_images or None)
    else:
        pairs = list(folder)[: max_images or None]
    first: list[np.ndarray] = []

    def keep_first(_pair: Any, output: PairOutput) -> None:
        if not first:
            first.append(np.asarray(output.fused_y))

    result = score_pairs(
        pairs, torch_runner(fusion), method="model", max_side=max_side,
        on_output=keep_first, sample_count=0,
    )
    return result.means["model"], (first[0] if first else None)


def _reference_ratios(metrics: dict[str, float], names: Sequence[str]) -> list[float]:
    return [metrics[n] / CDDFUSE_TNO[n] for n in names if math.isfinite(metrics.get(n, math.nan))]


def reference_score(
    metrics: dict[str, float], names: Sequence[str] = PAPER_METRICS
) -> float:
    """Mean of metric / CDDFuse reference over ``names`` (1.0 = on par on average)."""
    ratios = _reference_ratios(metrics, names)
    return float(np.mean(ratios)) if ratios else -math.inf


def reference_reach(
    metrics: dict[str, float], names: Sequence[str] = PAPER_METRICS
) -> float:
    """Mean over ``names`` of min(metric / CDDFuse reference, 1): 1.0 = at or above the
    reference on every metric. A metric past its figure earns no more than reaching it, so one
    far-ahead metric cannot carry the short ones (it can in :func:`reference_score`, which ranks
    plain max fusion first on its MI): a smooth stand-in for "at the reference on k of n"."""
    ratios = _reference_ratios(metrics, names)
    return float(np.mean(np.minimum(ratios, 1.0))) if ratios else -math.inf


@torch.no_grad()
def detect(
    detector: nn.Module, rgb: torch.Tensor, score_threshold: float = 0.05
) -> list[dict[str, np.ndarray]]:
    """Boxes of a detector on RGB [N, 3, H, W] in [0, 1]: {boxes xyxy, scores, labels} per image.

    FCOS: ``models.decode_detections_torch`` (as before). YOLOX: the raw outputs, named as the
    bundle names them (``export.detection_spec``), through the runtime's own numpy decode
    (``core.processing.decode_detections``), so there is one YOLOX decode; NMS IoU 0.5 and 100
    boxes, as the FCOS path."""
    outputs = detector(rgb)
    if detector_head(detector) != "yolox":
        decoded = decode_detections_torch(
            outputs, detector.strides, score_threshold=score_threshold
        )
        return [{k: v.cpu().numpy() for k, v in d.items()} for d in decoded]
    spec = detection_spec(detector)
    names = spec.output_names
    flat = [t for level in outputs for t in level]
    results = []
    for image in range(rgb.shape[0]):
        arrays = {
            n: t[image : image + 1].cpu().numpy() for n, t in zip(names, flat, strict=True)
        }
        found = decode_detections(
            arrays, spec, tuple(rgb.shape[-2:]), score_threshold, 0.5, 100
        )
        results.append(
            {"boxes": found.boxes, "scores": found.scores, "labels": found.class_ids}
        )
    return results


@torch.no_grad()
def evaluate_semantic(
    fusion: nn.Module,
    detector: nn.Module | None,
    segmenter: nn.Module | None,
    dataset: Any,
    score_threshold: float = 0.05,
) -> dict[str, float]:
    """Detection mAP and segmentation mIoU of the semantic heads on the fused colour image."""
    fusion.eval()
    if detector is not None:
        detector.eval()
    if segmenter is not None:
        segmenter.eval()
    predictions, truths = [], []
    confusion = ConfusionMatrix(len(SEGMENTATION_CLASSES))
    masked = 0
    device = module_device(fusion, detector, segmenter)
    for index in range(len(dataset)):
        item = dataset[index]
        ir = item["ir"][None].to(device)
        ycrcb = item["visible_ycrcb"][None].to(device)
        fused = fusion(ir, ycrcb[:, :1])
        rgb = colour_image(fused, ycrcb)
        if detector is not None:
            predictions.append(detect(detector, rgb, score_threshold)[0])
            truths.append({"boxes": item["boxes"].numpy(), "labels": item["labels"].numpy()})
        if segmenter is not None and bool(item["has_mask"]):
            labels = segmenter(rgb)[0].argmax(0).cpu().numpy()
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


def evaluate(
    fusion: nn.Module,
    detector: nn.Module | None,
    segmenter: nn.Module | None,
    data: TrainingData,
    config: EvalConfig,
) -> tuple[dict[str, float], np.ndarray | None]:
    """Every evaluation ``config`` asks for, as flat ``eval/...`` scalars plus ``score``, and
    the first fused image of the fusion folder (None without one). Leaves the models in eval
    mode."""
    out: dict[str, float] = {}
    image = None
    if data.fusion_eval_pairs is not None:
        metrics, image = evaluate_fusion_folder(
            fusion, data.fusion_eval_pairs, int(config.max_images or 0), int(config.max_side or 0)
        )
        out.update({f"eval/fusion/{k}": v for k, v in metrics.items()})
        out["score"] = reference_score(metrics, list(config.score_metrics))
    if config.semantic and (detector is not None or segmenter is not None):
        sets = [("msrs", data.msrs_eval), ("synthetic", data.synthetic_eval)]
        sets += list(getattr(data, "extra_eval", {}).items())
        for label, dataset in sets:
            if dataset is None:
                continue
            scores = evaluate_semantic(fusion, detector, segmenter, dataset)
            out.update({f"eval/{label}/{k}": v for k, v in scores.items()})
    if config.select_metric:
        if config.select_metric not in out:
            raise KeyError(
                f"eval.select_metric {config.select_metric!r} was not measured; "
                f"measured: {sorted(out)}"
            )
        out["score"] = out[config.select_metric]
    return out, image
