#!/usr/bin/env bash
# Everything this project measures on a GPU, in one command (a lent GPU machine is often short-lived):
#   1. the CUDA tests (tests/test_cuda_paths.py and the CUDA cases of the augmentation/evaluation tests);
#   2. benchmarks/train_speed.py at the paper's size with the full schedule (--full): the short
#      measurements are written to OUTDIR/train_speed_gpu.json first, then again with the schedule.
# nvidia-smi logs SM clock, power, temperature and utilisation every second to OUTDIR/smi.csv.
# Usage: bash benchmarks/gpu_check.sh [OUTDIR] [SECONDS] [extra train_speed.py arguments]
# SECONDS bounds the whole script; a schedule cut off by it leaves the short measurements and the
# progress lines (iteration, elapsed seconds) in OUTDIR/train_speed_gpu.log.
set -u -o pipefail
out=${1:-gpu_results}
budget=${2:-570}
shift $(( $# < 2 ? $# : 2 ))
mkdir -p "$out"
start=$(date +%s)
export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true; \
  python3 -c "import torch, monai, ignite; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'monai', monai.__version__, 'ignite', ignite.__version__)"; } 2>&1 | tee "$out/machine.txt"
# clocks, power and temperature once a second, to tell a throttled GPU from a slow program
nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,utilization.gpu --format=csv \
  -l 1 > "$out/smi.csv" 2>/dev/null &
smi_pid=$!
python3 -m pytest -q -p no:cacheprovider tests/test_cuda_paths.py tests/test_augment.py tests/test_evaluation.py \
  -k "cuda or CUDA" 2>&1 | tee "$out/cuda_tests.log"
tests_rc=$?
left=$(( budget - ($(date +%s) - start) ))
echo "CUDA tests rc=$tests_rc; $left s left for train_speed.py"
timeout --signal=INT --kill-after=15 "$left" python3 benchmarks/train_speed.py --full \
  --out "$out/train_speed_gpu.json" "$@" 2>&1 | tee "$out/train_speed_gpu.log"
bench_rc=$?
kill "$smi_pid" 2>/dev/null
echo "train_speed.py rc=$bench_rc (124 = cut off by the $budget s budget), total $(( $(date +%s) - start )) s"
exit $(( tests_rc != 0 || bench_rc != 0 ))
