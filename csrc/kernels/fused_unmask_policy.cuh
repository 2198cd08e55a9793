// Per-sequence stage of fused_unmask on the device: one thread block per sequence runs the logic
// of policy.h's policy_step (block scheduling, selection rule, EoTP, bookkeeping), with its loops
// over positions spread over the block's threads. Every parallel loop either writes disjoint
// positions or feeds a block reduction whose combine is a total order with ties broken by the
// lower position, so results equal the sequential policy_step's (the CPU op's) exactly; the only
// float sums (window statistics, in double) are reduced in a fixed order.
#pragma once
#include <math.h>

#include <cstdint>

#include "../include/dllm/policy.h"
#include "fused_unmask_launch.h"
#include "fused_unmask_stats.cuh"

namespace dllm {
namespace cuda {

constexpr int kPolicyThreads = 256;

// ---- block reductions over a shared scratch buffer (fixed tree, result in every thread) --------

constexpr int kReduceSlotBytes = 32;

template <typename T, typename Op>
__device__ __forceinline__ T block_reduce(T v, Op op, void* scratch) {
  static_assert(sizeof(T) <= kReduceSlotBytes, "reduction value too large");
  T* buf = static_cast<T*>(scratch);
  const int tid = threadIdx.x;
  buf[tid] = v;
  __syncthreads();
#pragma unroll
  for (int s = kPolicyThreads / 2; s > 0; s >>= 1) {
    if (tid < s) buf[tid] = op(buf[tid], buf[tid + s]);
    __syncthreads();
  }
  const T r = buf[0];
  __syncthreads();  // the buffer may be reused right away
  return r;
}

struct SumI64 {
  __device__ int64_t operator()(int64_t a, int64_t b) const { return a + b; }
};
struct MinI64 {
  __device__ int64_t operator()(int64_t a, int64_t b) const { return a < b ? a : b; }
};

// (key, position): the highest key wins, the lower position on ties; pos < 0 means none.
struct KeyPos {
  float key;
  int64_t pos;
};
struct BestKeyPos {
  __device__ KeyPos operator()(const KeyPos& a, const KeyPos& b) const {
    if (a.pos < 0) return b;
    if (b.pos < 0) return a;
    if (a.key > b.key) return a;
    if (b.key > a.key) return b;
    return a.pos < b.pos ? a : b;
  }
};

struct Moments {
  double n, sum, sum2;
};
struct SumMoments {
  __device__ Moments operator()(const Moments& a, const Moments& b) const {
    return Moments{a.n + b.n, a.sum + b.sum, a.sum2 + b.sum2};
  }
};

__device__ __forceinline__ int64_t block_count_masked(const int64_t* x, int64_t from, int64_t to,
                                                      int64_t mask_id, void* scratch) {
  int64_t n = 0;
  for (int64_t q = from + threadIdx.x; q < to; q += kPolicyThreads) n += x[q] == mask_id;
  return block_reduce(n, SumI64{}, scratch);
}

// policy.h end_sequence_at, the fill spread over the block. Call from every thread.
__device__ __forceinline__ void block_end_sequence_at(SeqIO& io, SeqState& st,
                                                      const PolicyParams& pp, int64_t from) {
  if (from < st.end_pos) st.end_pos = from;
  for (int64_t q = from + threadIdx.x; q < st.gen_end; q += kPolicyThreads) {
    if (io.x[q] != pp.eos_id) {
      io.x[q] = pp.eos_id;
      io.transfer[q] = true;
    }
  }
}

// policy.h run_filter with hidden units and outputs spread over threads. Each sum runs in the
// same order with the same (unfused) roundings as the sequential host code.
__device__ __forceinline__ void block_run_filter(const SeqIO& io, const SeqState& st,
                                                 const PolicyParams& pp, float* feat,
                                                 float* hidden, bool* keep) {
  const int64_t W = pp.filter_width, H = pp.filter_hidden;
  for (int64_t j = threadIdx.x; j < W; j += kPolicyThreads) {
    const int64_t q = st.block_start + j;
    float c = 0.f;
    if (q < st.block_end) {
      c = io.conf[q];
      if (!isfinite(c)) c = 0.f;
    }
    feat[j] = c;
  }
  __syncthreads();
  for (int64_t h = threadIdx.x; h < H; h += kPolicyThreads) {
    float a = pp.b1[h];
    for (int64_t j = 0; j < W; ++j) a = __fadd_rn(a, __fmul_rn(pp.w1[h * W + j], feat[j]));
    hidden[h] = a > 0.f ? a : 0.f;
  }
  __syncthreads();
  for (int64_t j = threadIdx.x; j < W; j += kPolicyThreads) {
    float z = pp.b2[j];
    for (int64_t h = 0; h < H; ++h) z = __fadd_rn(z, __fmul_rn(pp.w2[j * H + h], hidden[h]));
    keep[j] = 1.f / (1.f + expf(-z)) > pp.filter_threshold;
  }
  __syncthreads();
}

// ---- ranks by one bitonic sort in shared memory ------------------------------------------------

// Blocks of up to kSortMax positions (fused_unmask_launch.h) are ranked by one sort (O(n log^2 n)
// compare-exchanges over the block's threads, log^2 n barriers); longer ones by sorted chunks.

// A sortable word for block offset `off`: ascending words order the candidates by key descending,
// lower offset first (candidate_rank's order), then every non-candidate.
__device__ __forceinline__ int64_t rank_word(float key, bool cand, int64_t off) {
  if (key == 0.f) key = 0.f;  // -0.0 ties with +0.0, as the float comparisons have it
  const int32_t bits = __float_as_int(key);
  const int64_t ordered = bits < 0 ? (bits ^ 0x7fffffff) : bits;  // int order == float order
  const int64_t high = cand ? -ordered : 0x7fffffffLL;           // finite keys: |ordered| < 2^31
  return static_cast<int64_t>(static_cast<uint64_t>(high) << 32) | off;
}

// The word of block offset j (< n: the block's length) for sorting; a non-candidate's, or the
// padding's past n, sorts after every candidate.
__device__ __forceinline__ int64_t block_rank_word(const SeqIO& io, const SeqState& st,
                                                   const PolicyParams& pp, const bool* cand,
                                                   bool random_key, int64_t j, int64_t n) {
  return j < n && cand[j] ? rank_word(rank_key(io, st, pp, st.block_start + j, random_key), true, j)
                          : rank_word(0.f, false, j);
}

// Sorts a[0, n2) ascending, n2 a power of two. Call from every thread.
__device__ __forceinline__ void block_bitonic_sort(int64_t* a, int64_t n2) {
  for (int64_t size = 2; size <= n2; size <<= 1) {
    for (int64_t stride = size >> 1; stride > 0; stride >>= 1) {
      for (int64_t i = threadIdx.x; i < n2 / 2; i += kPolicyThreads) {
        const int64_t lo = 2 * i - (i & (stride - 1)), hi = lo + stride;
        const bool up = (lo & size) == 0;
        const int64_t u = a[lo], v = a[hi];
        if ((u > v) == up) {
          a[lo] = v;
          a[hi] = u;
        }
      }
      __syncthreads();
    }
  }
}

// rank[j] = candidate_rank of every candidate at block offset j < n <= kSortMax. Call from every
// thread; `words` is shared scratch of kSortMax words.
__device__ __forceinline__ void block_sorted_ranks(const SeqIO& io, const SeqState& st,
                                                   const PolicyParams& pp, const bool* cand,
                                                   bool random_key, int64_t* words, int32_t* rank) {
  const int64_t n = st.block_end - st.block_start;
  int64_t n2 = 1;
  while (n2 < n) n2 <<= 1;
  for (int64_t i = threadIdx.x; i < n2; i += kPolicyThreads)
    words[i] = block_rank_word(io, st, pp, cand, random_key, i, n);
  __syncthreads();
  block_bitonic_sort(words, n2);
  // Non-candidates (the padding too) sort by offset after the candidates: the first n words are
  // the block's offsets.
  for (int64_t i = threadIdx.x; i < n; i += kPolicyThreads)
    rank[words[i] & 0xffffffffLL] = static_cast<int32_t>(i);
  __syncthreads();
}

// The number of words in a[0, len) below w (len a power of two, a sorted): a branch-free search.
__device__ __forceinline__ int64_t lower_bound_pow2(const int64_t* a, int64_t len, int64_t w) {
  int64_t lo = 0;
  for (int64_t h = len >> 1; h > 0; h >>= 1)
    if (a[lo + h - 1] < w) lo += h;
  return lo + (a[lo] < w);
}

// rank[j] = candidate_rank of every candidate of a block longer than kSortMax: each chunk of
// kSortMax offsets sorted in shared memory (`words`) and kept in `chunks` (global, this
// sequence's row), then a candidate's rank is the sum over chunks of the words below its own
// (n / kSortMax searches of 12 loads instead of n comparisons). Call from every thread.
__device__ __forceinline__ void block_chunked_ranks(const SeqIO& io, const SeqState& st,
                                                    const PolicyParams& pp, const bool* cand,
                                                    bool random_key, int64_t* words, int64_t* chunks,
                                                    int32_t* rank) {
  const int64_t n = st.block_end - st.block_start;
  for (int64_t c0 = 0; c0 < n; c0 += kSortMax) {
    for (int64_t i = threadIdx.x; i < kSortMax; i += kPolicyThreads)
      words[i] = block_rank_word(io, st, pp, cand, random_key, c0 + i, n);
    __syncthreads();
    block_bitonic_sort(words, kSortMax);  // synchronises
    for (int64_t i = threadIdx.x; i < kSortMax; i += kPolicyThreads) chunks[c0 + i] = words[i];
    __syncthreads();
  }
  for (int64_t j = threadIdx.x; j < n; j += kPolicyThreads) {
    if (!cand[j]) continue;
    const int64_t w = block_rank_word(io, st, pp, cand, random_key, j, n);
    int64_t r = 0;
    for (int64_t c0 = 0; c0 < n; c0 += kSortMax) r += lower_bound_pow2(chunks + c0, kSortMax, w);
    rank[j] = static_cast<int32_t>(r);
  }
  __syncthreads();
}

// policy.h select_positions, one block offset per thread; ranks from one sort (blocks up to
// kSortMax) or from sorted chunks.
__device__ __forceinline__ void block_select(const SeqIO& io, const SeqState& st,
                                             const PolicyParams& pp, const bool* cand, bool* sel,
                                             int64_t n_cand, float* feat, float* hidden,
                                             bool* keep, void* scratch, int64_t* words, int64_t* chunks,
                                             int32_t* rank) {
  const int64_t n = st.block_end - st.block_start;
  for (int64_t j = threadIdx.x; j < n; j += kPolicyThreads) sel[j] = false;
  __syncthreads();
  if (n_cand == 0) return;

  // Every rule ranks by one key: the random one for top-k with random remasking, else conf.
  const bool random_key = (pp.rule == kTopK || pp.rule == kLearnedFilter) && pp.random_remasking;
  if (n <= kSortMax)
    block_sorted_ranks(io, st, pp, cand, random_key, words, rank);
  else
    block_chunked_ranks(io, st, pp, cand, random_key, words, chunks, rank);

  if (pp.rule == kTopK || pp.rule == kLearnedFilter) {
    const int64_t k = topk_count(st, pp, n_cand);
    for (int64_t j = threadIdx.x; j < n; j += kPolicyThreads)
      if (cand[j]) sel[j] = rank[j] < k;
    if (pp.rule == kLearnedFilter) {
      block_run_filter(io, st, pp, feat, hidden, keep);  // synchronises
      for (int64_t j = threadIdx.x; j < n && j < pp.filter_width; j += kPolicyThreads)
        if (cand[j] && keep[j]) sel[j] = true;
    }
  } else if (pp.rule == kThreshold) {
    for (int64_t j = threadIdx.x; j < n; j += kPolicyThreads)
      if (cand[j]) sel[j] = threshold_selected(io, st, pp, j, rank[j]);
  } else if (pp.rule == kFactor) {
    int64_t run = n_cand;
    for (int64_t j = threadIdx.x; j < n; j += kPolicyThreads) {
      if (!cand[j]) continue;
      const int64_t bound = factor_run_bound(io, st, pp, j, rank[j], n_cand);
      run = bound < run ? bound : run;
    }
    run = block_reduce(run, MinI64{}, scratch);
    for (int64_t j = threadIdx.x; j < n; j += kPolicyThreads)
      if (cand[j]) sel[j] = rank[j] < run;
  } else {  // LocalLeap
    for (int64_t j = threadIdx.x; j < n; j += kPolicyThreads)
      if (cand[j]) sel[j] = localleap_selected(io, st, pp, cand, j, rank[j]);
  }
  __syncthreads();
}

// One block per sequence (grid B, kPolicyThreads threads). Runs after unmask_stats_kernel.
__global__ void __launch_bounds__(kPolicyThreads) unmask_policy_kernel(const UnmaskParams p,
                                                                       const UnmaskWorkspace ws,
                                                                       int splits) {
  __shared__ __align__(16) unsigned char scratch[kPolicyThreads * kReduceSlotBytes];
  __shared__ float feat[kMaxFilterWidth];
  __shared__ float hidden[kMaxFilterHidden];
  __shared__ bool keep[kMaxFilterWidth];
  __shared__ int64_t sort_words[kSortMax];

  const int64_t b = blockIdx.x, L = p.L;
  const double* prm = p.params + b * p.params_stride;  // this sequence's row of the pack
  const PolicyParams pp = with_unmask_row(p.policy, prm);
  const float temperature = unmask_temperature(prm);
  const int tid = threadIdx.x;

  SeqIO io;
  io.L = L;
  io.x = p.x + b * L;
  io.conf = p.conf + b * L;
  io.x0 = p.x0 + b * L;
  io.pprob = ws.pprob + b * L;
  io.rank_u = p.rank_u ? p.rank_u + b * L : nullptr;
  io.transfer = p.transfer + b * L;
  io.window_stats = p.window_stats + b * 3;
  io.state = p.state + b * kStateCols;
  io.row_start = p.row_start ? p.row_start[b] : 0;
  io.R = p.R;
  int64_t* x = io.x;
  int64_t* x0 = p.x0 + b * L;
  float* pprob = ws.pprob + b * L;
  bool* read = ws.read + b * L;
  bool* cand = ws.cand + b * L;
  bool* sel = ws.sel + b * L;

  // Every thread holds the same copy of the state and updates it from block-wide results only.
  SeqState st = load_state(io.state, L);
  const Span sp = compute_span(st, pp);

  // Phase 1: this step's predictions from the statistics pass (x is still the pre-step x).
  for (int64_t q = tid; q < L; q += kPolicyThreads) {
    const bool rd = position_is_read(q, x, st, sp, pp, io.row_start, p.R);
    int64_t pred = x[q];
    if (rd) {
      const int64_t r = q - (pp.shift ? 1 : 0) - io.row_start;
      const RowResult rr = finish_row(ws.partials + (b * p.R + r) * splits, splits, p, temperature);
      pred = rr.valid ? rr.x0 : pp.mask_id;
      io.conf[q] = rr.conf;  // NaN for an invalid row
      pprob[q] = rr.pprob;
    }
    x0[q] = pred;
    read[q] = rd;
    io.transfer[q] = false;
  }
  if (tid == 0) io.window_stats[0] = io.window_stats[1] = io.window_stats[2] = 0.f;
  if (st.done) return;
  if (!sp.active) {  // nothing left to open: the sequence is complete
    if (tid == 0) {
      st.done = 1;
      store_state(io.state, st);
    }
    return;
  }
  __syncthreads();

  // Phase 2: open a block (policy.h open_block).
  if (sp.opening) {
    int64_t end = sp.default_end;
    if (pp.adaptive_block) {
      KeyPos best{0.f, -1};
      for (int64_t q = sp.start + tid; q < sp.window_end; q += kPolicyThreads) {
        if (!read[q] || !is_valid_conf(io.conf[q])) continue;
        if (is_delimiter(pp, x0[q])) best = BestKeyPos{}(best, KeyPos{pprob[q], q});
      }
      best = block_reduce(best, BestKeyPos{}, scratch);
      if (best.pos >= 0 && best.key >= pp.block_delta) end = best.pos + 1;
    }
    st.block_start = sp.start;
    st.block_end = end;
    st.step = 0;
    st.block_masked = block_count_masked(
        x, st.block_start, st.block_end < st.end_pos ? st.block_end : st.end_pos, pp.mask_id, scratch);
  }

  // Phase 3: window statistics (policy.h compute_window_stats).
  {
    Moments m{0.0, 0.0, 0.0};
    for (int64_t q = st.block_start + tid; q < sp.window_end; q += kPolicyThreads) {
      const float c = io.conf[q];
      if (!read[q] || !is_valid_conf(c)) continue;
      m.n += 1;
      m.sum += c;
      m.sum2 += static_cast<double>(c) * c;
    }
    m = block_reduce(m, SumMoments{}, scratch);
    if (tid == 0) {
      io.window_stats[0] = static_cast<float>(m.n);
      const double mean = m.n > 0 ? m.sum / m.n : 0.0;
      io.window_stats[1] = static_cast<float>(mean);
      io.window_stats[2] = m.n > 0 ? static_cast<float>(m.sum2 / m.n - mean * mean) : 0.f;
    }
  }

  // Phase 4: candidates and the selection rule.
  const int64_t n = st.block_end - st.block_start;
  int64_t n_cand = 0;
  for (int64_t j = tid; j < n; j += kPolicyThreads) {
    const int64_t q = st.block_start + j;
    cand[j] = read[q] && is_valid_conf(io.conf[q]);
    n_cand += cand[j];
  }
  n_cand = block_reduce(n_cand, SumI64{}, scratch);  // also publishes cand[]
  block_select(io, st, pp, cand, sel, n_cand, feat, hidden, keep, scratch, sort_words,
               ws.chunks + b * rank_chunk_words(L), ws.rank + b * L);

  // Phase 5: commit (after selection, so every rule saw the pre-step tokens).
  for (int64_t j = tid; j < n; j += kPolicyThreads) {
    if (!sel[j]) continue;
    x[st.block_start + j] = x0[st.block_start + j];
    io.transfer[st.block_start + j] = true;
  }
  __syncthreads();

  // Phase 6: EoTP (policy.h apply_eotp).
  if (pp.eotp) {
    int64_t first = INT64_MAX;  // first committed eos of the block
    for (int64_t j = tid; j < n; j += kPolicyThreads)
      if (sel[j] && x0[st.block_start + j] == pp.eos_id && st.block_start + j < first)
        first = st.block_start + j;
    first = block_reduce(first, MinI64{}, scratch);
    if (first != INT64_MAX) {
      block_end_sequence_at(io, st, pp, first + 1);
    } else {
      // Read, valid, still-masked positions predicting eos: the highest conf ends the sequence.
      // (Still masked now implies masked before the step, so the pre-step read flag applies.)
      KeyPos best{0.f, -1};
      for (int64_t q = st.gen_start + tid; q < st.end_pos; q += kPolicyThreads) {
        if (x[q] != pp.mask_id || x0[q] != pp.eos_id || !read[q]) continue;
        const float c = io.conf[q];
        if (!is_valid_conf(c)) continue;
        best = BestKeyPos{}(best, KeyPos{c, q});
      }
      best = block_reduce(best, BestKeyPos{}, scratch);
      if (best.pos >= 0) {
        if (tid == 0) {
          x[best.pos] = pp.eos_id;
          io.transfer[best.pos] = true;
        }
        block_end_sequence_at(io, st, pp, best.pos + 1);
      }
    }
    __syncthreads();
  }

  // Phase 7: early stop and bookkeeping.
  const int64_t block_stop = st.block_end < st.end_pos ? st.block_end : st.end_pos;
  st.block_remaining = block_count_masked(x, st.block_start, block_stop, pp.mask_id, scratch);
  if (pp.early_stop && st.block_remaining == 0) {
    int64_t n_eos = 0;
    for (int64_t q = st.block_start + tid; q < block_stop; q += kPolicyThreads) n_eos += x[q] == pp.eos_id;
    n_eos = block_reduce(n_eos, SumI64{}, scratch);
    if (n_eos > 0) block_end_sequence_at(io, st, pp, st.block_end);
    __syncthreads();
  }
  st.step = wrapping_increment(st.step);
  st.done = block_count_masked(x, st.gen_start, st.end_pos, pp.mask_id, scratch) == 0;
  st.offset = wrapping_increment(st.offset);
  if (tid == 0) store_state(io.state, st);
}

}  // namespace cuda
}  // namespace dllm
