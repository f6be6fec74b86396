"""Synthetic (procedural) labelled infrared / visible pairs, for tests and smoke training.

Everything here is SYNTHETIC: scenes are drawn, not captured. Each scene has

* a visible background: sky-to-road vertical gradient, stripes (road markings / facades),
  texture noise, a colour tint; at night it is dark, with a few bright lamps.
* an infrared background: a smooth, cool, low-frequency field (blurred noise).
* warm objects: person (tall body + head), car (wide body + cabin + two wheels), bicycle (two
  rings + a frame bar); bright in IR, faint and low-contrast in the dark visible image, clear
  in daylight.
* exact boxes (each object's own footprint) and a segmentation mask (class id per pixel;
  later objects occlude earlier ones).

Items have the same dict format as :class:`training.datasets.PairFolder` and are a pure function
of (seed, index), so tests are repeatable.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
from torch.utils.data import Dataset

from training.datasets import to_sample
from training.models import DETECTION_CLASSES

PERSON, BICYCLE, CAR = (DETECTION_CLASSES.index(c) for c in ("person", "bicycle", "car"))


def _smooth_field(rng: np.random.Generator, height: int, width: int, blur: float) -> np.ndarray:
    field = rng.standard_normal((height, width)).astype(np.float32)
    field = cv2.GaussianBlur(field, (0, 0), blur)
    field -= field.min()
    return field / max(float(field.max()), 1e-6)


def _visible_background(
    rng: np.random.Generator, height: int, width: int, night: bool
) -> np.ndarray:
    rows = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    horizon = rng.uniform(0.3, 0.5)
    sky = np.where(rows < horizon, 0.75 - 0.3 * rows, 0.45 - 0.15 * rows)
    base = np.broadcast_to(sky, (height, width)).copy()
    # stripes: building facades / road markings at a random angle and period
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(8, 30)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    stripes = 0.5 + 0.5 * np.sin((xs * np.cos(angle) + ys * np.sin(angle)) * 2 * np.pi / period)
    base += 0.12 * stripes * (rows >= horizon)
    base += 0.08 * _smooth_field(rng, height, width, 3.0) + 0.03 * rng.standard_normal(
        (height, width)
    ).astype(np.float32)
    tint = rng.uniform(0.8, 1.2, size=3).astype(np.float32)
    rgb = np.clip(base[..., None] * tint, 0, 1)
    if night:
        rgb *= rng.uniform(0.1, 0.25)
        for _ in range(int(rng.integers(1, 4))):  # street lamps
            centre = (int(rng.integers(0, width)), int(rng.integers(0, int(height * horizon) + 1)))
            cv2.circle(rgb, centre, int(rng.integers(2, 6)), (1.0, 0.95, 0.8), -1)
        rgb += 0.02 * rng.standard_normal(rgb.shape).astype(np.float32)  # sensor noise
    return np.clip(rgb, 0, 1).astype(np.float32)


def _draw_person(canvas: np.ndarray, x: int, y: int, h: int, value: Any) -> None:
    """(x, y) = feet centre; body ellipse + head circle."""
    body_w = max(2, h // 6)
    head_r = max(2, h // 9)
    cv2.ellipse(canvas, (x, y - int(0.42 * h)), (body_w, int(0.4 * h)), 0, 0, 360, value, -1)
    cv2.circle(canvas, (x, y - h + head_r), head_r, value, -1)


def _draw_car(canvas: np.ndarray, x: int, y: int, w: int, value: Any) -> None:
    """(x, y) = bottom centre; body box + cabin + two wheels."""
    h = int(0.45 * w)
    wheel = max(2, w // 9)
    cv2.rectangle(canvas, (x - w // 2, y - h + h // 3), (x + w // 2, y - wheel), value, -1)
    cv2.rectangle(canvas, (x - w // 4, y - h), (x + w // 4, y - h + h // 3), value, -1)
    for wx in (x - w // 3, x + w // 3):
        cv2.circle(canvas, (wx, y - wheel), wheel, value, -1)


def _draw_bicycle(canvas: np.ndarray, x: int, y: int, w: int, value: Any) -> None:
    """(x, y) = bottom centre; two rings + frame bar + seat post."""
    r = max(3, w // 4)
    thickness = max(1, w // 20)
    left, right = (x - w // 2 + r, y - r), (x + w // 2 - r, y - r)
    cv2.circle(canvas, left, r, value, thickness)
    cv2.circle(canvas, right, r, value, thickness)
    cv2.line(canvas, left, (x, y - 2 * r), value, thickness + 1)
    cv2.line(canvas, (x, y - 2 * r), right, value, thickness + 1)
    cv2.line(canvas, left, right, value, thickness + 1)


def synthetic_scene(
    rng: np.random.Generator, height: int, width: int, night: bool, max_objects: int = 4
) -> dict[str, np.ndarray]:
    """One SYNTHETIC scene: ir [H,W] float, visible_rgb [H,W,3] float, boxes, labels, mask."""
    visible = _visible_background(rng, height, width, night)
    ir = 0.15 + 0.25 * _smooth_field(rng, height, width, max(height, width) / 16)
    mask = np.zeros((height, width), np.int64)
    boxes, labels = [], []
    scale = min(height, width)
    for _ in range(int(rng.integers(0, max_objects + 1))):
        label = int(rng.choice([PERSON, PERSON, CAR, BICYCLE]))
        footprint = np.zeros((height, width), np.uint8)
        x = int(rng.integers(int(0.1 * width), int(0.9 * width) + 1))
        y = int(rng.integers(int(0.5 * height), height))
        if label == PERSON:
            _draw_person(footprint, x, y, int(rng.uniform(0.2, 0.45) * scale), 1)
        elif label == CAR:
            _draw_car(footprint, x, y, int(rng.uniform(0.25, 0.5) * scale), 1)
        else:
            _draw_bicycle(footprint, x, y, int(rng.uniform(0.15, 0.3) * scale), 1)
        inside = footprint > 0
        if inside.sum() < 16:
            continue
        ys, xs = np.nonzero(inside)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        labels.append(label)
        mask[inside] = label + 1  # segmentation id = detection id + 1 (0 is background)
        warmth = rng.uniform(0.7, 0.95) if label != BICYCLE else rng.uniform(0.45, 0.65)
        ir[inside] = warmth + 0.03 * rng.standard_normal(int(inside.sum()))
        colour = rng.uniform(0.1, 0.9, size=3).astype(np.float32)
        if night:
            # faint: close to the local background, low contrast
            visible[inside] = visible[inside] * 0.8 + 0.05 * colour
        else:
            visible[inside] = colour
    ir = cv2.GaussianBlur(ir.astype(np.float32), (3, 3), 0.7)  # thermal optics are soft
    return {
        "ir": np.clip(ir, 0, 1).astype(np.float32),
        "visible_rgb": np.clip(visible, 0, 1).astype(np.float32),
        "boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
        "labels": np.asarray(labels, np.int64),
        "mask": mask,
    }


class SyntheticPairs(Dataset):
    """``n`` SYNTHETIC labelled pairs of ``size`` (H, W); item i depends only on (seed, i)."""

    def __init__(
        self, n: int, size: tuple[int, int] = (256, 256), seed: int = 0,
        night_fraction: float = 0.7, max_objects: int = 4,
    ) -> None:
        self.n = n
        self.size = size
        self.seed = seed
        self.night_fraction = night_fraction
        self.max_objects = max_objects

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.n:
            raise IndexError(index)
        rng = np.random.default_rng((self.seed, index))
        night = bool(rng.random() < self.night_fraction)
        height, width = self.size
        scene = synthetic_scene(rng, height, width, night, self.max_objects)
        # quantise like real 8-bit cameras, then convert as the runtime does
        ir = np.round(scene["ir"] * 255.0) / 255.0
        rgb8 = np.round(scene["visible_rgb"] * 255.0).astype(np.uint8)
        ycrcb = cv2.cvtColor(rgb8, cv2.COLOR_RGB2YCrCb).astype(np.float32) / 255.0
        name = f"synthetic_{self.seed}_{index:05d}{'N' if night else 'D'}"
        return to_sample(ir, ycrcb, scene["boxes"], scene["labels"], scene["mask"],
                         has_mask=True, has_boxes=True, name=name)
