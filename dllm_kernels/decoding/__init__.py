"""The pieces `dllm_kernels.generate` is assembled from (docs/decoder.md):

* `plan`: the host's view of the device state: one read per step, or one per block for a top-k
  schedule whose block ends the host can count;
* `caches`: per cache mode ("none", "prefix", "dual", "block"), the query span, keys and logits
  rows of each sequence's step;
* `forwards`: the step's logits from a model class (`forward_span`, with its cache) or from a plain
  callable (one forward, or one per length group of a ragged batch);
* `graph`: the fixed-shape dual-cache block step a CUDA graph captures;
* `timing`: per-step forward / step times (CUDA events on a GPU) and the progress bar.
"""
