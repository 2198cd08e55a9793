// Mergeable statistics of one logits row, or of a slice of its vocabulary (a tensor-parallel
// shard, an LM-head chunk), and their exchange layout (docs/row_stats.md). Raw C++ only: shared
// by the CPU kernels, the bindings' checks and any backend that exchanges partials.
#pragma once
#include <cstdint>

namespace dllm {
namespace cpu {

// Partial statistics of a row or of a slice of its vocabulary; ids are global.
struct RowPartial {
  float m1, m2;     // largest and second-largest clean value (m2 == m1 when the maximum is shared)
  float sum, ent;   // sum of exp(l - m1); sum of exp(l - m1) * (l - m1) (entropy kind only)
  float noisy_best, noisy_clean;  // best noisy value l + T*g and the clean value there (sampling)
  int64_t idx, noisy_idx;         // first index of m1 / of the best noisy value; -1 when none
  bool bad;                       // NaN or +inf seen
};

// The exchange layout of a partial: kPartialCols float64 values (float32 values and ids are exact
// in float64). X(name): the columns in order; Python reads the names via dllm::row_stats_columns.
#define DLLM_ROW_PARTIAL_COLS(X) \
  X(m1) X(m2) X(sum_exp) X(entropy) X(noisy_best) X(noisy_clean) X(idx) X(noisy_idx) X(bad)

enum PartialCol : int {
#define DLLM_X(name) kPart_##name,
  DLLM_ROW_PARTIAL_COLS(DLLM_X)
#undef DLLM_X
  kPartialCols
};

// Most partials one row merges (ranks of a vocabulary group); the checks enforce it.
constexpr int64_t kMaxMergedPartials = 256;

inline void pack_partial(const RowPartial& p, double* out) {
  out[kPart_m1] = p.m1;
  out[kPart_m2] = p.m2;
  out[kPart_sum_exp] = p.sum;
  out[kPart_entropy] = p.ent;
  out[kPart_noisy_best] = p.noisy_best;
  out[kPart_noisy_clean] = p.noisy_clean;
  out[kPart_idx] = static_cast<double>(p.idx);
  out[kPart_noisy_idx] = static_cast<double>(p.noisy_idx);
  out[kPart_bad] = p.bad ? 1.0 : 0.0;
}

inline RowPartial unpack_partial(const double* in) {
  RowPartial p;
  p.m1 = static_cast<float>(in[kPart_m1]);
  p.m2 = static_cast<float>(in[kPart_m2]);
  p.sum = static_cast<float>(in[kPart_sum_exp]);
  p.ent = static_cast<float>(in[kPart_entropy]);
  p.noisy_best = static_cast<float>(in[kPart_noisy_best]);
  p.noisy_clean = static_cast<float>(in[kPart_noisy_clean]);
  p.idx = static_cast<int64_t>(in[kPart_idx]);
  p.noisy_idx = static_cast<int64_t>(in[kPart_noisy_idx]);
  p.bad = in[kPart_bad] != 0.0;
  return p;
}

}  // namespace cpu
}  // namespace dllm
