"""Fusion metrics on analytic cases, invariants and real TNO pairs (no stored measured values)."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from ros2_bilevel_fusion.evaluation import metrics


def _synthetic_texture(seed: int, shape: tuple[int, int] = (96, 128)) -> np.ndarray:
    """Synthetic smooth-plus-noise grey image, integer levels 0-255."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    smooth = 128 + 60 * np.sin(xx / (7.0 + seed)) * np.cos(yy / 11.0)
    return np.clip(np.round(smooth + rng.normal(0, 12, shape)), 0, 255)


def test_constant_image_has_no_information() -> None:
    constant = np.full((64, 80), 117.0)
    assert metrics.entropy(constant) == 0.0
    assert metrics.standard_deviation(constant) == 0.0
    assert metrics.spatial_frequency(constant) == 0.0
    assert metrics.average_gradient(constant) == 0.0


def test_two_level_histogram_has_one_bit_entropy() -> None:
    image = np.zeros((10, 10))
    image[:, :5] = 200.0
    assert metrics.entropy(image) == pytest.approx(1.0)
    # Four equally likely levels: 2 bits.
    image[:5, :5] = 10.0
    image[:5, 5:] = 30.0
    assert metrics.entropy(image) == pytest.approx(2.0)


def test_sd_sf_ag_on_a_ramp() -> None:
    # Horizontal ramp of slope 2: dx = 2 everywhere, dy = 0; numpy.gradient also gives 2.
    ramp = np.tile(np.arange(0, 200, 2, dtype=np.float64), (50, 1))
    assert metrics.spatial_frequency(ramp) == pytest.approx(2.0)
    assert metrics.average_gradient(ramp) == pytest.approx(math.sqrt(4.0 / 2.0))
    assert metrics.standard_deviation(ramp) == pytest.approx(np.arange(0, 200, 2).std())


def test_identical_inputs_ssim_two_and_mi_twice_entropy_in_nats() -> None:
    image = _synthetic_texture(0)
    assert metrics.ssim_sum(image, image, image) == pytest.approx(2.0, abs=1e-9)
    entropy_nats = metrics.entropy(image) * math.log(2.0)
    assert metrics.mutual_information(image, image, image) == pytest.approx(2 * entropy_nats)


def test_mi_is_symmetric_in_the_sources_and_zero_for_independent_halves() -> None:
    fused, first, second = (_synthetic_texture(seed) for seed in (1, 2, 3))
    assert metrics.mutual_information(fused, first, second) == pytest.approx(
        metrics.mutual_information(fused, second, first)
    )
    # Two levels each, arranged so the joint histogram is the product of the marginals: MI 0;
    # a with itself: H(a) = ln 2 nats.
    a = np.zeros((4, 4))
    a[:2] = 1
    b = np.zeros((4, 4))
    b[:, :2] = 1
    assert metrics.mutual_information(a, b, b) == pytest.approx(0.0)
    assert metrics.mutual_information(a, a, b) == pytest.approx(math.log(2.0))


def test_mi_non_integer_levels_use_distinct_values_as_labels() -> None:
    image = _synthetic_texture(4)
    shifted = image + 0.25  # same partition of pixels, so the same MI
    assert metrics.mutual_information(shifted, image, image) == pytest.approx(
        metrics.mutual_information(image, image, image)
    )


def test_scd_is_symmetric_when_swapping_sources() -> None:
    fused, first, second = (_synthetic_texture(seed) for seed in (5, 6, 7))
    assert metrics.scd(fused, first, second) == pytest.approx(metrics.scd(fused, second, first))
    assert math.isnan(metrics.scd(first, first, first))


def test_vif_of_an_image_with_itself_is_one_per_term() -> None:
    image = _synthetic_texture(8)
    other = _synthetic_texture(9)
    assert metrics._vif_pair(image, image) == pytest.approx(1.0, abs=1e-6)
    assert metrics.vif(image, image, image) == pytest.approx(2.0, abs=1e-6)
    # Sum of the two one-sided terms, with the fused image second in each.
    assert metrics.vif(image, other, image) == pytest.approx(
        metrics._vif_pair(other, image) + 1.0, abs=1e-6
    )
    assert metrics.vif(image, other, image) < 2.0


def test_qabf_of_identical_step_edges_follows_the_published_formula() -> None:
    # A vertical step of height 100: the Sobel magnitude on the two edge columns is 400 (plus
    # the zero-padded border), orientation 0; elsewhere 0. With F = A = B the equal-strength
    # case applies, G = g_F (quirk kept), orientation difference 0.
    step = np.zeros((40, 40))
    step[:, 20:] = 100.0
    strength, _ = metrics._edge_strength_orientation(step)
    strong = strength[strength > 0]
    expected_per_pixel = (
        0.9994 / (1 + np.exp(-15 * (strong - 0.5))) * 0.9879 / (1 + np.exp(-22 * (1.0 - 0.8)))
    )
    expected = float(np.sum(expected_per_pixel * strong) / np.sum(strong))
    assert metrics.qabf(step, step, step) == pytest.approx(expected)
    assert metrics.qabf(step, step, step) == pytest.approx(
        0.9994 * 0.9879 / (1 + np.exp(-4.4)), rel=1e-6
    )
    # Edge strength at 1/4 of the source in F: lower score.
    assert metrics.qabf(step / 4, step, step) < metrics.qabf(step, step, step)
    assert math.isnan(metrics.qabf(step, np.zeros_like(step), np.zeros_like(step)))


def test_qabf_equal_gradient_quirk_gives_zero_where_both_are_flat() -> None:
    # The equal case sets G = g_F: for tiny equal gradients G is small, unlike the textbook 1.
    strength = np.array([[0.2, 3.0]])
    orientation = np.zeros_like(strength)
    preserved = metrics._edge_preservation(strength, orientation, strength, orientation)
    assert preserved[0, 0] < 0.1
    assert preserved[0, 1] > 0.9


def test_psnr_identical_is_inf_and_known_value() -> None:
    image = _synthetic_texture(10)
    assert metrics.psnr(image, image, image) == math.inf
    fused = np.full((8, 8), 100.0)
    # MSE(A,F) = 100, MSE(B,F) = 0 -> mean 50; peak max(F) = 100.
    assert metrics.psnr(fused, fused + 10, fused) == pytest.approx(10 * math.log10(100**2 / 50))


def test_to_gray_float_conventions() -> None:
    grey = np.arange(256, dtype=np.uint8).reshape(16, 16)
    three_channel = np.dstack([grey, grey, grey])
    assert np.array_equal(metrics.to_gray_float(three_channel), grey.astype(np.float64))
    bgr = np.zeros((1, 1, 3), dtype=np.uint8)
    bgr[0, 0] = (0, 0, 255)  # pure red in BGR order
    assert metrics.to_gray_float(bgr)[0, 0] == round(0.299 * 255)
    with pytest.raises(metrics.MetricInputError):
        metrics.to_gray_float(grey.astype(np.float32))


def test_fusion_metrics_names_shapes_and_errors() -> None:
    image = _synthetic_texture(11).astype(np.uint8)
    values = metrics.fusion_metrics(image, image, image)
    assert list(values) == list(metrics.METRIC_NAMES)
    assert metrics.fusion_metrics(image, image, image, names=["EN"]) == {
        "EN": metrics.entropy(image.astype(np.float64))
    }
    with pytest.raises(ValueError):
        metrics.fusion_metrics(image, image, image, names=["nope"])
    with pytest.raises(metrics.MetricInputError):
        metrics.fusion_metrics(image, image[:-1], image)


def test_mean_metrics_skips_undefined_values() -> None:
    rows = [{"PSNR": math.inf, "EN": 1.0}, {"PSNR": 20.0, "EN": 3.0}]
    assert metrics.mean_metrics(rows, ["PSNR", "EN"]) == {"PSNR": 20.0, "EN": 2.0}


def test_real_tno_pairs_max_fusion_against_its_sources(shared_data) -> None:
    from ros2_bilevel_fusion.evaluation import folder

    ir_dir, vis_dir = shared_data / "tno" / "ir", shared_data / "tno" / "vi"
    pairs = folder.find_folder_pairs(ir_dir, vis_dir, limit=2)
    names = sorted(p.name for p in ir_dir.iterdir())[:2]

    def max_fusion(ir_u8: np.ndarray, visible_bgr: np.ndarray) -> folder.PairOutput:
        return folder.PairOutput(np.maximum(ir_u8, cv2.cvtColor(visible_bgr, cv2.COLOR_BGR2GRAY)))

    result = folder.score_pairs(pairs, max_fusion, method="max")
    rows, mean = result.rows, result.means["max"]
    assert [row["name"] for row in rows] == names
    for row in rows:
        ir = metrics.to_gray_float(cv2.imread(str(ir_dir / row["name"])))
        # Invariants, not stored numbers: max-fusion keeps every edge of the brighter source,
        # so its SF is at least near the sources', its MI and VIF are positive and finite.
        assert 0 < row["EN"] <= 8
        assert row["MI"] > 0 and row["VIF"] > 0 and 0 < row["Qabf"] < 1
        assert row["SSIM"] < 2
        assert row["MI"] <= 2 * row["EN"] * math.log(2) + 1e-9
        assert row["SD"] >= 0 and np.isfinite(row["PSNR"])
        assert row["SF"] > 0.5 * metrics.spatial_frequency(ir)
    assert mean["EN"] == pytest.approx(np.mean([row["EN"] for row in rows]))
