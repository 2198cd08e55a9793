// Argument checking for lm_head_row_stats (the LM head fused with the row-statistics pass),
// shared by its bindings.
#pragma once
#include "aten_deps.h"

#include <optional>

#include "op_checks.h"

namespace dllm {

constexpr const char* kLmHeadRowStats = "lm_head_row_stats";

struct LmHeadRowStatsArgs {
  int64_t B, R, d, V;  // V: the rows of `weight` (this shard of the head)
};

// The op's parameter list (matches the schema in ops.cpp), written once for every binding.
#define DLLM_LM_HEAD_ROW_STATS_PARAMS                                                               \
  const at::Tensor &hidden, const at::Tensor &weight, const std::optional<at::Tensor>&bias,       \
      const at::Tensor &positions, const std::optional<at::Tensor>&seed,                          \
      const std::optional<at::Tensor>&offset, const std::optional<at::Tensor>&temperature,        \
      const std::optional<at::Tensor>&suppress_ids, int64_t conf_kind, int64_t vocab_start

#define DLLM_LM_HEAD_ROW_STATS_ARGS \
  hidden, weight, bias, positions, seed, offset, temperature, suppress_ids, conf_kind, vocab_start

inline LmHeadRowStatsArgs check_lm_head_row_stats_args(DLLM_LM_HEAD_ROW_STATS_PARAMS) {
  const char* op = kLmHeadRowStats;
  TORCH_CHECK(hidden.dim() == 3, op, ": hidden must be 3-D [B, R, d], got ", hidden.dim(), "-D");
  const auto dt = hidden.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16, op,
              ": hidden must be float32, float16 or bfloat16, got ", dt);
  TORCH_CHECK(hidden.size(0) > 0, op, ": empty batch (hidden has B = 0)");
  TORCH_CHECK(hidden.size(2) >= 1, op, ": hidden must have d >= 1, got d = ", hidden.size(2));
  LmHeadRowStatsArgs a{hidden.size(0), hidden.size(1), hidden.size(2), 0};
  check_same_device(op, weight, hidden, "weight", "hidden");
  TORCH_CHECK(weight.dim() == 2 && weight.size(1) == a.d && weight.size(0) >= 1, op,
              ": weight must be [V >= 1, d = ", a.d, "] (the LM head, or the tied embedding), got ", weight.sizes());
  TORCH_CHECK(weight.scalar_type() == dt, op, ": weight must have hidden's dtype ", dt, ", got ",
              weight.scalar_type());
  a.V = weight.size(0);
  if (bias) check_tensor(op, *bias, hidden, "bias", dt, {a.V}, "hidden");
  check_tensor(op, positions, hidden, "positions", at::kLong, {a.B, a.R}, "hidden");
  if (positions.device().is_cpu() && positions.numel() > 0) {
    const int64_t hi = positions.max().item<int64_t>();
    TORCH_CHECK(hi <= UINT32_MAX, op, ": positions must be < 2^32 (the noise key), got ", hi);
  }
  if (seed) check_tensor(op, *seed, hidden, "seed", at::kLong, {a.B}, "hidden");
  if (offset) check_tensor(op, *offset, hidden, "offset", at::kLong, {a.B}, "hidden");
  if (temperature) {
    check_tensor(op, *temperature, hidden, "temperature", at::kDouble, {a.B}, "hidden");
    if (temperature->device().is_cpu()) {
      const double lo = temperature->min().item<double>();
      const double hi = temperature->max().item<double>();
      TORCH_CHECK(std::isfinite(lo) && std::isfinite(hi) && lo >= 0.0, op,
                  ": temperature must be finite and >= 0, got values in [", lo, ", ", hi, "]");
    }
  }
  // Suppressed ids are global: ids outside this shard [vocab_start, vocab_start + V) are ignored.
  check_ids(op, suppress_ids, hidden, "suppress_ids", INT64_MAX, "hidden");
  TORCH_CHECK(conf_kind >= 0 && conf_kind <= kNegEntropy, op, ": conf_kind must be 0..2, got ", conf_kind);
  TORCH_CHECK(vocab_start >= 0 && vocab_start + a.V <= (int64_t(1) << 32), op, ": vocab_start must be >= 0 "
              "and vocab_start + V <= 2^32 (the noise key), got vocab_start = ", vocab_start, ", V = ", a.V);
  return a;
}

}  // namespace dllm
