"""Executable spec of `dllm::block_attention`: the cache write, then SDPA with an explicit mask.

Everything here is plain PyTorch and favours clarity over speed. The mask builder is the
definition of which keys each query row sees (docs/block_attention.md, "Visibility"):

    row i of sequence b is valid iff i < block_len[b]; its position is block_start[b] + i;
    block_end = block_start[b] + block_len[b]
    mode 0 (prefix):        keys j < block_end
    mode 1 (dual):          keys j < kv_len[b]
    mode 2 (block-causal):  keys j < min(block_end, block_start[b] + (i // block_size + 1) * block_size)

Invalid rows (i >= block_len[b]) see nothing and their output is zero.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["MODE_PREFIX", "MODE_DUAL", "MODE_BLOCK_CAUSAL", "block_attention_key_limits",
           "block_attention_mask", "write_block_kv_ref", "block_attention_ref"]

MODE_PREFIX = 0
MODE_DUAL = 1
MODE_BLOCK_CAUSAL = 2


def block_attention_key_limits(block_start: torch.Tensor, block_len: torch.Tensor,
                               kv_len: torch.Tensor | None, mode: int, block_size: int,
                               q_max: int) -> torch.Tensor:
    """Per query row, the exclusive end of its visible keys: int64 [B, q_max], 0 for invalid rows.

    Every mode sees a contiguous key range [0, limit), so this vector is the whole mask."""
    i = torch.arange(q_max, device=block_start.device, dtype=torch.int64)[None, :]
    start = block_start.to(torch.int64)[:, None]
    n = block_len.to(torch.int64)[:, None]
    end = start + n
    if mode == MODE_PREFIX:
        lim = end.expand(-1, q_max)
    elif mode == MODE_DUAL:
        if kv_len is None:
            raise ValueError("block_attention_key_limits: mode 1 (dual) needs kv_len")
        lim = kv_len.to(torch.int64)[:, None].expand(-1, q_max)
    elif mode == MODE_BLOCK_CAUSAL:
        if block_size < 1:
            raise ValueError(f"block_attention_key_limits: block_size must be >= 1 in mode 2, got {block_size}")
        lim = torch.minimum(end, start + (i // block_size + 1) * block_size)
    else:
        raise ValueError(f"block_attention_key_limits: mode must be 0, 1 or 2, got {mode}")
    return torch.where(i < n, lim, torch.zeros_like(lim))


def block_attention_mask(block_start: torch.Tensor, block_len: torch.Tensor, kv_len: torch.Tensor | None,
                         mode: int, block_size: int, q_max: int, l_max: int) -> torch.Tensor:
    """Boolean mask [B, q_max, l_max]: True where query row i of sequence b may attend to key j."""
    lim = block_attention_key_limits(block_start, block_len, kv_len, mode, block_size, q_max)
    j = torch.arange(l_max, device=lim.device, dtype=torch.int64)
    return j[None, None, :] < lim[:, :, None]


def write_block_kv_ref(k_new: torch.Tensor, v_new: torch.Tensor, k_cache: torch.Tensor,
                       v_cache: torch.Tensor, block_start: torch.Tensor, block_len: torch.Tensor) -> None:
    """Writes rows [0, block_len[b]) of k_new/v_new[b] into cache slots block_start[b] + i, in place."""
    B, q_max = k_new.shape[:2]
    i = torch.arange(q_max, device=k_new.device)[None, :].expand(B, -1)
    valid = i < block_len[:, None]
    bidx = torch.arange(B, device=k_new.device)[:, None].expand(-1, q_max)[valid]
    pos = (block_start[:, None] + i)[valid]
    k_cache[bidx, pos] = k_new[valid]
    v_cache[bidx, pos] = v_new[valid]


def block_attention_ref(q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor, k_cache: torch.Tensor,
                        v_cache: torch.Tensor, block_start: torch.Tensor, block_len: torch.Tensor,
                        kv_len: torch.Tensor | None, mode: int, scale: float, block_size: int = 0,
                        compute_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Reference block attention. Mutates k_cache/v_cache exactly as the op does, then runs
    `F.scaled_dot_product_attention` over the whole cache with an explicit boolean mask.

    compute_dtype: dtype of the SDPA computation (default: q's dtype, i.e. PyTorch's own error in
    that dtype); pass torch.float32 / torch.float64 for the high-precision reference.
    Returns [B, Qmax, Hq, D] in q's dtype, rows past block_len zero."""
    B, q_max, hq, d = q.shape
    l_max, hkv = k_cache.shape[1], k_cache.shape[2]
    write_block_kv_ref(k_new, v_new, k_cache, v_cache, block_start, block_len)
    cd = compute_dtype or q.dtype
    mask = block_attention_mask(block_start, block_len, kv_len, mode, block_size, q_max, l_max)
    valid_row = mask.any(-1)  # [B, q_max]
    # Rows that see nothing would give NaN in SDPA: let them see everything, then zero them.
    mask = mask | ~valid_row[:, :, None]
    qt = q.to(cd).transpose(1, 2)  # [B, Hq, Qmax, D]
    kt = k_cache.to(cd).transpose(1, 2).repeat_interleave(hq // hkv, dim=1)  # [B, Hq, Lmax, D]
    vt = v_cache.to(cd).transpose(1, 2).repeat_interleave(hq // hkv, dim=1)
    out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask[:, None], scale=scale)
    out = out.transpose(1, 2)  # [B, Qmax, Hq, D]
    out = torch.where(valid_row[:, :, None, None], out, torch.zeros((), dtype=out.dtype, device=out.device))
    return out.to(q.dtype)
