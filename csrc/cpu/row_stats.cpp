// Picks the widest row_stats build the running CPU supports (once). DLLM_CPU_ISA=base|avx2|avx512
// caps the choice, so tests and benchmarks can run every build on one machine.
#include <math.h>

#include <cstdlib>
#include <stdexcept>
#include <string>

#include "row_stats.h"

namespace dllm {
namespace cpu {
namespace {

using RowStatsFn = RowPartial (*)(const void*, const RowStatsParams&, const RowNoise&);

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
    return {row_partial_avx512, "avx512"};
  if (cap >= 1 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return {row_partial_avx2, "avx2"};
#else
  (void)cap;
#endif
  return {row_partial_base, "base"};
}

const RowStatsBuild& chosen() {
  static const RowStatsBuild build = pick_row_stats();
  return build;
}

}  // namespace

RowPartial row_partial(const void* row, const RowStatsParams& params, const RowNoise& noise) {
  return chosen().fn(row, params, noise);
}

// The same merge as the Triton split-row merge (triton_kernels/fused_unmask_stats.py), so every backend
// merges shards alike. A single partial merges to itself, bit for bit.
RowPartial merge_row_partials(const RowPartial* parts, int64_t n, bool top2, bool entropy) {
  const float neg_inf = -__builtin_inff();
  RowPartial out = parts[0];
  if (n == 1) return out;
  out.bad = false;
  out.m1 = neg_inf;
  for (int64_t i = 0; i < n; ++i) {
    out.bad |= parts[i].bad;
    if (parts[i].m1 > out.m1) out.m1 = parts[i].m1;
  }
  out.idx = -1;
  int64_t n_top = 0;
  float m2 = neg_inf, noisy_best = neg_inf;
  for (int64_t i = 0; i < n; ++i) {
    const RowPartial& p = parts[i];
    if (p.m1 == out.m1) {
      ++n_top;
      if (out.idx < 0 || (p.idx >= 0 && p.idx < out.idx)) out.idx = p.idx;
    } else if (p.m1 > m2) {
      m2 = p.m1;
    }
    if (p.m2 > m2) m2 = p.m2;
    if (p.noisy_best > noisy_best) noisy_best = p.noisy_best;
  }
  out.m2 = !top2 ? neg_inf : n_top > 1 ? out.m1 : m2;
  // Sums relative to the common maximum; slices without a finite maximum hold no mass.
  float sum = 0.f, ent = 0.f;
  for (int64_t i = 0; i < n; ++i) {
    const RowPartial& p = parts[i];
    if (p.m1 == neg_inf) continue;
    const float d = p.m1 - out.m1;
    const float w = expf(d);
    sum += w * p.sum;
    if (entropy) ent += w * (p.ent + d * p.sum);
  }
  out.sum = sum;
  out.ent = ent;
  out.noisy_best = noisy_best;
  out.noisy_idx = -1;
  out.noisy_clean = neg_inf;
  if (noisy_best > neg_inf) {
    for (int64_t i = 0; i < n; ++i) {
      const RowPartial& p = parts[i];
      if (p.noisy_best == noisy_best && p.noisy_idx >= 0 && (out.noisy_idx < 0 || p.noisy_idx < out.noisy_idx)) {
        out.noisy_idx = p.noisy_idx;
        out.noisy_clean = p.noisy_clean;
      }
    }
  }
  return out;
}

RowStats finish_row(const RowPartial& part, const RowStatsParams& prm) {
  const float neg_inf = -__builtin_inff();
  const bool sampling = prm.temperature > 0.f;
  RowStats out;
  out.valid = !part.bad && part.m1 != neg_inf && (!sampling || part.noisy_idx >= 0);
  out.x0 = -1;
  out.pprob = 0.f;
  out.conf = __builtin_nanf("");
  if (!out.valid) return out;
  out.x0 = sampling ? part.noisy_idx : part.idx;
  const float lx0 = sampling ? part.noisy_clean : part.m1;
  out.pprob = expf(lx0 - part.m1) / part.sum;
  if (prm.conf_kind == 1) {
    out.conf = (1.f - expf(part.m2 - part.m1)) / part.sum;
  } else if (prm.conf_kind == 2) {
    out.conf = part.ent / part.sum - logf(part.sum);
  } else {
    out.conf = out.pprob;
  }
  for (int64_t z = 0; z < prm.n_zero_conf; ++z)
    if (prm.zero_conf_ids[z] == out.x0) out.conf = 0.f;
  return out;
}

RowStats row_stats(const void* row, const RowStatsParams& params, const RowNoise& noise) {
  return finish_row(row_partial(row, params, noise), params);
}

const char* row_stats_isa() { return chosen().isa; }

}  // namespace cpu
}  // namespace dllm
