"""The training data of a config: pools, held-out sets and their provenance.

* ``fusion`` pool: RoadScene + MSRS-train pairs (unlabelled use), random scale, crop, flip.
* ``labelled`` pool: MSRS-train with YOLO boxes and person masks (``data.msrs_repeat`` times,
  ``data.labelled_crop``) + ``data.synthetic_train`` SYNTHETIC scenes.
* held out, never trained on: the MSRS eval names, a SYNTHETIC eval set (another seed) and the
  fusion evaluation folder (TNO).

The data sets themselves are :mod:`training.datasets` and :mod:`training.synthetic`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch.utils.data import ConcatDataset, Dataset

from ros2_bilevel_fusion.evaluation.folder import FolderPair, find_folder_pairs
from ros2_bilevel_fusion.evaluation.folder import split_pairs as split_folder_pairs
from ros2_bilevel_fusion.evaluation.ground_truth import MSRS_ANNOTATIONS
from ros2_bilevel_fusion.evaluation.splits import split_folder, split_names
from training import datasets
from training.config import REPO_ROOT, TrainConfig
from training.pseudo_masks import default_folder as pseudo_mask_folder
from training.pseudo_masks import write_split
from training.synthetic import SyntheticPairs


@dataclass
class TrainingData:
    """Training pools (``fusion``: unlabelled pairs; ``labelled``: boxes / masks), held-out
    evaluation sets and a provenance record for checkpoints and bundles."""

    pools: dict[str, Dataset]
    collate: Any
    msrs_eval: Dataset | None
    synthetic_eval: Dataset | None
    # the fusion metrics' held-out pairs (config eval.folder: a folder or a :val split)
    fusion_eval_pairs: list[FolderPair] | None
    provenance: dict[str, Any]
    # more semantic evaluation sets (data.msrs_det_eval_split), logged as eval/<key>/...
    extra_eval: dict[str, Dataset] = field(default_factory=dict)


def split_pair_folder(split: str, root: Path, crop: int) -> datasets.PairFolder:
    """The pairs of a named split (evaluation/splits.py) as fusion training data: random
    ``crop`` px crops, augmentation on."""
    return datasets.PairFolder(
        split_folder(split, root), names=split_names(split, root), crop=crop, train=True
    )


def build_data(config: TrainConfig, repo_root: Path = REPO_ROOT) -> TrainingData:
    """RoadScene + MSRS-train pairs for fusion; labelled MSRS-train + synthetic for the semantic
    modules; MSRS eval names, a synthetic eval set and the TNO folder held out."""
    dcfg = config.data
    root = (repo_root / dcfg.root).resolve()
    crop = int(config.crop)
    eval_names = sorted(dcfg.msrs_eval_names or datasets.MSRS_HOLDOUT_NAMES)
    msrs = root / "msrs"
    fusion_parts: list[Dataset] = []
    counts: dict[str, int] = {}
    msrs_train: list[str] = []
    if msrs.is_dir():
        msrs_train = [n for n in datasets.list_pair_names(msrs) if n not in set(eval_names)]
        leaked = set(msrs_train) & set(eval_names)
        if leaked:  # guard, cannot happen by construction
            raise RuntimeError(f"MSRS eval names in the training split: {sorted(leaked)}")
    for name in dcfg.fusion_sets:
        if ":" in name:  # a named split (evaluation/splits.py), e.g. roadscene:train
            if not name.endswith(":train"):
                raise ValueError(f"fusion set {name!r}: only :train splits are training data")
            part = split_pair_folder(name, root, crop)
            counts[f"fusion/{name}"] = len(part)
            fusion_parts.append(part)
            continue
        folder = root / name
        if not folder.is_dir():
            raise FileNotFoundError(f"fusion data set {folder} is missing")
        if name == "msrs":
            part = datasets.PairFolder(folder, names=msrs_train, crop=crop, train=True)
        elif name == "tno":
            raise ValueError("tno is the evaluation set; it must not be a training set")
        else:
            part = datasets.PairFolder(folder, crop=crop, train=True)
        counts[f"fusion/{name}"] = len(part)
        fusion_parts.append(part)

    labelled_crop = int(dcfg.labelled_crop or crop)
    scale_cfg = dcfg.labelled_scale_range
    labelled_scale_range = (
        (float(scale_cfg[0]), float(scale_cfg[1])) if scale_cfg else datasets.DEFAULT_SCALE_RANGE
    )
    if labelled_crop % 32:
        raise ValueError("data.labelled_crop must be a multiple of 32 (the detector's stride)")
    msrs_repeat = int(dcfg.msrs_repeat)

    def labelled_msrs(names: list[str], *, train: bool) -> datasets.PairFolder:
        return datasets.PairFolder(
            msrs,
            names=names,
            labels_dir=dcfg.msrs_labels,
            label_annotations=dcfg.msrs_label_annotations,
            masks_dir="masks",
            mask_map=datasets.MSRS_MASK_MAP,
            # Person-only masks: pixels of unlabelled classes (bicycle, car) are unknown.
            mask_unlabelled_box_classes=(1, 2),
            crop=labelled_crop,
            train=train,
            scale_range=labelled_scale_range,
        )

    labelled_parts: list[Dataset] = []
    if msrs.is_dir() and msrs_train and msrs_repeat:
        part = labelled_msrs(msrs_train, train=True)
        # The same PairFolder repeated: each listing draws its own random crop per access.
        labelled_parts.extend([part] * msrs_repeat)
        counts["labelled/msrs"] = len(part) * msrs_repeat
    annotations = list(dcfg.msrs_label_annotations or MSRS_ANNOTATIONS)

    def split_pairs(
        split: str, *, train: bool, masks_dir: Path | None = None
    ) -> datasets.PairFolder:
        names = split_names(split, root)
        if train:
            leaked = set(names) & set(eval_names)
            if leaked:  # the split definitions exclude them; a guard, not a filter
                raise RuntimeError(f"{split} holds held-out MSRS names {sorted(leaked)}")
        return datasets.PairFolder(
            split_folder(split, root), names=names, labels_dir="labels",
            label_annotations=annotations, crop=labelled_crop, train=train,
            scale_range=labelled_scale_range,
            masks_dir=str(masks_dir) if masks_dir is not None else None,
        )

    det_split = dcfg.msrs_det_split
    det_names: list[str] = []
    pseudo_masks: dict[str, Any] = {}
    if det_split:
        masks_dir = None
        if dcfg.msrs_det_pseudo_masks:
            # Built once per split (cached by its manifest: teacher sha256, names, rule).
            masks_dir = pseudo_mask_folder(str(det_split))
            write_split(str(det_split), masks_dir, root)
            manifest = json.loads((masks_dir / "manifest.json").read_text())
            pseudo_masks = {k: manifest[k] for k in (
                "rule_version", "teacher", "teacher_sha256", "teacher_licence")}
        part = split_pairs(str(det_split), train=True, masks_dir=masks_dir)
        det_names = list(part.names)
        labelled_parts.extend([part] * int(dcfg.msrs_det_repeat))
        counts[f"labelled/{det_split}"] = len(part) * int(dcfg.msrs_det_repeat)
    extra_eval: dict[str, Dataset] = {}
    if dcfg.msrs_det_eval_split:
        eval_split = str(dcfg.msrs_det_eval_split)
        if eval_split.endswith(":train") or eval_split.endswith(":test"):
            raise ValueError(f"data.msrs_det_eval_split {eval_split!r}: use a val split")
        eval_masks = None
        if dcfg.msrs_det_pseudo_masks:
            # the same teacher's labels on the val split: a segmentation signal for choosing
            # checkpoints (eval/<split>/IoU/...) that never looks at the real masks
            eval_masks = pseudo_mask_folder(eval_split)
            write_split(eval_split, eval_masks, root)
        extra_eval[eval_split.replace(":", "_")] = split_pairs(
            eval_split, train=False, masks_dir=eval_masks
        )
    n_synthetic = int(dcfg.synthetic_train or 0)
    if n_synthetic:
        labelled_parts.append(
            SyntheticPairs(
                n_synthetic, (labelled_crop, labelled_crop), seed=int(dcfg.synthetic_seed_train)
            )
        )
        counts["labelled/synthetic"] = n_synthetic
    if not fusion_parts or not labelled_parts:
        raise ValueError("need at least one fusion set and one labelled set")
    msrs_eval = None
    if msrs.is_dir() and eval_names:
        msrs_eval = labelled_msrs(eval_names, train=False)
    n_synthetic_eval = int(dcfg.synthetic_eval or 0)
    synthetic_eval = (
        SyntheticPairs(n_synthetic_eval, (crop, crop), seed=int(dcfg.synthetic_seed_eval))
        if n_synthetic_eval
        else None
    )
    folder = config.eval.folder
    # a folder under the data root, or a named val split (roadscene:val); TNO is the test set
    fusion_eval_pairs = None
    if folder and ":" in str(folder):
        if not str(folder).endswith(":val"):
            raise ValueError(f"eval.folder {folder!r}: a split for choices must be a :val split")
        dataset = str(folder).split(":")[0]
        if dataset in dcfg.fusion_sets:  # the whole folder would train on the val pairs
            raise ValueError(
                f"eval.folder {folder!r} chooses on pairs that fusion set {dataset!r} trains on; "
                f"train on {dataset}:train instead"
            )
        fusion_eval_pairs, _ = split_folder_pairs(str(folder), root)
    elif folder:
        fusion_eval_pairs = find_folder_pairs(root / folder / "ir", root / folder / "vi")
    return TrainingData(
        pools={"fusion": ConcatDataset(fusion_parts), "labelled": ConcatDataset(labelled_parts)},
        collate=datasets.collate_pairs,
        msrs_eval=msrs_eval,
        synthetic_eval=synthetic_eval,
        fusion_eval_pairs=fusion_eval_pairs,
        extra_eval=extra_eval,
        provenance={
            "root": str(dcfg.root),
            "counts": counts,
            "msrs_train_names": msrs_train,
            "msrs_eval_names": eval_names,
            "synthetic": {
                "train": n_synthetic,
                "eval": n_synthetic_eval,
                "seeds": [dcfg.synthetic_seed_train, dcfg.synthetic_seed_eval],
            },
            "fusion_eval_folder": folder,
            **(
                {"msrs_det_split": det_split, "msrs_det_train_names": det_names,
                 "msrs_det_eval_split": dcfg.msrs_det_eval_split,
                 "label_annotations": annotations,
                 **({"pseudo_masks": pseudo_masks} if pseudo_masks else {})}
                if det_split or dcfg.msrs_det_eval_split else {}
            ),
        },
    )
