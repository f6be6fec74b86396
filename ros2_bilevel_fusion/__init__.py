"""ros2_bilevel_fusion: infrared + visible image fusion, detection and segmentation in ROS 2."""

__version__ = "0.1.0"
