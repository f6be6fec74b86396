"""Registration of IR into visible geometry, on synthetic images."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from ros2_bilevel_fusion.core.registration import Registration, parse_homography


def synthetic_dot(hw: tuple[int, int], xy: tuple[int, int]) -> np.ndarray:
    image = np.zeros(hw, np.uint8)
    image[xy[1], xy[0]] = 255
    return image


def test_parse_homography_normalises() -> None:
    values = [2, 0, 4, 0, 2, 6, 0, 0, 2]
    matrix = parse_homography(values)
    assert matrix.dtype == np.float64 and matrix.shape == (3, 3)
    np.testing.assert_allclose(matrix, [[1, 0, 2], [0, 1, 3], [0, 0, 1]])


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([1, 0, 0, 0, 1, 0, 0, 0], "9 values"),
        ([1, 0, 0, 0, 1, 0, 0, 0, 1, 0], "9 values"),
        ([1, 0, 0, 0, float("nan"), 0, 0, 0, 1], "non-finite"),
        ([1, 0, 0, 0, 1, 0, 0, 0, 0], "H\\[2,2\\]"),
        ([1, 2, 0, 2, 4, 0, 0, 0, 1], "singular"),
        (["a"] * 9, "9 numbers"),
    ],
)
def test_parse_homography_rejects_bad_values(values: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_homography(values)


def test_identity_same_size_returns_input_without_copy() -> None:
    image = np.random.default_rng(0).integers(0, 256, (48, 64), dtype=np.uint8)
    assert Registration.identity().warp(image, (48, 64)) is image


def test_identity_other_size_resizes() -> None:
    image = np.random.default_rng(1).integers(0, 256, (24, 32), dtype=np.uint8)
    out = Registration(np.eye(3)).warp(image, (48, 64))
    assert out.shape == (48, 64) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, cv2.resize(image, (64, 48)))


def test_translation_moves_a_dot_to_the_expected_pixel() -> None:
    # IR pixel (x, y) appears at visible pixel (x + 7, y - 3).
    registration = Registration(parse_homography([1, 0, 7, 0, 1, -3, 0, 0, 1]))
    ir = synthetic_dot((40, 50), (10, 20))
    out = registration.warp(ir, (40, 50))
    assert out.shape == (40, 50)
    assert np.unravel_index(np.argmax(out), out.shape) == (17, 17)
    assert out[17, 17] == 255 and int(out.sum()) == 255


def test_scale_and_translation_into_a_larger_visible_image() -> None:
    # IR 32x40 at half the visible resolution, offset by (5, 2) visible pixels.
    registration = Registration(parse_homography([2, 0, 5, 0, 2, 2, 0, 0, 1]))
    ir = np.zeros((32, 40), np.uint8)
    ir[10:14, 6:10] = 200  # a block so that bilinear sampling keeps a clear peak
    out = registration.warp(ir, (80, 100))
    assert out.shape == (80, 100)
    ys, xs = np.nonzero(out == 200)
    # IR x 6..9 -> visible 17..23; IR y 10..13 -> visible 22..28.
    assert xs.min() == 17 and xs.max() == 23 and ys.min() == 22 and ys.max() == 28


def test_projective_warp_matches_opencv_warp_perspective() -> None:
    rng = np.random.default_rng(2)
    ir = cv2.GaussianBlur(rng.integers(0, 256, (60, 80), dtype=np.uint8), (5, 5), 2)
    homography = np.array([[1.05, 0.02, 3.0], [-0.01, 0.98, -2.0], [1e-4, -5e-5, 1.0]])
    registration = Registration(homography)
    out = registration.warp(ir, (64, 84))
    expected = cv2.warpPerspective(ir, homography, (84, 64), flags=cv2.INTER_LINEAR)
    inner = (slice(4, -4), slice(4, -4))  # borders differ by sub-pixel coverage only
    assert np.abs(out[inner].astype(int) - expected[inner].astype(int)).max() <= 2
    colour = registration.warp(np.dstack([ir, ir, ir]), (64, 84))
    assert colour.shape == (64, 84, 3)
    np.testing.assert_array_equal(colour[..., 1], out)


def test_warp_rejects_bad_input() -> None:
    registration = Registration.identity()
    with pytest.raises(ValueError):
        registration.warp(np.zeros((0, 5), np.uint8), (5, 5))
    with pytest.raises(ValueError):
        registration.warp(np.zeros((5, 5), np.uint8), (0, 5))
