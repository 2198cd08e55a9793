#!/usr/bin/env bash
# AddressSanitizer + UndefinedBehaviorSanitizer run of the C++ CPU path.
#
#   scripts/sanitize_cpu.sh [BUILD_DIR]          (default: build/sanitize; never the tree's .so)
#
# 1. Builds dllm_kernels._C with -fsanitize=address,undefined (-fno-sanitize-recover=all, so any
#    UB report aborts; -fno-wrapv, so signed overflow is checked although Python's CFLAGS carry
#    -fwrapv; _GLIBCXX_ASSERTIONS for std containers) into BUILD_DIR, incrementally (ninja).
# 2. Canary: a planted heap overflow and a planted signed overflow, built with the same flags and
#    run with the same options, must each be reported and fail. A sanitizer that reports nothing
#    because it is not active cannot pass this script.
# 3. scripts/sanitize_row_stats.cpp: every ISA build of the row kernel (base, AVX2, AVX-512; the op
#    itself only ever runs the widest the CPU has) on exactly-sized heap rows, against each other.
# 4. The op tests (pytest, --capture=sys so that a native report reaches the log even when it aborts
#    the process) in a copy of the package whose _C is the sanitized build, with libasan
#    preloaded (python itself is not instrumented) and ASAN_OPTIONS=detect_leaks=0.
#
# Exits non-zero on any finding (a sanitizer report anywhere in the logs, or a failing test).
# Env: DLLM_SANITIZE_EXAMPLES (hypothesis examples per property test, default 500),
#      DLLM_SANITIZE_PYTEST_ARGS (extra pytest arguments), PYTHON (default .venv/bin/python).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DIR="${1:-build/sanitize}"
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
case "$DIR" in "$ROOT"/dllm_kernels*) echo "sanitize_cpu: BUILD_DIR must not be inside dllm_kernels/" >&2; exit 2;; esac
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
CXX="${CXX:-g++}"
LOG="$DIR/logs"
mkdir -p "$LOG"
T0=$(date +%s)
say() { echo "[sanitize_cpu $(( $(date +%s) - T0 ))s] $*"; }

SAN_FLAGS="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -fno-wrapv -g -D_GLIBCXX_ASSERTIONS"
LIBASAN="$("$CXX" -print-file-name=libasan.so)"
[ -f "$LIBASAN" ] || { echo "sanitize_cpu: libasan.so not found for $CXX" >&2; exit 2; }
LIBASAN="$(readlink -f "$LIBASAN")"
# libstdc++ preloaded too: python does not link it, and ASan's __cxa_throw interceptor must find
# it at start-up (else "CHECK failed: real___cxa_throw != 0" at torch's first C++ exception).
LIBSTDCXX="$(readlink -f "$("$CXX" -print-file-name=libstdc++.so.6)")"
PRELOAD="$LIBASAN:$LIBSTDCXX"
# detect_leaks=0: python and torch are not instrumented and keep allocations alive until exit.
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:halt_on_error=1:exitcode=86:strict_string_checks=1:detect_stack_use_after_return=1:check_initialization_order=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:exitcode=87"

# Any report in a log is a finding, whatever the exit status says.
findings() { grep -E -l "ERROR: AddressSanitizer|AddressSanitizer: CHECK failed|runtime error:|SUMMARY: (Address|UndefinedBehavior)Sanitizer" "$@" 2>/dev/null || true; }

# ---- 1. build ------------------------------------------------------------------------------------
say "building dllm_kernels._C with $SAN_FLAGS into $DIR"
CFLAGS="$SAN_FLAGS" CXXFLAGS="$SAN_FLAGS" LDFLAGS="-fsanitize=address,undefined" \
  DLLM_BUILD_CUDA=0 MAX_JOBS="${MAX_JOBS:-2}" \
  "$PY" setup.py -q build_ext --build-lib "$DIR/lib" --build-temp "$DIR/temp" > "$LOG/build.log" 2>&1 \
  || { tail -n 40 "$LOG/build.log"; echo "sanitize_cpu: build failed" >&2; exit 3; }
SO="$(ls "$DIR"/lib/dllm_kernels/_C.*.so | head -n 1)"
nm -D "$SO" > "$DIR/symbols.txt"  # (not piped into grep -q: with pipefail, nm's SIGPIPE would fail it)
grep -q '__asan_report' "$DIR/symbols.txt" || { echo "sanitize_cpu: $SO is not instrumented by ASan" >&2; exit 3; }
grep -q '__ubsan_handle' "$DIR/symbols.txt" || { echo "sanitize_cpu: $SO is not instrumented by UBSan" >&2; exit 3; }

# A copy of the package that loads the sanitized _C (and no _C_cuda), the Python files as in the tree.
PKG="$DIR/pkg"
rm -rf "$PKG"
mkdir -p "$PKG"
(cd "$ROOT" && find dllm_kernels -name '*.py' -not -path '*/__pycache__/*') | while read -r f; do
  mkdir -p "$PKG/$(dirname "$f")"
  cp "$ROOT/$f" "$PKG/$f"
done
cp "$SO" "$PKG/dllm_kernels/"
ln -s "$ROOT/triton_kernels" "$PKG/triton_kernels"

# ---- 2. canary -------------------------------------------------------------------------------------
say "canary: a planted heap overflow and signed overflow must be reported"
cat > "$DIR/canary.cpp" <<'EOF'
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
int main(int argc, char** argv) {
  volatile int n = argc + 3;
  if (argv[1][0] == 'a') {           // heap buffer overflow by one element
    int* p = static_cast<int*>(malloc(sizeof(int) * 4));
    memset(p, 0, sizeof(int) * 4);
    int v = p[n];
    free(p);
    return v;
  }
  int big = INT_MAX - 2;             // signed integer overflow
  int r = big + n;
  printf("%d\n", r);
  return 0;
}
EOF
"$CXX" $SAN_FLAGS -O1 "$DIR/canary.cpp" -o "$DIR/canary"
for kind in asan ubsan; do
  if "$DIR/canary" "${kind:0:1}" > "$LOG/canary_$kind.log" 2>&1; then
    echo "sanitize_cpu: the $kind canary was not caught: the sanitizer is not working" >&2; exit 4
  fi
  [ -n "$(findings "$LOG/canary_$kind.log")" ] || { echo "sanitize_cpu: no $kind report for the canary" >&2; exit 4; }
done

# ---- 3. native row kernel, every ISA ------------------------------------------------------------------
say "row_stats: base / AVX2 / AVX-512 builds on exactly-sized rows"
HARNESS_OBJS=()
for isa in base avx2 avx512; do
  "$CXX" $SAN_FLAGS -O2 -std=c++20 -fno-math-errno -c "csrc/cpu/row_stats_$isa.cpp" -o "$DIR/row_stats_$isa.o"
  HARNESS_OBJS+=("$DIR/row_stats_$isa.o")
done
"$CXX" $SAN_FLAGS -O1 -std=c++20 -I csrc scripts/sanitize_row_stats.cpp "${HARNESS_OBJS[@]}" -o "$DIR/row_stats_harness"
"$DIR/row_stats_harness" > "$LOG/row_stats.log" 2>&1 || { tail -n 40 "$LOG/row_stats.log"; echo "sanitize_cpu: row_stats harness failed" >&2; exit 5; }
tail -n 1 "$LOG/row_stats.log"

# ---- 4. the op tests, python with libasan preloaded ------------------------------------------------------
say "op tests under ASan + UBSan"
export DLLM_PROPERTY_EXAMPLES="${DLLM_SANITIZE_EXAMPLES:-500}"
export DLLM_SANITIZED_BUILD="$SO"   # test_sanitizers.py / the check below: which _C is loaded
export TRITON_INTERPRET=1
set +e
(cd "$PKG" && LD_PRELOAD="$PRELOAD" "$PY" -c "
import os, dllm_kernels._C as c
assert os.path.realpath(c.__file__) == os.path.realpath(os.path.join('$PKG', 'dllm_kernels', os.path.basename('$SO'))), c.__file__
print('loaded', c.__file__)") > "$LOG/load.log" 2>&1
rc_load=$?
(cd "$PKG" && LD_PRELOAD="$PRELOAD" "$PY" -m pytest -q -x -p no:cacheprovider -rfE --capture=sys \
  "$ROOT/tests/test_fused_unmask_cpu.py" "$ROOT/tests/test_fused_unmask_edges.py" \
  "$ROOT/tests/test_fused_unmask_bad_inputs.py" "$ROOT/tests/test_bad_inputs_matrix.py" \
  "$ROOT/tests/test_block_attention.py" "$ROOT/tests/test_properties.py" "$ROOT/tests/test_stability.py" \
  -k "not triton and not memory and not cuda" ${DLLM_SANITIZE_PYTEST_ARGS:-}) > "$LOG/pytest.log" 2>&1
rc_tests=$?
set -e
cat "$LOG/load.log"
tail -n 3 "$LOG/pytest.log"
bad="$(findings "$LOG"/build.log "$LOG"/load.log "$LOG"/row_stats.log "$LOG"/pytest.log)"
say "done: load rc $rc_load, pytest rc $rc_tests, logs with sanitizer reports: ${bad:-none}"
if [ -n "$bad" ]; then
  grep -E -h -A 12 "ERROR: AddressSanitizer|CHECK failed|runtime error:" $bad | head -n 60
  echo "sanitize_cpu: SANITIZER FINDINGS (reports in: $bad)"
  grep -B 30 -E "^(FAILED|ERROR) |Fatal Python error" "$LOG/pytest.log" | grep -E "^(FAILED|ERROR) |::" | tail -n 5
  exit 1
fi
(( rc_load == 0 && rc_tests == 0 )) || { echo "sanitize_cpu: failing op tests (no sanitizer report): see $LOG/pytest.log"; exit 1; }
echo "sanitize_cpu: no sanitizer findings"
