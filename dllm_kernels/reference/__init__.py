"""Pure-PyTorch float64 references: the executable spec every backend is tested against.

- `philox`: Philox4x32-10 in numpy and the exact float32 uniforms of the noise streams.
- `unmask`: `fused_unmask_reference` (docs/fused_unmask.md) and `row_statistics`.
- `attention`: `block_attention_ref` (docs/block_attention.md): cache write + SDPA with explicit masks.
"""
from .philox import (PHILOX_M0, PHILOX_M1, PHILOX_W0, PHILOX_W1, RANK_STREAM, bits_to_uniform,
                     noise_uniform, philox4x32_10, rank_uniform)
from .fused_unmask import (BLOCK_END, BLOCK_MASKED, BLOCK_REMAINING, BLOCK_START, CONF_KINDS, CONF_MARGIN,
                     CONF_NEG_ENTROPY, CONF_PROB, DONE, END_POS, GEN_END, GEN_START, OFFSET, RULE_FACTOR,
                     RULE_FILTER, RULE_LOCALLEAP, RULE_THRESHOLD, RULE_TOPK, RULES, SEED, STATE_COLUMN_NAMES,
                     STATE_COLUMNS, STEP, RowStats, fused_unmask_reference, row_statistics)
from .block_attention import (MODE_BLOCK_CAUSAL, MODE_DUAL, MODE_PREFIX, block_attention_key_limits,
                        block_attention_mask, block_attention_ref, write_block_kv_ref)

__all__ = [
    # philox
    "PHILOX_M0", "PHILOX_M1", "PHILOX_W0", "PHILOX_W1", "RANK_STREAM", "bits_to_uniform", "noise_uniform",
    "philox4x32_10", "rank_uniform",
    # unmask
    "BLOCK_END", "BLOCK_MASKED", "BLOCK_REMAINING", "BLOCK_START", "CONF_KINDS", "CONF_MARGIN",
    "CONF_NEG_ENTROPY", "CONF_PROB", "DONE", "END_POS", "GEN_END", "GEN_START", "OFFSET", "RULE_FACTOR",
    "RULE_FILTER", "RULE_LOCALLEAP", "RULE_THRESHOLD", "RULE_TOPK", "RULES", "SEED", "STATE_COLUMN_NAMES",
    "STATE_COLUMNS", "STEP", "RowStats", "fused_unmask_reference", "row_statistics",
    # attention references are added below this line by their owner
    "MODE_BLOCK_CAUSAL", "MODE_DUAL", "MODE_PREFIX", "block_attention_key_limits", "block_attention_mask",
    "block_attention_ref", "write_block_kv_ref",
]
