"""The pure core: what the node does to a pair of images, with no ROS and no torch.

``bundle`` reads model.yaml (the one contract between training and runtime), ``processing``
turns images into network inputs and network outputs into results, ``pipeline`` runs one pair
through a backend, ``pairing`` matches IR and visible frames by stamp, ``registration`` maps IR
onto the visible geometry, ``gain`` holds the percentile stretch (thermal input, fused output),
``resources`` finds the package's share folder.

May import: the standard library, numpy, OpenCV, PyYAML and other modules of ``core``
(``backends.base`` for type hints only). Never rclpy, ROS message packages, torch or training.
"""
