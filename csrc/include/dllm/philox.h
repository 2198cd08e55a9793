// Philox4x32-10 counter-based generator (Salmon et al., SC'11), shared by every native backend.
// Raw C++ only: compiled for the host and, under nvcc, for the device.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define DLLM_HD __host__ __device__ __forceinline__
#else
#define DLLM_HD inline
#endif

namespace dllm {

// The round's multipliers and Weyl key increments (the generator's definition), and the uniform's
// scale 2^-23 and offset 2^-24: the vector CPU pass (cpu/row_stats_impl.h) uses the same numbers.
constexpr uint32_t kPhiloxM0 = 0xD2511F53u, kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u, kPhiloxW1 = 0xBB67AE85u;
constexpr float kUniformScale = 1.1920928955078125e-07f, kUniformOffset = 5.9604644775390625e-08f;

struct Philox4 {
  uint32_t v[4];
};

DLLM_HD Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                              uint32_t k1) {
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(kPhiloxM0) * c0;
    const uint64_t p1 = static_cast<uint64_t>(kPhiloxM1) * c2;
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// Uniform in (0, 1) from 23 random bits, (k + 1/2) * 2^-23: every value is exact in float32,
// so every backend (and the float64 reference) gets the same number.
DLLM_HD float bits_to_uniform(uint32_t r) {
  return static_cast<float>(r >> 9) * kUniformScale + kUniformOffset;
}

// The uniform behind the Gumbel noise of (vocab index v, position p) at a step: counter
// (v, p, offset lo, offset hi), key (seed lo, seed hi). See docs/fused_unmask.md.
DLLM_HD float noise_uniform(uint64_t seed, uint64_t offset, uint32_t v, uint32_t p) {
  const Philox4 r = philox4x32_10(v, p, static_cast<uint32_t>(offset),
                                  static_cast<uint32_t>(offset >> 32),
                                  static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  return bits_to_uniform(r.v[0]);
}

// Vocab index reserved for the per-position stream of `random` remasking.
constexpr uint32_t kRankStream = 0xffffffffu;

}  // namespace dllm
