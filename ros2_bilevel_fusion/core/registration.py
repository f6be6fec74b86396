"""Bring the IR image into the visible camera's pixel geometry with a fixed homography.

Convention: the homography ``H`` maps IR pixel coordinates to visible pixel coordinates,
``[x_v, y_v, 1]^T ~ H [x_i, y_i, 1]^T``, with pixel centres at integer coordinates (OpenCV's
convention). It is the matrix ``cv2.findHomography(ir_points, visible_points)`` returns.

The identity homography means "no registration configured: both cameras see the same field
of view" and an IR image of another size is then resized to the visible size (a strict reading
of the identity would crop or pad instead, which is never what a user who left it unset wants).
"""

from __future__ import annotations

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
        # warpPerspective samples the source through the inverse map; invert once, not per frame.
        # (Precomputed remap tables were measured no faster than this at 640x512.)
        self._visible_to_ir = np.linalg.inv(self.homography)

    @classmethod
    def identity(cls) -> Registration:
        return cls(_IDENTITY)

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
        return cv2.warpPerspective(
            ir,
            self._visible_to_ir,
            (width, height),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0,
        )
