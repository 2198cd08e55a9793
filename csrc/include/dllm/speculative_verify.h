// Per-sequence logic of dllm::speculative_verify on raw pointers (no torch headers), for every C++
// backend. Semantics: docs/speculative_verify.md. Element types are template parameters converted
// with static_cast<float>, so the including file decides what a half or bfloat16 is.
#pragma once
#include <cmath>
#include <cstdint>
#include <limits>

#include "philox.h"

namespace dllm {

// Philox counter word 1 of every draw of this op: the row index k with the high bit set, which no
// fused_unmask position has, so the two ops never share a draw for the same (seed, offset).
constexpr uint32_t kVerifyRowStream = 0x80000000u;
// Counter word 0 of the acceptance uniform of a row (the Gumbel noise of vocab entry v uses v).
constexpr uint32_t kVerifyAcceptIndex = 0xffffffffu;

DLLM_HD float verify_uniform(uint64_t seed, uint64_t offset, uint32_t v, uint32_t k) {
  const Philox4 r = philox4x32_10(v, kVerifyRowStream | k, static_cast<uint32_t>(offset),
                                  static_cast<uint32_t>(offset >> 32), static_cast<uint32_t>(seed),
                                  static_cast<uint32_t>(seed >> 32));
  return bits_to_uniform(r.v[0]);
}

struct VerifyParams {
  int64_t V = 0;
  float temperature = 0.f;      // 0: greedy
  bool draft_is_logits = false;  // draft rows hold logits (softmax at `temperature`) instead of probabilities
};

// max and sum of exp(l / T - max) of a row; invalid when a value is NaN or +inf or every value is -inf.
struct SoftmaxStats {
  float m = -std::numeric_limits<float>::infinity();
  float s = 0.f;
  bool valid = false;
  DLLM_HD float prob(float logit, float inv_t) const { return valid ? std::exp(logit * inv_t - m) / s : 0.f; }
};

template <class T>
inline SoftmaxStats softmax_stats(const T* row, int64_t V, float inv_t) {
  SoftmaxStats st;
  bool bad = false;
  for (int64_t v = 0; v < V; ++v) {
    const float l = static_cast<float>(row[v]);
    bad |= std::isnan(l) || l == std::numeric_limits<float>::infinity();
    st.m = std::fmax(st.m, l * inv_t);
  }
  if (bad || st.m == -std::numeric_limits<float>::infinity()) return st;
  for (int64_t v = 0; v < V; ++v) st.s += std::exp(static_cast<float>(row[v]) * inv_t - st.m);
  st.valid = true;
  return st;
}

// First index of the largest value, or -1 for an invalid row (NaN, +inf, or all -inf).
template <class T>
inline int64_t row_argmax(const T* row, int64_t V) {
  float best = -std::numeric_limits<float>::infinity();
  int64_t arg = -1;
  for (int64_t v = 0; v < V; ++v) {
    const float l = static_cast<float>(row[v]);
    if (std::isnan(l) || l == std::numeric_limits<float>::infinity()) return -1;
    if (l > best) best = l, arg = v;
  }
  return arg;
}

// A draft probability as the op uses it: NaN, negative and infinite values count as 0.
DLLM_HD float clean_prob(float q) { return (q >= 0.f && q < std::numeric_limits<float>::infinity()) ? q : 0.f; }

// The draft distribution of one row: given probabilities, or the softmax of given logits.
template <class TQ>
struct DraftRow {
  const TQ* row;
  SoftmaxStats st;  // of the logits, when draft_is_logits
  bool logits;
  float inv_t;
  float at(int64_t v) const {
    return logits ? st.prob(static_cast<float>(row[v]), inv_t) : clean_prob(static_cast<float>(row[v]));
  }
};

// The sample at a row where drafting stopped: Gumbel-max over the residual max(p - q, 0) after a
// rejection (`q` set), or over p for the bonus token (`q` null). A residual with no positive entry
// (p <= q everywhere, possible only by rounding) falls back to p.
template <class TL, class TQ>
inline int64_t sample_row(const TL* row, const SoftmaxStats& p, const DraftRow<TQ>* q, const VerifyParams& prm,
                          uint64_t seed, uint64_t offset, uint32_t k) {
  const float inv_t = 1.f / prm.temperature;
  float best_r = -std::numeric_limits<float>::infinity(), best_p = best_r;
  int64_t arg_r = -1, arg_p = -1;
  for (int64_t v = 0; v < prm.V; ++v) {
    const float pv = p.prob(static_cast<float>(row[v]), inv_t);
    if (!(pv > 0.f)) continue;  // probability 0: never sampled (and no noise drawn)
    const float u = verify_uniform(seed, offset, static_cast<uint32_t>(v), k);
    const float g = -std::log(-std::log(u));
    const float kp = std::log(pv) + g;
    if (kp > best_p) best_p = kp, arg_p = v;
    if (q) {
      const float rv = pv - q->at(v);
      if (rv > 0.f) {
        const float kr = std::log(rv) + g;
        if (kr > best_r) best_r = kr, arg_r = v;
      }
    }
  }
  return arg_r >= 0 ? arg_r : arg_p;
}

// One sequence: target rows [n + 1, V] (row k at target + k * row_stride), draft tokens [n], draft
// rows [n, V] (draft + k * draft_stride; unused when greedy). Writes emitted[0..accepted] (the
// accepted draft tokens, then the correction or bonus token; -1 where a target row is invalid) and
// returns accepted (0..n). Draft tokens outside [0, V) are rejected.
template <class TL, class TQ>
inline int64_t verify_sequence(const TL* target, int64_t row_stride, const int64_t* tokens, const TQ* draft,
                               int64_t draft_stride, int64_t n, const VerifyParams& prm, uint64_t seed,
                               uint64_t offset, int64_t* emitted) {
  const bool greedy = !(prm.temperature > 0.f);
  const float inv_t = greedy ? 1.f : 1.f / prm.temperature;
  for (int64_t k = 0;; ++k) {
    const TL* row = target + k * row_stride;
    const uint32_t k32 = static_cast<uint32_t>(k);
    const int64_t t = k < n ? tokens[k] : -1;
    const bool in_range = t >= 0 && t < prm.V;
    if (greedy) {
      const int64_t best = row_argmax(row, prm.V);
      emitted[k] = best;
      if (k == n || best < 0 || t != best) return k;
      continue;
    }
    const SoftmaxStats p = softmax_stats(row, prm.V, inv_t);
    if (!p.valid) {
      emitted[k] = -1;
      return k;
    }
    if (k == n) {
      emitted[k] = sample_row<TL, TQ>(row, p, nullptr, prm, seed, offset, k32);
      return k;
    }
    const TQ* qrow = draft + k * draft_stride;
    DraftRow<TQ> q{qrow, prm.draft_is_logits ? softmax_stats(qrow, prm.V, inv_t) : SoftmaxStats{},
                   prm.draft_is_logits, inv_t};
    const float pt = in_range ? p.prob(static_cast<float>(row[t]), inv_t) : 0.f;
    const float qt = in_range ? q.at(t) : 0.f;
    const float u = verify_uniform(seed, offset, kVerifyAcceptIndex, k32);
    if (u * qt < pt) {
      emitted[k] = t;
      continue;
    }
    emitted[k] = sample_row(row, p, &q, prm, seed, offset, k32);
    return k;
  }
}

}  // namespace dllm
