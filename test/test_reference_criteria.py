"""The two fusion criteria against CDDFuse's published TNO figures (training.evaluation):
``reference_score`` (mean of ratios) and ``reference_reach`` (mean of ratios capped at 1)."""

from __future__ import annotations

import math

import pytest

from training.evaluation import CDDFUSE_TNO, reference_reach, reference_score

METRICS = ["EN", "SD", "SF", "MI", "SCD", "VIF", "Qabf", "SSIM"]


def test_at_the_figures_both_criteria_are_one() -> None:
    assert reference_score(dict(CDDFUSE_TNO), METRICS) == pytest.approx(1.0)
    assert reference_reach(dict(CDDFUSE_TNO), METRICS) == pytest.approx(1.0)


def test_reach_gives_no_credit_past_a_figure_and_counts_every_shortfall() -> None:
    ahead = {**CDDFUSE_TNO, "MI": 2 * CDDFUSE_TNO["MI"]}
    assert reference_score(ahead, METRICS) == pytest.approx(1.0 + 1.0 / 8)
    assert reference_reach(ahead, METRICS) == pytest.approx(1.0)
    # MI far ahead does not make up for SCD 10 % short
    mixed = {**ahead, "SCD": 0.9 * CDDFUSE_TNO["SCD"]}
    assert reference_score(mixed, METRICS) > 1.0
    assert reference_reach(mixed, METRICS) == pytest.approx(1.0 - 0.1 / 8)


def test_reach_ranks_max_fusion_below_the_network_that_score_ranks_it_above() -> None:
    # measured TNO-25 means (README): plain max fusion, and the fused image of models/default
    max_fusion = dict(zip(METRICS, [6.813, 40.01, 10.06, 4.713, 1.540, 0.924, 0.599, 1.000],
                          strict=True))
    network = dict(zip(METRICS, [7.040, 46.08, 12.90, 2.545, 1.632, 0.879, 0.527, 1.023],
                       strict=True))
    assert reference_score(max_fusion, METRICS) > reference_score(network, METRICS)
    assert reference_reach(max_fusion, METRICS) < reference_reach(network, METRICS)


def test_missing_or_nan_metrics_are_left_out() -> None:
    partial = {"EN": CDDFUSE_TNO["EN"] / 2, "SD": math.nan}
    assert reference_reach(partial, ["EN", "SD"]) == pytest.approx(0.5)
    assert reference_reach({}, ["EN"]) == -math.inf
