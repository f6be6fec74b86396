"""ros2_bilevel_fusion: infrared + visible image fusion, detection and segmentation in ROS 2.

The subpackages are the architecture; each docstring says what it may import, and
test/test_import_rules.py enforces it:

- ``core``: the pure per-pair work (model.yaml contract, pre/post-processing, pipeline,
  pairing, registration, share-folder lookup). No ROS, no torch.
- ``messages``: the one ROS message I/O layer (Image codec, stamps, detections schema).
- ``backends``: onnxruntime, TensorRT and torch runners of an exported bundle.
- ``node``: the thin ROS 2 shell (``fusion_node``, parameters, diagnostics).
- ``bag``: rosbag2 reading/writing, replay, output recording, live runs through the node.
- ``evaluation``: metrics, baselines, reports, ``fusion-eval`` and ``fusion-demo``.

Training (``training/``, torch) lives beside this package and is never imported by it.
"""

__version__ = "0.1.0"
