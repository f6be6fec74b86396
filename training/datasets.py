"""Registered infrared/visible pair folders with optional boxes and masks, and augmentation.

Folder layout (MSRS, TNO, RoadScene, M3FD, LLVIP, MFNet, FMB all fit):

    root/<ir_dir>/<name>.<ext>      infrared, any bit depth (scaled to [0, 1] by its dtype)
    root/<vi_dir>/<name>.<ext>      visible, colour or grey
    root/<labels_dir>/<name>.txt    YOLO boxes "class cx cy w h" (normalised), optional
    root/<voc_dir>/<name>.xml       VOC XML boxes (M3FD / LLVIP), optional
    root/<masks_dir>/<name>.png     label PNG, optional (mask_map maps values to class ids)

Every item is a dict: ir [1, H, W] float32 in [0, 1], visible_ycrcb [3, H, W] float32 in [0, 1]
(OpenCV's 8-bit YCrCb / 255, as the runtime feeds the graph), boxes [K, 4] float32 xyxy pixels,
labels [K] long (detection ids, see models.DETECTION_CLASSES), mask [H, W] long (segmentation
ids, 255 = no label), has_mask bool, has_boxes bool (a label file exists), name str.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from ros2_bilevel_fusion.core.bundle import (
    DEFAULT_THERMAL_HIGH_PERCENTILE,
    DEFAULT_THERMAL_LOW_PERCENTILE,
)
from ros2_bilevel_fusion.evaluation.ground_truth import read_merged_labels, read_yolo

# The MSRS evaluation hold-out is defined with the other splits (re-exported here).
from ros2_bilevel_fusion.evaluation.splits import MSRS_HOLDOUT_NAMES

IGNORE_INDEX = 255
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# YCrCb of black: Y 0, chroma at its neutral 128 (what padding the visible image should be).
_YCRCB_PAD = (0.0, 128.0 / 255.0, 128.0 / 255.0)

# VOC class names seen in M3FD / LLVIP / common sets -> detection ids; other names are dropped.
DEFAULT_VOC_CLASS_MAP: dict[str, int] = {
    "person": 0, "people": 0, "pedestrian": 0,
    "bicycle": 1, "bike": 1, "cyclist": 1,
    "car": 2,
}

MSRS_MASK_MAP: dict[int, int] = {255: 1}  # binary person masks -> segmentation id of person
# Random rescale of training crops (augmentation) unless a caller says otherwise.
DEFAULT_SCALE_RANGE: tuple[float, float] = (0.75, 1.25)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def _find_image(folder: Path, name: str) -> Path:
    for ext in IMAGE_EXTENSIONS:
        for candidate in (folder / f"{name}{ext}", folder / f"{name}{ext.upper()}"):
            if candidate.is_file():
                return candidate
    raise FileNotFoundError(f"no image named {name} in {folder}")


def list_pair_names(root: str | Path, ir_dir: str = "ir", vi_dir: str = "vi") -> list[str]:
    """Sorted names (file stems) that have both an infrared and a visible image."""
    root = Path(root)

    def stems(folder: Path) -> set[str]:
        return {p.stem for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS}

    return sorted(stems(root / ir_dir) & stems(root / vi_dir))


def split_names(
    names: Sequence[str], holdout_fraction: float, seed: int = 0
) -> tuple[list[str], list[str]]:
    """Deterministic random split -> (train, holdout), each sorted."""
    if not 0.0 <= holdout_fraction < 1.0:
        raise ValueError("holdout_fraction must be in [0, 1)")
    order = np.random.default_rng(seed).permutation(len(names))
    count = int(round(len(names) * holdout_fraction))
    holdout = sorted(names[i] for i in order[:count])
    train = sorted(names[i] for i in order[count:])
    return train, holdout


def msrs_split(root: str | Path) -> tuple[list[str], list[str]]:
    """(train, eval) names of the MSRS folder using :data:`MSRS_HOLDOUT_NAMES`."""
    names = list_pair_names(root)
    holdout = [n for n in names if n in MSRS_HOLDOUT_NAMES]
    return [n for n in names if n not in MSRS_HOLDOUT_NAMES], holdout


def msrs_pairs(root: str | Path, split: str = "train", **kwargs: Any) -> PairFolder:
    """PairFolder over MSRS with fusion-drawn YOLO labels and person masks; split train|eval|all.

    The masks label persons only, so "background" inside bicycle / car boxes is set to unknown.
    """
    train_names, eval_names = msrs_split(root)
    names = {"train": train_names, "eval": eval_names, "all": train_names + eval_names}[split]
    kwargs.setdefault("train", split == "train")
    return PairFolder(
        root, names=names, labels_dir="labels/fusion", masks_dir="masks",
        mask_map=MSRS_MASK_MAP, mask_unlabelled_box_classes=(1, 2), **kwargs,
    )


def read_ir(path: Path) -> np.ndarray:
    """Infrared as float32 [H, W] in [0, 1]; colour-stored grey images are converted."""
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise OSError(f"cannot read image {path}")
    if image.ndim == 3:
        image = cv2.cvtColor(image[..., :3], cv2.COLOR_BGR2GRAY)
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    if image.dtype == np.uint16:
        # 16-bit radiometric thermal: stretch between the runtime's percentiles (the bundle
        # contract's defaults, what the node's gain control does before the graph)
        image = image.astype(np.float32)
        low, high = np.percentile(
            image, (DEFAULT_THERMAL_LOW_PERCENTILE, DEFAULT_THERMAL_HIGH_PERCENTILE)
        )
        return np.clip((image - low) / max(high - low, 1.0), 0.0, 1.0)
    return np.clip(image.astype(np.float32), 0.0, 1.0)


def read_visible_ycrcb(path: Path) -> np.ndarray:
    """Visible as OpenCV 8-bit YCrCb / 255, float32 [H, W, 3]."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise OSError(f"cannot read image {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2YCrCb).astype(np.float32) / 255.0


def parse_yolo(
    path: Path, width: int, height: int, class_map: Mapping[int, int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """YOLO "class cx cy w h" lines (normalised) -> (boxes [K,4] xyxy pixels, labels [K]).

    class_map maps file class ids to detection ids; ids it does not list are dropped. Without
    it, ids are kept as they are (MSRS: 0 person, 1 bicycle, 2 car = DETECTION_CLASSES).
    The runtime's reader (:func:`ros2_bilevel_fusion.evaluation.ground_truth.read_yolo`),
    with boxes clipped to the image and float32 as the data sets return them.
    """
    boxes, labels = read_yolo(path, width, height, class_map)
    return _as_box_arrays(boxes.tolist(), labels.tolist(), width, height)


def parse_voc(
    path: Path, class_map: Mapping[str, int] | None = None, width: int | None = None,
    height: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """VOC XML -> (boxes [K,4] xyxy pixels, labels [K]); names are matched case-insensitively
    through class_map (default :data:`DEFAULT_VOC_CLASS_MAP`), unknown names dropped.
    VOC pixel indices are 1-based and inclusive: xmin - 1 .. xmax in continuous coordinates."""
    class_map = {k.lower(): v for k, v in (class_map or DEFAULT_VOC_CLASS_MAP).items()}
    root = ET.parse(path).getroot()
    size = root.find("size")
    if size is not None:
        width = width or int(float(size.findtext("width", "0")))
        height = height or int(float(size.findtext("height", "0")))
    boxes, labels = [], []
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip().lower()
        box = obj.find("bndbox")
        if name not in class_map or box is None:
            continue
        x1, y1, x2, y2 = (float(box.findtext(k, "0")) for k in ("xmin", "ymin", "xmax", "ymax"))
        boxes.append([x1 - 1.0, y1 - 1.0, x2, y2])
        labels.append(class_map[name])
    return _as_box_arrays(boxes, labels, width, height)


def _as_box_arrays(
    boxes: list[list[float]], labels: list[int], width: int | None, height: int | None
) -> tuple[np.ndarray, np.ndarray]:
    box_array = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    if width and height and len(box_array):
        box_array[:, 0::2] = box_array[:, 0::2].clip(0, width)
        box_array[:, 1::2] = box_array[:, 1::2].clip(0, height)
    return box_array, np.asarray(labels, dtype=np.int64)


def ignore_background_in_boxes(
    mask: np.ndarray, boxes: np.ndarray, labels: np.ndarray, box_classes: Sequence[int]
) -> np.ndarray:
    """Set background (0) pixels inside boxes of box_classes to IGNORE_INDEX."""
    if not box_classes or len(boxes) == 0:
        return mask
    mask = mask.copy()
    height, width = mask.shape
    for (x1, y1, x2, y2), label in zip(boxes, labels, strict=True):
        if int(label) not in box_classes:
            continue
        ys = slice(max(int(np.floor(y1)), 0), min(int(np.ceil(y2)), height))
        xs = slice(max(int(np.floor(x1)), 0), min(int(np.ceil(x2)), width))
        region = mask[ys, xs]
        region[region == 0] = IGNORE_INDEX
    return mask


def read_mask(path: Path, mask_map: Mapping[int, int] | None = None) -> np.ndarray:
    """Label PNG -> int64 [H, W]; values listed in mask_map are replaced (e.g. {255: 1} for
    MSRS person masks), others pass through (MFNet / FMB id PNGs)."""
    mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise OSError(f"cannot read mask {path}")
    if mask.ndim == 3:
        mask = mask[..., 0]
    mask = mask.astype(np.int64)
    if mask_map:
        mapped = mask.copy()
        for value, class_id in mask_map.items():
            mapped[mask == value] = class_id
        mask = mapped
    return mask


# --------------------------------------------------------------------------------------------
# Augmentation (numpy, HWC images, synchronised for images, boxes and masks)
# --------------------------------------------------------------------------------------------


def filter_boxes(
    boxes: np.ndarray, labels: np.ndarray, areas_before: np.ndarray, min_size: float,
    min_visible: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Drop boxes narrower / shorter than min_size px or with < min_visible of their area kept."""
    if len(boxes) == 0:
        return boxes, labels
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    keep = (w >= min_size) & (h >= min_size) & (w * h >= min_visible * areas_before)
    return boxes[keep], labels[keep]


def random_scale_crop_flip(
    ir: np.ndarray,
    visible: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    crop_hw: tuple[int, int],
    scale_range: tuple[float, float] = DEFAULT_SCALE_RANGE,
    flip_probability: float = 0.5,
    min_box_size: float = 4.0,
    min_box_visible: float = 0.3,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Random scale -> random crop (padding where the image is smaller) -> horizontal flip.

    ir [H, W], visible [H, W, 3], mask [H, W] (nearest resampling, padded with 255),
    boxes [K, 4] xyxy pixels (scaled, shifted, clipped; tiny ones dropped with their labels).
    """
    height, width = ir.shape
    scale = float(rng.uniform(*scale_range))
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    sx, sy = new_w / width, new_h / height
    ir = cv2.resize(ir, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    visible = cv2.resize(visible, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    mask = cv2.resize(mask.astype(np.int32), (new_w, new_h), interpolation=cv2.INTER_NEAREST)
    boxes = boxes * np.array([sx, sy, sx, sy], dtype=np.float32)
    areas_before = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])

    crop_h, crop_w = crop_hw
    off_y = _random_offset(rng, new_h, crop_h)
    off_x = _random_offset(rng, new_w, crop_w)
    ir = _crop_pad(ir, off_y, off_x, crop_h, crop_w, 0.0)
    visible = _crop_pad(visible, off_y, off_x, crop_h, crop_w, _YCRCB_PAD)
    mask = _crop_pad(mask, off_y, off_x, crop_h, crop_w, IGNORE_INDEX)
    if len(boxes):
        boxes = boxes - np.array([off_x, off_y, off_x, off_y], dtype=np.float32)
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, crop_w)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, crop_h)
    boxes, labels = filter_boxes(boxes, labels, areas_before, min_box_size, min_box_visible)

    if rng.random() < flip_probability:
        ir = ir[:, ::-1]
        visible = visible[:, ::-1]
        mask = mask[:, ::-1]
        if len(boxes):
            boxes = np.stack(
                (crop_w - boxes[:, 2], boxes[:, 1], crop_w - boxes[:, 0], boxes[:, 3]), axis=1
            )
    return (
        np.ascontiguousarray(ir), np.ascontiguousarray(visible), boxes.astype(np.float32),
        labels, np.ascontiguousarray(mask).astype(np.int64),
    )


def _random_offset(rng: np.random.Generator, size: int, crop: int) -> int:
    """Start of a random crop window; negative when the image is smaller (padding before it)."""
    if size >= crop:
        return int(rng.integers(0, size - crop + 1))
    return -int(rng.integers(0, crop - size + 1))


def _crop_pad(
    image: np.ndarray, off_y: int, off_x: int, crop_h: int, crop_w: int,
    fill: float | tuple[float, ...] | int,
) -> np.ndarray:
    """Window [off_y, off_y + crop_h) x [off_x, off_x + crop_w) of image, filled outside."""
    out_shape = (crop_h, crop_w) + image.shape[2:]
    out = np.empty(out_shape, dtype=image.dtype)
    out[...] = fill
    src_y0, src_x0 = max(off_y, 0), max(off_x, 0)
    src_y1 = min(off_y + crop_h, image.shape[0])
    src_x1 = min(off_x + crop_w, image.shape[1])
    if src_y1 > src_y0 and src_x1 > src_x0:
        dst_y0, dst_x0 = src_y0 - off_y, src_x0 - off_x
        out[dst_y0:dst_y0 + src_y1 - src_y0, dst_x0:dst_x0 + src_x1 - src_x0] = image[
            src_y0:src_y1, src_x0:src_x1
        ]
    return out


def pad_to_multiple(
    ir: np.ndarray, visible: np.ndarray, mask: np.ndarray, multiple: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pad bottom / right up to a multiple (boxes are unchanged); mask padding is ignored."""
    height, width = ir.shape
    crop_h = -(-height // multiple) * multiple
    crop_w = -(-width // multiple) * multiple
    return (
        _crop_pad(ir, 0, 0, crop_h, crop_w, 0.0),
        _crop_pad(visible, 0, 0, crop_h, crop_w, _YCRCB_PAD),
        _crop_pad(mask, 0, 0, crop_h, crop_w, IGNORE_INDEX),
    )


def to_sample(
    ir: np.ndarray, visible: np.ndarray, boxes: np.ndarray, labels: np.ndarray,
    mask: np.ndarray, has_mask: bool, has_boxes: bool, name: str,
) -> dict[str, Any]:
    """numpy HWC arrays -> the item dict of tensors (see module docstring)."""
    return {
        "ir": torch.from_numpy(np.ascontiguousarray(ir, dtype=np.float32))[None],
        "visible_ycrcb": torch.from_numpy(
            np.ascontiguousarray(visible.transpose(2, 0, 1), dtype=np.float32)
        ),
        "boxes": torch.from_numpy(np.asarray(boxes, dtype=np.float32).reshape(-1, 4)),
        "labels": torch.from_numpy(np.asarray(labels, dtype=np.int64).reshape(-1)),
        "mask": torch.from_numpy(np.ascontiguousarray(mask, dtype=np.int64)),
        "has_mask": bool(has_mask),
        "has_boxes": bool(has_boxes),
        "name": name,
    }


# --------------------------------------------------------------------------------------------
# Data set
# --------------------------------------------------------------------------------------------


class PairFolder(Dataset):
    """Registered IR / visible pairs of one folder, with optional boxes and masks.

    train=True: random scale in scale_range, random crop of ``crop`` (padding smaller images),
    horizontal flip, applied identically to images, boxes and masks. A fresh random draw per
    call, seeded from ``seed``, the index and torch's RNG (so DataLoader workers differ and
    torch.manual_seed makes runs repeatable). train=False: no augmentation; images are padded
    (bottom / right) to a multiple of ``pad_multiple`` if it is set.
    """

    def __init__(
        self,
        root: str | Path,
        names: Sequence[str] | None = None,
        ir_dir: str = "ir",
        vi_dir: str = "vi",
        labels_dir: str | None = None,
        voc_dir: str | None = None,
        masks_dir: str | None = None,
        mask_map: Mapping[int, int] | None = None,
        crop: int | tuple[int, int] = 256,
        train: bool = True,
        scale_range: tuple[float, float] = DEFAULT_SCALE_RANGE,
        seed: int = 0,
        yolo_class_map: Mapping[int, int] | None = None,
        voc_class_map: Mapping[str, int] | None = None,
        pad_multiple: int | None = 32,
        flip_probability: float = 0.5,
        mask_unlabelled_box_classes: Sequence[int] = (),
        label_annotations: Sequence[str] | None = None,
    ) -> None:
        self.root = Path(root)
        self.ir_dir = self.root / ir_dir
        self.vi_dir = self.root / vi_dir
        for folder in (self.ir_dir, self.vi_dir):
            if not folder.is_dir():
                raise FileNotFoundError(f"pair folder {folder} does not exist")
        self.names = list(names) if names is not None else list_pair_names(root, ir_dir, vi_dir)
        if not self.names:
            raise ValueError(f"no infrared/visible pairs in {self.root}")
        self.labels_dir = self.root / labels_dir if labels_dir else None
        self.voc_dir = self.root / voc_dir if voc_dir else None
        self.masks_dir = self.root / masks_dir if masks_dir else None
        self.mask_map = dict(mask_map) if mask_map else None
        self.crop_hw = (crop, crop) if isinstance(crop, int) else tuple(crop)
        self.train = train
        self.scale_range = scale_range
        self.seed = seed
        self.yolo_class_map = yolo_class_map
        self.voc_class_map = voc_class_map
        self.pad_multiple = pad_multiple
        self.flip_probability = flip_probability
        # Masks that label only some classes (MSRS: persons) call a car "background"; pixels
        # marked 0 inside boxes of these detection classes become 255 (unknown) instead.
        self.mask_unlabelled_box_classes = tuple(mask_unlabelled_box_classes)
        # With annotation names (MSRS: ground_truth.MSRS_ANNOTATIONS) labels_dir holds one YOLO
        # folder per annotation and the boxes are their merge (ground_truth.merge_annotations).
        self.label_annotations = tuple(label_annotations) if label_annotations else None

    def __len__(self) -> int:
        return len(self.names)

    def load(self, index: int) -> dict[str, Any]:
        """The pair at full size as numpy (no augmentation): ir, visible, boxes, labels, mask."""
        name = self.names[index]
        ir = read_ir(_find_image(self.ir_dir, name))
        visible = read_visible_ycrcb(_find_image(self.vi_dir, name))
        height, width = visible.shape[:2]
        if ir.shape != (height, width):
            # registered sets ship equal sizes; a stray off-by-a-few image is resized onto the
            # visible grid (labels are drawn on the visible / fused frame)
            ir = cv2.resize(ir, (width, height), interpolation=cv2.INTER_LINEAR)
        boxes = np.zeros((0, 4), np.float32)
        labels = np.zeros((0,), np.int64)
        has_boxes = False
        merged = None
        if self.labels_dir is not None and self.label_annotations is not None:
            merged = read_merged_labels(
                self.labels_dir, name, width, height, self.label_annotations,
                class_map=self.yolo_class_map,
            )
        if merged is not None:
            boxes, labels = _as_box_arrays(merged[0].tolist(), merged[1].tolist(), width, height)
            has_boxes = True
        elif (
            self.labels_dir is not None and self.label_annotations is None
            and (self.labels_dir / f"{name}.txt").is_file()
        ):
            boxes, labels = parse_yolo(
                self.labels_dir / f"{name}.txt", width, height, self.yolo_class_map
            )
            has_boxes = True
        elif self.voc_dir is not None and (self.voc_dir / f"{name}.xml").is_file():
            boxes, labels = parse_voc(self.voc_dir / f"{name}.xml", self.voc_class_map,
                                      width, height)
            has_boxes = True
        mask = np.full((height, width), IGNORE_INDEX, np.int64)
        has_mask = False
        if self.masks_dir is not None:
            try:
                mask_path = _find_image(self.masks_dir, name)
            except FileNotFoundError:
                mask_path = None
            if mask_path is not None:
                mask = read_mask(mask_path, self.mask_map)
                if mask.shape != (height, width):
                    mask = cv2.resize(mask.astype(np.int32), (width, height),
                                      interpolation=cv2.INTER_NEAREST).astype(np.int64)
                has_mask = True
                mask = ignore_background_in_boxes(
                    mask, boxes, labels, self.mask_unlabelled_box_classes
                )
        return {
            "ir": ir, "visible": visible, "boxes": boxes, "labels": labels, "mask": mask,
            "has_mask": has_mask, "has_boxes": has_boxes, "name": name,
        }

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.load(index)
        ir, visible, boxes, labels, mask = (
            item["ir"], item["visible"], item["boxes"], item["labels"], item["mask"]
        )
        if self.train:
            draw = int(torch.randint(0, 2**31 - 1, (1,)).item())
            rng = np.random.default_rng((self.seed, index, draw))
            ir, visible, boxes, labels, mask = random_scale_crop_flip(
                ir, visible, boxes, labels, mask, rng, self.crop_hw, self.scale_range,
                self.flip_probability,
            )
        elif self.pad_multiple:
            ir, visible, mask = pad_to_multiple(ir, visible, mask, self.pad_multiple)
        return to_sample(ir, visible, boxes, labels, mask, item["has_mask"], item["has_boxes"],
                         item["name"])


def collate_pairs(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack images and masks (equal sizes required); boxes / labels / names stay lists."""
    sizes = {tuple(item["ir"].shape[-2:]) for item in batch}
    if len(sizes) != 1:
        raise ValueError(f"cannot batch images of different sizes {sorted(sizes)}; "
                         "use crops (train=True) or batch size 1")
    return {
        "ir": torch.stack([item["ir"] for item in batch]),
        "visible_ycrcb": torch.stack([item["visible_ycrcb"] for item in batch]),
        "mask": torch.stack([item["mask"] for item in batch]),
        "has_mask": torch.tensor([item["has_mask"] for item in batch], dtype=torch.bool),
        "has_boxes": torch.tensor([item.get("has_boxes", True) for item in batch]),
        "boxes": [item["boxes"] for item in batch],
        "labels": [item["labels"] for item in batch],
        "names": [item["name"] for item in batch],
    }
