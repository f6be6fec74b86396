"""YCrCb <-> RGB in torch, matching OpenCV's 8-bit conversion.

OpenCV's ``COLOR_RGB2YCrCb`` on uint8 images (ITU-R BT.601, full range) is

    Y  = 0.299 R + 0.587 G + 0.114 B
    Cr = (R - Y) * 0.713 + 128
    Cb = (B - Y) * 0.564 + 128

The bundle feeds ``visible_ycrcb`` as that uint8 result / 255, so the chroma offset here is
128/255, not the 0.5 OpenCV uses for float input. All functions take and return [N, 3, H, W]
(or [3, H, W]) tensors in [0, 1] and are differentiable (the semantic networks see the colour
image rebuilt from the fused Y, so gradients must flow through the inverse).
"""

from __future__ import annotations

import torch

# OpenCV's coefficients (modules/imgproc/src/color_yuv.simd.hpp), kept identical on purpose.
_KR, _KG, _KB = 0.299, 0.587, 0.114
_CR_FROM_R_MINUS_Y = 0.713
_CB_FROM_B_MINUS_Y = 0.564
_R_FROM_CR = 1.403
_G_FROM_CR = -0.714
_G_FROM_CB = -0.344
_B_FROM_CB = 1.773
CHROMA_OFFSET = 128.0 / 255.0


def _channels(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if image.dim() not in (3, 4) or image.shape[-3] != 3:
        raise ValueError(f"expected [N, 3, H, W] or [3, H, W], got {tuple(image.shape)}")
    return image[..., 0:1, :, :], image[..., 1:2, :, :], image[..., 2:3, :, :]


def rgb_to_ycrcb(rgb: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] -> YCrCb in [0, 1] (channel order Y, Cr, Cb as OpenCV)."""
    r, g, b = _channels(rgb)
    y = _KR * r + _KG * g + _KB * b
    cr = (r - y) * _CR_FROM_R_MINUS_Y + CHROMA_OFFSET
    cb = (b - y) * _CB_FROM_B_MINUS_Y + CHROMA_OFFSET
    return torch.cat((y, cr, cb), dim=-3)


def ycrcb_to_rgb(ycrcb: torch.Tensor, clamp: bool = True) -> torch.Tensor:
    """YCrCb in [0, 1] -> RGB; clamped to [0, 1] like OpenCV's saturating uint8 output."""
    y, cr, cb = _channels(ycrcb)
    cr = cr - CHROMA_OFFSET
    cb = cb - CHROMA_OFFSET
    r = y + _R_FROM_CR * cr
    g = y + _G_FROM_CR * cr + _G_FROM_CB * cb
    b = y + _B_FROM_CB * cb
    rgb = torch.cat((r, g, b), dim=-3)
    return rgb.clamp(0.0, 1.0) if clamp else rgb


def ycrcb_to_bgr255_affine() -> tuple[torch.Tensor, torch.Tensor]:
    """(weight [3, 3, 1, 1], bias [3]) of a 1x1 convolution taking YCrCb in [0, 1] to BGR in
    0-255 before clamping: ``clamp(conv(ycrcb), 0, 255)`` equals
    ``ycrcb_to_rgb(ycrcb).flip(1) * 255`` up to float rounding.

    Why: the YOLOX networks want BGR 0-255; as separate slice, multiply, add, concat, clip,
    flip and scale ops at full resolution this conversion cost ~15 % of the exported graph on a
    CPU (docs/profile_default_640x480.md); as one convolution it is a single pass."""
    c = CHROMA_OFFSET
    rows = (  # (Y, Cr, Cb) coefficients and offset, per output channel B, G, R
        ((1.0, 0.0, _B_FROM_CB), -_B_FROM_CB * c),
        ((1.0, _G_FROM_CR, _G_FROM_CB), -(_G_FROM_CR + _G_FROM_CB) * c),
        ((1.0, _R_FROM_CR, 0.0), -_R_FROM_CR * c),
    )
    weight = torch.tensor([coefficients for coefficients, _ in rows]) * 255.0
    bias = torch.tensor([offset for _, offset in rows]) * 255.0
    return weight.reshape(3, 3, 1, 1), bias


def bgr_to_ycrcb(bgr: torch.Tensor) -> torch.Tensor:
    """BGR in [0, 1] -> YCrCb (as ``cv2.COLOR_BGR2YCrCb`` / 255)."""
    return rgb_to_ycrcb(bgr.flip(-3))


def ycrcb_to_bgr(ycrcb: torch.Tensor, clamp: bool = True) -> torch.Tensor:
    return ycrcb_to_rgb(ycrcb, clamp=clamp).flip(-3)


def rgb_to_y(rgb: torch.Tensor) -> torch.Tensor:
    """Luma only, [N, 1, H, W]: the grey image the fusion metrics protocol uses."""
    r, g, b = _channels(rgb)
    return _KR * r + _KG * g + _KB * b


def colour_image(fused_y: torch.Tensor, visible_ycrcb: torch.Tensor) -> torch.Tensor:
    """RGB the semantic networks see: fused Y + visible CrCb, as the exported graph builds it."""
    return ycrcb_to_rgb(torch.cat((fused_y, visible_ycrcb[:, 1:]), dim=1))
