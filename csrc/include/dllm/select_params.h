// The per-request numeric parameters of the selection rules: one column each of the float64
// parameter pack [B, kSelectParams] that `select` (and the Python wrappers) pass to every backend.
// Written once here; Python reads the names and defaults through torch.ops.dllm.select_param_columns.
// Integers (k, window) travel as float64, exact below 2^53.
#pragma once
#include <cstdint>

#include "param_kind.h"
#include "policy.h"

namespace dllm {

// X(name, default, range kind (param_kind.h)): the rules' columns, shared by select's pack and
// fused_unmask's (fused_unmask_params.h), where they sit at the same indices: 1 .. 7, after the
// count column.
#define DLLM_RULE_PARAMS(X)             \
  X(threshold, 0.9, unit)               \
  X(factor, 1.0, finite0)               \
  X(anchor_threshold, 0.9, unit)        \
  X(relaxed_threshold, 0.75, unit)      \
  X(window, 4.0, whole0)                \
  X(temperature, 0.0, finite0)          \
  X(filter_threshold, 0.96, unit)

// The column order of select's pack: the caller's top-k count, then the rules' columns.
#define DLLM_SELECT_PARAMS(X)           \
  X(k, 1.0, whole0)                     \
  DLLM_RULE_PARAMS(X)

enum SelectParam : int {
#define DLLM_X(name, dflt, kind) kSel_##name,
  DLLM_SELECT_PARAMS(DLLM_X)
#undef DLLM_X
  kSelectParams
};

// The column table the checker walks (csrc/param_pack_check.h) and the column-query op returns.
inline constexpr ParamColumn kSelectColumns[] = {
#define DLLM_X(name, dflt, kind) {#name, dflt, kKind_##kind},
    DLLM_SELECT_PARAMS(DLLM_X)
#undef DLLM_X
};

// Values of one sequence's row of the pack, with the types the rules compare in.
struct SelectRow {
  int64_t k;
  float threshold, factor, anchor_threshold, relaxed_threshold;
  int64_t window;
  float temperature, filter_threshold;
};

DLLM_HD SelectRow load_select_row(const double* row) {
  SelectRow r;
  r.k = static_cast<int64_t>(row[kSel_k]);
  r.threshold = static_cast<float>(row[kSel_threshold]);
  r.factor = static_cast<float>(row[kSel_factor]);
  r.anchor_threshold = static_cast<float>(row[kSel_anchor_threshold]);
  r.relaxed_threshold = static_cast<float>(row[kSel_relaxed_threshold]);
  r.window = static_cast<int64_t>(row[kSel_window]);
  r.temperature = static_cast<float>(row[kSel_temperature]);
  r.filter_threshold = static_cast<float>(row[kSel_filter_threshold]);
  return r;
}

// The shared PolicyParams with one sequence's row applied (the rule's fields only; the
// temperature is the statistics pass's).
DLLM_HD PolicyParams with_select_row(PolicyParams pp, const SelectRow& r) {
  pp.threshold = r.threshold;
  pp.factor = r.factor;
  pp.anchor_threshold = r.anchor_threshold;
  pp.relaxed_threshold = r.relaxed_threshold;
  pp.window = r.window;
  pp.filter_threshold = r.filter_threshold;
  return pp;
}

}  // namespace dllm
