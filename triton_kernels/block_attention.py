"""Triton kernels of `dllm::block_attention` (semantics: docs/block_attention.md).

Three kernels, all launched without reading any device value on the host:

* `_write_block_kv_kernel`: copies the block's fresh K/V rows into their cache slots (one program
  per (sequence, block row); rows past block_len do nothing).
* `_block_attn_fwd_kernel`: flash attention (online softmax in base 2, tiles of BLOCK_N keys).
  One program owns BLOCK_M query rows of one sequence and one KV head; rows are the flattened
  (block row i, GQA group member g) pairs, so the G query heads sharing a KV head share every
  K/V tile load. Each row has its own key limit (modes differ only there), so one masked loop
  serves prefix, dual and block-causal modes. With NUM_SPLITS > 1 (flash-decoding) the key range
  of each program is split over NUM_SPLITS programs, which write unnormalised partial outputs
  and their (max, sum) to a float32 workspace; the split boundaries come from device values
  inside the kernel, so the grid depends on shapes only (CUDA-graph capturable).
* `_combine_splits_kernel`: merges the partials (one program per (sequence, block row)).

Values out of range (which the op does not check on CUDA, to stay sync-free) are clamped so that
no access leaves the tensors: block_len to [0, min(Qmax, Lmax)], block_start to [0, Lmax - len],
kv_len to [block_end, Lmax].

Under TRITON_INTERPRET=1, bf16/fp16 arithmetic is unreliable: the launcher sets UPCAST so that
tiles are converted to float32 right after loading (docs/building.md).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

__all__ = ["block_attention_triton", "write_block_kv_triton", "choose_num_splits", "attention_config"]


@triton.jit
def _sanitize(block_start_ptr, block_len_ptr, b, Q_MAX, L_MAX):
    n = tl.load(block_len_ptr + b)
    n = tl.minimum(tl.maximum(n, 0), tl.minimum(Q_MAX, L_MAX))
    start = tl.load(block_start_ptr + b)
    start = tl.minimum(tl.maximum(start, 0), L_MAX - n)
    return start, n


@triton.jit
def _to_output(x, OUT_TY: tl.constexpr, UPCAST: tl.constexpr):
    """float32 -> output dtype with round-to-nearest-even. The interpreter truncates fp32 -> bf16,
    so there (UPCAST) round onto the bf16 grid with integer ops first; the GPU rounds natively."""
    if UPCAST and OUT_TY == tl.bfloat16:
        u = x.to(tl.uint32, bitcast=True)
        u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
        x = u.to(tl.float32, bitcast=True)
    return x.to(OUT_TY)


@triton.jit
def _write_block_kv_kernel(
    K_NEW, V_NEW, K_CACHE, V_CACHE, block_start_ptr, block_len_ptr,
    s_knb, s_knl, s_knh, s_vnb, s_vnl, s_vnh,
    s_kcb, s_kcl, s_kch, s_vcb, s_vcl, s_vch,
    Q_MAX, L_MAX,
    HKV: tl.constexpr, HKV_P2: tl.constexpr, D: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    i = tl.program_id(1).to(tl.int64)
    start, n = _sanitize(block_start_ptr, block_len_ptr, b, Q_MAX, L_MAX)
    if i < n:
        offs_h = tl.arange(0, HKV_P2)
        offs_d = tl.arange(0, D)
        mask = (offs_h < HKV)[:, None]
        pos = start + i
        k = tl.load(K_NEW + b * s_knb + i * s_knl + offs_h[:, None] * s_knh + offs_d[None, :], mask=mask)
        tl.store(K_CACHE + b * s_kcb + pos * s_kcl + offs_h[:, None] * s_kch + offs_d[None, :], k, mask=mask)
        v = tl.load(V_NEW + b * s_vnb + i * s_vnl + offs_h[:, None] * s_vnh + offs_d[None, :], mask=mask)
        tl.store(V_CACHE + b * s_vcb + pos * s_vcl + offs_h[:, None] * s_vch + offs_d[None, :], v, mask=mask)


@triton.jit
def _block_attn_fwd_kernel(
    Q, K, V, O, O_PART, M_PART, L_PART,
    block_start_ptr, block_len_ptr, kv_len_ptr,
    s_qb, s_ql, s_qh, s_kb, s_kl, s_kh, s_vb, s_vl, s_vh, s_ob, s_ol, s_oh,
    qk_scale,  # softmax scale * log2(e)
    Q_MAX, L_MAX, BATCH, block_size,
    HKV: tl.constexpr, G: tl.constexpr, D: tl.constexpr, MODE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, NUM_SPLITS: tl.constexpr,
    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    split = tl.program_id(2)
    b = (bh // HKV).to(tl.int64)
    hkv = bh % HKV
    start, n = _sanitize(block_start_ptr, block_len_ptr, b, Q_MAX, L_MAX)
    block_end = start + n

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    qi = rows // G
    head = hkv * G + rows % G
    row_valid = qi < n
    if MODE == 1:
        kv = tl.load(kv_len_ptr + b)
        kv = tl.minimum(tl.maximum(kv, block_end), L_MAX)
        lim = tl.zeros([BLOCK_M], dtype=tl.int64) + kv
    elif MODE == 2:
        lim = tl.minimum(block_end, start + (qi // block_size + 1) * block_size)
    else:
        lim = tl.zeros([BLOCK_M], dtype=tl.int64) + block_end
    row_lim = tl.where(row_valid, lim, 0)
    tile_lim = tl.max(row_lim, axis=0)
    if NUM_SPLITS > 1:
        chunk = tl.cdiv(tl.cdiv(tile_lim, NUM_SPLITS), BLOCK_N) * BLOCK_N
        lo = split * chunk
        hi = tl.minimum(lo + chunk, tile_lim)
    else:
        lo = tile_lim * 0
        hi = tile_lim

    offs_d = tl.arange(0, D)
    q = tl.load(Q + b * s_qb + qi[:, None] * s_ql + head[:, None] * s_qh + offs_d[None, :],
                mask=row_valid[:, None], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    k_base = K + b * s_kb + hkv * s_kh
    v_base = V + b * s_vb + hkv * s_vh

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, D], dtype=tl.float32)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        kmask = (offs_n < hi)[:, None]
        k = tl.load(k_base + offs_n[:, None] * s_kl + offs_d[None, :], mask=kmask, other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        s = tl.where(offs_n[None, :] < row_lim[:, None], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s - m_use[:, None])
        alpha = tl.math.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None]
        v = tl.load(v_base + offs_n[:, None] * s_vl + offs_d[None, :], mask=kmask, other=0.0)
        if UPCAST:
            v = v.to(tl.float32)
            acc = tl.dot(p, v, acc, input_precision=DOT_PRECISION)
        else:
            acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
        m_i = m_new

    in_range = qi < Q_MAX
    if NUM_SPLITS > 1:
        # Workspace layout: [NUM_SPLITS, B, Qmax, Hq, (D)], contiguous.
        row_off = ((split * BATCH + b) * Q_MAX + qi) * (HKV * G) + head
        tl.store(O_PART + row_off[:, None] * D + offs_d[None, :], acc, mask=in_range[:, None])
        tl.store(M_PART + row_off, m_i, mask=in_range)
        tl.store(L_PART + row_off, l_i, mask=in_range)
    else:
        out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
        tl.store(O + b * s_ob + qi[:, None] * s_ol + head[:, None] * s_oh + offs_d[None, :],
                 _to_output(out, O.dtype.element_ty, UPCAST), mask=in_range[:, None])


@triton.jit
def _combine_splits_kernel(
    O, O_PART, M_PART, L_PART, s_ob, s_ol, s_oh, Q_MAX, BATCH,
    HQ: tl.constexpr, HQ_P2: tl.constexpr, D: tl.constexpr, NUM_SPLITS: tl.constexpr,
    UPCAST: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)  # = b * Q_MAX + i
    b = pid // Q_MAX
    i = pid % Q_MAX
    offs_h = tl.arange(0, HQ_P2)
    offs_d = tl.arange(0, D)
    hmask = offs_h < HQ
    stride_split = BATCH * Q_MAX * HQ
    m_max = tl.full([HQ_P2], float("-inf"), dtype=tl.float32)
    for s in range(NUM_SPLITS):
        m_s = tl.load(M_PART + s * stride_split + pid * HQ + offs_h, mask=hmask, other=float("-inf"))
        m_max = tl.maximum(m_max, m_s)
    m_use = tl.where(m_max == float("-inf"), 0.0, m_max)
    acc = tl.zeros([HQ_P2, D], dtype=tl.float32)
    l_tot = tl.zeros([HQ_P2], dtype=tl.float32)
    for s in range(NUM_SPLITS):
        row = s * stride_split + pid * HQ + offs_h
        m_s = tl.load(M_PART + row, mask=hmask, other=float("-inf"))
        l_s = tl.load(L_PART + row, mask=hmask, other=0.0)
        o_s = tl.load(O_PART + row[:, None] * D + offs_d[None, :], mask=hmask[:, None], other=0.0)
        w = tl.math.exp2(m_s - m_use)
        l_tot += w * l_s
        acc += w[:, None] * o_s
    out = acc / tl.where(l_tot == 0.0, 1.0, l_tot)[:, None]
    tl.store(O + b * s_ob + i * s_ol + offs_h[:, None] * s_oh + offs_d[None, :],
             _to_output(out, O.dtype.element_ty, UPCAST), mask=hmask[:, None])


_LOG2E = 1.4426950408889634
_SM_COUNT: dict[int, int] = {}


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 1
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _SM_COUNT:
        _SM_COUNT[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _SM_COUNT[idx]


def attention_config(q_max: int, group: int, head_dim: int) -> dict:
    """Tile sizes and launch parameters for a (Qmax, GQA group, head dim) shape: fixed, no autotune."""
    rows = q_max * group
    cap = 128 if head_dim <= 64 else 64
    block_m = min(cap, max(16, triton.next_power_of_2(rows)))
    return dict(BLOCK_M=block_m, BLOCK_N=64, num_warps=4 if block_m <= 64 else 8, num_stages=3)


def choose_num_splits(batch: int, hkv: int, m_tiles: int, l_max: int, device: torch.device) -> int:
    """Flash-decoding split count from shapes only (so a captured graph stays valid):
    enough programs for about two waves over the SMs, and no split shorter than 256 key slots."""
    programs = batch * hkv * m_tiles
    sms = _sm_count(device)
    if programs >= sms:
        return 1
    return max(1, min(triton.cdiv(2 * sms, programs), l_max // 256, 32))


def write_block_kv_triton(k_new, v_new, k_cache, v_cache, block_start, block_len) -> None:
    """Copies the block's fresh K/V into the cache in place (Triton)."""
    B, q_max, hkv, d = k_new.shape
    l_max = k_cache.shape[1]
    _write_block_kv_kernel[(B, q_max)](
        k_new, v_new, k_cache, v_cache, block_start, block_len,
        k_new.stride(0), k_new.stride(1), k_new.stride(2), v_new.stride(0), v_new.stride(1), v_new.stride(2),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        q_max, l_max, HKV=hkv, HKV_P2=triton.next_power_of_2(hkv), D=d, num_warps=4,
    )


def block_attention_triton(q, k_new, v_new, k_cache, v_cache, block_start, block_len, kv_len, mode: int,
                           scale: float, block_size: int, num_splits: int | None = None) -> torch.Tensor:
    """Triton implementation of dllm::block_attention. Inputs are assumed validated (shapes,
    dtypes, devices, last-dim contiguity; see dllm_kernels.block_attention). `num_splits` overrides the
    flash-decoding split count (tests use it to exercise the combine path on CPU)."""
    B, q_max, hq, d = q.shape
    l_max, hkv = k_cache.shape[1], k_cache.shape[2]
    group = hq // hkv
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    write_block_kv_triton(k_new, v_new, k_cache, v_cache, block_start, block_len)
    if q_max == 0 or B == 0:
        return out
    cfg = attention_config(q_max, group, d)
    m_tiles = triton.cdiv(q_max * group, cfg["BLOCK_M"])
    splits = num_splits if num_splits is not None else choose_num_splits(B, hkv, m_tiles, l_max, q.device)
    if splits > 1:
        o_part = torch.empty((splits, B, q_max, hq, d), dtype=torch.float32, device=q.device)
        m_part = torch.empty((splits, B, q_max, hq), dtype=torch.float32, device=q.device)
        l_part = torch.empty((splits, B, q_max, hq), dtype=torch.float32, device=q.device)
    else:
        o_part = m_part = l_part = out  # unused
    interp = _interpreting()
    _block_attn_fwd_kernel[(m_tiles, B * hkv, splits)](
        q, k_cache, v_cache, out, o_part, m_part, l_part,
        block_start, block_len, kv_len if kv_len is not None else block_len,
        q.stride(0), q.stride(1), q.stride(2),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        float(scale) * _LOG2E, q_max, l_max, B, max(int(block_size), 1),
        HKV=hkv, G=group, D=d, MODE=int(mode),
        BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], NUM_SPLITS=splits,
        UPCAST=interp, DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    if splits > 1:
        _combine_splits_kernel[(B * q_max,)](
            out, o_part, m_part, l_part, out.stride(0), out.stride(1), out.stride(2), q_max, B,
            HQ=hq, HQ_P2=triton.next_power_of_2(hq), D=d, NUM_SPLITS=splits, UPCAST=interp, num_warps=4,
        )
    return out
