// CPU implementation of dllm::fused_unmask: decide the rows to read, one pass over each of them
// (parallel over rows), then the shared policy stage (parallel over sequences).
#include <ATen/Parallel.h>
#include <torch/library.h>
#include "../aten_deps.h"

#include <algorithm>
#include <tuple>
#include <vector>

#include "../fused_unmask_args.h"
#include "cpu_threads.h"
#include "policy_cpu.h"
#include "row_pass.h"

namespace dllm {
namespace {

// The rows this step reads, by the same rule the policy stage uses (policy.h: position_is_read).
std::vector<cpu::ReadRow> rows_to_read(const FusedUnmaskArgs& a, const int64_t* x, const int64_t* state,
                                       const int64_t* row_start, const double* pack) {
  std::vector<cpu::ReadRow> rows;
  for (int64_t b = 0; b < a.B; ++b) {
    const PolicyParams pp = with_unmask_row(a.policy, pack + b * kUnmaskParams);
    const SeqState st = load_state(state + b * kStateCols, a.L);
    const Span sp = compute_span(st, pp);
    if (!sp.active) continue;
    const int64_t rs = row_start ? row_start[b] : 0;
    const int64_t from = pp.eotp ? st.gen_start : sp.start;
    const int64_t to = pp.eotp ? st.end_pos : sp.end;
    for (int64_t p = from; p < to; ++p) {
      if (position_is_read(p, x + b * a.L, st, sp, pp, rs, a.R))
        rows.push_back({b, p, p - (pp.shift ? 1 : 0) - rs});
    }
  }
  return rows;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fused_unmask_cpu(DLLM_FUSED_UNMASK_PARAMS) {
  const FusedUnmaskArgs a = check_fused_unmask_args(DLLM_FUSED_UNMASK_ARGS);
  const at::Tensor pack = unmask_params_or_defaults(params, x);
  const double* pack_p = pack.data_ptr<double>();
  at::Tensor x0 = x.clone();
  at::Tensor transfer = at::zeros({a.B, a.L}, x.options().dtype(at::kBool));
  at::Tensor window_stats = at::zeros({a.B, 3}, x.options().dtype(at::kFloat));
  at::Tensor pprob = at::zeros({a.B, a.L}, x.options().dtype(at::kFloat));

  int64_t* x_p = x.data_ptr<int64_t>();
  int64_t* x0_p = x0.data_ptr<int64_t>();
  float* conf_p = conf.data_ptr<float>();
  float* pprob_p = pprob.data_ptr<float>();
  int64_t* state_p = state.data_ptr<int64_t>();
  const int64_t* row_start_p = row_start ? row_start->data_ptr<int64_t>() : nullptr;
  const std::vector<cpu::ReadRow> rows = rows_to_read(a, x_p, state_p, row_start_p, pack_p);

  cpu::RowPass pass = cpu::row_pass_for(logits, a.L, gumbel_u, suppress_ids, zero_conf_ids, a.policy.conf_kind);
  pass.seed = state_p + kSeed;  // noise keyed by each sequence's state
  pass.offset = state_p + kOffset;
  pass.key_stride = kStateCols;
  pass.temperature = pack_p + kUnm_temperature;  // each sequence's own column of the pack
  pass.temperature_stride = kUnmaskParams;
  pass.invalid_x0 = a.policy.mask_id;
  if (row_stats) cpu::row_stats_merge_pass(rows, pass, *row_stats, x0_p, conf_p, pprob_p);
  else cpu::row_stats_pass(rows, pass, x0_p, conf_p, pprob_p);

  // Policy: per sequence, the shared host/device logic.
  const float* rank_p = rank_u ? rank_u->data_ptr<float>() : nullptr;
  bool* transfer_p = transfer.data_ptr<bool>();
  float* ws_p = window_stats.data_ptr<float>();
  int64_t block = 1;  // the longest block a sequence may open: the policy stage's cost per sequence
  for (int64_t b = 0; b < a.B; ++b)
    block = std::max(block, static_cast<int64_t>(pack_p[b * kUnmaskParams + kUnm_block_length]));
  block = std::min(a.L, block);
  at::parallel_for(0, a.B, cpu::policy_grain(a.B, a.L, block), [&](int64_t lo, int64_t hi) {
    cpu::PolicyWork work;
    for (int64_t b = lo; b < hi; ++b) {
      SeqIO io;
      io.L = a.L;
      io.x = x_p + b * a.L;
      io.conf = conf_p + b * a.L;
      io.x0 = x0_p + b * a.L;
      io.pprob = pprob_p + b * a.L;
      io.rank_u = rank_p ? rank_p + b * a.L : nullptr;
      io.transfer = transfer_p + b * a.L;
      io.window_stats = ws_p + b * 3;
      io.state = state_p + b * kStateCols;
      io.row_start = row_start_p ? row_start_p[b] : 0;
      io.R = a.R;
      cpu::policy_step(io, with_unmask_row(a.policy, pack_p + b * kUnmaskParams), work);
    }
  });
  return {x0, transfer, window_stats};
}

}  // namespace

TORCH_LIBRARY_IMPL(dllm, CPU, m) { m.impl("fused_unmask", &fused_unmask_cpu); }

}  // namespace dllm
