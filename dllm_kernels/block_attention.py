"""Block-aware KV-cache attention for the cached forward of a diffusion LLM.

`block_attention` is the typed wrapper of `torch.ops.dllm.block_attention` (schema in
csrc/ops.cpp, contract in docs/block_attention.md). This module also registers the op's
implementations:

* CPU: per sequence, SDPA's CPU kernel on strided views of exactly that sequence's key range
  (no copy of the cache; an explicit mask only in block-causal mode);
* CUDA: the Triton kernels of `dllm_kernels.triton_kernels.block_attention`, registered only when
  no native CUDA kernel for the op was built;
* Fake/Meta: the output's shape and dtype (torch.compile, FakeTensor, opcheck).
"""
from __future__ import annotations

import math
from typing import Union

import torch
import torch.nn.functional as F

from ._native import has_native_kernel
from ._triton_pkg import triton_kernels_module

__all__ = ["MODES", "block_attention", "check_block_attention_args", "triton_kernel_module"]

MODES = {"prefix": 0, "dual": 1, "block_causal": 2}
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_HEAD_DIMS = (16, 32, 64, 128, 256)


def _fail(msg: str):
    raise ValueError(f"dllm.block_attention: {msg}")


def _is_fake(t: torch.Tensor) -> bool:
    """A FakeTensor (opcheck, export) has no storage to compare; reading its pointer warns."""
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(t, FakeTensor)


def _byte_span(t: torch.Tensor):
    """(storage pointer, first byte, end byte) of a real tensor's elements, or None for tensors
    without readable storage (meta, fake, or while torch.compile traces)."""
    if torch.compiler.is_compiling() or t.device.type == "meta" or t.numel() == 0 or _is_fake(t):
        return None
    try:
        base = t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return None
    if not base:
        return None
    size = t.element_size()
    first = t.storage_offset() * size
    last = first + sum((n - 1) * st for n, st in zip(t.shape, t.stride())) * size + size
    return base, first, last


def _shifted_overlap(t: torch.Tensor, shift: int) -> bool:
    """Does `t` share an element with the same-layout view shifted by `shift` elements? Decomposes the
    shift over t's strides, largest first (exact for the non-overlapping layouts caches use)."""
    rest = abs(shift)
    for n, st in sorted(zip(t.shape, t.stride()), key=lambda p: -p[1]):
        if st == 0:
            continue
        q = rest // st
        if q >= n:
            return False
        rest -= q * st
    return rest == 0


def _caches_overlap(k_cache: torch.Tensor, v_cache: torch.Tensor) -> bool:
    """True when the two caches share memory (the V write would clobber K slots)."""
    if k_cache is v_cache:
        return True
    a, b = _byte_span(k_cache), _byte_span(v_cache)
    if a is None or b is None or a[0] != b[0] or not (a[1] < b[2] and b[1] < a[2]):
        return False
    if k_cache.shape == v_cache.shape and k_cache.stride() == v_cache.stride():
        return _shifted_overlap(k_cache, v_cache.storage_offset() - k_cache.storage_offset())
    return True  # interleaved spans of different layouts: refuse rather than risk it


def check_block_attention_args(q, k_new, v_new, k_cache, v_cache, block_start, block_len, kv_len,
                               mode: int, scale: float, block_size: int, check_values: bool) -> None:
    """Validates the op's arguments; raises ValueError naming the offending argument.

    Metadata checks (dtype, shape, device, strides, scalars) never read device memory. Value
    checks (ranges of block_start / block_len / kv_len) read the index tensors, which costs a host
    synchronisation on CUDA: they run when `check_values` is True."""
    tensors = dict(q=q, k_new=k_new, v_new=v_new, k_cache=k_cache, v_cache=v_cache)
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            _fail(f"{name} must be a Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            _fail(f"{name} must be 4-D, got shape {tuple(t.shape)}")
        if t.dtype not in _FLOAT_DTYPES:
            _fail(f"{name} must be float16, bfloat16 or float32, got {t.dtype}")
        if t.dtype != q.dtype:
            _fail(f"{name} has dtype {t.dtype} but q has {q.dtype}; all of q, k_new, v_new, k_cache, "
                  "v_cache must share one dtype")
        if t.device != q.device:
            _fail(f"{name} is on {t.device} but q is on {q.device}")
        if t.numel() > 0 and t.stride(-1) != 1:
            _fail(f"{name} must be contiguous in its last (head) dimension, got strides {tuple(t.stride())}")
    B, q_max, hq, d = q.shape
    if B == 0:
        _fail("empty batch (q has B = 0)")
    if k_new.shape != v_new.shape:
        _fail(f"k_new {tuple(k_new.shape)} and v_new {tuple(v_new.shape)} must have the same shape")
    if k_cache.shape != v_cache.shape:
        _fail(f"k_cache {tuple(k_cache.shape)} and v_cache {tuple(v_cache.shape)} must have the same shape")
    if k_new.shape[0] != B or k_new.shape[1] != q_max or k_new.shape[3] != d:
        _fail(f"k_new must be [B={B}, Qmax={q_max}, Hkv, D={d}] like q, got {tuple(k_new.shape)}")
    hkv = k_new.shape[2]
    if k_cache.shape[0] != B or k_cache.shape[2] != hkv or k_cache.shape[3] != d:
        _fail(f"k_cache must be [B={B}, Lmax, Hkv={hkv}, D={d}], got {tuple(k_cache.shape)}")
    if hkv < 1 or hq % hkv != 0:
        _fail(f"the number of query heads ({hq}) must be a multiple of the number of KV heads ({hkv})")
    if d not in _HEAD_DIMS:
        _fail(f"head dim must be one of {_HEAD_DIMS}, got {d}")
    if k_cache.shape[1] < 1:
        _fail("k_cache must hold at least one slot (Lmax >= 1)")
    for name, t in (("block_start", block_start), ("block_len", block_len), ("kv_len", kv_len)):
        if t is None:
            if name == "kv_len" and mode == 1:
                _fail("kv_len is required in mode 1 (dual)")
            continue
        if not isinstance(t, torch.Tensor):
            _fail(f"{name} must be a Tensor, got {type(t).__name__}")
        if t.dtype != torch.int64:
            _fail(f"{name} must be int64, got {t.dtype}")
        if t.shape != (B,):
            _fail(f"{name} must have shape [B]=[{B}], got {tuple(t.shape)}")
        if t.device != q.device:
            _fail(f"{name} is on {t.device} but q is on {q.device}")
    if mode not in (0, 1, 2):
        _fail(f"mode must be 0 (prefix), 1 (dual) or 2 (block_causal), got {mode}")
    if mode == 2 and block_size < 1:
        _fail(f"block_size must be >= 1 in mode 2 (block_causal), got {block_size}")
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        _fail(f"scale must be a finite positive number, got {scale}")
    if _caches_overlap(k_cache, v_cache):
        _fail("k_cache and v_cache must not overlap in memory (the op writes both)")
    if check_values and B > 0:
        l_max = k_cache.shape[1]
        start, n = block_start.cpu(), block_len.cpu()
        if bool((n < 0).any()) or bool((n > q_max).any()):
            _fail(f"block_len must lie in [0, Qmax={q_max}], got {n.tolist()}")
        if bool((start < 0).any()):
            _fail(f"block_start must be >= 0, got {start.tolist()}")
        end = start + n
        if bool((end > l_max).any()):
            _fail(f"block_start + block_len must be <= Lmax={l_max} (the cache length), got {end.tolist()}")
        if mode == 1:
            kv = kv_len.cpu()
            if bool((kv < end).any()) or bool((kv > l_max).any()):
                _fail(f"kv_len must lie in [block_start + block_len, Lmax={l_max}] in mode 1 (dual), "
                      f"got kv_len={kv.tolist()}, block_end={end.tolist()}")


# --------------------------------------------------------------------------------------------
# CPU implementation


def _block_attention_cpu(q, k_new, v_new, k_cache, v_cache, block_start, block_len, kv_len,
                         mask_mode: int, scale: float, block_size: int) -> torch.Tensor:
    check_block_attention_args(q, k_new, v_new, k_cache, v_cache, block_start, block_len, kv_len,
                               mask_mode, scale, block_size, check_values=True)
    B, q_max, hq, d = q.shape
    hkv = k_cache.shape[2]
    g = hq // hkv
    out = torch.zeros(q.shape, dtype=q.dtype)
    starts, lens = block_start.tolist(), block_len.tolist()
    kvs = kv_len.tolist() if kv_len is not None else None
    for b in range(B):
        s, n = starts[b], lens[b]
        if n == 0:
            continue
        k_cache[b, s:s + n] = k_new[b, :n]
        v_cache[b, s:s + n] = v_new[b, :n]
        kend = kvs[b] if mask_mode == 1 else s + n
        # Exactly this sequence's key range, as strided views (no copy of the cache); SDPA's CPU
        # kernel tiles over keys with an online softmax and float32 accumulation.
        qb = q[b, :n].transpose(0, 1)[None]  # [1, Hq, n, D]
        kb = k_cache[b, :kend].transpose(0, 1)[None]  # [1, Hkv, kend, D]
        vb = v_cache[b, :kend].transpose(0, 1)[None]
        mask = None
        if mask_mode == 2:
            lim = torch.clamp(s + (torch.arange(n) // block_size + 1) * block_size, max=s + n)
            mask = torch.arange(kend)[None, :] < lim[:, None]  # [n, kend]
        ob = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask, scale=scale, enable_gqa=g > 1)
        out[b, :n] = ob[0].transpose(0, 1)
    return out


# --------------------------------------------------------------------------------------------
# Triton (CUDA) implementation


def triton_kernel_module():
    """`dllm_kernels.triton_kernels.block_attention` (mapped from the repo in a source checkout)."""
    return triton_kernels_module("block_attention")


def _block_attention_triton_impl(q, k_new, v_new, k_cache, v_cache, block_start, block_len, kv_len,
                                 mask_mode: int, scale: float, block_size: int) -> torch.Tensor:
    block_attention_triton = triton_kernel_module().block_attention_triton
    check_block_attention_args(q, k_new, v_new, k_cache, v_cache, block_start, block_len, kv_len,
                               mask_mode, scale, block_size, check_values=False)
    return block_attention_triton(q, k_new, v_new, k_cache, v_cache, block_start, block_len, kv_len,
                                  mask_mode, scale, block_size)


def _block_attention_fake(q, k_new, v_new, k_cache, v_cache, block_start, block_len, kv_len,
                          mask_mode: int, scale: float, block_size: int) -> torch.Tensor:
    check_block_attention_args(q, k_new, v_new, k_cache, v_cache, block_start, block_len, kv_len,
                               mask_mode, scale, block_size, check_values=False)
    return torch.empty(q.shape, dtype=q.dtype, device=q.device)


def _register() -> None:
    """csrc defines the op's schema only; these are its kernels unless a native one is registered."""
    if not has_native_kernel("block_attention", "CPU"):
        torch.library.register_kernel("dllm::block_attention", "cpu", _block_attention_cpu)
    if not has_native_kernel("block_attention", "CUDA"):
        try:
            import triton  # noqa: F401
        except ImportError:  # pragma: no cover - triton ships with CUDA torch
            pass
        else:
            torch.library.register_kernel("dllm::block_attention", "cuda", _block_attention_triton_impl)
    torch.library.register_fake("dllm::block_attention")(_block_attention_fake)


_register()


# --------------------------------------------------------------------------------------------
# Public wrapper


def block_attention(q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor, k_cache: torch.Tensor,
                    v_cache: torch.Tensor, block_start: torch.Tensor, block_len: torch.Tensor,
                    kv_len: torch.Tensor | None = None, *, mode: Union[str, int] = "prefix",
                    scale: float | None = None, block_size: int | None = None,
                    check_values: bool | None = None) -> torch.Tensor:
    """Attention of the current block's queries over a KV cache, writing the block's K/V in place.

    Args:
        q: [B, Qmax, Hq, D] queries of each sequence's current block, padded to a fixed Qmax
            (rows past block_len[b] are ignored). fp16, bf16 or fp32; last dim contiguous.
        k_new, v_new: [B, Qmax, Hkv, D] the block's fresh keys (after RoPE) and values.
        k_cache, v_cache: [B, Lmax, Hkv, D] one slot per sequence position, keys stored after RoPE.
            Mutated: rows i < block_len[b] of k_new/v_new are written to slots block_start[b] + i.
        block_start, block_len: [B] int64, the block of each sequence (ragged across the batch;
            block_len may be 0 for a finished sequence).
        kv_len: [B] int64, valid cache length of each sequence; required in dual mode, ignored
            otherwise.
        mode: "prefix" (0): keys [0, block_end); "dual" (1): keys [0, kv_len), i.e. prefix, block
            and cached suffix; "block_causal" (2): block row i sees the prefix and the sub-blocks of
            `block_size` rows (counted from block_start) up to and including its own.
        scale: softmax scale, default 1/sqrt(D).
        block_size: sub-block size of block-causal mode (required there, ignored otherwise).
        check_values: check the ranges of block_start/block_len/kv_len before launching. Default:
            on for CPU tensors, off for CUDA (the check synchronises with the host; out-of-range
            values are clamped on the GPU instead of faulting, but the result is then unspecified).

    Returns:
        [B, Qmax, Hq, D] in q's dtype; rows past block_len[b] are zero.

    GQA with any ratio Hq/Hkv; heads never assumed causal. No host synchronisation on CUDA and
    CUDA-graph capturable for a fixed Qmax (with check_values off).
    """
    mode_id = MODES.get(mode) if isinstance(mode, str) else mode
    if mode_id is None:
        _fail(f"mode must be one of {sorted(MODES)} or 0/1/2, got {mode!r}")
    d = q.shape[-1] if isinstance(q, torch.Tensor) else 0
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    if block_size is None:
        if mode_id == 2:
            _fail("block_size is required in mode 2 (block_causal)")
        block_size = 0
    if check_values is None:
        check_values = isinstance(q, torch.Tensor) and q.device.type == "cpu"
    check_block_attention_args(q, k_new, v_new, k_cache, v_cache, block_start, block_len, kv_len,
                               mode_id, scale, int(block_size), check_values=check_values)
    return torch.ops.dllm.block_attention(q, k_new, v_new, k_cache, v_cache, block_start, block_len,
                                          kv_len, mode_id, scale, int(block_size))
