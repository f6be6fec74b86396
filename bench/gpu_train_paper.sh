#!/usr/bin/env bash
# Train the `paper` fusion network on one GPU (issue 12 part 5): the two stages of
# training/configs/paper_fusion.yaml and paper_bilevel.yaml with device=cuda and GPU-sized
# budgets, on a packed data root (the GPU machine has no ../shared). Checkpoints and logs go to
# $OUT (the device tool brings them back) or runs/gpu_paper; pick and score them here
# afterwards on the original data (msrs_det:val is not in the pack):
#   python -m training.export --checkpoint <OUT>/paper_bilevel/best.pt --out runs/paper_gpu/bundle --name paper
#   fusion-eval folder --bundle runs/paper_gpu/bundle --split msrs_det:val ...
#
# Prepare here (once; .gpu_pack is git-ignored, ~34 MiB with the weights):
#   python -m training.pack_data --out .gpu_pack/data
#   mkdir -p .gpu_pack/weights .gpu_pack/init
#   cp ../shared/weights/yolox_nano_coco.onnx .gpu_pack/weights/
#   mkdir -p .gpu_pack/init/stage3_bundle && cp runs/yolox_semantic/bundle/model.{pt,yaml,onnx} .gpu_pack/init/stage3_bundle/
# Run there: carry [".gpu_pack", "runs/pseudo_masks"] (41 MiB + 1 MiB; the cached pseudo-labels of
# msrs_det:train, made here by `python -m training.pseudo_masks`: the teacher's weights do not
# travel), command `bash bench/gpu_train_paper.sh`. Everything else it needs (torch, onnx,
# onnxruntime, OpenCV, PyYAML, scikit-image, tqdm) is on the GPU image; with no semantic
# evaluation there, pycocotools is not needed. The two stages stop at FUSION_TIMEOUT_S and
# BILEVEL_TIMEOUT_S (300 + 200 s: one device call) with their checkpoints so far.
# Dry run on this CPU (checked: both stages run and write best.pt / last.pt, ~4 min):
#   DEVICE=cpu FUSION_STEPS=2 BILEVEL_STEPS=2 EVAL_EVERY=2 PYTHON=python bash bench/gpu_train_paper.sh
# Never run on a GPU yet (no session of this task was lent one).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-runs/gpu_paper}"
mkdir -p "$out"
pack="${PACK:-.gpu_pack}"
device="${DEVICE:-cuda}"
fusion_steps="${FUSION_STEPS:-4000}"
bilevel_steps="${BILEVEL_STEPS:-600}"
eval_every="${EVAL_EVERY:-500}"
python="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
log="$out/gpu_train_paper.log"
echo "# bench/gpu_train_paper.sh on $(hostname) at $(date -u +%FT%TZ), device $device" | tee "$log"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader >> "$log" 2>&1 || true
"$python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" \
  2>&1 | tee -a "$log"

# Shared by both stages: the pack as the data root, the weights it carries, no msrs_det:val
# (not packed): checkpoints are chosen by the fusion score on roadscene:val.
common=(
  "device=$device" "data.root=$pack/data" "threads=0"
  "detector.pretrained=$pack/weights/yolox_nano_coco.onnx"
  "data.msrs_det_eval_split=null" "eval.folder=roadscene:val" "eval.semantic=false"
  "eval.select_metric=null" "eval.every=$eval_every" "tensorboard=false"
)
# stage 1: the fusion loss alone from random weights (the segmenter rides along frozen)
timeout "${FUSION_TIMEOUT_S:-300}" "$python" -m training.train \
  --config training/configs/paper_fusion.yaml --override "${common[@]}" \
  "init_from=$pack/init/stage3_bundle/model.pt" "steps=$fusion_steps" "checkpoint_every=$eval_every" \
  "out_dir=$out/paper_fusion" 2>&1 | tail -n 40 | tee -a "$log"
status=${PIPESTATUS[0]}
[ "$status" -ne 0 ] && { echo "stage 1 exit $status" | tee -a "$log"; }
# stage 2: bi-level, from stage 1's best (or last, if stopped before its first evaluation)
start="$out/paper_fusion/best.pt"; [ -f "$start" ] || start="$out/paper_fusion/last.pt"
timeout "${BILEVEL_TIMEOUT_S:-200}" "$python" -m training.train \
  --config training/configs/paper_bilevel.yaml --override "${common[@]}" \
  "init_from=$start" "steps=$bilevel_steps" "data.labelled_crop=320" \
  "checkpoint_every=$eval_every" "export.enabled=false" "out_dir=$out/paper_bilevel" \
  2>&1 | tail -n 40 | tee -a "$log"
status2=${PIPESTATUS[0]}
echo "stage 2 exit $status2; checkpoints: $(ls "$out"/paper_*/*.pt 2>/dev/null | tr '\n' ' ')" | tee -a "$log"
exit "$status2"
