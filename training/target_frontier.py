"""Score the fusion *target* itself (not a network) on a pair folder, for a grid of the two
enhancement knobs of :func:`training.losses.fusion_target`.

    python -m training.target_frontier [--folder ../shared/data/tno]
        [--detail-gain 0 0.3] [--contrast 1 1.2] [--detail-sigma 1.5]

A network trained toward a target rarely beats the target on the metrics that reward copying
a source (MI, Qabf), so this table is the ceiling to expect before spending CPU hours on
training. It prints the mean of the eight paper metrics per setting and how many reach the
CDDFuse figures (training.evaluation.CDDFUSE_TNO). Choosing knobs on the evaluation
folder itself biases that folder's numbers; the docs say so where they report them.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
import torch

from ros2_bilevel_fusion.evaluation.metrics import (
    fusion_metrics,
    list_images,
    mean_metrics,
    read_u8,
)
from training.evaluation import CDDFUSE_TNO
from training.losses import FusionLossWeights, fusion_target

# The eight metrics fusion papers report: the keys of the published CDDFuse table.
PAPER_METRICS: tuple[str, ...] = tuple(CDDFUSE_TNO)
REPO_ROOT = Path(__file__).resolve().parents[1]


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", type=Path, default=REPO_ROOT / "../shared/data/tno")
    parser.add_argument("--detail-gain", type=float, nargs="+", default=[0.0, 0.2, 0.4])
    parser.add_argument("--contrast", type=float, nargs="+", default=[1.0, 1.2])
    parser.add_argument("--detail-sigma", type=float, default=1.5)
    args = parser.parse_args(argv)
    pairs = [
        (read_u8(path, grey=True), read_u8(args.folder / "vi" / path.name, grey=True))
        for path in list_images(args.folder / "ir")
    ]
    print("| detail_gain | contrast | " + " | ".join(PAPER_METRICS) + " | >= CDDFuse |")
    print("|---" * (len(PAPER_METRICS) + 3) + "|")
    for gain, contrast in itertools.product(args.detail_gain, args.contrast):
        weights = FusionLossWeights(
            detail_gain=gain, detail_sigma=args.detail_sigma, contrast=contrast
        )
        means = score_target(pairs, weights)
        hits = sum(means[name] >= CDDFUSE_TNO[name] for name in PAPER_METRICS)
        values = " | ".join(f"{means[name]:.3f}" for name in PAPER_METRICS)
        print(f"| {gain:g} | {contrast:g} | {values} | {hits} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
