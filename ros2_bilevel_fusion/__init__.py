"""ros2_bilevel_fusion: infrared + visible image fusion with detection and segmentation for ROS 2."""

__version__ = "0.1.0"
