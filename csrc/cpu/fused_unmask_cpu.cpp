// CPU implementation of dllm::fused_unmask: decide the rows to read, one pass over each of them
// (parallel over rows), then the shared policy stage (parallel over sequences).
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <limits>
#include <tuple>
#include <vector>

#include "../fused_unmask_args.h"
#include "row_stats.h"

namespace dllm {
namespace {

struct ReadRow {
  int64_t b, p, r;
};

// Fan-out pays only when the work outweighs waking another thread, and on a shared machine that
// thread may have to wait for a core another process holds (a timeslice, milliseconds): below
// min_parallel_values() logits values (about 1 ms on one core) a step runs on the calling thread.
// Measured with bench/bench_unmask.py --contention (docs/fused_unmask.md, "Threads");
// DLLM_CPU_MIN_PARALLEL_VALUES=N (read once) overrides it, 0 fans out always.
int64_t min_parallel_values() {
  static const int64_t value = [] {
    const char* env = std::getenv("DLLM_CPU_MIN_PARALLEL_VALUES");
    if (env == nullptr || *env == '\0') return int64_t{1} << 20;
    char* end = nullptr;
    const long long v = std::strtoll(env, &end, 10);
    TORCH_CHECK(end != env && *end == '\0' && v >= 0,
                "DLLM_CPU_MIN_PARALLEL_VALUES must be an integer >= 0, got '", env, "'");
    return static_cast<int64_t>(v);
  }();
  return value;
}

// body(i) for every i in [0, n): on the calling thread when `work` (in logits values, or the
// equivalent) is below min_parallel_values(), else on up to at::get_num_threads() threads that take
// items one at a time, so a thread slowed by a busy core takes fewer items instead of holding
// back a fixed share. Every item writes its own outputs, so results never depend on the split.
template <class Body>
void for_each_item(int64_t n, int64_t work, const Body& body) {
  const int64_t threads = std::min<int64_t>(at::get_num_threads(), n);
  if (threads <= 1 || work < min_parallel_values()) {
    for (int64_t i = 0; i < n; ++i) body(i);
    return;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    for (int64_t i = next.fetch_add(1, std::memory_order_relaxed); i < n;
         i = next.fetch_add(1, std::memory_order_relaxed))
      body(i);
  });
}

// The rows this step reads, by the same rule the policy stage uses (policy.h: position_is_read).
std::vector<ReadRow> rows_to_read(const FusedUnmaskArgs& a, const int64_t* x, const int64_t* state,
                                  const int64_t* row_start) {
  std::vector<ReadRow> rows;
  const PolicyParams& pp = a.policy;
  for (int64_t b = 0; b < a.B; ++b) {
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

cpu::LogitsType logits_type(at::ScalarType t) {
  if (t == at::kHalf) return cpu::LogitsType::kFloat16;
  if (t == at::kBFloat16) return cpu::LogitsType::kBFloat16;
  return cpu::LogitsType::kFloat32;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fused_unmask_cpu(DLLM_FUSED_UNMASK_PARAMS) {
  const FusedUnmaskArgs a = check_fused_unmask_args(DLLM_FUSED_UNMASK_ARGS);
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
  const std::vector<ReadRow> rows = rows_to_read(a, x_p, state_p, row_start_p);

  cpu::RowStatsParams prm;
  prm.type = logits_type(logits.scalar_type());
  prm.V = a.V;
  prm.conf_kind = a.policy.conf_kind;
  prm.temperature = static_cast<float>(temperature);
  prm.suppress_ids = ids_ptr(suppress_ids);
  prm.n_suppress = ids_len(suppress_ids);
  prm.zero_conf_ids = ids_ptr(zero_conf_ids);
  prm.n_zero_conf = ids_len(zero_conf_ids);
  const char* logits_p = static_cast<const char*>(logits.data_ptr());
  const int64_t elem = logits.element_size();
  const float* gumbel_p = gumbel_u ? gumbel_u->data_ptr<float>() : nullptr;

  // Statistics: one pass per read row; rows are independent, so split them over threads.
  const int64_t n_rows = static_cast<int64_t>(rows.size());
  for_each_item(n_rows, n_rows * a.V, [&](int64_t i) {
    const ReadRow& rr = rows[i];
    const int64_t* st = state_p + rr.b * kStateCols;
    cpu::RowNoise noise;
    noise.uniforms = gumbel_p ? gumbel_p + (rr.b * a.R + rr.r) * a.V : nullptr;
    noise.seed = static_cast<uint64_t>(st[kSeed]);
    noise.offset = static_cast<uint64_t>(st[kOffset]);
    noise.position = static_cast<uint32_t>(rr.p);
    const char* row = logits_p + (rr.b * a.logits_stride_b + rr.r * a.logits_stride_r) * elem;
    const cpu::RowStats s = cpu::row_stats(row, prm, noise);
    const int64_t at_bp = rr.b * a.L + rr.p;
    x0_p[at_bp] = s.valid ? s.x0 : a.policy.mask_id;
    conf_p[at_bp] = s.valid ? s.conf : std::numeric_limits<float>::quiet_NaN();
    pprob_p[at_bp] = s.pprob;
  });

  // Policy: per sequence, the shared host/device logic.
  const float* rank_p = rank_u ? rank_u->data_ptr<float>() : nullptr;
  bool* transfer_p = transfer.data_ptr<bool>();
  float* ws_p = window_stats.data_ptr<float>();
  // A sequence's policy costs about L plus (block length)^2 steps (every candidate ranks against
  // the others): split sequences over threads only when that adds up (same bar as the rows).
  const int64_t block = std::min(a.L, std::max<int64_t>(a.policy.block_length, 1));
  const int64_t policy_work = a.B * (a.L + block * block);
  const int64_t policy_grain = policy_work < min_parallel_values() ? a.B : 1;
  at::parallel_for(0, a.B, policy_grain, [&](int64_t lo, int64_t hi) {
    std::vector<char> work_bytes(static_cast<size_t>(policy_work_size(a.L)) * sizeof(bool));
    bool* work = reinterpret_cast<bool*>(work_bytes.data());
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
      policy_step(io, a.policy, work);
    }
  });
  return {x0, transfer, window_stats};
}

}  // namespace

TORCH_LIBRARY_IMPL(dllm, CPU, m) { m.impl("fused_unmask", &fused_unmask_cpu); }

}  // namespace dllm
