"""Classical fusion baselines on synthetic images."""

from __future__ import annotations

import numpy as np
import pytest

from ros2_bilevel_fusion.evaluation import baselines


def _synthetic(seed: int, shape: tuple[int, int] = (61, 83)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_mean_and_max_fusion_pixelwise() -> None:
    ir = np.array([[0, 255, 10]], dtype=np.uint8)
    y = np.array([[255, 255, 13]], dtype=np.uint8)
    assert baselines.mean_fusion(ir, y).tolist() == [[128, 255, 12]]
    assert baselines.max_fusion(ir, y).tolist() == [[255, 255, 13]]
    assert baselines.max_fusion(ir, y).dtype == np.uint8


@pytest.mark.parametrize("shape", [(61, 83), (480, 640), (5, 7)])
def test_laplacian_fusion_of_an_image_with_itself_reconstructs_it(shape) -> None:
    image = _synthetic(1, shape)
    fused = baselines.laplacian_pyramid_fusion(image, image)
    assert fused.dtype == np.uint8 and fused.shape == image.shape
    assert np.abs(fused.astype(int) - image.astype(int)).max() <= 1


def test_laplacian_fusion_keeps_the_stronger_detail() -> None:
    # Synthetic: IR flat, visible has a checkerboard; the fused detail must be the visible one.
    flat = np.full((64, 64), 100, dtype=np.uint8)
    checker = np.where((np.indices((64, 64)).sum(axis=0) // 8) % 2 == 0, 60, 140).astype(np.uint8)
    fused = baselines.laplacian_pyramid_fusion(flat, checker, levels=3).astype(float)
    mean_fused = baselines.mean_fusion(flat, checker).astype(float)
    assert fused.std() > 1.5 * mean_fused.std()
    assert abs(fused.mean() - (100 + 100) / 2) < 5


def test_bad_inputs_raise_clear_errors() -> None:
    with pytest.raises(baselines.BaselineInputError):
        baselines.max_fusion(_synthetic(0), _synthetic(0, (10, 10)))
    with pytest.raises(baselines.BaselineInputError):
        baselines.mean_fusion(_synthetic(0).astype(np.float32), _synthetic(0))
    assert list(baselines.BASELINES) == ["mean", "max", "laplacian"]
