"""Named data splits by name ranges: the one definition training and ``fusion-eval`` share.

MSRS names are frame numbers plus ``D`` (day) or ``N`` (night); frames a few numbers apart come
from the same drive and look alike, so pairs are split by ranges of the number, never at
random, with range boundaries at the big gaps of the numbering (docs/data_splits.md shows the
gaps and the counts).

``msrs_det`` (313 labelled pairs, 00004N..01603D):

============  ==================  =====  =============================================
split         numbers             pairs  use
============  ==================  =====  =============================================
``val``       00000 .. 00251      51     every choice: thresholds, checkpoints, knobs
``train``     00252 .. 01150      167    training
``test``      01151 .. 99999      95     reported numbers only
============  ==================  =====  =============================================

``roadscene`` (171 pairs, no labels): ``val`` (41: FLIR frames 0..2000 and the FLIR video) for
fusion knobs and checkpoints, ``train`` (130) for the fusion loss; TNO-25 stays the test set.

``msrs`` (28 pairs): ``holdout`` is :data:`MSRS_HOLDOUT_NAMES`, ``train`` the other 20. No name
of :data:`MSRS_HOLDOUT_NAMES` is in any ``train`` split.

Usage::

    names = split_names("msrs_det:test", "../shared/data")    # sorted names
    folder = split_folder("msrs_det:test", "../shared/data")   # .../msrs_det (ir/, vi/, labels/)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ros2_bilevel_fusion.evaluation import ground_truth

#: Where the shared data lives, relative to the project root (the CLI's default).
DEFAULT_DATA_ROOT = Path("../shared/data")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

# MSRS evaluation hold-out: every 4th sorted name of msrs/ starting at the first, plus 00006N,
# so that the 8 pairs with person masks split 4 / 4 between training and evaluation (held out:
# 00001D, 00005N, 00006N, 00009N; trained on: 00002D, 00003N, 00007N, 00010N) and both day and
# night scenes are held out. 8 of 28 pairs. 00020N, 00036N, 00055D and 00091D are also msrs_det
# names; they fall in msrs_det's val range and are excluded from every train split anyway.
MSRS_HOLDOUT_NAMES: tuple[str, ...] = (
    "00001D", "00005N", "00006N", "00009N", "00020N", "00036N", "00055D", "00091D",
)


@dataclass(frozen=True)
class NameRange:
    """Names whose frame number lies in ``first..last``, inclusive: the leading digits, or with
    ``prefix`` the digits right after it (``FLIR_`` + ``00691``; a name without the prefix, or
    with other characters after it, is not in the range)."""

    first: int
    last: int
    prefix: str = ""

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str) or not name.startswith(self.prefix):
            return False
        rest = name[len(self.prefix):]
        if self.prefix and not rest[:1].isdigit():
            return False
        return self.first <= frame_number(rest) <= self.last


@dataclass(frozen=True)
class Split:
    dataset: str  # folder under the data root
    ranges: tuple[NameRange, ...] = ()  # empty: every name of the folder
    include: tuple[str, ...] | None = None  # only these names (before ``exclude``)
    exclude: tuple[str, ...] = ()  # never these names
    description: str = ""

    def select(self, names: Sequence[str]) -> list[str]:
        """The names of ``names`` in this split, sorted."""
        chosen = [
            name
            for name in names
            if (not self.ranges or any(name in r for r in self.ranges))
            and (self.include is None or name in self.include)
            and name not in self.exclude
        ]
        return sorted(chosen)


# Boundaries sit in the two largest gaps of msrs_det's numbering that leave >= 40 test pairs
# with day and night on either side: 00245D | 00258D (13 frames, a different street) and
# 01094N | 01206N (112 frames); the third big gap, 00462D | 00587D (125), is inside train.
MSRS_DET_VAL = NameRange(0, 251)
MSRS_DET_TRAIN = NameRange(252, 1150)
MSRS_DET_TEST = NameRange(1151, 99999)

# RoadScene (171 pairs): 155 FLIR ADAS frames "FLIR_<number>" and 16 frames of one video
# "FLIR_video_<number>". Frames close in number come from one drive. The largest gap of the
# FLIR numbering, 01945 | 03801 (1856 frames), cuts off its first 25 frames; they and the
# video's 16 are the validation split of the fusion metrics (41 pairs), the other 130 train.
ROADSCENE_VAL = (NameRange(0, 2000, "FLIR_"), NameRange(0, 99999, "FLIR_video_"))
ROADSCENE_TRAIN = (NameRange(2001, 99999, "FLIR_"),)

SPLITS: dict[str, Split] = {
    "msrs_det:train": Split(
        "msrs_det", (MSRS_DET_TRAIN,), exclude=MSRS_HOLDOUT_NAMES,
        description="msrs_det 00252..01150 (00258D..01094N), training",
    ),
    "msrs_det:val": Split(
        "msrs_det", (MSRS_DET_VAL,),
        description="msrs_det 00000..00251 (00004N..00245D), every choice of threshold, "
        "checkpoint and knob",
    ),
    "msrs_det:test": Split(
        "msrs_det", (MSRS_DET_TEST,),
        description="msrs_det 01151.. (01206N..01603D), reported numbers only",
    ),
    "msrs:train": Split(
        "msrs", exclude=MSRS_HOLDOUT_NAMES,
        # Every msrs name lies in msrs_det:val's frame range (16 of the 20 are msrs_det:val
        # pairs): a run that chooses anything on msrs_det:val must not train on this split.
        description="msrs without MSRS_HOLDOUT_NAMES (legacy fusion pool of the shipped model; "
        "inside msrs_det:val's frame range, so never beside msrs_det:val choices)",
    ),
    "msrs:holdout": Split(
        "msrs", include=MSRS_HOLDOUT_NAMES, description="msrs MSRS_HOLDOUT_NAMES",
    ),
    "roadscene:train": Split(
        "roadscene", ROADSCENE_TRAIN,
        description="RoadScene FLIR_03801.. (130 pairs), the fusion loss's training pairs",
    ),
    "roadscene:val": Split(
        "roadscene", ROADSCENE_VAL,
        description="RoadScene FLIR_00006..FLIR_01945 and FLIR_video_* (41 pairs), every "
        "choice of fusion knob and checkpoint (TNO-25 is the test set)",
    ),
}


class SplitError(ValueError):
    """An unknown split name, or a data root without the split's folder."""


def frame_number(name: str) -> int:
    """The frame number of an MSRS-style name: ``"00055D"`` -> 55."""
    digits = name[: next((i for i, ch in enumerate(name) if not ch.isdigit()), len(name))]
    if not digits:
        raise SplitError(f"{name!r} does not start with a frame number")
    return int(digits)


def get_split(split: str) -> Split:
    """The :class:`Split` called ``split`` (``"msrs_det:test"``)."""
    try:
        return SPLITS[split]
    except KeyError:
        raise SplitError(f"unknown split {split!r}; known: {', '.join(SPLITS)}") from None


def split_folder(split: str, data_root: str | Path = DEFAULT_DATA_ROOT) -> Path:
    """The data set folder of ``split`` (holds ``ir/``, ``vi/``, ``labels/``)."""
    folder = Path(data_root) / get_split(split).dataset
    if not (folder / "ir").is_dir() or not (folder / "vi").is_dir():
        raise SplitError(f"{folder} has no ir/ and vi/ folders (data root {data_root})")
    return folder


def pair_names(folder: str | Path) -> list[str]:
    """Sorted stems that have an image in both ``folder/ir`` and ``folder/vi``."""
    folder = Path(folder)

    def stems(side: Path) -> set[str]:
        return {p.stem for p in side.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}

    return sorted(stems(folder / "ir") & stems(folder / "vi"))


def split_names(split: str, data_root: str | Path = DEFAULT_DATA_ROOT) -> list[str]:
    """Sorted names of the pairs of ``split`` found under ``data_root``."""
    return get_split(split).select(pair_names(split_folder(split, data_root)))


def split_statistics(
    split: str,
    data_root: str | Path = DEFAULT_DATA_ROOT,
    num_classes: int = 3,
    width: int = 640,
    height: int = 480,
) -> dict:
    """Counts of a split: pairs, day / night pairs, and boxes per class in the ``fusion``
    annotation alone and in the merged ground truth (:func:`ground_truth.read_merged_labels`).

    ``width`` and ``height`` only scale the boxes (counts do not depend on them).
    """
    names = split_names(split, data_root)
    labels_root = split_folder(split, data_root) / "labels"
    fusion = np.zeros(num_classes, np.int64)
    merged = np.zeros(num_classes, np.int64)
    for name in names:
        path = labels_root / "fusion" / f"{name}.txt"
        if path.is_file():
            fusion += np.bincount(
                ground_truth.read_yolo(path, width, height)[1], minlength=num_classes
            )[:num_classes]
        both = ground_truth.read_merged_labels(labels_root, name, width, height)
        if both is not None:
            merged += np.bincount(both[1], minlength=num_classes)[:num_classes]
    return {
        "split": split,
        "pairs": len(names),
        "day": sum(name.endswith("D") for name in names),
        "night": sum(name.endswith("N") for name in names),
        "first": names[0] if names else None,
        "last": names[-1] if names else None,
        "fusion_boxes": fusion.tolist(),
        "merged_boxes": merged.tolist(),
    }
