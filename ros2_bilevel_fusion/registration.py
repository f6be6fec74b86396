"""Bring the IR image into the visible camera's pixel geometry with a fixed homography.

Convention: the homography ``H`` maps IR pixel coordinates to visible pixel coordinates,
``[x_v, y_v, 1]^T ~ H [x_i, y_i, 1]^T``, with pixel centres at integer coordinates (OpenCV's
convention). It is the matrix ``cv2.findHomography(ir_points, visible_points)`` returns.

The identity homography means "no registration configured: both cameras see the same field
of view" and an IR image of another size is then resized to the visible size (a strict reading
of the identity would crop or pad instead, which is never what a user who left it unset wants).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import cv2
import numpy as np

_IDENTITY = np.eye(3)


def parse_homography(values: Sequence[float]) -> np.ndarray:
    """Nine row-major values -> 3x3 float64 with H[2,2] = 1; ValueError when unusable."""
    try:
        matrix = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"homography must be 9 numbers, got {values!r}") from exc
    if matrix.size != 9:
        raise ValueError(f"homography must have 9 values (row-major 3x3), got {matrix.size}")
    if not np.all(np.isfinite(matrix)):
        raise ValueError(f"homography has non-finite values: {matrix.tolist()}")
    matrix = matrix.reshape(3, 3)
    if abs(matrix[2, 2]) < 1e-12:
        raise ValueError(
            "homography H[2,2] is 0 (it maps the IR origin to infinity); cannot normalise"
        )
    matrix = matrix / matrix[2, 2]
    # Condition number, not the determinant alone: scale is legitimately far from 1.
    if np.linalg.cond(matrix) > 1e12:
        raise ValueError(f"homography is singular (not invertible): {matrix.tolist()}")
    return matrix


class Registration:
    """Warps IR images into the visible image geometry (see the module docstring)."""

    def __init__(self, homography: np.ndarray | Sequence[float]) -> None:
        self.homography = parse_homography(np.asarray(homography, dtype=np.float64).reshape(-1))
        self.is_identity = bool(np.allclose(self.homography, _IDENTITY, rtol=0.0, atol=1e-12))
        # (ir_hw, visible_hw) -> fixed-point remap tables; a camera's size rarely changes, so
        # the per-pixel projective maths runs once instead of on every frame.
        self._maps: dict[tuple[tuple[int, int], tuple[int, int]], tuple[np.ndarray, np.ndarray]]
        self._maps = {}
        self._lock = threading.Lock()

    @classmethod
    def identity(cls) -> Registration:
        return cls(_IDENTITY)

    def _remap_tables(
        self, ir_hw: tuple[int, int], visible_hw: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        key = (ir_hw, visible_hw)
        with self._lock:
            tables = self._maps.get(key)
        if tables is not None:
            return tables
        height, width = visible_hw
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
        visible_points = np.stack([xs.ravel(), ys.ravel(), np.ones(xs.size)])
        ir_points = np.linalg.inv(self.homography) @ visible_points
        with np.errstate(divide="ignore", invalid="ignore"):
            map_x = (ir_points[0] / ir_points[2]).reshape(height, width)
            map_y = (ir_points[1] / ir_points[2]).reshape(height, width)
        # Points behind the IR camera's horizon (w <= 0) must not wrap around into the image.
        behind = (ir_points[2] <= 0).reshape(height, width)
        map_x[behind | ~np.isfinite(map_x)] = -1e6
        map_y[behind | ~np.isfinite(map_y)] = -1e6
        map_x = np.clip(map_x, -1e6, 1e6).astype(np.float32)
        map_y = np.clip(map_y, -1e6, 1e6).astype(np.float32)
        tables = cv2.convertMaps(map_x, map_y, cv2.CV_16SC2)
        with self._lock:
            if len(self._maps) > 8:  # sizes keep changing: do not grow without bound
                self._maps.clear()
            self._maps[key] = tables
        return tables

    def warp(self, ir: np.ndarray, visible_hw: tuple[int, int]) -> np.ndarray:
        """IR image (HxW or HxWxC) -> visible geometry ``visible_hw`` = (height, width).

        Identity and same size returns ``ir`` itself (no copy). Pixels that fall outside the
        IR image are 0.
        """
        ir = np.asarray(ir)
        if ir.ndim not in (2, 3) or ir.shape[0] == 0 or ir.shape[1] == 0:
            raise ValueError(f"IR image must be a non-empty HxW or HxWxC array, got {ir.shape}")
        height, width = int(visible_hw[0]), int(visible_hw[1])
        if height <= 0 or width <= 0:
            raise ValueError(f"visible size must be positive, got {visible_hw}")
        ir_hw = (int(ir.shape[0]), int(ir.shape[1]))
        if self.is_identity:
            if ir_hw == (height, width):
                return ir
            interpolation = (
                cv2.INTER_AREA if ir_hw[0] > height and ir_hw[1] > width else cv2.INTER_LINEAR
            )
            return cv2.resize(ir, (width, height), interpolation=interpolation)
        map_fixed, map_fraction = self._remap_tables(ir_hw, (height, width))
        return cv2.remap(
            ir,
            map_fixed,
            map_fraction,
            interpolation=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0,
        )
