"""YOLOX loss with a simplified SimOTA label assignment (written here; no YOLOX code copied).

Outputs: per stride s, (reg [N, 4, h, w] = (dx, dy, log w, log h), obj [N, 1, h, w] logits,
cls [N, C, h, w] logits), the ``bundle.YoloxLevel`` contract. Predicted box of cell (i, j):
centre ((dx + j) s, (dy + i) s), size exp(log wh) s (log wh clamped to 12 inside the loss only,
so an untrained head cannot overflow).

Assignment, per image, over every cell of every level at once:

1. Candidates of GT g: cells whose centre ((j + 0.5) s, (i + 0.5) s) lies inside the box OR
   within 2.5 strides (the cell's own stride) of the box centre.
2. Cost(g, cell) = BCE(sqrt(sigmoid(cls_g) sigmoid(obj)), 1) + 3 (-log IoU(pred, g))
   + 1e5 if the cell is not both inside the box and inside the centre region (so those are
   taken first) + 1e8 if not a candidate at all.
3. Dynamic k_g = max(1, floor(sum of the 10 largest IoUs of g's candidates)); g takes its k_g
   cheapest candidates.
4. A cell claimed by several GTs keeps only the cheapest one.

Losses (normalised by the number of assigned cells, at least 1):
objectness BCE on all cells (target 1 on assigned cells, 0 elsewhere); class BCE on assigned
cells with the IoU of the prediction as the soft target of the GT class (0 for the others);
GIoU loss (``torchvision.ops.generalized_box_iou_loss``) on assigned boxes, weight 5.
An image without boxes contributes only objectness (all targets 0).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import box_iou, generalized_box_iou_loss

from training.yolox import YOLOX_STRIDES

CENTRE_RADIUS = 2.5  # strides
IOU_COST_WEIGHT = 3.0
TOP_IOUS = 10
BOX_WEIGHT = 5.0
MAX_LOG_WH = 12.0

YoloxOutputs = Sequence[tuple[Tensor, Tensor, Tensor]]


def cell_grid(outputs: YoloxOutputs, strides: Sequence[int]) -> tuple[Tensor, Tensor, Tensor]:
    """Every cell of every level, level by level, row-major: grid (j, i) [A, 2], centre
    ((j + 0.5) s, (i + 0.5) s) [A, 2], stride [A]."""
    grids, strides_out = [], []
    for (reg, _, _), stride in zip(outputs, strides, strict=True):
        height, width = reg.shape[-2:]
        ys, xs = torch.meshgrid(
            torch.arange(height, device=reg.device, dtype=reg.dtype),
            torch.arange(width, device=reg.device, dtype=reg.dtype),
            indexing="ij",
        )
        grids.append(torch.stack((xs.reshape(-1), ys.reshape(-1)), dim=1))
        strides_out.append(torch.full((height * width,), float(stride), device=reg.device))
    grid = torch.cat(grids)
    stride = torch.cat(strides_out)
    return grid, (grid + 0.5) * stride[:, None], stride


def _flatten(outputs: YoloxOutputs, index: int) -> Tensor:
    """[N, A, K] in cell_grid's order."""
    return torch.cat([level[index].flatten(2).transpose(1, 2) for level in outputs], dim=1)


def decode_boxes(reg: Tensor, grid: Tensor, stride: Tensor) -> Tensor:
    """reg [..., A, 4] -> xyxy pixels [..., A, 4]."""
    centre = (reg[..., :2] + grid) * stride[:, None]
    size = torch.exp(reg[..., 2:4].clamp(max=MAX_LOG_WH)) * stride[:, None]
    return torch.cat((centre - size / 2, centre + size / 2), dim=-1)


@torch.no_grad()
def simota_assign(
    boxes: Tensor,
    labels: Tensor,
    pred_boxes: Tensor,
    obj_logits: Tensor,
    cls_logits: Tensor,
    centres: Tensor,
    stride: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """One image. boxes [G, 4] xyxy, labels [G]; pred_boxes [A, 4], obj_logits [A],
    cls_logits [A, C]; centres [A, 2], stride [A]. Returns (fg [A] bool, matched GT index [A]
    (valid where fg), IoU of the prediction with its GT [A] (0 elsewhere))."""
    cells = pred_boxes.shape[0]
    fg = torch.zeros(cells, dtype=torch.bool, device=pred_boxes.device)
    matched = torch.zeros(cells, dtype=torch.long, device=pred_boxes.device)
    matched_iou = torch.zeros(cells, dtype=pred_boxes.dtype, device=pred_boxes.device)
    if boxes.shape[0] == 0:
        return fg, matched, matched_iou
    x, y = centres[:, 0][None], centres[:, 1][None]  # [1, A]
    in_box = (
        (x > boxes[:, 0:1]) & (x < boxes[:, 2:3]) & (y > boxes[:, 1:2]) & (y < boxes[:, 3:4])
    )  # [G, A]
    box_centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    radius = CENTRE_RADIUS * stride[None]
    in_centre = ((x - box_centre[:, 0:1]).abs() < radius) & (
        (y - box_centre[:, 1:2]).abs() < radius
    )
    candidate = in_box | in_centre
    ious = box_iou(boxes, pred_boxes)  # [G, A]
    ious = torch.where(candidate, ious, torch.zeros_like(ious))
    scores = (torch.sigmoid(cls_logits[:, labels].T) * torch.sigmoid(obj_logits)[None]).sqrt()
    cls_cost = -torch.log(scores.clamp(min=1e-8))
    cost = (
        cls_cost
        + IOU_COST_WEIGHT * -torch.log(ious + 1e-8)
        + 1e5 * (~(in_box & in_centre)).to(ious.dtype)
        + 1e8 * (~candidate).to(ious.dtype)
    )
    top = ious.topk(min(TOP_IOUS, cells), dim=1).values
    dynamic_k = top.sum(1).int().clamp(min=1)
    n_candidates = candidate.sum(1)
    dynamic_k = torch.minimum(dynamic_k, n_candidates.clamp(min=1).int())
    order = cost.argsort(dim=1)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(cells, device=cost.device).expand_as(order))
    chosen = (ranks < dynamic_k[:, None]) & candidate
    multi = chosen.sum(0) > 1
    if bool(multi.any()):
        best = cost[:, multi].argmin(0)
        chosen[:, multi] = False
        chosen[best, multi.nonzero().squeeze(1)] = True
    fg = chosen.any(0)
    matched = chosen.float().argmax(0)
    matched_iou = torch.where(fg, ious[matched, torch.arange(cells, device=cost.device)], 0.0)
    return fg, matched, matched_iou


def yolox_loss(
    outputs: YoloxOutputs,
    targets: list[dict[str, Tensor]],
    strides: Sequence[int] = YOLOX_STRIDES,
    image_hw: tuple[int, int] | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The YOLOX training loss of a batch (see the module docstring).

    targets: per image {"boxes": [K, 4] xyxy pixels, "labels": [K] long}; K may be 0.
    image_hw: if given, target boxes are clipped to the image first. Returns (total, parts).
    """
    grid, centres, stride = cell_grid(outputs, strides)
    reg = _flatten(outputs, 0)  # [N, A, 4]
    obj = _flatten(outputs, 1)[..., 0]  # [N, A]
    cls = _flatten(outputs, 2)  # [N, A, C]
    pred_boxes = decode_boxes(reg, grid, stride)
    obj_target = torch.zeros_like(obj)
    cls_preds, cls_targets, box_preds, box_targets = [], [], [], []
    for index, target in enumerate(targets):
        boxes = target["boxes"].to(reg.dtype).reshape(-1, 4)
        labels = target["labels"].long().reshape(-1)
        if image_hw is not None and boxes.numel():
            boxes = boxes.clone()
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, image_hw[1])
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, image_hw[0])
        valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, labels = boxes[valid], labels[valid]
        fg, matched, iou = simota_assign(
            boxes, labels, pred_boxes[index].detach(), obj[index].detach(), cls[index].detach(),
            centres, stride,
        )
        if not bool(fg.any()):
            continue
        obj_target[index, fg] = 1.0
        soft = torch.zeros_like(cls[index, fg])
        soft[torch.arange(soft.shape[0]), labels[matched[fg]]] = iou[fg]
        cls_preds.append(cls[index, fg])
        cls_targets.append(soft)
        box_preds.append(pred_boxes[index, fg])
        box_targets.append(boxes[matched[fg]])
    num_fg = sum(int(t.shape[0]) for t in box_preds)
    norm = float(max(num_fg, 1))
    loss_obj = F.binary_cross_entropy_with_logits(obj, obj_target, reduction="sum") / norm
    if num_fg:
        loss_cls = F.binary_cross_entropy_with_logits(
            torch.cat(cls_preds), torch.cat(cls_targets), reduction="sum"
        ) / norm
        loss_box = BOX_WEIGHT * generalized_box_iou_loss(
            torch.cat(box_preds), torch.cat(box_targets), reduction="sum"
        ) / norm
    else:  # no object in the batch: keep the graph connected so backward() works everywhere
        loss_cls = cls.sum() * 0.0
        loss_box = reg.sum() * 0.0
    total = loss_obj + loss_cls + loss_box
    return total, {
        "obj": loss_obj.detach(),
        "cls": loss_cls.detach(),
        "box": loss_box.detach(),
        "num_positive": torch.tensor(float(num_fg)),
    }
