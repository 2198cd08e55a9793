// Picks the widest row_stats build the running CPU supports (once). DLLM_CPU_ISA=base|avx2|avx512
// caps the choice, so tests and benchmarks can run every build on one machine.
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "row_stats.h"

namespace dllm {
namespace cpu {
namespace {

using RowStatsFn = RowStats (*)(const void*, const RowStatsParams&, const RowNoise&);

struct RowStatsBuild {
  RowStatsFn fn;
  const char* isa;
};

int isa_cap() {  // 0 base, 1 avx2, 2 avx512
  const char* env = std::getenv("DLLM_CPU_ISA");
  if (env == nullptr || *env == '\0') return 2;
  const std::string want(env);
  if (want == "base") return 0;
  if (want == "avx2") return 1;
  if (want == "avx512") return 2;
  throw std::invalid_argument("DLLM_CPU_ISA must be base, avx2 or avx512, got '" + want + "'");
}

RowStatsBuild pick_row_stats() {
  const int cap = isa_cap();
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  if (cap >= 2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
    return {row_stats_avx512, "avx512"};
  if (cap >= 1 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return {row_stats_avx2, "avx2"};
#else
  (void)cap;
#endif
  return {row_stats_base, "base"};
}

const RowStatsBuild& chosen() {
  static const RowStatsBuild build = pick_row_stats();
  return build;
}

}  // namespace

RowStats row_stats(const void* row, const RowStatsParams& params, const RowNoise& noise) {
  return chosen().fn(row, params, noise);
}

const char* row_stats_isa() { return chosen().isa; }

}  // namespace cpu
}  // namespace dllm
