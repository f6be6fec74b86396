"""training.lane_report on SYNTHETIC fusion-eval summaries (the keys fusion-eval writes)."""

from __future__ import annotations

import json
import math
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


def _scaled(factor: float, **overrides: float) -> dict[str, float]:
    """CDDFuse's figures times ``factor``, with some metrics scaled further."""
    return {name: factor * value * overrides.get(name, 1.0) for name, value in CDDFUSE_TNO.items()}


def _arm(tmp_path: Path, name: str, per_seed: list[dict[str, dict[str, float]]]) -> list[str]:
    """One evaluation folder per seed, each with a report per split (SYNTHETIC summaries)."""
    folders = []
    for seed, splits in enumerate(per_seed):
        folder = tmp_path / f"{name}_s{seed}"
        for split, metrics in splits.items():
            _write_summary(folder / split, metrics, False)
        folders.append(str(folder))
    return folders


def test_arm_comparison_needs_a_margin_over_the_seed_spread(tmp_path: Path) -> None:
    """SYNTHETIC two-seed arms: the seed spread inside an arm is the margin a difference of
    the arms' means has to clear, on the scale of the geometric mean of the 8 ratios."""
    first = [lane_report.read_report(_write_summary(tmp_path / f"a{i}", _scaled(f), False))
             for i, f in enumerate((1.0, 1.02))]
    second = [lane_report.read_report(_write_summary(tmp_path / f"b{i}", _scaled(f), False))
              for i, f in enumerate((1.04, 1.05))]
    assert lane_report.seed_spread(first) == pytest.approx(math.log(1.02))
    assert lane_report.seed_spread(first[:1]) == 0.0
    comparison = lane_report.compare_arms("s", first, second)
    assert comparison.ratios["SD"] == pytest.approx(1.045 / 1.01)
    assert comparison.log_g == pytest.approx(math.log(1.045 / 1.01))
    assert comparison.margin == pytest.approx(math.log(1.02))
    assert comparison.verdict == "second"
    # the floor applies when the seeds agree exactly
    assert lane_report.compare_arms("s", first[:1], second[:1], 0.05).margin == 0.05
    # a change smaller than the spread is not told apart
    near = [lane_report.read_report(_write_summary(tmp_path / "n", _scaled(1.015), False))]
    assert lane_report.compare_arms("s", first, near).verdict == "tie"


def test_decide_wants_no_loss_beyond_the_margin_and_a_gain_beyond_it() -> None:
    def comparison(log_g: float) -> lane_report.ArmComparison:
        return lane_report.ArmComparison("s", {}, log_g, 0.02)

    assert lane_report.decide([comparison(0.03), comparison(-0.01)]) == "second"
    assert lane_report.decide([comparison(0.03), comparison(-0.03)]) == "neither"
    assert lane_report.decide([comparison(-0.03), comparison(0.0)]) == "first"
    assert lane_report.decide([comparison(0.01), comparison(-0.01)]) == "neither"


def test_cli_compares_two_arms_per_split(tmp_path: Path, capsys) -> None:
    """SYNTHETIC: the second arm is 5 % higher on every metric of one split and equal on the
    other, with seeds 1 % apart: it is better by the rule."""
    first = _arm(tmp_path, "a", [{"road": _scaled(1.0), "msrs": _scaled(1.0)},
                                 {"road": _scaled(1.01), "msrs": _scaled(1.0)}])
    second = _arm(tmp_path, "b", [{"road": _scaled(1.0), "msrs": _scaled(1.05)},
                                  {"road": _scaled(1.01), "msrs": _scaled(1.05)}])
    argv = ["--arm", "first", *first, "--arm", "second", *second, "--splits", "road", "msrs"]
    assert lane_report.main(argv) == 0
    printed = capsys.readouterr().out
    assert "decision: second is better" in printed
    assert "| road | 1.0000 |" in printed and "| msrs | 1.0500 |" in printed
    assert lane_report.main(argv[:2 + len(first)]) == 2  # one arm only
    assert lane_report.main([*argv, "--splits", "missing"]) == 2
    assert "no summary.json" in capsys.readouterr().err


def test_pick_scores_each_candidate_by_its_worse_split(tmp_path: Path, capsys) -> None:
    """SYNTHETIC candidates: one far ahead on one split and behind on the other loses to one
    slightly ahead on both."""
    lopsided = {"road": _scaled(1.10), "msrs": _scaled(0.97)}
    balanced = {"road": _scaled(1.01), "msrs": _scaled(1.01)}
    behind = {"road": _scaled(0.95), "msrs": _scaled(1.0)}
    folders = _arm(tmp_path, "c", [lopsided, balanced, behind])
    reports = {split: [lane_report.read_report(Path(d) / split) for d in folders]
               for split in ("road", "msrs")}
    rows = lane_report.pick_rows(folders, reports)
    mean_road, mean_msrs = (1.10 + 1.01 + 0.95) / 3, (0.97 + 1.01 + 1.0) / 3
    assert rows[0].log_g["road"] == pytest.approx(math.log(1.10 / mean_road))
    assert rows[0].score == pytest.approx(math.log(0.97 / mean_msrs))
    assert max(rows, key=lambda row: row.score).folder == folders[1]
    assert lane_report.main(["--pick", *folders, "--splits", "road", "msrs"]) == 0
    assert f"highest score: {folders[1]}" in capsys.readouterr().out
    assert lane_report.main(["--pick", folders[0], "--splits", "road"]) == 2
    assert lane_report.main(["--pick", *folders, "--arm", "a", folders[0]]) == 2
    with pytest.raises(ValueError):
        lane_report.pick_rows(folders[:2], reports)


def test_the_margin_is_the_largest_move_of_any_seed_pair_in_either_arm(tmp_path: Path) -> None:
    """SYNTHETIC: three seeds in the second arm, whose first and last agree while the middle one
    is 6 % away: the margin is that move, and it hides the 5 % difference of the arms' means."""
    def rows(prefix: str, factors: list[float]) -> list[lane_report.ReportRow]:
        return [lane_report.read_report(_write_summary(tmp_path / f"{prefix}{i}", _scaled(f),
                                                       False)) for i, f in enumerate(factors)]

    first = rows("a", [1.0, 1.0])
    second = rows("b", [1.03, 1.03 * 1.06, 1.03])
    assert lane_report.seed_spread(second) == pytest.approx(math.log(1.06))
    comparison = lane_report.compare_arms("s", first, second)
    assert comparison.margin == pytest.approx(math.log(1.06))
    assert comparison.log_g == pytest.approx(math.log(1.03 * 3.06 / 3))
    assert comparison.verdict == "tie"
    # without the second arm's middle seed the same gap clears the floor
    assert lane_report.compare_arms("s", first, second[::2]).verdict == "second"


def test_the_geometric_mean_weighs_every_metric(tmp_path: Path) -> None:
    """SYNTHETIC: a 10 % gain on SD against a 10 % loss on Qabf is no gain at all."""
    first = [lane_report.read_report(_write_summary(tmp_path / "a", _scaled(1.0), False))]
    second = [lane_report.read_report(
        _write_summary(tmp_path / "b", _scaled(1.0, SD=1.1, Qabf=1 / 1.1), False))]
    comparison = lane_report.compare_arms("s", first, second, min_margin=0.0)
    assert comparison.ratios["SD"] == pytest.approx(1.1)
    assert comparison.ratios["Qabf"] == pytest.approx(1 / 1.1)
    assert comparison.log_g == pytest.approx(0.0, abs=1e-12)


def test_decide_at_the_margin_itself_is_no_decision() -> None:
    edge = lane_report.ArmComparison("s", {}, 0.02, 0.02)
    assert edge.verdict == "tie"
    assert lane_report.decide([edge, lane_report.ArmComparison("s", {}, 0.0, 0.02)]) == "neither"


def test_cli_arm_refusals_and_min_margin(tmp_path: Path, capsys) -> None:
    """SYNTHETIC arms 2 % apart on one split: the CLI's --min-margin decides; folders given
    where a name belongs, a negative margin, mixed modes and a zero metric are refused."""
    first = _arm(tmp_path, "a", [{"road": _scaled(1.0), "msrs": _scaled(1.0)}])
    second = _arm(tmp_path, "b", [{"road": _scaled(1.02), "msrs": _scaled(1.0)}])
    base = ["--arm", "first", *first, "--arm", "second", *second, "--splits", "road", "msrs"]
    assert lane_report.main([*base, "--min-margin", "0.01"]) == 0
    assert "decision: second is better" in capsys.readouterr().out
    assert lane_report.main([*base, "--min-margin", "0.03"]) == 0
    assert "decision: not told apart" in capsys.readouterr().out
    assert lane_report.main([*base, "--min-margin", "-0.1"]) == 2
    assert lane_report.main(["--arm", *first, *first, "--arm", "second", *second]) == 2
    assert "name, not a folder" in capsys.readouterr().err
    assert lane_report.main([*base, "--against", first[0]]) == 2
    assert lane_report.main([first[0], *base]) == 2
    zero = _arm(tmp_path, "z", [{"road": _scaled(1.0, MI=0.0), "msrs": _scaled(1.0)}])
    assert lane_report.main(["--arm", "first", *first, "--arm", "zero", *zero,
                             "--splits", "road", "msrs"]) == 2
    assert "MI" in capsys.readouterr().err
    assert lane_report.main(["--pick", *first, *zero, "--splits", "road"]) == 2
    assert "on road" in capsys.readouterr().err
