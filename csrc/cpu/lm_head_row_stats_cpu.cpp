// CPU implementation of dllm::lm_head_row_stats: the LM head fused with the row-statistics pass
// (docs/lm_head_row_stats.md). The logits are computed a vocabulary chunk at a time (one ATen
// GEMM of a row block by a chunk of the head, sized so the chunk of weights stays in cache), each
// chunk's rows go through the vectorised pass as a slice at vocab_start = chunk start, and the
// slices' partials merge in order: one merged partial per row, never the whole logits.
#include <ATen/ATen.h>
#include <torch/library.h>
#include <torch/types.h>

#include <cstdlib>
#include <vector>

#include "../lm_head_row_stats_args.h"
#include "cpu_threads.h"
#include "row_pass.h"

namespace dllm {
namespace {

// Bytes of weights per vocabulary chunk: every row block of a chunk re-reads its weights, so they
// should stay in cache (4 MiB: a core's share of the 32 MiB L3 here, with room for the rows);
// smaller chunks cost more GEMM calls of less work each (bench/bench_lm_head_row_stats.py measured both).
// DLLM_LM_HEAD_CHUNK_BYTES=N (read once) overrides it.
int64_t chunk_bytes() {
  static const int64_t value = [] {
    const char* env = std::getenv("DLLM_LM_HEAD_CHUNK_BYTES");
    if (env == nullptr || *env == '\0') return int64_t{4} << 20;
    char* end = nullptr;
    const long long v = std::strtoll(env, &end, 10);
    TORCH_CHECK(end != env && *end == '\0' && v > 0, "DLLM_LM_HEAD_CHUNK_BYTES must be an integer > 0, got '",
                env, "'");
    return static_cast<int64_t>(v);
  }();
  return value;
}

constexpr int64_t kBlockLogits = 65536;  // logits of one row block x chunk (256 KiB in float32)
constexpr int64_t kGroupIds = 8192;      // vocabulary ids per task (chunks merged in order within it)

struct Blocking {
  int64_t chunk, rows, group;  // vocabulary ids per chunk, rows per row block, ids per task
};

// Depends on d, the dtype and V only (never on the thread count), so results do not either.
Blocking blocking(int64_t V, int64_t d, int64_t elem, int64_t n_rows) {
  Blocking k;
  k.chunk = std::max<int64_t>(16, chunk_bytes() / (d * elem) / 16 * 16);
  k.chunk = std::min(k.chunk, V);
  k.rows = std::max<int64_t>(1, std::min(n_rows, kBlockLogits / k.chunk));
  k.group = std::min(V, (kGroupIds + k.chunk - 1) / k.chunk * k.chunk);
  return k;
}

cpu::RowPartial empty_partial() {
  cpu::RowPartial p{};
  p.m1 = p.m2 = p.noisy_best = p.noisy_clean = -__builtin_inff();
  p.idx = p.noisy_idx = -1;
  return p;
}

at::Tensor lm_head_row_stats_cpu(DLLM_LM_HEAD_ROW_STATS_PARAMS) {
  const LmHeadRowStatsArgs a = check_lm_head_row_stats_args(DLLM_LM_HEAD_ROW_STATS_ARGS);
  const int64_t n_rows = a.B * a.R, V = a.V;
  at::Tensor out = at::empty({a.B, a.R, cpu::kPartialCols}, hidden.options().dtype(at::kDouble));
  if (n_rows == 0) return out;
  const at::Tensor h = hidden.reshape({n_rows, a.d});  // a view when hidden is contiguous
  const Blocking k = blocking(V, a.d, hidden.element_size(), n_rows);
  const int64_t n_groups = (V + k.group - 1) / k.group;

  cpu::RowStatsParams prm{};
  prm.type = cpu::logits_type(hidden.scalar_type());
  prm.conf_kind = static_cast<int>(conf_kind);
  prm.suppress_ids = ids_ptr(suppress_ids);
  prm.n_suppress = ids_len(suppress_ids);
  const bool top2 = conf_kind == kMargin, entropy = conf_kind == kNegEntropy;
  const int64_t* pos = positions.data_ptr<int64_t>();
  const int64_t* seed_p = seed ? seed->data_ptr<int64_t>() : nullptr;
  const int64_t* offset_p = offset ? offset->data_ptr<int64_t>() : nullptr;
  const double* temp_p = temperature ? temperature->data_ptr<double>() : nullptr;

  // One partial per (vocabulary group, row), each merged over its group's chunks in order; then
  // the groups merge in order. A task owns a group, so the result is the same for any threads.
  std::vector<cpu::RowPartial> parts(n_groups * n_rows, empty_partial());
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n_groups));
  at::Tensor scratch = at::empty({threads, k.rows, k.chunk}, hidden.options());
  const int64_t work = n_rows * V * (1 + a.d / 32);  // a value's GEMM ~ d/32 passes over it

  cpu::for_each_item(n_groups, work, [&](int64_t g) {
    at::Tensor buf_all = scratch[std::min<int64_t>(at::get_thread_num(), threads - 1)];
    cpu::RowPartial* run = parts.data() + g * n_rows;
    const int64_t g_end = std::min(V, (g + 1) * k.group);
    for (int64_t c0 = g * k.group; c0 < g_end; c0 += k.chunk) {
      const int64_t cv = std::min(k.chunk, g_end - c0);
      const at::Tensor w_t = weight.narrow(0, c0, cv).t();
      cpu::RowStatsParams p = prm;
      p.V = cv;
      p.vocab_start = vocab_start + c0;
      for (int64_t r0 = 0; r0 < n_rows; r0 += k.rows) {
        const int64_t nr = std::min(k.rows, n_rows - r0);
        at::Tensor buf = buf_all.view({-1}).narrow(0, 0, nr * cv).view({nr, cv});  // contiguous rows
        if (bias)
          at::addmm_out(buf, bias->narrow(0, c0, cv), h.narrow(0, r0, nr), w_t);
        else
          at::mm_out(buf, h.narrow(0, r0, nr), w_t);
        const char* rows = static_cast<const char*>(buf.data_ptr());
        for (int64_t j = 0; j < nr; ++j) {
          const int64_t i = r0 + j, b = i / a.R;
          if (pos[i] < 0) continue;  // not read: stays the empty partial
          p.temperature = temp_p ? static_cast<float>(temp_p[b]) : 0.f;
          cpu::RowNoise noise;
          noise.uniforms = nullptr;
          noise.seed = seed_p ? static_cast<uint64_t>(seed_p[b]) : 0u;
          noise.offset = offset_p ? static_cast<uint64_t>(offset_p[b]) : 0u;
          noise.position = static_cast<uint32_t>(pos[i]);
          const cpu::RowPartial part = cpu::row_partial(rows + j * cv * buf.element_size(), p, noise);
          if (c0 == g * k.group) {
            run[i] = part;
          } else {
            const cpu::RowPartial pair[2] = {run[i], part};
            run[i] = cpu::merge_row_partials(pair, 2, top2, entropy);
          }
        }
      }
    }
  });

  double* out_p = out.data_ptr<double>();
  std::vector<cpu::RowPartial> row(n_groups);
  for (int64_t i = 0; i < n_rows; ++i) {
    for (int64_t g = 0; g < n_groups; ++g) row[g] = parts[g * n_rows + i];
    cpu::pack_partial(cpu::merge_row_partials(row.data(), n_groups, top2, entropy), out_p + i * cpu::kPartialCols);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(dllm, CPU, m) { m.impl("lm_head_row_stats", &lm_head_row_stats_cpu); }

}  // namespace dllm
