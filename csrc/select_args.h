// Argument checking for select (the stateless selection op), shared by its bindings.
#pragma once
#include "aten_deps.h"

#include <cmath>
#include <optional>

#include "include/dllm/select_params.h"
#include "op_checks.h"
#include "param_pack_check.h"

namespace dllm {

constexpr const char* kSelect = "select";

struct SelectArgs {
  int64_t B, R, V, L;
  int64_t logits_stride_b, logits_stride_r;
  PolicyParams policy;  // rule, conf kind, flags, lists; numeric fields come per sequence
};

// The op's parameter list (matches the schema in ops.cpp), written once for every binding.
#define DLLM_SELECT_PARAMS_DECL                                                                  \
  const at::Tensor &logits, const at::Tensor &x, const std::optional<at::Tensor>&candidates,    \
      const std::optional<at::Tensor>&params, const std::optional<at::Tensor>&bounds,            \
      const std::optional<at::Tensor>&row_start, const std::optional<at::Tensor>&seed,           \
      const std::optional<at::Tensor>&offset, const std::optional<at::Tensor>&gumbel_u,          \
      const std::optional<at::Tensor>&rank_u, const std::optional<at::Tensor>&prev_conf,         \
      const std::optional<at::Tensor>&suppress_ids,                                              \
      const std::optional<at::Tensor>&zero_conf_ids, const std::optional<at::Tensor>&filter_w1,  \
      const std::optional<at::Tensor>&filter_b1, const std::optional<at::Tensor>&filter_w2,      \
      const std::optional<at::Tensor>&filter_b2, int64_t rule, int64_t conf_kind, bool shift,    \
      bool graded, bool random_remasking, bool commit, const std::optional<at::Tensor>&row_stats, \
      int64_t vocab_size

#define DLLM_SELECT_ARGS                                                                       \
  logits, x, candidates, params, bounds, row_start, seed, offset, gumbel_u, rank_u, prev_conf, \
      suppress_ids, zero_conf_ids, filter_w1, filter_b1, filter_w2, filter_b2, rule, conf_kind, \
      shift, graded, random_remasking, commit, row_stats, vocab_size

// Bounds [B, 2] = [start, end) per sequence, 0 <= start <= end <= L (checked on CPU).
inline void check_select_bounds(const at::Tensor& bounds, int64_t L) {
  if (!bounds.device().is_cpu()) return;
  const int64_t* v = bounds.data_ptr<int64_t>();
  for (int64_t b = 0; b < bounds.size(0); ++b)
    TORCH_CHECK(0 <= v[2 * b] && v[2 * b] <= v[2 * b + 1] && v[2 * b + 1] <= L,
                "select: bounds must satisfy 0 <= start <= end <= L = ", L, ", got [", v[2 * b],
                ", ", v[2 * b + 1], ") for sequence ", b);
}

inline SelectArgs check_select_args(DLLM_SELECT_PARAMS_DECL) {
  SelectArgs a;
  a.V = check_logits_or_row_stats(kSelect, logits, row_stats, vocab_size, gumbel_u);
  a.B = logits.size(0);
  a.R = logits.size(1);
  TORCH_CHECK(x.dim() == 2 && x.size(0) == a.B, "select: x must be [B, L] with B = ", a.B, ", got ",
              x.sizes());
  a.L = x.size(1);
  TORCH_CHECK(a.L > 0, "select: x must have at least one position");
  check_tensor(kSelect, x, logits, "x", at::kLong, {a.B, a.L});
  if (candidates) check_tensor(kSelect, *candidates, logits, "candidates", at::kBool, {a.B, a.L});
  if (params) {
    check_tensor(kSelect, *params, logits, "params", at::kDouble, {a.B, kSelectParams});
    check_param_pack(*params, kSelectColumns, kSelect, WholeWording::kWholeFirst);
  }
  if (bounds) {
    check_tensor(kSelect, *bounds, logits, "bounds", at::kLong, {a.B, 2});
    check_select_bounds(*bounds, a.L);
  }
  TORCH_CHECK(a.R <= a.L, "select: logits has R = ", a.R, " rows, more than the L = ", a.L,
              " positions of x (need R <= L)");
  if (row_start) {
    check_tensor(kSelect, *row_start, logits, "row_start", at::kLong, {a.B});
    if (row_start->device().is_cpu()) {  // on CUDA only rows inside [0, R) are ever read
      const int64_t lo = row_start->min().item<int64_t>();
      TORCH_CHECK(lo >= 0, "select: row_start must be >= 0, got ", lo);
    }
  }
  if (seed) check_tensor(kSelect, *seed, logits, "seed", at::kLong, {a.B});
  if (offset) check_tensor(kSelect, *offset, logits, "offset", at::kLong, {a.B});
  if (gumbel_u) check_tensor(kSelect, *gumbel_u, logits, "gumbel_u", at::kFloat, {a.B, a.R, a.V});
  if (rank_u) check_tensor(kSelect, *rank_u, logits, "rank_u", at::kFloat, {a.B, a.L});
  if (prev_conf) check_tensor(kSelect, *prev_conf, logits, "prev_conf", at::kFloat, {a.B, a.L});
  check_ids(kSelect, suppress_ids, logits, "suppress_ids", a.V);
  check_ids(kSelect, zero_conf_ids, logits, "zero_conf_ids", a.V);
  TORCH_CHECK(rule >= 0 && rule <= kLearnedFilter, "select: rule must be 0..4, got ", rule);
  TORCH_CHECK(conf_kind >= 0 && conf_kind <= kNegEntropy, "select: conf_kind must be 0..2, got ",
              conf_kind);

  a.logits_stride_b = logits.stride(0);
  a.logits_stride_r = logits.stride(1);
  PolicyParams& p = a.policy;
  p = PolicyParams{};
  p.mask_id = -1;  // unused: candidates are the caller's
  p.eos_id = -1;
  p.rule = static_cast<int>(rule);
  p.conf_kind = static_cast<int>(conf_kind);
  p.shift = shift;
  p.graded = graded;
  p.random_remasking = random_remasking;
  p.steps = 1;
  p.block_length = a.L;
  check_filter(kSelect, logits, filter_w1, filter_b1, filter_w2, filter_b2, rule == kLearnedFilter, p);
  return a;
}

// The pack's defaults as one row, for a call without `params`.
inline void default_select_row(double* row) {
#define DLLM_X(name, dflt, kind) row[kSel_##name] = dflt;
  DLLM_SELECT_PARAMS(DLLM_X)
#undef DLLM_X
}

}  // namespace dllm
