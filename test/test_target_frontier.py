"""training.target_frontier: the plain target is max fusion; enhancement moves the metrics the
way the knobs say (two real TNO pairs)."""

from __future__ import annotations

import numpy as np
import pytest

from ros2_bilevel_fusion.evaluation.baselines import max_fusion
from ros2_bilevel_fusion.evaluation.metrics import list_images, read_u8
from training.losses import FusionLossWeights
from training.target_frontier import main, score_target, target_image


@pytest.fixture(scope="module")
def tno_pairs(shared_data) -> list[tuple[np.ndarray, np.ndarray]]:
    folder = shared_data / "tno"
    paths = list_images(folder / "ir")[:2]
    return [(read_u8(p, grey=True), read_u8(folder / "vi" / p.name, grey=True)) for p in paths]


def test_plain_target_is_max_fusion(tno_pairs) -> None:
    for ir, vis in tno_pairs:
        assert np.array_equal(target_image(ir, vis, FusionLossWeights()), max_fusion(ir, vis))


def test_detail_gain_raises_sf_and_contrast_raises_sd(tno_pairs) -> None:
    plain = score_target(tno_pairs, FusionLossWeights())
    sharper = score_target(tno_pairs, FusionLossWeights(detail_gain=0.4))
    stretched = score_target(tno_pairs, FusionLossWeights(contrast=1.2))
    assert sharper["SF"] > 1.1 * plain["SF"]
    assert stretched["SD"] > 1.1 * plain["SD"]
    # Sharpening moves the image away from both sources: MI falls.
    assert sharper["MI"] < plain["MI"]


def test_cli_prints_one_row_per_setting(shared_data, tmp_path, capsys) -> None:
    folder = tmp_path / "two_pairs"
    for side in ("ir", "vi"):
        (folder / side).mkdir(parents=True)
        for path in list_images(shared_data / "tno" / side)[:1]:
            (folder / side / path.name).write_bytes(path.read_bytes())
    assert main(["--folder", str(folder), "--detail-gain", "0", "0.3", "--contrast", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| max")]
    assert len(rows) == 2
    # the first row is the reference of the ">= first row" column: 8 of 8 against itself
    assert rows[0].rstrip(" |").endswith("8")


def test_cli_scores_validation_splits_by_default(shared_data, capsys) -> None:
    if not (shared_data / "roadscene" / "ir").is_dir():
        pytest.skip("roadscene is not present")
    assert main(["--split", "roadscene:val", "--detail-gain", "0", "--contrast", "1",
                 "--target", "max", "detail_max"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("41 pairs of roadscene:val")
    assert len([line for line in out.splitlines() if line.startswith("| detail_max")]) == 1
