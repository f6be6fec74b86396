"""The thin ROS 2 shell: the ``fusion_node`` executable, its parameters and diagnostics.

May import: everything in this package but ``evaluation`` and ``bag``, rclpy and ROS message
packages (message_filters and vision_msgs where installed). Never torch or training.
"""
