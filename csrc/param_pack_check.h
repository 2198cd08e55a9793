// One range check for every parameter pack: walks the pack's column table (the kinds in
// include/dllm/param_kind.h) and names the column and the sequence of the first bad value. CPU
// packs only: on a GPU the check would sync (the kernels clamp the counts they index with).
#pragma once
#include "aten_deps.h"

#include <cmath>

#include "include/dllm/param_kind.h"

namespace dllm {

// How a pack's errors word a whole-number column: select's "k must be a whole number >= 0",
// fused_unmask's "steps must be >= 1 (a whole number)".
enum class WholeWording { kWholeFirst, kBoundFirst };

template <int N>
inline void check_param_pack(const at::Tensor& params, const ParamColumn (&cols)[N], const char* op,
                             WholeWording wording) {
  if (!params.device().is_cpu()) return;
  const double* v = params.data_ptr<double>();
  for (int64_t b = 0; b < params.size(0); ++b) {
    for (int c = 0; c < N; ++c) {
      const double d = v[b * N + c];
      const char* name = cols[c].name;
      switch (cols[c].kind) {
        case kKind_whole1:
        case kKind_whole0: {
          const int lo = cols[c].kind == kKind_whole1 ? 1 : 0;
          const bool ok = std::isfinite(d) && d >= lo && d == std::floor(d) && d < 9.0e15;
          if (wording == WholeWording::kWholeFirst) {
            TORCH_CHECK(ok, op, ": ", name, " must be a whole number >= ", lo, ", got ", d, " for sequence ", b);
          } else {
            TORCH_CHECK(ok, op, ": ", name, " must be >= ", lo, " (a whole number), got ", d, " for sequence ", b);
          }
          break;
        }
        case kKind_finite0:
          TORCH_CHECK(std::isfinite(d) && d >= 0.0, op, ": ", name, " must be finite and >= 0, got ", d,
                      " for sequence ", b);
          break;
        case kKind_unit:
          TORCH_CHECK(std::isfinite(d) && d >= 0.0 && d <= 1.0, op, ": ", name, " must be in [0, 1], got ", d,
                      " for sequence ", b);
          break;
      }
    }
  }
}

}  // namespace dllm
