"""Training tiny LLaDA-architecture masked diffusion models, and Learn2PD filters for them.

* `model.TinyLLaDA`: the decoding models' own blocks (`models.span_model.transformer_block`) with SDPA
  attention and autograd, parameters one per checkpoint tensor, saved as a LLaDA-format checkpoint
  (config.json + fp16 safetensors) that `dllm_kernels.models.LLaDA` loads.
* `objective.masked_diffusion_loss`: LLaDA's objective (t ~ U(eps, 1), mask with probability t,
  cross-entropy on masked tokens weighted by 1/t).
* `fit.fit`: the seeded training loop every recipe uses (AdamW, warm-up + cosine, LLaDA's loss,
  the hash of the data consumed); `tokenizer`: the committed tiny models' tokenizers.
* `learn2pd`: oracle traces (docs/policies.md §2.5), filter training, CLI (`python -m dllm_kernels.training.learn2pd`).
"""
