// Statistics pass of fused_unmask (docs/fused_unmask.md §2-4): one read of each logits row that
// this step reads, computing every statistic every policy needs. Raw pointers; no torch headers.
//
// Work split: a row's vocabulary is cut into tiles (fused_unmask_launch.h: stats_splits/stats_tile, a
// function of V only); one 256-thread block reduces one tile of one row to a RowPartial, and the
// policy kernel merges a row's partials in tile order. Inside a tile, thread t owns the 16-byte
// groups t, t + 256, ... and folds them in ascending order, whether the row is 16-byte aligned
// (vector loads) or not (scalar loads): so the float32 result of a row never depends on its
// address, its batch slot or the batch size.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math.h>

#include <cstdint>

#include "../include/dllm/philox.h"
#include "../include/dllm/policy.h"
#include "fused_unmask_launch.h"

namespace dllm {
namespace cuda {

constexpr int kStatsThreads = 256;
constexpr int kStatsUnroll = 4;  // 16-byte loads in flight per thread
// Bound on the Gumbel noise of our uniforms: -log(-log(1 - 2^-24)) = 16.6355, rounded up (as in
// csrc/cpu/row_stats_impl.h) so that a value more than T * 16.65 below the best noisy value of
// the thread can be skipped without drawing its noise.
constexpr float kGumbelMax = 16.65f;

// ---- loading: 16-byte groups of 4 (fp32) or 8 (fp16/bf16) values, converted to float ----------

template <typename T>
struct Elem;
template <>
struct Elem<float> {
  static constexpr int kGroup = 4;
  __device__ static float load(const float* p) { return __ldg(p); }
  __device__ static void unpack(uint4 w, float* f) {
    f[0] = __uint_as_float(w.x); f[1] = __uint_as_float(w.y);
    f[2] = __uint_as_float(w.z); f[3] = __uint_as_float(w.w);
  }
};
template <>
struct Elem<__nv_bfloat16> {
  static constexpr int kGroup = 8;
  __device__ static float load(const __nv_bfloat16* p) {
    return __uint_as_float(static_cast<uint32_t>(__ldg(reinterpret_cast<const unsigned short*>(p))) << 16);
  }
  __device__ static void unpack(uint4 w, float* f) {  // little endian: the low half comes first
    const uint32_t ws[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      f[2 * i] = __uint_as_float(ws[i] << 16);
      f[2 * i + 1] = __uint_as_float(ws[i] & 0xffff0000u);
    }
  }
};
template <>
struct Elem<__half> {
  static constexpr int kGroup = 8;
  __device__ static float load(const __half* p) {
    return __half2float(__ushort_as_half(__ldg(reinterpret_cast<const unsigned short*>(p))));
  }
  __device__ static void unpack(uint4 w, float* f) {
    const uint32_t ws[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      f[2 * i] = __half2float(__ushort_as_half(static_cast<unsigned short>(ws[i] & 0xffffu)));
      f[2 * i + 1] = __half2float(__ushort_as_half(static_cast<unsigned short>(ws[i] >> 16)));
    }
  }
};

// ---- per-thread accumulator -------------------------------------------------------------------

struct NoiseCtx {
  const float* uniforms;  // this row's explicit uniforms [V], or nullptr for Philox
  uint64_t seed, offset;
  uint32_t position;
  float temperature, slack;  // slack = temperature * kGumbelMax
};

struct StatsAcc {
  float m1, m2, sum, ent, noisy, noisy_clean;
  int32_t i1, noisy_idx;
  bool bad;  // NaN or +inf seen
};

__device__ __forceinline__ StatsAcc acc_empty() {
  const float ninf = -INFINITY;
  return StatsAcc{ninf, ninf, 0.f, 0.f, ninf, ninf, INT32_MAX, INT32_MAX, false};
}

__device__ __forceinline__ float noise_gumbel_u(const NoiseCtx& nz, int64_t v) {
  return nz.uniforms ? __ldg(nz.uniforms + v)
                     : noise_uniform(nz.seed, nz.offset, static_cast<uint32_t>(v), nz.position);
}

// Folds n (<= kGroup) consecutive values starting at vocab index v0, in index order.
template <int kGroup, bool kSample>
__device__ __forceinline__ void acc_group(StatsAcc& a, float* f, int n, int64_t v0, bool top2,
                                          bool entropy, const uint32_t* suppress, int64_t tile_lo,
                                          const NoiseCtx& nz) {
  if (suppress) {
#pragma unroll
    for (int i = 0; i < kGroup; ++i) {
      const int64_t k = v0 + i - tile_lo;
      if (i < n && (suppress[k >> 5] >> (k & 31)) & 1u) f[i] = -INFINITY;
    }
  }
  const float old_max = a.m1;
#pragma unroll
  for (int i = 0; i < kGroup; ++i) {
    if (i >= n) break;
    const float v = f[i];
    if (!(v < INFINITY)) {  // NaN or +inf: the row is invalid; keep the sums finite
      a.bad = true;
      f[i] = -INFINITY;
      continue;
    }
    if (v > a.m1) {
      a.m2 = a.m1;
      a.m1 = v;
      a.i1 = static_cast<int32_t>(v0 + i);
    } else if (top2 && v > a.m2) {
      a.m2 = v;
    }
    if (kSample && v > -INFINITY && v + nz.slack >= a.noisy) {
      const float u = noise_gumbel_u(nz, v0 + i);
      // Same operation order and rounding as the CPU op: v + T * (-log(-log u)), no FMA.
      const float noisy = __fadd_rn(v, __fmul_rn(nz.temperature, -logf(-logf(u))));
      if (noisy > a.noisy) {
        a.noisy = noisy;
        a.noisy_clean = v;
        a.noisy_idx = static_cast<int32_t>(v0 + i);
      }
    }
  }
  // Online softmax: rescale the sums once per group when the maximum moved.
  if (a.m1 > old_max && old_max > -INFINITY) {
    const float d = old_max - a.m1;
    const float scale = expf(d);
    if (entropy) a.ent = (a.ent + d * a.sum) * scale;
    a.sum *= scale;
  }
  if (a.m1 == -INFINITY) return;
#pragma unroll
  for (int i = 0; i < kGroup; ++i) {
    if (i >= n) break;
    if (f[i] == -INFINITY) continue;
    const float t = f[i] - a.m1;
    const float e = expf(t);
    a.sum += e;
    if (entropy) a.ent += e * t;
  }
}

// Merge of two partial results (commutative; deterministic for a fixed call order).
__device__ __forceinline__ StatsAcc acc_merge(const StatsAcc& a, const StatsAcc& b, bool top2,
                                              bool entropy) {
  StatsAcc r;
  r.bad = a.bad || b.bad;
  r.m1 = fmaxf(a.m1, b.m1);
  r.i1 = a.m1 > b.m1 ? a.i1 : (b.m1 > a.m1 ? b.i1 : min(a.i1, b.i1));
  r.m2 = top2 ? fmaxf(fminf(a.m1, b.m1), fmaxf(a.m2, b.m2)) : -INFINITY;
  r.sum = 0.f;
  r.ent = 0.f;
  if (r.m1 > -INFINITY) {
    const float da = a.m1 - r.m1, db = b.m1 - r.m1;
    const float sa = a.m1 > -INFINITY ? expf(da) : 0.f;
    const float sb = b.m1 > -INFINITY ? expf(db) : 0.f;
    r.sum = a.sum * sa + b.sum * sb;
    if (entropy)
      r.ent = (sa > 0.f ? sa * (a.ent + da * a.sum) : 0.f) + (sb > 0.f ? sb * (b.ent + db * b.sum) : 0.f);
  }
  const bool take_b = b.noisy > a.noisy || (b.noisy == a.noisy && b.noisy_idx < a.noisy_idx);
  r.noisy = take_b ? b.noisy : a.noisy;
  r.noisy_clean = take_b ? b.noisy_clean : a.noisy_clean;
  r.noisy_idx = take_b ? b.noisy_idx : a.noisy_idx;
  return r;
}

__device__ __forceinline__ StatsAcc acc_shfl_down(const StatsAcc& a, int delta) {
  const unsigned full = 0xffffffffu;
  StatsAcc r;
  r.m1 = __shfl_down_sync(full, a.m1, delta);
  r.m2 = __shfl_down_sync(full, a.m2, delta);
  r.sum = __shfl_down_sync(full, a.sum, delta);
  r.ent = __shfl_down_sync(full, a.ent, delta);
  r.noisy = __shfl_down_sync(full, a.noisy, delta);
  r.noisy_clean = __shfl_down_sync(full, a.noisy_clean, delta);
  r.i1 = __shfl_down_sync(full, a.i1, delta);
  r.noisy_idx = __shfl_down_sync(full, a.noisy_idx, delta);
  r.bad = __shfl_down_sync(full, static_cast<int>(a.bad), delta) != 0;
  return r;
}

// Block reduction in a fixed tree (warp shuffles, then warp 0 over the warps): result in thread 0.
__device__ __forceinline__ StatsAcc acc_block_reduce(StatsAcc a, bool top2, bool entropy,
                                                     StatsAcc* warp_buf) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  constexpr int kWarps = kStatsThreads / 32;
#pragma unroll
  for (int d = 16; d > 0; d >>= 1) {
    const StatsAcc o = acc_shfl_down(a, d);
    if (lane + d < 32) a = acc_merge(a, o, top2, entropy);
  }
  if (lane == 0) warp_buf[warp] = a;
  __syncthreads();
  if (warp == 0) {
    a = lane < kWarps ? warp_buf[lane] : acc_empty();
#pragma unroll
    for (int d = 16; d > 0; d >>= 1) {
      const StatsAcc o = acc_shfl_down(a, d);
      if (lane + d < 32) a = acc_merge(a, o, top2, entropy);
    }
  }
  return a;
}

__device__ __forceinline__ RowPartial acc_to_partial(const StatsAcc& a) {
  return RowPartial{a.bad ? NAN : a.m1, a.m2, a.sum, a.ent, a.noisy, a.noisy_clean, a.i1, a.noisy_idx};
}

__device__ __forceinline__ StatsAcc partial_to_acc(const RowPartial& p) {
  StatsAcc a{p.m1, p.m2, p.sum, p.ent, p.noisy, p.noisy_clean, p.i1, p.noisy_idx, false};
  if (!(p.m1 == p.m1)) {
    a.bad = true;
    a.m1 = -INFINITY;
  }
  return a;
}

// ---- which rows a block reads -------------------------------------------------------------------

// The positions of sequence b whose rows may be read this step: the span (or the whole generation
// region with EoTP) intersected with the positions that have a logits row. Every read position
// lies in [lo, hi); which of them are read is decided per position by policy.h.
struct ScanRange {
  int64_t lo, hi;
};

__device__ __forceinline__ ScanRange scan_range(const SeqState& st, const Span& sp,
                                                const PolicyParams& pp, int64_t row_start,
                                                int64_t R, int64_t L) {
  ScanRange s{0, 0};
  if (!sp.active) return s;
  s.lo = pp.eotp ? st.gen_start : sp.start;
  s.hi = pp.eotp ? st.end_pos : sp.end;
  const int64_t first_row_pos = row_start + (pp.shift ? 1 : 0);
  if (first_row_pos > s.lo) s.lo = first_row_pos;
  if (first_row_pos + R < s.hi) s.hi = first_row_pos + R;
  if (s.lo < 0) s.lo = 0;
  if (s.hi > L) s.hi = L;
  return s;
}

struct StatsArgs {
  UnmaskParams p;
  RowPartial* partials;
  int splits;
  int64_t tile;
  int64_t slots;  // row slots per sequence in the grid; a slot strides over the scan range
};

// The statistics pass's layout for one step: one place for the launcher and the host emulator.
inline StatsArgs stats_args(const UnmaskParams& p, const UnmaskWorkspace& ws) {
  StatsArgs args;
  args.p = p;
  args.partials = ws.partials;
  args.splits = stats_splits(p.V);
  args.tile = stats_tile(p.V, args.splits);
  args.slots = stats_slots(p);
  return args;
}

// One thread's share of tile [tile_lo, tile_hi) of one row: every group in index order.
// kSample: also the noisy argmax (the row's sequence samples, temperature > 0).
template <typename T, bool kSample>
__device__ __forceinline__ StatsAcc scan_tile(const T* row, int64_t tile_lo, int64_t tile_hi,
                                              bool top2, bool entropy, const uint32_t* suppress,
                                              const NoiseCtx& nz) {
  constexpr int G = Elem<T>::kGroup;
  StatsAcc a = acc_empty();
  const int64_t n_groups = (tile_hi > tile_lo ? tile_hi - tile_lo : 0) / G;
  const T* base = row + tile_lo;
  const bool aligned = (reinterpret_cast<uintptr_t>(base) & 15u) == 0;
  int64_t g = threadIdx.x;
  if (aligned) {
    for (; g + (kStatsUnroll - 1) * kStatsThreads < n_groups; g += kStatsUnroll * kStatsThreads) {
      uint4 raw[kStatsUnroll];
#pragma unroll
      for (int k = 0; k < kStatsUnroll; ++k)
        raw[k] = __ldg(reinterpret_cast<const uint4*>(base) + g + k * kStatsThreads);
#pragma unroll
      for (int k = 0; k < kStatsUnroll; ++k) {
        float f[G];
        Elem<T>::unpack(raw[k], f);
        acc_group<G, kSample>(a, f, G, tile_lo + (g + k * kStatsThreads) * G, top2, entropy,
                              suppress, tile_lo, nz);
      }
    }
    for (; g < n_groups; g += kStatsThreads) {
      float f[G];
      Elem<T>::unpack(__ldg(reinterpret_cast<const uint4*>(base) + g), f);
      acc_group<G, kSample>(a, f, G, tile_lo + g * G, top2, entropy, suppress, tile_lo, nz);
    }
  } else {  // same groups, same order, scalar loads
    for (; g < n_groups; g += kStatsThreads) {
      float f[G];
#pragma unroll
      for (int i = 0; i < G; ++i) f[i] = Elem<T>::load(base + g * G + i);
      acc_group<G, kSample>(a, f, G, tile_lo + g * G, top2, entropy, suppress, tile_lo, nz);
    }
  }
  // The tile's last, partial group belongs to the thread that owns group n_groups, and comes
  // after all of that thread's full groups.
  const int64_t tail = tile_hi - (tile_lo + n_groups * G);
  if (tail > 0 && threadIdx.x == n_groups % kStatsThreads) {
    float f[G];
    for (int i = 0; i < G; ++i) f[i] = i < tail ? Elem<T>::load(base + n_groups * G + i) : -INFINITY;
    acc_group<G, kSample>(a, f, static_cast<int>(tail), tile_lo + n_groups * G, top2, entropy,
                          suppress, tile_lo, nz);
  }
  return a;
}

// Grid: B * slots * splits blocks of kStatsThreads; block (b, slot, split) reduces tile `split`
// of the rows of positions lo + slot, lo + slot + slots, ... that are read.
// Dynamic shared memory: ceil(tile / 32) words for the suppression bitmap when n_suppress > 0.
template <typename T>
__global__ void __launch_bounds__(kStatsThreads) unmask_stats_kernel(const StatsArgs args) {
  extern __shared__ uint32_t suppress_bits[];
  __shared__ StatsAcc warp_buf[kStatsThreads / 32];
  const UnmaskParams& p = args.p;

  const int64_t blk = blockIdx.x;
  const int split = static_cast<int>(blk % args.splits);
  const int64_t slot = (blk / args.splits) % args.slots;
  const int64_t b = blk / (static_cast<int64_t>(args.splits) * args.slots);
  const double* prm = p.params + b * p.params_stride;  // this sequence's row of the pack
  const PolicyParams pp = with_unmask_row(p.policy, prm);
  const float temperature = unmask_temperature(prm);

  const SeqState st = load_state(p.state + b * kStateCols, p.L);
  const Span sp = compute_span(st, pp);
  const int64_t rs = p.row_start ? p.row_start[b] : 0;
  const ScanRange range = scan_range(st, sp, pp, rs, p.R, p.L);
  if (range.lo + slot >= range.hi) return;  // uniform over the block

  const int64_t tile_lo = static_cast<int64_t>(split) * args.tile;
  const int64_t tile_hi = tile_lo + args.tile < p.V ? tile_lo + args.tile : p.V;
  const bool top2 = pp.conf_kind == kMargin, entropy = pp.conf_kind == kNegEntropy;

  const uint32_t* suppress = nullptr;
  if (p.n_suppress > 0) {  // bitmap of the suppressed ids inside this tile
    const int64_t words = (args.tile + 31) / 32;
    for (int64_t w = threadIdx.x; w < words; w += kStatsThreads) suppress_bits[w] = 0u;
    __syncthreads();
    for (int64_t s = threadIdx.x; s < p.n_suppress; s += kStatsThreads) {
      const int64_t id = p.suppress_ids[s];
      if (id >= tile_lo && id < tile_hi)
        atomicOr(&suppress_bits[(id - tile_lo) >> 5], 1u << ((id - tile_lo) & 31));
    }
    __syncthreads();
    suppress = suppress_bits;
  }

  const int64_t* x = p.x + b * p.L;
  for (int64_t pos = range.lo + slot; pos < range.hi; pos += args.slots) {
    if (!position_is_read(pos, x, st, sp, pp, rs, p.R)) continue;  // uniform over the block
    const int64_t r = pos - (pp.shift ? 1 : 0) - rs;
    const T* row = static_cast<const T*>(p.logits) + b * p.stride_b + r * p.stride_r;

    NoiseCtx nz;
    nz.uniforms = p.gumbel_u ? p.gumbel_u + (b * p.R + r) * p.V : nullptr;
    nz.seed = static_cast<uint64_t>(st.seed);
    nz.offset = static_cast<uint64_t>(st.offset);
    nz.position = static_cast<uint32_t>(pos);
    nz.temperature = temperature;
    nz.slack = temperature * kGumbelMax;

    const StatsAcc scanned = nz.temperature > 0.f
                                 ? scan_tile<T, true>(row, tile_lo, tile_hi, top2, entropy, suppress, nz)
                                 : scan_tile<T, false>(row, tile_lo, tile_hi, top2, entropy, suppress, nz);
    const StatsAcc a = acc_block_reduce(scanned, top2, entropy, warp_buf);
    if (threadIdx.x == 0) args.partials[(b * p.R + r) * args.splits + split] = acc_to_partial(a);
    __syncthreads();  // warp_buf is reused by the next row
  }
}

// ---- the merged statistics of one row (used by the policy kernel) --------------------------------

struct RowResult {
  bool valid;
  int64_t x0;
  float pprob, conf;
};

__device__ __forceinline__ RowResult finish_row(const RowPartial* parts, int splits,
                                                const UnmaskParams& p, float temperature) {
  const int kind = p.policy.conf_kind;
  const bool top2 = kind == kMargin, entropy = kind == kNegEntropy;
  StatsAcc a = partial_to_acc(parts[0]);
  for (int s = 1; s < splits; ++s) a = acc_merge(a, partial_to_acc(parts[s]), top2, entropy);
  RowResult out{false, -1, 0.f, NAN};
  if (a.bad || !(a.m1 > -INFINITY)) return out;
  const bool sampling = temperature > 0.f;
  out.valid = true;
  out.x0 = sampling ? a.noisy_idx : a.i1;
  const float lx0 = sampling ? a.noisy_clean : a.m1;
  out.pprob = expf(lx0 - a.m1) / a.sum;
  if (kind == kMargin)
    out.conf = (1.f - expf(a.m2 - a.m1)) / a.sum;
  else if (kind == kNegEntropy)
    out.conf = a.ent / a.sum - logf(a.sum);
  else
    out.conf = out.pprob;
  for (int64_t z = 0; z < p.n_zero_conf; ++z)
    if (p.zero_conf_ids[z] == out.x0) out.conf = 0.f;
  return out;
}

}  // namespace cuda
}  // namespace dllm
