"""training.models and training.colour: shapes, ranges, parameter count, OpenCV colour parity."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from training.colour import bgr_to_ycrcb, rgb_to_ycrcb, ycrcb_to_bgr, ycrcb_to_rgb
from training.models import (
    DETECTION_CLASSES,
    SEGMENTATION_CLASSES,
    SEGMENTATION_PALETTE,
    ExportModel,
    build_detector,
    build_discriminator,
    build_export_model,
    build_fusion,
    build_segmenter,
    conv_macs,
    count_parameters,
    decode_detections_torch,
)

torch.set_num_threads(1)
FULL_ARCHITECTURE = {"fusion": "realtime", "detector": {"num_classes": 3},
                     "segmenter": {"num_classes": 4}}


def synthetic_rgb8(height: int = 37, width: int = 53, seed: int = 0) -> np.ndarray:
    """Synthetic random colours plus the extremes (pure primaries, black, white)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    image[0, :8] = [[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255],
                    [255, 255, 0], [0, 255, 255], [255, 0, 255]]
    return image


def to_tensor(image_hwc: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image_hwc.astype(np.float32) / 255.0).permute(2, 0, 1)[None]


def test_rgb_to_ycrcb_matches_opencv_8bit() -> None:
    rgb8 = synthetic_rgb8()
    expected = to_tensor(cv2.cvtColor(rgb8, cv2.COLOR_RGB2YCrCb))
    got = rgb_to_ycrcb(to_tensor(rgb8))
    # OpenCV rounds to uint8 (fixed point); we do not: within a level, half a level on average.
    # A chroma offset of 0.5 instead of 128/255 would be off by 1.35 levels here.
    assert (got - expected).abs().max().item() < 1.0 / 255.0
    assert (got - expected).abs().mean().item() < 0.3 / 255.0


def test_ycrcb_to_rgb_matches_opencv_8bit() -> None:
    ycrcb8 = cv2.cvtColor(synthetic_rgb8(seed=1), cv2.COLOR_RGB2YCrCb)
    expected = to_tensor(cv2.cvtColor(ycrcb8, cv2.COLOR_YCrCb2RGB))
    got = ycrcb_to_rgb(to_tensor(ycrcb8))
    assert (got - expected).abs().max().item() < 1.0 / 255.0


def test_bgr_variants_match_opencv_and_round_trip() -> None:
    bgr8 = synthetic_rgb8(seed=2)
    expected = to_tensor(cv2.cvtColor(bgr8, cv2.COLOR_BGR2YCrCb))
    ycrcb = bgr_to_ycrcb(to_tensor(bgr8))
    assert (ycrcb - expected).abs().max().item() < 1.0 / 255.0
    assert (ycrcb_to_bgr(ycrcb) - to_tensor(bgr8)).abs().max().item() < 2.0 / 255.0


def test_paper_fusion_has_the_papers_parameter_count() -> None:
    # conv 2->64 (1216) + 2 x dense block (5 dilated convs 64+32i -> 32, 1x1 224 -> 64:
    # 198,880 each) + 64->32 (18,464) + 32->1 (289) + 12 single-slope PReLUs = 417,741
    assert count_parameters(build_fusion("paper")) == 417_741


@pytest.mark.parametrize("name", ["paper", "realtime"])
@pytest.mark.parametrize("hw", [(64, 96), (37, 53)])
def test_fusion_output_shape_and_range(name: str, hw: tuple[int, int]) -> None:
    torch.manual_seed(0)
    fusion = build_fusion(name).eval()
    ir = torch.rand(2, 1, *hw)
    vis_y = torch.rand(2, 1, *hw)
    with torch.no_grad():
        fused = fusion(ir, vis_y)
    assert fused.shape == (2, 1, *hw)
    assert torch.isfinite(fused).all()
    assert fused.min() >= 0.0 and fused.max() <= 1.0


def conv_macs_per_pixel(module: torch.nn.Module, hw: tuple[int, int] = (96, 128)) -> float:
    """Multiply-accumulates of every Conv2d per input pixel (a speed proxy without timing)."""
    return conv_macs(module, torch.rand(1, 1, *hw), torch.rand(1, 1, *hw)) / (hw[0] * hw[1])


def test_realtime_fusion_is_hundreds_of_times_cheaper_than_paper() -> None:
    # bench/bench_realtime_fusion.py measures the speed; this guards the budget in CI:
    # paper ~417k MAC per pixel, realtime ~0.7k (0.2 GMAC at 640x480)
    paper = conv_macs_per_pixel(build_fusion("paper"))
    realtime = conv_macs_per_pixel(build_fusion("realtime"))
    assert paper == pytest.approx(417_600, rel=0.01)
    assert realtime < 1_000
    assert paper / realtime > 300


def test_realtime_fusion_starts_as_a_weighted_average() -> None:
    # detail conv is zero-initialised: each output pixel lies between its IR and Y values
    fusion = build_fusion("realtime").eval()
    ir = torch.rand(1, 1, 32, 32)
    vis_y = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        fused = fusion(ir, vis_y)
    assert (fused >= torch.minimum(ir, vis_y) - 1e-6).all()
    assert (fused <= torch.maximum(ir, vis_y) + 1e-6).all()


def test_realtime_eval_path_equals_training_path() -> None:
    torch.manual_seed(0)
    fusion = build_fusion("realtime")
    torch.nn.init.normal_(fusion.detail_out.weight, std=0.1)  # make the detail path matter
    with torch.no_grad():
        fusion.detail_in[1].weight.fill_(0.1)
        ir, vis_y = torch.rand(1, 1, 40, 56), torch.rand(1, 1, 40, 56)
        train_output = fusion.train()(ir, vis_y)
        torch.testing.assert_close(fusion.eval()(ir, vis_y), train_output)


def test_unknown_fusion_name_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown fusion"):
        build_fusion("huge")


def test_discriminator_scores_any_size() -> None:
    critic = build_discriminator()
    assert critic(torch.rand(3, 1, 64, 64)).shape == (3,)
    assert critic(torch.rand(2, 1, 48, 80)).shape == (2,)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in critic.modules())


@pytest.mark.parametrize("hw", [(96, 128), (100, 70)])
def test_detector_head_shapes_per_stride(hw: tuple[int, int]) -> None:
    detector = build_detector(3).eval()
    assert detector.strides == (8, 16, 32)
    with torch.no_grad():
        outputs = detector(torch.rand(2, 3, *hw))
    assert len(outputs) == 3
    for (cls, box, ctr), stride in zip(outputs, detector.strides, strict=True):
        expected_hw = (-(-hw[0] // stride), -(-hw[1] // stride))
        assert cls.shape == (2, 3, *expected_hw)
        assert box.shape == (2, 4, *expected_hw)
        assert ctr.shape == (2, 1, *expected_hw)
        assert (box >= 0).all()


def test_decode_detections_recovers_a_planted_box() -> None:
    # hand-made head outputs: one confident cell at stride 8, (i, j) = (2, 3), ltrb 1,2,3,4
    strides = (8, 16, 32)
    outputs = []
    for stride in strides:
        h, w = 64 // stride, 64 // stride
        cls = torch.full((1, 3, h, w), -10.0)
        box = torch.ones(1, 4, h, w)
        ctr = torch.full((1, 1, h, w), -10.0)
        outputs.append((cls, box, ctr))
    outputs[0][0][0, 2, 2, 3] = 10.0
    outputs[0][1][0, :, 2, 3] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    outputs[0][2][0, 0, 2, 3] = 10.0
    (result,) = decode_detections_torch(outputs, strides, score_threshold=0.5)
    cx, cy = 3.5 * 8, 2.5 * 8
    assert result["labels"].tolist() == [2]
    torch.testing.assert_close(
        result["boxes"][0], torch.tensor([cx - 8, cy - 16, cx + 24, cy + 32])
    )


@pytest.mark.parametrize("hw", [(64, 96), (50, 70)])
def test_segmenter_logits_at_input_size(hw: tuple[int, int]) -> None:
    segmenter = build_segmenter(4).eval()
    with torch.no_grad():
        logits = segmenter(torch.rand(1, 3, *hw))
    assert logits.shape == (1, 4, *hw)


def test_export_model_outputs_in_bundle_order() -> None:
    torch.manual_seed(0)
    model = build_export_model(FULL_ARCHITECTURE).eval()
    assert model.output_names == [
        "fused_y",
        "det_cls_s8", "det_box_s8", "det_ctr_s8",
        "det_cls_s16", "det_box_s16", "det_ctr_s16",
        "det_cls_s32", "det_box_s32", "det_ctr_s32",
        "seg_logits",
    ]
    ir = torch.rand(1, 1, 64, 96)
    visible = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        outputs = model(ir, visible)
    assert len(outputs) == 11
    assert outputs[0].shape == (1, 1, 64, 96)
    assert outputs[1].shape == (1, 3, 8, 12) and outputs[9].shape == (1, 1, 2, 3)
    assert outputs[10].shape == (1, 4, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(outputs[0], model.fusion(ir, visible[:, :1]))


def test_export_model_from_parts_and_fusion_only() -> None:
    fusion = build_fusion("paper")
    architecture = {"fusion": "paper", "detector": None, "segmenter": None}
    model = ExportModel.from_parts(fusion, None, None, architecture)
    assert model.output_names == ["fused_y"]
    assert len(model(torch.rand(1, 1, 32, 32), torch.rand(1, 3, 32, 32))) == 1
    # state_dict round trip through build_export_model (what export.model_from_torchscript does)
    rebuilt = build_export_model(architecture)
    rebuilt.load_state_dict(model.state_dict())


def test_export_model_rejects_parts_that_contradict_the_architecture() -> None:
    with pytest.raises(ValueError, match="detector"):
        ExportModel.from_parts(build_fusion("realtime"), build_detector(2), None,
                               {"fusion": "realtime", "detector": {"num_classes": 3}})
    with pytest.raises(ValueError, match="segmenter"):
        ExportModel.from_parts(build_fusion("realtime"), None, build_segmenter(4),
                               {"fusion": "realtime"})
    with pytest.raises(ValueError, match="fusion"):
        build_export_model({"fusion": "big"})


def test_class_lists_are_consistent() -> None:
    assert DETECTION_CLASSES == ("person", "bicycle", "car")
    assert SEGMENTATION_CLASSES[1:] == DETECTION_CLASSES
    assert len(SEGMENTATION_PALETTE) == len(SEGMENTATION_CLASSES)


def test_yolox_detector_sees_the_fused_colour_image_as_bgr_0_255() -> None:
    """SYNTHETIC inputs, fresh (random) YOLOX weights: ExportModel's yolox outputs are exactly
    YoloxNano run on the fused colour image converted to BGR 0-255, in bundle order; the
    architecture dict round-trips the arch, and an arch mismatch is refused."""
    from training.colour import colour_image
    from training.models import ExportModel, YoloxDetector, build_export_model, build_fusion

    torch.manual_seed(0)
    arch = {"fusion": "realtime", "detector": {"num_classes": 3, "arch": "yolox_nano"},
            "segmenter": None}
    model = build_export_model(arch).eval()
    assert isinstance(model.detector, YoloxDetector)
    assert model.architecture["detector"] == {"num_classes": 3, "arch": "yolox_nano"}
    assert model.output_names == ["fused_y"] + [
        f"det_{p}_s{s}" for s in (8, 16, 32) for p in ("reg", "obj", "cls")
    ]
    ir = torch.rand(1, 1, 64, 96)
    ycrcb = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        outputs = model(ir, ycrcb)
        rgb = colour_image(model.fusion(ir, ycrcb[:, :1]), ycrcb)
        expected = [t for level in model.detector.net(rgb.flip(1) * 255.0) for t in level]
    assert len(outputs) == 1 + 9
    for got, want in zip(outputs[1:], expected, strict=True):
        torch.testing.assert_close(got, want)
    assert outputs[1].shape == (1, 4, 8, 12) and outputs[3].shape == (1, 3, 8, 12)
    fcos_arch = {**arch, "detector": {"num_classes": 3}}
    with pytest.raises(ValueError, match="detector does not match"):
        ExportModel(build_fusion("realtime"), model.detector, None, fcos_arch)
