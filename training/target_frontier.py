"""Score the fusion *target* itself (not a network) on pairs, for a grid of its knobs
(:func:`training.losses.fusion_target`).

    python -m training.target_frontier [--split roadscene:val --split msrs_det:val]
        [--folder DIR] [--target max detail_max] [--detail-gain 0 0.3] [--contrast 1 1.2]
        [--detail-sigma 1.5] [--base-sigma 4] [--mean-weight 0 0.5]
        [--region-weight 0 0.5] [--region-sigma 8] [--region-power 2] [--stretch factor sources]

A network trained toward a target rarely beats the target on the metrics that reward copying
a source (MI, Qabf), so this table is the ceiling to expect before spending CPU hours on
training. It prints the mean of the eight paper metrics per setting, their ``reach``
(training.evaluation.reference_reach, the criterion the objective rules decide by) and how
many metrics each setting scores at least as high as the first setting (the reference: put
the shipped target first). Choose on validation splits (the default: ``roadscene:val`` and
``msrs_det:val``); ``--folder ../shared/data/tno`` scores the test set, where the table also
counts the metrics at or above the published CDDFuse figures (training.evaluation.CDDFUSE_TNO)
and must not be used to choose.
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ros2_bilevel_fusion.evaluation.folder import FolderPair, find_folder_pairs, split_pairs
from ros2_bilevel_fusion.evaluation.metrics import fusion_metrics, mean_metrics, read_u8
from training.evaluation import CDDFUSE_TNO, PAPER_METRICS, reference_reach
from training.losses import STRETCHES, TARGETS, FusionLossWeights, fusion_target

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SPLITS = ("roadscene:val", "msrs_det:val")


def target_image(ir_u8: np.ndarray, vis_u8: np.ndarray, weights: FusionLossWeights) -> np.ndarray:
    """The fusion target of one grey 8-bit pair, as an 8-bit image."""
    ir = torch.from_numpy(ir_u8.astype(np.float32) / 255.0)[None, None]
    vis = torch.from_numpy(vis_u8.astype(np.float32) / 255.0)[None, None]
    target = fusion_target(ir, vis, weights)[0, 0].numpy()
    return np.clip(np.rint(target * 255.0), 0, 255).astype(np.uint8)


def score_target(
    pairs: list[tuple[np.ndarray, np.ndarray]], weights: FusionLossWeights
) -> dict[str, float]:
    """Mean paper metrics of the target over the pairs."""
    rows = [
        fusion_metrics(target_image(ir, vis, weights), ir, vis, PAPER_METRICS)
        for ir, vis in pairs
    ]
    return mean_metrics(rows, PAPER_METRICS)


def grey_pairs(pairs: Sequence[FolderPair]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Grey 8-bit (IR, visible) images of ``pairs``, the visible image resized to the IR's size
    when they differ (RoadScene's sizes vary by a pixel)."""
    import cv2

    images = []
    for pair in pairs:
        ir, vis = read_u8(pair.ir_path, grey=True), read_u8(pair.visible_path, grey=True)
        if vis.shape != ir.shape:
            vis = cv2.resize(vis, (ir.shape[1], ir.shape[0]), interpolation=cv2.INTER_AREA)
        images.append((ir, vis))
    return images


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", action="append", default=None,
                        help=f"validation split(s) (default: {' and '.join(DEFAULT_SPLITS)})")
    parser.add_argument("--folder", type=Path, default=None,
                        help="a pair folder instead (TNO: the test set, never to choose on)")
    parser.add_argument("--data-root", type=Path, default=REPO_ROOT / "../shared/data")
    parser.add_argument("--target", nargs="+", default=["max"], choices=TARGETS)
    parser.add_argument("--detail-gain", type=float, nargs="+", default=[0.0, 0.2, 0.4])
    parser.add_argument("--contrast", type=float, nargs="+", default=[1.0, 1.2])
    parser.add_argument("--detail-sigma", type=float, default=1.5)
    parser.add_argument("--base-sigma", type=float, nargs="+", default=[4.0])
    parser.add_argument("--mean-weight", type=float, nargs="+", default=[0.0])
    parser.add_argument("--region-weight", type=float, nargs="+", default=[0.0])
    parser.add_argument("--region-sigma", type=float, nargs="+", default=[8.0])
    parser.add_argument("--region-power", type=float, nargs="+", default=[2.0])
    parser.add_argument("--stretch", nargs="+", default=["factor"], choices=STRETCHES)
    args = parser.parse_args(argv)
    if args.folder is not None:
        pairs = grey_pairs(find_folder_pairs(args.folder / "ir", args.folder / "vi"))
        source = str(args.folder)
    else:
        names = args.split or list(DEFAULT_SPLITS)
        pairs = [p for split in names for p in grey_pairs(split_pairs(split, args.data_root)[0])]
        source = " + ".join(names)
    is_tno = args.folder is not None and args.folder.name == "tno"
    print(f"{len(pairs)} pairs of {source}")
    extra = " >= CDDFuse |" if is_tno else ""
    print("| target | base sigma | mean weight | region weight, sigma, power | detail_gain | "
          "stretch, contrast | " + " | ".join(PAPER_METRICS) + " | reach | >= first row |"
          + extra)
    print("|---" * (len(PAPER_METRICS) + 8 + bool(is_tno)) + "|")
    reference = None
    for (target, base_sigma, mean_weight, region_weight, region_sigma, region_power, gain,
         stretch, contrast) in itertools.product(
        args.target, args.base_sigma, args.mean_weight, args.region_weight, args.region_sigma,
        args.region_power, args.detail_gain, args.stretch, args.contrast,
    ):
        weights = FusionLossWeights(
            detail_gain=gain, detail_sigma=args.detail_sigma, contrast=contrast,
            target=target, base_sigma=base_sigma, mean_weight=mean_weight,
            region_weight=region_weight, region_sigma=region_sigma, region_power=region_power,
            stretch=stretch,
        )
        means = score_target(pairs, weights)
        reference = reference or means
        wins = sum(means[name] >= reference[name] for name in PAPER_METRICS)
        values = " | ".join(f"{means[name]:.3f}" for name in PAPER_METRICS)
        region = f"{region_weight:g}, {region_sigma:g}, {region_power:g}" if region_weight else "-"
        reach = reference_reach(means)
        row = (f"| {target} | {base_sigma:g} | {mean_weight:g} | {region} | {gain:g} | "
               f"{stretch}, {contrast:g} | {values} | {reach:.4f} | {wins} |")
        if is_tno:
            row += f" {sum(means[name] >= CDDFUSE_TNO[name] for name in PAPER_METRICS)} |"
        print(row, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
