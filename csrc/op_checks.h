// Argument checks shared by every op binding: each bad input is a clear error naming the op and
// the argument, raised before any kernel runs.
#pragma once
#include "aten_deps.h"

#include <cmath>
#include <optional>

#include "include/dllm/policy.h"
#include "include/dllm/row_partial.h"

namespace dllm {

// `ref_name`: the argument whose device the others follow (logits, or the LM head's hidden states).
inline void check_same_device(const char* op, const at::Tensor& t, const at::Tensor& ref,
                              const char* name, const char* ref_name = "logits") {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(),
              " but ", ref_name, " is on ", ref.device());
}

inline void check_tensor(const char* op, const at::Tensor& t, const at::Tensor& logits,
                         const char* name, at::ScalarType dtype, at::IntArrayRef shape,
                         const char* ref_name = "logits") {
  check_same_device(op, t, logits, name, ref_name);
  TORCH_CHECK(t.scalar_type() == dtype, op, ": ", name, " must be ", dtype, ", got ",
              t.scalar_type());
  TORCH_CHECK(t.sizes() == shape, op, ": ", name, " must have shape ", shape, ", got ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
}

inline void check_unit(const char* op, double v, const char* name) {
  TORCH_CHECK(std::isfinite(v) && v >= 0.0 && v <= 1.0, op, ": ", name,
              " must be in [0, 1], got ", v);
}

// Token-id lists: 1-D int64 on the logits' device; values are range-checked where they can be
// read without a device sync (CPU), and ignored when out of range by the CUDA kernels.
inline void check_ids(const char* op, const std::optional<at::Tensor>& t, const at::Tensor& logits,
                      const char* name, int64_t V, const char* ref_name = "logits") {
  if (!t) return;
  check_same_device(op, *t, logits, name, ref_name);
  TORCH_CHECK(t->scalar_type() == at::kLong, op, ": ", name, " must be int64, got ",
              t->scalar_type());
  TORCH_CHECK(t->dim() == 1, op, ": ", name, " must be 1-D, got ", t->dim(), "-D");
  TORCH_CHECK(t->is_contiguous(), op, ": ", name, " must be contiguous");
  if (t->device().is_cpu() && t->numel() > 0) {
    const int64_t lo = t->min().item<int64_t>(), hi = t->max().item<int64_t>();
    TORCH_CHECK(lo >= 0 && hi < V, op, ": ", name, " holds ids outside [0, ", V, "): ", lo, "..",
                hi);
  }
}

inline const int64_t* ids_ptr(const std::optional<at::Tensor>& t) {
  return t && t->numel() > 0 ? t->data_ptr<int64_t>() : nullptr;
}
inline int64_t ids_len(const std::optional<at::Tensor>& t) { return t ? t->numel() : 0; }

// Logits [B, R, V] in a supported dtype, contiguous along V.
// A vocabulary slice (row_stats) may hold a single id: min_vocab 1.
inline void check_logits(const char* op, const at::Tensor& logits, int64_t min_vocab = 2) {
  TORCH_CHECK(logits.dim() == 3, op, ": logits must be 3-D [B, R, V], got ", logits.dim(), "-D");
  const auto dt = logits.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16, op,
              ": logits must be float32, float16 or bfloat16, got ", dt);
  TORCH_CHECK(logits.size(0) > 0, op, ": empty batch (logits has B = 0)");
  TORCH_CHECK(logits.size(2) >= min_vocab, op, ": logits must have a vocabulary of at least ", min_vocab,
              ", got V = ", logits.size(2));
  TORCH_CHECK(logits.stride(2) == 1, op, ": logits must be contiguous along the vocab dimension "
              "(stride(2) == 1), got stride ", logits.stride(2));
}

// Partial row statistics [W, B, R, kPartialCols] (docs/row_stats.md) given in place of the logits:
// `logits` then only carries B and R (its values are not read), and the vocabulary is
// `vocab_size`. Returns V: vocab_size with row_stats, else logits' V (vocab_size 0 or equal).
// On CPU the ids are range-checked, so a bad exchange is an error, not a wild read.
inline int64_t check_logits_or_row_stats(const char* op, const at::Tensor& logits,
                                         const std::optional<at::Tensor>& row_stats, int64_t vocab_size,
                                         const std::optional<at::Tensor>& gumbel_u) {
  constexpr int64_t n_cols = cpu::kPartialCols;
  if (!row_stats) {
    check_logits(op, logits);
    TORCH_CHECK(vocab_size == 0 || vocab_size == logits.size(2), op, ": vocab_size (", vocab_size,
                ") must be 0 or logits' V = ", logits.size(2), " when row_stats is not given");
    return logits.size(2);
  }
  TORCH_CHECK(logits.dim() == 3, op, ": logits must be 3-D [B, R, *] (with row_stats it gives B and R), got ",
              logits.dim(), "-D");
  TORCH_CHECK(logits.size(0) > 0, op, ": empty batch (logits has B = 0)");
  TORCH_CHECK(vocab_size >= 2, op, ": row_stats needs vocab_size >= 2 (the whole vocabulary), got ", vocab_size);
  TORCH_CHECK(!gumbel_u, op, ": gumbel_u does not go with row_stats (the noise is drawn when the "
              "statistics are computed)");
  const at::Tensor& rs = *row_stats;
  check_same_device(op, rs, logits, "row_stats");
  TORCH_CHECK(rs.scalar_type() == at::kDouble, op, ": row_stats must be float64, got ", rs.scalar_type());
  TORCH_CHECK(rs.dim() == 4 && rs.size(0) >= 1 && rs.size(1) == logits.size(0) && rs.size(2) == logits.size(1) &&
                  rs.size(3) == n_cols,
              op, ": row_stats must be [W >= 1, B = ", logits.size(0), ", R = ", logits.size(1), ", ", n_cols,
              "], got ", rs.sizes());
  TORCH_CHECK(rs.is_contiguous(), op, ": row_stats must be contiguous");
  TORCH_CHECK(rs.size(0) <= cpu::kMaxMergedPartials, op, ": row_stats merges at most ", cpu::kMaxMergedPartials,
              " partials per row, got W = ", rs.size(0));
  if (rs.device().is_cpu()) {
    const double* v = rs.data_ptr<double>();
    const int64_t n = rs.numel() / n_cols;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t c : {int64_t(cpu::kPart_idx), int64_t(cpu::kPart_noisy_idx)}) {
        const double id = v[i * n_cols + c];
        TORCH_CHECK(id == std::floor(id) && id >= -1.0 && id < static_cast<double>(vocab_size), op,
                    ": row_stats holds an id outside [-1, vocab_size = ", vocab_size, "): ", id);
      }
  }
  return vocab_size;
}

// The learned filter's four tensors (all or none); fills the policy's filter fields.
inline void check_filter(const char* op, const at::Tensor& logits,
                         const std::optional<at::Tensor>& w1, const std::optional<at::Tensor>& b1,
                         const std::optional<at::Tensor>& w2, const std::optional<at::Tensor>& b2,
                         bool required, PolicyParams& p) {
  const bool any = w1 || b1 || w2 || b2, all = w1 && b1 && w2 && b2;
  TORCH_CHECK(!any || all, op, ": filter_w1, filter_b1, filter_w2, filter_b2 go together");
  TORCH_CHECK(!required || all, op, ": rule 4 (learned filter) needs filter_w1/b1/w2/b2");
  p.w1 = p.b1 = p.w2 = p.b2 = nullptr;
  p.filter_width = p.filter_hidden = 0;
  if (!all) return;
  TORCH_CHECK(w1->dim() == 2, op, ": filter_w1 must be [hidden, width]");
  const int64_t fh = w1->size(0), fw = w1->size(1);
  TORCH_CHECK(fw >= 1 && fw <= kMaxFilterWidth, op, ": filter width must be 1..", kMaxFilterWidth,
              ", got ", fw);
  TORCH_CHECK(fh >= 1 && fh <= kMaxFilterHidden, op, ": filter hidden size must be 1..",
              kMaxFilterHidden, ", got ", fh);
  check_tensor(op, *w1, logits, "filter_w1", at::kFloat, {fh, fw});
  check_tensor(op, *b1, logits, "filter_b1", at::kFloat, {fh});
  check_tensor(op, *w2, logits, "filter_w2", at::kFloat, {fw, fh});
  check_tensor(op, *b2, logits, "filter_b2", at::kFloat, {fw});
  p.w1 = w1->data_ptr<float>();
  p.b1 = b1->data_ptr<float>();
  p.w2 = w2->data_ptr<float>();
  p.b2 = b2->data_ptr<float>();
  p.filter_width = fw;
  p.filter_hidden = fh;
}

}  // namespace dllm
