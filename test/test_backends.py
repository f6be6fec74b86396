"""Backends on the untrained fixture bundle: results, I/O validation, clear errors."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from ros2_bilevel_fusion.backends import BackendError, create_backend
from ros2_bilevel_fusion.backends.onnxruntime_backend import OnnxRuntimeBackend, choose_providers
from ros2_bilevel_fusion.core.bundle import (
    BundleError,
    FusedStretchSpec,
    PreprocessSpec,
    load_bundle,
    parse_fused_stretch,
    save_bundle,
)

os.environ.setdefault("OMP_NUM_THREADS", "1")


def _synthetic_inputs(height: int = 64, width: int = 96, seed: int = 0):
    rng = np.random.default_rng(seed)
    ir = rng.random((1, 1, height, width), dtype=np.float32)
    vis = rng.random((1, 3, height, width), dtype=np.float32)
    return ir, vis


@pytest.fixture()
def bundle_copy(fixture_bundle: Path, tmp_path: Path) -> Path:
    """A private copy the test may break."""
    return Path(shutil.copytree(fixture_bundle, tmp_path / "bundle"))


def test_onnxruntime_runs_fixture_and_returns_every_output(fixture_bundle: Path) -> None:
    bundle = load_bundle(fixture_bundle)
    backend = create_backend("onnxruntime", bundle, threads=1)
    assert backend.name.startswith("onnxruntime:")
    ir, vis = _synthetic_inputs()
    out = backend.infer(ir, vis)
    assert list(out) == bundle.output_names
    assert all(v.dtype == np.float32 for v in out.values())
    # The fixture's fusion is max(ir, Y): checks the graph and the name-to-output mapping.
    np.testing.assert_allclose(out["fused_y"], np.maximum(ir, vis[:, :1]), atol=1e-6)
    assert out["cls_s8"].shape == (1, 3, 8, 12)
    assert out["box_s32"].shape == (1, 4, 2, 3)
    assert out["ctr_s16"].shape == (1, 1, 4, 6)
    assert out["seg_logits"].shape == (1, 4, 64, 96)
    assert (out["box_s8"] >= 0).all()


def test_auto_falls_back_to_onnxruntime_without_tensorrt(fixture_bundle: Path) -> None:
    pytest.importorskip("onnxruntime")
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("tensorrt is installed here; auto would pick it when CUDA works")
    backend = create_backend("auto", load_bundle(fixture_bundle), threads=1)
    assert backend.name.startswith("onnxruntime")


def test_unknown_kind_and_missing_tensorrt_are_clear_errors(fixture_bundle: Path) -> None:
    bundle = load_bundle(fixture_bundle)
    with pytest.raises(BackendError, match="unknown backend"):
        create_backend("openvino", bundle)
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(BackendError, match="tensorrt is not installed"):
            create_backend("tensorrt", bundle)


def test_truncated_onnx_is_a_backend_error(bundle_copy: Path) -> None:
    onnx_path = bundle_copy / "model.onnx"
    onnx_path.write_bytes(onnx_path.read_bytes()[:200])
    with pytest.raises(BackendError, match="corrupt or unsupported ONNX"):
        create_backend("onnxruntime", load_bundle(bundle_copy))


def test_onnx_deleted_after_loading_yaml_is_a_backend_error(bundle_copy: Path) -> None:
    bundle = load_bundle(bundle_copy)
    (bundle_copy / "model.onnx").unlink()
    with pytest.raises(BackendError, match="missing"):
        create_backend("onnxruntime", bundle)


def test_broken_yaml_is_a_bundle_error(bundle_copy: Path) -> None:
    (bundle_copy / "model.yaml").write_text("format_version: 1\ninputs: [unclosed\n")
    with pytest.raises(BundleError, match="not valid YAML"):
        load_bundle(bundle_copy)


def _edit_yaml(folder: Path, edit) -> None:
    path = folder / "model.yaml"
    data = yaml.safe_load(path.read_text())
    edit(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def test_bundle_without_preprocessing_section_keeps_todays_behaviour(bundle_copy: Path) -> None:
    """Bundles written before the section existed: the runtime's former fixed behaviour."""
    _edit_yaml(bundle_copy, lambda d: d.pop("preprocessing", None))
    preprocessing = load_bundle(bundle_copy).preprocessing
    assert preprocessing.pad_mode == "reflect_101"
    assert (preprocessing.thermal_low_percentile, preprocessing.thermal_high_percentile) == (
        1.0,
        99.0,
    )


def test_bundle_sections_round_trip_and_bad_values_are_refused(bundle_copy: Path) -> None:
    def edit(data: dict) -> None:
        data["preprocessing"] = {
            "pad_mode": "constant",
            "thermal_low_percentile": 0.5,
            "thermal_high_percentile": 99.5,
        }
        data["detection"]["score_threshold"] = 0.42
        data["fused_stretch"] = {"low_percentile": 0.5, "high_percentile": 99.5}

    assert load_bundle(bundle_copy).fused_stretch is None  # absent: published as it is
    _edit_yaml(bundle_copy, edit)
    bundle = load_bundle(bundle_copy)
    assert bundle.preprocessing == PreprocessSpec("constant", 0.5, 99.5)
    assert bundle.detection.score_threshold == 0.42
    assert bundle.fused_stretch == FusedStretchSpec(0.5, 99.5, max_gain=4.0)
    save_bundle(bundle)
    assert load_bundle(bundle_copy) == bundle
    for section, key, value, message in [
        ("preprocessing", "pad_mode", "wrap", "pad_mode"),
        ("preprocessing", "thermal_low_percentile", 99.9, "percentile"),
        ("preprocessing", "colour_space", "rgb", "unknown keys"),
        ("detection", "score_threshold", 1.5, "score_threshold"),
        ("detection", "max_detections", 0, "max_detections"),
        ("fused_stretch", "high_percentile", 0.2, "percentile"),
        ("fused_stretch", "max_gain", 0.5, "max_gain"),
        ("fused_stretch", "gamma", 2.0, "unknown keys"),
    ]:
        _edit_yaml(bundle_copy, lambda d, s=section, k=key, v=value: d[s].update({k: v}))
        with pytest.raises(BundleError, match=message):
            load_bundle(bundle_copy)
        save_bundle(bundle)  # back to the valid file for the next case


def test_wrong_input_names_are_refused(bundle_copy: Path) -> None:
    _edit_yaml(bundle_copy, lambda d: d["inputs"].update(ir_name="thermal"))
    with pytest.raises(BackendError, match="graph inputs"):
        create_backend("onnxruntime", load_bundle(bundle_copy))


def test_output_named_in_yaml_but_absent_from_graph_is_refused(bundle_copy: Path) -> None:
    _edit_yaml(bundle_copy, lambda d: d["segmentation"].update(logits="seg_probabilities"))
    with pytest.raises(BackendError, match="seg_probabilities"):
        create_backend("onnxruntime", load_bundle(bundle_copy))


@pytest.fixture()
def yolox_copy(tmp_path: Path) -> Path:
    """A private SYNTHETIC yolox-head bundle (fixture_bundle.make_yolox_bundle)."""
    from fixture_bundle import make_yolox_bundle

    return make_yolox_bundle(tmp_path / "yolox")


def test_onnxruntime_returns_every_yolox_level_output(yolox_copy: Path) -> None:
    bundle = load_bundle(yolox_copy)
    assert bundle.output_names == ["fused_y"] + [
        f"det_{part}_s{s}" for s in (8, 16) for part in ("reg", "obj", "cls")
    ]
    out = create_backend("onnxruntime", bundle, threads=1).infer(*_synthetic_inputs(64, 96))
    assert list(out) == bundle.output_names
    assert out["det_reg_s8"].shape == (1, 4, 8, 12) and out["det_obj_s8"].shape == (1, 1, 8, 12)
    assert out["det_cls_s16"].shape == (1, 2, 4, 6)


def test_yolox_bundle_round_trips_with_the_head_first(yolox_copy: Path) -> None:
    bundle = load_bundle(yolox_copy)
    save_bundle(bundle)
    assert load_bundle(yolox_copy) == bundle
    section = yaml.safe_load((yolox_copy / "model.yaml").read_text())["detection"]
    assert list(section)[0] == "head" and section["head"] == "yolox"
    assert section["box_encoding"] == "xy_offset_log_wh_stride"


@pytest.mark.parametrize(
    ("which", "edit", "message"),
    [
        ("yolox", lambda d: d["detection"].update(head="ssd"), r"detection\.head 'ssd'"),
        ("yolox", lambda d: d["detection"].update(head=["yolox"]), r"detection\.head \['yolox'\]"),
        (
            "yolox",
            lambda d: d["detection"]["levels"][1].update(box="det_box_s16"),
            r"detection\.levels\[1\]: a yolox level .*unknown keys \['box'\]$",
        ),
        (
            "yolox",
            lambda d: d["detection"]["levels"][0].pop("obj"),
            r"detection\.levels\[0\]: .*missing keys \['obj'\]",
        ),
        (
            "fcos",  # fcos levels under head: yolox: says which head the keys belong to
            lambda d: d["detection"].update(head="yolox"),
            r"unknown keys \['box', 'ctr'\]; missing keys \['reg', 'obj'\]; these are fcos",
        ),
        (
            "yolox",  # the pre-yolox default: a yolox bundle without its head key is fcos
            lambda d: d["detection"].pop("head"),
            r"a fcos level .*these are yolox level keys \(detection\.head: yolox\)",
        ),
        (
            "yolox",
            lambda d: d["detection"].update(box_encoding="ltrb_stride"),
            r"detection: box_encoding of the yolox head",
        ),
        ("yolox", lambda d: d["detection"]["levels"][0].update(stride=0), r"levels\[0\]: stride"),
        ("yolox", lambda d: d["detection"].update(levels={"stride": 8}), "list of mappings"),
    ],
)
def test_bad_detection_heads_and_level_keys_are_refused_naming_file_and_key(
    which: str, edit, message: str, yolox_copy: Path, bundle_copy: Path
) -> None:
    folder = yolox_copy if which == "yolox" else bundle_copy
    _edit_yaml(folder, edit)
    with pytest.raises(BundleError, match=message) as caught:
        load_bundle(folder)
    assert str(folder / "model.yaml") in str(caught.value)


def test_yolox_output_named_in_yaml_but_absent_from_graph_is_refused(yolox_copy: Path) -> None:
    _edit_yaml(yolox_copy, lambda d: d["detection"]["levels"][1].update(obj="objectness_s16"))
    with pytest.raises(BackendError, match="objectness_s16"):
        create_backend("onnxruntime", load_bundle(yolox_copy))


def test_bad_input_shapes_are_backend_errors(fixture_bundle: Path) -> None:
    backend = OnnxRuntimeBackend(load_bundle(fixture_bundle), threads=1)
    ir, vis = _synthetic_inputs()
    with pytest.raises(BackendError, match="multiples of 32"):
        backend.infer(ir[:, :, :50], vis[:, :, :50])
    with pytest.raises(BackendError, match=r"\[N, 3, H, W\]"):
        backend.infer(ir, vis[:, :1])
    with pytest.raises(BackendError, match="differ"):
        backend.infer(ir, vis[:, :, :32])


def test_fixed_size_bundle_refuses_other_sizes(bundle_copy: Path) -> None:
    _edit_yaml(bundle_copy, lambda d: d["inputs"].update(height=64, width=96))
    backend = OnnxRuntimeBackend(load_bundle(bundle_copy), threads=1)
    backend.infer(*_synthetic_inputs(64, 96))
    with pytest.raises(BackendError, match="exported for 64x96"):
        backend.infer(*_synthetic_inputs(96, 96))


def test_provider_choice_prefers_cuda_and_keeps_cpu() -> None:
    assert choose_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    chosen = choose_providers(["CUDAExecutionProvider", "CPUExecutionProvider"], device=1)
    assert chosen == [("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]


def test_torch_backend_without_torchscript_is_a_clear_error(fixture_bundle: Path) -> None:
    bundle = load_bundle(fixture_bundle)
    assert bundle.torchscript_path is None  # the fixture ships ONNX only
    with pytest.raises(BackendError, match="names no TorchScript file"):
        create_backend("torch", bundle)


def test_torchscript_named_but_missing_is_a_bundle_error(bundle_copy: Path) -> None:
    _edit_yaml(bundle_copy, lambda data: data.update(torchscript="model.pt"))
    with pytest.raises(BundleError, match="TorchScript file .*model.pt is missing"):
        load_bundle(bundle_copy)


def test_torch_backend_with_a_file_that_is_not_torchscript_is_a_clear_error(
    bundle_copy: Path,
) -> None:
    pytest.importorskip("torch")
    (bundle_copy / "model.pt").write_bytes(b"synthetic, not a TorchScript archive")
    _edit_yaml(bundle_copy, lambda data: data.update(torchscript="model.pt"))
    with pytest.raises(BackendError, match="cannot load .* as TorchScript"):
        create_backend("torch", load_bundle(bundle_copy))


def test_torch_matches_onnxruntime_on_default_bundle(repo_root: Path) -> None:
    """The shipped bundle's TorchScript file and its ONNX file compute the same graph."""
    folder = repo_root / "models" / "default"
    pytest.importorskip("torch")
    bundle = load_bundle(folder)
    assert bundle.torchscript_path == folder / "model.pt"
    torch_backend = create_backend("torch", bundle, threads=1)
    ort_backend = create_backend("onnxruntime", bundle, threads=1)
    ir, vis = _synthetic_inputs(64, 64, seed=3)
    expected = ort_backend.infer(ir, vis)
    actual = torch_backend.infer(ir, vis)
    for name in bundle.output_names:
        np.testing.assert_allclose(actual[name], expected[name], atol=2e-3, rtol=1e-3)


def test_node_and_onnxruntime_path_import_neither_torch_nor_tensorrt(fixture_bundle: Path) -> None:
    code = (
        "import sys\n"
        "import ros2_bilevel_fusion.node.fusion_node\n"
        "from ros2_bilevel_fusion.backends import create_backend\n"
        "from ros2_bilevel_fusion.core.bundle import load_bundle\n"
        f"create_backend('auto', load_bundle({str(fixture_bundle)!r}), threads=1)\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "assert 'tensorrt' not in sys.modules, 'tensorrt imported'\n"
    )
    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


def test_fused_stretch_command_line_spelling() -> None:
    assert parse_fused_stretch(" OFF ") is None
    assert parse_fused_stretch("0:100") == FusedStretchSpec(0.0, 100.0)
    assert parse_fused_stretch("1:99") == FusedStretchSpec(1.0, 99.0)
    assert parse_fused_stretch("0:100:45") == FusedStretchSpec(0.0, 100.0, min_std=45.0)
    assert parse_fused_stretch(False) is None  # YAML's reading of an unquoted off
    with pytest.raises(ValueError, match="quote it"):
        parse_fused_stretch(119)  # YAML's reading of an unquoted 1:59
    with pytest.raises(ValueError, match="finite"):
        FusedStretchSpec(max_gain=float("inf"))
    for bad in ("0", "0:50:100:1", "99:1", "a:b", "bundle", "0:100:200"):
        with pytest.raises(ValueError):
            parse_fused_stretch(bad)
