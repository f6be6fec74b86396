"""Offline training of the bi-level fusion model (torch only; never imported by the runtime).

Laid out like torchvision's ``references/``: ``train`` (the script), ``config`` (typed config),
``engine`` (the trainer's steps and loop), ``data`` (the run's data) over ``datasets`` and
``synthetic`` (data sets), ``models``, ``losses``, ``bilevel`` (hypergradient, aggregation),
``distributed`` (gloo data parallel, seeding), ``evaluation``, ``export`` (checkpoint -> model
bundle), ``colour`` (YCrCb as OpenCV does it), ``lane_report`` (criteria of fusion-eval
reports). See README.md.
"""
