#!/usr/bin/env bash
# Everything this project measures on a GPU, in one command (a lent GPU machine is often short-lived):
#   1. the CUDA tests (tests/test_cuda_paths.py, the CUDA-graph step of tests/test_compiled_step.py and the
#      CUDA cases of the augmentation/evaluation tests);
#   2. short blocks of benchmarks/train_speed.py at the paper's size, eager (OUTDIR/eager.json) and with
#      the bundle's compile_step (OUTDIR/compiled.json), each with a profile of 10 joint iterations
#      (kernel time / wall time = GPU busy) and its own (c)/(a), so (c)/(a) is measured twice;
#   3. the full schedule (--full) with compile_step, every handler's host time (--handler-times) and
#      profiles at the end of the warm-up and joint phases: OUTDIR/train_speed_gpu.json (the short
#      measurements are written first, so a run cut off by the budget keeps them).
# Steps 2 take about 1-2 minutes (compilation included); step 3 gets what is left of SECONDS.
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
python3 -m pytest -q -p no:cacheprovider tests/test_cuda_paths.py tests/test_compiled_step.py tests/test_augment.py \
  tests/test_evaluation.py \
  -k "cuda or CUDA" 2>&1 | tee "$out/cuda_tests.log"
tests_rc=$?
echo "CUDA tests rc=$tests_rc"
short_rc=0
for variant in eager compiled; do
  flag=$([ "$variant" = compiled ] && echo --compile-step || true)
  left=$(( budget - ($(date +%s) - start) )); [ "$left" -gt 0 ] || left=1  # timeout 0 would mean no limit
  timeout --signal=INT --kill-after=15 "$left" python3 benchmarks/train_speed.py $flag --profile-dir "$out/$variant" \
    --out "$out/$variant.json" "$@" 2>&1 | tee "$out/$variant.log"
  short_rc=$(( short_rc || $? ))
done
left=$(( budget - ($(date +%s) - start) )); [ "$left" -gt 0 ] || left=1
echo "short blocks rc=$short_rc; $left s left for the full schedule"
timeout --signal=INT --kill-after=15 "$left" python3 benchmarks/train_speed.py --full --compile-step --handler-times \
  --profile-dir "$out/full" --out "$out/train_speed_gpu.json" "$@" 2>&1 | tee "$out/train_speed_gpu.log"
bench_rc=$(( $? || short_rc ))
kill "$smi_pid" 2>/dev/null
echo "train_speed.py rc=$bench_rc (124 = cut off by the $budget s budget), total $(( $(date +%s) - start )) s"
exit $(( tests_rc != 0 || bench_rc != 0 ))
