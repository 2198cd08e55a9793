// Argument checking for fused_unmask, shared by the CPU and CUDA bindings: every bad input is a
// clear error naming the argument, before any kernel runs.
#pragma once
#include "aten_deps.h"

#include <cmath>
#include <optional>
#include <string>

#include "include/dllm/fused_unmask_params.h"
#include "op_checks.h"
#include "param_pack_check.h"

namespace dllm {

struct FusedUnmaskArgs {
  int64_t B, R, V, L;
  int64_t logits_stride_b, logits_stride_r;
  PolicyParams policy;  // mode switches, lists and filter; numeric fields come per sequence (pack)
};

constexpr const char* kFusedUnmask = "fused_unmask";

// The op's signature, written once: the schema (fused_unmask_schema), every backend's C++
// parameter list and the forwarding argument list are generated from these three lists.
// Required arguments: logits, x, conf, state, mask_id, eos_id (fixed, below). Optional tensors,
// in schema order, each defaulting to None; a new optional input is one line here.
#define DLLM_FUSED_UNMASK_OPTIONAL_TENSORS(X) \
  X(params)                                   \
  X(row_start)                                \
  X(gumbel_u)                                 \
  X(rank_u)                                   \
  X(suppress_ids)                             \
  X(zero_conf_ids)                            \
  X(delimiter_ids)                            \
  X(filter_w1)                                \
  X(filter_b1)                                \
  X(filter_w2)                                \
  X(filter_b2)                                \
  X(row_stats)

// Mode switches that change the kernel: X(C++ type, schema type, name, default). Every numeric
// parameter is a column of the pack `params` (include/dllm/fused_unmask_params.h) instead.
// vocab_size goes with row_stats (docs/row_stats.md): the whole vocabulary when logits do not hold it.
#define DLLM_FUSED_UNMASK_FLAGS(X)       \
  X(int64_t, int, rule, 0)               \
  X(int64_t, int, conf_kind, 0)          \
  X(bool, bool, shift, False)            \
  X(bool, bool, graded, False)           \
  X(bool, bool, random_remasking, False) \
  X(bool, bool, adaptive_block, False)   \
  X(bool, bool, eotp, False)             \
  X(bool, bool, early_stop, False)       \
  X(int64_t, int, vocab_size, 0)

#define DLLM_FU_DECL_TENSOR(name) , const std::optional<at::Tensor>& name
#define DLLM_FU_DECL_FLAG(ctype, stype, name, dflt) , ctype name
#define DLLM_FU_FORWARD_TENSOR(name) , name
#define DLLM_FU_FORWARD_FLAG(ctype, stype, name, dflt) , name

#define DLLM_FUSED_UNMASK_PARAMS                                                                   \
  const at::Tensor &logits, const at::Tensor &x, const at::Tensor &conf, const at::Tensor &state,  \
      int64_t mask_id, int64_t eos_id DLLM_FUSED_UNMASK_OPTIONAL_TENSORS(DLLM_FU_DECL_TENSOR)      \
          DLLM_FUSED_UNMASK_FLAGS(DLLM_FU_DECL_FLAG)

#define DLLM_FUSED_UNMASK_ARGS                                                                     \
  logits, x, conf, state, mask_id, eos_id DLLM_FUSED_UNMASK_OPTIONAL_TENSORS(DLLM_FU_FORWARD_TENSOR) \
      DLLM_FUSED_UNMASK_FLAGS(DLLM_FU_FORWARD_FLAG)

// The schema registered in ops.cpp.
inline std::string fused_unmask_schema() {
  std::string s =
      "fused_unmask(Tensor logits, Tensor(a!) x, Tensor(b!) conf, Tensor(c!) state, int mask_id, "
      "int eos_id";
#define DLLM_X(name) s += ", Tensor? " #name "=None";
  DLLM_FUSED_UNMASK_OPTIONAL_TENSORS(DLLM_X)
#undef DLLM_X
#define DLLM_X(ctype, stype, name, dflt) s += ", " #stype " " #name "=" #dflt;
  DLLM_FUSED_UNMASK_FLAGS(DLLM_X)
#undef DLLM_X
  return s + ") -> (Tensor x0, Tensor transfer, Tensor window_stats)";
}

// The pack as given, or the defaults ([B, P] on CPU; the CUDA binding keeps one row per device).
inline at::Tensor unmask_params_or_defaults(const std::optional<at::Tensor>& params, const at::Tensor& x) {
  if (params) return *params;
  at::Tensor pack = at::empty({x.size(0), kUnmaskParams}, x.options().dtype(at::kDouble));
  double* row = pack.data_ptr<double>();
  for (int64_t b = 0; b < x.size(0); ++b) default_unmask_row(row + b * kUnmaskParams);
  return pack;
}

inline FusedUnmaskArgs check_fused_unmask_args(DLLM_FUSED_UNMASK_PARAMS) {
  FusedUnmaskArgs a;
  a.V = check_logits_or_row_stats(kFusedUnmask, logits, row_stats, vocab_size, gumbel_u);
  a.B = logits.size(0);
  a.R = logits.size(1);
  TORCH_CHECK(x.dim() == 2 && x.size(0) == a.B,
              "fused_unmask: x must be [B, L] with B = ", a.B, ", got ", x.sizes());
  a.L = x.size(1);
  TORCH_CHECK(a.L > 0, "fused_unmask: x must have at least one position");
  check_tensor(kFusedUnmask, x, logits, "x", at::kLong, {a.B, a.L});
  check_tensor(kFusedUnmask, conf, logits, "conf", at::kFloat, {a.B, a.L});
  check_tensor(kFusedUnmask, state, logits, "state", at::kLong, {a.B, kStateCols});
  // Row r holds position row_start + r (+ shift): more rows than positions is a caller's mistake.
  TORCH_CHECK(a.R <= a.L, "fused_unmask: logits has R = ", a.R, " rows, more than the L = ", a.L,
              " positions of x (need R <= L)");
  if (row_start) {
    check_tensor(kFusedUnmask, *row_start, logits, "row_start", at::kLong, {a.B});
    // Values are checked where they can be read without a device sync (CPU); the CUDA kernels
    // read only rows inside [0, R), whatever row_start holds.
    if (row_start->device().is_cpu()) {
      const int64_t lo = row_start->min().item<int64_t>();
      TORCH_CHECK(lo >= 0, "fused_unmask: row_start must be >= 0, got ", lo);
    }
  }
  if (gumbel_u) check_tensor(kFusedUnmask, *gumbel_u, logits, "gumbel_u", at::kFloat, {a.B, a.R, a.V});
  if (rank_u) check_tensor(kFusedUnmask, *rank_u, logits, "rank_u", at::kFloat, {a.B, a.L});
  check_ids(kFusedUnmask, suppress_ids, logits, "suppress_ids", a.V);
  check_ids(kFusedUnmask, zero_conf_ids, logits, "zero_conf_ids", a.V);
  check_ids(kFusedUnmask, delimiter_ids, logits, "delimiter_ids", a.V);

  TORCH_CHECK(mask_id >= 0 && mask_id < a.V, "fused_unmask: mask_id must be in [0, ", a.V,
              "), got ", mask_id);
  TORCH_CHECK(eos_id >= 0 && eos_id < a.V, "fused_unmask: eos_id must be in [0, ", a.V, "), got ",
              eos_id);
  TORCH_CHECK(eos_id != mask_id, "fused_unmask: eos_id must differ from mask_id");
  TORCH_CHECK(rule >= 0 && rule <= kLearnedFilter, "fused_unmask: rule must be 0..4, got ", rule);
  TORCH_CHECK(conf_kind >= 0 && conf_kind <= kNegEntropy,
              "fused_unmask: conf_kind must be 0..2, got ", conf_kind);
  if (params) {
    check_tensor(kFusedUnmask, *params, logits, "params", at::kDouble, {a.B, kUnmaskParams});
    check_param_pack(*params, kUnmaskColumns, kFusedUnmask, WholeWording::kBoundFirst);
  }

  a.logits_stride_b = logits.stride(0);
  a.logits_stride_r = logits.stride(1);
  PolicyParams& p = a.policy;
  p.mask_id = mask_id;
  p.eos_id = eos_id;
  p.rule = static_cast<int>(rule);
  p.conf_kind = static_cast<int>(conf_kind);
  p.shift = shift;
  p.graded = graded;
  p.random_remasking = random_remasking;
  p.adaptive_block = adaptive_block;
  p.eotp = eotp;
  p.early_stop = early_stop;
  // Numeric fields: set per sequence from the pack (with_unmask_row); defaults until then.
  double row[kUnmaskParams];
  default_unmask_row(row);
  p = with_unmask_row(p, row);
  p.delimiter_ids = ids_ptr(delimiter_ids);
  p.n_delimiters = ids_len(delimiter_ids);
  check_filter(kFusedUnmask, logits, filter_w1, filter_b1, filter_w2, filter_b2,
               rule == kLearnedFilter, p);
  return a;
}

}  // namespace dllm
