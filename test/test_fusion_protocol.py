"""Issue 12's protocol and design pieces: the RoadScene name-range splits (fusion knobs are
chosen on roadscene:val + msrs_det:val, TNO-25 stays the test set), splits as training and
validation data of a run, the fusion target's variants and the whole-frame context branch.
Targets and networks are checked on SYNTHETIC tensors; the splits on the real shared data."""

from __future__ import annotations

from pathlib import Path

import pytest

from ros2_bilevel_fusion.evaluation import splits


def test_name_ranges_with_a_prefix() -> None:
    flir = splits.NameRange(0, 2000, "FLIR_")
    assert "FLIR_00691" in flir and "FLIR_01945" in flir
    assert "FLIR_03801" not in flir and "FLIR_video_00010" not in flir  # digits must follow
    assert "00055D" not in flir and 123 not in flir
    assert "FLIR_video_04111" in splits.NameRange(0, 99999, "FLIR_video_")
    assert "00055D" in splits.NameRange(0, 251)  # MSRS names as before


def test_roadscene_splits_are_disjoint_name_ranges(shared_data: Path) -> None:
    if not (shared_data / "roadscene" / "ir").is_dir():
        pytest.skip("roadscene is not present")
    val = splits.split_names("roadscene:val", shared_data)
    train = splits.split_names("roadscene:train", shared_data)
    every = splits.pair_names(shared_data / "roadscene")
    assert len(val) == 41 and len(train) == 130 and sorted(val + train) == every
    assert not set(val) & set(train)
    flir_val = [splits.frame_number(n[5:]) for n in val if not n.startswith("FLIR_video_")]
    flir_train = [splits.frame_number(n[5:]) for n in train]
    # the cut is the largest gap of the FLIR numbering (frames of one drive stay together)
    assert max(flir_val) == 1945 and min(flir_train) == 3801
    assert sum(n.startswith("FLIR_video_") for n in val) == 16


def test_a_run_trains_on_train_splits_and_chooses_on_val_splits(
    shared_data: Path, tmp_path: Path
) -> None:
    pytest.importorskip("torch")
    from training.config import load_config
    from training.data import build_data

    smoke = Path(__file__).resolve().parents[1] / "training" / "configs" / "smoke.yaml"
    config = load_config(smoke, [
        "data.fusion_sets=[roadscene:train, msrs_det:train]", "eval.folder=roadscene:val",
        f"out_dir={tmp_path}",
    ])
    data = build_data(config)
    assert data.provenance["counts"]["fusion/roadscene:train"] == 130
    assert data.provenance["counts"]["fusion/msrs_det:train"] == 167
    assert len(data.fusion_eval_pairs) == 41
    assert {p.stem for p in data.fusion_eval_pairs}.isdisjoint(
        splits.split_names("roadscene:train", shared_data))
    for bad, message in (("data.fusion_sets=[roadscene:val]", "only :train"),
                         ("eval.folder=msrs_det:test", ":val split"),
                         ("eval.folder=roadscene:val", "trains on")):
        with pytest.raises(ValueError, match=message):
            build_data(load_config(smoke, [bad, f"out_dir={tmp_path}"]))


def test_target_variants() -> None:
    torch = pytest.importorskip("torch")
    from training.losses import FusionLossWeights, fusion_target

    generator = torch.Generator().manual_seed(0)
    ir = torch.rand(1, 1, 48, 64, generator=generator)  # SYNTHETIC
    vis = torch.rand(1, 1, 48, 64, generator=generator) * 0.5
    plain = fusion_target(ir, vis, FusionLossWeights())
    assert torch.equal(plain, torch.maximum(ir, vis))  # the shipped default is unchanged
    mean = fusion_target(ir, vis, FusionLossWeights(mean_weight=1.0))
    torch.testing.assert_close(mean, 0.5 * (ir + vis))
    # detail_max: a flat IR and a textured visible -> the visible detail on the brighter base
    flat = torch.full((1, 1, 48, 64), 0.6)
    texture = 0.3 + 0.1 * torch.sign(torch.randn(1, 1, 48, 64, generator=generator))
    fused = fusion_target(flat, texture, FusionLossWeights(target="detail_max", base_sigma=2.0))
    assert float(fused.std()) > 0.05  # texture kept, unlike max(IR, Y) = the flat IR
    assert float(torch.maximum(flat, texture).std()) == 0.0
    with pytest.raises(ValueError, match="fusion target"):
        fusion_target(ir, vis, FusionLossWeights(target="sum"))


def test_sources_stretch_gives_the_target_the_spread_of_the_better_camera() -> None:
    torch = pytest.importorskip("torch")
    from training.losses import FusionLossWeights, fusion_target

    generator = torch.Generator().manual_seed(0)
    # SYNTHETIC: a dim, low-contrast scene (std ~0.03) and a brighter one (std ~0.1)
    ir = 0.3 + 0.03 * torch.randn(2, 1, 64, 64, generator=generator)
    vis = 0.4 + 0.1 * torch.randn(2, 1, 64, 64, generator=generator)
    ir[1], vis[1] = 0.5 + 0.02 * torch.randn(1, 64, 64, generator=generator), 0.45
    for contrast in (1.0, 0.8):
        target = fusion_target(
            ir, vis, FusionLossWeights(mean_weight=0.5, stretch="sources", contrast=contrast)
        )
        expected = torch.maximum(ir.std(dim=(-2, -1)), vis.std(dim=(-2, -1))) * contrast
        torch.testing.assert_close(target.std(dim=(-2, -1)), expected, rtol=0.02, atol=1e-4)
    # the "factor" stretch of the same mix leaves the second (flat-visible) scene flatter
    factor = fusion_target(ir, vis, FusionLossWeights(mean_weight=0.5, contrast=1.0))
    assert float(factor[1].std()) < 0.75 * float(ir[1].std())
    with pytest.raises(ValueError, match="stretch"):
        fusion_target(ir, vis, FusionLossWeights(stretch="global"))


def test_region_weighted_image_follows_the_source_with_the_structure() -> None:
    torch = pytest.importorskip("torch")
    from training.losses import FusionLossWeights, fusion_target, region_weighted

    # SYNTHETIC: the left half of the IR image and the right half of the visible one hold a
    # checkerboard; each is flat (0.5) elsewhere.
    rows, cols = torch.meshgrid(torch.arange(64), torch.arange(128), indexing="ij")
    checker = 0.5 + 0.4 * (((rows // 4) + (cols // 4)) % 2 * 2 - 1).float()
    left = (cols < 64)[None, None]
    ir = torch.where(left, checker, torch.tensor(0.5))
    vis = torch.where(left, torch.tensor(0.5), checker)
    weights = FusionLossWeights(region_sigma=4.0)
    fused = region_weighted(ir, vis, weights)
    # Away from the seam each side keeps its textured source at (nearly) full strength, where
    # the plain mean halves it.
    inner_left, inner_right = (..., slice(8, 56), slice(8, 48)), (..., slice(8, 56), slice(80, 120))
    torch.testing.assert_close(fused[inner_left], ir[inner_left], atol=0.02, rtol=0)
    torch.testing.assert_close(fused[inner_right], vis[inner_right], atol=0.02, rtol=0)
    mean = 0.5 * (ir + vis)
    assert float(mean[inner_left].std()) < 0.6 * float(fused[inner_left].std())
    # Two flat sources give their mean, not 0/0.
    flat_ir, flat_vis = torch.full((1, 1, 16, 16), 0.8), torch.full((1, 1, 16, 16), 0.2)
    flat = region_weighted(flat_ir, flat_vis, weights)
    torch.testing.assert_close(flat, torch.full_like(flat_ir, 0.5))
    # As a share of the target it replaces that share of max(IR, Y).
    mixed = fusion_target(ir, vis, FusionLossWeights(region_weight=0.25, region_sigma=4.0))
    torch.testing.assert_close(mixed, 0.75 * torch.maximum(ir, vis) + 0.25 * fused)


def test_whole_frame_context_branch_starts_as_the_plain_network(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from training.export import export_onnx
    from training.models import ExportModel, build_fusion, count_parameters

    torch.manual_seed(0)
    global_net = build_fusion("realtime_global").eval()
    plain = build_fusion("realtime").eval()
    plain.load_state_dict(
        {k: v for k, v in global_net.state_dict().items() if not k.startswith("global_film")}
    )
    ir, vis = torch.rand(1, 1, 64, 96), torch.rand(1, 1, 64, 96)  # SYNTHETIC
    with torch.no_grad():
        torch.testing.assert_close(global_net(ir, vis), plain(ir, vis))
        # once trained, the branch sees the whole frame: a change far away moves this pixel
        global_net.global_film[2].weight.data.normal_(
            0.0, 0.5, generator=torch.Generator().manual_seed(1)
        )
        far = vis.clone()
        far[..., :, 64:] = 1.0 - far[..., :, 64:]
        near_pixel = (slice(None), slice(None), slice(0, 8), slice(0, 8))
        changed = global_net(ir, far)[near_pixel] - global_net(ir, vis)[near_pixel]
        plain_changed = plain(ir, far)[near_pixel] - plain(ir, vis)[near_pixel]
    assert float(plain_changed.abs().max()) == 0.0  # beyond the plain net's 63 px context
    assert float(changed.abs().max()) > 0.0
    assert count_parameters(global_net) - count_parameters(plain) < 4000
    model = ExportModel(global_net, None, None,
                        {"fusion": "realtime_global", "detector": None, "segmenter": None})
    export_onnx(model, tmp_path / "global.onnx", sample_hw=(64, 96))


def test_a_realtime_checkpoint_starts_realtime_global(shared_data: Path, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from training.config import load_config
    from training.engine import Trainer
    from training.models import build_fusion

    torch.manual_seed(3)
    plain = build_fusion("realtime")
    checkpoint = tmp_path / "realtime.pt"
    torch.save({"architecture": {"fusion": "realtime", "detector": None, "segmenter": None},
                "fusion": plain.state_dict()}, checkpoint)
    smoke = Path(__file__).resolve().parents[1] / "training" / "configs" / "smoke.yaml"
    config = load_config(smoke, [
        "fusion=realtime_global", f"init_from={checkpoint}", "init_modules=[fusion]",
        f"out_dir={tmp_path / 'run'}",
    ])
    fusion = Trainer(config, quiet=True).fusion
    for key, value in plain.state_dict().items():
        torch.testing.assert_close(fusion.state_dict()[key], value)
    assert float(fusion.global_film[2].weight.abs().max()) == 0.0
    with pytest.raises(ValueError, match="differs from config"):
        Trainer(load_config(smoke, [f"init_from={checkpoint}", "fusion=paper",
                                    f"out_dir={tmp_path / 'run2'}"]), quiet=True)
