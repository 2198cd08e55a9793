"""Block-diffusion models (SDAR, Fast-dLLM v2) on `block_attention`, with an exact block cache.

A block-diffusion model splits the sequence into blocks of `block_size` positions counted from
position 0. Attention is causal across blocks and bidirectional inside one: a position sees its
own block and every earlier block. Decoding fills one block at a time (the prompt's last, partial
block is completed as the first generated block), so the K/V of a finished block never change:
the cache writes them once, from the block's final tokens, and never recomputes them. The step
that opens a block runs the finished block and the new one together (block-causal, so the
finished block does not see the new one); the block's other steps run the block alone against
the cache. Nothing is approximated: a cached decode equals the no-cache block-causal decode up to
float rounding.

Families (from `architectures`):
* SDAR (`SDARForCausalLM`): Qwen3 blocks (q/k RMSNorm, no biases), unshifted logits (row i
  predicts token i), block size 4 unless the config says otherwise;
* Fast-dLLM v2 (`Fast_dLLM_QwenForCausalLM`): Qwen2.5 blocks (q/k/v biases), shifted logits (row
  i predicts token i + 1), block size `bd_size` (32). Its sub-blocks are a decoding schedule inside
  the block; this class decodes the plain block form.
"""
from __future__ import annotations

from typing import Optional

from .checkpoint import check_architecture
from .qwen import QwenConfig, QwenSpanModel, ids_from

__all__ = ["BlockDiffusion", "FAMILIES", "block_diffusion_config"]

# architecture -> (Qwen3 blocks?, shifted logits?, default block size, config key of the block size)
FAMILIES = {
    "SDARForCausalLM": dict(qk_norm=True, qkv_bias=False, shift=False, block_size=4, key="block_size"),
    "Fast_dLLM_QwenForCausalLM": dict(qk_norm=False, qkv_bias=True, shift=True, block_size=32, key="bd_size"),
}


def block_diffusion_config(cfg: dict, *, block_size: Optional[int] = None, mask_token_id=None,
                           eos_token_id=None) -> QwenConfig:
    """A QwenConfig from an SDAR / Fast-dLLM v2 config.json dict, strictly (docs/models.md)."""
    arch = check_architecture(cfg, FAMILIES, "BlockDiffusion")
    fam = FAMILIES[arch]
    size = block_size if block_size is not None else cfg.get(fam["key"], fam["block_size"])
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"BlockDiffusion: {fam['key']} must be an int >= 1, got {size!r}")
    # Qwen3's attention_bias is an unimplemented flag (default false); Qwen2 has no such field.
    return QwenConfig.from_hf(cfg, who="BlockDiffusion", extra_honoured=(fam["key"],),
                              qkv_bias=fam["qkv_bias"], qk_norm=fam["qk_norm"], architecture=arch,
                              block_size=size, **ids_from(cfg, "BlockDiffusion", mask_token_id, eos_token_id))


class BlockDiffusion(QwenSpanModel):
    """SDAR / Fast-dLLM v2 on block_attention's block-causal mode: caches "none" | "block"."""

    attn_mode = "block_causal"

    def __init__(self, config: QwenConfig, state_dict: dict, *, dtype=None, device=None, tp=None):
        if config.architecture not in FAMILIES or config.block_size is None:
            raise ValueError(f"BlockDiffusion: config.architecture must be one of {sorted(FAMILIES)} with a "
                             f"block_size, got {config.architecture!r}, {config.block_size!r}")
        fam = FAMILIES[config.architecture]
        if (config.qk_norm, config.qkv_bias) != (fam["qk_norm"], fam["qkv_bias"]):
            raise ValueError(f"BlockDiffusion: {config.architecture} has qk_norm={fam['qk_norm']}, "
                             f"qkv_bias={fam['qkv_bias']}, the config says {config.qk_norm}, {config.qkv_bias}")
        super().__init__(config, state_dict, dtype=dtype, device=device, tp=tp)
        self.block_size = config.block_size
        self.shift = fam["shift"]

    @classmethod
    def config_from_dict(cls, cfg: dict, **overrides) -> QwenConfig:
        return block_diffusion_config(cfg, **overrides)
