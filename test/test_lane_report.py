"""training.lane_report on SYNTHETIC fusion-eval summaries (the keys fusion-eval writes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training import lane_report
from training.evaluation import CDDFUSE_TNO


def _write_summary(folder: Path, metrics: dict[str, float], with_semantics: bool) -> Path:
    folder.mkdir(parents=True)
    summary: dict = {"model": "default (model)", "means": {"default (model)": metrics}}
    if with_semantics:
        summary["detection"] = {"mAP50": 0.5, "per_class_AP50": {"person": 0.6, "car": 0.4}}
        summary["segmentation"] = {"classes": ["background", "person"],
                                   "per_class_iou": [0.9, 0.45]}
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def test_rows_carry_both_criteria_and_the_semantic_numbers(tmp_path: Path) -> None:
    at_figures = dict(CDDFUSE_TNO)
    mi_far_ahead_scd_short = {**CDDFUSE_TNO, "MI": 2 * CDDFUSE_TNO["MI"],
                              "SCD": 0.8 * CDDFUSE_TNO["SCD"]}
    first = lane_report.read_report(_write_summary(tmp_path / "a", at_figures, True))
    second = lane_report.read_report(
        _write_summary(tmp_path / "b", mi_far_ahead_scd_short, False))
    assert first.score == pytest.approx(1.0) and first.reach == pytest.approx(1.0)
    assert (first.map50, first.person_ap50, first.person_iou) == (0.5, 0.6, 0.45)
    assert second.score == pytest.approx(1.0 + (1.0 - 0.2) / 8)
    assert second.reach == pytest.approx(1.0 - 0.2 / 8)
    assert second.map50 is None and second.person_iou is None
    table = lane_report.format_rows([first, second])
    assert table.splitlines()[-1] == (
        f"mean over 2 reports: score {(first.score + second.score) / 2:.4f}, "
        f"reach {(first.reach + second.reach) / 2:.4f}")
    assert "| - | - | - |" in table  # no detection in the second report


def test_cli_refuses_a_folder_without_a_summary(tmp_path: Path, capsys) -> None:
    assert lane_report.main([str(tmp_path)]) == 2
    assert "no summary.json" in capsys.readouterr().err


def test_against_the_incumbent_keeps_every_metric_in_play(tmp_path: Path, capsys) -> None:
    """SYNTHETIC summaries: a candidate past CDDFuse's figures on every metric has reach 1 like
    the incumbent, yet the relative rows show its Qabf loss and its SD gain."""
    incumbent = {name: 1.2 * value for name, value in CDDFUSE_TNO.items()}
    candidate = {**incumbent, "Qabf": 0.9 * incumbent["Qabf"], "SD": 1.1 * incumbent["SD"]}
    inc = _write_summary(tmp_path / "inc", incumbent, False)
    cand = _write_summary(tmp_path / "cand", candidate, False)
    row = lane_report.relative_row(lane_report.read_report(cand), lane_report.read_report(inc))
    assert lane_report.read_report(cand).reach == lane_report.read_report(inc).reach == 1.0
    assert row.ratios["Qabf"] == pytest.approx(0.9) and row.ratios["SD"] == pytest.approx(1.1)
    assert row.geometric_mean == pytest.approx((0.9 * 1.1) ** (1 / 8))
    assert row.not_below == 7
    assert lane_report.main([str(cand), "--against", str(inc)]) == 0
    printed = capsys.readouterr().out
    assert "| 7 of 8 |" in printed and "0.9000" in printed
    assert lane_report.main([str(cand), str(cand), "--against", str(inc)]) == 2
