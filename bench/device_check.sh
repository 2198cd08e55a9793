#!/usr/bin/env bash
# Device check for the GPU machine (docs/building.md): build the extension in place, run the GPU tests,
# compute-sanitizer (memcheck, racecheck) on small fused_unmask and block_attention workloads, the
# benchmarks that exist, and the CPU suite; write every log, the JSON results and summary.md into RESULTS_DIR.
#
#   bench/device_check.sh [RESULTS_DIR]        (default: bench/results/)
#
# The machine has no network (pip is offline): nothing is installed, the extension is built with
# `setup.py build_ext --inplace`. The whole run stays within DLLM_CHECK_BUDGET_S seconds (default
# 470, about 8 minutes): every stage has its own time limit, capped by what is left, and stages are
# ordered by value so that a slow machine loses the least useful ones. A failing stage is recorded
# and the script goes on; it always writes the summary and exits 0 (read summary.md / stages.tsv).
set -u

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
RESULTS_DIR="${1:-bench/results}"
mkdir -p "$RESULTS_DIR" || exit 1
RESULTS_DIR="$(cd "$RESULTS_DIR" && pwd)"
BUDGET_S="${DLLM_CHECK_BUDGET_S:-470}"
START_S=$(date +%s)
STAGES="$RESULTS_DIR/stages.tsv"
printf 'stage\tstatus\trc\tseconds\tlast_line\n' > "$STAGES"

export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # bench scripts import dllm_kernels from here
export DLLM_RESULTS_DIR="$RESULTS_DIR"                # bench/common.py writes its JSON lines here
export DLLM_BENCH_DEVICE=cuda
[ -d /usr/local/cuda/bin ] && export PATH="$PATH:/usr/local/cuda/bin"

elapsed() { echo $(( $(date +%s) - START_S )); }

record() {  # record NAME STATUS RC SECONDS NOTE
  printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$(printf '%s' "$5" | tr '\t\n' '  ' | cut -c1-200)" >> "$STAGES"
  echo "=== [$1] $2 (rc $3, $4 s)"
}

# run_stage NAME LIMIT_S CMD... : CMD (an executable, not a shell function) with a time limit,
# capped by the budget left; output in RESULTS_DIR/NAME.log.
run_stage() {
  local name="$1" limit="$2"
  shift 2
  local left=$(( BUDGET_S - $(elapsed) ))
  if (( left < 25 )); then
    record "$name" SKIP - 0 "time budget spent"
    return 0
  fi
  (( limit > left )) && limit=$left
  local log="$RESULTS_DIR/$name.log" t0 rc status
  echo "=== [$name] limit ${limit}s: $*"
  echo "\$ $*" > "$log"
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >> "$log" 2>&1
  rc=$?
  status=PASS
  if (( rc == 124 || rc == 137 )); then status=TIMEOUT; elif (( rc != 0 )); then status=FAIL; fi
  record "$name" "$status" "$rc" "$(( $(date +%s) - t0 ))" "$(grep -v '^\s*$' "$log" | tail -n 1)"
  return 0
}

# ---- environment ------------------------------------------------------------------------------------

PY=""
for cand in "${PYTHON:-}" python3 python; do
  [ -n "$cand" ] || continue
  if command -v "$cand" > /dev/null 2>&1 && "$cand" -c "import torch" > /dev/null 2>&1; then
    PY="$(command -v "$cand")"
    break
  fi
done
GPU_NAME="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)"
GPU_NAME="${GPU_NAME:-unknown GPU}"
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "git: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" status --porcelain 2>/dev/null | grep -q . && echo ' (dirty)')"
  echo "gpu: $GPU_NAME"
  echo "python: ${PY:-none with torch}"
  echo "nvcc: $(nvcc --version 2>/dev/null | tail -n 1)"
  echo "cores: $(nproc)"
  nvidia-smi 2>&1
} > "$RESULTS_DIR/environment.txt"

if [ -z "$PY" ]; then
  record environment FAIL 1 0 "no python with torch found"
  PY=python3
else
  # The torch here must be a CUDA build that sees the GPU; pytest is needed for the test stages.
  run_stage environment 60 "$PY" -c "
import torch, sys
print('torch', torch.__version__, 'cuda', torch.version.cuda)
assert torch.version.cuda, 'torch is a CPU build'
assert torch.cuda.is_available(), 'torch sees no GPU'
print('device', torch.cuda.get_device_name(), 'capability', torch.cuda.get_device_capability())
try:
    import triton; print('triton', triton.__version__)
except ImportError:
    print('triton: not installed')
import pytest; print('pytest', pytest.__version__)
"
fi
cat "$RESULTS_DIR/environment.log" >> "$RESULTS_DIR/environment.txt" 2>/dev/null

# ---- build ------------------------------------------------------------------------------------------

# Never test a library built on another machine (only on a GPU machine: a CPU checkout keeps its own).
nvidia-smi -L > /dev/null 2>&1 && rm -f "$ROOT"/dllm_kernels/_C*.so
run_stage build 240 env DLLM_BUILD_CUDA=1 DLLM_CUDA_ARCHS=90a MAX_JOBS="$(nproc)" \
  "$PY" setup.py build_ext --inplace
run_stage import 60 "$PY" -c "
import torch, dllm_kernels
from dllm_kernels import _native
assert _native.HAS_CUDA_KERNELS, getattr(_native, 'CUDA_KERNELS_ERROR', '?')
print('dllm_kernels loaded with CUDA kernels')
"

# ---- GPU tests: fused_unmask's first (a time-out of the rest must not lose them) ----------------------

run_stage pytest_cuda_unmask 150 "$PY" -m pytest -m cuda -q -rfE -p no:cacheprovider --durations=10 \
  --junitxml="$RESULTS_DIR/pytest_cuda_unmask.xml" tests/test_fused_unmask_cuda.py

# ---- compute-sanitizer on a small workload -------------------------------------------------------------

SAN=""
for cand in compute-sanitizer /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda/compute-sanitizer/compute-sanitizer; do
  if command -v "$cand" > /dev/null 2>&1; then SAN="$(command -v "$cand")"; break; fi
done
if [ -z "$SAN" ]; then
  record memcheck SKIP - 0 "compute-sanitizer not found"
  record racecheck SKIP - 0 "compute-sanitizer not found"
else
  # Without the caching allocator every tensor is its own allocation: out-of-bounds at its edge.
  run_stage memcheck 100 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SAN" --tool memcheck \
    --error-exitcode 1 --print-limit 50 "$PY" bench/sanitize_fused_unmask.py
fi

# ---- benchmarks ------------------------------------------------------------------------------------------

run_bench() {  # run_bench NAME LIMIT_S
  local script="bench/$1.py"
  if [ ! -f "$script" ]; then
    record "$1" SKIP - 0 "$script not present"
    return 0
  fi
  # Pass the options a script has: the device, where its JSON goes, and a time budget that ends
  # it cleanly (with its results written) before the stage's hard limit.
  local args=() limit="$2" left=$(( BUDGET_S - $(elapsed) ))
  (( limit > left )) && limit=$left
  grep -q -- '--device' "$script" && args+=(--device cuda)
  grep -q -- '--results-dir' "$script" && args+=(--results-dir "$RESULTS_DIR")
  grep -q -- '--budget-s' "$script" && args+=(--budget-s "$(( limit > 40 ? limit - 20 : 20 ))")
  run_stage "$1" "$2" "$PY" "$script" "${args[@]+"${args[@]}"}"
}
run_stage pytest_cuda_rest 130 "$PY" -m pytest -m cuda -q -rfE --continue-on-collection-errors \
  -p no:cacheprovider --durations=10 --junitxml="$RESULTS_DIR/pytest_cuda_rest.xml" \
  --ignore=tests/test_fused_unmask_cuda.py tests
run_bench bench_fused_unmask 90
# The block-length sweep on every GPU backend (the long-row ranking paths past 2,048 and 4,096).
run_stage bench_fused_unmask_block_sweep 90 "$PY" bench/bench_fused_unmask.py --device cuda --block-sweep --repeats 20

if [ -n "$SAN" ]; then
  run_stage racecheck 90 "$SAN" --tool racecheck --error-exitcode 1 --print-limit 50 \
    "$PY" bench/sanitize_fused_unmask.py
fi
run_bench bench_block_attention 70
run_bench bench_decode 60
run_bench bench_speculative 60

# The Triton block_attention kernels under the sanitizer, after the benchmarks (lower value).
if [ -n "$SAN" ]; then
  run_stage memcheck_attention 80 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SAN" --tool memcheck \
    --error-exitcode 1 --print-limit 50 "$PY" bench/sanitize_block_attention.py
  run_stage racecheck_attention 60 "$SAN" --tool racecheck --error-exitcode 1 --print-limit 50 \
    "$PY" bench/sanitize_block_attention.py
fi

# ---- the CPU suite, last (it also runs on every CPU machine) -----------------------------------------------

run_stage pytest_cpu 150 "$PY" -m pytest -m "not cuda and not slow" -q -rfE --continue-on-collection-errors \
  -p no:cacheprovider --junitxml="$RESULTS_DIR/pytest_cpu.xml" tests

# ---- summary ----------------------------------------------------------------------------------------------

SUMMARY="$RESULTS_DIR/summary.md"
{
  echo "# Device check: $GPU_NAME"
  echo
  grep -E '^(date|git|gpu|python|nvcc|cores):' "$RESULTS_DIR/environment.txt" | sed 's/^/- /'
  grep -E '^(torch|triton|pytest) ' "$RESULTS_DIR/environment.log" 2>/dev/null | sed 's/^/- /'
  echo "- total: $(elapsed) s of a ${BUDGET_S} s budget"
  echo
  echo "| stage | status | rc | seconds | last line of the log |"
  echo "| --- | --- | --- | --- | --- |"
  tail -n +2 "$STAGES" | while IFS=$'\t' read -r name status rc secs last; do
    echo "| $name | $status | $rc | $secs | ${last//|/\\|} |"
  done
  for t in pytest_cuda_unmask pytest_cuda_rest pytest_cpu; do
    [ -f "$RESULTS_DIR/$t.log" ] || continue
    echo
    echo "**$t**: $(grep -E '[0-9]+ (passed|failed|error)' "$RESULTS_DIR/$t.log" | tail -n 1)"
    grep -E '^(FAILED|ERROR) ' "$RESULTS_DIR/$t.log" | head -n 30 | sed 's/^/    /'
  done
  for t in memcheck racecheck; do
    [ -f "$RESULTS_DIR/$t.log" ] || continue
    echo
    echo "**$t**: $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$RESULTS_DIR/$t.log" | tail -n 1)"
  done
  echo
  echo "JSON results:"
  found=0
  for f in "$RESULTS_DIR"/*.jsonl; do
    [ -f "$f" ] || continue
    found=1
    echo "- $(basename "$f"): $(wc -l < "$f") lines"
  done
  (( found )) || echo "- none"
  # The end of every stage that did not pass, to diagnose without a second run.
  tail -n +2 "$STAGES" | while IFS=$'\t' read -r name status rc secs last; do
    if [ "$status" = FAIL ] || [ "$status" = TIMEOUT ]; then
      echo
      echo "<details><summary>$name: $status (last 25 lines of $name.log)</summary>"
      echo
      echo '```'
      tail -n 25 "$RESULTS_DIR/$name.log" 2>/dev/null
      echo '```'
      echo "</details>"
    fi
  done
} > "$SUMMARY"
# The stage table as JSON too (for scripts), when a python is there to write it.
"$PY" - "$STAGES" "$RESULTS_DIR/device_check.json" "$GPU_NAME" > /dev/null 2>&1 <<'EOF' || true
import csv, json, sys
with open(sys.argv[1]) as f:
    stages = list(csv.DictReader(f, delimiter="\t"))
with open(sys.argv[2], "w") as f:
    json.dump({"gpu": sys.argv[3], "stages": stages}, f, indent=1)
EOF
cat "$SUMMARY"
exit 0
