#!/usr/bin/env bash
# TensorRT check on a machine with an NVIDIA GPU (issue 11 part 5): installs what it needs, then
# runs bench/gpu_check.py (FP16 engines of the default and an untrained `paper` bundle through
# the runtime's TensorRT backend: engine cache and stale-engine rebuild, parity against
# onnxruntime on the CPU, a not-black/not-saturated check, frames/s for fp32/fp16/int8 at
# 640x480). All output goes to ONE file: $OUT/gpu_check.md when OUT is set (the device tool),
# else runs/gpu_check/gpu_check.md. Finishes within 8 minutes (a 7-minute budget inside).
#
#   bash bench/gpu_check.sh                 # from the repository root
#   WHEELS=.whl bash bench/gpu_check.sh     # offline: install from a folder of wheels
#
# Packages: tensorrt (TensorRT 10 Python API), cuda-python (device memory), onnxruntime,
# opencv-python-headless, pyyaml, onnx, torch (the `paper` export). With network access they
# come from PyPI (tensorrt from NVIDIA's index via the tensorrt-cu12 meta package); with WHEELS
# set, only from that folder. Installed into a scratch --target dir, never into the system.
set -uo pipefail
cd "$(dirname "$0")/.."
result_dir="${OUT:-runs/gpu_check}"
mkdir -p "$result_dir"
log="$result_dir/gpu_check.md"
site="$(mktemp -d)/site"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
python="${PYTHON:-python3}"

{
  echo "# bench/gpu_check.sh on $(hostname) at $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || true
  missing=()
  for module in tensorrt cuda onnxruntime cv2 yaml onnx torch; do
    "$python" -c "import $module" 2>/dev/null || missing+=("$module")
  done
  echo "missing before install: ${missing[*]:-none}"
  if [ "${#missing[@]}" -gt 0 ]; then
    if [ -n "${WHEELS:-}" ]; then
      timeout 180 "$python" -m pip install -q --no-index --no-deps --target "$site" "$WHEELS"/*.whl
    else
      declare -A pkg=([tensorrt]=tensorrt-cu12 [cuda]=cuda-python [onnxruntime]=onnxruntime
                      [cv2]=opencv-python-headless [yaml]=pyyaml [onnx]=onnx [torch]=torch)
      names=(); for module in "${missing[@]}"; do names+=("${pkg[$module]}"); done
      timeout 240 "$python" -m pip install -q --target "$site" "${names[@]}"
    fi
    echo "pip exit code: $?"
  fi
} 2>&1 | tee "$log.setup"

timeout 450 "$python" bench/gpu_check.py --out "$log" --budget-s 400 2>&1 | tee "$log.console"
status=${PIPESTATUS[0]}
# one file: the setup and console logs are appended to the report
{ echo; echo "## setup log"; echo '```'; cat "$log.setup"; echo '```';
  echo "## console"; echo '```'; cat "$log.console"; echo '```'; } >> "$log"
rm -f "$log.setup" "$log.console"
echo "exit $status; results in $log"
exit "$status"
