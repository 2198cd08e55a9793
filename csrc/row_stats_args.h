// Argument checking for row_stats (partial statistics of logits rows), shared by its bindings.
#pragma once
#include "aten_deps.h"

#include <optional>

#include "op_checks.h"

namespace dllm {

constexpr const char* kRowStats = "row_stats";

struct RowStatsArgs {
  int64_t B, R, V;
};

// The op's parameter list (matches the schema in ops.cpp), written once for every binding.
#define DLLM_ROW_STATS_PARAMS                                                                    \
  const at::Tensor &logits, const at::Tensor &positions, const std::optional<at::Tensor>&seed, \
      const std::optional<at::Tensor>&offset, const std::optional<at::Tensor>&temperature,     \
      const std::optional<at::Tensor>&gumbel_u, const std::optional<at::Tensor>&suppress_ids,  \
      int64_t conf_kind, int64_t vocab_start

#define DLLM_ROW_STATS_ARGS \
  logits, positions, seed, offset, temperature, gumbel_u, suppress_ids, conf_kind, vocab_start

inline RowStatsArgs check_row_stats_args(DLLM_ROW_STATS_PARAMS) {
  check_logits(kRowStats, logits, /*min_vocab=*/1);
  RowStatsArgs a{logits.size(0), logits.size(1), logits.size(2)};
  check_tensor(kRowStats, positions, logits, "positions", at::kLong, {a.B, a.R});
  if (positions.device().is_cpu() && positions.numel() > 0) {
    const int64_t hi = positions.max().item<int64_t>();
    TORCH_CHECK(hi <= UINT32_MAX, "row_stats: positions must be < 2^32 (the noise key), got ", hi);
  }
  if (seed) check_tensor(kRowStats, *seed, logits, "seed", at::kLong, {a.B});
  if (offset) check_tensor(kRowStats, *offset, logits, "offset", at::kLong, {a.B});
  if (temperature) {
    check_tensor(kRowStats, *temperature, logits, "temperature", at::kDouble, {a.B});
    if (temperature->device().is_cpu()) {
      const double lo = temperature->min().item<double>();
      const double hi = temperature->max().item<double>();
      TORCH_CHECK(std::isfinite(lo) && std::isfinite(hi) && lo >= 0.0,
                  "row_stats: temperature must be finite and >= 0, got values in [", lo, ", ", hi, "]");
    }
  }
  if (gumbel_u) check_tensor(kRowStats, *gumbel_u, logits, "gumbel_u", at::kFloat, {a.B, a.R, a.V});
  // Suppressed ids are global: ids outside this slice [vocab_start, vocab_start + V) are ignored.
  check_ids(kRowStats, suppress_ids, logits, "suppress_ids", INT64_MAX);
  TORCH_CHECK(conf_kind >= 0 && conf_kind <= kNegEntropy, "row_stats: conf_kind must be 0..2, got ", conf_kind);
  TORCH_CHECK(vocab_start >= 0 && vocab_start + a.V <= (int64_t(1) << 32), "row_stats: vocab_start must be >= 0 "
              "and vocab_start + V <= 2^32 (the noise key), got vocab_start = ", vocab_start, ", V = ", a.V);
  return a;
}

}  // namespace dllm
