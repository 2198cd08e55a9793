// CPU implementation of dllm::row_stats: the mergeable partial statistics of every logits row,
// for a caller that merges rows split across processes or chunks (docs/row_stats.md). The same
// vectorised pass serves fused_unmask and select; here its partial leaves the op unfinished.
#include <torch/library.h>
#include "../aten_deps.h"

#include "../row_stats_args.h"
#include "cpu_threads.h"
#include "row_pass.h"

namespace dllm {
namespace {

at::Tensor row_stats_cpu(DLLM_ROW_STATS_PARAMS) {
  const RowStatsArgs a = check_row_stats_args(DLLM_ROW_STATS_ARGS);
  at::Tensor out = at::empty({a.B, a.R, cpu::kPartialCols}, logits.options().dtype(at::kDouble));
  cpu::RowStatsParams prm{};
  prm.type = cpu::logits_type(logits.scalar_type());
  prm.V = a.V;
  prm.conf_kind = static_cast<int>(conf_kind);
  prm.suppress_ids = ids_ptr(suppress_ids);
  prm.n_suppress = ids_len(suppress_ids);
  prm.vocab_start = vocab_start;
  const char* base = static_cast<const char*>(logits.data_ptr());
  const int64_t elem = logits.element_size();
  const int64_t* pos = positions.data_ptr<int64_t>();
  const int64_t* seed_p = seed ? seed->data_ptr<int64_t>() : nullptr;
  const int64_t* offset_p = offset ? offset->data_ptr<int64_t>() : nullptr;
  const double* temp_p = temperature ? temperature->data_ptr<double>() : nullptr;
  const float* gumbel_p = gumbel_u ? gumbel_u->data_ptr<float>() : nullptr;
  double* out_p = out.data_ptr<double>();
  cpu::RowPartial empty{};
  empty.m1 = empty.m2 = empty.noisy_best = empty.noisy_clean = -__builtin_inff();
  empty.idx = empty.noisy_idx = -1;

  const int64_t n_rows = a.B * a.R;
  cpu::for_each_item(n_rows, n_rows * a.V, [&](int64_t i) {
    const int64_t b = i / a.R, r = i % a.R;
    if (pos[i] < 0) {
      cpu::pack_partial(empty, out_p + i * cpu::kPartialCols);
      return;
    }
    cpu::RowStatsParams p = prm;
    p.temperature = temp_p ? static_cast<float>(temp_p[b]) : 0.f;
    cpu::RowNoise noise;
    noise.uniforms = gumbel_p ? gumbel_p + i * a.V : nullptr;
    noise.seed = seed_p ? static_cast<uint64_t>(seed_p[b]) : 0u;
    noise.offset = offset_p ? static_cast<uint64_t>(offset_p[b]) : 0u;
    noise.position = static_cast<uint32_t>(pos[i]);
    const char* row = base + (b * logits.stride(0) + r * logits.stride(1)) * elem;
    cpu::pack_partial(cpu::row_partial(row, p, noise), out_p + i * cpu::kPartialCols);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(dllm, CPU, m) { m.impl("row_stats", &row_stats_cpu); }

}  // namespace dllm
