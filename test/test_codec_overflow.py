"""A huge thermal value (1e30 in a 32FC1 image whose scene spans 1e-7) saturates quietly: no
numpy RuntimeWarning, which a node would print as a raw 'overflow encountered' line."""

from __future__ import annotations

import warnings

import numpy as np

from ros2_bilevel_fusion.messages.codec import AutoGain


def test_huge_thermal_value_saturates_without_a_numpy_warning() -> None:
    rng = np.random.default_rng(0)
    synthetic = (rng.random((90, 124)) * 1e-7).astype(np.float32)
    synthetic[0, 0] = 1e30
    synthetic[0, 1] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = AutoGain()(synthetic)
    assert out[0, 0] == 255 and out[0, 1] == 0
    assert out.dtype == np.uint8 and 0 < out[1:].mean() < 255
