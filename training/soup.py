r"""A uniform "model soup" of one module's weights across trainer checkpoints::

    python -m training.soup runs/a/best.pt runs/b/best.pt runs/c/best.pt \
        --out runs/soup/best.pt [--module fusion]

The soup is the first checkpoint with ``--module``'s floating-point tensors replaced by their
mean over all the checkpoints (integer buffers such as BatchNorm's ``num_batches_tracked`` stay
the first's); every other module, the config and the data come from the first, and its
``soup`` entry (copied into a bundle's provenance by ``training.export``) lists the members.
The checkpoints must share the module's architecture (same keys and shapes): averaging only
makes sense for runs fine-tuned from one starting point
(docs/fusion_protocol.md, stop 13). Optimiser and RNG state and the first's metrics are
dropped (they describe the first run): the soup is for ``init_from`` and ``training.export``,
not for resuming.

Imports torch and the standard library.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch


def soup_state(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of floating-point tensors over ``states`` (others: the first's)."""
    if not states:
        raise ValueError("a soup needs at least one state dict")
    first = states[0]
    for index, state in enumerate(states[1:], start=1):
        if state.keys() != first.keys():
            raise ValueError(f"member {index} has other parameters than member 0")
        for key, tensor in state.items():
            if tensor.shape != first[key].shape:
                raise ValueError(
                    f"member {index}: {key} has shape {tuple(tensor.shape)}, member 0 "
                    f"{tuple(first[key].shape)}"
                )
    soup = {}
    for key, tensor in first.items():
        if tensor.is_floating_point():
            stacked = torch.stack([state[key].to(torch.float64) for state in states])
            soup[key] = stacked.mean(dim=0).to(tensor.dtype)
        else:
            soup[key] = tensor.clone()
    return soup


def soup_checkpoint(paths: Sequence[Path], module: str = "fusion") -> dict[str, Any]:
    """The first checkpoint with ``module`` averaged over all of ``paths``."""
    checkpoints = [torch.load(p, map_location="cpu", weights_only=False) for p in paths]
    missing = [str(p) for p, c in zip(paths, checkpoints, strict=True) if module not in c]
    if missing:
        raise ValueError(f"no {module!r} weights in: {', '.join(missing)}")
    architectures = {repr(c.get("architecture", {}).get(module)) for c in checkpoints}
    if len(architectures) > 1:
        raise ValueError(f"the members' {module} architectures differ: {sorted(architectures)}")
    soup = dict(checkpoints[0])
    soup[module] = soup_state([c[module] for c in checkpoints])
    for key in ("optimizers", "aggregator", "rng", "metrics", "best_metric"):
        soup.pop(key, None)
    soup["soup"] = {"module": module, "members": [str(p) for p in paths],
                    "steps": [c.get("step") for c in checkpoints]}
    return soup


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", type=Path, help="trainer checkpoints (.pt)")
    parser.add_argument("--out", required=True, type=Path, help="the soup checkpoint to write")
    parser.add_argument("--module", default="fusion", help="which module to average")
    args = parser.parse_args(argv)
    try:
        soup = soup_checkpoint(args.checkpoints, args.module)
    except (OSError, ValueError) as exc:
        print(f"soup: {exc}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(soup, args.out)
    print(f"wrote {args.out}: {args.module} averaged over {len(args.checkpoints)} checkpoints")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
