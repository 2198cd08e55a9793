// The range a parameter pack's column must lie in, written next to the column's name and default
// in the packs' X-macro lists (select_params.h, fused_unmask_params.h). One checker walks a pack's
// column table (csrc/param_pack_check.h); Python reads each column's kind by name through the
// column-query ops and checks the Triton launchers' packs the same way (triton_checks.py).
#pragma once

namespace dllm {

// whole1, whole0: a whole number >= 1, >= 0 (below 9e15, exact in float64); finite0: finite and
// >= 0; unit: in [0, 1].
#define DLLM_PARAM_KINDS(X) X(whole1) X(whole0) X(finite0) X(unit)

enum ParamKind : int {
#define DLLM_X(kind) kKind_##kind,
  DLLM_PARAM_KINDS(DLLM_X)
#undef DLLM_X
};

struct ParamColumn {
  const char* name;
  double dflt;
  ParamKind kind;
};

// A kind's name as the X-macro lists spell it (what Python reads).
inline const char* param_kind_name(ParamKind kind) {
  static const char* const names[] = {
#define DLLM_X(kind) #kind,
      DLLM_PARAM_KINDS(DLLM_X)
#undef DLLM_X
  };
  return names[kind];
}

}  // namespace dllm
