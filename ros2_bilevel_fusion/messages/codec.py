"""sensor_msgs/Image and CompressedImage <-> numpy, for every common encoding; 16-bit and float
images go to 8 bits through the core's gain control (``core.gain.AutoGain``, re-exported here).

The one Image codec of the package: the node, the bag tools and the evaluation all use it.
The pure functions (:func:`decode`, :func:`encode`, :func:`encode_array`,
:func:`decode_compressed`, :func:`encode_compressed`, :class:`AutoGain`, :func:`to_mono8`,
:func:`to_bgr8`) need only numpy and OpenCV. :func:`msg_to_array` reads any Image-like message
(rclpy's, or rosbags' dataclass: the same field names), :func:`message_to_array` an Image or a
CompressedImage; :func:`array_to_msg` and :func:`array_to_compressed_msg` build rclpy messages
and need ROS only when called.

Conventions:

* ``decode`` returns a view of the message buffer whenever the layout allows (8-bit data,
  16-bit/float in native byte order); such views are read-only when the buffer is ``bytes``.
  Callers that write in place must copy first.
* ``uyvy`` and its older ROS name ``yuv422`` are UYVY; ``yuyv`` and its older name
  ``yuv422_yuy2`` are YUYV; they, and the Bayer patterns, decode to bgr8 (``bayer_*16``: to a
  uint16 BGR image). Their ``encode`` is lossy (chroma subsampling, demosaicing).
* Bayer names follow ROS (``bayer_rggb8``: the top-left 2x2 cell is R G / G B). OpenCV's
  ``COLOR_BayerRGGB2BGR`` is the matching conversion (its older alias is ``BayerBG2BGR``).
* 16-bit colour (``bgr16``, ``rgb16``, ``bgra16``, ``rgba16``, ``bayer_*16``) becomes 8-bit in
  :func:`to_bgr8`/:func:`to_mono8` through the same gain control as 16-bit thermal (one stretch
  for all channels, so colours keep their balance): a 12-bit sensor in a 16-bit container is
  not shown nearly black.
* CompressedImage ``format`` follows image_transport's compressed plugin:
  ``"<encoding>; jpeg compressed <target>"`` or ``"<encoding>; png compressed <target>"`` (older
  publishers write just ``"jpeg"``/``"png"``). OpenCV decodes colour as BGR(A); a one-channel
  image is read with the original encoding when its layout matches (``mono16`` stays 16-bit,
  ``bayer_rggb8`` is demosaiced), else as mono8/mono16. ``compressedDepth`` is refused.
"""

from __future__ import annotations

import array
import sys
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

# The percentile stretch lives in the core (the pipeline stretches the fused image with it);
# re-exported here, where thermal decoding uses it.
from ros2_bilevel_fusion.core.gain import AutoGain as AutoGain
from ros2_bilevel_fusion.core.gain import GainControl as GainControl

try:  # Only the thin message wrappers need ROS; the pure functions work without it.
    from sensor_msgs.msg import CompressedImage as _CompressedImageMsg
    from sensor_msgs.msg import Image as _ImageMsg
except ImportError:  # pragma: no cover - exercised only where ROS is absent
    _ImageMsg = None
    _CompressedImageMsg = None


class ImageCodecError(ValueError):
    """An image message cannot be decoded or an array cannot be encoded as asked."""


@dataclass(frozen=True)
class _Layout:
    channels: int
    dtype: np.dtype  # element type in the message, little-endian form
    # Converter to bgr8 after reading the raw elements, or None if returned as read.
    to_bgr: int | None = None
    # Raw layout channel count when it differs from `channels` (packed yuv: 2 bytes/pixel).
    raw_channels: int | None = None


_U8 = np.dtype(np.uint8)
_U16 = np.dtype("<u2")
_F32 = np.dtype("<f4")

_LAYOUTS: dict[str, _Layout] = {
    "mono8": _Layout(1, _U8),
    "8UC1": _Layout(1, _U8),
    "mono16": _Layout(1, _U16),
    "16UC1": _Layout(1, _U16),
    "32FC1": _Layout(1, _F32),
    "rgb8": _Layout(3, _U8),
    "bgr8": _Layout(3, _U8),
    "8UC3": _Layout(3, _U8),  # read as BGR (OpenCV's order for a 3-channel 8-bit image)
    "rgba8": _Layout(4, _U8),
    "bgra8": _Layout(4, _U8),
    "rgb16": _Layout(3, _U16),
    "bgr16": _Layout(3, _U16),
    "rgba16": _Layout(4, _U16),
    "bgra16": _Layout(4, _U16),
    # Packed 4:2:2, two pixels in four bytes. ROS names each twice (old and new spelling).
    "uyvy": _Layout(3, _U8, cv2.COLOR_YUV2BGR_UYVY, raw_channels=2),
    "yuv422": _Layout(3, _U8, cv2.COLOR_YUV2BGR_UYVY, raw_channels=2),
    "yuyv": _Layout(3, _U8, cv2.COLOR_YUV2BGR_YUYV, raw_channels=2),
    "yuv422_yuy2": _Layout(3, _U8, cv2.COLOR_YUV2BGR_YUYV, raw_channels=2),
    "bayer_rggb8": _Layout(3, _U8, cv2.COLOR_BayerRGGB2BGR, raw_channels=1),
    "bayer_bggr8": _Layout(3, _U8, cv2.COLOR_BayerBGGR2BGR, raw_channels=1),
    "bayer_gbrg8": _Layout(3, _U8, cv2.COLOR_BayerGBRG2BGR, raw_channels=1),
    "bayer_grbg8": _Layout(3, _U8, cv2.COLOR_BayerGRBG2BGR, raw_channels=1),
    "bayer_rggb16": _Layout(3, _U16, cv2.COLOR_BayerRGGB2BGR, raw_channels=1),
    "bayer_bggr16": _Layout(3, _U16, cv2.COLOR_BayerBGGR2BGR, raw_channels=1),
    "bayer_gbrg16": _Layout(3, _U16, cv2.COLOR_BayerGBRG2BGR, raw_channels=1),
    "bayer_grbg16": _Layout(3, _U16, cv2.COLOR_BayerGRBG2BGR, raw_channels=1),
}
# BGR -> packed 4:2:2 for encode (the inverse of each layout's to_bgr).
_TO_YUV422 = {
    cv2.COLOR_YUV2BGR_UYVY: cv2.COLOR_BGR2YUV_UYVY,
    cv2.COLOR_YUV2BGR_YUYV: cv2.COLOR_BGR2YUV_YUYV,
}

SUPPORTED_ENCODINGS: frozenset[str] = frozenset(_LAYOUTS)

# Colour channel offsets of the 2x2 Bayer cell, (row, col) of R and of B; G fills the rest.
_BAYER_RB: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {
    "rggb": ((0, 0), (1, 1)),
    "bggr": ((1, 1), (0, 0)),
    "gbrg": ((1, 0), (0, 1)),
    "grbg": ((0, 1), (1, 0)),
}

_THERMAL_ENCODINGS = frozenset({"mono16", "16UC1", "32FC1"})
_MONO8_ENCODINGS = frozenset({"mono8", "8UC1"})


def _layout(encoding: str) -> _Layout:
    try:
        return _LAYOUTS[encoding]
    except KeyError:
        raise ImageCodecError(
            f"unsupported image encoding {encoding!r}; supported: {sorted(SUPPORTED_ENCODINGS)}"
        ) from None


def _as_byte_view(data: Any) -> memoryview:
    if isinstance(data, (list, tuple)):
        # Hand-built messages may carry a list of ints; slow, but not wrong.
        try:
            return memoryview(bytes(data))
        except (TypeError, ValueError) as exc:
            raise ImageCodecError(f"image data list is not a list of bytes: {exc}") from exc
    try:
        view = memoryview(data)
    except TypeError as exc:
        raise ImageCodecError(f"image data of type {type(data).__name__} is not a buffer") from exc
    if not view.c_contiguous:
        raise ImageCodecError("image data buffer is not contiguous")
    return view.cast("B")


def decode(
    height: int, width: int, encoding: str, step: int, is_bigendian: int | bool, data: Any
) -> np.ndarray:
    """Decode the fields of a sensor_msgs/Image into an array (see the module docstring)."""
    layout = _layout(encoding)
    height, width, step = int(height), int(width), int(step)
    if height <= 0 or width <= 0:
        raise ImageCodecError(f"{encoding} image has zero or negative size {width}x{height}")
    raw_channels = layout.raw_channels or layout.channels
    if layout.raw_channels == 2 and width % 2:
        raise ImageCodecError(
            f"{encoding} needs an even width (2 pixels share chroma), got {width}"
        )
    itemsize = layout.dtype.itemsize
    row_bytes = width * raw_channels * itemsize
    if step < row_bytes:
        raise ImageCodecError(
            f"{encoding} {width}x{height}: step {step} is smaller than one row ({row_bytes} bytes)"
        )
    buffer = _as_byte_view(data)
    # The last row need not carry its padding; ROS says len == step * height, we accept less.
    needed = step * (height - 1) + row_bytes
    if buffer.nbytes < needed:
        raise ImageCodecError(
            f"{encoding} {width}x{height} step {step}: data has {buffer.nbytes} bytes, "
            f"needs {needed}"
        )
    dtype = layout.dtype
    big_endian_data = bool(is_bigendian) and itemsize > 1
    if big_endian_data:
        dtype = dtype.newbyteorder(">")
    shape: tuple[int, ...] = (height, width)
    strides: tuple[int, ...] = (step, raw_channels * itemsize)
    if raw_channels > 1:
        shape += (raw_channels,)
        strides += (itemsize,)
    aligned = step % itemsize == 0
    if aligned:
        image = np.ndarray(shape, dtype=dtype, buffer=buffer, strides=strides)
    else:
        # Odd strides for multi-byte elements: read rows as bytes, then reinterpret a copy.
        rows = np.ndarray((height, row_bytes), dtype=_U8, buffer=buffer, strides=(step, 1))
        image = np.ascontiguousarray(rows).view(dtype).reshape(shape)
    if not image.dtype.isnative:
        image = image.astype(image.dtype.newbyteorder("="))
    if layout.to_bgr is not None:
        # cvtColor wants each row contiguous; row padding (step) is fine.
        return cv2.cvtColor(image, layout.to_bgr)
    return image


def _bgr_to_bayer(bgr: np.ndarray, encoding: str) -> np.ndarray:
    (r_row, r_col), (b_row, b_col) = _BAYER_RB[encoding[len("bayer_") : len("bayer_") + 4]]
    mosaic = bgr[:, :, 1].copy()
    mosaic[r_row::2, r_col::2] = bgr[r_row::2, r_col::2, 2]
    mosaic[b_row::2, b_col::2] = bgr[b_row::2, b_col::2, 0]
    return mosaic


def encode(array_in: np.ndarray, encoding: str) -> tuple[int, int, int, bytes]:
    """Encode an array as (height, width, step, data) in little-endian, unpadded rows.

    The array must have the shape and dtype :func:`decode` returns for ``encoding``: the packed
    4:2:2 encodings and bayer*8 take a bgr8 HxWx3 array, bayer*16 a uint16 one (lossy).
    """
    height, width, step, raw = encode_array(array_in, encoding)
    return height, width, step, raw.tobytes()


def encode_array(array_in: np.ndarray, encoding: str) -> tuple[int, int, int, np.ndarray]:
    """Like :func:`encode`, but the data as a flat uint8 array (a view of ``array_in`` when it
    is already C-contiguous little-endian): what a rosbags Image's ``data`` field holds."""
    layout = _layout(encoding)
    image = np.asarray(array_in)
    expected_channels = layout.channels
    expected_dtype = np.dtype(layout.dtype.newbyteorder("="))
    if image.ndim == 3 and image.shape[2] == 1 and expected_channels == 1:
        image = image[:, :, 0]
    expected_ndim = 2 if expected_channels == 1 else 3
    if (
        image.ndim != expected_ndim
        or (expected_ndim == 3 and image.shape[2] != expected_channels)
        or image.dtype != expected_dtype
    ):
        wanted = "HxW" if expected_channels == 1 else f"HxWx{expected_channels}"
        raise ImageCodecError(
            f"cannot encode {image.dtype} array of shape {image.shape} as {encoding}: "
            f"expected {expected_dtype} {wanted}"
        )
    height, width = image.shape[:2]
    if height == 0 or width == 0:
        raise ImageCodecError(f"cannot encode an empty {width}x{height} image")
    if layout.raw_channels == 2:
        if width % 2:
            raise ImageCodecError(f"{encoding} needs an even width, got {width}")
        image = cv2.cvtColor(np.ascontiguousarray(image), _TO_YUV422[layout.to_bgr])
    elif layout.raw_channels == 1:
        image = _bgr_to_bayer(image, encoding)
    image = np.ascontiguousarray(image, dtype=layout.dtype)
    step = image.strides[0]
    return height, width, step, image.view(np.uint8).reshape(-1)


def msg_to_array(msg: Any) -> np.ndarray:
    """Decode a sensor_msgs/Image, rclpy or rosbags (zero-copy where :func:`decode` can: copy
    the result before writing to it or keeping it past the message's life)."""
    return decode(msg.height, msg.width, msg.encoding, msg.step, msg.is_bigendian, msg.data)


def array_to_msg(array_in: np.ndarray, encoding: str, header: Any = None) -> Any:
    """Build a sensor_msgs/Image; ``header`` (std_msgs/Header) is copied in when given."""
    if _ImageMsg is None:
        raise ImportError("sensor_msgs is not importable; array_to_msg needs ROS 2 messages")
    height, width, step, raw = encode_array(array_in, encoding)
    msg = _ImageMsg()
    if header is not None:
        msg.header = header
    msg.height = height
    msg.width = width
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = step
    # The generated setter keeps an array.array('B') as is; anything else is converted, and
    # with ROS_PYTHON_CHECK_FIELDS=1 bytes/lists go through a per-element check that costs
    # seconds on a 640x512 image. One memcpy straight from the numpy buffer.
    buffer = array.array("B")
    buffer.frombytes(memoryview(raw).cast("B"))
    msg.data = buffer
    return msg


# ---------------------------------------------------------------- CompressedImage

COMPRESSED_CODECS = ("jpeg", "png")
_CODEC_EXTENSIONS = {"jpeg": ".jpg", "jpg": ".jpg", "png": ".png"}
# OpenCV reads colour as BGR(A): the encoding of a decoded array, by (channels, dtype).
_DECODED_ENCODINGS = {
    (1, np.dtype(np.uint8)): "mono8",
    (1, np.dtype(np.uint16)): "mono16",
    (1, np.dtype(np.float32)): "32FC1",
    (3, np.dtype(np.uint8)): "bgr8",
    (3, np.dtype(np.uint16)): "bgr16",
    (4, np.dtype(np.uint8)): "bgra8",
    (4, np.dtype(np.uint16)): "bgra16",
}


@dataclass(frozen=True)
class CompressedFormat:
    """A parsed CompressedImage ``format``: ``"<encoding>; <codec> compressed <target>"``."""

    codec: str  # "jpeg", "png", or what an unusual publisher wrote ("" when unknown)
    encoding: str = ""  # the image's encoding before compression ("" when not given)
    target: str = ""  # the encoding that was compressed ("" when not given)

    @classmethod
    def parse(cls, text: str) -> CompressedFormat:
        text = str(text).strip()
        if "compresseddepth" in text.lower():
            raise ImageCodecError(
                f"CompressedImage format {text!r} is compressedDepth (depth images), which this "
                "codec does not read; use the raw or compressed transport"
            )
        if ";" not in text:  # old publishers: just "jpeg" / "png"
            return cls(codec=text.lower())
        encoding, _, rest = text.partition(";")
        words = rest.split()
        codec = words[0].lower() if words else ""
        target = words[2] if len(words) > 2 and words[1] == "compressed" else ""
        return cls(codec=codec, encoding=encoding.strip(), target=target)

    def __str__(self) -> str:
        if not self.encoding:
            return self.codec
        return f"{self.encoding}; {self.codec} compressed {self.target}".rstrip()


def decode_compressed(format_text: str, data: Any) -> tuple[np.ndarray, str]:
    """Decode a CompressedImage (``format``, ``data``) into (array, encoding): the array is what
    :func:`decode` returns for that encoding, so it goes on through :func:`to_mono8` /
    :func:`to_bgr8` like a raw image."""
    parsed = CompressedFormat.parse(format_text)
    buffer = np.frombuffer(_as_byte_view(data), np.uint8)
    if buffer.size == 0:
        raise ImageCodecError(f"CompressedImage ({format_text!r}) has no data")
    image = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageCodecError(
            f"OpenCV cannot decode {buffer.size} bytes of CompressedImage format {format_text!r}"
        )
    channels = 1 if image.ndim == 2 else image.shape[2]
    if channels == 1 and image.ndim == 3:
        image = image[:, :, 0]
    generic = _DECODED_ENCODINGS.get((channels, image.dtype))
    if generic is None:
        raise ImageCodecError(
            f"CompressedImage ({format_text!r}) decoded to an unsupported {channels}-channel "
            f"{image.dtype} image"
        )
    if channels == 1:
        # A one-channel picture keeps the encoding it was compressed from when the layout
        # agrees: mono16 thermal stays 16-bit, a Bayer mosaic is demosaiced.
        for name in (parsed.target, parsed.encoding):
            layout = _LAYOUTS.get(name)
            if (
                layout is not None
                and (layout.raw_channels or layout.channels) == 1
                and layout.dtype.itemsize == image.dtype.itemsize
                and layout.dtype.kind == image.dtype.kind
            ):
                image = np.ascontiguousarray(image)
                return (
                    decode(
                        image.shape[0],
                        image.shape[1],
                        name,
                        image.strides[0],
                        sys.byteorder == "big",
                        image,
                    ),
                    name,
                )
    return image, generic


def encode_compressed(
    array_in: np.ndarray, encoding: str, codec: str = "jpeg", jpeg_quality: int = 95
) -> tuple[str, bytes]:
    """(format, data) of a CompressedImage as image_transport's compressed plugin writes it.

    Colour is compressed as BGR (``"rgb8; jpeg compressed bgr8"``); one-channel images as they
    are (``"mono16; png compressed mono16"``; JPEG takes 8-bit only). Bayer and packed 4:2:2
    images are compressed as their bgr8 picture.
    """
    codec = codec.lower()
    if codec not in _CODEC_EXTENSIONS:
        raise ImageCodecError(f"unsupported compression {codec!r}; use one of {COMPRESSED_CODECS}")
    codec = "jpeg" if codec == "jpg" else codec
    layout = _check_decoded(np.asarray(array_in), encoding)
    image = np.ascontiguousarray(array_in)
    if layout.channels == 1:
        target = encoding
    else:
        if encoding in _TO_BGR:
            image = cv2.cvtColor(image, _TO_BGR[encoding])
        target = "bgr8" if image.dtype == np.uint8 else "bgr16"
    if codec == "jpeg" and image.dtype != np.uint8:
        raise ImageCodecError(f"JPEG holds 8-bit images only; compress {encoding} as png")
    params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if codec == "jpeg" else []
    ok, buffer = cv2.imencode(_CODEC_EXTENSIONS[codec], image, params)
    if not ok:  # pragma: no cover - OpenCV refuses only unsupported types, checked above
        raise ImageCodecError(f"OpenCV cannot compress {encoding} as {codec}")
    return f"{encoding}; {codec} compressed {target}", buffer.tobytes()


def message_to_array(msg: Any) -> tuple[np.ndarray, str]:
    """(array, encoding) of a sensor_msgs/Image or CompressedImage (told apart by the
    ``format`` field), ready for :func:`to_mono8` / :func:`to_bgr8`."""
    if hasattr(msg, "format") and not hasattr(msg, "encoding"):
        return decode_compressed(msg.format, msg.data)
    return msg_to_array(msg), msg.encoding


def array_to_compressed_msg(
    array_in: np.ndarray, encoding: str, codec: str = "jpeg", header: Any = None
) -> Any:
    """Build a sensor_msgs/CompressedImage (see :func:`encode_compressed`)."""
    if _CompressedImageMsg is None:
        raise ImportError("sensor_msgs is not importable; array_to_compressed_msg needs ROS 2")
    format_text, data = encode_compressed(array_in, encoding, codec)
    msg = _CompressedImageMsg()
    if header is not None:
        msg.header = header
    msg.format = format_text
    buffer = array.array("B")
    buffer.frombytes(data)
    msg.data = buffer
    return msg


_TO_GREY = {
    "rgb8": cv2.COLOR_RGB2GRAY,
    "bgr8": cv2.COLOR_BGR2GRAY,
    "rgba8": cv2.COLOR_RGBA2GRAY,
    "bgra8": cv2.COLOR_BGRA2GRAY,
    "rgb16": cv2.COLOR_RGB2GRAY,
    "bgr16": cv2.COLOR_BGR2GRAY,
    "rgba16": cv2.COLOR_RGBA2GRAY,
    "bgra16": cv2.COLOR_BGRA2GRAY,
}
_TO_BGR = {
    "rgb8": cv2.COLOR_RGB2BGR,
    "rgba8": cv2.COLOR_RGBA2BGR,
    "bgra8": cv2.COLOR_BGRA2BGR,
    "rgb16": cv2.COLOR_RGB2BGR,
    "rgba16": cv2.COLOR_RGBA2BGR,
    "bgra16": cv2.COLOR_BGRA2BGR,
}


def _check_decoded(image: np.ndarray, encoding: str) -> _Layout:
    layout = _layout(encoding)
    expected_ndim = 2 if layout.channels == 1 else 3
    if image.ndim != expected_ndim or (expected_ndim == 3 and image.shape[2] != layout.channels):
        raise ImageCodecError(
            f"array of shape {image.shape} does not match encoding {encoding} "
            f"({layout.channels} channel(s))"
        )
    return layout


def to_mono8(image: np.ndarray, encoding: str, gain: AutoGain | None = None) -> np.ndarray:
    """Thermal/grey input as uint8 HxW: 8-bit passes through, colour becomes grey,
    16-bit and float go through gain control (a one-off default stretch when ``gain`` is None).

    ``image`` is what :func:`decode` returned for ``encoding``.
    """
    _check_decoded(image, encoding)
    if encoding in _MONO8_ENCODINGS:
        return image
    if encoding in _THERMAL_ENCODINGS:
        return (gain if gain is not None else AutoGain())(image)
    # packed 4:2:2 and bayer* were already converted to BGR by decode.
    grey = cv2.cvtColor(image, _TO_GREY.get(encoding, cv2.COLOR_BGR2GRAY))
    if grey.dtype != np.uint8:  # 16-bit colour
        return (gain if gain is not None else AutoGain())(grey)
    return grey


def to_bgr8(image: np.ndarray, encoding: str, gain: AutoGain | None = None) -> np.ndarray:
    """Any decoded image as uint8 HxWx3 BGR (grey and thermal replicated to three channels)."""
    _check_decoded(image, encoding)
    if encoding in _MONO8_ENCODINGS or encoding in _THERMAL_ENCODINGS:
        return cv2.cvtColor(
            np.ascontiguousarray(to_mono8(image, encoding, gain)), cv2.COLOR_GRAY2BGR
        )
    bgr = cv2.cvtColor(image, _TO_BGR[encoding]) if encoding in _TO_BGR else image
    if bgr.dtype != np.uint8:  # 16-bit colour: one stretch for the three channels
        return (gain if gain is not None else AutoGain())(bgr)
    return bgr  # bgr8, or packed 4:2:2 / bayer*8 already decoded to bgr8
