#!/usr/bin/env bash
# One prepared run on a GPU machine: GPU parity tests, then the full-size benchmarks.
#
#   benchmarks/gpu_suite.sh OUTDIR
#
# Run from the repository root with the project's Python environment already in place:
# this script installs nothing, and it never changes clocks, power limits or any other
# GPU setting (it only reads them with nvidia-smi --query). Every step has its own
# time budget (timeout), so the whole script ends in under 8 minutes on an H100; a step
# that runs out of time still leaves every finished benchmark row in its JSON (the
# harness rewrites the file after each row, with "complete": false).
#
# OUTDIR receives at most 8 files (what a lent device machine sends back):
#   gpu_suite.log                       every step's output, GPU state before and after
#   kernels.json dit.json headline.json result files (benchmarks/results.py schema)
#   BENCHMARKS.generated.md             the tables, from benchmarks/report.py
#   plots/*.png                         latency vs steps, speedup, roofline fraction
#
# Budgets (seconds) can be overridden: T_TESTS T_KERNELS T_DIT T_HEADLINE T_REPORT.
set -u -o pipefail

OUT=${1:?usage: benchmarks/gpu_suite.sh OUTDIR}
PY=${PYTHON:-python}
T_TESTS=${T_TESTS:-150}
T_KERNELS=${T_KERNELS:-60}
T_DIT=${T_DIT:-40}
T_HEADLINE=${T_HEADLINE:-190}
T_REPORT=${T_REPORT:-25}
GPU_BACKENDS=${GPU_BACKENDS:-eager,engine-bf16,engine-fp8,engine-int8}

mkdir -p "$OUT/plots"
LOG="$OUT/gpu_suite.log"
: >"$LOG"
unset TRITON_INTERPRET  # the parity tests must run the compiled kernels, not the interpreter
export PYTHONUNBUFFERED=1
START=$(date +%s)
SUMMARY=""

gpu_state() {
  echo "== GPU state ($1) ==" >>"$LOG"
  nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,clocks.sm,clocks.max.sm,clocks.mem,power.draw,power.limit,temperature.gpu,clocks_event_reasons.active \
    --format=csv >>"$LOG" 2>&1 || echo "nvidia-smi unavailable" >>"$LOG"
}

step() {  # step NAME BUDGET_S COMMAND...
  local name=$1 budget=$2
  shift 2
  local t0 rc
  t0=$(date +%s)
  echo "== $name (budget ${budget}s): $* ==" >>"$LOG"
  timeout --signal=INT --kill-after=10 "$budget" "$@" >>"$LOG" 2>&1
  rc=$?
  local line
  line="$(printf '%-10s rc=%-3s %4ss' "$name" "$rc" "$(($(date +%s) - t0))")"
  [ "$rc" = 124 ] && line="$line  (TIMED OUT: partial results)"
  echo "== $line ==" >>"$LOG"
  SUMMARY="$SUMMARY$line"$'\n'
}

gpu_state before
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())" >>"$LOG" 2>&1 \
  || { echo "gpu_suite: no CUDA device visible to torch; see $LOG" >&2; exit 2; }

step tests "$T_TESTS" "$PY" -m pytest tests -q -m "not slow" -p no:cacheprovider
step kernels "$T_KERNELS" "$PY" -m audiox_engine.benchmarks bench --suite kernels --out "$OUT/kernels.json"
step dit "$T_DIT" "$PY" -m audiox_engine.benchmarks bench --suite dit --backends "$GPU_BACKENDS" --out "$OUT/dit.json"
step headline "$T_HEADLINE" "$PY" -m audiox_engine.benchmarks bench --suite headline --backends "$GPU_BACKENDS" --out "$OUT/headline.json"

results=()
for f in kernels dit headline; do
  [ -s "$OUT/$f.json" ] && results+=("$OUT/$f.json")
done
step report "$T_REPORT" "$PY" -m audiox_engine.benchmarks bench report ${results[@]+"${results[@]}"} \
  --md "$OUT/BENCHMARKS.generated.md" --plots "$OUT/plots"
gpu_state after

echo "== summary ($(($(date +%s) - START))s total) ==" >>"$LOG"
printf '%s' "$SUMMARY" | tee -a "$LOG"
echo "total $(($(date +%s) - START))s; results in $OUT"
