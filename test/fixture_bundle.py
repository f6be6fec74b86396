"""A tiny, honest, UNTRAINED model bundle ("fixture") for runtime tests, built without torch.

The graph follows the bundle contract (see ros2_bilevel_fusion/core/bundle.py) so every runtime
part (backends, pipeline, node) can be tested before a trained default bundle exists:

* ``fused_y = max(ir, Y)``: pixel-wise maximum of IR and the visible luma. Not a learned fusion;
  it makes "the fused image is related to both inputs" checkable (fused >= each input).
* detection heads for strides 8/16/32 and 3 classes: each level average-pools
  ``[fused_y, ir, Y]`` with kernel = stride, then fixed 1x1 convolutions give class logits,
  ``ltrb`` distances (ReLU, so >= 0) and centerness logits. Class 0 fires on bright fused areas,
  class 1 on bright IR, class 2 never. Deterministic weights, chosen by hand.
* segmentation logits for 4 classes: a fixed 1x1 convolution on ``[fused_y, ir, Y]``.

:func:`make_yolox_bundle` writes a second, SYNTHETIC bundle with a ``yolox`` detection head
(``detection.head: yolox``), built so that every decoded number is known in advance: see there.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ros2_bilevel_fusion.core.bundle import (
    DetectionLevel,
    DetectionSpec,
    InputSpec,
    ModelBundle,
    SegmentationSpec,
    YoloxLevel,
    save_bundle,
)

FIXTURE_NAME = "fixture"
FIXTURE_STRIDES = (8, 16, 32)
FIXTURE_DET_CLASSES = ("person", "bicycle", "car")
FIXTURE_SEG_CLASSES = ("background", "bright", "hot", "very_bright")
FIXTURE_SEG_PALETTE = ((0, 0, 0), (220, 20, 60), (255, 140, 0), (0, 200, 255))
# ONNX opset/IR kept conservative so older onnxruntime and TensorRT 10 parse the file.
FIXTURE_OPSET = 17
FIXTURE_IR_VERSION = 8

# Features seen by every head: channel 0 fused_y, 1 ir, 2 visible Y.
_CLS_WEIGHT = np.array([[20.0, 0.0, 0.0], [0.0, 20.0, 0.0], [0.0, 0.0, 0.0]], np.float32)
_CLS_BIAS = np.array([-12.0, -16.0, -10.0], np.float32)
# Box distances in stride units: constant 1.5 on each side (ReLU keeps them >= 0).
_BOX_WEIGHT = np.zeros((4, 3), np.float32)
_BOX_BIAS = np.full(4, 1.5, np.float32)
_CTR_WEIGHT = np.zeros((1, 3), np.float32)
_CTR_BIAS = np.array([4.0], np.float32)
_SEG_WEIGHT = np.array(
    [[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 10.0, 0.0], [0.0, 0.0, 10.0]], np.float32
)
_SEG_BIAS = np.array([0.0, -5.0, -7.0, -9.0], np.float32)


def _conv1x1(
    name: str, x: str, weight: np.ndarray, bias: np.ndarray
) -> tuple[onnx.NodeProto, list[onnx.TensorProto]]:
    w = numpy_helper.from_array(weight.reshape(weight.shape[0], weight.shape[1], 1, 1), f"{name}_w")
    b = numpy_helper.from_array(bias, f"{name}_b")
    node = helper.make_node("Conv", [x, w.name, b.name], [name], kernel_shape=[1, 1])
    return node, [w, b]


def make_fixture_model(
    with_detection: bool = True, with_segmentation: bool = True
) -> onnx.ModelProto:
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = [
        numpy_helper.from_array(np.array([0], np.int64), "y_start"),
        numpy_helper.from_array(np.array([1], np.int64), "y_end"),
        numpy_helper.from_array(np.array([1], np.int64), "channel_axis"),
    ]
    nodes.append(
        helper.make_node("Slice", ["visible_ycrcb", "y_start", "y_end", "channel_axis"], ["vis_y"])
    )
    nodes.append(helper.make_node("Max", ["ir", "vis_y"], ["fused_y"]))
    nodes.append(helper.make_node("Concat", ["fused_y", "ir", "vis_y"], ["features"], axis=1))
    outputs = [helper.make_tensor_value_info("fused_y", TensorProto.FLOAT, ["N", 1, "H", "W"])]

    if with_detection:
        for stride in FIXTURE_STRIDES:
            pooled = f"pooled_s{stride}"
            nodes.append(
                helper.make_node(
                    "AveragePool",
                    ["features"],
                    [pooled],
                    kernel_shape=[stride, stride],
                    strides=[stride, stride],
                )
            )
            node, params = _conv1x1(f"cls_s{stride}", pooled, _CLS_WEIGHT, _CLS_BIAS)
            nodes.append(node)
            inits += params
            node, params = _conv1x1(f"box_raw_s{stride}", pooled, _BOX_WEIGHT, _BOX_BIAS)
            nodes.append(node)
            inits += params
            nodes.append(helper.make_node("Relu", [f"box_raw_s{stride}"], [f"box_s{stride}"]))
            node, params = _conv1x1(f"ctr_s{stride}", pooled, _CTR_WEIGHT, _CTR_BIAS)
            nodes.append(node)
            inits += params
            h, w = f"H/{stride}", f"W/{stride}"
            outputs += [
                helper.make_tensor_value_info(f"cls_s{stride}", TensorProto.FLOAT, ["N", 3, h, w]),
                helper.make_tensor_value_info(f"box_s{stride}", TensorProto.FLOAT, ["N", 4, h, w]),
                helper.make_tensor_value_info(f"ctr_s{stride}", TensorProto.FLOAT, ["N", 1, h, w]),
            ]
    if with_segmentation:
        node, params = _conv1x1("seg_logits", "features", _SEG_WEIGHT, _SEG_BIAS)
        nodes.append(node)
        inits += params
        outputs.append(
            helper.make_tensor_value_info("seg_logits", TensorProto.FLOAT, ["N", 4, "H", "W"])
        )

    return _fixture_model(nodes, inits, outputs, "fixture_max_fusion", "untrained")


def _fixture_model(nodes: list, inits: list, outputs: list, name: str, what: str) -> Any:
    """The checked ONNX model of a fixture graph with the bundle's two inputs."""
    graph = helper.make_graph(
        nodes,
        name,
        [
            helper.make_tensor_value_info("ir", TensorProto.FLOAT, ["N", 1, "H", "W"]),
            helper.make_tensor_value_info("visible_ycrcb", TensorProto.FLOAT, ["N", 3, "H", "W"]),
        ],
        outputs,
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", FIXTURE_OPSET)],
        producer_name=f"ros2_bilevel_fusion test fixture ({what})",
    )
    model.ir_version = FIXTURE_IR_VERSION
    onnx.checker.check_model(model)
    return model


def make_fixture_bundle(
    folder: str | Path, with_detection: bool = True, with_segmentation: bool = True
) -> Path:
    """Write model.onnx + model.yaml of the untrained fixture into ``folder``; return the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    onnx_path = folder / "model.onnx"
    onnx.save(make_fixture_model(with_detection, with_segmentation), str(onnx_path))
    detection = None
    if with_detection:
        detection = DetectionSpec(
            classes=FIXTURE_DET_CLASSES,
            levels=tuple(
                DetectionLevel(stride=s, cls=f"cls_s{s}", box=f"box_s{s}", ctr=f"ctr_s{s}")
                for s in FIXTURE_STRIDES
            ),
            score_threshold=0.3,
            nms_iou=0.5,
            max_detections=100,
        )
    segmentation = None
    if with_segmentation:
        segmentation = SegmentationSpec(
            classes=FIXTURE_SEG_CLASSES, palette=FIXTURE_SEG_PALETTE, logits="seg_logits"
        )
    bundle = ModelBundle(
        name=FIXTURE_NAME,
        onnx_path=onnx_path,
        inputs=InputSpec(pad_multiple=max(FIXTURE_STRIDES)),
        detection=detection,
        segmentation=segmentation,
        provenance={
            "architecture": FIXTURE_NAME,
            "note": "untrained test fixture: fused_y = max(ir, Y), hand-set 1x1 heads",
        },
    )
    save_bundle(bundle, folder)
    return folder


# --- synthetic yolox-head bundle ---------------------------------------------------------------
YOLOX_NAME = "fixture_yolox"
YOLOX_CLASSES = ("person", "car")
YOLOX_PAD = 16
# Stride 8 looks only at the IR, stride 16 only at the visible Y, each through its own average
# pool of kernel = stride. Objectness logit = 20 * pool - 10: +10 on a cell whose pixels are all
# white (255), -10 on a black one. reg and cls are constants (1x1 convolutions with zero weights):
# (dx, dy, log w, log h) and the class logits below, the same on every cell.
YOLOX_OBJ_WEIGHT, YOLOX_OBJ_BIAS = 20.0, -10.0
YOLOX_REG = {
    8: (0.25, 0.5, math.log(2.0), math.log(1.5)),
    16: (0.5, 0.5, math.log(3.0), math.log(1.25)),
}
YOLOX_CLS = {8: (-4.0, 2.0), 16: (3.0, -3.0)}
YOLOX_SOURCE = {8: "ir", 16: "vis_y"}


def make_yolox_model() -> onnx.ModelProto:
    """fused_y = max(ir, Y) plus raw yolox heads det_{reg,obj,cls}_s{8,16} (see the constants)."""
    nodes = [
        helper.make_node("Slice", ["visible_ycrcb", "y_start", "y_end", "channel_axis"], ["vis_y"]),
        helper.make_node("Max", ["ir", "vis_y"], ["fused_y"]),
    ]
    inits = [
        numpy_helper.from_array(np.array([0], np.int64), "y_start"),
        numpy_helper.from_array(np.array([1], np.int64), "y_end"),
        numpy_helper.from_array(np.array([1], np.int64), "channel_axis"),
    ]
    outputs = [helper.make_tensor_value_info("fused_y", TensorProto.FLOAT, ["N", 1, "H", "W"])]
    for stride, source in YOLOX_SOURCE.items():
        pooled = f"pooled_s{stride}"
        nodes.append(
            helper.make_node(
                "AveragePool",
                [source],
                [pooled],
                kernel_shape=[stride, stride],
                strides=[stride, stride],
            )
        )
        heads = {
            f"det_reg_s{stride}": (np.zeros((4, 1), np.float32), YOLOX_REG[stride]),
            f"det_obj_s{stride}": (
                np.full((1, 1), YOLOX_OBJ_WEIGHT, np.float32),
                (YOLOX_OBJ_BIAS,),
            ),
            f"det_cls_s{stride}": (
                np.zeros((len(YOLOX_CLASSES), 1), np.float32),
                YOLOX_CLS[stride],
            ),
        }
        for name, (weight, bias) in heads.items():
            node, params = _conv1x1(name, pooled, weight, np.asarray(bias, np.float32))
            nodes.append(node)
            inits += params
            shape = ["N", weight.shape[0], f"H/{stride}", f"W/{stride}"]
            outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
    return _fixture_model(nodes, inits, outputs, "fixture_yolox_head", "synthetic yolox head")


def make_yolox_bundle(folder: str | Path) -> Path:
    """Write the synthetic yolox-head bundle (model.onnx + model.yaml) into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    onnx_path = folder / "model.onnx"
    onnx.save(make_yolox_model(), str(onnx_path))
    detection = DetectionSpec(
        head="yolox",
        classes=YOLOX_CLASSES,
        levels=tuple(
            YoloxLevel(stride=s, reg=f"det_reg_s{s}", obj=f"det_obj_s{s}", cls=f"det_cls_s{s}")
            for s in YOLOX_SOURCE
        ),
        score_threshold=0.3,
        nms_iou=0.5,
        max_detections=100,
    )
    bundle = ModelBundle(
        name=YOLOX_NAME,
        onnx_path=onnx_path,
        inputs=InputSpec(pad_multiple=YOLOX_PAD),
        detection=detection,
        provenance={
            "note": "synthetic yolox-head fixture: constant reg/cls, objectness 20*pool-10"
        },
    )
    save_bundle(bundle, folder)
    return folder
