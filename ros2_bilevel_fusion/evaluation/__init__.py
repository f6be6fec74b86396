"""Evaluation tools: fusion and semantic metrics, baselines, reports, ``fusion-eval`` and
``fusion-demo``.

May import: ``core``, ``messages``, ``backends``, ``bag``, scikit-image, pycocotools,
matplotlib, and rclpy only through ``bag``. Never torch or training (training imports these
metrics, not the other way round).
"""
