// The CPU policy stage: the selection rules over ranks computed once by sorting (O(n log n) in the
// block length), and the two layers over them: `select_step` (stateless: the caller's candidates
// and k) and `policy_step` (stateful: block scheduling, top-k schedule, EoTP, bookkeeping).
// Decisions equal policy.h's per-candidate predicates (which the CUDA kernel evaluates one
// candidate per thread): the order is the same total order, key descending, lower position first.
#pragma once
#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

#include "../include/dllm/policy.h"

namespace dllm {
namespace cpu {

// Scratch of one thread, reused across sequences.
struct PolicyWork {
  std::unique_ptr<bool[]> cand, sel;  // per block offset
  int64_t capacity = 0;
  std::vector<int64_t> by_conf, by_key, anchor_left, anchor_right;
  std::vector<float> key;
  void resize(int64_t n) {
    if (n > capacity) {
      capacity = n;
      cand.reset(new bool[n]);
      sel.reset(new bool[n]);
    }
    std::fill(cand.get(), cand.get() + n, false);
    std::fill(sel.get(), sel.get() + n, false);
    anchor_left.resize(n);
    anchor_right.resize(n);
    key.resize(n);
  }
};

// Candidate offsets j (cand[j]) ordered by key[j] descending, lower offset first on ties.
inline void order_by(const bool* cand, int64_t n, const float* key, std::vector<int64_t>& out) {
  out.clear();
  for (int64_t j = 0; j < n; ++j)
    if (cand[j]) out.push_back(j);
  std::sort(out.begin(), out.end(), [key](int64_t a, int64_t b) {
    return key[a] > key[b] || (key[a] == key[b] && a < b);
  });
}

// LocalLeap for every candidate: distance to the nearest anchor from one sweep each way.
inline void localleap_select(const float* conf, const PolicyParams& pp, PolicyWork& w, int64_t n) {
  int64_t last = -1;
  for (int64_t j = 0; j < n; ++j) {
    if (w.cand[j] && conf[j] >= pp.anchor_threshold) last = j;
    w.anchor_left[j] = last;
  }
  last = -1;
  for (int64_t j = n - 1; j >= 0; --j) {
    if (w.cand[j] && conf[j] >= pp.anchor_threshold) last = j;
    w.anchor_right[j] = last;
  }
  for (int64_t j = 0; j < n; ++j) {
    if (!w.cand[j]) continue;
    if (conf[j] >= pp.anchor_threshold || j == w.by_conf[0]) {
      w.sel[j] = true;
      continue;
    }
    int64_t d = -1;
    if (w.anchor_left[j] >= 0) d = j - w.anchor_left[j];
    if (w.anchor_right[j] >= 0 && (d < 0 || w.anchor_right[j] - j < d)) d = w.anchor_right[j] - j;
    if (d < 1 || d > pp.window) continue;
    float thr = pp.relaxed_threshold;
    if (pp.graded)
      thr = pp.relaxed_threshold + (pp.anchor_threshold - pp.relaxed_threshold) *
                                       static_cast<float>(d - 1) / static_cast<float>(pp.window);
    w.sel[j] = conf[j] >= thr;
  }
}

// The rule over the block [st.block_start, st.block_end): w.cand in, w.sel out (block offsets).
// `k` is the top-k count (rules 0 and 4), already capped at the number of candidates.
inline void select_positions(const SeqIO& io, const SeqState& st, const PolicyParams& pp,
                             PolicyWork& w, int64_t k) {
  const int64_t s = st.block_start, n = st.block_end - st.block_start;
  const float* conf = io.conf + s;
  order_by(w.cand.get(), n, conf, w.by_conf);
  if (w.by_conf.empty()) return;

  if (pp.rule == kTopK || pp.rule == kLearnedFilter) {
    const std::vector<int64_t>* ranked = &w.by_conf;  // ranked by confidence unless remasking at random
    if (pp.random_remasking) {
      for (int64_t j = 0; j < n; ++j)
        if (w.cand[j]) w.key[j] = rank_key(io, st, pp, s + j, true);
      order_by(w.cand.get(), n, w.key.data(), w.by_key);
      ranked = &w.by_key;
    }
    for (int64_t r = 0; r < k && r < static_cast<int64_t>(ranked->size()); ++r) w.sel[(*ranked)[r]] = true;
    if (pp.rule == kLearnedFilter) {
      bool keep[kMaxFilterWidth];
      run_filter(io, st, pp, keep);
      for (int64_t j = 0; j < n && j < pp.filter_width; ++j)
        if (w.cand[j] && keep[j]) w.sel[j] = true;
    }
    return;
  }
  if (pp.rule == kThreshold) {
    for (int64_t j = 0; j < n; ++j) w.sel[j] = w.cand[j] && conf[j] >= pp.threshold;
    w.sel[w.by_conf[0]] = true;
    return;
  }
  if (pp.rule == kFactor) {  // the leading run with c(r) >= 1 - f / (r + 1), r >= 2 (1-based)
    const int64_t m = static_cast<int64_t>(w.by_conf.size());
    int64_t run = 1;
    while (run < m && conf[w.by_conf[run]] >= 1.f - pp.factor / static_cast<float>(run + 2)) ++run;
    for (int64_t r = 0; r < run; ++r) w.sel[w.by_conf[r]] = true;
    return;
  }
  localleap_select(conf, pp, w, n);
}

// Stateless selection for one sequence over [start, end): `cand` flags set by the caller; writes
// transfer (and x when `commit`). No state is read or written; k is the caller's.
inline void select_step(SeqIO& io, const SeqState& st, const PolicyParams& pp, PolicyWork& w,
                        int64_t k, bool commit) {
  select_positions(io, st, pp, w, k);
  for (int64_t j = 0; j < st.block_end - st.block_start; ++j) {
    if (!w.sel[j]) continue;
    const int64_t p = st.block_start + j;
    io.transfer[p] = true;
    if (commit) io.x[p] = io.x0[p];
  }
}

// The whole stateful per-sequence stage of fused_unmask (docs/fused_unmask.md, one step).
inline void policy_step(SeqIO& io, const PolicyParams& pp, PolicyWork& w) {
  io.window_stats[0] = io.window_stats[1] = io.window_stats[2] = 0.f;
  SeqState st = load_state(io.state, io.L);
  const Span sp = compute_span(st, pp);
  if (st.done) return;
  if (!sp.active) {  // nothing left to open: the sequence is complete
    st.done = 1;
    store_state(io.state, st);
    return;
  }
  open_block(io, st, pp, sp);
  compute_window_stats(io, st, pp, sp);

  const int64_t n = st.block_end - st.block_start;
  w.resize(n);
  int64_t n_cand = 0;
  for (int64_t j = 0; j < n; ++j) {
    const int64_t p = st.block_start + j;
    w.cand[j] = position_is_read(p, io.x, st, sp, pp, io.row_start, io.R) && is_valid_conf(io.conf[p]);
    n_cand += w.cand[j];
  }
  // Commit after selection so that every rule saw the same (pre-step) tokens.
  select_step(io, st, pp, w, topk_count(st, pp, n_cand), /*commit=*/true);
  if (pp.eotp) apply_eotp(io, st, pp, sp, w.sel.get());

  const int64_t block_stop = st.block_end < st.end_pos ? st.block_end : st.end_pos;
  st.block_remaining = count_masked(io.x, st.block_start, block_stop, pp.mask_id);
  if (pp.early_stop && st.block_remaining == 0) {
    bool has_eos = false;
    for (int64_t p = st.block_start; p < block_stop; ++p) has_eos |= io.x[p] == pp.eos_id;
    if (has_eos) end_sequence_at(io, st, pp, st.block_end);
  }
  st.step = wrapping_increment(st.step);
  st.done = count_masked(io.x, st.gen_start, st.end_pos, pp.mask_id) == 0;
  st.offset = wrapping_increment(st.offset);
  store_state(io.state, st);
}

}  // namespace cpu
}  // namespace dllm
