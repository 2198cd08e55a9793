// Native harness for scripts/sanitize_cpu.sh: runs every ISA build of the CPU row kernel
// (row_stats_base / _avx2 / _avx512, csrc/cpu/row_stats.h) under ASan + UBSan on rows allocated
// with exactly V elements (a read past the row is a heap-buffer-overflow), aligned and misaligned,
// every dtype and confidence kind, Philox and explicit noise, suppression lists (ids in and out of
// range), NaN / +inf / all -inf rows, ties, and vocabularies around the lane and chunk sizes.
// The op only ever runs the widest build the CPU has, so this is the only place the others run.
// Checks: the ISAs agree with each other (validity and x0 exactly, pprob/conf to 1e-4), and, without
// noise, with a float64 scalar computation of the same statistics. Exit 0 when all agree.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "cpu/row_stats.h"

using namespace dllm::cpu;

namespace {

using Fn = RowStats (*)(const void*, const RowStatsParams&, const RowNoise&);

struct Isa {
  const char* name;
  Fn fn;
};

int failures = 0;
long checks = 0;

void fail(const char* what, const char* isa, int64_t V, int type, int kind, double a, double b, uint64_t seed) {
  if (++failures <= 20)
    std::fprintf(stderr, "MISMATCH %s isa=%s V=%ld type=%d kind=%d got=%.9g want=%.9g case_seed=%lu\n", what, isa,
                 static_cast<long>(V), type, kind, a, b, static_cast<unsigned long>(seed));
}

bool close(double a, double b, double rtol, double atol) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
  return std::fabs(a - b) <= atol + rtol * std::fabs(b);
}

uint16_t to_half_bits(float f) {
  _Float16 h = static_cast<_Float16>(f);
  uint16_t b;
  std::memcpy(&b, &h, 2);
  return b;
}
float from_half_bits(uint16_t b) {
  _Float16 h;
  std::memcpy(&h, &b, 2);
  return static_cast<float>(h);
}
uint16_t to_bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return static_cast<uint16_t>(u >> 16);  // truncation: the value used is the rounded one below
}
float from_bf16_bits(uint16_t b) {
  uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Float64 statistics of a row without noise (docs/fused_unmask.md §3).
struct Ref {
  bool valid;
  int64_t x0;
  double pprob, conf;
};

Ref reference(const std::vector<float>& vals, const RowStatsParams& p) {
  std::vector<double> l(vals.begin(), vals.end());
  for (int64_t s = 0; s < p.n_suppress; ++s)
    if (p.suppress_ids[s] >= 0 && p.suppress_ids[s] < p.V) l[p.suppress_ids[s]] = -INFINITY;
  Ref r{true, 0, 0, 0};
  double m = -INFINITY;
  for (int64_t v = 0; v < p.V; ++v) {
    if (std::isnan(l[v]) || l[v] == INFINITY) r.valid = false;
    if (l[v] > m) m = l[v], r.x0 = v;
  }
  if (m == -INFINITY) r.valid = false;
  if (!r.valid) return r;
  double sum = 0;
  for (int64_t v = 0; v < p.V; ++v) sum += std::exp(l[v] - m);
  const double lse = m + std::log(sum);
  r.pprob = std::exp(l[r.x0] - lse);
  if (p.conf_kind == 0) {
    r.conf = r.pprob;
  } else if (p.conf_kind == 1) {
    double second = -INFINITY;
    bool shared = false;
    for (int64_t v = 0; v < p.V; ++v) {
      if (v == r.x0) continue;
      if (l[v] == m) shared = true;
      second = std::max(second, l[v]);
    }
    r.conf = shared ? 0.0 : r.pprob - std::exp(second - lse);
  } else {
    double ent = 0;
    for (int64_t v = 0; v < p.V; ++v) {
      const double q = std::exp(l[v] - lse);
      if (q > 0) ent += q * (l[v] - lse);
    }
    r.conf = ent;
  }
  for (int64_t z = 0; z < p.n_zero_conf; ++z)
    if (p.zero_conf_ids[z] == r.x0) r.conf = 0.0;
  return r;
}

}  // namespace

int main() {
  std::vector<Isa> isas{{"base", row_stats_base}};
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) isas.push_back({"avx2", row_stats_avx2});
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq"))
    isas.push_back({"avx512", row_stats_avx512});
#endif
  const int64_t sizes[] = {2, 3, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 257, 1000,
                           2047, 2048, 2049, 2050, 4095, 4096, 4097, 5003, 10007};
  int cases = 0;
  for (uint64_t seed = 0; seed < 1400; ++seed) {
    std::mt19937_64 rng(seed);
    auto uni = [&](double a, double b) { return std::uniform_real_distribution<double>(a, b)(rng); };
    auto pick = [&](int n) { return static_cast<int>(rng() % static_cast<uint64_t>(n)); };
    const int64_t V = sizes[pick(sizeof(sizes) / sizeof(sizes[0]))];
    const int type = pick(3);
    const int kind = pick(3);
    const bool sampling = pick(3) == 0;
    const bool explicit_noise = sampling && pick(2) == 0;
    const bool misaligned = pick(2) == 0;
    const int special = pick(10);  // 0 NaN, 1 +inf, 2 all -inf, 3 some -inf, 4 ties, 5 huge, else plain

    std::vector<float> vals(V);
    for (auto& v : vals) v = static_cast<float>(uni(-4, 4));
    vals[pick(static_cast<int>(V))] += static_cast<float>(uni(0, 14));
    if (special == 0) vals[pick(static_cast<int>(V))] = NAN;
    if (special == 1) vals[pick(static_cast<int>(V))] = INFINITY;
    if (special == 2) for (auto& v : vals) v = -INFINITY;
    if (special == 3) for (int k = 0; k < 1 + static_cast<int>(V) / 3; ++k) vals[pick(static_cast<int>(V))] = -INFINITY;
    if (special == 4) {
      const float top = 20.f;
      for (int k = 0; k < 3; ++k) vals[pick(static_cast<int>(V))] = top;
    }
    if (special == 5 && type == 0) vals[pick(static_cast<int>(V))] = 1e30f;

    // The row, exactly V elements of the dtype (plus one in front when misaligned).
    const size_t elem = type == 0 ? 4 : 2;
    char* block = static_cast<char*>(std::malloc(elem * static_cast<size_t>(V + (misaligned ? 1 : 0))));
    char* row = block + (misaligned ? elem : 0);
    for (int64_t v = 0; v < V; ++v) {
      if (type == 0) {
        std::memcpy(row + v * 4, &vals[v], 4);
      } else {
        const uint16_t b = type == 1 ? to_half_bits(vals[v]) : to_bf16_bits(vals[v]);
        vals[v] = type == 1 ? from_half_bits(b) : from_bf16_bits(b);  // the value the kernel sees
        std::memcpy(row + v * 2, &b, 2);
      }
    }
    std::vector<int64_t> suppress, zero;
    const int n_sup = pick(4);
    for (int k = 0; k < n_sup; ++k) suppress.push_back(pick(5) == 0 ? V + pick(7) : pick(static_cast<int>(V)));
    for (int k = 0; k < pick(3); ++k) zero.push_back(pick(static_cast<int>(V)));
    // Exactly-sized id lists (never read past n).
    int64_t* sup_p = suppress.empty() ? nullptr : static_cast<int64_t*>(std::malloc(8 * suppress.size()));
    int64_t* zero_p = zero.empty() ? nullptr : static_cast<int64_t*>(std::malloc(8 * zero.size()));
    if (sup_p) std::memcpy(sup_p, suppress.data(), 8 * suppress.size());
    if (zero_p) std::memcpy(zero_p, zero.data(), 8 * zero.size());
    float* uniforms = nullptr;
    if (explicit_noise) {
      uniforms = static_cast<float*>(std::malloc(4 * static_cast<size_t>(V)));
      for (int64_t v = 0; v < V; ++v) uniforms[v] = static_cast<float>(uni(1e-6, 1 - 1e-6));
    }

    RowStatsParams prm;
    prm.type = static_cast<LogitsType>(type);
    prm.V = V;
    prm.conf_kind = kind;
    prm.temperature = sampling ? static_cast<float>(uni(0.1, 1.5)) : 0.f;
    prm.suppress_ids = sup_p;
    prm.n_suppress = static_cast<int64_t>(suppress.size());
    prm.zero_conf_ids = zero_p;
    prm.n_zero_conf = static_cast<int64_t>(zero.size());
    RowNoise noise;
    noise.uniforms = uniforms;
    noise.seed = rng();
    noise.offset = rng() % 1000;
    noise.position = static_cast<uint32_t>(pick(4096));

    std::vector<RowStats> got;
    for (const Isa& isa : isas) got.push_back(isa.fn(row, prm, noise));
    for (size_t i = 1; i < isas.size(); ++i) {
      ++checks;
      if (got[i].valid != got[0].valid) fail("valid", isas[i].name, V, type, kind, got[i].valid, got[0].valid, seed);
      if (!got[0].valid) continue;
      if (got[i].x0 != got[0].x0) fail("x0", isas[i].name, V, type, kind, got[i].x0, got[0].x0, seed);
      if (!close(got[i].pprob, got[0].pprob, 1e-4, 1e-6))
        fail("pprob", isas[i].name, V, type, kind, got[i].pprob, got[0].pprob, seed);
      if (!close(got[i].conf, got[0].conf, 1e-4, 1e-5))
        fail("conf", isas[i].name, V, type, kind, got[i].conf, got[0].conf, seed);
    }
    if (!sampling) {
      const Ref r = reference(vals, prm);
      for (size_t i = 0; i < isas.size(); ++i) {
        ++checks;
        if (got[i].valid != r.valid) {
          fail("valid vs float64", isas[i].name, V, type, kind, got[i].valid, r.valid, seed);
          continue;
        }
        if (!r.valid) continue;
        if (got[i].x0 != r.x0) fail("x0 vs float64", isas[i].name, V, type, kind, got[i].x0, r.x0, seed);
        if (!close(got[i].pprob, r.pprob, 1e-4, 1e-6))
          fail("pprob vs float64", isas[i].name, V, type, kind, got[i].pprob, r.pprob, seed);
        if (!close(got[i].conf, r.conf, 1e-4, 1e-5))
          fail("conf vs float64", isas[i].name, V, type, kind, got[i].conf, r.conf, seed);
      }
    }
    std::free(block);
    std::free(sup_p);
    std::free(zero_p);
    std::free(uniforms);
    ++cases;
  }
  std::printf("row_stats harness: %d rows x %zu ISA builds (", cases, isas.size());
  for (size_t i = 0; i < isas.size(); ++i) std::printf("%s%s", i ? ", " : "", isas[i].name);
  std::printf("), %ld comparisons, %d mismatches\n", checks, failures);
  return failures == 0 ? 0 : 1;
}
