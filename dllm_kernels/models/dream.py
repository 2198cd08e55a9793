"""Dream (Dream-7B: Qwen2 blocks, bidirectional attention, shifted logits) on `block_attention`.

Dream is a masked diffusion model initialised from Qwen2.5: its blocks are Qwen2's (RMSNorm,
SwiGLU, RoPE with the config's theta, q/k/v biases, GQA; tied or untied embeddings) with the
causal mask removed, and it keeps the autoregressive model's shifted logits: the logits row at
position i predicts token i + 1. Decoding therefore runs with `Policy(shift=True)`, and a cached
block step computes the query span from the position before the block (whose row predicts the
block's first position). Prefix and dual caches are SpanModel's (span_model.py).
"""
from __future__ import annotations

from .qwen import QwenConfig, QwenSpanModel, ids_from

__all__ = ["Dream", "dream_config"]

ARCHITECTURES = ("DreamModel",)


def dream_config(cfg: dict, *, mask_token_id=None, eos_token_id=None) -> QwenConfig:
    """A QwenConfig from a Dream config.json dict, strictly (docs/models.md)."""
    from .checkpoint import check_architecture

    check_architecture(cfg, ARCHITECTURES, "Dream")
    return QwenConfig.from_hf(cfg, who="Dream", qkv_bias=True, qk_norm=False, architecture="DreamModel",
                              **ids_from(cfg, "Dream", mask_token_id, eos_token_id))


class Dream(QwenSpanModel):
    """Dream on dllm_kernels' block attention: caches "none" | "prefix" | "dual" in `generate`."""

    shift = True
    attn_mode = "dual"

    @classmethod
    def config_from_dict(cls, cfg: dict, **overrides) -> QwenConfig:
        return dream_config(cfg, **overrides)
