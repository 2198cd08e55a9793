// Argument checking for fused_unmask, shared by the CPU and CUDA bindings: every bad input is a
// clear error naming the argument, before any kernel runs.
#pragma once
#include <torch/types.h>

#include <cmath>
#include <optional>

#include "include/dllm/policy.h"

namespace dllm {

struct FusedUnmaskArgs {
  int64_t B, R, V, L;
  int64_t logits_stride_b, logits_stride_r;
  PolicyParams policy;
};

inline void check_same_device(const at::Tensor& t, const at::Tensor& ref, const char* name) {
  TORCH_CHECK(t.device() == ref.device(), "fused_unmask: ", name, " is on ", t.device(),
              " but logits is on ", ref.device());
}

inline void check_tensor(const at::Tensor& t, const at::Tensor& logits, const char* name,
                         at::ScalarType dtype, at::IntArrayRef shape) {
  check_same_device(t, logits, name);
  TORCH_CHECK(t.scalar_type() == dtype, "fused_unmask: ", name, " must be ", dtype, ", got ",
              t.scalar_type());
  TORCH_CHECK(t.sizes() == shape, "fused_unmask: ", name, " must have shape ", shape, ", got ",
              t.sizes());
  TORCH_CHECK(t.is_contiguous(), "fused_unmask: ", name, " must be contiguous");
}

inline void check_unit(double v, const char* name) {
  TORCH_CHECK(std::isfinite(v) && v >= 0.0 && v <= 1.0, "fused_unmask: ", name,
              " must be in [0, 1], got ", v);
}

// Token-id lists: 1-D int64 on the logits' device; values are range-checked where they can be
// read without a device sync (CPU), and ignored when out of range by the CUDA kernels.
inline void check_ids(const std::optional<at::Tensor>& t, const at::Tensor& logits,
                      const char* name, int64_t V) {
  if (!t) return;
  check_same_device(*t, logits, name);
  TORCH_CHECK(t->scalar_type() == at::kLong, "fused_unmask: ", name, " must be int64, got ",
              t->scalar_type());
  TORCH_CHECK(t->dim() == 1, "fused_unmask: ", name, " must be 1-D, got ", t->dim(), "-D");
  TORCH_CHECK(t->is_contiguous(), "fused_unmask: ", name, " must be contiguous");
  if (t->device().is_cpu() && t->numel() > 0) {
    const int64_t lo = t->min().item<int64_t>(), hi = t->max().item<int64_t>();
    TORCH_CHECK(lo >= 0 && hi < V, "fused_unmask: ", name, " holds ids outside [0, ", V,
                "): ", lo, "..", hi);
  }
}

inline const int64_t* ids_ptr(const std::optional<at::Tensor>& t) {
  return t && t->numel() > 0 ? t->data_ptr<int64_t>() : nullptr;
}
inline int64_t ids_len(const std::optional<at::Tensor>& t) { return t ? t->numel() : 0; }

// The op's parameter list (matches the schema in ops.cpp), written once for every backend's
// signature, and the matching argument list to forward it.
#define DLLM_FUSED_UNMASK_PARAMS                                                                  \
  const at::Tensor &logits, const at::Tensor &x, const at::Tensor &conf, const at::Tensor &state, \
      const std::optional<at::Tensor>&row_start, const std::optional<at::Tensor>&gumbel_u,        \
      const std::optional<at::Tensor>&rank_u, const std::optional<at::Tensor>&suppress_ids,       \
      const std::optional<at::Tensor>&zero_conf_ids,                                              \
      const std::optional<at::Tensor>&delimiter_ids, const std::optional<at::Tensor>&filter_w1,  \
      const std::optional<at::Tensor>&filter_b1, const std::optional<at::Tensor>&filter_w2,      \
      const std::optional<at::Tensor>&filter_b2, int64_t mask_id, int64_t eos_id, int64_t rule,  \
      int64_t conf_kind, double temperature, bool shift, int64_t steps, double threshold,        \
      double factor, double anchor_threshold, double relaxed_threshold, int64_t window,          \
      bool graded, double filter_threshold, bool random_remasking, int64_t block_length,         \
      bool adaptive_block, double block_delta, double block_window_fraction, bool eotp,          \
      bool early_stop

#define DLLM_FUSED_UNMASK_ARGS                                                                  \
  logits, x, conf, state, row_start, gumbel_u, rank_u, suppress_ids, zero_conf_ids,             \
      delimiter_ids, filter_w1, filter_b1, filter_w2, filter_b2, mask_id, eos_id, rule,          \
      conf_kind, temperature, shift, steps, threshold, factor, anchor_threshold,                 \
      relaxed_threshold, window, graded, filter_threshold, random_remasking, block_length,       \
      adaptive_block, block_delta, block_window_fraction, eotp, early_stop

inline FusedUnmaskArgs check_fused_unmask_args(DLLM_FUSED_UNMASK_PARAMS) {
  TORCH_CHECK(logits.dim() == 3, "fused_unmask: logits must be 3-D [B, R, V], got ",
              logits.dim(), "-D");
  const auto dt = logits.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16,
              "fused_unmask: logits must be float32, float16 or bfloat16, got ", dt);
  FusedUnmaskArgs a;
  a.B = logits.size(0);
  a.R = logits.size(1);
  a.V = logits.size(2);
  TORCH_CHECK(a.B > 0, "fused_unmask: empty batch (logits has B = 0)");
  TORCH_CHECK(a.V >= 2, "fused_unmask: logits must have a vocabulary of at least 2, got V = ", a.V);
  TORCH_CHECK(logits.stride(2) == 1, "fused_unmask: logits must be contiguous along the vocab "
              "dimension (stride(2) == 1), got stride ", logits.stride(2));
  TORCH_CHECK(x.dim() == 2 && x.size(0) == a.B,
              "fused_unmask: x must be [B, L] with B = ", a.B, ", got ", x.sizes());
  a.L = x.size(1);
  TORCH_CHECK(a.L > 0, "fused_unmask: x must have at least one position");
  check_tensor(x, logits, "x", at::kLong, {a.B, a.L});
  check_tensor(conf, logits, "conf", at::kFloat, {a.B, a.L});
  check_tensor(state, logits, "state", at::kLong, {a.B, kStateCols});
  // Row r holds position row_start + r (+ shift): more rows than positions is a caller's mistake.
  TORCH_CHECK(a.R <= a.L, "fused_unmask: logits has R = ", a.R, " rows, more than the L = ", a.L,
              " positions of x (need R <= L)");
  if (row_start) {
    check_tensor(*row_start, logits, "row_start", at::kLong, {a.B});
    // Values are checked where they can be read without a device sync (CPU); the CUDA kernels
    // read only rows inside [0, R), whatever row_start holds.
    if (row_start->device().is_cpu()) {
      const int64_t lo = row_start->min().item<int64_t>();
      TORCH_CHECK(lo >= 0, "fused_unmask: row_start must be >= 0, got ", lo);
    }
  }
  if (gumbel_u) check_tensor(*gumbel_u, logits, "gumbel_u", at::kFloat, {a.B, a.R, a.V});
  if (rank_u) check_tensor(*rank_u, logits, "rank_u", at::kFloat, {a.B, a.L});
  check_ids(suppress_ids, logits, "suppress_ids", a.V);
  check_ids(zero_conf_ids, logits, "zero_conf_ids", a.V);
  check_ids(delimiter_ids, logits, "delimiter_ids", a.V);

  TORCH_CHECK(mask_id >= 0 && mask_id < a.V, "fused_unmask: mask_id must be in [0, ", a.V,
              "), got ", mask_id);
  TORCH_CHECK(eos_id >= 0 && eos_id < a.V, "fused_unmask: eos_id must be in [0, ", a.V, "), got ",
              eos_id);
  TORCH_CHECK(eos_id != mask_id, "fused_unmask: eos_id must differ from mask_id");
  TORCH_CHECK(rule >= 0 && rule <= kLearnedFilter, "fused_unmask: rule must be 0..4, got ", rule);
  TORCH_CHECK(conf_kind >= 0 && conf_kind <= kNegEntropy,
              "fused_unmask: conf_kind must be 0..2, got ", conf_kind);
  TORCH_CHECK(std::isfinite(temperature) && temperature >= 0.0,
              "fused_unmask: temperature must be finite and >= 0, got ", temperature);
  TORCH_CHECK(steps >= 1, "fused_unmask: steps must be >= 1, got ", steps);
  TORCH_CHECK(block_length >= 1, "fused_unmask: block_length must be >= 1, got ", block_length);
  TORCH_CHECK(window >= 0, "fused_unmask: window must be >= 0, got ", window);
  check_unit(threshold, "threshold");
  check_unit(anchor_threshold, "anchor_threshold");
  check_unit(relaxed_threshold, "relaxed_threshold");
  check_unit(filter_threshold, "filter_threshold");
  check_unit(block_delta, "block_delta");
  check_unit(block_window_fraction, "block_window_fraction");
  TORCH_CHECK(std::isfinite(factor) && factor >= 0.0, "fused_unmask: factor must be finite and >= 0, got ",
              factor);

  const bool any_filter = filter_w1 || filter_b1 || filter_w2 || filter_b2;
  const bool all_filter = filter_w1 && filter_b1 && filter_w2 && filter_b2;
  TORCH_CHECK(!any_filter || all_filter,
              "fused_unmask: filter_w1, filter_b1, filter_w2, filter_b2 go together");
  TORCH_CHECK(rule != kLearnedFilter || all_filter,
              "fused_unmask: rule 4 (learned filter) needs filter_w1/b1/w2/b2");
  int64_t fw = 0, fh = 0;
  if (all_filter) {
    TORCH_CHECK(filter_w1->dim() == 2, "fused_unmask: filter_w1 must be [hidden, width]");
    fh = filter_w1->size(0);
    fw = filter_w1->size(1);
    TORCH_CHECK(fw >= 1 && fw <= kMaxFilterWidth, "fused_unmask: filter width must be 1..",
                kMaxFilterWidth, ", got ", fw);
    TORCH_CHECK(fh >= 1 && fh <= kMaxFilterHidden, "fused_unmask: filter hidden size must be 1..",
                kMaxFilterHidden, ", got ", fh);
    check_tensor(*filter_w1, logits, "filter_w1", at::kFloat, {fh, fw});
    check_tensor(*filter_b1, logits, "filter_b1", at::kFloat, {fh});
    check_tensor(*filter_w2, logits, "filter_w2", at::kFloat, {fw, fh});
    check_tensor(*filter_b2, logits, "filter_b2", at::kFloat, {fw});
  }

  a.logits_stride_b = logits.stride(0);
  a.logits_stride_r = logits.stride(1);
  PolicyParams& p = a.policy;
  p.mask_id = mask_id;
  p.eos_id = eos_id;
  p.rule = static_cast<int>(rule);
  p.conf_kind = static_cast<int>(conf_kind);
  p.shift = shift;
  p.steps = steps;
  p.threshold = static_cast<float>(threshold);
  p.factor = static_cast<float>(factor);
  p.anchor_threshold = static_cast<float>(anchor_threshold);
  p.relaxed_threshold = static_cast<float>(relaxed_threshold);
  p.window = window;
  p.graded = graded;
  p.filter_threshold = static_cast<float>(filter_threshold);
  p.random_remasking = random_remasking;
  p.block_length = block_length;
  p.adaptive_block = adaptive_block;
  p.block_delta = static_cast<float>(block_delta);
  p.block_window_fraction = static_cast<float>(block_window_fraction);
  p.eotp = eotp;
  p.early_stop = early_stop;
  p.delimiter_ids = ids_ptr(delimiter_ids);
  p.n_delimiters = ids_len(delimiter_ids);
  p.w1 = all_filter ? filter_w1->data_ptr<float>() : nullptr;
  p.b1 = all_filter ? filter_b1->data_ptr<float>() : nullptr;
  p.w2 = all_filter ? filter_w2->data_ptr<float>() : nullptr;
  p.b2 = all_filter ? filter_b2->data_ptr<float>() : nullptr;
  p.filter_width = fw;
  p.filter_hidden = fh;
  return a;
}

}  // namespace dllm
