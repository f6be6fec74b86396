"""Image codec: round trips, padded rows, byte order, malformed input, thermal gain control."""

from __future__ import annotations

import array

import cv2
import numpy as np
import pytest

from ros2_bilevel_fusion.messages import codec
from ros2_bilevel_fusion.messages.codec import (
    SUPPORTED_ENCODINGS,
    AutoGain,
    GainControl,
    ImageCodecError,
    decode,
    encode,
    to_bgr8,
    to_mono8,
)

H, W = 24, 32


def synthetic_smooth_bgr(height: int = H, width: int = W) -> np.ndarray:
    """Synthetic colour gradients: smooth enough that chroma subsampling/demosaicing is mild."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    bgr = np.stack(
        [
            40 + 150 * x / width,
            60 + 120 * y / height,
            200 - 100 * (x + y) / (width + height),
        ],
        axis=-1,
    )
    return np.rint(bgr).astype(np.uint8)


def synthetic_array(encoding: str, rng: np.random.Generator) -> np.ndarray:
    if encoding in ("mono8", "8UC1"):
        return rng.integers(0, 256, (H, W), dtype=np.uint8)
    if encoding in ("mono16", "16UC1"):
        return rng.integers(0, 65536, (H, W), dtype=np.uint16)
    if encoding == "32FC1":
        return rng.normal(300.0, 20.0, (H, W)).astype(np.float32)
    if encoding in ("rgb8", "bgr8", "8UC3"):
        return rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    if encoding in ("rgba8", "bgra8"):
        return rng.integers(0, 256, (H, W, 4), dtype=np.uint8)
    return synthetic_smooth_bgr()


LOSSLESS = sorted(e for e in SUPPORTED_ENCODINGS if not e.startswith(("yuv", "bayer")))
LOSSY = sorted(e for e in SUPPORTED_ENCODINGS if e.startswith(("yuv", "bayer")))


def test_supported_encodings_are_the_agreed_set() -> None:
    assert SUPPORTED_ENCODINGS == {
        "mono8", "mono16", "8UC1", "16UC1", "32FC1", "rgb8", "bgr8", "8UC3", "rgba8", "bgra8",
        "yuv422", "yuv422_yuy2", "bayer_rggb8", "bayer_bggr8", "bayer_gbrg8", "bayer_grbg8",
    }  # fmt: skip


@pytest.mark.parametrize("encoding", LOSSLESS)
def test_lossless_round_trip(encoding: str) -> None:
    original = synthetic_array(encoding, np.random.default_rng(0))
    height, width, step, data = encode(original, encoding)
    assert (height, width) == (H, W)
    assert len(data) == step * height
    decoded = decode(height, width, encoding, step, 0, data)
    assert decoded.dtype == original.dtype
    assert decoded.shape == original.shape
    np.testing.assert_array_equal(decoded, original)


@pytest.mark.parametrize("encoding", LOSSY)
def test_lossy_round_trip_within_tolerance(encoding: str) -> None:
    original = synthetic_smooth_bgr()
    height, width, step, data = encode(original, encoding)
    expected_step = 2 * W if encoding.startswith("yuv") else W
    assert step == expected_step
    decoded = decode(height, width, encoding, step, 0, data)
    assert decoded.shape == (H, W, 3) and decoded.dtype == np.uint8
    # Demosaicing is poor at the border; compare the interior.
    error = np.abs(decoded.astype(int) - original.astype(int))[2:-2, 2:-2]
    assert error.mean() < 4.0, f"{encoding}: mean error {error.mean():.2f}"
    assert error.max() < 20, f"{encoding}: max error {error.max()}"


@pytest.mark.parametrize("encoding", ["bayer_rggb8", "bayer_bggr8", "bayer_gbrg8", "bayer_grbg8"])
def test_bayer_pattern_names_match_ros(encoding: str) -> None:
    """A pure red synthetic image must decode red: catches swapped OpenCV Bayer codes."""
    red = np.zeros((H, W, 3), np.uint8)
    red[..., 2] = 200
    decoded = decode(**_fields(red, encoding), encoding=encoding)
    interior = decoded[2:-2, 2:-2].reshape(-1, 3).mean(axis=0)
    assert interior[2] > 150 and interior[0] < 30 and interior[1] < 30, interior


def _fields(image: np.ndarray, encoding: str) -> dict:
    height, width, step, data = encode(image, encoding)
    return dict(height=height, width=width, step=step, is_bigendian=0, data=data)


@pytest.mark.parametrize("encoding", sorted(SUPPORTED_ENCODINGS))
def test_padded_step_is_honoured(encoding: str) -> None:
    original = synthetic_array(encoding, np.random.default_rng(1))
    height, width, step, data = encode(original, encoding)
    padding = 7 if not encoding.startswith(("mono16", "16UC1", "32FC1")) else 8
    rows = np.frombuffer(data, np.uint8).reshape(height, step)
    padded = np.full((height, step + padding), 0xAB, np.uint8)
    padded[:, :step] = rows
    unpadded_result = decode(height, width, encoding, step, 0, data)
    padded_result = decode(height, width, encoding, step + padding, 0, padded.tobytes())
    np.testing.assert_array_equal(padded_result, unpadded_result)


@pytest.mark.parametrize("encoding", ["mono16", "32FC1"])
def test_odd_step_for_multibyte_pixels(encoding: str) -> None:
    original = synthetic_array(encoding, np.random.default_rng(2))
    height, width, step, data = encode(original, encoding)
    rows = np.frombuffer(data, np.uint8).reshape(height, step)
    padded = np.zeros((height, step + 3), np.uint8)
    padded[:, :step] = rows
    decoded = decode(height, width, encoding, step + 3, 0, padded.tobytes())
    np.testing.assert_array_equal(decoded, original)


@pytest.mark.parametrize(
    ("encoding", "dtype"), [("mono16", ">u2"), ("16UC1", ">u2"), ("32FC1", ">f4")]
)
def test_big_endian_is_converted_to_native(encoding: str, dtype: str) -> None:
    original = synthetic_array(encoding, np.random.default_rng(3))
    big = original.astype(dtype)
    decoded = decode(H, W, encoding, W * big.itemsize, 1, big.tobytes())
    assert decoded.dtype.isnative
    np.testing.assert_array_equal(decoded, original)


def test_is_bigendian_ignored_for_8_bit() -> None:
    original = synthetic_array("rgb8", np.random.default_rng(4))
    decoded = decode(H, W, "rgb8", W * 3, 1, original.tobytes())
    np.testing.assert_array_equal(decoded, original)


def test_decode_accepts_array_and_memoryview_without_copy() -> None:
    original = synthetic_array("mono8", np.random.default_rng(5))
    as_array = array.array("B", original.tobytes())
    decoded = decode(H, W, "mono8", W, 0, as_array)
    np.testing.assert_array_equal(decoded, original)
    assert np.shares_memory(decoded, np.frombuffer(as_array, np.uint8))
    decoded_mv = decode(H, W, "mono8", W, 0, memoryview(original.tobytes()))
    np.testing.assert_array_equal(decoded_mv, original)
    decoded_list = decode(H, W, "mono8", W, 0, original.ravel().tolist())
    np.testing.assert_array_equal(decoded_list, original)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(encoding="jpeg"), "unsupported image encoding"),
        (dict(height=0), "zero"),
        (dict(width=0), "zero"),
        (dict(step=W - 1), "step"),
        (dict(data=b"\x00" * (H * W - 1)), "needs"),
        (dict(data=b""), "needs"),
        (dict(data=12345), "not a buffer"),
        (dict(data=[300] * (H * W)), "list of bytes"),
        (dict(encoding="yuv422", width=W - 1, step=2 * W), "even width"),
        (dict(encoding="mono16", step=W), "step"),
    ],
)
def test_malformed_input_raises_codec_error(kwargs: dict, message: str) -> None:
    fields = dict(height=H, width=W, encoding="mono8", step=W, is_bigendian=0, data=bytes(H * W))
    fields.update(kwargs)
    with pytest.raises(ImageCodecError, match=message):
        decode(**fields)


def test_codec_error_is_a_value_error() -> None:
    assert issubclass(ImageCodecError, ValueError)


@pytest.mark.parametrize(
    ("array_in", "encoding"),
    [
        (np.zeros((H, W), np.uint16), "mono8"),
        (np.zeros((H, W, 3), np.uint8), "mono8"),
        (np.zeros((H, W), np.uint8), "bgr8"),
        (np.zeros((H, W - 1, 3), np.uint8), "yuv422"),
        (np.zeros((0, W), np.uint8), "mono8"),
        (np.zeros((H, W), np.uint8), "nv12"),
    ],
)
def test_encode_rejects_mismatched_arrays(array_in: np.ndarray, encoding: str) -> None:
    with pytest.raises(ImageCodecError):
        encode(array_in, encoding)


def synthetic_thermal16(rng: np.random.Generator) -> np.ndarray:
    """Synthetic 16-bit radiometric frame: 7000-8000 counts background, one hot blob, noise."""
    y, x = np.mgrid[0:512, 0:640]
    frame = 7000 + 1000 * x / 640 + rng.normal(0, 20, (512, 640))
    frame += 6000 * np.exp(-(((x - 320) ** 2 + (y - 256) ** 2) / (2 * 30.0**2)))
    frame[0, 0] = 65535  # a dead hot pixel must not dictate the stretch
    return np.clip(frame, 0, 65535).astype(np.uint16)


def test_autogain_stretches_16_bit_thermal() -> None:
    frame = synthetic_thermal16(np.random.default_rng(6))
    out = AutoGain(GainControl(1.0, 99.0))(frame)
    assert out.dtype == np.uint8 and out.shape == frame.shape
    # Percentile stretch: ~1% saturated at each end, full range used.
    assert 0.002 < np.mean(out == 0) < 0.05
    assert 0.002 < np.mean(out == 255) < 0.05
    # Monotonic: order of pixel values is preserved.
    order = np.argsort(frame.ravel()[::97], kind="stable")
    assert np.all(np.diff(out.ravel()[::97][order].astype(int)) >= 0)
    assert out[256, 320] == 255 and out[300, 10] < 60


def test_autogain_matches_exact_percentiles_closely() -> None:
    frame = synthetic_thermal16(np.random.default_rng(7))
    gain = AutoGain(GainControl(2.0, 98.0))
    gain(frame)
    low, high = np.percentile(frame, [2.0, 98.0])
    assert gain.limits is not None
    assert abs(gain.limits[0] - low) < 15 and abs(gain.limits[1] - high) < 60


def test_autogain_constant_and_non_finite_images() -> None:
    gain = AutoGain()
    np.testing.assert_array_equal(gain(np.full((8, 8), 1234, np.uint16)), 0)
    np.testing.assert_array_equal(gain(np.full((8, 8), np.nan, np.float32)), 0)
    frame = np.linspace(20.0, 40.0, 64, dtype=np.float32).reshape(8, 8)
    frame[0, 0] = np.nan
    frame[0, 1] = np.inf
    frame[0, 2] = -np.inf
    out = AutoGain(GainControl(0.0, 100.0))(frame)
    assert out[0, 0] == 0 and out[0, 1] == 255 and out[0, 2] == 0
    assert out[7, 7] == 255 and out[0, 3] < 20


def test_autogain_smoothing_moves_limits_gradually() -> None:
    gain = AutoGain(GainControl(0.0, 100.0, smoothing=0.5))
    gain(np.array([[0, 100]], np.uint16))
    assert gain.limits == (0.0, 100.0)
    gain(np.array([[100, 200]], np.uint16))
    assert gain.limits == (50.0, 150.0)
    without = AutoGain(GainControl(0.0, 100.0))
    without(np.array([[0, 100]], np.uint16))
    without(np.array([[100, 200]], np.uint16))
    assert without.limits == (100.0, 200.0)


def test_gain_control_validates() -> None:
    with pytest.raises(ValueError):
        GainControl(50.0, 10.0)
    with pytest.raises(ValueError):
        GainControl(smoothing=1.0)


def test_to_mono8_and_to_bgr8_per_encoding() -> None:
    rng = np.random.default_rng(8)
    mono = synthetic_array("mono8", rng)
    assert to_mono8(mono, "mono8", None) is mono
    bgr = synthetic_array("bgr8", rng)
    rgb = bgr[..., ::-1].copy()
    np.testing.assert_array_equal(to_mono8(rgb, "rgb8"), cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
    np.testing.assert_array_equal(to_bgr8(rgb, "rgb8"), bgr)
    bgra = np.dstack([bgr, np.full((H, W), 255, np.uint8)])
    np.testing.assert_array_equal(to_bgr8(bgra, "bgra8"), bgr)
    thermal = synthetic_array("mono16", rng)
    grey = to_mono8(thermal, "mono16", AutoGain())
    assert grey.dtype == np.uint8 and grey.max() == 255
    as_bgr = to_bgr8(thermal, "mono16")
    assert as_bgr.shape == (H, W, 3)
    np.testing.assert_array_equal(as_bgr[..., 0], as_bgr[..., 2])
    with pytest.raises(ImageCodecError):
        to_mono8(bgr, "mono8")


@pytest.mark.skipif(codec._ImageMsg is None, reason="sensor_msgs not importable")
def test_msg_round_trip() -> None:
    from std_msgs.msg import Header

    header = Header(frame_id="cam")
    header.stamp.sec = 12
    original = synthetic_array("mono16", np.random.default_rng(9))
    msg = codec.array_to_msg(original, "mono16", header)
    assert msg.header.frame_id == "cam" and msg.header.stamp.sec == 12
    assert (msg.height, msg.width, msg.step, msg.encoding) == (H, W, 2 * W, "mono16")
    assert isinstance(msg.data, array.array)
    np.testing.assert_array_equal(codec.msg_to_array(msg), original)


def test_8uc3_reads_as_bgr_and_encode_array_is_the_message_data() -> None:
    image = synthetic_smooth_bgr()
    height, width, step, data = codec.encode_array(image, "8UC3")
    assert data.dtype == np.uint8 and data.ndim == 1 and data.size == step * height
    decoded = decode(height, width, "8UC3", step, 0, data)
    np.testing.assert_array_equal(to_bgr8(decoded, "8UC3"), image)
    np.testing.assert_array_equal(to_mono8(decoded, "8UC3"), to_mono8(image, "bgr8"))
    # encode() is the same data as bytes
    assert encode(image, "8UC3") == (height, width, step, data.tobytes())
