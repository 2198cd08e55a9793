// The one place where every dllm op schema lives. Backends register implementations
// in their own files (cpu/*.cpp, cuda/*.cpp, Python for Triton and Meta).
#include <torch/library.h>

TORCH_LIBRARY(dllm, m) {
  // One unmasking step for a batch; semantics in docs/fused_unmask.md.
  m.def(
      "fused_unmask(Tensor logits, Tensor(a!) x, Tensor(b!) conf, Tensor(c!) state, "
      "Tensor? row_start, Tensor? gumbel_u, Tensor? rank_u, Tensor? suppress_ids, "
      "Tensor? zero_conf_ids, Tensor? delimiter_ids, Tensor? filter_w1, Tensor? filter_b1, "
      "Tensor? filter_w2, Tensor? filter_b2, int mask_id, int eos_id, int rule, int conf_kind, "
      "float temperature, bool shift, int steps, float threshold, float factor, "
      "float anchor_threshold, float relaxed_threshold, int window, bool graded, "
      "float filter_threshold, bool random_remasking, int block_length, bool adaptive_block, "
      "float block_delta, float block_window_fraction, bool eotp, bool early_stop) "
      "-> (Tensor x0, Tensor transfer, Tensor window_stats)");
  // Block-aware KV-cache attention for the cached dLLM forward; semantics in docs/block_attention.md.
  m.def(
      "block_attention(Tensor q, Tensor k_new, Tensor v_new, Tensor(a!) k_cache, Tensor(b!) v_cache, "
      "Tensor block_start, Tensor block_len, Tensor? kv_len, int mode, float scale, int block_size) -> Tensor");
}

// Importing dllm_kernels._C from Python loads this library, which runs the registrations above.
#include <Python.h>
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "dllm native ops", -1, nullptr};
  return PyModule_Create(&module_def);
}
