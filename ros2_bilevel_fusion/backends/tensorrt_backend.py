"""TensorRT 10 backend: engine built from the bundle ONNX on the target GPU, cached beside it.

Only the TensorRT 10 tensor-by-name API is used (``set_input_shape``, ``set_tensor_address``,
``execute_async_v3``); the removed bindings API is never touched.

Engine cache: ``<bundle>/<onnx stem>.trt<version>.<gpu>.<precision>.<onnx sha256[:16]>.engine``
(or ``$ROS_HOME/ros2_bilevel_fusion/engines/`` when the bundle folder is read-only, e.g. an
installed share directory). Every cache file starts with a small header (magic + JSON) that
repeats the full key and the optimisation profile; a file whose header does not match what
we would build now is rebuilt, never trusted. TensorRT's own deserialisation check is the
second guard (it returns None for an engine from another version).

Device memory: ``cuda.bindings`` (cuda-python) when importable, else torch CUDA tensors; no
pycuda. The pure parts (key, header, profile) import neither tensorrt nor CUDA and are tested
everywhere; the GPU parts are tested only where tensorrt and a GPU exist.
"""

from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ros2_bilevel_fusion.backends.base import BackendError, check_inputs
from ros2_bilevel_fusion.core.bundle import ModelBundle
from ros2_bilevel_fusion.core.resources import sha256_of_file

CACHE_MAGIC = b"R2BFTRT1"
_HEADER_LEN = struct.Struct("<I")

# Default optimisation profile (H, W); inputs outside [min, max] are refused with a clear error.
DEFAULT_MIN_HW = (32, 32)
DEFAULT_OPT_HW = (480, 640)
DEFAULT_MAX_HW = (1088, 1920)


@dataclass(frozen=True)
class EngineKey:
    """Everything that makes a serialized engine valid for this machine and model."""

    trt_version: str
    gpu_name: str
    precision: str  # fp32 | fp16 | int8 (calibrated) | int8-fp32 / int8-fp16 (a QDQ graph)
    onnx_sha256: str
    min_hw: tuple[int, int] = DEFAULT_MIN_HW
    opt_hw: tuple[int, int] = DEFAULT_OPT_HW
    max_hw: tuple[int, int] = DEFAULT_MAX_HW

    def header(self) -> dict[str, Any]:
        data = asdict(self)
        for name in ("min_hw", "opt_hw", "max_hw"):
            data[name] = list(data[name])
        return data


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower() or "unknown"


def engine_cache_name(onnx_stem: str, key: EngineKey) -> str:
    """File name keyed by TensorRT version + GPU name + precision + ONNX sha256 prefix."""
    return (
        f"{onnx_stem}.trt{_slug(key.trt_version)}.{_slug(key.gpu_name)}."
        f"{key.precision}.{key.onnx_sha256[:16]}.engine"
    )


def pack_engine_cache(key: EngineKey, engine: bytes) -> bytes:
    header = json.dumps(key.header(), sort_keys=True).encode()
    return CACHE_MAGIC + _HEADER_LEN.pack(len(header)) + header + engine


def unpack_engine_cache(data: bytes, key: EngineKey) -> bytes | None:
    """The engine bytes if ``data`` is a cache file written for exactly ``key``, else None."""
    start = len(CACHE_MAGIC) + _HEADER_LEN.size
    if len(data) < start or not data.startswith(CACHE_MAGIC):
        return None
    (header_len,) = _HEADER_LEN.unpack_from(data, len(CACHE_MAGIC))
    if len(data) < start + header_len:
        return None
    try:
        header = json.loads(data[start : start + header_len])
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if header != key.header():
        return None
    engine = data[start + header_len :]
    return engine or None


def engine_cache_dirs(bundle_folder: Path) -> list[Path]:
    """Beside the bundle first; a per-user folder when the bundle folder is not writable."""
    ros_home = Path(os.environ.get("ROS_HOME", Path.home() / ".ros"))
    return [bundle_folder, ros_home / "ros2_bilevel_fusion" / "engines"]


def validate_profile(
    min_hw: tuple[int, int], opt_hw: tuple[int, int], max_hw: tuple[int, int], multiple: int
) -> None:
    for lo, mid, hi in zip(min_hw, opt_hw, max_hw, strict=True):
        if not 0 < lo <= mid <= hi:
            raise BackendError(
                f"optimisation profile needs min <= opt <= max, got {min_hw}, {opt_hw}, {max_hw}"
            )
    for hw in (min_hw, opt_hw, max_hw):
        if multiple > 1 and (hw[0] % multiple or hw[1] % multiple):
            raise BackendError(f"profile size {hw} is not a multiple of {multiple}")


# --------------------------------------------------------------------------------------------
# Everything below needs tensorrt (and a CUDA device); imports stay inside functions.


def _import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendError(f"tensorrt is not installed ({exc})") from exc
    major = int(str(trt.__version__).split(".")[0])
    if major < 10:
        raise BackendError(f"TensorRT {trt.__version__} found; this backend needs TensorRT >= 10")
    return trt


class _CudaPython:
    """Device memory and a stream through cuda-python's runtime bindings."""

    def __init__(self, device: int) -> None:
        from cuda.bindings import runtime as cudart

        self.cudart = cudart
        self._check(cudart.cudaSetDevice(device), "cudaSetDevice")
        self.stream = self._check(cudart.cudaStreamCreate(), "cudaStreamCreate")
        self.gpu_name = _as_text(
            self._check(cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties").name
        )

    def _check(self, result: Any, what: str) -> Any:
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            raise BackendError(f"CUDA {what} failed: {err}")
        return rest[0] if len(rest) == 1 else rest

    def malloc(self, nbytes: int) -> int:
        return int(self._check(self.cudart.cudaMalloc(max(1, nbytes)), "cudaMalloc"))

    def free(self, ptr: int) -> None:
        self.cudart.cudaFree(ptr)

    def upload(self, ptr: int, array: np.ndarray) -> None:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(
            self.cudart.cudaMemcpyAsync(ptr, array.ctypes.data, array.nbytes, kind, self.stream),
            "cudaMemcpyAsync H2D",
        )

    def download(self, array: np.ndarray, ptr: int) -> None:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(
            self.cudart.cudaMemcpyAsync(array.ctypes.data, ptr, array.nbytes, kind, self.stream),
            "cudaMemcpyAsync D2H",
        )

    @property
    def stream_handle(self) -> int:
        return int(self.stream)

    def synchronize(self) -> None:
        self._check(self.cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")


class _TorchCuda:
    """Fallback when cuda-python is absent: torch CUDA byte tensors as raw device buffers."""

    def __init__(self, device: int) -> None:
        import torch

        if not torch.cuda.is_available():
            raise BackendError("no CUDA device visible to torch")
        self.torch = torch
        self.device = torch.device("cuda", device)
        self.stream = torch.cuda.Stream(device=self.device)
        self.gpu_name = torch.cuda.get_device_name(self.device)
        self._buffers: dict[int, Any] = {}

    def malloc(self, nbytes: int) -> int:
        tensor = self.torch.empty(max(1, nbytes), dtype=self.torch.uint8, device=self.device)
        self._buffers[tensor.data_ptr()] = tensor
        return tensor.data_ptr()

    def free(self, ptr: int) -> None:
        self._buffers.pop(ptr, None)

    def upload(self, ptr: int, array: np.ndarray) -> None:
        host = self.torch.from_numpy(np.ascontiguousarray(array).view(np.uint8).reshape(-1))
        with self.torch.cuda.stream(self.stream):
            self._buffers[ptr][: host.numel()].copy_(host, non_blocking=False)

    def download(self, array: np.ndarray, ptr: int) -> None:
        self.synchronize()
        flat = self._buffers[ptr][: array.nbytes].cpu().numpy()
        array.reshape(-1).view(np.uint8)[:] = flat

    @property
    def stream_handle(self) -> int:
        return int(self.stream.cuda_stream)

    def synchronize(self) -> None:
        self.stream.synchronize()


def _as_text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.split(b"\0", 1)[0].decode(errors="replace")
    return str(value)


def open_cuda(device: int = 0) -> _CudaPython | _TorchCuda:
    """cuda-python first, torch CUDA second; BackendError when neither reaches a GPU."""
    errors = []
    try:
        return _CudaPython(device)
    except (ImportError, BackendError, RuntimeError) as exc:
        errors.append(f"cuda-python: {exc}")
    try:
        return _TorchCuda(device)
    except (ImportError, BackendError, RuntimeError) as exc:
        errors.append(f"torch: {exc}")
    raise BackendError("no usable CUDA device: " + "; ".join(errors))


def build_engine(
    onnx_path: str | Path,
    *,
    fp16: bool = False,
    int8_calibrator: Any = None,
    explicit_int8: bool = False,
    timing_cache_path: str | Path | None = None,
    min_hw: tuple[int, int] = DEFAULT_MIN_HW,
    opt_hw: tuple[int, int] = DEFAULT_OPT_HW,
    max_hw: tuple[int, int] = DEFAULT_MAX_HW,
    workspace_bytes: int = 1 << 30,
) -> bytes:
    """Parse the ONNX and build a serialized engine with one profile covering min..max H,W.

    ``explicit_int8``: the ONNX is already quantised (QuantizeLinear / DequantizeLinear pairs,
    ``training.quantize``); the INT8 flag lets TensorRT run those layers in int8, no calibrator.

    Every graph input gets the profile [1, C, H, W] with its static channel count. The timing
    cache, when given, is read before and written after the build (speeds up rebuilds).
    """
    trt = _import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    onnx_bytes = Path(onnx_path).read_bytes()
    if not parser.parse(onnx_bytes, str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        channels = int(tensor.shape[1])
        if channels <= 0:
            raise BackendError(f"input {tensor.name} has a dynamic channel count")
        profile.set_shape(
            tensor.name,
            (1, channels, *min_hw),
            (1, channels, *opt_hw),
            (1, channels, *max_hw),
        )
    config.add_optimization_profile(profile)
    if explicit_int8:
        config.set_flag(trt.BuilderFlag.INT8)
    if int8_calibrator is not None:
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = int8_calibrator
        config.set_calibration_profile(profile)
    timing_cache = None
    if timing_cache_path is not None:
        cached = Path(timing_cache_path).read_bytes() if Path(timing_cache_path).is_file() else b""
        timing_cache = config.create_timing_cache(cached)
        config.set_timing_cache(timing_cache, False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendError(f"TensorRT failed to build an engine from {onnx_path}")
    if timing_cache_path is not None:
        Path(timing_cache_path).write_bytes(bytes(config.get_timing_cache().serialize()))
    return bytes(serialized)


class TensorRTBackend:
    """Runs a cached (or freshly built) TensorRT engine for the bundle."""

    def __init__(
        self,
        bundle: ModelBundle,
        *,
        fp16: bool = False,
        device: int = 0,
        min_hw: tuple[int, int] | None = None,
        opt_hw: tuple[int, int] = DEFAULT_OPT_HW,
        max_hw: tuple[int, int] = DEFAULT_MAX_HW,
    ) -> None:
        self.trt = _import_tensorrt()
        self.bundle = bundle
        if not bundle.onnx_path.is_file():
            raise BackendError(f"ONNX file {bundle.onnx_path} is missing")
        multiple = max(1, bundle.inputs.pad_multiple)
        if bundle.inputs.height and bundle.inputs.width:
            fixed = (bundle.inputs.height, bundle.inputs.width)
            min_hw = opt_hw = max_hw = fixed
        min_hw = min_hw or (multiple, multiple)
        validate_profile(min_hw, opt_hw, max_hw, multiple)
        self.cuda = open_cuda(device)
        precision = "fp16" if fp16 else "fp32"
        self.explicit_int8 = bundle.precision == "int8"  # the bundle's QDQ graph
        if self.explicit_int8:
            precision = f"int8-{precision}"
        self.key = EngineKey(
            trt_version=str(self.trt.__version__),
            gpu_name=self.cuda.gpu_name,
            precision=precision,
            onnx_sha256=sha256_of_file(bundle.onnx_path),
            min_hw=tuple(min_hw),
            opt_hw=tuple(opt_hw),
            max_hw=tuple(max_hw),
        )
        self.runtime = self.trt.Runtime(self.trt.Logger(self.trt.Logger.WARNING))
        self.engine_path, self.engine = self._load_or_build(fp16)
        self.context = self.engine.create_execution_context()
        self._check_io()
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device ptr, capacity bytes)
        self.name = f"tensorrt:{precision}:{self.cuda.gpu_name}"

    def _load_or_build(self, fp16: bool) -> tuple[Path, Any]:
        """(cache path, deserialized engine): a matching cache, else a fresh build (cached)."""
        name = engine_cache_name(self.bundle.onnx_path.stem, self.key)
        for folder in engine_cache_dirs(self.bundle.folder):
            path = folder / name
            if path.is_file():
                engine_bytes = unpack_engine_cache(path.read_bytes(), self.key)
                # TensorRT's own check is the second guard: None for a foreign engine.
                engine = (
                    self.runtime.deserialize_cuda_engine(engine_bytes) if engine_bytes else None
                )
                if engine is not None:
                    return path, engine
        engine_bytes = build_engine(
            self.bundle.onnx_path,
            fp16=fp16,
            explicit_int8=self.explicit_int8,
            min_hw=self.key.min_hw,
            opt_hw=self.key.opt_hw,
            max_hw=self.key.max_hw,
        )
        engine = self.runtime.deserialize_cuda_engine(engine_bytes)
        if engine is None:
            raise BackendError(f"TensorRT could not deserialize the engine it just built ({name})")
        data = pack_engine_cache(self.key, engine_bytes)
        for folder in engine_cache_dirs(self.bundle.folder):
            try:
                folder.mkdir(parents=True, exist_ok=True)
                path = folder / name
                tmp = path.with_suffix(".tmp")
                tmp.write_bytes(data)
                tmp.replace(path)  # atomic: a crash mid-write never leaves a half cache file
                return path, engine
            except OSError:
                continue  # read-only bundle folder: try the per-user cache folder
        return Path("<not cached>"), engine

    def _check_io(self) -> None:
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = {n for n in names if self.engine.get_tensor_mode(n) == self.trt.TensorIOMode.INPUT}
        expected = {self.bundle.inputs.ir_name, self.bundle.inputs.visible_name}
        if inputs != expected:
            raise BackendError(f"engine inputs {sorted(inputs)} != bundle's {sorted(expected)}")
        missing = [n for n in self.bundle.output_names if n not in names]
        if missing:
            raise BackendError(f"engine lacks outputs {missing} named in model.yaml")
        self._io_names = names

    def _device_buffer(self, name: str, nbytes: int) -> int:
        ptr, capacity = self._buffers.get(name, (0, 0))
        if capacity < nbytes:
            if ptr:
                self.cuda.free(ptr)
            ptr = self.cuda.malloc(nbytes)
            self._buffers[name] = (ptr, nbytes)
        return ptr

    def infer(self, ir: np.ndarray, visible_ycrcb: np.ndarray) -> dict[str, np.ndarray]:
        ir, visible_ycrcb = check_inputs(self.bundle, ir, visible_ycrcb)
        height, width = ir.shape[2:]
        lo, hi = self.key.min_hw, self.key.max_hw
        if not (lo[0] <= height <= hi[0] and lo[1] <= width <= hi[1]):
            raise BackendError(f"input {height}x{width} is outside the engine profile {lo}..{hi}")
        feeds = {self.bundle.inputs.ir_name: ir, self.bundle.inputs.visible_name: visible_ycrcb}
        for name, array in feeds.items():
            host = np.ascontiguousarray(
                array, dtype=self.trt.nptype(self.engine.get_tensor_dtype(name))
            )
            feeds[name] = host
            if not self.context.set_input_shape(name, host.shape):
                raise BackendError(f"TensorRT refused input shape {host.shape} for {name}")
            ptr = self._device_buffer(name, host.nbytes)
            self.cuda.upload(ptr, host)
            self.context.set_tensor_address(name, ptr)
        outputs: dict[str, np.ndarray] = {}
        for name in self._io_names:
            if name in feeds:
                continue
            shape = tuple(self.context.get_tensor_shape(name))
            dtype = self.trt.nptype(self.engine.get_tensor_dtype(name))
            host = np.empty(shape, dtype=dtype)
            ptr = self._device_buffer(name, host.nbytes)
            self.context.set_tensor_address(name, ptr)
            outputs[name] = host
        if not self.context.execute_async_v3(self.cuda.stream_handle):
            raise BackendError("TensorRT execute_async_v3 failed")
        for name, host in outputs.items():
            self.cuda.download(host, self._buffers[name][0])
        self.cuda.synchronize()
        return {n: outputs[n].astype(np.float32, copy=False) for n in self.bundle.output_names}

    def __del__(self) -> None:
        for ptr, _ in getattr(self, "_buffers", {}).values():
            try:
                self.cuda.free(ptr)
            except Exception:  # interpreter shutdown: the driver frees the context anyway
                pass


def _read_pair_for_calibration(
    ir_path: Path, vi_path: Path, hw: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """IR and visible resized to ``hw``, prepared as the node does (processing.prepare_inputs)."""
    import cv2

    ir = cv2.imread(str(ir_path), cv2.IMREAD_GRAYSCALE)
    vi = cv2.imread(str(vi_path), cv2.IMREAD_COLOR)
    if ir is None or vi is None:
        raise BackendError(f"cannot read calibration pair {ir_path} / {vi_path}")
    size = (hw[1], hw[0])
    ir = cv2.resize(ir, size, interpolation=cv2.INTER_AREA)
    vi = cv2.resize(vi, size, interpolation=cv2.INTER_AREA)
    from ros2_bilevel_fusion.core.bundle import InputSpec, ModelBundle
    from ros2_bilevel_fusion.core.processing import prepare_inputs

    # hw is a multiple of the pad multiple (validate_profile), so no padding is needed here:
    # a bundle of the dynamic-size, unpadded contract stands in for the one being built.
    unpadded = ModelBundle(name="calibration", onnx_path=ir_path, inputs=InputSpec(pad_multiple=1))
    prepared = prepare_inputs(ir, vi, unpadded)
    return prepared.ir, prepared.visible_ycrcb


def calibration_pairs(folder: str | Path) -> list[tuple[Path, Path]]:
    """(ir, vi) file pairs sharing a name under ``folder/ir`` and ``folder/vi``."""
    folder = Path(folder)
    ir_files = {p.name: p for p in sorted((folder / "ir").glob("*")) if p.is_file()}
    pairs = [(ir_files[n], folder / "vi" / n) for n in ir_files if (folder / "vi" / n).is_file()]
    if not pairs:
        raise BackendError(f"{folder} has no ir/ + vi/ pairs with matching names")
    return pairs


def ImageFolderCalibrator(  # noqa: N802 - reads like the class it returns
    folder: str | Path,
    *,
    hw: tuple[int, int] = DEFAULT_OPT_HW,
    max_images: int = 64,
    cache_path: str | Path | None = None,
    ir_name: str = "ir",
    visible_name: str = "visible_ycrcb",
    device: int = 0,
) -> Any:
    """An IInt8EntropyCalibrator2 over ``folder/ir`` + ``folder/vi`` pairs (batch size 1).

    A factory rather than a module-level class because the base class lives in tensorrt, which
    must not be imported unless TensorRT is actually used.
    """
    trt = _import_tensorrt()
    pairs = calibration_pairs(folder)[:max_images]

    class _ImageFolderCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.cuda = open_cuda(device)
            self.index = 0
            self.pointers: dict[str, int] = {}

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self.index >= len(pairs):
                return None
            ir, vis = _read_pair_for_calibration(*pairs[self.index], hw)
            self.index += 1
            feeds = {ir_name: ir, visible_name: vis}
            for name, array in feeds.items():
                if name not in self.pointers:
                    self.pointers[name] = self.cuda.malloc(array.nbytes)
                self.cuda.upload(self.pointers[name], array)
            self.cuda.synchronize()
            return [self.pointers[n] for n in names]

        def read_calibration_cache(self) -> bytes | None:
            if cache_path is not None and Path(cache_path).is_file():
                return Path(cache_path).read_bytes()
            return None

        def write_calibration_cache(self, cache: Any) -> None:
            if cache_path is not None:
                Path(cache_path).write_bytes(bytes(cache))

    return _ImageFolderCalibrator()


def make_int8_calibrator(calib_dir: str | Path, **kwargs: Any) -> Any:
    """The name training/export.py calls for ``--int8 --calib DIR``: an ImageFolderCalibrator."""
    return ImageFolderCalibrator(calib_dir, **kwargs)
