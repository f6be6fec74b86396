"""Offline training of the bi-level fusion model (torch only; never imported by the runtime).

Library parts, shaped like torchvision's ``references/``: ``colour`` (YCrCb as OpenCV does it),
``models`` (fusion, critic, detector, segmenter, the exported graph), ``losses``, ``data`` and
``synthetic`` (data sets), ``export`` (checkpoint -> model bundle). The bi-level trainer builds
on them.
"""
