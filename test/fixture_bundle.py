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
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ros2_bilevel_fusion.core.bundle import (
    DetectionLevel,
    DetectionSpec,
    InputSpec,
    ModelBundle,
    SegmentationSpec,
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

    graph = helper.make_graph(
        nodes,
        "fixture_max_fusion",
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
        producer_name="ros2_bilevel_fusion test fixture (untrained)",
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
