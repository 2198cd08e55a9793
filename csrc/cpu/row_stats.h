// One pass over one logits row: max, first-index argmax of the (optionally noisy) logits,
// log-sum-exp, chosen-token probability, margin and entropy accumulators (docs/fused_unmask.md §3).
// The pass yields mergeable partial statistics (RowPartial, docs/row_stats.md), so a row split
// over vocabulary shards or LM-head chunks merges to the statistics of the whole row.
// Raw pointers only; the vectorised body is compiled once per instruction set (row_stats_impl.h)
// and picked at run time.
#pragma once
#include <cstdint>

#include "../include/dllm/row_partial.h"

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
  int64_t vocab_start;  // global id of the row's first value (a vocabulary shard); 0 for a whole row
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

RowPartial row_partial(const void* row, const RowStatsParams& params, const RowNoise& noise);

// Merge of the partials of one row's consecutive slices, in slice order (first index wins ties).
// `top2` / `entropy`: whether m2 / ent are meaningful (margin / entropy confidence).
RowPartial merge_row_partials(const RowPartial* parts, int64_t n, bool top2, bool entropy);

// A row's statistics from its (merged) partial: x0, its clean probability and the confidence.
RowStats finish_row(const RowPartial& part, const RowStatsParams& params);

// The whole row in one pass: finish_row(row_partial(row)).
RowStats row_stats(const void* row, const RowStatsParams& params, const RowNoise& noise);

// Name of the build row_partial runs: "avx512", "avx2" or "base".
const char* row_stats_isa();

// Per instruction set entry points (row_stats_<isa>.cpp; the AVX ones exist on x86-64 only).
RowPartial row_partial_avx512(const void* row, const RowStatsParams& params, const RowNoise& noise);
RowPartial row_partial_avx2(const void* row, const RowStatsParams& params, const RowNoise& noise);
RowPartial row_partial_base(const void* row, const RowStatsParams& params, const RowNoise& noise);

}  // namespace cpu
}  // namespace dllm
