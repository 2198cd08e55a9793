// Argument checking for fused_unmask, shared by the CPU and CUDA bindings: every bad input is a
// clear error naming the argument, before any kernel runs.
#pragma once
#include <torch/types.h>

#include <cmath>
#include <optional>

#include "op_checks.h"

namespace dllm {

struct FusedUnmaskArgs {
  int64_t B, R, V, L;
  int64_t logits_stride_b, logits_stride_r;
  PolicyParams policy;
};

constexpr const char* kFusedUnmask = "fused_unmask";

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
  check_logits(kFusedUnmask, logits);
  FusedUnmaskArgs a;
  a.B = logits.size(0);
  a.R = logits.size(1);
  a.V = logits.size(2);
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
  TORCH_CHECK(std::isfinite(temperature) && temperature >= 0.0,
              "fused_unmask: temperature must be finite and >= 0, got ", temperature);
  TORCH_CHECK(steps >= 1, "fused_unmask: steps must be >= 1, got ", steps);
  TORCH_CHECK(block_length >= 1, "fused_unmask: block_length must be >= 1, got ", block_length);
  TORCH_CHECK(window >= 0, "fused_unmask: window must be >= 0, got ", window);
  check_unit(kFusedUnmask, threshold, "threshold");
  check_unit(kFusedUnmask, anchor_threshold, "anchor_threshold");
  check_unit(kFusedUnmask, relaxed_threshold, "relaxed_threshold");
  check_unit(kFusedUnmask, filter_threshold, "filter_threshold");
  check_unit(kFusedUnmask, block_delta, "block_delta");
  check_unit(kFusedUnmask, block_window_fraction, "block_window_fraction");
  TORCH_CHECK(std::isfinite(factor) && factor >= 0.0, "fused_unmask: factor must be finite and >= 0, got ",
              factor);

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
  check_filter(kFusedUnmask, logits, filter_w1, filter_b1, filter_w2, filter_b2,
               rule == kLearnedFilter, p);
  return a;
}

}  // namespace dllm
