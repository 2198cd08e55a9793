// Vectorised body of row_stats, written with GCC vector extensions so one source serves every
// instruction set. Include from a file that defines DLLM_VEC_BYTES and DLLM_ROW_PARTIAL_NAME and,
// for a wider ISA, sets `#pragma GCC target` first. Everything but the entry point has internal
// linkage, so copies built for different ISAs can never be merged by the linker.
#include <math.h>
#include <string.h>

#include <cstdint>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "../include/dllm/philox.h"
#include "row_stats.h"

namespace dllm {
namespace cpu {
namespace {

constexpr int kLanes = DLLM_VEC_BYTES / 4;
constexpr int kChunk = 2048;  // floats staged per chunk: stays in L1 for the second pass
typedef float vf __attribute__((vector_size(DLLM_VEC_BYTES)));
typedef int32_t vi __attribute__((vector_size(DLLM_VEC_BYTES)));
typedef uint32_t vu __attribute__((vector_size(DLLM_VEC_BYTES)));
typedef uint16_t vh __attribute__((vector_size(DLLM_VEC_BYTES / 2)));

// Bound on the Gumbel values our uniforms can give: -log(-log(1 - 2^-24)) = 16.6355 (rounded up
// so that float32 rounding of the noise can never exceed it).
constexpr float kGumbelMax = 16.65f;

inline vf splat(float v) { return vf{} + v; }

inline vf bits_to_float(vu b) {
  vf f;
  memcpy(&f, &b, sizeof f);
  return f;
}

// exp(x) for a vector; values below -87 give 0 (so -inf and NaN give 0: such rows are rejected).
inline vf vexp(vf x) {
  const vf lo = splat(-87.0f), hi = splat(88.0f);
  const vi tiny = x > lo;
  x = x > lo ? x : lo;
  x = x < hi ? x : hi;
  const vf t = x * 1.44269504088896341f;
  const vf n = __builtin_convertvector(__builtin_convertvector(t + (t >= 0 ? splat(0.5f) : splat(-0.5f)), vi), vf);
  vf r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  // Minimax polynomial for exp on [-ln2/2, ln2/2] (Cephes expf coefficients).
  vf p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  // Signed conversion first: n is negative here, and float->unsigned of a negative is undefined.
  const vu scale = reinterpret_cast<vu>(__builtin_convertvector(n, vi) + 127) << 23;
  const vf out = p * bits_to_float(scale);
  return tiny ? out : splat(0.f);
}

// log(x) for positive normal x (Cephes logf polynomial): used for the Gumbel noise, whose inputs
// u and -log(u) lie in [2^-24, 17].
inline vf vlog(vf x) {
  vu bits;
  memcpy(&bits, &x, sizeof bits);
  vi e = reinterpret_cast<vi>(bits >> 23) - 127;
  vf m = bits_to_float((bits & 0x007fffffu) | 0x3f800000u);  // [1, 2)
  const vi big = m > 1.41421356f;
  m = big ? m * 0.5f : m;
  e = big ? e + 1 : e;
  const vf f = m - 1.0f;
  const vf z = f * f;
  vf y = splat(7.0376836292e-2f);
  y = y * f - 1.1514610310e-1f;
  y = y * f + 1.1676998740e-1f;
  y = y * f - 1.2420140846e-1f;
  y = y * f + 1.4249322787e-1f;
  y = y * f - 1.6668057665e-1f;
  y = y * f + 2.0000714765e-1f;
  y = y * f - 2.4999993993e-1f;
  y = y * f + 3.3333331174e-1f;
  y = y * f * z;
  const vf ef = __builtin_convertvector(e, vf);
  y = y - 2.12194440e-4f * ef;
  y = y - 0.5f * z;
  return f + y + 0.693359375f * ef;
}

typedef uint64_t vq __attribute__((vector_size(DLLM_VEC_BYTES)));  // the same bits as 64-bit lanes

// Is any lane of a comparison mask set? OR of its 64-bit words (a lane-by-lane scalar loop costs
// as much as a Philox round here).
inline bool any_lane(vi mask) {
  uint64_t words[DLLM_VEC_BYTES / 8];
  memcpy(words, &mask, sizeof words);
  uint64_t any = 0;
  for (uint64_t w : words) any |= w;
  return any != 0;
}

// Products of the low 32 bits of each 64-bit lane with m, as full 64-bit results. GCC compiles the
// generic form to a 64 x 64-bit multiply (vpmullq: several uops), so x86 uses the 32 x 32 -> 64 one.
inline vq mul_even_u32(vq a, uint32_t m) {
  const vq b = vq{} + static_cast<uint64_t>(m);
#if defined(__x86_64__) && DLLM_VEC_BYTES == 64 && !defined(__clang__)
  // The builtin behind _mm512_mul_epu32, with a zero pass-through: GCC 12's intrinsic passes an
  // "undefined" vector that -Wmaybe-uninitialized flags (GCC PR 105593).
  return reinterpret_cast<vq>(__builtin_ia32_pmuludq512_mask(reinterpret_cast<__v16si>(a), reinterpret_cast<__v16si>(b),
                                                             reinterpret_cast<__v8di>(vq{}), static_cast<__mmask8>(-1)));
#elif defined(__x86_64__) && DLLM_VEC_BYTES == 64
  return reinterpret_cast<vq>(_mm512_mul_epu32(reinterpret_cast<__m512i>(a), reinterpret_cast<__m512i>(b)));
#elif defined(__x86_64__) && DLLM_VEC_BYTES == 32
  return reinterpret_cast<vq>(_mm256_mul_epu32(reinterpret_cast<__m256i>(a), reinterpret_cast<__m256i>(b)));
#elif defined(__x86_64__) && DLLM_VEC_BYTES == 16
  return reinterpret_cast<vq>(_mm_mul_epu32(reinterpret_cast<__m128i>(a), reinterpret_cast<__m128i>(b)));
#else
  return (a & 0xffffffffull) * b;
#endif
}

// Philox's 32 x 32 -> 64 multiply per 32-bit lane: even lanes and odd lanes as two 64-bit
// products, whose halves are interleaved back into (hi, lo).
inline void mulhilo(uint32_t m, vu a, vu& hi, vu& lo) {
  const vq q = reinterpret_cast<vq>(a);
  const vq even = mul_even_u32(q, m), odd = mul_even_u32(q >> 32, m);
  const vq mask_lo = vq{} + 0xffffffffull;
  lo = reinterpret_cast<vu>((even & mask_lo) | (odd << 32));
  hi = reinterpret_cast<vu>((even >> 32) | (odd & ~mask_lo));
}

// The uniforms of philox.h's noise_uniform for kLanes consecutive vocab indices, lane-parallel.
inline vf philox_uniforms(vu v, uint32_t position, uint64_t seed, uint64_t offset) {
  vu c0 = v, c1 = vu{} + position, c2 = vu{} + static_cast<uint32_t>(offset),
     c3 = vu{} + static_cast<uint32_t>(offset >> 32);
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    vu hi0, lo0, hi1, lo1;
    mulhilo(kPhiloxM0, c0, hi0, lo0);
    mulhilo(kPhiloxM1, c2, hi1, lo1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  const vf k = __builtin_convertvector(reinterpret_cast<vi>(c0 >> 9), vf);
  return k * kUniformScale + kUniformOffset;
}

template <typename T>
inline vf load_lanes(const T* src);

template <>
inline vf load_lanes<float>(const float* src) {
  vf v;
  memcpy(&v, src, sizeof v);
  return v;
}

template <>
inline vf load_lanes<uint16_t>(const uint16_t* src) {  // bfloat16: the top half of a float32
  vh h;
  memcpy(&h, src, sizeof h);
  return bits_to_float(__builtin_convertvector(h, vu) << 16);
}

struct Half {
  uint16_t bits;
};

template <>
inline vf load_lanes<Half>(const Half* src) {  // IEEE half, subnormals and inf/NaN included
  vh h;
  memcpy(&h, src, sizeof h);
  const vu w = __builtin_convertvector(h, vu);
  const vu sign = (w & 0x8000u) << 16;
  const vu em = w & 0x7fffu;
  const vf finite = bits_to_float(em << 13) * 5.192296858534828e+33f;  // 2^112 rebias
  vu fb;
  memcpy(&fb, &finite, sizeof fb);
  const vu special = (em << 13) | 0x7f800000u;
  const vu bits = (em >= 0x7c00u) ? special : fb;
  return bits_to_float(bits | sign);
}

// 0, 1, ..., kLanes - 1.
inline vi lane_iota() {
  vi ids;
  for (int l = 0; l < kLanes; ++l) ids[l] = l;
  return ids;
}

// The first `count` (< kLanes) values at src, -inf in the lanes past them: the lane loader run on a
// zero-padded copy, so a row's tail is never read past its end.
template <typename T>
inline vf load_lanes_tail(const T* src, int64_t count) {
  T tmp[kLanes];
  memset(tmp, 0, sizeof tmp);
  memcpy(tmp, src, sizeof(T) * static_cast<size_t>(count));
  const vf v = load_lanes<T>(tmp);
  return lane_iota() < static_cast<int32_t>(count) ? v : splat(-__builtin_inff());
}

// Uniforms of the kLanes vocab entries from `first` on: Philox, or the explicit tensor (0.5 past V).
// Uniforms of the lanes at local vocab indices first..first + kLanes: explicit ones are indexed
// locally (the caller's slice), Philox ones by the global token id vocab_start + index, so a shard
// of the vocabulary draws exactly the noise the whole row would.
inline vf lane_uniforms(const RowNoise& noise, int64_t first, int64_t V, int64_t vocab_start) {
  if (noise.uniforms) {
    float tmp[kLanes];
    for (int l = 0; l < kLanes; ++l) tmp[l] = first + l < V ? noise.uniforms[first + l] : 0.5f;
    vf u;
    memcpy(&u, tmp, sizeof u);
    return u;
  }
  vu idx;
  for (int l = 0; l < kLanes; ++l) idx[l] = static_cast<uint32_t>(vocab_start + first + l);
  return philox_uniforms(idx, noise.position, noise.seed, noise.offset);
}

// The Gumbel-perturbed values v + T * g, g = -log(-log u).
inline vf gumbel_noisy(vf v, vf u, float temp) { return v + temp * -vlog(-vlog(u)); }

// Index of a largest value of the raw row (suppression not applied; NaN never wins).
template <typename T>
int64_t raw_argmax(const T* row, int64_t V) {
  vf best = splat(-__builtin_inff());
  vi best_idx = vi{} + 0;
  const vi lane_ids = lane_iota();
  for (int64_t i = 0; i < V; i += kLanes) {
    const vf v = i + kLanes <= V ? load_lanes<T>(row + i) : load_lanes_tail<T>(row + i, V - i);
    const vi gt = v > best;
    best = gt ? v : best;
    best_idx = gt ? lane_ids + static_cast<int32_t>(i) : best_idx;
  }
  int64_t idx = -1;
  float m = -__builtin_inff();
  for (int l = 0; l < kLanes; ++l)
    if (best[l] > m) m = best[l], idx = best_idx[l];
  return idx;
}

// A lower bound for the row's winning noisy value: the noisy value of its raw argmax, computed by
// the same vector code as the main pass (lane independent, so the same bits), less a margin that
// covers any rounding difference. -inf when there is no usable candidate.
template <typename T>
float seed_noisy_bound(const T* row, const RowStatsParams& prm, const RowNoise& noise) {
  const int64_t j = raw_argmax(row, prm.V);
  if (j < 0) return -__builtin_inff();
  for (int64_t s = 0; s < prm.n_suppress; ++s)
    if (prm.suppress_ids[s] - prm.vocab_start == j) return -__builtin_inff();
  T tmp[kLanes];
  memset(tmp, 0, sizeof tmp);
  tmp[0] = row[j];
  const float noisy = gumbel_noisy(load_lanes<T>(tmp), lane_uniforms(noise, j, prm.V, prm.vocab_start), prm.temperature)[0];
  if (!(noisy > -__builtin_inff() && noisy < __builtin_inff())) return -__builtin_inff();
  return noisy - 1e-5f * (fabsf(noisy) + 1.f);
}

// Per-lane accumulators of the pass; merged across lanes at the end.
struct Lanes {
  vf m1, m2;  // largest and second largest clean value (m2 == m1 when the maximum is shared)
  vi idx;     // first index of m1 within the lane
  vi bad;     // NaN or +inf seen
  vf sum, ent;
};

template <typename T, bool kTop2, bool kEntropy>
RowPartial row_partial_typed(const T* row, const RowStatsParams& prm, const RowNoise& noise) {
  const int64_t V = prm.V;
  const float neg_inf = -__builtin_inff();
  alignas(64) float buf[kChunk + kLanes];
  Lanes ln;
  ln.m1 = splat(neg_inf);
  ln.m2 = splat(neg_inf);
  ln.idx = vi{} + 0;
  ln.bad = vi{} + 0;
  ln.sum = splat(0.f);
  ln.ent = splat(0.f);
  const vi lane_ids = lane_iota();

  float run_max = neg_inf;  // the max the lane sums are relative to
  const bool sampling = prm.temperature > 0.f;
  const float temp = prm.temperature;
  // Pruning bound: max over lanes of nz.best, seeded before the first chunk with (a hair below) the
  // noisy value of the row's largest clean logit, so that a peaked or low-temperature row prunes
  // from its start and not only after the chunk holding its peak. Exact: an entry is skipped only
  // when even the largest possible noise cannot lift it to a value some entry already has.
  float best_noisy = sampling ? seed_noisy_bound(row, prm, noise) : neg_inf;
  struct {
    vf best, clean;
    vi idx;
  } nz{splat(neg_inf), splat(neg_inf), vi{} + 0};

  for (int64_t c0 = 0; c0 < V; c0 += kChunk) {
    const int64_t n = V - c0 < kChunk ? V - c0 : kChunk;
    const int64_t n_full = n / kLanes * kLanes;
    for (int64_t i = 0; i < n_full; i += kLanes) {
      const vf v = load_lanes<T>(row + c0 + i);
      memcpy(buf + i, &v, sizeof v);
    }
    if (n_full < n) {  // tail: lanes past the row read as -inf
      const vf v = load_lanes_tail<T>(row + c0 + n_full, n - n_full);
      memcpy(buf + n_full, &v, sizeof v);
    }
    const int64_t n_pad = (n + kLanes - 1) / kLanes * kLanes;
    for (int64_t s = 0; s < prm.n_suppress; ++s) {
      const int64_t id = prm.suppress_ids[s] - prm.vocab_start - c0;
      if (id >= 0 && id < n) buf[id] = neg_inf;
    }

    // Pass A: maxima, first-index argmax, non-finite check.
    vf cmax = splat(neg_inf);
    for (int64_t i = 0; i < n_pad; i += kLanes) {
      vf v;
      memcpy(&v, buf + i, sizeof v);
      const vi gi = lane_ids + static_cast<int32_t>(c0 + i);
      ln.bad |= (v != v) | (v == splat(__builtin_inff()));
      const vi gt = v > ln.m1;
      if (kTop2) ln.m2 = gt ? ln.m1 : (v > ln.m2 ? v : ln.m2);
      ln.m1 = gt ? v : ln.m1;
      ln.idx = gt ? gi : ln.idx;
      cmax = v > cmax ? v : cmax;
    }
    float chunk_max = neg_inf;
    for (int l = 0; l < kLanes; ++l) chunk_max = cmax[l] > chunk_max ? cmax[l] : chunk_max;

    if (sampling) {
      // Gumbel-max, lane-parallel: only values within T * kGumbelMax of the best noisy value so far
      // can still win, so vectors with no such lane skip the noise entirely.
      const float slack = temp * kGumbelMax;
      for (int64_t i = 0; i < n_pad; i += kLanes) {
        vf v;
        memcpy(&v, buf + i, sizeof v);
        const vi live = v + slack >= splat(best_noisy);
        if (!any_lane(live)) continue;
        const vf noisy = gumbel_noisy(v, lane_uniforms(noise, c0 + i, V, prm.vocab_start), temp);
        const vi better = (noisy > nz.best) & live;
        nz.best = better ? noisy : nz.best;
        nz.clean = better ? v : nz.clean;
        nz.idx = better ? lane_ids + static_cast<int32_t>(c0 + i) : nz.idx;
      }
      for (int l = 0; l < kLanes; ++l) best_noisy = nz.best[l] > best_noisy ? nz.best[l] : best_noisy;
    }

    // Pass B: sum of exp (and entropy numerator) relative to the running max.
    if (chunk_max > run_max) {
      if (run_max != neg_inf) {
        const float d = run_max - chunk_max;
        const float scale = expf(d);
        if (kEntropy) ln.ent = (ln.ent + d * ln.sum) * scale;
        ln.sum = ln.sum * scale;
      }
      run_max = chunk_max;
    }
    if (run_max == neg_inf || !(run_max == run_max)) continue;
    const vf m = splat(run_max);
    for (int64_t i = 0; i < n_pad; i += kLanes) {
      vf v;
      memcpy(&v, buf + i, sizeof v);
      const vf t = v - m;
      const vf e = vexp(t);
      ln.sum += e;
      if (kEntropy) ln.ent += e > 0.f ? e * t : splat(0.f);
    }
  }

  // Merge lanes: largest value, lowest index among equals; top-2 of the union.
  float m1 = neg_inf, m2 = neg_inf, sum = 0.f, ent = 0.f;
  int64_t idx = V;
  bool bad = false;
  for (int l = 0; l < kLanes; ++l) {
    bad |= ln.bad[l] != 0;
    sum += ln.sum[l];
    ent += ln.ent[l];
  }
  for (int l = 0; l < kLanes; ++l) {
    const float a = ln.m1[l];
    if (kTop2) {
      const float lower = a < m1 ? a : m1;
      m2 = lower > m2 ? lower : m2;
      m2 = ln.m2[l] > m2 ? ln.m2[l] : m2;
    }
    if (a > m1) {
      m1 = a;
      idx = ln.idx[l];
    } else if (a == m1 && ln.idx[l] < idx) {
      idx = ln.idx[l];
    }
  }

  // Noisy argmax across lanes: largest value, lowest index among equals (a sequential first-index scan).
  int64_t best_noisy_idx = -1;
  float best_clean = neg_inf, b = neg_inf;
  if (sampling) {
    for (int l = 0; l < kLanes; ++l) {
      if (!(nz.best[l] > neg_inf)) continue;
      if (nz.best[l] > b || (nz.best[l] == b && nz.idx[l] < best_noisy_idx)) {
        b = nz.best[l];
        best_noisy_idx = nz.idx[l];
        best_clean = nz.clean[l];
      }
    }
  }

  // Ids leave as global ids; -1 where the slice holds no finite (noisy) maximum.
  RowPartial out;
  out.m1 = m1;
  out.m2 = m2;
  out.sum = sum;
  out.ent = ent;
  out.idx = m1 != neg_inf ? prm.vocab_start + idx : -1;
  out.noisy_best = best_noisy_idx >= 0 ? b : neg_inf;
  out.noisy_clean = best_clean;
  out.noisy_idx = best_noisy_idx >= 0 ? prm.vocab_start + best_noisy_idx : -1;
  out.bad = bad;
  return out;
}

template <typename T>
RowPartial row_partial_kind(const T* row, const RowStatsParams& prm, const RowNoise& noise) {
  if (prm.conf_kind == 1) return row_partial_typed<T, true, false>(row, prm, noise);
  if (prm.conf_kind == 2) return row_partial_typed<T, false, true>(row, prm, noise);
  return row_partial_typed<T, false, false>(row, prm, noise);
}

}  // namespace

RowPartial DLLM_ROW_PARTIAL_NAME(const void* row, const RowStatsParams& prm, const RowNoise& noise) {
  switch (prm.type) {
    case LogitsType::kFloat16:
      return row_partial_kind(static_cast<const Half*>(row), prm, noise);
    case LogitsType::kBFloat16:
      return row_partial_kind(static_cast<const uint16_t*>(row), prm, noise);
    default:
      return row_partial_kind(static_cast<const float*>(row), prm, noise);
  }
}

}  // namespace cpu
}  // namespace dllm
