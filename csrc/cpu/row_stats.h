// One pass over one logits row: max, first-index argmax of the (optionally noisy) logits,
// log-sum-exp, chosen-token probability, margin and entropy accumulators (docs/fused_unmask.md §3).
// Raw pointers only; the vectorised body is compiled once per instruction set (row_stats_impl.h)
// and picked at run time.
#pragma once
#include <cstdint>

namespace dllm {
namespace cpu {

enum class LogitsType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

struct RowStatsParams {
  LogitsType type;
  int64_t V;
  int conf_kind;
  float temperature;
  const int64_t* suppress_ids;  // logits forced to -inf (ids outside [0, V) are ignored)
  int64_t n_suppress;
  const int64_t* zero_conf_ids;  // conf forced to 0 when x0 is one of these
  int64_t n_zero_conf;
};

struct RowNoise {
  const float* uniforms;  // [V] explicit uniforms, or nullptr for Philox
  uint64_t seed, offset;
  uint32_t position;
};

struct RowStats {
  bool valid;    // false: NaN or +inf in the row, or every value -inf
  int64_t x0;
  float pprob;   // exp(l[x0] - lse)
  float conf;    // by kind, NaN when invalid
};

RowStats row_stats(const void* row, const RowStatsParams& params, const RowNoise& noise);

// Name of the build row_stats runs: "avx512", "avx2" or "base".
const char* row_stats_isa();

// Per instruction set entry points (row_stats_<isa>.cpp; the AVX ones exist on x86-64 only).
RowStats row_stats_avx512(const void* row, const RowStatsParams& params, const RowNoise& noise);
RowStats row_stats_avx2(const void* row, const RowStatsParams& params, const RowNoise& noise);
RowStats row_stats_base(const void* row, const RowStatsParams& params, const RowNoise& noise);

}  // namespace cpu
}  // namespace dllm
