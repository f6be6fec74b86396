"""FusionPipeline with a fake backend (known outputs), plus one run of the fixture ONNX bundle."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest

from ros2_bilevel_fusion.core.bundle import (
    DetectionLevel,
    DetectionSpec,
    FusedStretchSpec,
    InputSpec,
    ModelBundle,
    SegmentationSpec,
)
from ros2_bilevel_fusion.core.gain import ContrastFloor
from ros2_bilevel_fusion.core.pipeline import (
    FusionPipeline,
    FusionResult,
    PostprocessConfig,
    render_debug,
    render_segmentation_color,
)
from ros2_bilevel_fusion.core.processing import prepare_inputs
from ros2_bilevel_fusion.core.registration import Registration, parse_homography

PAD = 16
OFF, ON = -30.0, 30.0
FAKE_DETECTION = DetectionSpec(
    classes=("person", "car"),
    levels=(
        DetectionLevel(8, "cls8", "box8", "ctr8"),
        DetectionLevel(16, "cls16", "box16", "ctr16"),
    ),
    score_threshold=0.4,
    nms_iou=0.6,
    max_detections=7,
)
FAKE_SEGMENTATION = SegmentationSpec(
    classes=("background", "person", "road"), palette=((0, 0, 0), (255, 0, 0), (0, 0, 255))
)


def fake_bundle(detection=FAKE_DETECTION, segmentation=FAKE_SEGMENTATION, **inputs) -> ModelBundle:
    return ModelBundle(
        name="fake",
        onnx_path=Path("/nonexistent/fake.onnx"),
        inputs=InputSpec(pad_multiple=PAD, **inputs),
        detection=detection,
        segmentation=segmentation,
    )


class FakeBackend:
    """Fake backend: fused_y = max(ir, Y); one hot detection cell; seg = 'person' where IR > Y.

    The hot cell (stride 8, row 2, col 3, class 'car', ltrb 1 stride each) decodes to the box
    (20, 12, 36, 28) in network-input pixels.
    """

    name = "fake"

    def __init__(self, bundle: ModelBundle) -> None:
        self.bundle = bundle
        self.calls: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
        self.hot_cell_logit = ON

    def infer(self, ir: np.ndarray, visible_ycrcb: np.ndarray) -> dict[str, np.ndarray]:
        self.calls.append((ir.shape, visible_ycrcb.shape))
        assert ir.dtype == np.float32 and visible_ycrcb.dtype == np.float32
        height, width = ir.shape[2:]
        assert height % PAD == 0 and width % PAD == 0
        outputs = {"fused_y": np.maximum(ir, visible_ycrcb[:, :1])}
        if self.bundle.detection is not None:
            for level in self.bundle.detection.levels:
                grid = (height // level.stride, width // level.stride)
                outputs[level.cls] = np.full((1, 2, *grid), OFF, np.float32)
                outputs[level.box] = np.ones((1, 4, *grid), np.float32)
                outputs[level.ctr] = np.full((1, 1, *grid), ON, np.float32)
            outputs["cls8"][0, 1, 2, 3] = self.hot_cell_logit
        if self.bundle.segmentation is not None:
            logits = np.zeros((1, 3, height, width), np.float32)
            logits[0, 1] = (ir[0, 0] > visible_ycrcb[0, 0]).astype(np.float32) * 2.0 - 1.0
            outputs["seg_logits"] = logits
        return outputs


def synthetic_pair(hw=(50, 70), seed=0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ir = rng.integers(0, 256, hw, dtype=np.uint8)
    visible = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
    return ir, visible


def test_config_from_bundle() -> None:
    config = PostprocessConfig.from_bundle(fake_bundle())
    assert (config.score_threshold, config.nms_iou, config.max_detections) == (0.4, 0.6, 7)
    assert config.overlay_alpha == 0.45 and config.colour_output
    # Without a detector: the contract's defaults, those of a DetectionSpec without the keys.
    generic = PostprocessConfig.from_bundle(fake_bundle(detection=None))
    spec_defaults = DetectionSpec(classes=(), levels=())
    assert (generic.score_threshold, generic.nms_iou, generic.max_detections) == (
        spec_defaults.score_threshold,
        spec_defaults.nms_iou,
        spec_defaults.max_detections,
    )


def test_process_pads_crops_and_fuses() -> None:
    backend = FakeBackend(fake_bundle())
    pipeline = FusionPipeline(backend)
    ir, visible = synthetic_pair()
    result = pipeline.process(ir, visible)
    assert backend.calls == [((1, 1, 64, 80), (1, 3, 64, 80))]
    assert result.fused_y.shape == (50, 70) and result.fused_y.dtype == np.uint8
    luma = cv2.cvtColor(visible, cv2.COLOR_BGR2YCrCb)[..., 0]
    np.testing.assert_array_equal(result.fused_y, np.maximum(ir, luma))
    assert result.fused_bgr is not None and result.fused_bgr.shape == (50, 70, 3)
    back = cv2.cvtColor(result.fused_bgr, cv2.COLOR_BGR2YCrCb)
    assert np.median(np.abs(back[..., 0].astype(int) - result.fused_y.astype(int))) <= 2
    assert result.inference_ms >= 0 and result.total_ms >= result.inference_ms


def test_hot_cell_decodes_to_known_box() -> None:
    pipeline = FusionPipeline(FakeBackend(fake_bundle()))
    result = pipeline.process(*synthetic_pair())
    assert result.detections is not None and len(result.detections) == 1
    np.testing.assert_allclose(result.detections.boxes[0], [20, 12, 36, 28])
    assert result.detections.class_ids.tolist() == [1]


def test_segmentation_argmax_cropped() -> None:
    pipeline = FusionPipeline(FakeBackend(fake_bundle()))
    ir, visible = synthetic_pair()
    result = pipeline.process(ir, visible)
    luma = cv2.cvtColor(visible, cv2.COLOR_BGR2YCrCb)[..., 0]
    # Logits compare the float inputs, so (ir > Y) in uint8 is exactly the expected mask.
    np.testing.assert_array_equal(result.seg_labels, (ir > luma).astype(np.uint8))


def test_config_replaced_live_applies_to_the_next_frame() -> None:
    backend = FakeBackend(fake_bundle())
    backend.hot_cell_logit = 0.0  # score sqrt(0.5 * 1) ~ 0.707
    pipeline = FusionPipeline(backend)
    pair = synthetic_pair()
    assert len(pipeline.process(*pair).detections) == 1
    pipeline.config = dataclasses.replace(pipeline.config, score_threshold=0.8, colour_output=False)
    result = pipeline.process(*pair)
    assert len(result.detections) == 0 and result.fused_bgr is None


def test_ir_is_registered_into_visible_geometry() -> None:
    visible = np.zeros((48, 64, 3), np.uint8)
    small_ir = np.zeros((24, 32), np.uint8)
    small_ir[5, 6] = 255
    resized = FusionPipeline(FakeBackend(fake_bundle())).process(small_ir, visible)
    assert resized.fused_y.shape == (48, 64)
    assert resized.fused_y[10:12, 12:14].max() > 100  # identity: a plain resize, x2

    ir = np.zeros((48, 64), np.uint8)
    ir[20, 30] = 255
    shift = Registration(parse_homography([1, 0, 5, 0, 1, 4, 0, 0, 1]))
    shifted = FusionPipeline(FakeBackend(fake_bundle()), registration=shift).process(ir, visible)
    assert np.unravel_index(np.argmax(shifted.fused_y), (48, 64)) == (24, 35)


def test_bundle_without_semantic_heads() -> None:
    bundle = fake_bundle(detection=None, segmentation=None)
    result = FusionPipeline(FakeBackend(bundle)).process(*synthetic_pair())
    assert result.detections is None and result.seg_labels is None
    debug = render_debug(result, bundle, PostprocessConfig.from_bundle(bundle))
    np.testing.assert_array_equal(debug, result.fused_bgr)
    assert debug is not result.fused_bgr
    with pytest.raises(ValueError):
        render_segmentation_color(result, FAKE_SEGMENTATION.palette)


def test_fixed_size_graph_is_run_at_its_size_and_mapped_back() -> None:
    bundle = fake_bundle(height=32, width=48)
    backend = FakeBackend(bundle)
    result = FusionPipeline(backend).process(*synthetic_pair((64, 96)))
    assert backend.calls == [((1, 1, 32, 48), (1, 3, 32, 48))]
    assert result.fused_y.shape == (64, 96) and result.seg_labels.shape == (64, 96)
    np.testing.assert_allclose(result.detections.boxes[0], [40, 24, 72, 56])  # x2


@pytest.mark.parametrize(
    ("ir", "visible"),
    [
        (np.zeros((10, 10), np.uint16), np.zeros((10, 10, 3), np.uint8)),
        (np.zeros((10, 10, 3), np.uint8), np.zeros((10, 10, 3), np.uint8)),
        (np.zeros((10, 10), np.uint8), np.zeros((10, 10), np.uint8)),
        (np.zeros((0, 10), np.uint8), np.zeros((10, 10, 3), np.uint8)),
    ],
)
def test_bad_input_raises_value_error(ir: np.ndarray, visible: np.ndarray) -> None:
    with pytest.raises(ValueError):
        FusionPipeline(FakeBackend(fake_bundle())).process(ir, visible)


def test_missing_backend_output_raises_value_error() -> None:
    backend = FakeBackend(fake_bundle())
    original = backend.infer
    backend.infer = lambda ir, vis: {k: v for k, v in original(ir, vis).items() if k != "box16"}
    with pytest.raises(ValueError, match="box16"):
        FusionPipeline(backend).process(*synthetic_pair())


def test_render_functions() -> None:
    bundle = fake_bundle()
    pipeline = FusionPipeline(FakeBackend(bundle))
    result = pipeline.process(*synthetic_pair())
    fused_before = result.fused_bgr.copy()
    colour = render_segmentation_color(result, FAKE_SEGMENTATION.palette)
    assert colour.shape == (50, 70, 3)
    person = result.seg_labels == 1
    assert np.all(colour[person] == [0, 0, 255]) and np.all(colour[~person] == 0)
    debug = render_debug(result, bundle, pipeline.config)
    assert debug.shape == (50, 70, 3) and debug.dtype == np.uint8
    np.testing.assert_array_equal(result.fused_bgr, fused_before)  # not drawn on
    assert not np.array_equal(debug, result.fused_bgr)
    # Background pixels below the box and its label keep the fused colour exactly.
    background = ~person
    background[:35] = False
    np.testing.assert_array_equal(debug[background], result.fused_bgr[background])


class OrtFixtureBackend:
    """A minimal onnxruntime runner for the test fixture bundle (single thread)."""

    name = "onnxruntime-test"

    def __init__(self, bundle: ModelBundle) -> None:
        ort = pytest.importorskip("onnxruntime")
        self.bundle = bundle
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(bundle.onnx_path), options, providers=["CPUExecutionProvider"]
        )

    def infer(self, ir: np.ndarray, visible_ycrcb: np.ndarray) -> dict[str, np.ndarray]:
        names = self.bundle.output_names
        values = self.session.run(names, {"ir": ir, "visible_ycrcb": visible_ycrcb})
        return dict(zip(names, values, strict=True))


def test_fixture_onnx_bundle_through_onnxruntime(fixture_bundle: Path) -> None:
    """The pipeline on the real bundle contract: the untrained fixture graph (max fusion)."""
    from ros2_bilevel_fusion.core.bundle import load_bundle

    backend = OrtFixtureBackend(load_bundle(fixture_bundle))
    visible = np.full((70, 90, 3), 40, np.uint8)
    ir = np.full((70, 90), 30, np.uint8)
    ir[20:44, 30:54] = 250  # a hot synthetic square: class 1 fires on bright IR
    result: FusionResult = FusionPipeline(backend).process(ir, visible)
    luma = cv2.cvtColor(visible, cv2.COLOR_BGR2YCrCb)[..., 0]
    np.testing.assert_array_equal(result.fused_y, np.maximum(ir, luma))
    assert result.detections is not None and len(result.detections) >= 1
    best = result.detections.boxes[0]
    centre = ((best[0] + best[2]) / 2, (best[1] + best[3]) / 2)
    assert 30 <= centre[0] <= 54 and 20 <= centre[1] <= 44
    assert result.seg_labels is not None and result.seg_labels.shape == (70, 90)
    assert result.seg_labels[30, 40] != result.seg_labels[5, 5]


def ramp_pair(hw=(64, 128)) -> tuple[np.ndarray, np.ndarray]:
    """Dark visible image, IR brightening from left to right: the fixture's class-1 score
    (bright IR) rises across the image, so one frame has detections of every strength."""
    ir = np.tile(np.linspace(0, 255, hw[1]).astype(np.uint8), (hw[0], 1))
    return ir, np.full((*hw, 3), 20, np.uint8)


def test_score_threshold_comes_from_model_yaml(fixture_bundle: Path, tmp_path: Path) -> None:
    import shutil

    import yaml

    from ros2_bilevel_fusion.core.bundle import load_bundle

    def bundle_with_threshold(threshold: float) -> ModelBundle:
        folder = Path(shutil.copytree(fixture_bundle, tmp_path / f"bundle_{threshold}"))
        data = yaml.safe_load((folder / "model.yaml").read_text())
        data["detection"]["score_threshold"] = threshold
        (folder / "model.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        return load_bundle(folder)

    ir, visible = ramp_pair()
    loose = FusionPipeline(OrtFixtureBackend(bundle_with_threshold(0.05)))
    strict = FusionPipeline(OrtFixtureBackend(bundle_with_threshold(0.42)))
    assert strict.config.score_threshold == 0.42 and loose.config.score_threshold == 0.05
    all_scores = loose.process(ir, visible).detections.scores
    kept = strict.process(ir, visible).detections
    # The ramp gives detections on both sides of 0.42; the bundle's threshold drops the weak.
    assert np.any(all_scores <= 0.42) and np.any(all_scores > 0.42)
    assert len(kept) >= 1 and np.all(kept.scores > 0.42)
    assert len(kept) < len(all_scores)
    np.testing.assert_array_equal(np.sort(kept.scores), np.sort(all_scores[all_scores > 0.42]))


@pytest.mark.parametrize("subset", ["roadscene", "tno"])
def test_real_pair_through_fixture_bundle(
    fixture_bundle: Path, shared_data: Path, subset: str
) -> None:
    """A real pair of odd size (not a multiple of 32) through the fixture graph."""
    from ros2_bilevel_fusion.core.bundle import load_bundle

    ir_path = sorted((shared_data / subset / "ir").iterdir())[0]
    visible_path = next((shared_data / subset / "vi").glob(ir_path.stem + ".*"))
    ir = cv2.imread(str(ir_path), cv2.IMREAD_GRAYSCALE)
    visible = cv2.imread(str(visible_path), cv2.IMREAD_COLOR)
    assert ir is not None and visible is not None
    result = FusionPipeline(OrtFixtureBackend(load_bundle(fixture_bundle))).process(ir, visible)
    hw = visible.shape[:2]
    assert result.fused_y.shape == hw and result.seg_labels.shape == hw
    registered = Registration.identity().warp(ir, hw)
    luma = cv2.cvtColor(visible, cv2.COLOR_BGR2YCrCb)[..., 0]
    np.testing.assert_array_equal(result.fused_y, np.maximum(registered, luma))
    boxes = result.detections.boxes
    assert np.all(boxes[:, 2] <= hw[1]) and np.all(boxes[:, 3] <= hw[0])
    assert result.fused_bgr.shape == (*hw, 3)


# ------------------------------------------------------------------ detection heads
def test_yolox_head_bundle_through_onnxruntime_decodes_known_boxes(tmp_path: Path) -> None:
    """A SYNTHETIC yolox-head ONNX bundle (fixture_bundle.make_yolox_bundle) through the real
    pipeline and onnxruntime backend: one white 8x8 IR block fires one stride-8 cell, one white
    16x16 visible block one stride-16 cell; reg and cls are the fixture's constants, so every
    decoded number follows from the contract's formula."""
    import math

    from fixture_bundle import (
        YOLOX_CLS,
        YOLOX_OBJ_BIAS,
        YOLOX_OBJ_WEIGHT,
        YOLOX_REG,
        make_yolox_bundle,
    )

    from ros2_bilevel_fusion.backends import create_backend
    from ros2_bilevel_fusion.core.bundle import load_bundle

    bundle = load_bundle(make_yolox_bundle(tmp_path / "yolox"))
    assert bundle.detection.head == "yolox" and bundle.inputs.pad_multiple == 16
    pipeline = FusionPipeline(create_backend("onnxruntime", bundle, threads=1))
    hw = (56, 88)  # padded to 64x96
    ir = np.zeros(hw, np.uint8)
    ir[16:24, 40:48] = 255  # stride 8: row 2, col 5
    visible = np.zeros((*hw, 3), np.uint8)
    visible[32:48, 64:80] = 255  # stride 16: row 2, col 4
    result = pipeline.process(ir, visible)

    def expected(stride: int, row: int, col: int) -> tuple[list[float], float, int]:
        dx, dy, log_w, log_h = YOLOX_REG[stride]
        cx, cy = (dx + col) * stride, (dy + row) * stride
        w, h = math.exp(log_w) * stride, math.exp(log_h) * stride
        box = [cx - w / 2, cy - h / 2, min(cx + w / 2, hw[1]), min(cy + h / 2, hw[0])]
        sigmoid = lambda x: 1.0 / (1.0 + math.exp(-x))  # noqa: E731
        class_scores = [
            sigmoid(YOLOX_OBJ_WEIGHT + YOLOX_OBJ_BIAS) * sigmoid(c) for c in YOLOX_CLS[stride]
        ]
        class_id = int(np.argmax(class_scores))
        return box, class_scores[class_id], class_id

    box16, score16, class16 = expected(16, 2, 4)
    box8, score8, class8 = expected(8, 2, 5)
    # Worked out: stride 16 -> (48, 30, 96 clipped to 88, 50), person, 0.99995 * sigmoid(3);
    # stride 8 -> (34, 14, 50, 26), car, 0.99995 * sigmoid(2). The other classes score < 0.3.
    assert box16 == pytest.approx([48, 30, 88, 50]) and box8 == pytest.approx([34, 14, 50, 26])
    detections = result.detections
    assert detections is not None and len(detections) == 2
    assert detections.class_ids.tolist() == [class16, class8] == [0, 1]
    np.testing.assert_allclose(detections.boxes, [box16, box8], atol=1e-4)
    np.testing.assert_allclose(detections.scores, [score16, score8], atol=1e-5)
    luma = cv2.cvtColor(visible, cv2.COLOR_BGR2YCrCb)[..., 0]
    np.testing.assert_array_equal(result.fused_y, np.maximum(ir, luma))
    # The bundle's threshold applies: above the stride-8 score only the stride-16 box is left.
    pipeline.config = dataclasses.replace(pipeline.config, score_threshold=0.9)
    assert pipeline.process(ir, visible).detections.class_ids.tolist() == [0]


def test_a_bundle_without_head_key_decodes_as_an_explicit_fcos_head(
    fixture_bundle: Path, shared_data: Path, tmp_path: Path
) -> None:
    """Bundles written before detection.head existed (no ``head`` key) load as fcos, and on a
    real MSRS pair their raw outputs decode to the same detections as with ``head: fcos``."""
    import yaml

    from ros2_bilevel_fusion.backends import create_backend
    from ros2_bilevel_fusion.core.bundle import load_bundle
    from ros2_bilevel_fusion.core.processing import decode_detections

    data = yaml.safe_load((fixture_bundle / "model.yaml").read_text())
    assert data["detection"]["head"] == "fcos"  # save_bundle writes it now
    folders = {}
    for label, detection in (
        ("old", {k: v for k, v in data["detection"].items() if k != "head"}),
        ("explicit", data["detection"]),
    ):
        folder = tmp_path / label
        folder.mkdir()
        (folder / "model.onnx").symlink_to(fixture_bundle / "model.onnx")
        (folder / "model.yaml").write_text(
            yaml.safe_dump({**data, "detection": detection}, sort_keys=False)
        )
        folders[label] = folder
    old, explicit = load_bundle(folders["old"]), load_bundle(folders["explicit"])
    assert old.detection.head == "fcos" and old.detection.box_encoding == "ltrb_stride"
    assert explicit.detection == old.detection

    ir = cv2.imread(str(shared_data / "msrs" / "ir" / "00001D.png"), cv2.IMREAD_GRAYSCALE)
    visible = cv2.imread(str(shared_data / "msrs" / "vi" / "00001D.png"), cv2.IMREAD_COLOR)
    backend = create_backend("onnxruntime", old, threads=1)
    prepared = prepare_inputs(ir, visible, old)
    outputs = backend.infer(prepared.ir, prepared.visible_ycrcb)
    found = [
        decode_detections(outputs, spec.detection, prepared.network_hw, 0.05, 0.5, 100)
        for spec in (old, explicit)
    ]
    assert len(found[0]) > 0
    for a, b in zip(found[0].__dict__.values(), found[1].__dict__.values(), strict=True):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------ big frames
def test_limit_pixels_keeps_aspect_and_bound() -> None:
    from ros2_bilevel_fusion.core.processing import limit_pixels

    assert limit_pixels((3072, 4096), 0) == (3072, 4096)
    assert limit_pixels((480, 640), 2_100_000) == (480, 640)
    h, w = limit_pixels((3072, 4096), 2_100_000)
    assert h * w <= 2_100_000 and h * w > 2_090_000
    assert abs(w / h - 4096 / 3072) < 0.002
    assert limit_pixels((1, 10_000), 100) == (1, 100)


def test_input_above_the_pixel_limit_runs_shrunk_and_maps_back() -> None:
    """A synthetic 4x-too-large pair runs at half size; fused image, segmentation and boxes
    come back in the full visible geometry."""
    backend = FakeBackend(fake_bundle())
    ir = np.zeros((192, 256), np.uint8)
    ir[100:140, 60:120] = 255  # hot block (fake seg: 'person' where IR > Y)
    visible = np.full((192, 256, 3), 30, np.uint8)
    result = FusionPipeline(backend, max_input_pixels=96 * 128).process(ir, visible)
    assert backend.calls == [((1, 1, 96, 128), (1, 3, 96, 128))]
    assert result.fused_y.shape == (192, 256) and result.fused_bgr.shape == (192, 256, 3)
    assert result.seg_labels.shape == (192, 256)
    assert result.seg_labels[120, 90] == 1 and result.seg_labels[20, 20] == 0
    assert result.fused_y[110:130, 70:110].min() > 200 and result.fused_y[:80].max() < 60
    # The fake's hot cell decodes to (20, 12, 36, 28) at network size: x2 in the full image.
    np.testing.assert_allclose(result.detections.boxes[0], [40, 24, 72, 56])
    unlimited = FusionPipeline(FakeBackend(fake_bundle()), max_input_pixels=0).process(ir, visible)
    assert unlimited.fused_y.shape == (192, 256)


def test_registration_follows_the_shrunk_geometry() -> None:
    """A shifting homography applied at half size puts the IR point where it lands at full
    size (to within the half-size pixel)."""
    visible = np.zeros((96, 128, 3), np.uint8)
    ir = np.zeros((96, 128), np.uint8)
    ir[40:44, 60:64] = 255
    shift = Registration(parse_homography([1, 0, 10, 0, 1, 8, 0, 0, 1]))
    full = FusionPipeline(FakeBackend(fake_bundle()), registration=shift).process(ir, visible)
    half = FusionPipeline(
        FakeBackend(fake_bundle()), registration=shift, max_input_pixels=48 * 64
    ).process(ir, visible)

    def centre(image: np.ndarray) -> np.ndarray:
        ys, xs = np.nonzero(image > 100)
        return np.array([ys.mean(), xs.mean()])

    np.testing.assert_allclose(centre(full.fused_y), [49.5, 71.5])
    np.testing.assert_allclose(centre(half.fused_y), centre(full.fused_y), atol=1.0)


# ------------------------------------------------------------- the fused image's stretch


def dim_pair(hw=(48, 64), low=60, high=140, seed=3) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic dim pair: IR and visible grey levels in [low, high], so the fake network's
    fused image (their max) uses about a third of the 8-bit range."""
    rng = np.random.default_rng(seed)
    ir = rng.integers(low, high + 1, hw, dtype=np.uint8)
    grey = rng.integers(low, high + 1, hw, dtype=np.uint8)
    return ir, cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)


def test_fused_stretch_from_the_bundle_uses_the_full_range_and_keeps_the_order() -> None:
    bundle = dataclasses.replace(fake_bundle(), fused_stretch=FusedStretchSpec(0.0, 100.0))
    assert PostprocessConfig.from_bundle(bundle).fused_stretch == FusedStretchSpec(0.0, 100.0)
    ir, visible = dim_pair()
    plain = FusionPipeline(FakeBackend(fake_bundle())).process(ir, visible).fused_y
    stretched = FusionPipeline(FakeBackend(bundle)).process(ir, visible).fused_y
    assert 60 <= plain.min() and plain.max() <= 141  # the dim input's range, unstretched
    assert stretched.min() == 0 and stretched.max() == 255
    # a linear map of the same image: the pixels' order is kept, and so is their correlation
    order = np.argsort(plain.ravel(), kind="stable")
    assert np.all(np.diff(stretched.ravel()[order].astype(int)) >= 0)
    assert np.corrcoef(plain.ravel(), stretched.ravel())[0, 1] > 0.999


def test_fused_stretch_keeps_a_flat_frame_and_can_be_switched_off() -> None:
    spec = FusedStretchSpec(0.0, 100.0, max_gain=4.0)
    bundle = dataclasses.replace(fake_bundle(), fused_stretch=spec)
    pipeline = FusionPipeline(FakeBackend(bundle))
    ir, visible = dim_pair(low=100, high=150)  # 50 grey levels < 255 / 4: would be noise x5
    np.testing.assert_array_equal(
        pipeline.process(ir, visible).fused_y,
        FusionPipeline(FakeBackend(fake_bundle())).process(ir, visible).fused_y,
    )
    ir, visible = dim_pair()
    pipeline.config = dataclasses.replace(pipeline.config, fused_stretch=None)
    assert pipeline.process(ir, visible).fused_y.max() <= 141


def test_fused_stretch_smoothing_carries_limits_across_frames() -> None:
    bundle = dataclasses.replace(fake_bundle(), fused_stretch=FusedStretchSpec(0.0, 100.0))
    pipeline = FusionPipeline(FakeBackend(bundle))
    pipeline.config = dataclasses.replace(pipeline.config, fused_stretch_smoothing=0.5)
    pipeline.process(*dim_pair(low=0, high=100))
    second = pipeline.process(*dim_pair(low=100, high=200, seed=4)).fused_y
    # Limits half-way between the two frames' (about 50 and 150): the brighter frame (the max
    # of two uniform draws on [100, 200]) starts near mid-grey and saturates above 150, which
    # is 1 - 0.5^2 = 3/4 of its pixels.
    assert second.min() > 100
    assert 0.65 < np.mean(second == 255) < 0.85
    # a new smoothing value starts afresh: the next frame is stretched on its own limits
    pipeline.config = dataclasses.replace(pipeline.config, fused_stretch_smoothing=0.0)
    third = pipeline.process(*dim_pair(low=100, high=200, seed=4)).fused_y
    assert third.min() == 0 and np.mean(third == 255) < 0.05


def test_contrast_floor_lifts_a_flat_frame_and_leaves_a_contrasted_one() -> None:
    """Synthetic frames: a flat one (std ~10 grey levels) that already spans 0..255 through two
    outlier pixels, so min-max leaves it as it is, and a contrasted one (std ~70)."""
    rng = np.random.default_rng(5)
    flat = np.clip(rng.normal(100, 10, (60, 80)), 0, 255).astype(np.uint8)
    flat[0, 0], flat[0, 1] = 0, 255
    floor = ContrastFloor(min_std=40.0, max_gain=8.0)
    lifted = floor(flat)
    assert 35.0 < float(lifted.std()) <= 41.0 and abs(float(lifted.mean()) - flat.mean()) < 2
    order = np.argsort(flat.ravel(), kind="stable")
    assert np.all(np.diff(lifted.ravel()[order].astype(int)) >= 0)  # a monotone map
    capped = ContrastFloor(min_std=40.0, max_gain=2.0)(flat)
    assert 18.0 < float(capped.std()) < 22.0  # gain 2, not 4
    contrasted = rng.integers(0, 256, (60, 80), dtype=np.uint8)
    assert ContrastFloor(min_std=40.0, max_gain=8.0)(contrasted) is contrasted
    constant = np.full((4, 4), 7, np.uint8)
    np.testing.assert_array_equal(floor(constant), constant)
    with pytest.raises(ValueError):
        ContrastFloor(min_std=0.0, max_gain=4.0)


def test_fused_stretch_with_a_floor_in_the_pipeline() -> None:
    spec = FusedStretchSpec(0.0, 100.0, min_std=80.0)
    bundle = dataclasses.replace(fake_bundle(), fused_stretch=spec)
    ir, visible = dim_pair()
    plain = FusionPipeline(FakeBackend(fake_bundle())).process(ir, visible).fused_y
    floored = FusionPipeline(FakeBackend(bundle)).process(ir, visible).fused_y
    minmax_only = dataclasses.replace(bundle, fused_stretch=FusedStretchSpec(0.0, 100.0))
    stretched = FusionPipeline(FakeBackend(minmax_only)).process(ir, visible).fused_y
    # min-max gives std ~62 here; the floor lifts it further (clipping keeps it under 80)
    assert plain.std() < stretched.std() < 70.0 < floored.std() <= 80.0


def test_fused_stretch_state_is_reset_and_flat_frames_get_no_floor() -> None:
    """Synthetic frames. (1) With smoothing, a warm-up frame's limits would seed the next
    frame's; reset_state (called after the node's warm-up) and switching the stretch off both
    start it afresh. (2) A frame under the max_gain guard is kept whole, floor or not."""
    spec = FusedStretchSpec(0.0, 100.0)
    bundle = dataclasses.replace(fake_bundle(), fused_stretch=spec)
    pipeline = FusionPipeline(FakeBackend(bundle))
    pipeline.config = dataclasses.replace(pipeline.config, fused_stretch_smoothing=0.9)
    warm_ir = np.linspace(0, 255, 48 * 64).reshape(48, 64).astype(np.uint8)
    pipeline.process(warm_ir, cv2.cvtColor(warm_ir, cv2.COLOR_GRAY2BGR))
    seeded = pipeline.process(*dim_pair()).fused_y
    assert seeded.min() > 30 and seeded.max() < 200  # still near the ramp's (0, 255)
    pipeline.reset_state()
    fresh = pipeline.process(*dim_pair()).fused_y
    assert (fresh.min(), fresh.max()) == (0, 255)
    pipeline.process(warm_ir, cv2.cvtColor(warm_ir, cv2.COLOR_GRAY2BGR))
    on = pipeline.config
    pipeline.config = dataclasses.replace(on, fused_stretch=None)
    pipeline.process(*dim_pair())
    pipeline.config = on
    again = pipeline.process(*dim_pair()).fused_y
    assert (again.min(), again.max()) == (0, 255)

    floored = dataclasses.replace(
        fake_bundle(), fused_stretch=FusedStretchSpec(0.0, 100.0, max_gain=4.0, min_std=60.0)
    )
    ir, visible = dim_pair(low=100, high=150)  # ~50 levels of range: under 255 / 4
    np.testing.assert_array_equal(
        FusionPipeline(FakeBackend(floored)).process(ir, visible).fused_y,
        FusionPipeline(FakeBackend(fake_bundle())).process(ir, visible).fused_y,
    )
