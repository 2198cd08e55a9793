// The per-sequence stage of fused_unmask: block scheduling, selection rules, EoTP, bookkeeping.
// Written once as host/device functions on raw pointers so that the CPU op (and its tests) and
// the CUDA kernel run the very same logic. Semantics: docs/fused_unmask.md.
#pragma once
#include <math.h>

#include <cstdint>

#include "philox.h"

namespace dllm {

enum Rule : int { kTopK = 0, kThreshold = 1, kFactor = 2, kLocalLeap = 3, kLearnedFilter = 4 };
enum ConfKind : int { kProb = 0, kMargin = 1, kNegEntropy = 2 };
enum StateCol : int {
  kGenStart = 0, kGenEnd, kBlockStart, kBlockEnd, kStep, kBlockMasked, kBlockRemaining,
  kEndPos, kDone, kSeed, kOffset, kStateCols
};

// Learned-filter limits: the feature and hidden vectors live on the stack of one thread.
constexpr int kMaxFilterWidth = 128;
constexpr int kMaxFilterHidden = 256;

struct PolicyParams {
  int64_t mask_id, eos_id;
  int rule, conf_kind;
  bool shift;
  int64_t steps;
  float threshold, factor, anchor_threshold, relaxed_threshold;
  int64_t window;
  bool graded;
  float filter_threshold;
  bool random_remasking;
  int64_t block_length;
  bool adaptive_block;
  float block_delta, block_window_fraction;
  bool eotp, early_stop;
  const int64_t* delimiter_ids;  // [n_delimiters]
  int64_t n_delimiters;
  const float *w1, *b1, *w2, *b2;  // Linear(width, hidden) -> ReLU -> Linear(hidden, width)
  int64_t filter_width, filter_hidden;
};

// One sequence's state, sanitised on load so that no position can index out of [0, L].
struct SeqState {
  int64_t gen_start, gen_end, block_start, block_end, step, block_masked, block_remaining;
  int64_t end_pos, done, seed, offset;
};

// Counters advance modulo 2^64 (two's complement), so a saturated state can never overflow.
DLLM_HD int64_t wrapping_increment(int64_t v) {
  return static_cast<int64_t>(static_cast<uint64_t>(v) + 1u);
}

DLLM_HD int64_t clamp64(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : (v > hi ? hi : v); }

DLLM_HD SeqState load_state(const int64_t* s, int64_t L) {
  SeqState st;
  st.gen_start = clamp64(s[kGenStart], 0, L);
  st.gen_end = clamp64(s[kGenEnd], st.gen_start, L);
  st.block_start = clamp64(s[kBlockStart], st.gen_start, st.gen_end);
  st.block_end = clamp64(s[kBlockEnd], st.block_start, st.gen_end);
  st.step = s[kStep] < 0 ? 0 : s[kStep];
  st.block_masked = s[kBlockMasked] < 0 ? 0 : s[kBlockMasked];
  st.block_remaining = s[kBlockRemaining] < 0 ? 0 : s[kBlockRemaining];
  st.end_pos = clamp64(s[kEndPos], st.gen_start, st.gen_end);
  st.done = s[kDone] != 0;
  st.seed = s[kSeed];
  st.offset = s[kOffset];
  return st;
}

DLLM_HD void store_state(int64_t* s, const SeqState& st) {
  s[kGenStart] = st.gen_start; s[kGenEnd] = st.gen_end;
  s[kBlockStart] = st.block_start; s[kBlockEnd] = st.block_end;
  s[kStep] = st.step; s[kBlockMasked] = st.block_masked; s[kBlockRemaining] = st.block_remaining;
  s[kEndPos] = st.end_pos; s[kDone] = st.done; s[kSeed] = st.seed; s[kOffset] = st.offset;
}

// The positions whose rows this step may read: the open block, or the span a new block may take.
struct Span {
  bool active;   // false: sequence done, or nothing left to open
  bool opening;  // a new block opens at `start` this step
  int64_t start, end;        // span [start, end) of candidate rows (before the eotp widening)
  int64_t default_end;       // new block's end without AdaBlock
  int64_t window_end;        // AdaBlock look-ahead window [start, window_end)
};

DLLM_HD Span compute_span(const SeqState& st, const PolicyParams& pp) {
  Span sp{false, false, 0, 0, 0, 0};
  if (st.done) return sp;
  if (st.block_remaining > 0) {
    sp.active = true;
    sp.start = st.block_start;
    sp.end = st.block_end;
    sp.default_end = st.block_end;
    const int64_t w = static_cast<int64_t>(pp.block_window_fraction * (st.gen_end - st.gen_start));
    sp.window_end = clamp64(st.block_start + w, st.block_start, st.end_pos);
    return sp;
  }
  const int64_t s = st.block_end;
  if (s >= st.end_pos) return sp;
  const int64_t remaining = st.end_pos - s;
  const int64_t n = pp.block_length < remaining ? pp.block_length : remaining;
  int64_t w = static_cast<int64_t>(pp.block_window_fraction * (st.gen_end - st.gen_start));
  w = w < remaining ? w : remaining;
  sp.active = true;
  sp.opening = true;
  sp.start = s;
  sp.default_end = s + n;
  sp.window_end = s + (w > 0 ? w : 0);
  const int64_t reach = pp.adaptive_block && w > n ? w : n;
  sp.end = s + reach;
  return sp;
}

// Is position p read this step? Pure function of x and state, so the statistics pass (one program
// per row) and the policy stage agree without any communication.
DLLM_HD bool position_is_read(int64_t p, const int64_t* x, const SeqState& st, const Span& sp,
                              const PolicyParams& pp, int64_t row_start, int64_t R) {
  if (!sp.active || x[p] != pp.mask_id) return false;
  if (p < st.gen_start || p >= st.end_pos) return false;
  const int64_t r = p - (pp.shift ? 1 : 0) - row_start;
  if (r < 0 || r >= R) return false;
  return pp.eotp || (p >= sp.start && p < sp.end);
}

// conf is NaN exactly for invalid rows (NaN/+inf logits); NaN compares false everywhere below.
DLLM_HD bool is_valid_conf(float c) { return c == c; }

struct SeqIO {
  int64_t L;
  int64_t* x;          // [L] tokens (updated)
  float* conf;         // [L] confidence buffer (read: written by the statistics pass)
  const int64_t* x0;   // [L] predictions (current token where not read)
  const float* pprob;  // [L] clean probability of x0 where read
  const float* rank_u; // [L] explicit uniforms for random remasking, or nullptr
  bool* transfer;      // [L] out: positions written this step (zeroed by the caller)
  float* window_stats; // [3] out: count, mean, variance
  int64_t* state;      // [kStateCols]
  int64_t row_start, R;
};

// Ranking key: conf, or the random-remasking uniform.
DLLM_HD float rank_key(const SeqIO& io, const SeqState& st, const PolicyParams& pp, int64_t p,
                       bool random_key) {
  if (!random_key) return io.conf[p];
  if (io.rank_u) return io.rank_u[p];
  return noise_uniform(static_cast<uint64_t>(st.seed), static_cast<uint64_t>(st.offset),
                       kRankStream, static_cast<uint32_t>(p));
}

// Candidate = read, valid position of the block. The caller passes `cand` flags per block offset.
// rank(p) among candidates by key descending, lower position first on ties: the rank's statement.
// The kernels compute the same number without comparing every pair (they sort: docs/fused_unmask.md,
// "Policy stage cost"); a new backend may start from this loop.
DLLM_HD int64_t candidate_rank(const SeqIO& io, const SeqState& st, const PolicyParams& pp,
                               const bool* cand, int64_t p, bool random_key) {
  const float kp = rank_key(io, st, pp, p, random_key);
  int64_t rank = 0;
  for (int64_t q = st.block_start; q < st.block_end; ++q) {
    if (q == p || !cand[q - st.block_start]) continue;
    const float kq = rank_key(io, st, pp, q, random_key);
    if (kq > kp || (kq == kp && q < p)) ++rank;
  }
  return rank;
}

DLLM_HD int64_t topk_count(const SeqState& st, const PolicyParams& pp, int64_t n_cand) {
  if (st.step >= pp.steps) return n_cand;
  const int64_t m = st.block_masked, n = pp.steps;
  const int64_t k = m / n + (st.step < m % n ? 1 : 0);
  return k < n_cand ? k : n_cand;
}

// Learned filter over the block's confidences; writes keep[j] for offsets j < filter_width.
DLLM_HD void run_filter(const SeqIO& io, const SeqState& st, const PolicyParams& pp, bool* keep) {
  float feat[kMaxFilterWidth];
  float hidden[kMaxFilterHidden];
  const int64_t W = pp.filter_width, H = pp.filter_hidden;
  for (int64_t j = 0; j < W; ++j) {
    const int64_t p = st.block_start + j;
    float c = 0.f;
    if (p < st.block_end) {
      c = io.conf[p];
      if (!(c == c) || c == 1.f / 0.f || c == -1.f / 0.f) c = 0.f;
    }
    feat[j] = c;
  }
  for (int64_t h = 0; h < H; ++h) {
    float a = pp.b1[h];
    for (int64_t j = 0; j < W; ++j) a += pp.w1[h * W + j] * feat[j];
    hidden[h] = a > 0.f ? a : 0.f;
  }
  // sigmoid(z) > theta  <=>  z > logit(theta); compared in the sigmoid domain to match the spec.
  for (int64_t j = 0; j < W; ++j) {
    float z = pp.b2[j];
    for (int64_t h = 0; h < H; ++h) z += pp.w2[j * H + h] * hidden[h];
    keep[j] = 1.f / (1.f + expf(-z)) > pp.filter_threshold;
  }
}

// Fill [from, gen_end) with eos (end of text) and record the new end.
DLLM_HD void end_sequence_at(SeqIO& io, SeqState& st, const PolicyParams& pp, int64_t from) {
  if (from < st.end_pos) st.end_pos = from;
  for (int64_t p = from; p < st.gen_end; ++p) {
    if (io.x[p] != pp.eos_id) {
      io.x[p] = pp.eos_id;
      io.transfer[p] = true;
    }
  }
}

DLLM_HD int64_t count_masked(const int64_t* x, int64_t from, int64_t to, int64_t mask_id) {
  int64_t n = 0;
  for (int64_t p = from; p < to; ++p) n += x[p] == mask_id;
  return n;
}

DLLM_HD bool is_delimiter(const PolicyParams& pp, int64_t token) {
  bool delim = false;
  for (int64_t d = 0; d < pp.n_delimiters; ++d) delim |= token == pp.delimiter_ids[d];
  return delim;
}

// Opens a new block when the span says one opens this step (AdaBlock: ends at the most probable
// delimiter of the look-ahead window when that probability reaches block_delta).
DLLM_HD void open_block(SeqIO& io, SeqState& st, const PolicyParams& pp, const Span& sp) {
  if (!sp.opening) return;
  int64_t end = sp.default_end;
  if (pp.adaptive_block) {
    int64_t best_p = -1;
    float best = 0.f;
    for (int64_t p = sp.start; p < sp.window_end; ++p) {
      if (!position_is_read(p, io.x, st, sp, pp, io.row_start, io.R)) continue;
      if (!is_valid_conf(io.conf[p])) continue;
      if (is_delimiter(pp, io.x0[p]) && (best_p < 0 || io.pprob[p] > best)) {
        best_p = p;
        best = io.pprob[p];
      }
    }
    if (best_p >= 0 && best >= pp.block_delta) end = best_p + 1;
  }
  st.block_start = sp.start;
  st.block_end = end;
  st.step = 0;
  st.block_masked = count_masked(io.x, st.block_start, st.block_end < st.end_pos ? st.block_end : st.end_pos,
                                 pp.mask_id);
}

DLLM_HD void compute_window_stats(SeqIO& io, const SeqState& st, const PolicyParams& pp,
                                  const Span& sp) {
  const int64_t w_end = sp.window_end;
  double n = 0, sum = 0, sum2 = 0;
  for (int64_t p = st.block_start; p < w_end; ++p) {
    if (!position_is_read(p, io.x, st, sp, pp, io.row_start, io.R)) continue;
    const float c = io.conf[p];
    if (!is_valid_conf(c)) continue;
    n += 1;
    sum += c;
    sum2 += static_cast<double>(c) * c;
  }
  io.window_stats[0] = static_cast<float>(n);
  const double mean = n > 0 ? sum / n : 0.0;
  io.window_stats[1] = static_cast<float>(mean);
  io.window_stats[2] = n > 0 ? static_cast<float>(sum2 / n - mean * mean) : 0.f;
}

// Per-candidate decisions of the rules for the CUDA kernel, which evaluates them one block offset
// per thread (the CPU op's policy_cpu.h sorts instead). `j` is a candidate's block offset.
// `rank` is the candidate's candidate_rank by conf (the CUDA kernel sorts the block, or its chunks).
DLLM_HD bool threshold_selected(const SeqIO& io, const SeqState& st, const PolicyParams& pp, int64_t j,
                                int64_t rank) {
  return io.conf[st.block_start + j] >= pp.threshold || rank == 0;
}

// Factor rule: the leading run of the descending order with c(r) >= 1 - f / (r + 1), r >= 2
// (1-based), is as long as the smallest r - 1 over failing ranks. Returns this candidate's bound
// on the run (`n_cand` when it does not fail); the run is the minimum over candidates.
DLLM_HD int64_t factor_run_bound(const SeqIO& io, const SeqState& st, const PolicyParams& pp, int64_t j,
                                 int64_t rank, int64_t n_cand) {
  const int64_t p = st.block_start + j;
  const int64_t r = rank + 1;
  const bool fails = r >= 2 && !(io.conf[p] >= 1.f - pp.factor / static_cast<float>(r + 1));
  return fails ? r - 1 : n_cand;
}

// LocalLeap: anchors (conf >= kappa, fixed for the step) and the argmax are taken; others need
// conf >= tau_rel (graded: rising linearly to kappa) within `window` of the nearest anchor.
DLLM_HD bool localleap_selected(const SeqIO& io, const SeqState& st, const PolicyParams& pp,
                                const bool* cand, int64_t j, int64_t rank) {
  const int64_t s = st.block_start, n = st.block_end - st.block_start;
  const float c = io.conf[s + j];
  if (c >= pp.anchor_threshold || rank == 0) return true;
  // The nearest anchor matters only within `window`: search outwards from j that far (O(window)
  // per candidate, not O(n)); j itself is no anchor here.
  const int64_t reach = pp.window < n ? pp.window : n;
  int64_t d = -1;
  for (int64_t da = 1; da <= reach && d < 0; ++da) {
    const int64_t sides[2] = {j - da, j + da};
    for (int t = 0; t < 2; ++t) {
      const int64_t a = sides[t];
      if (a >= 0 && a < n && cand[a] && io.conf[s + a] >= pp.anchor_threshold) d = da;
    }
  }
  if (d < 1) return false;
  float thr = pp.relaxed_threshold;
  if (pp.graded)
    thr = pp.relaxed_threshold + (pp.anchor_threshold - pp.relaxed_threshold) *
                                     static_cast<float>(d - 1) / static_cast<float>(pp.window);
  return c >= thr;
}

// EoTP after the rule's commits. `sel` holds this step's committed block offsets.
DLLM_HD void apply_eotp(SeqIO& io, SeqState& st, const PolicyParams& pp, const Span& sp,
                        const bool* sel) {
  for (int64_t p = st.block_start; p < st.block_end; ++p) {
    if (sel[p - st.block_start] && io.x0[p] == pp.eos_id) {
      end_sequence_at(io, st, pp, p + 1);
      return;
    }
  }
  int64_t best_q = -1;
  float best = 0.f;
  for (int64_t q = st.gen_start; q < st.end_pos; ++q) {
    if (io.x[q] != pp.mask_id || io.x0[q] != pp.eos_id) continue;
    if (!position_is_read(q, io.x, st, sp, pp, io.row_start, io.R)) continue;
    const float c = io.conf[q];
    if (!is_valid_conf(c)) continue;
    if (best_q < 0 || c > best) {
      best_q = q;
      best = c;
    }
  }
  if (best_q >= 0) {
    io.x[best_q] = pp.eos_id;
    io.transfer[best_q] = true;
    end_sequence_at(io, st, pp, best_q + 1);
  }
}

}  // namespace dllm
