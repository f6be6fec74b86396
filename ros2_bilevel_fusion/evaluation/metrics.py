"""No-reference and reference-based image fusion metrics, with the conventions fusion papers use.

Every function takes 2-D float arrays on the 0-255 scale (grey levels as read from 8-bit files,
see :func:`to_gray_float`) and returns a Python float. F (``fused``) is the fused image, A
(``ir``) the infrared, B (``vis``) the visible image. The conventions follow the evaluator
that published infrared/visible fusion tables are computed with (the "Fusion metrics protocol"
of the project's design), so the numbers printed here can be compared with those tables. Where
that evaluator has a quirk (SSIM data range, the Qabf equal-gradient case) it is kept on purpose
and documented.

Undefined cases are not hidden: a metric that divides by zero for degenerate input (e.g. Qabf of
images without any gradient, SCD of constant images) returns ``nan``; PSNR of a fused image
identical to both sources returns ``inf``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import cv2
import numpy as np
from skimage.metrics import structural_similarity

#: The ten metrics, in the order tables print them.
METRIC_NAMES: tuple[str, ...] = ("EN", "SD", "SF", "AG", "MI", "SCD", "VIF", "Qabf", "SSIM", "PSNR")

#: One line stating the conventions, printed next to every table of these numbers.
CONVENTIONS = (
    "grey 0-255 (Y=.299R+.587G+.114B, rounded); EN log2 of 256-bin histogram; SD population; "
    "AG numpy.gradient; MI nats, raw grey levels, MI(F,A)+MI(F,B); SCD Pearson; "
    "VIF pixel-domain 4 scales (Gaussian 17/9/5/3, sigma=size/5, sigma_n^2=2), VIF(A,F)+VIF(B,F); "
    "Qabf 3x3 Sobel (0.9994,-15,0.5; 0.9879,-22,0.8; G_AF=g_F where g_A==g_F as published); "
    "SSIM skimage 7x7 uniform, K1=.01, K2=.03, data_range=2, SSIM(F,A)+SSIM(F,B); "
    "PSNR peak max(F), mean of MSE(A,F), MSE(B,F)"
)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class MetricInputError(ValueError):
    """The images given to a metric are not 2-D, not the same shape, or not readable."""


def _check_gray(*images: np.ndarray) -> list[np.ndarray]:
    arrays = [np.asarray(image, dtype=np.float64) for image in images]
    for array in arrays:
        if array.ndim != 2:
            raise MetricInputError(f"expected a 2-D grey image, got shape {array.shape}")
        if array.size == 0:
            raise MetricInputError("empty image")
    if any(array.shape != arrays[0].shape for array in arrays):
        raise MetricInputError(f"shapes differ: {[a.shape for a in arrays]}")
    return arrays


def to_gray_float(image_u8: np.ndarray) -> np.ndarray:
    """Grey levels as float64 in 0-255 from an 8-bit image, as the published evaluator reads them.

    ``image_u8`` is either 2-D grey or 3-channel in OpenCV's BGR order (as ``cv2.imread``
    returns). Colour is converted with Y = .299 R + .587 G + .114 B computed in float32
    (``cv2.cvtColor``) and rounded to the nearest integer (half to even, ``np.round``), so a
    3-channel image whose channels are equal (TNO stores grey images that way) gives exactly
    that channel. A 4th (alpha) channel is ignored.
    """
    image = np.asarray(image_u8)
    if image.dtype != np.uint8:
        raise MetricInputError(f"expected an 8-bit image, got dtype {image.dtype}")
    if image.ndim == 2:
        return image.astype(np.float64)
    if image.ndim == 3 and image.shape[2] == 1:
        return image[:, :, 0].astype(np.float64)
    if image.ndim == 3 and image.shape[2] in (3, 4):
        # cv2 on float32, as the published evaluator converts: the float32 rounding decides the
        # few values that land on .5, so doing this in float64 would differ by 1 on those.
        gray = cv2.cvtColor(
            np.ascontiguousarray(image[:, :, :3]).astype(np.float32), cv2.COLOR_BGR2GRAY
        )
        return np.round(gray).astype(np.float64)
    raise MetricInputError(f"expected a grey or BGR image, got shape {image.shape}")


# --------------------------------------------------------------------------- single-image metrics


def entropy(fused: np.ndarray) -> float:
    """EN: Shannon entropy in bits (log2) of the 256-bin histogram of round(F), F in 0-255."""
    (fused,) = _check_gray(fused)
    levels = np.clip(np.round(fused), 0, 255).astype(np.int64).ravel()
    probabilities = np.bincount(levels, minlength=256) / levels.size
    probabilities = probabilities[probabilities > 0]
    return float(-np.sum(probabilities * np.log2(probabilities)))


def standard_deviation(fused: np.ndarray) -> float:
    """SD: population standard deviation (ddof=0) of F's grey levels."""
    (fused,) = _check_gray(fused)
    return float(np.std(fused))


def spatial_frequency(fused: np.ndarray) -> float:
    """SF: sqrt(mean(dx^2) + mean(dy^2)) of horizontal and vertical neighbour differences."""
    (fused,) = _check_gray(fused)
    row_frequency_sq = np.mean(np.diff(fused, axis=1) ** 2) if fused.shape[1] > 1 else 0.0
    column_frequency_sq = np.mean(np.diff(fused, axis=0) ** 2) if fused.shape[0] > 1 else 0.0
    return float(math.sqrt(row_frequency_sq + column_frequency_sq))


def average_gradient(fused: np.ndarray) -> float:
    """AG: mean over pixels of sqrt((Gx^2 + Gy^2) / 2), Gx and Gy from ``numpy.gradient``.

    numpy.gradient: central differences inside, one-sided first differences on the border.
    """
    (fused,) = _check_gray(fused)
    if min(fused.shape) < 2:
        raise MetricInputError("AG needs at least 2 rows and 2 columns")
    gradient_y, gradient_x = np.gradient(fused)
    return float(np.mean(np.sqrt((gradient_x**2 + gradient_y**2) / 2.0)))


# --------------------------------------------------------------------------- reference metrics


def _mutual_information_pair(first: np.ndarray, second: np.ndarray) -> float:
    """MI in nats between the grey-level labels of two images (sklearn mutual_info_score)."""
    labels = []
    for image in (first, second):
        flat = image.ravel()
        if np.all(flat == np.round(flat)) and flat.min() >= 0 and flat.max() <= 255:
            labels.append((flat.astype(np.int64), 256))
        else:
            # Non-integer grey levels: each distinct value is its own label, as in sklearn.
            uniques, inverse = np.unique(flat, return_inverse=True)
            labels.append((inverse.astype(np.int64), len(uniques)))
    (first_labels, first_count), (second_labels, second_count) = labels
    joint = np.bincount(
        first_labels * second_count + second_labels, minlength=first_count * second_count
    ).reshape(first_count, second_count)
    joint_p = joint / first_labels.size
    first_p = joint_p.sum(axis=1, keepdims=True)
    second_p = joint_p.sum(axis=0, keepdims=True)
    nonzero = joint_p > 0
    outer = (first_p @ second_p)[nonzero]
    mi = np.sum(joint_p[nonzero] * (np.log(joint_p[nonzero]) - np.log(outer)))
    return float(max(mi, 0.0))


def mutual_information(fused: np.ndarray, ir: np.ndarray, vis: np.ndarray) -> float:
    """MI: MI(F, A) + MI(F, B) in nats (natural log).

    Each pixel's raw grey level is its label (the semantics of sklearn's ``mutual_info_score``,
    which the published evaluator calls), i.e. a 256x256 joint histogram for 8-bit grey levels.
    """
    fused, infrared, visible = _check_gray(fused, ir, vis)
    return _mutual_information_pair(fused, infrared) + _mutual_information_pair(fused, visible)


def _pearson(first: np.ndarray, second: np.ndarray) -> float:
    first = first - first.mean()
    second = second - second.mean()
    denominator = math.sqrt(float(np.sum(first * first)) * float(np.sum(second * second)))
    if denominator == 0.0:
        return float("nan")
    return float(np.sum(first * second) / denominator)


def scd(fused: np.ndarray, ir: np.ndarray, vis: np.ndarray) -> float:
    """SCD: sum of correlations of differences, corr(F - B, A) + corr(F - A, B).

    Pearson correlation over the whole image; ``nan`` when a term has zero variance.
    """
    fused, infrared, visible = _check_gray(fused, ir, vis)
    return _pearson(fused - visible, infrared) + _pearson(fused - infrared, visible)


def _gaussian_kernel_1d(size: int) -> np.ndarray:
    """Normalised 1-D factor of MATLAB's fspecial('gaussian', size, size / 5).

    The 2-D window is the outer product of this with itself (exactly separable; at these sizes
    no tap falls under MATLAB's eps * max cut-off).
    """
    sigma = size / 5.0
    offsets = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    kernel = np.exp(-(offsets**2) / (2.0 * sigma * sigma))
    return kernel / kernel.sum()


def _filter_valid(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """2-D 'valid' filtering with the separable symmetric kernel (scipy convolve2d 'valid')."""
    half = len(kernel) // 2
    filtered = cv2.sepFilter2D(image, cv2.CV_64F, kernel, kernel, borderType=cv2.BORDER_REFLECT)
    return filtered[half : image.shape[0] - half, half : image.shape[1] - half]


_VIF_SIGMA_N_SQ = 2.0
_VIF_EPS = 1e-10


def _vif_pair(reference: np.ndarray, distorted: np.ndarray) -> float:
    """Pixel-domain VIF of ``distorted`` against ``reference`` (Sheikh and Bovik, vifp_mscale).

    Four scales s = 1..4 with Gaussian windows of size 2^(5-s)+1 (17, 9, 5, 3), sigma = size/5;
    from scale 2 on, both images are low-passed with that scale's window ('valid') and
    decimated by 2. Local statistics use 'valid' filtering. sigma_n^2 = 2, eps = 1e-10, the
    numerator and denominator (log10 sums) are accumulated over all scales before dividing.
    A ``nan`` ratio (0 / 0, both images flat) is reported as 1.0, as the reference code does.
    """
    numerator = 0.0
    denominator = 0.0
    for scale in range(1, 5):
        kernel = _gaussian_kernel_1d(2 ** (5 - scale) + 1)
        if scale > 1:
            reference = _filter_valid(reference, kernel)[::2, ::2]
            distorted = _filter_valid(distorted, kernel)[::2, ::2]
        if min(reference.shape) < len(kernel) or min(distorted.shape) < len(kernel):
            raise MetricInputError("image too small for 4-scale VIF (needs about 64x64)")
        mu_ref = _filter_valid(reference, kernel)
        mu_dist = _filter_valid(distorted, kernel)
        var_ref = np.maximum(_filter_valid(reference * reference, kernel) - mu_ref * mu_ref, 0.0)
        var_dist = np.maximum(_filter_valid(distorted * distorted, kernel) - mu_dist * mu_dist, 0.0)
        covariance = _filter_valid(reference * distorted, kernel) - mu_ref * mu_dist

        gain = covariance / (var_ref + _VIF_EPS)
        noise_var = var_dist - gain * covariance

        flat_ref = var_ref < _VIF_EPS
        gain[flat_ref] = 0.0
        noise_var[flat_ref] = var_dist[flat_ref]
        var_ref[flat_ref] = 0.0

        flat_dist = var_dist < _VIF_EPS
        gain[flat_dist] = 0.0
        noise_var[flat_dist] = 0.0

        negative_gain = gain < 0
        noise_var[negative_gain] = var_dist[negative_gain]
        gain[negative_gain] = 0.0
        noise_var = np.maximum(noise_var, _VIF_EPS)

        numerator += float(
            np.sum(np.log10(1.0 + gain * gain * var_ref / (noise_var + _VIF_SIGMA_N_SQ)))
        )
        denominator += float(np.sum(np.log10(1.0 + var_ref / _VIF_SIGMA_N_SQ)))
    if denominator == 0.0:
        return 1.0 if numerator == 0.0 else float("inf")
    return numerator / denominator


def vif(fused: np.ndarray, ir: np.ndarray, vis: np.ndarray) -> float:
    """VIF: VIF(A, F) + VIF(B, F), pixel-domain multiscale VIF (see :func:`_vif_pair`)."""
    fused, infrared, visible = _check_gray(fused, ir, vis)
    return _vif_pair(infrared, fused) + _vif_pair(visible, fused)


# Sobel kernels of the published Qabf code, flipped because it convolves (cv2 correlates). The
# sign does not matter for the magnitude or for atan(Sy / Sx); flipping keeps them identical.
_SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float64)[::-1, ::-1].copy()
_SOBEL_Y = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], dtype=np.float64)[::-1, ::-1].copy()


def _edge_strength_orientation(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sobel magnitude g and orientation atan(Sy/Sx) (pi/2 where Sx == 0); zero-padded 'same'."""
    sobel_x = cv2.filter2D(image, cv2.CV_64F, _SOBEL_X, borderType=cv2.BORDER_CONSTANT)
    sobel_y = cv2.filter2D(image, cv2.CV_64F, _SOBEL_Y, borderType=cv2.BORDER_CONSTANT)
    strength = np.sqrt(sobel_x * sobel_x + sobel_y * sobel_y)
    with np.errstate(divide="ignore", invalid="ignore"):
        orientation = np.where(sobel_x == 0, math.pi / 2, np.arctan(sobel_y / sobel_x))
    return strength, orientation


def _edge_preservation(
    strength_src: np.ndarray,
    orientation_src: np.ndarray,
    strength_fused: np.ndarray,
    orientation_fused: np.ndarray,
) -> np.ndarray:
    """Q^{XF}: per-pixel edge strength and orientation preservation (Xydeas and Petrovic)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        relative_strength = np.where(
            strength_src > strength_fused,
            strength_fused / strength_src,
            np.where(
                strength_src < strength_fused,
                strength_src / strength_fused,
                # The published code sets G = g_F (not 1) where the strengths are equal.
                strength_fused,
            ),
        )
    relative_orientation = 1.0 - np.abs(orientation_src - orientation_fused) / (math.pi / 2)
    strength_q = 0.9994 / (1.0 + np.exp(-15.0 * (relative_strength - 0.5)))
    orientation_q = 0.9879 / (1.0 + np.exp(-22.0 * (relative_orientation - 0.8)))
    return strength_q * orientation_q


def qabf(fused: np.ndarray, ir: np.ndarray, vis: np.ndarray) -> float:
    """Qabf (Q^{AB/F}): gradient-weighted edge information preserved from A and B in F.

    3x3 Sobel with zero padding ('same'), orientation atan(Sy/Sx) (pi/2 where Sx == 0), sigmoid
    constants 0.9994, -15, 0.5 (strength) and 0.9879, -22, 0.8 (orientation), weights g_A and
    g_B (L = 1). As in the published code, where g_A == g_F the relative strength is g_F rather
    than 1 (so flat-in-both pixels get 0 and equal non-zero edges get about 0.9994, not exactly
    the same value). ``nan`` when neither source has any gradient.
    """
    fused, infrared, visible = _check_gray(fused, ir, vis)
    strength_a, orientation_a = _edge_strength_orientation(infrared)
    strength_b, orientation_b = _edge_strength_orientation(visible)
    strength_f, orientation_f = _edge_strength_orientation(fused)
    preserved_a = _edge_preservation(strength_a, orientation_a, strength_f, orientation_f)
    preserved_b = _edge_preservation(strength_b, orientation_b, strength_f, orientation_f)
    weight = float(np.sum(strength_a) + np.sum(strength_b))
    if weight == 0.0:
        return float("nan")
    return float(np.sum(preserved_a * strength_a) + np.sum(preserved_b * strength_b)) / weight


def ssim_sum(fused: np.ndarray, ir: np.ndarray, vis: np.ndarray) -> float:
    """SSIM: SSIM(F, A) + SSIM(F, B), ``skimage.metrics.structural_similarity``.

    7x7 uniform window, K1 = 0.01, K2 = 0.03, sample covariance, border of 3 pixels excluded,
    and data_range = 2 on the 0-255 float images. data_range = 2 is what old scikit-image used
    by default for float input (the span of the float dtype's nominal -1..1 range); the
    published tables were computed that way, so their constants C1, C2 are tiny. With the
    "correct" data_range = 255 values are noticeably higher (about 1.46 where papers print 1.0),
    so we keep 2 to stay comparable.
    """
    fused, infrared, visible = _check_gray(fused, ir, vis)
    if min(fused.shape) < 7:
        raise MetricInputError("SSIM needs images of at least 7x7")
    return float(
        structural_similarity(fused, infrared, data_range=2.0)
        + structural_similarity(fused, visible, data_range=2.0)
    )


def psnr(fused: np.ndarray, ir: np.ndarray, vis: np.ndarray) -> float:
    """PSNR: 10 log10(max(F)^2 / ((MSE(A, F) + MSE(B, F)) / 2)) in dB, peak max(F), not 255.

    Returns ``inf`` when F equals both A and B (zero MSE), ``-inf`` when F is all zero.
    """
    fused, infrared, visible = _check_gray(fused, ir, vis)
    mse = (np.mean((infrared - fused) ** 2) + np.mean((visible - fused) ** 2)) / 2.0
    peak_sq = float(np.max(fused)) ** 2
    if mse == 0.0:
        return float("inf")
    if peak_sq == 0.0:
        return float("-inf")
    return float(10.0 * math.log10(peak_sq / mse))


# --------------------------------------------------------------------------- tables

_SINGLE: dict[str, Callable[[np.ndarray], float]] = {
    "EN": entropy,
    "SD": standard_deviation,
    "SF": spatial_frequency,
    "AG": average_gradient,
}
_TRIPLE: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray], float]] = {
    "MI": mutual_information,
    "SCD": scd,
    "VIF": vif,
    "Qabf": qabf,
    "SSIM": ssim_sum,
    "PSNR": psnr,
}


def _as_gray(image: np.ndarray) -> np.ndarray:
    """Accept 8-bit grey/BGR (converted by :func:`to_gray_float`) or 2-D floats on 0-255."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return to_gray_float(image)
    if image.ndim != 2:
        raise MetricInputError(f"non-8-bit input must be a 2-D grey image, got {image.shape}")
    return image.astype(np.float64)


def fusion_metrics(
    fused: np.ndarray,
    ir: np.ndarray,
    vis: np.ndarray,
    names: Iterable[str] | None = None,
) -> dict[str, float]:
    """The requested metrics (default all of :data:`METRIC_NAMES`) of one triple, by name.

    Images are 8-bit grey or BGR (converted with :func:`to_gray_float`) or 2-D floats in 0-255.
    """
    selected = list(METRIC_NAMES if names is None else names)
    unknown = [name for name in selected if name not in _SINGLE and name not in _TRIPLE]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; known: {list(METRIC_NAMES)}")
    fused_gray, ir_gray, vis_gray = _check_gray(_as_gray(fused), _as_gray(ir), _as_gray(vis))
    values: dict[str, float] = {}
    for name in selected:
        if name in _SINGLE:
            values[name] = _SINGLE[name](fused_gray)
        else:
            values[name] = _TRIPLE[name](fused_gray, ir_gray, vis_gray)
    return values


def mean_metrics(rows: Sequence[dict[str, float]], names: Iterable[str] = METRIC_NAMES) -> dict:
    """Per-metric mean over rows, ignoring nan (undefined) and inf (PSNR of identical images)."""
    means: dict[str, float] = {}
    for name in names:
        values = np.array([row[name] for row in rows if name in row], dtype=np.float64)
        finite = values[np.isfinite(values)]
        means[name] = float(finite.mean()) if finite.size else float("nan")
    return means


def list_images(folder: str | Path) -> list[Path]:
    """Image files of a folder, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MetricInputError(f"{folder} is not a folder")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def find_pair_file(folder: Path, name: str) -> Path | None:
    """The file of ``folder`` with this name, or else with the same stem and any image suffix."""
    exact = folder / name
    if exact.is_file():
        return exact
    stem = Path(name).stem
    for candidate in sorted(folder.glob(f"{stem}.*")):
        if candidate.suffix.lower() in IMAGE_SUFFIXES:
            return candidate
    return None


def read_u8(path: str | Path, grey: bool) -> np.ndarray:
    """Read an 8-bit image with OpenCV (grey or BGR); a clear error if unreadable."""
    flag = cv2.IMREAD_GRAYSCALE if grey else cv2.IMREAD_COLOR
    image = cv2.imread(str(path), flag)
    if image is None:
        raise MetricInputError(f"cannot read image {path}")
    return image
