"""The one ROS message I/O layer: Image <-> numpy, header stamps, the detections schema.

Used by the node, the bag tools and the evaluation tools alike, so each message has one codec.
The functions work on rclpy messages and on rosbags' message classes (same field names).

May import: the standard library, numpy, ``core``, and ROS message packages (sensor_msgs,
std_msgs, vision_msgs, builtin_interfaces) and cv_bridge (``cv_bridge_path``, the one place that
picks cv_bridge or the codec), lazily where they are optional. Never rclpy, torch or training.
"""
