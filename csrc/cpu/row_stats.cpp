// Picks the widest row_stats build the running CPU supports (once).
#include "row_stats.h"

namespace dllm {
namespace cpu {
namespace {

using RowStatsFn = RowStats (*)(const void*, const RowStatsParams&, const RowNoise&);

RowStatsFn pick_row_stats() {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
    return row_stats_avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return row_stats_avx2;
#endif
  return row_stats_base;
}

}  // namespace

RowStats row_stats(const void* row, const RowStatsParams& params, const RowNoise& noise) {
  static const RowStatsFn fn = pick_row_stats();
  return fn(row, params, noise);
}

}  // namespace cpu
}  // namespace dllm
