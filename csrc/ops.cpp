// The one place where every dllm op schema lives. Backends register implementations
// in their own files (cpu/*.cpp, cuda/*.cpp, Python for Triton and Meta).
#include <torch/library.h>

#include <string>
#include <tuple>
#include <vector>

#include "cpu/row_stats.h"
#include "fused_unmask_args.h"
#include "include/dllm/fused_unmask_params.h"
#include "include/dllm/row_partial.h"
#include "include/dllm/select_params.h"

namespace {

// A pack's column table as the column-query ops return it: (names, defaults, range kinds).
template <int N>
std::tuple<std::vector<std::string>, std::vector<double>, std::vector<std::string>> param_columns(
    const dllm::ParamColumn (&cols)[N]) {
  std::vector<std::string> names, kinds;
  std::vector<double> defaults;
  for (const auto& c : cols) names.push_back(c.name), defaults.push_back(c.dflt), kinds.push_back(param_kind_name(c.kind));
  return std::make_tuple(names, defaults, kinds);
}

}  // namespace

TORCH_LIBRARY(dllm, m) {
  // One unmasking step for a batch; semantics in docs/fused_unmask.md. The schema is generated
  // from the argument lists in fused_unmask_args.h; numeric parameters travel in the per-sequence
  // pack `params` (columns: fused_unmask_param_columns).
  m.def(dllm::fused_unmask_schema().c_str());
  // The stateless selection step: no state, the caller's candidates and per-sequence parameter
  // pack (columns: select_param_columns); semantics in docs/select.md.
  m.def(
      "select(Tensor logits, Tensor(a!) x, Tensor? candidates=None, Tensor? params=None, "
      "Tensor? bounds=None, Tensor? row_start=None, Tensor? seed=None, Tensor? offset=None, "
      "Tensor? gumbel_u=None, Tensor? rank_u=None, Tensor? prev_conf=None, Tensor? suppress_ids=None, "
      "Tensor? zero_conf_ids=None, Tensor? filter_w1=None, Tensor? filter_b1=None, "
      "Tensor? filter_w2=None, Tensor? filter_b2=None, int rule=1, int conf_kind=0, bool shift=False, "
      "bool graded=False, bool random_remasking=False, bool commit=False, Tensor? row_stats=None, "
      "int vocab_size=0) "
      "-> (Tensor x0, Tensor conf, Tensor transfer)");
  // Mergeable partial statistics of logits rows (a vocabulary shard or chunk), for `row_stats=`
  // of select and fused_unmask; semantics and layout in docs/row_stats.md.
  m.def(
      "row_stats(Tensor logits, Tensor positions, Tensor? seed=None, Tensor? offset=None, "
      "Tensor? temperature=None, Tensor? gumbel_u=None, Tensor? suppress_ids=None, int conf_kind=0, "
      "int vocab_start=0) -> Tensor");
  // The LM head fused with row_stats: one merged partial per row of hidden [B, R, d] x weight
  // [V, d]^T (+ bias), the logits computed chunk by chunk and never whole; docs/lm_head_row_stats.md.
  m.def(
      "lm_head_row_stats(Tensor hidden, Tensor weight, Tensor? bias, Tensor positions, Tensor? seed=None, "
      "Tensor? offset=None, Tensor? temperature=None, Tensor? suppress_ids=None, int conf_kind=0, "
      "int vocab_start=0) -> Tensor");
  // row_stats' layout: its column names in order, and the most partials one row merges
  // (include/dllm/row_partial.h).
  m.def("row_stats_layout() -> (str[], int)", [] {
    std::vector<std::string> names;
#define DLLM_X(name) names.push_back(#name);
    DLLM_ROW_PARTIAL_COLS(DLLM_X)
#undef DLLM_X
    return std::make_tuple(names, dllm::cpu::kMaxMergedPartials);
  });
  // Names, defaults and range kinds (include/dllm/param_kind.h) of the parameter packs' columns,
  // in order (include/dllm/select_params.h, include/dllm/fused_unmask_params.h).
  m.def("select_param_columns() -> (str[], float[], str[])", [] { return param_columns(dllm::kSelectColumns); });
  m.def("fused_unmask_param_columns() -> (str[], float[], str[])",
        [] { return param_columns(dllm::kUnmaskColumns); });
  // Block-aware KV-cache attention for the cached dLLM forward; semantics in docs/block_attention.md.
  m.def(
      "block_attention(Tensor q, Tensor k_new, Tensor v_new, Tensor(a!) k_cache, Tensor(b!) v_cache, "
      "Tensor block_start, Tensor block_len, Tensor? kv_len, int mask_mode, float scale, int block_size) -> Tensor");
  // Verification of draft tokens against target logits (speculative decoding); semantics in
  // docs/speculative_verify.md.
  m.def(
      "speculative_verify(Tensor target_logits, Tensor draft_tokens, Tensor draft_probs, Tensor draft_lens, "
      "Tensor seed, Tensor offset, float temperature=0., bool draft_is_logits=False) "
      "-> (Tensor accepted, Tensor emitted)");
  // Which instruction-set build of the CPU kernel runs ("avx512", "avx2", "base"; the environment
  // variable DLLM_CPU_ISA caps it). No tensors, so one kernel serves every backend.
  m.def("cpu_kernel_isa() -> str", [] { return std::string(dllm::cpu::row_stats_isa()); });
}

// Importing dllm_kernels._C from Python loads this library, which runs the registrations above.
#include <Python.h>
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "dllm native ops", -1, nullptr};
  return PyModule_Create(&module_def);
}
