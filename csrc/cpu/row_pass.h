// The statistics pass shared by the CPU ops: one row_stats call per row to read, split over
// threads only when the rows add up to enough work (cpu_threads.h).
#pragma once
#include <ATen/Parallel.h>
#include <torch/types.h>

#include <limits>
#include <vector>

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

}  // namespace cpu
}  // namespace dllm
