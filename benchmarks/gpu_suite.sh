#!/usr/bin/env bash
# One prepared run on a GPU machine: preflight, GPU parity tests, benchmarks, report.
#
#   benchmarks/gpu_suite.sh OUT             # the GPU run: full-size model, at most 7 minutes in all
#   benchmarks/gpu_suite.sh --dry-run OUT   # the same steps on the CPU: tiny preset, smoke mode
#
# Runs from an uninstalled copy of the repository: it changes to the repository root, where
# `python3 -m audiox_engine` resolves to this checkout (audiox_engine/__init__.py extends its
# __path__ to the sibling folders; the preflight checks it). It installs nothing, and it
# never changes clocks, power limits or any other GPU setting: it only reads them, with
# `nvidia-smi --query-gpu`, before and after.
#
# Steps, in order, each with its own time limit (seconds), all within T_TOTAL (420):
#   preflight  every import the run needs, the C compiler Triton needs, one trivial Triton
#              kernel; stops the run within seconds, with the list of what is missing
#   tests      GPU parity tests: tests/kernels, tests/test_engine*.py, tests/test_quant*.py
#              (the dry run: a few CPU-safe ones, kernels in Triton's interpreter)
#   kernels    measured ceilings, then every kernel benchmark (benchmarks/kernels/)
#   dit        one DiT forward: eager bf16, engine bf16 / FP8 / INT8, torch.compile (default,
#              max-autotune), eager fp32 (the release's precision)
#   headline   text to audio, teacher N = 250/100/50/25 and Turbo 4, eager, engine, peers
#   report     the tables (with the engine's ratios to eager and torch.compile) and plots
# A benchmark step stops starting rows when its time budget is spent (the rows it did not
# start are listed with that reason); the harness saves every row as soon as it is
# measured, so a step cut by its limit still leaves every finished row on disk.
#
# OUT receives at most 8 files, none deeper than OUT/plots/:
#   gpu_suite.log                        every step's output, GPU state before and after, summary
#   kernels.json dit.json headline.json  result files (benchmarks/results.py schema)
#   BENCHMARKS.generated.md              the tables, from benchmarks/report.py
#   plots/*.png                          headline latency vs steps and speedup, kernel roofline
#
# Environment: PYTHON (default python3); T_TOTAL T_PREFLIGHT T_TESTS T_KERNELS T_DIT
# T_HEADLINE T_REPORT (seconds); TESTS (pytest arguments); DIT_BACKENDS, HEADLINE_BACKENDS,
# TEACHER_STEPS (comma-separated, as `bench --backends` / `--teacher-steps`).
set -u -o pipefail

DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
if [ $# -ne 1 ] || [ -z "$1" ]; then
  echo "usage: benchmarks/gpu_suite.sh [--dry-run] OUT" >&2
  exit 2
fi
command -v timeout >/dev/null || { echo "gpu_suite: needs coreutils timeout" >&2; exit 2; }
mkdir -p "$1/plots" || exit 2
OUT=$(cd "$1" && pwd)
cd "$(dirname "$0")/.." || exit 2
PY=${PYTHON:-python3}
command -v "$PY" >/dev/null || { echo "gpu_suite: no $PY (set PYTHON to the interpreter to use)" >&2; exit 2; }

if [ "$DRY" = 1 ]; then
  export TRITON_INTERPRET=1  # no GPU: the Triton kernels run in Triton's interpreter
  MODE=(--smoke --device cpu --threads "${THREADS:-1}")  # 1 thread: fastest on a busy 2-core machine
  : "${T_TOTAL:=175}" "${T_PREFLIGHT:=25}" "${T_TESTS:=35}" "${T_KERNELS:=20}" "${T_DIT:=30}"
  : "${T_HEADLINE:=40}" "${T_REPORT:=15}"
  : "${TESTS:=tests/kernels/test_snake_beta.py tests/kernels/test_dispatch.py tests/test_engine.py::test_forward_parity_triton}"
  # torch.compile stays out by default: Inductor's cold CPU compile of the tiny DiT alone takes
  # 35-60 s on two cores (add `compile` to DIT_BACKENDS to run it); eager-fp32 shows its skip.
  : "${DIT_BACKENDS:=eager,engine-fp32,engine-bf16,eager-fp32}" "${HEADLINE_BACKENDS:=eager,engine-fp32}"
  : "${TEACHER_STEPS:=250,100,50,25}"
else
  unset TRITON_INTERPRET  # the parity tests and benchmarks must run the compiled kernels
  MODE=(--device cuda --warmup 1 --budget-s 2)
  : "${T_TOTAL:=420}" "${T_PREFLIGHT:=25}" "${T_TESTS:=90}" "${T_KERNELS:=50}" "${T_DIT:=95}"
  : "${T_HEADLINE:=135}" "${T_REPORT:=20}"
  : "${TESTS:=tests/kernels $(echo tests/test_engine*.py tests/test_quant*.py)}"
  : "${DIT_BACKENDS:=eager,engine-bf16,engine-fp8,engine-int8,compile,eager-fp32,compile-max-autotune}"
  : "${HEADLINE_BACKENDS:=eager,engine-bf16,compile,engine-fp8,engine-int8,eager-fp32}"
  : "${TEACHER_STEPS:=250,100,50,25}"
fi
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1  # rows are logged as they come; no progress bars in the log

LOG="$OUT/gpu_suite.log"
: >"$LOG"
START=$(date +%s)
DEADLINE=$((START + T_TOTAL))
SUMMARY=""
ALL_OK=1

log() { echo "$*" | tee -a "$LOG"; }

gpu_state() {
  echo "== GPU state ($1): nvidia-smi --query-gpu (read only) ==" >>"$LOG"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,pci.bus_id,driver_version,memory.total,memory.used,utilization.gpu,clocks.sm,clocks.max.sm,clocks.mem,power.draw,power.limit,temperature.gpu,clocks_event_reasons.active \
      --format=csv >>"$LOG" 2>&1 || echo "nvidia-smi failed" >>"$LOG"
  else
    echo "nvidia-smi: not found$([ "$DRY" = 1 ] && echo ' (CPU dry run)')" >>"$LOG"
  fi
}

budget() {  # budget WANTED RESERVE: WANTED seconds, cut to what is left before RESERVE seconds from the end
  local left=$((DEADLINE - $(date +%s) - $2))
  echo $(($1 < left ? $1 : left))
}

record() {  # record NAME STATUS RC TOOK BUDGET
  local line
  line=$(printf '%-10s %-10s rc=%-3s %4ss of %4ss' "$1" "$2" "$3" "$4" "$5")
  SUMMARY="$SUMMARY$line"$'\n'
  [ "$2" = ok ] || ALL_OK=0
  log "== $line =="
}

step() {  # step NAME BUDGET_S COMMAND...
  local name=$1 limit=$2 t0 rc status
  shift 2
  if [ "$limit" -lt 5 ]; then
    record "$name" not-run - 0 "$limit"
    return
  fi
  t0=$(date +%s)
  log "== $name (limit ${limit}s): $* =="
  timeout --signal=INT --kill-after=5 "$limit" "$@" >>"$LOG" 2>&1
  rc=$?
  case $rc in
    0) status=ok ;;
    124 | 130 | 137) status=timed-out ;;  # timeout's code, SIGINT handled by the harness, killed
    *) status=failed ;;
  esac
  record "$name" "$status" "$rc" "$(($(date +%s) - t0))" "$limit"
}

bench_step() {  # bench_step NAME LIMIT BENCH_ARGS...: the harness stops starting rows well before the limit
  local name=$1 limit=$2  # the margin: python's imports, and the last row started, which runs to its end
  shift 2
  step "$name" "$limit" "$PY" -m audiox_engine.benchmarks bench "$@" "${MODE[@]}" \
    --time-budget-s "$((limit > 40 ? limit - 20 : (limit > 15 ? limit - 10 : 5)))" --out "$OUT/$name.json"
}

log "gpu_suite: $([ "$DRY" = 1 ] && echo 'CPU dry run' || echo 'GPU run'), $PY, checkout $(pwd), out $OUT, ${T_TOTAL}s in all"
gpu_state before

RESERVE=$((T_REPORT + 5))
step preflight "$(budget "$T_PREFLIGHT" "$RESERVE")" "$PY" -m audiox_engine.benchmarks.preflight \
  $([ "$DRY" = 1 ] && echo --dry-run)
if [ "$ALL_OK" = 0 ]; then
  grep -A50 '^preflight FAILED' "$LOG"
  log "gpu_suite: the preflight did not pass, so nothing else ran; all steps ok: no"
  exit 2
fi

# shellcheck disable=SC2086  # TESTS is a list of pytest arguments
step tests "$(budget "$T_TESTS" "$RESERVE")" "$PY" -m pytest -q -p no:cacheprovider -m "not slow" -rfE \
  --durations=10 $TESTS
bench_step kernels "$(budget "$T_KERNELS" "$RESERVE")" --suite kernels
bench_step dit "$(budget "$T_DIT" "$RESERVE")" --suite dit --backends "$DIT_BACKENDS"
bench_step headline "$(budget "$T_HEADLINE" "$RESERVE")" --suite headline --backends "$HEADLINE_BACKENDS" \
  --teacher-steps "$TEACHER_STEPS"

results=()
for f in kernels dit headline; do
  [ -s "$OUT/$f.json" ] && results+=("$OUT/$f.json")
done
step report "$(budget "$T_REPORT" 7)" "$PY" -m audiox_engine.benchmarks bench report ${results[@]+"${results[@]}"} \
  --md "$OUT/BENCHMARKS.generated.md" --plots "$OUT/plots"
gpu_state after
find "$OUT" -name '.*.tmp' -delete  # a result file's temporary twin, left by a step killed mid-write

TOOK=$(($(date +%s) - START))
{
  echo "== summary ($TOOK s in all, limit $T_TOTAL s) =="
  printf '%s' "$SUMMARY"
  echo "all steps ok: $([ "$ALL_OK" = 1 ] && echo yes || echo no)"
} | tee -a "$LOG"
echo "results in $OUT"
[ "$ALL_OK" = 1 ]
