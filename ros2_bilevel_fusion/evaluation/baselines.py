"""Classical pixel-level fusions, the reference rows printed beside every model.

Trivial fusions score high on several fusion metrics (pixel-wise max beats many published
methods on MI, VIF and Qabf), so a model's numbers mean little without them. All functions take
two 8-bit grey images of the same shape (infrared, visible luminance) and return 8-bit grey.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np


class BaselineInputError(ValueError):
    """The two images are not 8-bit grey of the same shape."""


def _check_pair(ir: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ir = np.asarray(ir)
    y = np.asarray(y)
    for label, image in (("ir", ir), ("y", y)):
        if image.dtype != np.uint8 or image.ndim != 2:
            raise BaselineInputError(
                f"{label}: expected 2-D uint8 grey, got {image.dtype} {image.shape}"
            )
    if ir.shape != y.shape:
        raise BaselineInputError(f"shapes differ: ir {ir.shape}, y {y.shape}")
    return ir, y


def mean_fusion(ir: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pixel-wise average, rounded half up: (ir + y + 1) // 2."""
    ir, y = _check_pair(ir, y)
    return ((ir.astype(np.uint16) + y.astype(np.uint16) + 1) // 2).astype(np.uint8)


def max_fusion(ir: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pixel-wise maximum."""
    ir, y = _check_pair(ir, y)
    return np.maximum(ir, y)


def _laplacian_pyramid(image: np.ndarray, levels: int) -> list[np.ndarray]:
    """Detail levels (finest first) followed by the low-pass base, float32, cv2.pyrDown/pyrUp."""
    pyramid: list[np.ndarray] = []
    current = image.astype(np.float32)
    for _ in range(levels):
        smaller = cv2.pyrDown(current)
        expanded = cv2.pyrUp(smaller, dstsize=(current.shape[1], current.shape[0]))
        pyramid.append(current - expanded)
        current = smaller
    pyramid.append(current)
    return pyramid


def laplacian_pyramid_fusion(ir: np.ndarray, y: np.ndarray, levels: int = 4) -> np.ndarray:
    """Laplacian-pyramid fusion (Burt and Adelson): max-abs on detail levels, average on base.

    ``levels`` detail levels are built with OpenCV's 5x5 Gaussian pyrDown/pyrUp; it is reduced
    for images too small to halve that often. The result is clipped to 0-255 and rounded.
    """
    ir, y = _check_pair(ir, y)
    if levels < 0:
        raise ValueError("levels must be >= 0")
    # Each level halves the image; stop before a side would drop under 2 pixels.
    possible = max(0, int(np.floor(np.log2(max(1, min(ir.shape))))) - 1)
    levels = min(levels, possible)
    pyramid_ir = _laplacian_pyramid(ir, levels)
    pyramid_y = _laplacian_pyramid(y, levels)
    fused_levels = [
        np.where(np.abs(detail_ir) >= np.abs(detail_y), detail_ir, detail_y)
        for detail_ir, detail_y in zip(pyramid_ir[:-1], pyramid_y[:-1], strict=True)
    ]
    current = (pyramid_ir[-1] + pyramid_y[-1]) / 2.0
    for detail in reversed(fused_levels):
        current = cv2.pyrUp(current, dstsize=(detail.shape[1], detail.shape[0])) + detail
    return np.clip(np.round(current), 0, 255).astype(np.uint8)


#: Baselines by the name tables print, in table order.
BASELINES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "mean": mean_fusion,
    "max": max_fusion,
    "laplacian": laplacian_pyramid_fusion,
}
