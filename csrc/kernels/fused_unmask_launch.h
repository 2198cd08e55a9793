// Plain-C++ interface between the CUDA binding (csrc/cuda/fused_unmask_cuda.cpp, compiled by the
// host compiler against torch) and the kernels (compiled by nvcc): raw pointers, shapes, the
// shared PolicyParams and parameter pack, and the workspace layout. No torch and no CUDA headers here.
#pragma once
#include <cstddef>
#include <cstdint>

#include "../include/dllm/fused_unmask_params.h"

namespace dllm {
namespace cuda {

enum class LogitsDtype : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

struct UnmaskParams {
  // Logits [B, R, V], element strides (stride along V is 1).
  const void* logits;
  LogitsDtype dtype;
  int64_t B, R, V, L;
  int64_t stride_b, stride_r;
  // Tokens, confidences and per-sequence state: updated in place.
  int64_t* x;         // [B, L]
  float* conf;        // [B, L]
  int64_t* state;     // [B, kStateCols]
  const int64_t* row_start;  // [B] or nullptr
  // Noise: explicit uniforms or Philox keyed by the state's SEED/OFFSET.
  const float* gumbel_u;  // [B, R, V] or nullptr
  const float* rank_u;    // [B, L] or nullptr
  // The per-sequence parameter pack [B, kUnmaskParams] float64 (include/dllm/fused_unmask_params.h):
  // sequence b's row at params + b * params_stride (stride 0: one row for the whole batch).
  const double* params;
  int64_t params_stride;
  // Vocabulary lists (ids outside [0, V) are ignored).
  const int64_t* suppress_ids;
  int64_t n_suppress;
  const int64_t* zero_conf_ids;
  int64_t n_zero_conf;
  PolicyParams policy;
  // Outputs.
  int64_t* x0;          // [B, L]
  bool* transfer;       // [B, L]
  float* window_stats;  // [B, 3]
  // Scratch of unmask_workspace_bytes(B, R, V, L) bytes, 16-byte aligned; needs no initialisation.
  void* workspace;
};

// One thread block's share of one logits row: the merge of these over a row's splits gives every
// statistic. m1 is NaN when the share holds a NaN or +inf (the row is then invalid).
struct RowPartial {
  float m1;           // largest finite-or--inf clean value
  float m2;           // second largest (equal to m1 when the maximum is shared)
  float sum;          // sum of exp(v - m1)
  float ent;          // sum of exp(v - m1) * (v - m1)
  float noisy;        // best noisy value v + T * g
  float noisy_clean;  // clean value at the best noisy index
  int32_t i1;         // first index of m1
  int32_t noisy_idx;  // first index of the best noisy value
};
static_assert(sizeof(RowPartial) == 32, "RowPartial is read and written as two 16-byte words");

// The vocabulary of a row is cut into `splits` tiles, one thread block each. The cut depends on V
// only, never on the batch, so a row's float32 reductions are the same at every batch size
// (batch invariance, bit for bit). ~16k elements per tile keeps 32 rows of a 126k vocabulary
// (batch 1, one block) at 256 blocks: enough to fill an H100.
constexpr int64_t kSplitTarget = 16384;
constexpr int kMaxSplits = 32;

DLLM_HD int stats_splits(int64_t V) {
  const int64_t s = (V + kSplitTarget - 1) / kSplitTarget;
  return static_cast<int>(s < 1 ? 1 : (s > kMaxSplits ? kMaxSplits : s));
}

// Tile length: a multiple of 8 elements, so a tile starts on a 16-byte boundary of an aligned row.
DLLM_HD int64_t stats_tile(int64_t V, int splits) {
  const int64_t t = (V + splits - 1) / splits;
  return (t + 7) / 8 * 8;
}

// The policy kernel ranks a block of up to kSortMax positions by one bitonic sort in shared memory;
// a longer block sorts chunks of kSortMax there, keeps them in the workspace (`chunks`) and ranks
// each candidate by a binary search of every chunk.
constexpr int kSortMax = 2048;

// Workspace words per sequence for the sorted chunks: none where no block can be longer than
// kSortMax (a block lies within its row of L). constexpr: callable from host and device code
// (--expt-relaxed-constexpr).
constexpr int64_t rank_chunk_words(int64_t L) {
  return L <= kSortMax ? 0 : (L + kSortMax - 1) / kSortMax * kSortMax;
}

struct UnmaskWorkspace {
  RowPartial* partials;  // [B * R * splits]
  float* pprob;          // [B, L] clean probability of x0 at read positions
  bool* read;            // [B, L] position read this step (decided before any token changes)
  bool* cand;            // [B, L] candidate flag per block offset
  bool* sel;             // [B, L] selected flag per block offset
  int32_t* rank;         // [B, L] candidate rank per block offset
  int64_t* chunks;       // [B, rank_chunk_words(L)] a long block's sorted chunks
};

inline size_t align16(size_t n) { return (n + 15) / 16 * 16; }

inline size_t unmask_workspace_bytes(int64_t B, int64_t R, int64_t V, int64_t L) {
  const size_t rows = static_cast<size_t>(B) * static_cast<size_t>(R);
  const size_t bl = static_cast<size_t>(B) * static_cast<size_t>(L);
  return align16(rows * stats_splits(V) * sizeof(RowPartial)) + align16(bl * sizeof(float)) +
         3 * align16(bl) + align16(bl * sizeof(int32_t)) +
         align16(static_cast<size_t>(B) * rank_chunk_words(L) * sizeof(int64_t));
}

inline UnmaskWorkspace unmask_workspace(void* base, int64_t B, int64_t R, int64_t V, int64_t L) {
  char* p = static_cast<char*>(base);
  const size_t rows = static_cast<size_t>(B) * static_cast<size_t>(R);
  const size_t bl = static_cast<size_t>(B) * static_cast<size_t>(L);
  UnmaskWorkspace w;
  w.partials = reinterpret_cast<RowPartial*>(p);
  p += align16(rows * stats_splits(V) * sizeof(RowPartial));
  w.pprob = reinterpret_cast<float*>(p);
  p += align16(bl * sizeof(float));
  w.read = reinterpret_cast<bool*>(p);
  p += align16(bl);
  w.cand = reinterpret_cast<bool*>(p);
  p += align16(bl);
  w.sel = reinterpret_cast<bool*>(p);
  p += align16(bl);
  w.rank = reinterpret_cast<int32_t*>(p);
  p += align16(bl * sizeof(int32_t));
  w.chunks = reinterpret_cast<int64_t*>(p);
  return w;
}

// Grid rows per sequence for the statistics pass. A slot strides over the positions that may be
// read, so any value is correct. The block length lives in the device-side pack (the host never
// reads it), so the grid is sized from the shapes alone: one slot per logits row up to
// kMaxStatsSlots (a block of up to that many rows is read in one pass), slots that find no read
// row return at once.
constexpr int64_t kMaxStatsSlots = 128;

inline int64_t stats_slots(const UnmaskParams& p) {
  int64_t slots = p.R < kMaxStatsSlots ? p.R : kMaxStatsSlots;
  if (slots > p.L) slots = p.L;
  return slots < 1 ? 1 : slots;
}

// Launches the whole step (statistics, then the per-sequence policy) on `stream` (a cudaStream_t).
// Returns nullptr on success, else the CUDA error string. Never synchronises with the host.
const char* launch_fused_unmask(const UnmaskParams& p, void* stream);

}  // namespace cuda
}  // namespace dllm
