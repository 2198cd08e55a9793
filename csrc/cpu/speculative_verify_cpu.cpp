// CPU implementation of dllm::speculative_verify: argument checks, then the shared per-sequence
// logic (include/dllm/speculative_verify.h), parallel over sequences.
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>
#include "../aten_deps.h"

#include <cmath>
#include <tuple>

#include "../include/dllm/speculative_verify.h"

namespace dllm {
namespace {

#define VERIFY_CHECK(cond, ...) TORCH_CHECK(cond, "speculative_verify: ", __VA_ARGS__)

bool is_float_type(at::ScalarType t) { return t == at::kFloat || t == at::kHalf || t == at::kBFloat16; }

void check_int_tensor(const at::Tensor& t, const at::Tensor& ref, const char* name, at::IntArrayRef shape) {
  VERIFY_CHECK(t.device() == ref.device(), name, " is on ", t.device(), " but target_logits is on ", ref.device());
  VERIFY_CHECK(t.scalar_type() == at::kLong, name, " must be int64, got ", t.scalar_type());
  VERIFY_CHECK(t.sizes() == shape, name, " must have shape ", shape, ", got ", t.sizes());
}

// The tensors and pointers of one call, after the checks (tokens contiguous).
struct Call {
  const at::Tensor &target, &tokens, &draft;
  const int64_t *lens, *seed, *offset;
  VerifyParams prm;
  int64_t *accepted, *emitted;
};

template <class TL, class TQ>
void run(const Call& c) {
  const int64_t B = c.target.size(0), K = c.tokens.size(1);
  const TL* tp = static_cast<const TL*>(c.target.data_ptr());
  const TQ* qp = static_cast<const TQ*>(c.draft.data_ptr());
  const int64_t* tok = c.tokens.data_ptr<int64_t>();
  at::parallel_for(0, B, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t b = lo; b < hi; ++b) {
      c.accepted[b] = verify_sequence(tp + b * c.target.stride(0), c.target.stride(1), tok + b * K,
                                      qp + b * c.draft.stride(0), c.draft.stride(1), c.lens[b], c.prm,
                                      static_cast<uint64_t>(c.seed[b]), static_cast<uint64_t>(c.offset[b]),
                                      c.emitted + b * (K + 1));
    }
  });
}

template <class TL>
void run_target(const Call& c) {
  switch (c.draft.scalar_type()) {
    case at::kHalf: return run<TL, c10::Half>(c);
    case at::kBFloat16: return run<TL, c10::BFloat16>(c);
    default: return run<TL, float>(c);
  }
}

std::tuple<at::Tensor, at::Tensor> speculative_verify_cpu(const at::Tensor& target_logits,
                                                          const at::Tensor& draft_tokens,
                                                          const at::Tensor& draft_probs, const at::Tensor& draft_lens,
                                                          const at::Tensor& seed, const at::Tensor& offset,
                                                          double temperature, bool draft_is_logits) {
  VERIFY_CHECK(target_logits.dim() == 3, "target_logits must be 3-D [B, K+1, V], got ", target_logits.dim(), "-D");
  const int64_t B = target_logits.size(0), K = target_logits.size(1) - 1, V = target_logits.size(2);
  VERIFY_CHECK(B > 0, "empty batch (target_logits has B = 0)");
  VERIFY_CHECK(K >= 0, "target_logits must have K+1 >= 1 rows per sequence, got 0");
  VERIFY_CHECK(V >= 1, "target_logits must have a vocabulary of at least 1, got V = ", V);
  VERIFY_CHECK(is_float_type(target_logits.scalar_type()), "target_logits must be float32, float16 or bfloat16, got ",
               target_logits.scalar_type());
  VERIFY_CHECK(target_logits.stride(2) == 1, "target_logits must be contiguous along the vocab dimension");
  check_int_tensor(draft_tokens, target_logits, "draft_tokens", {B, K});
  VERIFY_CHECK(draft_probs.device() == target_logits.device(), "draft_probs is on ", draft_probs.device(),
               " but target_logits is on ", target_logits.device());
  VERIFY_CHECK(is_float_type(draft_probs.scalar_type()), "draft_probs must be float32, float16 or bfloat16, got ",
               draft_probs.scalar_type());
  VERIFY_CHECK(draft_probs.sizes() == at::IntArrayRef({B, K, V}), "draft_probs must have shape ",
               at::IntArrayRef({B, K, V}), ", got ", draft_probs.sizes());
  VERIFY_CHECK(draft_probs.stride(2) == 1 || V == 1 || K == 0,
               "draft_probs must be contiguous along the vocab dimension");
  check_int_tensor(draft_lens, target_logits, "draft_lens", {B});
  check_int_tensor(seed, target_logits, "seed", {B});
  check_int_tensor(offset, target_logits, "offset", {B});
  VERIFY_CHECK(std::isfinite(temperature) && temperature >= 0.0, "temperature must be finite and >= 0, got ",
               temperature);

  const at::Tensor lens = draft_lens.contiguous(), seeds = seed.contiguous(), offsets = offset.contiguous();
  const at::Tensor tokens = draft_tokens.contiguous();
  const int64_t* lens_p = lens.data_ptr<int64_t>();
  const int64_t* tok_p = tokens.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    VERIFY_CHECK(lens_p[b] >= 0 && lens_p[b] <= K, "draft_lens[", b, "] = ", lens_p[b], " is outside [0, K = ", K,
                 "]");
    for (int64_t k = 0; k < lens_p[b]; ++k) {
      const int64_t t = tok_p[b * K + k];
      VERIFY_CHECK(t >= 0 && t < V, "draft_tokens[", b, ", ", k, "] = ", t, " is outside [0, V = ", V, ")");
    }
  }

  at::Tensor accepted = at::empty({B}, draft_tokens.options());
  at::Tensor emitted = at::full({B, K + 1}, -1, draft_tokens.options());
  VerifyParams prm;
  prm.V = V;
  prm.temperature = static_cast<float>(temperature);
  prm.draft_is_logits = draft_is_logits;
  const Call call{target_logits, tokens, draft_probs, lens_p, seeds.data_ptr<int64_t>(), offsets.data_ptr<int64_t>(),
                  prm, accepted.data_ptr<int64_t>(), emitted.data_ptr<int64_t>()};
  switch (target_logits.scalar_type()) {
    case at::kHalf: run_target<c10::Half>(call); break;
    case at::kBFloat16: run_target<c10::BFloat16>(call); break;
    default: run_target<float>(call); break;
  }
  return {accepted, emitted};
}

}  // namespace

TORCH_LIBRARY_IMPL(dllm, CPU, m) { m.impl("speculative_verify", &speculative_verify_cpu); }

}  // namespace dllm
