"""TensorRT backend: the engine cache key/header as pure functions everywhere; GPU parts only
where tensorrt and a CUDA device exist (skipped here with the reason)."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from ros2_bilevel_fusion.backends import BackendError, create_backend, tensorrt_usable
from ros2_bilevel_fusion.backends.tensorrt_backend import (
    CACHE_MAGIC,
    EngineKey,
    calibration_pairs,
    engine_cache_dirs,
    engine_cache_name,
    pack_engine_cache,
    sha256_of_file,
    unpack_engine_cache,
    validate_profile,
)
from ros2_bilevel_fusion.core.bundle import load_bundle

KEY = EngineKey(
    trt_version="10.9.0.34",
    gpu_name="NVIDIA GeForce RTX 4090",
    precision="fp16",
    onnx_sha256="ab" * 32,
)


def test_cache_name_carries_version_gpu_precision_and_hash_prefix() -> None:
    name = engine_cache_name("model", KEY)
    assert name == "model.trt10.9.0.34.nvidia-geforce-rtx-4090.fp16.abababababababab.engine"
    assert "/" not in engine_cache_name("model", replace(KEY, gpu_name="a/b c"))
    names = {
        engine_cache_name("model", k)
        for k in (
            KEY,
            replace(KEY, trt_version="10.10.0"),
            replace(KEY, gpu_name="Orin"),
            replace(KEY, precision="fp32"),
            replace(KEY, onnx_sha256="cd" * 32),
        )
    }
    assert len(names) == 5


def test_cache_roundtrip_and_every_mismatch_is_refused() -> None:
    engine = b"synthetic engine bytes"
    data = pack_engine_cache(KEY, engine)
    assert data.startswith(CACHE_MAGIC)
    assert unpack_engine_cache(data, KEY) == engine
    for stale in (
        replace(KEY, trt_version="10.10.0"),
        replace(KEY, gpu_name="Orin"),
        replace(KEY, precision="fp32"),
        replace(KEY, onnx_sha256="ab" * 31 + "ac"),  # same 16-char prefix, other full hash
        replace(KEY, max_hw=(2176, 3840)),
    ):
        assert unpack_engine_cache(data, stale) is None


@pytest.mark.parametrize(
    "corrupt",
    [
        b"",
        b"not a cache file at all",
        CACHE_MAGIC + b"\xff\xff\xff\x00{}",  # header length past the end
        CACHE_MAGIC + b"\x05\x00\x00\x00{nojs",  # header not JSON
    ],
)
def test_corrupt_cache_files_are_refused(corrupt: bytes) -> None:
    assert unpack_engine_cache(corrupt, KEY) is None


def test_header_without_engine_is_refused() -> None:
    assert unpack_engine_cache(pack_engine_cache(KEY, b""), KEY) is None


def test_sha256_changes_with_the_file(tmp_path: Path) -> None:
    path = tmp_path / "synthetic.onnx"
    path.write_bytes(b"one")
    first = sha256_of_file(path)
    path.write_bytes(b"two")
    assert len(first) == 64 and sha256_of_file(path) != first


def test_profile_validation() -> None:
    validate_profile((32, 32), (480, 640), (1088, 1920), 32)
    with pytest.raises(BackendError, match="min <= opt <= max"):
        validate_profile((512, 32), (480, 640), (1088, 1920), 32)
    with pytest.raises(BackendError, match="multiple of 32"):
        validate_profile((32, 32), (481, 640), (1088, 1920), 32)


def test_cache_dirs_start_beside_the_bundle(tmp_path: Path) -> None:
    dirs = engine_cache_dirs(tmp_path)
    assert dirs[0] == tmp_path and len(dirs) == 2


def test_calibration_pairs_match_by_name(tmp_path: Path) -> None:
    for sub in ("ir", "vi"):
        (tmp_path / sub).mkdir()
    for name in ("a.png", "b.png"):
        (tmp_path / "ir" / name).write_bytes(b"synthetic")
    (tmp_path / "vi" / "a.png").write_bytes(b"synthetic")
    assert calibration_pairs(tmp_path) == [(tmp_path / "ir" / "a.png", tmp_path / "vi" / "a.png")]
    with pytest.raises(BackendError, match="no ir/"):
        calibration_pairs(tmp_path / "ir")


def test_calibration_inputs_are_the_runtime_preprocessing(tmp_path: Path) -> None:
    """INT8 calibration sees what the node feeds the graph: resized, YCrCb, / 255, unpadded."""
    import cv2

    from ros2_bilevel_fusion.backends.tensorrt_backend import _read_pair_for_calibration

    rng = np.random.default_rng(3)
    ir = rng.integers(0, 256, (50, 70), dtype=np.uint8)
    visible = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "ir.png"), ir)
    cv2.imwrite(str(tmp_path / "vi.png"), visible)
    ir_tensor, visible_tensor = _read_pair_for_calibration(
        tmp_path / "ir.png", tmp_path / "vi.png", (64, 96)
    )
    assert ir_tensor.shape == (1, 1, 64, 96) and visible_tensor.shape == (1, 3, 64, 96)
    ir_resized = cv2.resize(ir, (96, 64), interpolation=cv2.INTER_AREA)
    np.testing.assert_allclose(ir_tensor[0, 0], ir_resized / 255.0, atol=1e-6)
    ycrcb = cv2.cvtColor(cv2.resize(visible, (96, 64), interpolation=cv2.INTER_AREA),
                         cv2.COLOR_BGR2YCrCb)
    np.testing.assert_allclose(visible_tensor[0], ycrcb.transpose(2, 0, 1) / 255.0, atol=1e-6)


def _require_tensorrt() -> None:
    usable, why = tensorrt_usable()
    if not usable:
        pytest.skip(f"TensorRT GPU path not testable here: {why}")


def test_tensorrt_matches_onnxruntime_and_reuses_cache(fixture_bundle: Path, tmp_path: Path):
    _require_tensorrt()
    folder = Path(shutil.copytree(fixture_bundle, tmp_path / "bundle"))
    bundle = load_bundle(folder)
    rng = np.random.default_rng(0)
    ir = rng.random((1, 1, 64, 96), dtype=np.float32)
    vis = rng.random((1, 3, 64, 96), dtype=np.float32)
    expected = create_backend("onnxruntime", bundle, threads=1).infer(ir, vis)
    trt_backend = create_backend("tensorrt", bundle)
    actual = trt_backend.infer(ir, vis)
    for name in bundle.output_names:
        np.testing.assert_allclose(actual[name], expected[name], atol=1e-4)
    engine_path = trt_backend.engine_path
    assert engine_path.is_file()
    built_at = engine_path.stat().st_mtime_ns
    assert create_backend("tensorrt", bundle).engine_path == engine_path
    assert engine_path.stat().st_mtime_ns == built_at  # reused, not rebuilt
    # A cache whose header does not match is rebuilt, never trusted.
    engine_path.write_bytes(pack_engine_cache(replace(trt_backend.key, gpu_name="x"), b"junk"))
    rebuilt = create_backend("tensorrt", bundle)
    assert unpack_engine_cache(engine_path.read_bytes(), rebuilt.key) is not None


# ------------------------------------------------------------------------------------------
# Cache control flow of TensorRTBackend without TensorRT: a synthetic stand-in for the few
# tensorrt calls the constructor makes (Runtime.deserialize_cuda_engine, engine I/O listing).
# It checks the decisions (reuse, rebuild on a stale or foreign cache, fallback folder), not
# TensorRT itself, which test_tensorrt_matches_onnxruntime_and_reuses_cache covers on a GPU.


class _SyntheticEngine:
    def __init__(self, names: list[str], inputs: set[str]) -> None:
        self.names, self.inputs = names, inputs
        self.num_io_tensors = len(names)

    def get_tensor_name(self, index: int) -> str:
        return self.names[index]

    def get_tensor_mode(self, name: str) -> str:
        return "INPUT" if name in self.inputs else "OUTPUT"

    def create_execution_context(self) -> object:
        return object()


class _SyntheticTrt:
    __version__ = "10.99.0"

    class Logger:
        WARNING = ERROR = 0

        def __init__(self, *_: object) -> None:
            pass

    class TensorIOMode:
        INPUT = "INPUT"

    def __init__(self, bundle) -> None:
        self.bundle = bundle
        outer = self

        class Runtime:
            def __init__(self, *_: object) -> None:
                pass

            def deserialize_cuda_engine(self, data: bytes):
                if not data.startswith(b"SYNTHETIC_ENGINE"):
                    return None  # what TensorRT does with an engine of another version
                names = [outer.bundle.inputs.ir_name, outer.bundle.inputs.visible_name]
                return _SyntheticEngine(names + outer.bundle.output_names, set(names))

        self.Runtime = Runtime


class _SyntheticCuda:
    gpu_name = "Synthetic GPU"


@pytest.fixture()
def synthetic_trt(monkeypatch, fixture_bundle: Path, tmp_path: Path):
    from ros2_bilevel_fusion.backends import tensorrt_backend

    folder = Path(shutil.copytree(fixture_bundle, tmp_path / "bundle"))
    bundle = load_bundle(folder)
    builds: list[int] = []

    def fake_build(onnx_path, **_kwargs) -> bytes:
        builds.append(1)
        return b"SYNTHETIC_ENGINE" + bytes(len(builds))

    monkeypatch.setattr(tensorrt_backend, "_import_tensorrt", lambda: _SyntheticTrt(bundle))
    monkeypatch.setattr(tensorrt_backend, "open_cuda", lambda device=0: _SyntheticCuda())
    monkeypatch.setattr(tensorrt_backend, "build_engine", fake_build)
    monkeypatch.setenv("ROS_HOME", str(tmp_path / "ros_home"))
    return tensorrt_backend, bundle, builds


def test_engine_is_built_once_then_reused(synthetic_trt) -> None:
    module, bundle, builds = synthetic_trt
    first = module.TensorRTBackend(bundle)
    assert builds == [1] and first.engine_path.parent == bundle.folder
    assert "synthetic-gpu" in first.engine_path.name and first.key.precision == "fp32"
    second = module.TensorRTBackend(bundle)
    assert builds == [1] and second.engine_path == first.engine_path
    fp16 = module.TensorRTBackend(bundle, fp16=True)
    assert len(builds) == 2 and fp16.engine_path != first.engine_path


def test_stale_or_foreign_cache_is_rebuilt(synthetic_trt) -> None:
    module, bundle, builds = synthetic_trt
    path = module.TensorRTBackend(bundle).engine_path
    # Same file name, header written for another profile: must not be trusted.
    path.write_bytes(
        pack_engine_cache(
            replace(module.TensorRTBackend(bundle).key, max_hw=(64, 64)), b"SYNTHETIC_ENGINE"
        )
    )
    module.TensorRTBackend(bundle)
    assert len(builds) == 2
    # Header matches but TensorRT refuses the engine (another TensorRT build): rebuilt too.
    key = module.TensorRTBackend(bundle).key
    path.write_bytes(pack_engine_cache(key, b"engine of another TensorRT"))
    module.TensorRTBackend(bundle)
    assert len(builds) == 3
    assert unpack_engine_cache(path.read_bytes(), key).startswith(b"SYNTHETIC_ENGINE")


def test_unwritable_first_cache_folder_falls_back_to_the_next(
    synthetic_trt, monkeypatch, tmp_path: Path
) -> None:
    module, bundle, builds = synthetic_trt
    blocker = tmp_path / "synthetic_file"
    blocker.write_text("a file where a folder would be: mkdir fails like a read-only share dir")
    fallback = tmp_path / "ros_home" / "engines"
    monkeypatch.setattr(module, "engine_cache_dirs", lambda folder: [blocker / "sub", fallback])
    backend = module.TensorRTBackend(bundle)
    assert backend.engine_path.parent == fallback
    module.TensorRTBackend(bundle)
    assert builds == [1]  # found again in the fallback folder


def test_engine_lacking_a_bundle_output_is_refused(synthetic_trt, monkeypatch) -> None:
    module, bundle, _ = synthetic_trt
    monkeypatch.setattr(_SyntheticEngine, "get_tensor_name", lambda self, i: self.names[i] + "_x")
    with pytest.raises(BackendError, match="engine inputs"):
        module.TensorRTBackend(bundle)


def test_int8_calibrator_needs_tensorrt_and_says_so(tmp_path: Path) -> None:
    from ros2_bilevel_fusion.backends.tensorrt_backend import make_int8_calibrator

    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(BackendError, match="tensorrt is not installed"):
            make_int8_calibrator(tmp_path)
    else:
        with pytest.raises(BackendError, match="no ir/"):
            make_int8_calibrator(tmp_path)
