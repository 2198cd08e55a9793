// CPU implementation of dllm::lm_head_row_stats: the LM head fused with the row-statistics pass
// (docs/lm_head_row_stats.md). The logits are computed a vocabulary chunk at a time (one ATen
// GEMM of a row block by a chunk of the head, sized so the chunk of weights stays in cache), each
// chunk's rows go through the vectorised pass as a slice at vocab_start = chunk start, and the
// slices' partials merge in order: one merged partial per row, never the whole logits.
#include <ATen/cpu/Utils.h>
#include <torch/library.h>
#include "../aten_deps.h"

#include <atomic>
#include <cstdlib>
#include <vector>

#include "../lm_head_row_stats_args.h"
#include "cpu_threads.h"
#include "row_pass.h"

namespace dllm {
namespace {

// The GEMM runs in float32 when the CPU has no native GEMM for the dtype: ATen's bfloat16 /
// float16 GEMM without AVX512-BF16 / -FP16 was 3-6x slower here than widening a chunk of the
// head and a block of rows to float32 and running sgemm (docs/lm_head_row_stats.md, "CPU"). The
// products of two 16-bit floats are exact in float32, so the contract (float32 accumulation over
// d, rounded to hidden's dtype) is the same either way.
bool widen_to_float(at::ScalarType dt) {
  if (dt == at::kFloat) return false;
  static const auto caps = at::cpu::get_cpu_capabilities();
  const auto has = [&](const char* key) {
    const auto it = caps.find(key);
    return it != caps.end() && it->second.isBool() && it->second.toBool();
  };
  if (dt == at::kBFloat16) return !(has("avx512_bf16") || has("amx_bf16"));
  return !(has("avx512_fp16") || has("amx_fp16"));
}

// Bytes of weights per vocabulary chunk, by path. Widened: the float32 chunk is re-read by every
// row of its block, so it should stay in L2 (256 KiB of the 512 KiB here, beside the row block).
// Native: 4 MiB (a core's share of L3; ATen's 16-bit GEMM does its own blocking), with row
// blocks of at most 65,536 logits. DLLM_LM_HEAD_CHUNK_BYTES=N (read once) overrides both.
int64_t chunk_bytes(bool widen) {
  static const int64_t value = [] {
    const char* env = std::getenv("DLLM_LM_HEAD_CHUNK_BYTES");
    if (env == nullptr || *env == '\0') return int64_t{0};
    char* end = nullptr;
    const long long v = std::strtoll(env, &end, 10);
    TORCH_CHECK(end != env && *end == '\0' && v > 0, "DLLM_LM_HEAD_CHUNK_BYTES must be an integer > 0, got '",
                env, "'");
    return static_cast<int64_t>(v);
  }();
  return value > 0 ? value : widen ? int64_t{256} << 10 : int64_t{4} << 20;
}

constexpr int64_t kMaxBlockRows = 64;    // widened: rows per GEMM, enough to amortise a chunk's widening
constexpr int64_t kMinBlockRows = 16;    // widened: fewer (within the memory bound) -> the native path
constexpr int64_t kBlockLogits = 65536;  // native: logits of one row block x chunk
constexpr int64_t kGroupIds = 8192;      // vocabulary ids per task (chunks merged in order within it)

struct Blocking {
  bool widen;             // the GEMM in float32 (widen_to_float and the scratch fits the bound)
  int64_t chunk, group;   // vocabulary ids per chunk and per group: they fix the merge order
  int64_t rows, threads;  // rows per block and threads used: free (a row's result is the same)
};

// Scratch of one thread: the GEMM's output; widened also the head chunk, the row block, the bias
// chunk (float32) and the output rounded to the dtype.
int64_t thread_bytes(const Blocking& k, int64_t d, int64_t elem) {
  if (!k.widen) return k.rows * k.chunk * elem;
  return (k.chunk + k.rows) * d * 4 + k.chunk * 4 + k.rows * k.chunk * (4 + elem);
}

// Widened, the scratch stays within 1/16 of the logits the unfused head would write
// (rows x V x elem): fewer rows per block, then fewer threads; when even kMinBlockRows rows on one
// thread do not fit (few rows, large d), or fit on one thread only, the native path runs instead
// (its scratch is at most threads x 65,536 logits).
Blocking blocking(int64_t V, int64_t d, int64_t elem, bool widen, int64_t n_rows) {
  Blocking k;
  k.widen = widen;
  const int64_t celem = widen ? 4 : elem;
  k.chunk = std::min(V, std::max<int64_t>(16, chunk_bytes(widen) / (d * celem) / 16 * 16));
  k.group = std::min(V, (kGroupIds + k.chunk - 1) / k.chunk * k.chunk);
  k.rows = widen ? std::min(n_rows, kMaxBlockRows) : std::max<int64_t>(1, std::min(n_rows, kBlockLogits / k.chunk));
  const int64_t n_groups = (V + k.group - 1) / k.group, n_blocks = (n_rows + k.rows - 1) / k.rows;
  k.threads = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n_groups * n_blocks));
  if (!widen) return k;
  const int64_t budget = n_rows * V * elem / 16;
  const auto over = [&] { return k.threads * thread_bytes(k, d, elem) > budget; };
  const int64_t min_rows = std::min(n_rows, kMinBlockRows);
  while (k.rows > min_rows && over()) k.rows = std::max(min_rows, (k.rows + 1) / 2);
  while (k.threads > 1 && over()) --k.threads;
  // One widened thread on a multi-threaded pool runs on the calling thread, where each small
  // sgemm fans out over the BLAS's threads (measured 4x slower than the native path at 32 rows).
  const bool lone = k.threads < 2 && at::get_num_threads() > 1;
  return over() || lone ? blocking(V, d, elem, false, n_rows) : k;
}

cpu::RowPartial empty_partial() {
  cpu::RowPartial p{};
  p.m1 = p.m2 = p.noisy_best = p.noisy_clean = -__builtin_inff();
  p.idx = p.noisy_idx = -1;
  return p;
}

at::Tensor lm_head_row_stats_cpu(DLLM_LM_HEAD_ROW_STATS_PARAMS) {
  const LmHeadRowStatsArgs a = check_lm_head_row_stats_args(DLLM_LM_HEAD_ROW_STATS_ARGS);
  const int64_t n_rows = a.B * a.R, V = a.V, d = a.d;
  at::Tensor out = at::empty({a.B, a.R, cpu::kPartialCols}, hidden.options().dtype(at::kDouble));
  if (n_rows == 0) return out;
  const at::Tensor h = hidden.reshape({n_rows, d});  // a view when hidden is contiguous
  const int64_t elem = hidden.element_size();
  const Blocking k = blocking(V, d, elem, widen_to_float(hidden.scalar_type()), n_rows);
  const bool widen = k.widen;
  const at::ScalarType cdt = widen ? at::kFloat : hidden.scalar_type();  // the GEMM's dtype
  const int64_t n_groups = (V + k.group - 1) / k.group, n_blocks = (n_rows + k.rows - 1) / k.rows;

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

  // One partial per (vocabulary group, row), merged over the group's chunks in order; then the
  // groups merge in order. A task is a (row block, group) pair and owns those partials, so the
  // result is the same for any number of threads. Each thread's scratch is allocated once.
  std::vector<cpu::RowPartial> parts(n_groups * n_rows, empty_partial());
  struct Scratch {
    at::Tensor w, h, bias, gemm, logits;  // widened head chunk, row block, bias; GEMM output; rounded
  };
  std::vector<Scratch> scratch(k.threads);
  for (Scratch& sc : scratch) {
    sc.gemm = at::empty({k.rows * k.chunk}, hidden.options().dtype(cdt));
    if (widen) {
      sc.w = at::empty({k.chunk, d}, hidden.options().dtype(cdt));
      sc.h = at::empty({k.rows, d}, hidden.options().dtype(cdt));
      sc.logits = at::empty({k.rows * k.chunk}, hidden.options());
      if (bias) sc.bias = at::empty({k.chunk}, hidden.options().dtype(cdt));
    }
  }
  std::atomic<int64_t> next{0};
  const auto task = [&](Scratch& sc, int64_t t) {
    const int64_t g = t / n_blocks, r0 = (t % n_blocks) * k.rows, nr = std::min(k.rows, n_rows - r0);
    const int64_t g_end = std::min(V, (g + 1) * k.group);
    cpu::RowPartial* run = parts.data() + g * n_rows;
    at::Tensor h_blk = h.narrow(0, r0, nr);
    if (widen) h_blk = sc.h.narrow(0, 0, nr).copy_(h_blk);
    for (int64_t c0 = g * k.group; c0 < g_end; c0 += k.chunk) {
      const int64_t cv = std::min(k.chunk, g_end - c0);
      at::Tensor w_c = weight.narrow(0, c0, cv);
      if (widen) w_c = sc.w.narrow(0, 0, cv).copy_(w_c);
      at::Tensor buf = sc.gemm.narrow(0, 0, nr * cv).view({nr, cv});  // contiguous rows
      if (bias) {
        at::Tensor b_c = bias->narrow(0, c0, cv);
        if (widen) b_c = sc.bias.narrow(0, 0, cv).copy_(b_c);
        at::addmm_out(buf, b_c, h_blk, w_c.t());
      } else {
        at::mm_out(buf, h_blk, w_c.t());
      }
      if (widen) buf = sc.logits.narrow(0, 0, nr * cv).view({nr, cv}).copy_(buf);  // rounded to the dtype
      cpu::RowStatsParams p = prm;
      p.V = cv;
      p.vocab_start = vocab_start + c0;
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
        const cpu::RowPartial part = cpu::row_partial(rows + j * cv * elem, p, noise);
        if (c0 == g * k.group) {
          run[i] = part;
        } else {
          const cpu::RowPartial pair[2] = {run[i], part};
          run[i] = cpu::merge_row_partials(pair, 2, top2, entropy);
        }
      }
    }
  };
  // Tasks handed out one at a time (a thread slowed by a busy core takes fewer); each of the
  // k.threads workers keeps its own scratch. Small steps stay on the calling thread.
  const int64_t n_tasks = n_groups * n_blocks, work = n_rows * V * (1 + d / 32);  // GEMM ~ d/32 passes
  if (k.threads <= 1 || work < cpu::min_parallel_values()) {
    for (int64_t t = 0; t < n_tasks; ++t) task(scratch[0], t);
  } else {
    at::parallel_for(0, k.threads, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t w = lo; w < hi; ++w)
        for (int64_t t = next.fetch_add(1); t < n_tasks; t = next.fetch_add(1)) task(scratch[w], t);
    });
  }

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
