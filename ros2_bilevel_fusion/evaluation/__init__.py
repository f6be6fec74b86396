"""Evaluation tools: fusion and semantic metrics, baselines, reports, ``fusion-eval`` and
``fusion-demo``.

``metrics``, ``semantic_metrics`` and ``baselines`` score images; ``folder`` is the one loop over
IR/visible pairs (a per-pair callable: the runtime pipeline for ``fusion-eval``, the torch model
for training); ``bag_mode`` scores what the live node published from a bag; ``report`` writes
every report file; ``evaluate`` is the ``fusion-eval`` command line, ``demo`` ``fusion-demo``.

May import: ``core``, ``messages``, ``backends``, ``bag``, scikit-image, pycocotools,
matplotlib, and rclpy only through ``bag``. Never torch or training (training imports these
metrics, not the other way round).
"""
