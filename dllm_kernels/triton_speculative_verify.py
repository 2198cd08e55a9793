"""Triton implementation of `torch.ops.dllm.speculative_verify` (docs/speculative_verify.md).

`speculative_verify_triton` takes the op's arguments (csrc/ops.cpp), checks them as the C++ op does
(csrc/cpu/speculative_verify_cpu.cpp; the same messages) and launches one program per sequence
(triton_kernels/speculative_verify.py), with no host synchronisation on CUDA: there the values of
draft_lens and draft_tokens are not checked (that would read them on the host); the kernel clamps
lengths into [0, K] and rejects out-of-range tokens. On CPU tensors it runs only under the Triton
interpreter (TRITON_INTERPRET=1), which is how the tests compare it with the C++ op without a GPU.
"""
from __future__ import annotations

import math
import os

import torch

from ._triton_pkg import triton_kernels_module

speculative_verify_kernel = triton_kernels_module("speculative_verify").speculative_verify_kernel
FLOAT_TYPES = (torch.float32, torch.float16, torch.bfloat16)


class VerifyArgumentError(ValueError, RuntimeError):
    """A bad argument: a ValueError, and a RuntimeError like the C++ op's TORCH_CHECK failures."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise VerifyArgumentError("speculative_verify: " + msg)


def _check_int(t, ref, name, shape):
    _check(t.device == ref.device, f"{name} is on {t.device} but target_logits is on {ref.device}")
    _check(t.dtype == torch.int64, f"{name} must be int64, got {t.dtype}")
    _check(tuple(t.shape) == tuple(shape), f"{name} must have shape {list(shape)}, got {list(t.shape)}")


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def check_arguments(target_logits, draft_tokens, draft_probs, draft_lens, seed, offset, temperature,
                    check_values=None):
    """The C++ op's checks; value checks (lengths, token ids) by default only where they need no device
    sync (CPU tensors)."""
    _check(target_logits.dim() == 3, f"target_logits must be 3-D [B, K+1, V], got {target_logits.dim()}-D")
    B, K1, V = target_logits.shape
    K = K1 - 1
    _check(B > 0, "empty batch (target_logits has B = 0)")
    _check(K >= 0, "target_logits must have K+1 >= 1 rows per sequence, got 0")
    _check(V >= 1, f"target_logits must have a vocabulary of at least 1, got V = {V}")
    _check(target_logits.dtype in FLOAT_TYPES, f"target_logits must be float32, float16 or bfloat16, got "
           f"{target_logits.dtype}")
    _check(target_logits.stride(2) == 1, "target_logits must be contiguous along the vocab dimension")
    _check_int(draft_tokens, target_logits, "draft_tokens", (B, K))
    _check(draft_probs.device == target_logits.device,
           f"draft_probs is on {draft_probs.device} but target_logits is on {target_logits.device}")
    _check(draft_probs.dtype in FLOAT_TYPES, f"draft_probs must be float32, float16 or bfloat16, got {draft_probs.dtype}")
    _check(tuple(draft_probs.shape) == (B, K, V), f"draft_probs must have shape {[B, K, V]}, got "
           f"{list(draft_probs.shape)}")
    _check(draft_probs.stride(2) == 1 or V == 1 or K == 0, "draft_probs must be contiguous along the vocab dimension")
    _check_int(draft_lens, target_logits, "draft_lens", (B,))
    _check_int(seed, target_logits, "seed", (B,))
    _check_int(offset, target_logits, "offset", (B,))
    _check(math.isfinite(temperature) and temperature >= 0.0, f"temperature must be finite and >= 0, got {temperature}")
    if check_values is None:
        check_values = target_logits.device.type == "cpu"
    if check_values:
        for b, n in enumerate(draft_lens.tolist()):
            _check(0 <= n <= K, f"draft_lens[{b}] = {n} is outside [0, K = {K}]")
            for k, t in enumerate(draft_tokens[b, :n].tolist()):
                _check(0 <= t < V, f"draft_tokens[{b}, {k}] = {t} is outside [0, V = {V})")
    return B, K, V


def speculative_verify_triton(target_logits, draft_tokens, draft_probs, draft_lens, seed, offset,
                              temperature=0.0, draft_is_logits=False, *, block_v=None, check_values=None):
    """The op in Triton: its arguments, names and order, so it registers as the op's CUDA kernel.
    The keyword-only knobs (never passed by the op) let tests force several tiles per row (`block_v`)
    and skip the value checks to exercise the kernel's own guards (`check_values=False`)."""
    B, K, V = check_arguments(target_logits, draft_tokens, draft_probs, draft_lens, seed, offset, temperature,
                              check_values)
    _check(target_logits.device.type == "cuda" or _interpreting(),
           f"the Triton path needs CUDA tensors (or TRITON_INTERPRET=1 on CPU), got {target_logits.device}")
    tokens = draft_tokens.contiguous()
    accepted = torch.empty(B, dtype=torch.int64, device=target_logits.device)
    emitted = torch.full((B, K + 1), -1, dtype=torch.int64, device=target_logits.device)
    if block_v is None:
        block_v = min(1 << max(0, V - 1).bit_length(), 256 if _interpreting() else 2048)
    q = draft_probs if K > 0 else target_logits  # any float tensor stands in: never read when K == 0
    speculative_verify_kernel[(B,)](
        target_logits, target_logits.stride(0), target_logits.stride(1), tokens, q, q.stride(0), q.stride(1),
        draft_lens.contiguous(), seed.contiguous(), offset.contiguous(), accepted, emitted, K, V, float(temperature),
        GREEDY=not temperature > 0, Q_LOGITS=bool(draft_is_logits), BLOCK_V=block_v,
        num_warps=8 if block_v >= 2048 else 4)
    return accepted, emitted
