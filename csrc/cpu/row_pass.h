// The statistics pass shared by the CPU ops: one row_stats call per row to read, split over
// threads only when the rows add up to enough work (cpu_threads.h).
#pragma once
#include <ATen/Parallel.h>
#include "../aten_deps.h"

#include <limits>
#include <vector>

#include "../op_checks.h"
#include "cpu_threads.h"
#include "row_stats.h"

namespace dllm {
namespace cpu {

struct ReadRow {
  int64_t b, p, r;  // sequence, position, logits row
};

// Where a row's inputs and outputs live. Per-sequence noise keys and temperatures come from
// `seed`/`offset` (int64 per sequence, stride `key_stride`) and `temperature` (nullptr: prm's).
struct RowPass {
  const char* logits;
  int64_t elem, stride_b, stride_r, R, L;
  const float* gumbel_u;  // [B, R, V] or nullptr
  const int64_t* seed;
  const int64_t* offset;
  int64_t key_stride;
  const double* temperature;  // per sequence, stride temperature_stride, or nullptr
  int64_t temperature_stride;
  int64_t invalid_x0;  // x0 written for an invalid row; < 0 keeps x0's current value
  RowStatsParams prm;
};

inline LogitsType logits_type(at::ScalarType t) {
  if (t == at::kHalf) return LogitsType::kFloat16;
  if (t == at::kBFloat16) return LogitsType::kBFloat16;
  return LogitsType::kFloat32;
}

// The pass over `logits` for x of L positions, with the vocabulary lists; the caller sets the
// noise keys, the per-sequence temperature and `invalid_x0`.
inline RowPass row_pass_for(const at::Tensor& logits, int64_t L, const std::optional<at::Tensor>& gumbel_u,
                            const std::optional<at::Tensor>& suppress_ids,
                            const std::optional<at::Tensor>& zero_conf_ids, int conf_kind) {
  RowPass pass{};
  pass.logits = static_cast<const char*>(logits.data_ptr());
  pass.elem = logits.element_size();
  pass.stride_b = logits.stride(0);
  pass.stride_r = logits.stride(1);
  pass.R = logits.size(1);
  pass.L = L;
  pass.gumbel_u = gumbel_u ? gumbel_u->data_ptr<float>() : nullptr;
  pass.prm.type = logits_type(logits.scalar_type());
  pass.prm.V = logits.size(2);
  pass.prm.conf_kind = conf_kind;
  pass.prm.temperature = 0.f;
  pass.prm.suppress_ids = ids_ptr(suppress_ids);
  pass.prm.n_suppress = ids_len(suppress_ids);
  pass.prm.zero_conf_ids = ids_ptr(zero_conf_ids);
  pass.prm.n_zero_conf = ids_len(zero_conf_ids);
  return pass;
}

inline void row_stats_pass(const std::vector<ReadRow>& rows, const RowPass& a, int64_t* x0,
                           float* conf, float* pprob) {
  const int64_t n_rows = static_cast<int64_t>(rows.size());
  for_each_item(n_rows, n_rows * a.prm.V, [&](int64_t i) {
    {
      const ReadRow& rr = rows[i];
      RowStatsParams prm = a.prm;
      if (a.temperature) prm.temperature = static_cast<float>(a.temperature[rr.b * a.temperature_stride]);
      RowNoise noise;
      noise.uniforms = a.gumbel_u ? a.gumbel_u + (rr.b * a.R + rr.r) * a.prm.V : nullptr;
      noise.seed = a.seed ? static_cast<uint64_t>(a.seed[rr.b * a.key_stride]) : 0u;
      noise.offset = a.offset ? static_cast<uint64_t>(a.offset[rr.b * a.key_stride]) : 0u;
      noise.position = static_cast<uint32_t>(rr.p);
      const char* row = a.logits + (rr.b * a.stride_b + rr.r * a.stride_r) * a.elem;
      const RowStats s = row_stats(row, prm, noise);
      const int64_t at_bp = rr.b * a.L + rr.p;
      if (s.valid) x0[at_bp] = s.x0;
      else if (a.invalid_x0 >= 0) x0[at_bp] = a.invalid_x0;
      conf[at_bp] = s.valid ? s.conf : std::numeric_limits<float>::quiet_NaN();
      if (pprob) pprob[at_bp] = s.pprob;
    }
  });
}

// The pass for rows whose statistics arrive as partials (`row_stats` [W, B, R, kPartialCols],
// docs/row_stats.md): each read row merges its W partials in order, then finishes as a row read
// from logits does. Writes the same outputs as row_stats_pass.
inline void row_stats_merge_pass(const std::vector<ReadRow>& rows, const RowPass& a, const at::Tensor& row_stats,
                                 int64_t* x0, float* conf, float* pprob) {
  const int64_t W = row_stats.size(0), B = row_stats.size(1);
  const double* rs = row_stats.data_ptr<double>();
  const int64_t shard_stride = B * a.R * kPartialCols;
  const bool top2 = a.prm.conf_kind == kMargin, entropy = a.prm.conf_kind == kNegEntropy;
  const int64_t n_rows = static_cast<int64_t>(rows.size());
  for_each_item(n_rows, n_rows * W * 4, [&](int64_t i) {
    const ReadRow& rr = rows[i];
    RowStatsParams prm = a.prm;
    if (a.temperature) prm.temperature = static_cast<float>(a.temperature[rr.b * a.temperature_stride]);
    RowPartial parts[kMaxMergedPartials];
    RowPartial merged;
    const double* at_row = rs + (rr.b * a.R + rr.r) * kPartialCols;
    if (W == 1) {
      merged = unpack_partial(at_row);
    } else {
      for (int64_t w = 0; w < W; ++w) parts[w] = unpack_partial(at_row + w * shard_stride);
      merged = merge_row_partials(parts, W, top2, entropy);
    }
    const RowStats s = finish_row(merged, prm);
    const int64_t at_bp = rr.b * a.L + rr.p;
    if (s.valid) x0[at_bp] = s.x0;
    else if (a.invalid_x0 >= 0) x0[at_bp] = a.invalid_x0;
    conf[at_bp] = s.valid ? s.conf : std::numeric_limits<float>::quiet_NaN();
    if (pprob) pprob[at_bp] = s.pprob;
  });
}

}  // namespace cpu
}  // namespace dllm
