"""Percentile stretch to uint8 with optional smoothing over frames: the one gain control.

Thermal decoding (``messages.codec.to_mono8``/``to_bgr8``, 16-bit and float images) and the
fused image's contrast stretch (model.yaml ``fused_stretch``, ``core.pipeline``) both use it.
Pure: numpy, OpenCV and ``core.bundle`` (the thermal defaults, the percentile check).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ros2_bilevel_fusion.core.bundle import (
    DEFAULT_THERMAL_HIGH_PERCENTILE,
    DEFAULT_THERMAL_LOW_PERCENTILE,
    check_percentile_range,
)


def _read_only_levels(count: int) -> np.ndarray:
    levels = np.arange(count, dtype=np.float32)
    levels.flags.writeable = False
    return levels


# Every level an 8- or 16-bit image can hold, as float32: each frame's lookup table is built on
# them, so they are made once, not per frame (65536 values for 16-bit thermal).
_LEVELS = {
    np.dtype(np.uint8): _read_only_levels(256),
    np.dtype(np.uint16): _read_only_levels(65536),
}


def _look_up(lut: np.ndarray, image: np.ndarray) -> np.ndarray:
    """``lut[image]``: OpenCV's table lookup for 8-bit images (about 4x numpy's at 640x480, the
    same values), numpy's for 16-bit ones, which OpenCV's does not take."""
    if image.dtype == np.uint8:
        return cv2.LUT(image, lut)
    return np.take(lut, image)


@dataclass
class GainControl:
    """Percentile stretch settings (defaults: the model contract's thermal ones, which a
    bundle's ``preprocessing`` section may change)."""

    low_percentile: float = DEFAULT_THERMAL_LOW_PERCENTILE
    high_percentile: float = DEFAULT_THERMAL_HIGH_PERCENTILE
    # Exponential smoothing of the limits across frames (0 = off, 0.9 = slow), so that a hot
    # object entering the view does not make the whole scene flicker.
    smoothing: float = 0.0
    # Percentiles are estimated on at most about this many pixels (a regular subsample).
    max_samples: int = 40_000

    def __post_init__(self) -> None:
        check_percentile_range(self.low_percentile, self.high_percentile)
        if not 0.0 <= self.smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {self.smoothing}")


class AutoGain:
    """Robust percentile stretch to uint8, with optional smoothing of the limits over frames.

    Takes HxW, or HxWx3 BGR: colour gets one stretch for all channels, its limits taken on the
    grey image. NaN and inf pixels are ignored for the limits and map to 0. A constant image
    (or one with no finite pixel) maps to zeros. ``measure`` + ``apply`` is ``__call__`` in
    two steps, for callers that decide between them (the fused stretch keeps a flat frame).
    """

    def __init__(self, config: GainControl | None = None) -> None:
        self.config = config if config is not None else GainControl()
        self.limits: tuple[float, float] | None = None

    def reset(self) -> None:
        self.limits = None

    def _sample(self, image: np.ndarray) -> np.ndarray:
        total = image.shape[0] * image.shape[1]
        stride = max(1, int(np.ceil(np.sqrt(total / max(1, self.config.max_samples)))))
        sample = image[::stride, ::stride].ravel()
        if sample.dtype.kind == "f":
            sample = sample[np.isfinite(sample)]
        return sample

    @staticmethod
    def _checked(image: np.ndarray) -> tuple[np.ndarray, bool]:
        image = np.asarray(image)
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[:, :, 0]
        colour = image.ndim == 3 and image.shape[2] == 3
        if not (image.ndim == 2 or colour) or image.size == 0:
            raise ValueError(
                f"gain control needs a non-empty HxW or HxWx3 image, got {image.shape}"
            )
        return image, colour

    def measure(self, image: np.ndarray) -> tuple[float, float] | None:
        """This frame's (smoothed) limits, kept in ``limits``; None with no finite pixel."""
        image, colour = self._checked(image)
        reference = (
            cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_BGR2GRAY) if colour else image
        )
        sample = self._sample(reference)
        if sample.size == 0:  # no finite pixel at all
            return None
        low, high = np.percentile(sample, [self.config.low_percentile, self.config.high_percentile])
        low, high = float(low), float(high)
        if self.limits is not None and self.config.smoothing > 0.0:
            keep = self.config.smoothing
            low = keep * self.limits[0] + (1.0 - keep) * low
            high = keep * self.limits[1] + (1.0 - keep) * high
        self.limits = (low, high)
        return self.limits

    @staticmethod
    def apply(image: np.ndarray, low: float, high: float) -> np.ndarray:
        """``image`` mapped linearly from [low, high] to [0, 255], clipped, as uint8."""
        image, _ = AutoGain._checked(image)
        if not high > low:
            return np.zeros(image.shape, np.uint8)
        scale = 255.0 / (high - low)
        if image.dtype == np.uint16 or image.dtype == np.uint8:
            # A lookup table over every possible value is cheaper than float maths per pixel.
            lut = np.clip(np.rint((_LEVELS[image.dtype] - low) * scale), 0, 255).astype(np.uint8)
            return _look_up(lut, image)
        # A stray huge value (1e30 on a narrow range) overflows to inf and saturates to 255
        # below; numpy's overflow warning would only flood the log once per process.
        with np.errstate(over="ignore", invalid="ignore"):
            stretched = (image.astype(np.float32, copy=False) - np.float32(low)) * np.float32(scale)
        stretched = np.nan_to_num(stretched, nan=0.0, posinf=255.0, neginf=0.0)
        return np.clip(np.rint(stretched), 0, 255).astype(np.uint8)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        limits = self.measure(image)
        if limits is None:
            return np.zeros(self._checked(image)[0].shape, np.uint8)
        return self.apply(image, *limits)


class ContrastFloor:
    """Raise a uint8 image's contrast to a floor: its deviations about its mean are scaled so
    that its standard deviation is at least ``min_std`` grey levels (the gain capped at
    ``max_gain``; clipping to 0..255 leaves the result a little under the floor). Without
    smoothing, an image at or above the floor, or constant, is returned as it is;
    ``smoothing`` (0 = off) blends each frame's gain with the previous one, as
    :class:`GainControl`'s does the limits, so a frame may keep part of an earlier lift."""

    def __init__(self, min_std: float, max_gain: float, smoothing: float = 0.0) -> None:
        if not min_std > 0.0 or not max_gain >= 1.0 or not 0.0 <= smoothing < 1.0:
            raise ValueError(
                f"need min_std > 0, max_gain >= 1 and 0 <= smoothing < 1, got {min_std}, "
                f"{max_gain}, {smoothing}"
            )
        self.min_std, self.max_gain, self.smoothing = float(min_std), float(max_gain), smoothing
        self.gain: float | None = None

    def __call__(self, image: np.ndarray) -> np.ndarray:
        if image.dtype != np.uint8 or image.ndim != 2 or image.size == 0:
            raise ValueError(f"contrast floor needs a non-empty uint8 HxW image, got {image.shape}")
        mean, std = (float(v[0, 0]) for v in cv2.meanStdDev(image))
        gain = min(self.min_std / std, self.max_gain) if std > 0.0 else 1.0
        gain = max(gain, 1.0)
        if self.gain is not None and self.smoothing > 0.0:
            gain = self.smoothing * self.gain + (1.0 - self.smoothing) * gain
        self.gain = gain
        if gain == 1.0:
            return image
        levels = _LEVELS[np.dtype(np.uint8)]
        lut = np.clip(np.rint(mean + gain * (levels - mean)), 0, 255).astype(np.uint8)
        return _look_up(lut, image)
