// The per-request numeric parameters of fused_unmask: one column each of the float64 parameter
// pack [B, kUnmaskParams] that the op reads on every backend (C++, CUDA, Triton, reference).
// Written once here; Python reads the names and defaults through
// torch.ops.dllm.fused_unmask_param_columns. Integers (steps, window, block_length) travel as
// float64, exact below 2^53. The rules' columns are select's (select_params.h), at the same
// indices, so one loader serves both packs.
#pragma once
#include <cstdint>

#include "policy.h"
#include "select_params.h"

namespace dllm {

// X(name, default, range kind (param_kind.h)): the column order of the pack. `steps` (the top-k
// schedule's steps per block) stands where select's pack has the caller's `k`; the block
// scheduler's columns follow the rules'.
#define DLLM_UNMASK_PARAMS(X)           \
  X(steps, 1.0, whole1)                 \
  DLLM_RULE_PARAMS(X)                   \
  X(block_length, 32.0, whole1)         \
  X(block_delta, 0.3, unit)             \
  X(block_window_fraction, 0.25, unit)

enum UnmaskParam : int {
#define DLLM_X(name, dflt, kind) kUnm_##name,
  DLLM_UNMASK_PARAMS(DLLM_X)
#undef DLLM_X
  kUnmaskParams
};

// The column table the checker walks (csrc/param_pack_check.h) and the column-query op returns.
inline constexpr ParamColumn kUnmaskColumns[] = {
#define DLLM_X(name, dflt, kind) {#name, dflt, kKind_##kind},
    DLLM_UNMASK_PARAMS(DLLM_X)
#undef DLLM_X
};

#define DLLM_X(name, dflt, kind)        \
  static_assert(static_cast<int>(kUnm_##name) == static_cast<int>(kSel_##name), "rule columns differ");
DLLM_RULE_PARAMS(DLLM_X)
#undef DLLM_X

// The pack's defaults as one row, for a call without `params`.
inline void default_unmask_row(double* row) {
#define DLLM_X(name, dflt, kind) row[kUnm_##name] = dflt;
  DLLM_UNMASK_PARAMS(DLLM_X)
#undef DLLM_X
}

// A count column as int64, at least `lo` (NaN too): the op checks the pack on CPU only, and an
// unchecked device pack must still never make a block or a schedule negative.
DLLM_HD int64_t pack_count(double v, int64_t lo) {
  return v >= static_cast<double>(lo) ? (v < 9.0e15 ? static_cast<int64_t>(v) : static_cast<int64_t>(9.0e15)) : lo;
}

// The shared PolicyParams (mode switches, lists, filter) with one sequence's row applied.
DLLM_HD PolicyParams with_unmask_row(PolicyParams pp, const double* row) {
  pp = with_select_row(pp, load_select_row(row));
  pp.steps = pack_count(row[kUnm_steps], 1);
  pp.window = pack_count(row[kUnm_window], 0);
  pp.block_length = pack_count(row[kUnm_block_length], 1);
  pp.block_delta = static_cast<float>(row[kUnm_block_delta]);
  pp.block_window_fraction = static_cast<float>(row[kUnm_block_window_fraction]);
  return pp;
}

DLLM_HD float unmask_temperature(const double* row) { return static_cast<float>(row[kUnm_temperature]); }

}  // namespace dllm
