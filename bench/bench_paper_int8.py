"""The `paper` fusion network on this CPU: fp32 against onnxruntime int8 (issue 11 part 4).

    .venv/bin/python bench/bench_paper_int8.py [--size 640x480] [--rounds 3] [--threads 2]
        [--calib-pairs 4]

The `paper` network (PaperFusion, 418k parameters, ~128 GMAC per 640x480 frame) exported
fusion-only as a bundle (``training.export``), quantised by ``training.quantize`` (QDQ, int8
per-channel weights, symmetric int8 activations, MinMax) on ``--calib-pairs`` msrs_det:train
pairs, and both graphs timed in one process, interleaved, ``--rounds`` rounds after a
warm-up, on a real msrs_det:train pair at ``--size``. Prints ms per frame for each, the
int8 / fp32 ratio and the target (<= 300 ms), and the fp32 ceiling of this CPU for the
network's MACs at ``--peak-gflops``.

The network is UNTRAINED here (seed 0 weights; no `paper` bundle has been trained yet), so the
speed figures are those of the shipped architecture, while the quantisation error printed (max
absolute difference and PSNR of the int8 fused image against fp32) only shows that the int8
graph computes the same function within int8 resolution, not a trained model's accuracy cost.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

DATA_ROOT = REPO_ROOT.parent / "shared" / "data"
TARGET_MS = 300.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calib-pairs", type=int, default=4)
    parser.add_argument("--peak-gflops", type=float, default=0.0,
                        help="this CPU's fp32 peak for the ceiling line (0: not printed)")
    args = parser.parse_args(argv)
    if not (DATA_ROOT / "msrs_det").is_dir():
        print(f"skipped: {DATA_ROOT}/msrs_det is not present")
        return 0
    import torch

    from ros2_bilevel_fusion.core.bundle import load_bundle
    from training.export import export_bundle
    from training.models import build_export_model, conv_macs
    from training.quantize import add_int8, pair_feeds, split_feeds, time_graphs

    width, height = (int(v) for v in args.size.lower().split("x"))
    torch.manual_seed(0)
    model = build_export_model({"fusion": "paper", "detector": None, "segmenter": None}).eval()
    macs = conv_macs(model, torch.zeros(1, 1, height, width), torch.zeros(1, 3, height, width))
    with tempfile.TemporaryDirectory() as scratch:
        folder = export_bundle(
            model, Path(scratch) / "paper", name="paper-untrained",
            provenance={"note": "untrained paper network, for timing only"},
        )
        bundle = load_bundle(folder)
        feeds, names = split_feeds(bundle, "msrs_det:train", args.calib_pairs, DATA_ROOT)
        if feeds[0].values["ir"].shape[2:] != (height, width):
            ir = cv2.imread(str(DATA_ROOT / "msrs_det" / "ir" / f"{names[0]}.png"), 0)
            vi = cv2.imread(str(DATA_ROOT / "msrs_det" / "vi" / f"{names[0]}.png"))
            feeds = [pair_feeds(cv2.resize(ir, (width, height)), cv2.resize(vi, (width, height)),
                                bundle)]
        bundle = add_int8(folder, feeds, scope="all",
                          calibration={"split": "msrs_det:train", "names": names})
        paths = {"fp32": bundle.onnx_path, "int8": bundle.onnx_variants["int8"]}
        ms = time_graphs(paths, feeds[0], threads=args.threads, rounds=args.rounds, warmup=1)
        import onnxruntime as ort

        fused = {
            k: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(
                ["fused_y"], feeds[0].values)[0]
            for k, p in paths.items()
        }
    error = np.abs(fused["int8"] - fused["fp32"])
    mse = float(np.mean(error ** 2))
    psnr = 10 * np.log10(1.0 / mse) if mse > 0 else float("inf")
    print(f"paper fusion net (untrained), {width}x{height}, onnxruntime CPU {args.threads} "
          f"threads, median of {args.rounds} interleaved rounds; {macs / 1e9:.1f} GMAC of convs")
    print("| precision | ms per frame | goal |")
    print("|---|---|---|")
    print(f"| fp32 | {ms['fp32']:.0f} | - |")
    verdict = "met" if ms["int8"] <= TARGET_MS else "NOT met"
    print(f"| int8 | {ms['int8']:.0f} | <= {TARGET_MS:.0f} ({verdict}) |")
    print(f"int8 / fp32 = {ms['int8'] / ms['fp32']:.2f}")
    if args.peak_gflops > 0:
        ceiling = 2 * macs / (args.peak_gflops * 1e9) * 1000
        print(f"fp32 ceiling at {args.peak_gflops:.0f} GFLOP/s: {ceiling:.0f} ms")
    print(f"int8 fused image vs fp32: max abs difference {float(error.max()):.4f}, "
          f"PSNR {psnr:.1f} dB (untrained weights: a check of the quantised graph, not of a "
          "trained model's accuracy)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
