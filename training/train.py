"""Train the fusion model: ``python -m training.train --config training/configs/<name>.yaml``.

    python -m training.train --config training/configs/default.yaml \
        [--override key=value ...] [--resume runs/<name>/last.pt] [--export DIR]
    torchrun --nproc_per_node 2 -m training.train --config training/configs/smoke.yaml

Writes runs/<name>/{last.pt, best.pt, tb/, history.jsonl, config.yaml} (``out_dir`` in the
config changes the folder). With ``export.enabled`` (or ``--export DIR``) the best checkpoint
(last if no evaluation gave a score) is exported to a model bundle by
:func:`training.export.export_checkpoint`, the function ``python -m training.export`` runs,
with the config's ``export`` thresholds, and checked against onnxruntime.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from ros2_bilevel_fusion.core.bundle import parse_fused_stretch
from training.config import REPO_ROOT, TrainConfig, load_config
from training.distributed import init_distributed, shutdown
from training.engine import Trainer
from training.export import export_checkpoint, parity_failed, print_parity


def export_run(config: TrainConfig, run_dir: Path, out: str) -> int:
    """Export the run's best (else last) checkpoint to ``out``; 1 if parity fails."""
    best = run_dir / "best.pt"
    checkpoint = best if best.is_file() else run_dir / "last.pt"
    out_dir = Path(out) if Path(out).is_absolute() else REPO_ROOT / out
    settings = config.export
    _, report = export_checkpoint(
        checkpoint, out_dir, name=settings.name or config.name,
        score_threshold=settings.score_threshold, nms_iou=settings.nms_iou,
        max_detections=settings.max_detections,
        fused_stretch=parse_fused_stretch(settings.fused_stretch),
        parity_sizes=[tuple(s) for s in settings.parity_sizes],
    )
    print(f"[export] {out_dir} from {checkpoint}", flush=True)
    if report is not None:
        print_parity(report)
        if parity_failed(report):
            print("[export] parity FAILED for fused_y", file=sys.stderr)
            return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--override", nargs="*", default=[], help="dotted.key=yaml_value")
    parser.add_argument("--resume", default=None, help="checkpoint to continue from")
    parser.add_argument("--export", default=None, help="bundle folder to export to at the end")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    config = load_config(args.config, args.override)
    info = init_distributed()
    trainer = Trainer(config, resume=args.resume, info=info, quiet=args.quiet)
    if info.main:
        trainer.out_dir.mkdir(parents=True, exist_ok=True)
        (trainer.out_dir / "config.yaml").write_text(
            yaml.safe_dump(config.to_dict(), sort_keys=False)
        )
        print(
            f"[train] {config.name}: mode {config.mode}, fusion {config.fusion}, "
            f"modules {trainer.active}, world {info.world}, out {trainer.out_dir}",
            flush=True,
        )
    history = trainer.train()
    status = 0
    if info.main:
        with (trainer.out_dir / "history.jsonl").open("a") as stream:
            for row in history:
                stream.write(json.dumps(row) + "\n")
        last = history[-1] if history else {}
        print(f"[train] done at step {trainer.step}; last step: "
              + ", ".join(f"{k} {v:.4g}" for k, v in sorted(last.items())), flush=True)
        out = args.export or (config.export.out if config.export.enabled else None)
        if out:
            status = export_run(config, trainer.out_dir, out)
    shutdown(info)
    return status


if __name__ == "__main__":
    sys.exit(main())
