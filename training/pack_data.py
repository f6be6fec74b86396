"""Pack the pairs of named splits into a small data root for a machine without ../shared
(the GPU machine the `paper` network is meant to train on: 64 MiB travel with the repository).

    python -m training.pack_data --out .gpu_pack/data
        [--split roadscene:train --split roadscene:val --split msrs_det:train ...]
        [--jpeg-quality 95]

The pack has the data root's layout (``<dataset>/ir``, ``<dataset>/vi``, ``<dataset>/labels/...``),
so a config reads it with ``--override data.root=.gpu_pack/data`` and every named split selects
the same names as under ../shared/data (splits are name ranges, not positions). Images are
re-encoded as JPEG at ``--jpeg-quality`` (95: 0.16 grey levels mean absolute error on the IR
images, 6 at most) unless ``--jpeg-quality 0``, which copies the files as they are; files
that are JPEG already (RoadScene) are copied, not re-encoded a second time. Training
on the pack therefore sees slightly different pixels from training here; evaluate its
checkpoints on the original data.
"""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Sequence
from pathlib import Path

import cv2

from ros2_bilevel_fusion.evaluation.metrics import find_pair_file
from ros2_bilevel_fusion.evaluation.splits import get_split, split_folder, split_names
from training.config import REPO_ROOT

# msrs_det:val is left out by default to fit 64 MiB with the repository and the weights: the
# packed run selects checkpoints on roadscene:val, and msrs_det:val is scored here afterwards.
DEFAULT_SPLITS = ("roadscene:train", "roadscene:val", "msrs_det:train")
JPEG_SUFFIXES = (".jpg", ".jpeg")


def _image(folder: Path, name: str) -> Path:
    path = find_pair_file(folder, name)
    if path is None:  # split_names lists names found on both sides: cannot happen
        raise FileNotFoundError(f"no image {name}.* in {folder}")
    return path


def pack_splits(
    splits: Sequence[str], data_root: Path, out: Path, jpeg_quality: int = 95
) -> dict[str, int]:
    """Write the pairs (and their label files) of ``splits`` under ``out``; returns the
    number of pairs written per split."""
    counts: dict[str, int] = {}
    for split in splits:
        source = split_folder(split, data_root)
        target = out / get_split(split).dataset
        names = split_names(split, data_root)
        for side in ("ir", "vi"):
            (target / side).mkdir(parents=True, exist_ok=True)
        for name in names:
            for side in ("ir", "vi"):
                image = _image(source / side, name)
                if jpeg_quality and image.suffix.lower() not in JPEG_SUFFIXES:
                    pixels = cv2.imread(str(image), cv2.IMREAD_UNCHANGED)
                    if pixels is None:
                        raise ValueError(f"cannot read {image}")
                    cv2.imwrite(str(target / side / f"{name}.jpg"), pixels,
                                [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
                else:
                    shutil.copy2(image, target / side / image.name)
            labels = source / "labels"
            if labels.is_dir():
                for label in labels.glob(f"*/{name}.txt"):
                    destination = target / "labels" / label.parent.name / label.name
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(label, destination)
        counts[split] = len(names)
    return counts


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--split", action="append", default=None,
                        help=f"split(s) to pack (default: {', '.join(DEFAULT_SPLITS)})")
    parser.add_argument("--data-root", type=Path, default=REPO_ROOT / "../shared/data")
    parser.add_argument("--jpeg-quality", type=int, default=95,
                        help="JPEG quality of the packed images (0: copy the files)")
    args = parser.parse_args(argv)
    if not 0 <= args.jpeg_quality <= 100:
        parser.error("--jpeg-quality must be 0 (copy) or 1-100")
    counts = pack_splits(args.split or list(DEFAULT_SPLITS), args.data_root, args.out,
                         args.jpeg_quality)
    for split, count in counts.items():
        print(f"{split}: {count} pairs")
    print(f"{args.out}: {folder_bytes(args.out) / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
