"""Ground-truth boxes: the one YOLO label reader, and the merge of several annotations of a pair.

MSRS ships three independent box annotations of every pair, drawn on the fused image
(``labels/fusion``), on the infrared image (``labels/infrared``) and on the visible image
(``labels/visible``). Each misses objects the others have: persons far away at night are drawn
on the infrared image only, a bicycle in daylight on the visible one. :func:`merge_annotations`
takes their same-class union after matching at IoU 0.5, the most complete ground truth of the
scene; training (``training.datasets``) and ``fusion-eval`` (``--split``) both read it through
:func:`read_merged_labels`.

Pure numpy; boxes are ``[K, 4]`` float64 ``x1, y1, x2, y2`` in pixels, labels ``[K]`` int64.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

#: The MSRS annotations in merge priority order (see :func:`merge_annotations`).
MSRS_ANNOTATIONS: tuple[str, ...] = ("fusion", "infrared", "visible")
#: Two boxes of the same class overlapping at least this much are one object.
MERGE_IOU = 0.5

#: ``truth(stem, width, height) -> {"boxes", "labels"}`` or None (the pair is not labelled).
TruthSource = Callable[[str, int, int], "dict[str, np.ndarray] | None"]


def _empty() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((0, 4), np.float64), np.zeros(0, np.int64)


def parse_yolo_lines(
    lines: Sequence[str],
    width: int,
    height: int,
    class_map: Mapping[int, int] | None = None,
    source: str = "",
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes and labels from YOLO label lines.

    Parameters
    ----------
    lines : sequence of str
        One object per line, ``class cx cy w h`` with the centre and size normalised to the
        image (0..1). Blank lines are skipped; any other line must have exactly five fields.
    width, height : int
        Size of the image the labels belong to, in pixels.
    class_map : mapping of int to int, optional
        File class id -> returned class id; lines whose id it does not list are dropped.
        Without it ids are kept (MSRS: 0 person, 1 bicycle, 2 car).
    source : str, optional
        Name used in error messages (a file path).

    Returns
    -------
    boxes : (K, 4) ndarray of float64
        ``x1, y1, x2, y2`` in pixels, not clipped to the image.
    labels : (K,) ndarray of int64
        Class ids.

    Raises
    ------
    ValueError
        A line does not have five numeric fields; the message names ``source:line``.

    Examples
    --------
    >>> boxes, labels = parse_yolo_lines(["0 0.5 0.5 0.2 0.4"], 640, 480)
    >>> boxes.tolist(), labels.tolist()
    ([[256.0, 144.0, 384.0, 336.0]], [0])
    """
    where = f"{source}:" if source else "line "
    rows = []
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 5:
            raise ValueError(f"{where}{number}: expected 'class cx cy w h', got {line!r}")
        try:
            rows.append([float(value) for value in fields])
        except ValueError as exc:
            raise ValueError(f"{where}{number}: not numbers: {line!r}") from exc
    if not rows:
        return _empty()
    table = np.asarray(rows, dtype=np.float64)
    labels = table[:, 0].astype(np.int64)
    if class_map is not None:
        keep = np.isin(labels, np.fromiter(class_map.keys(), np.int64, len(class_map)))
        table, labels = table[keep], labels[keep]
        labels = np.asarray([class_map[int(label)] for label in labels], dtype=np.int64)
    centre = table[:, 1:3] * (width, height)
    half = table[:, 3:5] * (width, height) / 2.0
    return np.concatenate([centre - half, centre + half], axis=1).reshape(-1, 4), labels


def read_yolo(
    path: str | Path, width: int, height: int, class_map: Mapping[int, int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes and labels of a YOLO label file: :func:`parse_yolo_lines` of its lines.

    An empty file is an image without objects: ``(0, 4)`` boxes and ``(0,)`` labels.
    Errors name the file and line (``ValueError: labels/a.txt:3: ...``).
    """
    path = Path(path)
    return parse_yolo_lines(path.read_text().splitlines(), width, height, class_map, str(path))


def box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """Intersection over union of every box of ``boxes_a`` with every box of ``boxes_b``.

    Parameters
    ----------
    boxes_a : (N, 4) array_like
    boxes_b : (M, 4) array_like
        ``x1, y1, x2, y2`` boxes.

    Returns
    -------
    iou : (N, M) ndarray of float64
        0 where the union is empty (degenerate boxes).
    """
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0.0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0.0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0.0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def match_boxes(
    boxes_a: np.ndarray,
    labels_a: np.ndarray,
    boxes_b: np.ndarray,
    labels_b: np.ndarray,
    iou_threshold: float = MERGE_IOU,
) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matching of same-class boxes at IoU >= ``iou_threshold``, best IoU first.

    Greedy, as COCO matches detections: the pair with the highest IoU is matched, both boxes
    leave the pool, and so on (ties go to the lower index of ``a``, then of ``b``).

    Returns
    -------
    index_a, index_b : (P,) ndarray of int64
        ``boxes_a[index_a[p]]`` and ``boxes_b[index_b[p]]`` are the same object.
    """
    iou = box_iou(boxes_a, boxes_b)
    labels_a = np.asarray(labels_a, dtype=np.int64).reshape(-1)
    labels_b = np.asarray(labels_b, dtype=np.int64).reshape(-1)
    iou[labels_a[:, None] != labels_b[None, :]] = 0.0
    rows, cols = np.nonzero(iou >= iou_threshold)
    # lexsort: last key is primary -> IoU descending, then a index, then b index
    order = np.lexsort((cols, rows, -iou[rows, cols]))
    used_a = np.zeros(iou.shape[0], bool)
    used_b = np.zeros(iou.shape[1], bool)
    index_a, index_b = [], []
    for row, col in zip(rows[order], cols[order], strict=True):
        if not (used_a[row] or used_b[col]):
            used_a[row] = used_b[col] = True
            index_a.append(row)
            index_b.append(col)
    return np.asarray(index_a, dtype=np.int64), np.asarray(index_b, dtype=np.int64)


def merge_annotations(
    annotations: Sequence[tuple[np.ndarray, np.ndarray]],
    iou_threshold: float = MERGE_IOU,
    *,
    return_support: bool = False,
) -> tuple[np.ndarray, ...]:
    """Same-class union of several annotations of one image after matching at IoU 0.5.

    Objects are built annotation by annotation, in the order given (MSRS:
    :data:`MSRS_ANNOTATIONS`, fusion first). The first annotation's boxes are the first
    objects; each box of the next annotation is matched (:func:`match_boxes`, one-to-one, same
    class, IoU >= ``iou_threshold``) to the objects so far, joins the object it matches, and
    becomes a new object otherwise.

    An object's box is the first annotation's box when that annotation has the object, else the
    mean of its boxes. Why: the first annotation (MSRS ``fusion``) was drawn on the fused image,
    the image a detector on fused input sees, so its extent is the one to predict; the
    infrared and visible boxes of one object differ by annotator noise and by what each
    modality shows (a warm body, a lit silhouette), and with no fusion box their mean is the
    estimate that favours neither. The mean also only moves a box by half the disagreement of
    two boxes that already overlap at IoU >= 0.5.

    Two boxes of one annotation are never merged with each other (two persons side by side
    stay two objects), and a box joins at most one object.

    Parameters
    ----------
    annotations : sequence of (boxes, labels)
        ``boxes`` (K_i, 4) ``x1, y1, x2, y2``; ``labels`` (K_i,) class ids.
    iou_threshold : float, optional
        Minimum IoU for two same-class boxes of different annotations to be one object.
    return_support : bool, optional
        Also return which annotations have each object.

    Returns
    -------
    boxes : (K, 4) ndarray of float64
    labels : (K,) ndarray of int64
        One entry per object, the first annotation's objects first, in their order.
    support : (K, len(annotations)) ndarray of bool
        Only with ``return_support``: ``support[k, i]`` is True when annotation ``i`` has
        object ``k``.

    Examples
    --------
    >>> fusion = (np.array([[0, 0, 10, 10]]), np.array([0]))
    >>> infrared = (np.array([[1, 0, 11, 10], [50, 50, 60, 60]]), np.array([0, 0]))
    >>> boxes, labels = merge_annotations([fusion, infrared])
    >>> boxes.tolist(), labels.tolist()
    ([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]], [0, 0])
    """
    count = len(annotations)
    if count == 0:
        raise ValueError("merge_annotations needs at least one annotation")
    # Per object: the sum and number of its boxes, its first-annotation box, its support.
    sums = np.zeros((0, 4), np.float64)
    numbers = np.zeros(0, np.int64)
    labels = np.zeros(0, np.int64)
    support = np.zeros((0, count), bool)
    first = np.asarray(annotations[0][0], dtype=np.float64).reshape(-1, 4)
    for index, (boxes_i, labels_i) in enumerate(annotations):
        boxes_i = np.asarray(boxes_i, dtype=np.float64).reshape(-1, 4)
        labels_i = np.asarray(labels_i, dtype=np.int64).reshape(-1)
        if len(boxes_i) != len(labels_i):
            raise ValueError(
                f"annotation {index}: {len(boxes_i)} boxes but {len(labels_i)} labels"
            )
        current = _object_boxes(sums, numbers, first)
        matched_obj, matched_box = match_boxes(current, labels, boxes_i, labels_i, iou_threshold)
        sums[matched_obj] += boxes_i[matched_box]
        numbers[matched_obj] += 1
        support[matched_obj, index] = True
        new = np.ones(len(boxes_i), bool)
        new[matched_box] = False
        fresh_support = np.zeros((int(new.sum()), count), bool)
        fresh_support[:, index] = True
        sums = np.concatenate([sums, boxes_i[new]])
        numbers = np.concatenate([numbers, np.ones(int(new.sum()), np.int64)])
        labels = np.concatenate([labels, labels_i[new]])
        support = np.concatenate([support, fresh_support])
    boxes = _object_boxes(sums, numbers, first)
    if return_support:
        return boxes, labels, support
    return boxes, labels


def _object_boxes(sums: np.ndarray, numbers: np.ndarray, first: np.ndarray) -> np.ndarray:
    """The objects' boxes: the first annotation's box where it has the object (objects
    0..len(first)-1 are exactly those), else the mean of the object's boxes."""
    boxes = sums / np.maximum(numbers, 1)[:, None]
    if len(boxes):  # empty before the first annotation is read
        boxes[: len(first)] = first
    return boxes


def read_merged_labels(
    labels_root: str | Path,
    name: str,
    width: int,
    height: int,
    annotations: Sequence[str] = MSRS_ANNOTATIONS,
    iou_threshold: float = MERGE_IOU,
    class_map: Mapping[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Merged ground truth of one pair from ``labels_root/<annotation>/<name>.txt``.

    :func:`merge_annotations` of the annotations that have a file for ``name`` (in the order of
    ``annotations``; a missing file is an annotation that did not label the pair, an empty
    file one that saw no object). ``None`` when no annotation has a file: the pair is not
    labelled. Returns ``(boxes, labels)`` like :func:`read_yolo`.
    """
    labels_root = Path(labels_root)
    read = [
        read_yolo(path, width, height, class_map)
        for path in (labels_root / annotation / f"{name}.txt" for annotation in annotations)
        if path.is_file()
    ]
    if not read:
        return None
    return merge_annotations(read, iou_threshold)  # type: ignore[return-value]


def yolo_truth(labels_dir: str | Path) -> TruthSource:
    """A :data:`TruthSource` reading one annotation: ``labels_dir/<stem>.txt`` (no file: the
    pair is not labelled)."""
    labels_dir = Path(labels_dir)

    def truth(stem: str, width: int, height: int) -> dict[str, np.ndarray] | None:
        path = labels_dir / f"{stem}.txt"
        if not path.is_file():
            return None
        boxes, labels = read_yolo(path, width, height)
        return {"boxes": boxes, "labels": labels}

    truth.description = f"YOLO labels in {labels_dir}"  # type: ignore[attr-defined]
    return truth


def merged_truth(
    labels_root: str | Path,
    annotations: Sequence[str] = MSRS_ANNOTATIONS,
    iou_threshold: float = MERGE_IOU,
) -> TruthSource:
    """A :data:`TruthSource` of :func:`read_merged_labels` under ``labels_root``."""
    labels_root = Path(labels_root)
    annotations = tuple(annotations)

    def truth(stem: str, width: int, height: int) -> dict[str, np.ndarray] | None:
        merged = read_merged_labels(
            labels_root, stem, width, height, annotations, iou_threshold
        )
        if merged is None:
            return None
        return {"boxes": merged[0], "labels": merged[1]}

    truth.description = (  # type: ignore[attr-defined]
        f"merged {'+'.join(annotations)} labels in {labels_root} "
        f"(same-class union after matching at IoU {iou_threshold:g})"
    )
    return truth


def labels_truth(labels_dir: str | Path) -> TruthSource:
    """The :data:`TruthSource` of a labels folder as ``fusion-eval --labels DIR`` reads it.

    ``DIR/<stem>.txt`` files: that one annotation (:func:`yolo_truth`). No ``.txt`` file in
    ``DIR`` itself but subfolders named as :data:`MSRS_ANNOTATIONS` (``fusion``, ``infrared``,
    ``visible``; MSRS's ``labels/``): their merge (:func:`merged_truth` of the subfolders
    present, in that order).
    """
    labels_dir = Path(labels_dir)
    present = tuple(name for name in MSRS_ANNOTATIONS if (labels_dir / name).is_dir())
    if present and not any(labels_dir.glob("*.txt")):
        return merged_truth(labels_dir, present)
    return yolo_truth(labels_dir)
