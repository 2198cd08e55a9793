// CPU implementation of dllm::select: the stateless selection step. The rows of the caller's
// candidates are read once (the statistics pass fused_unmask uses), then the rule runs per
// sequence over [start, end) with that sequence's parameters (policy_cpu.h select_step).
#include <ATen/Parallel.h>
#include <torch/library.h>
#include "../aten_deps.h"

#include <algorithm>
#include <limits>
#include <tuple>
#include <vector>

#include "../select_args.h"
#include "cpu_threads.h"
#include "policy_cpu.h"
#include "row_pass.h"

namespace dllm {
namespace {

struct Bounds {
  int64_t start, end;
};

Bounds bounds_of(const int64_t* bounds, int64_t b, int64_t L) {
  return bounds ? Bounds{bounds[2 * b], bounds[2 * b + 1]} : Bounds{0, L};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> select_cpu(DLLM_SELECT_PARAMS_DECL) {
  const SelectArgs a = check_select_args(DLLM_SELECT_ARGS);
  at::Tensor pack = params ? *params : at::empty({a.B, kSelectParams}, x.options().dtype(at::kDouble));
  if (!params) {
    double* row = pack.data_ptr<double>();
    for (int64_t b = 0; b < a.B; ++b) default_select_row(row + b * kSelectParams);
  }
  at::Tensor x0 = x.clone();
  at::Tensor conf = prev_conf ? prev_conf->clone()
                              : at::full({a.B, a.L}, std::numeric_limits<float>::quiet_NaN(),
                                         x.options().dtype(at::kFloat));
  at::Tensor transfer = at::zeros({a.B, a.L}, x.options().dtype(at::kBool));

  int64_t* x_p = x.data_ptr<int64_t>();
  int64_t* x0_p = x0.data_ptr<int64_t>();
  float* conf_p = conf.data_ptr<float>();
  const double* pack_p = pack.data_ptr<double>();
  const bool* cand_p = candidates ? candidates->data_ptr<bool>() : nullptr;
  const int64_t* bounds_p = bounds ? bounds->data_ptr<int64_t>() : nullptr;
  const int64_t* row_start_p = row_start ? row_start->data_ptr<int64_t>() : nullptr;
  const int64_t row_shift = a.policy.shift ? 1 : 0;

  // Rows to read: candidates inside the bounds whose row the logits hold.
  std::vector<cpu::ReadRow> rows;
  for (int64_t b = 0; b < a.B; ++b) {
    const Bounds bd = bounds_of(bounds_p, b, a.L);
    const int64_t rs = row_start_p ? row_start_p[b] : 0;
    for (int64_t p = bd.start; p < bd.end; ++p) {
      const int64_t r = p - row_shift - rs;
      if ((!cand_p || cand_p[b * a.L + p]) && r >= 0 && r < a.R) rows.push_back({b, p, r});
    }
  }

  cpu::RowPass pass = cpu::row_pass_for(logits, a.L, gumbel_u, suppress_ids, zero_conf_ids, a.policy.conf_kind);
  pass.seed = seed ? seed->data_ptr<int64_t>() : nullptr;
  pass.offset = offset ? offset->data_ptr<int64_t>() : nullptr;
  pass.key_stride = 1;
  pass.temperature = pack_p + kSel_temperature;  // each sequence's own column of the pack
  pass.temperature_stride = kSelectParams;
  pass.invalid_x0 = -1;  // x0 keeps the current token where the row is invalid
  // Rows read this step: the pass writes conf there; a valid conf marks a candidate below.
  std::vector<char> read(static_cast<size_t>(a.B * a.L), 0);
  for (const cpu::ReadRow& rr : rows) read[rr.b * a.L + rr.p] = 1;
  if (row_stats) cpu::row_stats_merge_pass(rows, pass, *row_stats, x0_p, conf_p, nullptr);
  else cpu::row_stats_pass(rows, pass, x0_p, conf_p, nullptr);

  const float* rank_p = rank_u ? rank_u->data_ptr<float>() : nullptr;
  bool* transfer_p = transfer.data_ptr<bool>();
  const int64_t* seed_p = seed ? seed->data_ptr<int64_t>() : nullptr;
  const int64_t* offset_p = offset ? offset->data_ptr<int64_t>() : nullptr;
  int64_t widest = 1;
  for (int64_t b = 0; b < a.B; ++b) {
    const Bounds bd = bounds_of(bounds_p, b, a.L);
    widest = std::max(widest, bd.end - bd.start);
  }
  at::parallel_for(0, a.B, cpu::policy_grain(a.B, a.L, widest), [&](int64_t lo, int64_t hi) {
    cpu::PolicyWork work;
    for (int64_t b = lo; b < hi; ++b) {
      const Bounds bd = bounds_of(bounds_p, b, a.L);
      const SelectRow row = load_select_row(pack_p + b * kSelectParams);
      const PolicyParams pp = with_select_row(a.policy, row);
      SeqIO io{};
      io.L = a.L;
      io.x = x_p + b * a.L;
      io.conf = conf_p + b * a.L;
      io.x0 = x0_p + b * a.L;
      io.rank_u = rank_p ? rank_p + b * a.L : nullptr;
      io.transfer = transfer_p + b * a.L;
      io.row_start = row_start_p ? row_start_p[b] : 0;
      io.R = a.R;
      SeqState st{};
      st.gen_start = st.block_start = bd.start;
      st.gen_end = st.block_end = st.end_pos = bd.end;
      st.seed = seed_p ? seed_p[b] : 0;
      st.offset = offset_p ? offset_p[b] : 0;
      const int64_t n = bd.end - bd.start;
      work.resize(n);
      int64_t n_cand = 0;
      for (int64_t j = 0; j < n; ++j) {
        const int64_t at = b * a.L + bd.start + j;
        work.cand[j] = read[at] && is_valid_conf(conf_p[at]);
        n_cand += work.cand[j];
      }
      cpu::select_step(io, st, pp, work, row.k < n_cand ? row.k : n_cand, commit);
    }
  });
  return {x0, conf, transfer};
}

}  // namespace

TORCH_LIBRARY_IMPL(dllm, CPU, m) { m.impl("select", &select_cpu); }

}  // namespace dllm
