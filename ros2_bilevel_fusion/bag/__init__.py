"""Bag tools: read and write rosbag2 (rosbags), replay a bag live, record the node's outputs,
turn a folder of pairs into a bag, run a bag through a node process.

May import: ``core``, ``messages``, rosbags, rclpy and ROS message packages. Never torch or
training.
"""
