"""Train the fusion model: ``python -m training.train --config training/configs/<name>.yaml``.

    python -m training.train --config training/configs/default.yaml \
        [--override key=value ...] [--resume runs/<name>/last.pt] [--export DIR]
    torchrun --nproc_per_node 2 -m training.train --config training/configs/smoke.yaml

Writes runs/<name>/{last.pt, best.pt, tb/, history.jsonl, config.yaml} (``out_dir`` in the
config changes the folder). With ``export.enabled`` (or ``--export DIR``) the best checkpoint
(last if no evaluation ran) is exported to a model bundle and checked against onnxruntime.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import torch
import yaml

from training.trainer import REPO_ROOT, Trainer, init_distributed, load_config


def export_checkpoint(
    checkpoint_path: Path, out_dir: Path, name: str, parity_sizes: list[list[int]]
) -> dict[str, Any]:
    """Bundle from a trainer checkpoint (training.export) + ORT parity report."""
    from training.export import check_parity, export_bundle, model_from_checkpoint

    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    model = model_from_checkpoint(checkpoint)
    provenance: dict[str, Any] = {
        "architecture": checkpoint["architecture"],
        "checkpoint": str(checkpoint_path),
        "step": checkpoint.get("step"),
        "config": checkpoint.get("config", {}),
        "data": checkpoint.get("data", {}),
        "metrics_at_checkpoint": {
            k: v for k, v in (checkpoint.get("metrics") or {}).items()
            if isinstance(v, float) and math.isfinite(v)
        },
    }
    export_bundle(model, out_dir, name=name, provenance=provenance)
    report = check_parity(model, out_dir, [tuple(s) for s in parity_sizes])
    return report


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
        (trainer.out_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        print(
            f"[train] {config['name']}: mode {config['mode']}, fusion {config['fusion']}, "
            f"modules {trainer.active}, world {info.world}, out {trainer.out_dir}",
            flush=True,
        )
    history = trainer.train()
    if info.main:
        with (trainer.out_dir / "history.jsonl").open("a") as stream:
            for row in history:
                stream.write(json.dumps(row) + "\n")
        last = history[-1] if history else {}
        print(f"[train] done at step {trainer.step}; last step: "
              + ", ".join(f"{k} {v:.4g}" for k, v in sorted(last.items())), flush=True)
        export_cfg = config.get("export") or {}
        out = args.export or (export_cfg.get("out") if export_cfg.get("enabled") else None)
        if out:
            best = trainer.out_dir / "best.pt"
            checkpoint = best if best.is_file() else trainer.out_dir / "last.pt"
            out_dir = Path(out) if Path(out).is_absolute() else REPO_ROOT / out
            report = export_checkpoint(
                checkpoint, out_dir, config["name"], export_cfg.get("parity_sizes", [[256, 320]])
            )
            worst = report["max"]
            print("[export] " + str(out_dir) + " parity max abs diff: "
                  + ", ".join(f"{k} {v:.2e}" for k, v in worst.items()), flush=True)
            if worst.get("fused_y", 1.0) >= 1e-3:
                print("[export] parity FAILED for fused_y", file=sys.stderr)
                return 1
    if info.world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
