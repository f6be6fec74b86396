"""YOLOX-Nano as the training pipeline's detector, on REAL data (skips without ../shared).

* the config section loads (existing configs stay fcos) and yolox_semantic.yaml is valid;
* a YOLOX ExportModel with the COCO weights exports a bundle with head yolox, YoloxLevel levels
  in core.bundle's order, the weights' provenance, ORT parity and a TorchScript file that
  rebuilds the model (export.checkpoint_from_bundle);
* a short REAL fine-tune (CI, ~20 s on one thread): pretrained YOLOX-Nano (person, bicycle,
  car) on the IR images of 4 msrs_det TRAIN-range pairs at full size (640x480), batch 2, 60 Adam
  steps (lr 2e-5) of training.yolox_loss; the loss on those pairs falls and AP@0.5 on them
  rises. Full frames, not crops: with 256 px random-scale crops the full-frame numbers moved
  little and not monotonically within 120 steps (crops show other object sizes than the
  evaluated frames); with full frames the test measures the loss and its assignment, not the
  augmentation. Measured: loss 4.49 -> ~2.0, mAP@0.5 0.21 -> ~0.9 (person 0.64 -> ~0.86).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ros2_bilevel_fusion.core.bundle import YoloxLevel, load_bundle  # noqa: E402
from ros2_bilevel_fusion.evaluation.ground_truth import MSRS_ANNOTATIONS  # noqa: E402
from ros2_bilevel_fusion.evaluation.semantic_metrics import detection_map  # noqa: E402
from ros2_bilevel_fusion.evaluation.splits import split_folder, split_names  # noqa: E402
from training import export  # noqa: E402
from training.config import load_config  # noqa: E402
from training.datasets import PairFolder, collate_pairs  # noqa: E402
from training.evaluation import detect  # noqa: E402
from training.models import (  # noqa: E402
    DETECTION_CLASSES,
    ExportModel,
    build_detector,
    build_fusion,
)
from training.yolox import YOLOX_NANO_ONNX_SHA256  # noqa: E402
from training.yolox_loss import yolox_loss  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
WEIGHTS = REPO.parent / "shared" / "weights" / "yolox_nano_coco.onnx"
needs_weights = pytest.mark.skipif(not WEIGHTS.is_file(), reason="no ../shared/weights")
needs_data = pytest.mark.skipif(
    not (DATA / "msrs_det" / "ir").is_dir() or not WEIGHTS.is_file(),
    reason="no ../shared/data/msrs_det or weights",
)
STEPS = 60
ARCH = {
    "fusion": "realtime",
    "detector": {"num_classes": 3, "arch": "yolox_nano"},
    "segmenter": None,
}


FCOS_CONFIGS = frozenset({
    "default", "default_semantic", "smoke", "ablation_fusion_only", "ablation_joint",
    "ablation_bilevel_fixed", "ablation_bilevel_dynamic",
})


def test_existing_configs_keep_fcos_and_yolox_semantic_is_valid():
    for path in sorted((REPO / "training" / "configs").glob("*.yaml")):
        config = load_config(path)
        # the FCOS era's configs stay FCOS; every config since stage 3 is a YOLOX stage
        fcos_stage = path.stem in FCOS_CONFIGS
        expected = "fcos" if fcos_stage else "yolox_nano"
        assert config.detector.arch == expected, path
    config = load_config(REPO / "training" / "configs" / "yolox_semantic.yaml")
    assert config.detector.pretrained and config.detector.keep_classes == [0, 1, 2]
    assert config.data.msrs_det_split == "msrs_det:train"
    assert config.data.msrs_det_eval_split == "msrs_det:val"
    with pytest.raises(ValueError, match="detector.arch"):
        load_config(REPO / "training/configs/smoke.yaml", ["detector.arch=yolo"])
    with pytest.raises(ValueError, match="unknown config key"):
        load_config(REPO / "training/configs/smoke.yaml", ["detector.archh=fcos"])
    with pytest.raises(ValueError, match="train"):
        load_config(REPO / "training/configs/smoke.yaml", ["data.msrs_det_split=msrs_det:test"])


@needs_weights
def test_yolox_bundle_head_levels_provenance_parity_and_torchscript(tmp_path):
    torch.manual_seed(0)
    detector = build_detector(3, "yolox_nano", WEIGHTS, [0, 1, 2])
    model = ExportModel(build_fusion("realtime"), detector, None, ARCH).eval()
    checkpoint = {
        "architecture": ARCH,
        "fusion": model.fusion.state_dict(),
        "detector": detector.state_dict(),
        "segmenter": None,
        "step": 0,
        "detector_provenance": {
            "pretrained_detector": WEIGHTS.name,
            "pretrained_detector_sha256": YOLOX_NANO_ONNX_SHA256,
            "pretrained_detector_licence": "Apache-2.0 (YOLOX, Megvii)",
        },
    }
    torch.save(checkpoint, tmp_path / "last.pt")
    model, report = export.export_checkpoint(
        tmp_path / "last.pt", tmp_path / "bundle", score_threshold=0.4,
        parity_sizes=[(256, 320)],
    )
    assert not export.parity_failed(report), report
    bundle = load_bundle(tmp_path / "bundle" / "model.yaml")
    assert bundle.detection.head == "yolox"
    assert bundle.detection.classes == DETECTION_CLASSES
    assert all(isinstance(level, YoloxLevel) for level in bundle.detection.levels)
    assert [lv.stride for lv in bundle.detection.levels] == [8, 16, 32]
    assert bundle.output_names == model.output_names
    assert model.output_names[1:4] == ["det_reg_s8", "det_obj_s8", "det_cls_s8"]
    assert bundle.detection.score_threshold == pytest.approx(0.4)
    assert bundle.provenance["pretrained_detector_sha256"] == YOLOX_NANO_ONNX_SHA256
    assert bundle.provenance["pretrained_detector_licence"].startswith("Apache-2.0")
    assert bundle.provenance["architecture"]["detector"]["arch"] == "yolox_nano"
    # the TorchScript file rebuilds the same model (what init_from: .../model.pt loads)
    rebuilt = export.checkpoint_from_bundle(tmp_path / "bundle" / "model.pt")
    for key, value in detector.state_dict().items():
        torch.testing.assert_close(rebuilt["detector"][key], value)


def _pairs(names, train):
    return PairFolder(
        split_folder("msrs_det:train", DATA), names=names, labels_dir="labels",
        label_annotations=MSRS_ANNOTATIONS, crop=256, train=train, seed=0,
    )


def _ir_rgb(batch):
    return batch["ir"].repeat(1, 3, 1, 1)


def _score(detector, items):
    """Loss (full size, eval mode, no grad) and AP@0.5 of the detector on ``items``."""
    detector.eval()
    predictions, truths, total = [], [], 0.0
    with torch.no_grad():
        for item in items:
            rgb = _ir_rgb(collate_pairs([item]))
            target = [{"boxes": item["boxes"], "labels": item["labels"]}]
            total += float(yolox_loss(detector(rgb), target, detector.strides, rgb.shape[-2:])[0])
            predictions.append(detect(detector, rgb, score_threshold=0.01)[0])
            truths.append({"boxes": item["boxes"].numpy(), "labels": item["labels"].numpy()})
    detector.train()
    scores = detection_map(predictions, truths, DETECTION_CLASSES)
    return total / len(items), float(scores["mAP50"]), float(scores["per_class_AP50"]["person"])


@needs_data
def test_real_yolox_fine_tune_lowers_loss_and_raises_ap_on_train_pairs():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        names = split_names("msrs_det:train", DATA)
        # 4 train-range pairs with several objects each (spread over the range)
        chosen = [n for n in names[::20]
                  if len(_pairs([n], False)[0]["boxes"]) >= 3][:4]
        assert len(chosen) == 4
        full = [_pairs(chosen, False)[i] for i in range(4)]
        torch.manual_seed(0)
        detector = build_detector(3, "yolox_nano", WEIGHTS, [0, 1, 2]).train()
        loss0, map0, person0 = _score(detector, full)
        optimiser = torch.optim.Adam(detector.parameters(), lr=2e-5)
        start = time.perf_counter()
        rng = np.random.default_rng(0)
        for _ in range(STEPS):
            batch = collate_pairs([full[int(i)] for i in rng.integers(0, 4, 2)])
            rgb = _ir_rgb(batch)
            targets = [{"boxes": b, "labels": lab}
                       for b, lab in zip(batch["boxes"], batch["labels"], strict=True)]
            loss, _ = yolox_loss(detector(rgb), targets, detector.strides, rgb.shape[-2:])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        seconds = time.perf_counter() - start
        loss1, map1, person1 = _score(detector, full)
        print(
            f"\nYOLOX fine-tune on {chosen}: loss {loss0:.3f} -> {loss1:.3f}, "
            f"mAP@0.5 {map0:.3f} -> {map1:.3f}, person AP@0.5 {person0:.3f} -> {person1:.3f}, "
            f"{STEPS} steps in {seconds:.1f} s"
        )
        assert loss1 < 0.7 * loss0
        assert map1 > map0 + 0.2
        assert person1 > person0
    finally:
        torch.set_num_threads(threads)


@needs_data
def test_yolox_semantic_data_trains_on_the_train_range_only_and_evaluates_on_val():
    from ros2_bilevel_fusion.evaluation.splits import MSRS_HOLDOUT_NAMES
    from training.data import build_data

    config = load_config(REPO / "training" / "configs" / "yolox_semantic.yaml")
    data = build_data(config, REPO)
    provenance = data.provenance
    train = set(provenance["msrs_det_train_names"])
    assert train == set(split_names("msrs_det:train", DATA))
    assert not train & set(split_names("msrs_det:val", DATA))
    assert not train & set(split_names("msrs_det:test", DATA))
    assert not train & set(MSRS_HOLDOUT_NAMES)
    assert not set(provenance["msrs_train_names"]) & set(MSRS_HOLDOUT_NAMES)
    assert provenance["counts"]["labelled/msrs_det:train"] == len(train)
    # msrs pairs lie in msrs_det:val's frame range: none in a pool that is chosen on val
    assert "labelled/msrs" not in provenance["counts"]
    assert "labelled/synthetic" not in provenance["counts"]
    val = data.extra_eval["msrs_det_val"]
    assert set(val.names) == set(split_names("msrs_det:val", DATA))
    item = val[0]  # full frame, merged boxes
    assert tuple(item["ir"].shape[-2:]) == (480, 640)
    sample = data.pools["labelled"][0]
    assert tuple(sample["ir"].shape[-2:]) == (448, 448)
