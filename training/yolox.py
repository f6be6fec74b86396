"""YOLOX-Nano as a plain torch module, with the pretrained COCO weights read from the ONNX file.

Provenance and licence
----------------------
The weights come from ``yolox_nano_coco.onnx`` (``../shared/weights``; 3,660,092 bytes,
sha256 695e750a5d5754bb5a8d5325643b59282191a7e7a564e435a415fd3c578eab14 =
:data:`YOLOX_NANO_ONNX_SHA256`, checked by the loader): YOLOX-Nano (Megvii, "YOLOX: Exceeding
YOLO Series in 2021"), trained on COCO 2017, released under the Apache License 2.0. The file
was exported with BatchNorm folded into the convolutions (opset 11). This module is written
here from the ONNX graph's structure (node order, kernel sizes, strides, groups, concat order,
nearest upsampling); no YOLOX source is copied. A model or bundle trained from these weights
must name the file, its sha256 and the Apache-2.0 licence in its provenance
(:func:`provenance` gives the entries).

Structure (depth 0.33, width 0.25; every convolution has a bias and is followed by SiLU, except
the three prediction convolutions of each head level; 113 convolutions in all)
------------------------------------------------------------------------------------------------
- Stem ("Focus"): the four 2x2 pixel phases (top-left, bottom-left, top-right, bottom-right)
  stacked to 12 channels at half resolution, then a 3x3 convolution to 16 channels.
- Backbone (CSPDarknet with depthwise-separable convolutions): four stages, each a depthwise
  3x3 stride-2 convolution plus a 1x1 pointwise one (16->32, 32->64, 64->128, 128->256) and a
  CSP block (1, 3, 3 and 1 bottlenecks); the last stage has SPP (max pools 5, 9, 13, stride 1)
  between its downsampling and its CSP block, whose bottleneck has no shortcut.
  A CSP block: two 1x1 branches of half the output width; bottlenecks (1x1, then depthwise 3x3
  + pointwise 1x1, plus the input when shortcut) on the first; concat(first, second); 1x1.
- Neck (PAFPN) on the stride 8 / 16 / 32 features (64 / 128 / 256 channels): top-down with
  1x1 reductions, nearest 2x upsampling and concat(upsampled, lateral), bottom-up with
  depthwise stride-2 downsampling and concat(downsampled, top-down feature); outputs 64 / 128 /
  256 channels at strides 8 / 16 / 32.
- Head (decoupled), per level: 1x1 stem to 64 channels; a classification branch (two
  depthwise-separable 3x3 convs, then 1x1 to the class logits) and a regression branch (two
  depthwise-separable 3x3 convs, then 1x1 to 4 box values and 1x1 to 1 objectness logit).

Outputs (the runtime's ``yolox`` detection head contract: ``det_reg_s{s}``, ``det_obj_s{s}``,
``det_cls_s{s}``): for each stride s in (8, 16, 32), ``reg`` [N, 4, H/s, W/s] = (dx, dy,
log w, log h), ``obj`` [N, 1, H/s, W/s] objectness logits and ``cls`` [N, C, H/s, W/s] class
logits, all before any sigmoid. Score of class c = sigmoid(obj) * sigmoid(cls_c); box centre
((dx + col) s, (dy + row) s), size (exp(log w) s, exp(log h) s). The ONNX file applies the two
sigmoids itself and concatenates the levels to [1, cells, 4 + 1 + 80]; :func:`onnx_layout`
rebuilds that tensor from the raw outputs.

Input: [N, 3, H, W] float, **BGR, 0-255**, no normalisation; H and W multiples of 32 (the
original pads with 114 when letterboxing, see :func:`letterbox`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ros2_bilevel_fusion.core.resources import sha256_of_file

YOLOX_NANO_ONNX_NAME = "yolox_nano_coco.onnx"
YOLOX_NANO_ONNX_SHA256 = "695e750a5d5754bb5a8d5325643b59282191a7e7a564e435a415fd3c578eab14"
YOLOX_NANO_LICENCE = "Apache-2.0 (YOLOX, Megvii)"
YOLOX_STRIDES: tuple[int, int, int] = (8, 16, 32)
YOLOX_NUM_CONVS = 113
COCO_NUM_CLASSES = 80
# COCO ids 0, 1, 2 (person, bicycle, car) are the MSRS label ids.
MSRS_COCO_CLASSES: tuple[int, int, int] = (0, 1, 2)
LETTERBOX_FILL = 114.0


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------


class ConvSiLU(nn.Module):
    """Convolution (bias, no BN: folded) followed by SiLU = x * sigmoid(x)."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=True
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(self.conv(x))


class SeparableConv(nn.Module):
    """Depthwise 3x3 (with ``stride``) then pointwise 1x1, each with SiLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.depthwise = ConvSiLU(in_ch, in_ch, 3, stride=stride, groups=in_ch)
        self.pointwise = ConvSiLU(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class Bottleneck(nn.Module):
    def __init__(self, channels: int, shortcut: bool) -> None:
        super().__init__()
        self.reduce = ConvSiLU(channels, channels, 1)
        self.spatial = SeparableConv(channels, channels)
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.spatial(self.reduce(x))
        return y + x if self.shortcut else y


class CSPBlock(nn.Module):
    """Cross-stage partial block: concat(bottlenecks(1x1(x)), 1x1(x)) -> 1x1."""

    def __init__(self, in_ch: int, out_ch: int, depth: int, shortcut: bool) -> None:
        super().__init__()
        hidden = out_ch // 2
        self.main_in = ConvSiLU(in_ch, hidden, 1)
        self.bypass = ConvSiLU(in_ch, hidden, 1)
        self.blocks = nn.Sequential(*(Bottleneck(hidden, shortcut) for _ in range(depth)))
        self.merge = ConvSiLU(2 * hidden, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.merge(torch.cat([self.blocks(self.main_in(x)), self.bypass(x)], dim=1))


class SpatialPyramidPool(nn.Module):
    """1x1 halving, max pools (5, 9, 13; stride 1, same size), concat with the input, 1x1."""

    def __init__(self, in_ch: int, out_ch: int, kernels: Sequence[int] = (5, 9, 13)) -> None:
        super().__init__()
        hidden = in_ch // 2
        self.reduce = ConvSiLU(in_ch, hidden, 1)
        self.kernels = tuple(int(k) for k in kernels)
        self.expand = ConvSiLU(hidden * (len(self.kernels) + 1), out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.reduce(x)
        pooled = [F.max_pool2d(x, k, stride=1, padding=k // 2) for k in self.kernels]
        return self.expand(torch.cat([x, *pooled], dim=1))


class FocusStem(nn.Module):
    """Space-to-depth by pixel phase (TL, BL, TR, BR), then a 3x3 convolution."""

    def __init__(self, out_ch: int) -> None:
        super().__init__()
        self.conv = ConvSiLU(12, out_ch, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top_left = x[:, :, 0::2, 0::2]
        bottom_left = x[:, :, 1::2, 0::2]
        top_right = x[:, :, 0::2, 1::2]
        bottom_right = x[:, :, 1::2, 1::2]
        return self.conv(torch.cat([top_left, bottom_left, top_right, bottom_right], dim=1))


class HeadLevel(nn.Module):
    """Decoupled head of one level: stem, class branch + logits, box branch + box + objectness."""

    def __init__(self, in_ch: int, num_classes: int, width: int = 64) -> None:
        super().__init__()
        self.stem = ConvSiLU(in_ch, width, 1)
        self.cls_branch = nn.Sequential(SeparableConv(width, width), SeparableConv(width, width))
        self.cls_pred = nn.Conv2d(width, num_classes, 1)
        self.reg_branch = nn.Sequential(SeparableConv(width, width), SeparableConv(width, width))
        self.reg_pred = nn.Conv2d(width, 4, 1)
        self.obj_pred = nn.Conv2d(width, 1, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.stem(x)
        cls = self.cls_pred(self.cls_branch(x))
        reg_feature = self.reg_branch(x)
        return self.reg_pred(reg_feature), self.obj_pred(reg_feature), cls


# --------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------


# YoloxNano's backbone and neck submodules (everything but ``heads``), in forward order: the
# exporter names their nodes ``/<name>/...`` when the graph calls them directly (a shared
# backbone, models.ExportModel), which the quantiser and the profiler select by.
BACKBONE_AND_NECK: tuple[str, ...] = (
    "stem", "stage2", "stage3", "stage4", "stage5", "lateral32", "top_down16", "lateral16",
    "top_down8", "down8", "bottom_up16", "down16", "bottom_up32",
)


class YoloxNano(nn.Module):
    """YOLOX-Nano (see the module docstring). ``forward`` returns one (reg, obj, cls) tuple of
    raw outputs per stride in :data:`YOLOX_STRIDES`.

    Submodules are declared in the ONNX graph's order, so that ``conv_layers()`` lists the 113
    convolutions in the order of the file's Conv nodes (the loader relies on it and checks it).
    """

    strides: tuple[int, int, int] = YOLOX_STRIDES

    def __init__(self, num_classes: int = COCO_NUM_CLASSES) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError("num_classes must be >= 1")
        self.num_classes = int(num_classes)
        # backbone
        self.stem = FocusStem(16)
        self.stage2 = nn.Sequential(SeparableConv(16, 32, stride=2), CSPBlock(32, 32, 1, True))
        self.stage3 = nn.Sequential(SeparableConv(32, 64, stride=2), CSPBlock(64, 64, 3, True))
        self.stage4 = nn.Sequential(
            SeparableConv(64, 128, stride=2), CSPBlock(128, 128, 3, True)
        )
        self.stage5 = nn.Sequential(
            SeparableConv(128, 256, stride=2),
            SpatialPyramidPool(256, 256),
            CSPBlock(256, 256, 1, False),
        )
        # neck, top-down then bottom-up
        self.lateral32 = ConvSiLU(256, 128, 1)
        self.top_down16 = CSPBlock(256, 128, 1, False)
        self.lateral16 = ConvSiLU(128, 64, 1)
        self.top_down8 = CSPBlock(128, 64, 1, False)
        self.down8 = SeparableConv(64, 64, stride=2)
        self.bottom_up16 = CSPBlock(128, 128, 1, False)
        self.down16 = SeparableConv(128, 128, stride=2)
        self.bottom_up32 = CSPBlock(256, 256, 1, False)
        # heads for strides 8, 16, 32
        self.heads = nn.ModuleList(HeadLevel(c, self.num_classes) for c in (64, 128, 256))

    def conv_layers(self) -> list[nn.Conv2d]:
        """Every convolution, in declaration order (= the ONNX file's Conv node order)."""
        return [m for m in self.modules() if isinstance(m, nn.Conv2d)]

    @staticmethod
    def _up2(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2.0, mode="nearest")

    def forward(
        self, x: torch.Tensor
    ) -> tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], ...]:
        return tuple(head(p) for head, p in zip(self.heads, self.features(x), strict=True))

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The neck's outputs at strides 8, 16, 32 (64, 128, 256 channels), before the heads."""
        c3 = self.stage3(self.stage2(self.stem(x)))  # stride 8, 64 ch
        c4 = self.stage4(c3)  # stride 16, 128 ch
        c5 = self.stage5(c4)  # stride 32, 256 ch
        lat32 = self.lateral32(c5)
        td16 = self.top_down16(torch.cat([self._up2(lat32), c4], dim=1))
        lat16 = self.lateral16(td16)
        p8 = self.top_down8(torch.cat([self._up2(lat16), c3], dim=1))
        p16 = self.bottom_up16(torch.cat([self.down8(p8), lat16], dim=1))
        p32 = self.bottom_up32(torch.cat([self.down16(p16), lat32], dim=1))
        return p8, p16, p32


def output_names(strides: Sequence[int] = YOLOX_STRIDES) -> list[str]:
    """Graph output names of the runtime's yolox head, in forward's flattened order."""
    return [f"det_{part}_s{s}" for s in strides for part in ("reg", "obj", "cls")]


# --------------------------------------------------------------------------------------------
# Loading the ONNX weights
# --------------------------------------------------------------------------------------------


def provenance(path: str | Path | None = None) -> dict[str, str]:
    """Provenance entries for a model initialised from the ONNX file."""
    return {
        "pretrained_detector": Path(path).name if path is not None else YOLOX_NANO_ONNX_NAME,
        "pretrained_detector_sha256": YOLOX_NANO_ONNX_SHA256,
        "pretrained_detector_licence": YOLOX_NANO_LICENCE,
    }


def load_yolox_nano_onnx(
    path: str | Path,
    keep_classes: Sequence[int] | None = None,
    check_sha256: bool = True,
) -> YoloxNano:
    """A :class:`YoloxNano` with the ONNX file's 113 convolutions (weights + biases) copied in.

    The file's Conv nodes are taken in graph order and matched one to one with
    ``conv_layers()``; every weight and bias shape, kernel size, stride, padding, dilation and
    group count is checked (ValueError naming the node otherwise). ``keep_classes`` (COCO ids,
    e.g. :data:`MSRS_COCO_CLASSES`) keeps those rows of the class convolutions, in that order,
    so the smaller head starts exactly at the COCO scores of those classes. With
    ``check_sha256`` the file must be the published one (:data:`YOLOX_NANO_ONNX_SHA256`).
    """
    import onnx
    from onnx import numpy_helper

    path = Path(path)
    if check_sha256:
        digest = sha256_of_file(path)
        if digest != YOLOX_NANO_ONNX_SHA256:
            raise ValueError(
                f"{path}: sha256 {digest} is not the YOLOX-Nano file's {YOLOX_NANO_ONNX_SHA256}"
            )
    graph = onnx.load(str(path)).graph
    initialisers = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    conv_nodes = [node for node in graph.node if node.op_type == "Conv"]
    if len(conv_nodes) != YOLOX_NUM_CONVS:
        raise ValueError(f"{path}: {len(conv_nodes)} Conv nodes, expected {YOLOX_NUM_CONVS}")

    coco = YoloxNano(COCO_NUM_CLASSES)
    layers = coco.conv_layers()
    assert len(layers) == YOLOX_NUM_CONVS
    with torch.no_grad():
        for index, (node, layer) in enumerate(zip(conv_nodes, layers, strict=True)):
            where = f"{path.name}: Conv node {index} ({node.output[0]})"
            if len(node.input) != 3:
                raise ValueError(f"{where} has no bias input")
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            weight = initialisers[node.input[1]]
            bias = initialisers[node.input[2]]
            kernel = tuple(attrs.get("kernel_shape", weight.shape[2:]))
            expected = {
                "weight": tuple(layer.weight.shape),
                "bias": tuple(layer.bias.shape),
                "kernel": tuple(layer.kernel_size),
                "stride": tuple(layer.stride),
                "pads": tuple(layer.padding) * 2,
                "dilation": tuple(layer.dilation),
                "group": layer.groups,
            }
            found = {
                "weight": tuple(weight.shape),
                "bias": tuple(bias.shape),
                "kernel": kernel,
                "stride": tuple(attrs.get("strides", (1, 1))),
                "pads": tuple(attrs.get("pads", (0, 0, 0, 0))),
                "dilation": tuple(attrs.get("dilations", (1, 1))),
                "group": int(attrs.get("group", 1)),
            }
            for key, value in expected.items():
                if found[key] != value:
                    raise ValueError(f"{where}: {key} {found[key]} but the module has {value}")
            layer.weight.copy_(torch.from_numpy(np.array(weight, np.float32)))
            layer.bias.copy_(torch.from_numpy(np.array(bias, np.float32)))
    if keep_classes is None:
        return coco.eval()
    keep = [int(c) for c in keep_classes]
    if not keep or min(keep) < 0 or max(keep) >= COCO_NUM_CLASSES:
        raise ValueError(f"keep_classes must be COCO ids in 0..{COCO_NUM_CLASSES - 1}")
    model = YoloxNano(len(keep))
    state = coco.state_dict()
    for level in range(len(YOLOX_STRIDES)):
        for part in ("weight", "bias"):
            key = f"heads.{level}.cls_pred.{part}"
            state[key] = state[key][keep].clone()
    model.load_state_dict(state)
    return model.eval()


# --------------------------------------------------------------------------------------------
# Decoding (torch) and image preparation
# --------------------------------------------------------------------------------------------


def _flatten(t: torch.Tensor) -> torch.Tensor:
    """[N, K, h, w] -> [N, h*w, K] (cells row-major)."""
    return t.flatten(2).transpose(1, 2)


def onnx_layout(
    levels: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
) -> torch.Tensor:
    """The ONNX file's output from raw outputs: [N, cells, 4 + 1 + C] = (dx, dy, log w, log h,
    sigmoid(obj), sigmoid(cls)), levels in stride order, cells row-major."""
    return torch.cat(
        [
            torch.cat([_flatten(reg), _flatten(obj.sigmoid()), _flatten(cls.sigmoid())], dim=2)
            for reg, obj, cls in levels
        ],
        dim=1,
    )


def decode(
    levels: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    strides: Sequence[int] = YOLOX_STRIDES,
) -> torch.Tensor:
    """Boxes in pixels: [N, cells, 4 + 1 + C] = (cx, cy, w, h, sigmoid(obj), sigmoid(cls)).

    Centre ((dx + col) s, (dy + row) s), size exp(log w, log h) s; grid built from the tensors'
    own shapes (traceable at any size)."""
    decoded = []
    for (reg, obj, cls), stride in zip(levels, strides, strict=True):
        height, width = reg.shape[2], reg.shape[3]
        rows = torch.arange(height, dtype=reg.dtype, device=reg.device)
        cols = torch.arange(width, dtype=reg.dtype, device=reg.device)
        grid_y, grid_x = torch.meshgrid(rows, cols, indexing="ij")
        grid = torch.stack([grid_x, grid_y], dim=0).flatten(1).transpose(0, 1)  # [h*w, 2]
        reg = _flatten(reg)
        centre = (reg[..., :2] + grid) * stride
        size = torch.exp(reg[..., 2:4]) * stride
        decoded.append(
            torch.cat([centre, size, _flatten(obj.sigmoid()), _flatten(cls.sigmoid())], dim=2)
        )
    return torch.cat(decoded, dim=1)


def decode_onnx_output(output: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """numpy decode of the ONNX file's [N, cells, 85] output for an input of size ``hw``
    (independent of :func:`decode`; used to compare the two)."""
    output = np.asarray(output, np.float32).copy()
    grids, scales = [], []
    for stride in YOLOX_STRIDES:
        h, w = hw[0] // stride, hw[1] // stride
        ys, xs = np.mgrid[0:h, 0:w]
        grids.append(np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float32))
        scales.append(np.full((h * w, 1), stride, np.float32))
    grid = np.concatenate(grids)
    scale = np.concatenate(scales)
    if grid.shape[0] != output.shape[1]:
        raise ValueError(f"{output.shape[1]} cells but {grid.shape[0]} for an input of {hw}")
    output[..., :2] = (output[..., :2] + grid) * scale
    output[..., 2:4] = np.exp(output[..., 2:4]) * scale
    return output


def letterbox(
    image: np.ndarray, size_hw: tuple[int, int] = (416, 416), fill: float = LETTERBOX_FILL
) -> tuple[np.ndarray, float]:
    """Resize keeping the aspect ratio (bilinear), paste top-left on a ``fill`` canvas.

    Grey images become 3 equal channels. Returns ([3, H, W] float32 0-255, scale); a box in the
    letterboxed image divided by the scale is in the original image's pixels."""
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    scale = min(size_hw[0] / image.shape[0], size_hw[1] / image.shape[1])
    new_w, new_h = int(image.shape[1] * scale), int(image.shape[0] * scale)
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    canvas = np.full((size_hw[0], size_hw[1], 3), fill, np.float32)
    canvas[:new_h, :new_w] = resized
    return np.ascontiguousarray(canvas.transpose(2, 0, 1)), scale


def to_input(image: np.ndarray) -> torch.Tensor:
    """HxW grey or HxWx3 BGR uint8 image -> [1, 3, H, W] float32 0-255 (no resizing)."""
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), np.float32))[None]


def detect(
    decoded: torch.Tensor,
    score_threshold: float = 0.001,
    nms_iou: float = 0.65,
    max_detections: int = 100,
    image_hw: tuple[int, int] | None = None,
) -> list[dict[str, np.ndarray]]:
    """Per image of ``decoded`` (:func:`decode`): boxes xyxy, scores, labels after class-aware
    NMS (OpenCV, via the runtime's ``core.processing.nms``). Score of class c =
    sigmoid(obj) * sigmoid(cls_c), every class above ``score_threshold`` is a candidate."""
    from ros2_bilevel_fusion.core.processing import nms

    results = []
    for item in decoded.detach().cpu().numpy():
        centre, size = item[:, :2], item[:, 2:4]
        boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1)
        scores = item[:, 4:5] * item[:, 5:]
        cells, labels = np.nonzero(scores > score_threshold)
        boxes, scores = boxes[cells], scores[cells, labels]
        if image_hw is not None:
            boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, image_hw[1])
            boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, image_hw[0])
        keep = nms(boxes, scores, labels, nms_iou, max_detections)
        results.append(
            {
                "boxes": boxes[keep].astype(np.float32),
                "scores": scores[keep].astype(np.float32),
                "labels": labels[keep].astype(np.int64),
            }
        )
    return results
