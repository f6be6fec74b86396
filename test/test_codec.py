"""Image codec: round trips, padded rows, byte order, malformed input, thermal gain control,
packed 4:2:2 and 16-bit Bayer with known synthetic values, CompressedImage (JPEG, PNG, 16-bit
PNG)."""

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
    if encoding in ("rgb16", "bgr16"):
        return rng.integers(0, 65536, (H, W, 3), dtype=np.uint16)
    if encoding in ("rgba16", "bgra16"):
        return rng.integers(0, 65536, (H, W, 4), dtype=np.uint16)
    if encoding.startswith("bayer") and encoding.endswith("16"):
        return synthetic_smooth_bgr().astype(np.uint16) * 257
    return synthetic_smooth_bgr()


PACKED_422 = ("yuv", "uyvy", "yuyv")
LOSSLESS = sorted(e for e in SUPPORTED_ENCODINGS if not e.startswith((*PACKED_422, "bayer")))
LOSSY = sorted(e for e in SUPPORTED_ENCODINGS if e.startswith((*PACKED_422, "bayer")))


def test_supported_encodings_are_the_agreed_set() -> None:
    assert SUPPORTED_ENCODINGS == {
        "mono8", "mono16", "8UC1", "16UC1", "32FC1", "rgb8", "bgr8", "8UC3", "rgba8", "bgra8",
        "rgb16", "bgr16", "rgba16", "bgra16",
        "uyvy", "yuyv", "yuv422", "yuv422_yuy2",
        "bayer_rggb8", "bayer_bggr8", "bayer_gbrg8", "bayer_grbg8",
        "bayer_rggb16", "bayer_bggr16", "bayer_gbrg16", "bayer_grbg16",
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
    original = synthetic_array(encoding, np.random.default_rng(0))
    height, width, step, data = encode(original, encoding)
    expected_step = 2 * W if encoding.startswith(PACKED_422) or encoding.endswith("16") else W
    assert step == expected_step
    decoded = decode(height, width, encoding, step, 0, data)
    assert decoded.shape == (H, W, 3) and decoded.dtype == original.dtype
    if decoded.dtype == np.uint16:  # compare in 8-bit units
        decoded, original = decoded // 257, original // 257
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


# (row, col) of R and of B in the 2x2 cell of each pattern, written out from the ROS names.
BAYER_CELLS = {
    "rggb": ((0, 0), (1, 1)),
    "bggr": ((1, 1), (0, 0)),
    "gbrg": ((1, 0), (0, 1)),
    "grbg": ((0, 1), (1, 0)),
}


@pytest.mark.parametrize("pattern", sorted(BAYER_CELLS))
@pytest.mark.parametrize("big_endian", [False, True])
def test_bayer16_known_mosaic_decodes_to_known_bgr16(pattern: str, big_endian: bool) -> None:
    """Synthetic mosaic with R=40000, G=20000, B=10000 counts in every cell: a uniform scene,
    so every interior pixel must demosaic to exactly (B, G, R) = (10000, 20000, 40000)."""
    (r_row, r_col), (b_row, b_col) = BAYER_CELLS[pattern]
    mosaic = np.full((8, 10), 20000, np.uint16)
    mosaic[r_row::2, r_col::2] = 40000
    mosaic[b_row::2, b_col::2] = 10000
    data = mosaic.astype(">u2" if big_endian else "<u2").tobytes()
    decoded = decode(8, 10, f"bayer_{pattern}16", 20, int(big_endian), data)
    assert decoded.dtype == np.uint16 and decoded.shape == (8, 10, 3)
    np.testing.assert_array_equal(
        decoded[2:-2, 2:-2], np.broadcast_to([10000, 20000, 40000], (4, 6, 3))
    )


@pytest.mark.parametrize(
    ("encoding", "alias", "pixel_pair"),
    [
        # Synthetic BT.601 red (Y=81, U=90, V=240) twice: U Y V Y for UYVY, Y U Y V for YUYV.
        ("uyvy", "yuv422", [90, 81, 240, 81]),
        ("yuyv", "yuv422_yuy2", [81, 90, 81, 240]),
    ],
)
def test_packed_422_known_values(encoding: str, alias: str, pixel_pair: list[int]) -> None:
    grey_pair = [128, 128, 128, 128]
    row = np.array(pixel_pair * 2 + grey_pair * 2, np.uint8)  # 4 red pixels, 4 grey pixels
    data = np.tile(row, (2, 1)).tobytes()
    decoded = decode(2, 8, encoding, 16, 0, data)
    assert decoded.shape == (2, 8, 3) and decoded.dtype == np.uint8
    np.testing.assert_allclose(decoded[:, :4].reshape(-1, 3), [[0, 0, 255]] * 8, atol=2)
    np.testing.assert_allclose(decoded[:, 4:].reshape(-1, 3), [[130, 130, 130]] * 8, atol=2)
    np.testing.assert_array_equal(decode(2, 8, alias, 16, 0, data), decoded)


def test_16_bit_colour_goes_through_gain_with_balance_kept() -> None:
    """A 12-bit sensor in 16-bit words (values < 4096) must not come out nearly black, and the
    three channels share one stretch, so a grey ramp stays grey."""
    ramp = np.tile(np.linspace(100, 4000, W), (H, 1)).astype(np.uint16)
    bgr16 = np.dstack([ramp, ramp, ramp])
    out = to_bgr8(bgr16, "bgr16", AutoGain(GainControl(0.0, 100.0)))
    assert out.dtype == np.uint8 and out[:, -1].min() == 255 and out[:, 0].max() == 0
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    rgb16 = bgr16.copy()
    rgb16[..., 0] //= 2  # less red (channel 0 of rgb16): the stretch must not equalise it
    out = to_bgr8(rgb16, "rgb16", AutoGain(GainControl(0.0, 100.0)))
    assert (out[..., 2].astype(int) <= out[..., 0]).all() and out[:, -1, 2].max() < 200
    grey = to_mono8(bgr16, "bgr16", AutoGain(GainControl(0.0, 100.0)))
    assert grey.dtype == np.uint8 and grey[:, -1].min() == 255


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


def test_every_percentile_pair_is_checked_by_one_rule_that_names_its_fields() -> None:
    """GainControl, the bundle's thermal preprocessing and its fused stretch refuse the same
    limits (low must be below high, both within 0..100, NaN too) and name their own fields."""
    from ros2_bilevel_fusion.core.bundle import FusedStretchSpec, PreprocessSpec

    makers = [
        ("low_percentile < high_percentile", lambda lo, hi: GainControl(lo, hi)),
        ("thermal_low_percentile < thermal_high_percentile", lambda lo, hi: PreprocessSpec(
            thermal_low_percentile=lo, thermal_high_percentile=hi)),
        ("low_percentile < high_percentile", lambda lo, hi: FusedStretchSpec(lo, hi)),
    ]
    for fields, make in makers:
        for low, high in [(50.0, 10.0), (5.0, 5.0), (-1.0, 50.0), (1.0, 100.5),
                          (float("nan"), 99.0)]:
            with pytest.raises(ValueError, match=f"need 0 <= {fields} <= 100"):
                make(low, high)
        make(0.0, 100.0)  # the whole range is allowed


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


# ---------------------------------------------------------------- CompressedImage


@pytest.mark.parametrize(
    ("text", "codec_name", "encoding", "target"),
    [
        ("bgr8; jpeg compressed bgr8", "jpeg", "bgr8", "bgr8"),
        ("rgb8; jpeg compressed bgr8", "jpeg", "rgb8", "bgr8"),
        ("mono8; jpeg compressed ", "jpeg", "mono8", ""),
        ("mono16; png compressed mono16", "png", "mono16", "mono16"),
        ("jpeg", "jpeg", "", ""),
        ("PNG", "png", "", ""),
    ],
)
def test_compressed_format_parses_image_transport_strings(
    text: str, codec_name: str, encoding: str, target: str
) -> None:
    parsed = codec.CompressedFormat.parse(text)
    assert (parsed.codec, parsed.encoding, parsed.target) == (codec_name, encoding, target)


def test_compressed_depth_is_refused_by_name() -> None:
    with pytest.raises(ImageCodecError, match="compressedDepth"):
        codec.decode_compressed("16UC1; compressedDepth png", b"\x00" * 20)


def test_jpeg_colour_decodes_as_bgr8_within_jpeg_error() -> None:
    original = synthetic_smooth_bgr()
    rgb = original[..., ::-1].copy()
    format_text, data = codec.encode_compressed(rgb, "rgb8", "jpeg")
    assert format_text == "rgb8; jpeg compressed bgr8"
    decoded, encoding = codec.decode_compressed(format_text, data)
    assert encoding == "bgr8" and decoded.shape == (H, W, 3)
    assert np.abs(decoded.astype(int) - original.astype(int)).mean() < 3.0
    # A publisher that writes just "jpeg" decodes the same way.
    np.testing.assert_array_equal(codec.decode_compressed("jpeg", data)[0], decoded)


@pytest.mark.parametrize("encoding", ["mono8", "bgr8", "rgb8", "bgra8", "mono16", "16UC1", "bgr16"])
def test_png_is_lossless_for_8_and_16_bit(encoding: str) -> None:
    original = synthetic_array(encoding, np.random.default_rng(11))
    format_text, data = codec.encode_compressed(original, encoding, "png")
    decoded, decoded_encoding = codec.decode_compressed(format_text, data)
    if encoding in ("rgb8", "bgra8"):
        # As image_transport's plugin: colour is compressed as BGR, without alpha.
        original, encoding = to_bgr8(original, encoding), "bgr8"
    assert decoded_encoding == encoding
    assert decoded.dtype == original.dtype
    np.testing.assert_array_equal(decoded, original)


def test_png_16_bit_thermal_keeps_counts_and_goes_through_gain() -> None:
    frame = synthetic_thermal16(np.random.default_rng(12))
    format_text, data = codec.encode_compressed(frame, "mono16", "png")
    assert format_text == "mono16; png compressed mono16"
    decoded, encoding = codec.decode_compressed(format_text, data)
    assert encoding == "mono16" and decoded.dtype == np.uint16
    np.testing.assert_array_equal(decoded, frame)
    gain = GainControl(1.0, 99.0)
    np.testing.assert_array_equal(
        to_mono8(decoded, encoding, AutoGain(gain)), AutoGain(gain)(frame)
    )


def test_compressed_bayer_mosaic_is_demosaiced() -> None:
    red = np.zeros((H, W, 3), np.uint8)
    red[..., 2] = 200
    mosaic = np.frombuffer(encode(red, "bayer_rggb8")[3], np.uint8).reshape(H, W)
    ok, png = cv2.imencode(".png", mosaic)
    decoded, encoding = codec.decode_compressed("bayer_rggb8; png compressed ", png.tobytes())
    assert encoding == "bayer_rggb8" and decoded.shape == (H, W, 3)
    np.testing.assert_array_equal(decoded, decode(**_fields(red, "bayer_rggb8"), encoding=encoding))


@pytest.mark.parametrize(
    ("format_text", "data", "message"),
    [
        ("jpeg", b"", "no data"),
        ("jpeg", b"not a jpeg at all", "cannot decode"),
        ("png", 12345, "not a buffer"),
    ],
)
def test_malformed_compressed_raises_codec_error(format_text: str, data, message: str) -> None:
    with pytest.raises(ImageCodecError, match=message):
        codec.decode_compressed(format_text, data)


def test_jpeg_refuses_16_bit() -> None:
    with pytest.raises(ImageCodecError, match="8-bit"):
        codec.encode_compressed(np.zeros((H, W), np.uint16), "mono16", "jpeg")


@pytest.mark.skipif(codec._CompressedImageMsg is None, reason="sensor_msgs not importable")
def test_compressed_msg_round_trip_through_message_to_array() -> None:
    from std_msgs.msg import Header

    header = Header(frame_id="synthetic_cam")
    header.stamp.sec = 7
    original = synthetic_array("mono16", np.random.default_rng(13))
    msg = codec.array_to_compressed_msg(original, "mono16", "png", header)
    assert msg.header.frame_id == "synthetic_cam" and msg.format.startswith("mono16; png")
    decoded, encoding = codec.message_to_array(msg)
    assert encoding == "mono16"
    np.testing.assert_array_equal(decoded, original)
    raw = codec.array_to_msg(original, "mono16", header)
    decoded_raw, raw_encoding = codec.message_to_array(raw)
    assert raw_encoding == "mono16"
    np.testing.assert_array_equal(decoded_raw, original)
