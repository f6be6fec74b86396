"""One frame pair in, fused image + detections + segmentation out.

The node and ``fusion-eval folder`` both call :class:`FusionPipeline`, so they share exactly the
same registration, padding, decoding and colour restore. No ROS here.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

from ros2_bilevel_fusion.core.bundle import (
    DEFAULT_MAX_DETECTIONS,
    DEFAULT_NMS_IOU,
    DEFAULT_SCORE_THRESHOLD,
    FusedStretchSpec,
    ModelBundle,
)
from ros2_bilevel_fusion.core.gain import AutoGain, ContrastFloor, GainControl
from ros2_bilevel_fusion.core.processing import (
    Detections,
    blend,
    colorize_labels,
    decode_detections,
    draw_detections,
    fused_to_u8,
    limit_pixels,
    prepare_inputs,
    restore_colour,
    segmentation_labels,
)
from ros2_bilevel_fusion.core.registration import Registration

if TYPE_CHECKING:  # the core only calls .infer(); backends sit one layer above it
    from ros2_bilevel_fusion.backends.base import InferenceBackend


@dataclass
class PostprocessConfig:
    score_threshold: float
    nms_iou: float
    max_detections: int
    overlay_alpha: float = 0.45
    colour_output: bool = True
    # The published fused image's per-frame stretch (model.yaml ``fused_stretch``; None: off)
    # and the smoothing of its limits across frames (0: each frame on its own, as evaluated).
    fused_stretch: FusedStretchSpec | None = None
    fused_stretch_smoothing: float = 0.0

    @classmethod
    def from_bundle(cls, bundle: ModelBundle) -> PostprocessConfig:
        """Values from model.yaml (the contract's defaults when the bundle has no detector)."""
        detection = bundle.detection
        if detection is None:
            thresholds = (DEFAULT_SCORE_THRESHOLD, DEFAULT_NMS_IOU, DEFAULT_MAX_DETECTIONS)
        else:
            thresholds = (
                float(detection.score_threshold),
                float(detection.nms_iou),
                int(detection.max_detections),
            )
        return cls(*thresholds, fused_stretch=bundle.fused_stretch)


def stretch_fused(
    fused_y: np.ndarray, gain: AutoGain, max_gain: float, floor: ContrastFloor | None = None
) -> np.ndarray:
    """The fused uint8 luma stretched between ``gain``'s limits of this frame, then raised to
    the contrast ``floor`` if one is given; a frame whose limits are closer than 255 /
    ``max_gain`` levels (or that has none) is flat, and any gain would amplify its noise: it is
    returned as it is, floor or not."""
    limits = gain.measure(fused_y)
    if limits is None or not limits[1] - limits[0] >= 255.0 / max_gain:
        return fused_y
    fused_y = gain.apply(fused_y, *limits)
    return floor(fused_y) if floor is not None else fused_y


@dataclass
class FusionResult:
    fused_y: np.ndarray  # uint8 HxW, visible geometry
    fused_bgr: np.ndarray | None  # uint8 HxWx3 (fused Y + visible CrCb); None if colour off
    detections: Detections | None  # None when the bundle has no detector
    seg_labels: np.ndarray | None  # uint8 HxW class ids; None when the bundle has no segmenter
    inference_ms: float  # backend.infer only
    total_ms: float  # registration + preprocessing + inference + postprocessing


class FusionPipeline:
    """Registration, preprocessing, inference and postprocessing of one frame pair.

    ``config`` may be replaced at any time (e.g. by a parameter callback); it is read once per
    frame, so a frame never mixes two configurations. ``process`` raises ValueError for bad
    input and lets backend errors propagate; the caller counts and logs them.

    ``max_input_pixels`` (0 = no limit) bounds the size the network runs at: a larger visible
    image is shrunk (INTER_AREA, aspect kept) and the IR registered straight into that smaller
    geometry; the fused image, segmentation and boxes are mapped back to the full visible
    geometry, and the colour restore uses the full-resolution visible chroma. It bounds the
    time and the memory (graph activations, the runtime's arena) a camera of any size costs.
    """

    def __init__(
        self,
        backend: InferenceBackend,
        registration: Registration | None = None,
        config: PostprocessConfig | None = None,
        max_input_pixels: int = 0,
    ) -> None:
        self.backend = backend
        self.registration = registration if registration is not None else Registration.identity()
        self.config = (
            config if config is not None else PostprocessConfig.from_bundle(backend.bundle)
        )
        self.max_input_pixels = int(max_input_pixels)
        self._scaled_registration: tuple[tuple[object, tuple, tuple], Registration] | None = None
        # The fused stretch's gain keeps its limits across frames (smoothing); it is rebuilt
        # when the configuration's stretch or smoothing changes.
        self._fused_gain: (
            tuple[tuple[FusedStretchSpec, float], AutoGain, ContrastFloor | None] | None
        ) = None

    def reset_state(self) -> None:
        """Forget what earlier frames left behind (the fused stretch's smoothed limits), e.g.
        after a warm-up frame, so that the first real frame is stretched on its own."""
        self._fused_gain = None

    def _fused_gain_for(
        self, spec: FusedStretchSpec, smoothing: float
    ) -> tuple[AutoGain, ContrastFloor | None]:
        key = (spec, float(smoothing))
        if self._fused_gain is None or self._fused_gain[0] != key:
            control = GainControl(spec.low_percentile, spec.high_percentile, smoothing=key[1])
            floor = (
                ContrastFloor(spec.min_std, spec.max_gain, smoothing=key[1])
                if spec.min_std > 0.0 else None
            )
            self._fused_gain = (key, AutoGain(control), floor)
        return self._fused_gain[1], self._fused_gain[2]

    def _registration_for(
        self, image_hw: tuple[int, int], work_hw: tuple[int, int]
    ) -> Registration:
        """The registration into ``work_hw`` (the visible image shrunk from ``image_hw``)."""
        registration = self.registration
        if work_hw == image_hw or registration.is_identity:
            return registration  # identity: same field of view, warp resizes to work_hw
        key = (registration, image_hw, work_hw)
        cached = self._scaled_registration
        if cached is not None and cached[0][0] is key[0] and cached[0][1:] == key[1:]:
            return cached[1]
        sx, sy = work_hw[1] / image_hw[1], work_hw[0] / image_hw[0]
        # Pixel centres at integer coordinates: x_work = (x + 0.5) * sx - 0.5.
        scale = np.array(
            [[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]], np.float64
        )
        scaled = Registration(scale @ registration.homography)
        self._scaled_registration = (key, scaled)
        return scaled

    @property
    def bundle(self) -> ModelBundle:
        return self.backend.bundle

    def process(self, ir_u8: np.ndarray, visible_bgr: np.ndarray) -> FusionResult:
        """IR uint8 HxW (IR geometry, any size) + visible uint8 HxWx3 BGR -> results in the
        visible geometry."""
        start = time.perf_counter()
        config = self.config  # one read per frame: a live replacement applies to the next one
        bundle = self.backend.bundle
        ir_u8 = np.asarray(ir_u8)
        visible_bgr = np.asarray(visible_bgr)
        if ir_u8.dtype != np.uint8 or ir_u8.ndim != 2 or ir_u8.size == 0:
            raise ValueError(
                f"IR must be a non-empty uint8 HxW image, got {ir_u8.dtype} {ir_u8.shape}"
            )
        if (
            visible_bgr.dtype != np.uint8
            or visible_bgr.ndim != 3
            or visible_bgr.shape[2] != 3
            or visible_bgr.size == 0
        ):
            raise ValueError(
                f"visible must be a non-empty uint8 HxWx3 BGR image, got "
                f"{visible_bgr.dtype} {visible_bgr.shape}"
            )
        image_hw = (int(visible_bgr.shape[0]), int(visible_bgr.shape[1]))
        work_hw = limit_pixels(image_hw, self.max_input_pixels)
        visible_work = visible_bgr
        if work_hw != image_hw:
            visible_work = cv2.resize(
                visible_bgr, (work_hw[1], work_hw[0]), interpolation=cv2.INTER_AREA
            )
        registered_ir = self._registration_for(image_hw, work_hw).warp(ir_u8, work_hw)
        # A graph exported for one fixed size runs at that size; results are mapped back below.
        prepared = prepare_inputs(registered_ir, visible_work, bundle)
        del registered_ir, visible_work
        network_hw = prepared.network_hw
        infer_start = time.perf_counter()
        outputs = self.backend.infer(prepared.ir, prepared.visible_ycrcb)
        inference_ms = (time.perf_counter() - infer_start) * 1e3

        if bundle.fused_name not in outputs:
            raise ValueError(f"backend returned no {bundle.fused_name!r} output")
        fused_y = fused_to_u8(outputs[bundle.fused_name], network_hw)
        stretch = config.fused_stretch
        if stretch is None:
            self._fused_gain = None  # switched back on later, it starts afresh
        else:
            gain, floor = self._fused_gain_for(stretch, config.fused_stretch_smoothing)
            fused_y = stretch_fused(fused_y, gain, stretch.max_gain, floor)
        detections = None
        if bundle.detection is not None:
            detections = decode_detections(
                outputs,
                bundle.detection,
                network_hw,
                config.score_threshold,
                config.nms_iou,
                config.max_detections,
            )
        seg_labels = None
        if bundle.segmentation is not None:
            if bundle.segmentation.logits not in outputs:
                raise ValueError(f"backend returned no {bundle.segmentation.logits!r} output")
            seg_labels = segmentation_labels(outputs[bundle.segmentation.logits], network_hw)

        if network_hw != image_hw:
            size = (image_hw[1], image_hw[0])
            fused_y = cv2.resize(fused_y, size, interpolation=cv2.INTER_LINEAR)
            if seg_labels is not None:
                seg_labels = cv2.resize(seg_labels, size, interpolation=cv2.INTER_NEAREST)
            if detections is not None and len(detections):
                scale = np.array(
                    [image_hw[1] / network_hw[1], image_hw[0] / network_hw[0]] * 2, np.float32
                )
                detections = Detections(
                    detections.boxes * scale, detections.scores, detections.class_ids
                )

        fused_bgr = None
        if config.colour_output:
            if network_hw == image_hw:
                visible_ycrcb = prepared.visible_ycrcb_u8  # already computed, same image
            else:
                visible_ycrcb = cv2.cvtColor(visible_bgr, cv2.COLOR_BGR2YCrCb)
            fused_bgr = restore_colour(fused_y, visible_ycrcb)
        return FusionResult(
            fused_y=fused_y,
            fused_bgr=fused_bgr,
            detections=detections,
            seg_labels=seg_labels,
            inference_ms=inference_ms,
            total_ms=(time.perf_counter() - start) * 1e3,
        )


def render_segmentation_color(
    result: FusionResult, palette: Sequence[tuple[int, int, int]]
) -> np.ndarray:
    """BGR colour image of the segmentation labels (palette entries are RGB)."""
    if result.seg_labels is None:
        raise ValueError("this result has no segmentation (the bundle has no segmenter)")
    return colorize_labels(result.seg_labels, palette)


def render_debug(
    result: FusionResult, bundle: ModelBundle, config: PostprocessConfig
) -> np.ndarray:
    """Fused image with the segmentation overlaid (background, class 0, left clear) and boxes."""
    if result.fused_bgr is not None:
        canvas = result.fused_bgr
    else:
        canvas = cv2.cvtColor(result.fused_y, cv2.COLOR_GRAY2BGR)
    if result.seg_labels is not None and bundle.segmentation is not None:
        overlay = colorize_labels(result.seg_labels, bundle.segmentation.palette)
        canvas = blend(canvas, overlay, config.overlay_alpha, mask=result.seg_labels != 0)
    if result.detections is not None and bundle.detection is not None:
        canvas = draw_detections(canvas, result.detections, bundle.detection.classes)
    elif canvas is result.fused_bgr:
        canvas = canvas.copy()  # never hand out the result's own buffer for drawing on
    return canvas
