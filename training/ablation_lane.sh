#!/usr/bin/env bash
# One lane of the perception ablation (docs/ablation.md): train each listed row, then score
# its bundle on msrs_det:test (detection), the 8 MSRS masks (segmentation) and TNO-25 (fusion).
# Usage: training/ablation_lane.sh SEED ROW [ROW ...]   (rows: visible infrared mean
#        fusion_only joint bilevel_fixed bilevel_dynamic); two lanes in parallel fill 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
seed=$1; shift
data=../shared/data
for row in "$@"; do
  name=ablation_yolox_${row}_s${seed}
  run=runs/$name
  if [ ! -f "$run/bundle/model.yaml" ]; then
    python -m training.train --config "training/configs/ablation_yolox_${row}.yaml" --quiet \
      --override seed="$seed" name="$name" export.out="$run/bundle" export.name="$name" \
      > "runs/$name.log" 2>&1
  fi
  OMP_NUM_THREADS=1 fusion-eval folder --bundle "$run/bundle" --split msrs_det:test \
    --score-threshold 0.001 --nms-iou 0.65 --out "$run/eval_test" >> "runs/$name.log" 2>&1
  OMP_NUM_THREADS=1 fusion-eval folder --bundle "$run/bundle" --ir $data/msrs/ir --vi $data/msrs/vi \
    --masks $data/msrs/masks --mask-map 255:1 --labels $data/msrs/labels \
    --score-threshold 0.001 --out "$run/eval_msrs" >> "runs/$name.log" 2>&1
  OMP_NUM_THREADS=1 fusion-eval folder --bundle "$run/bundle" --ir $data/tno/ir --vi $data/tno/vi \
    --out "$run/eval_tno" >> "runs/$name.log" 2>&1
  echo "[lane] $name done $(date +%T)"
done
