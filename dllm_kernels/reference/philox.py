"""Philox4x32-10 (Salmon, Moraes, Dror, Shaw, SC'11) in numpy, vectorised over counters.

This is the reference for the noise of `fused_unmask` (docs/fused_unmask.md, step 4): every
backend must produce the very same float32 uniforms, so everything here is exact integer
arithmetic (uint64 holding 32-bit words) followed by an exactly representable conversion.

- `philox4x32_10(c0, c1, c2, c3, k0, k1)`: the raw generator; arguments broadcast against each
  other, result is a tuple of four uint32 arrays.
- `bits_to_uniform(r)`: `(r >> 9) * 2^-23 + 2^-24`, i.e. `(k + 1/2) * 2^-23` for the top 23 bits
  `k`: exact in float32, strictly inside (0, 1).
- `noise_uniform(seed, offset, v, p)`: the uniform behind the Gumbel noise of vocab index `v` at
  sequence position `p`: counter `(v, p, offset lo, offset hi)`, key `(seed lo, seed hi)`, first
  output word.
- `rank_uniform(seed, offset, p)`: the `random` remasking stream, vocab index `RANK_STREAM`.

Seeds and offsets are 64-bit; negative Python ints (as stored in the int64 state tensor) are
taken modulo 2^64, i.e. as their two's-complement bit pattern.
"""
from __future__ import annotations

import numpy as np

__all__ = [
    "PHILOX_M0", "PHILOX_M1", "PHILOX_W0", "PHILOX_W1", "RANK_STREAM",
    "philox4x32_10", "bits_to_uniform", "noise_uniform", "rank_uniform",
]

PHILOX_M0 = 0xD2511F53  # multiplier applied to counter word 0
PHILOX_M1 = 0xCD9E8D57  # multiplier applied to counter word 2
PHILOX_W0 = 0x9E3779B9  # key schedule increment, word 0 (golden ratio)
PHILOX_W1 = 0xBB67AE85  # key schedule increment, word 1 (sqrt(3) - 1)
RANK_STREAM = 0xFFFFFFFF  # vocab index reserved for the per-position random-remasking stream

_MASK32 = np.uint64(0xFFFFFFFF)
_MASK64 = (1 << 64) - 1


def _word(a) -> np.ndarray:
    """A 32-bit word (or array of them) held in uint64; Python ints are taken modulo 2^32."""
    if isinstance(a, (int, np.integer)):
        return np.uint64(int(a) & 0xFFFFFFFF)
    arr = np.asarray(a)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"philox: counter/key words must be integers, got dtype {arr.dtype}")
    return arr.astype(np.int64 if arr.dtype.kind == "i" else np.uint64).astype(np.uint64) & _MASK32


def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Philox4x32 with 10 rounds. Returns (r0, r1, r2, r3) as uint32 arrays of the broadcast shape.

    One round: (hi0, lo0) = M0 * c0, (hi1, lo1) = M1 * c2 (64-bit products, exact in uint64
    since both factors are < 2^32); c' = (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0). The key is
    bumped by (W0, W1) after every round.
    """
    c0, c1, c2, c3, k0, k1 = np.broadcast_arrays(*(np.asarray(_word(w)) for w in (c0, c1, c2, c3, k0, k1)))
    c0, c1, c2, c3, k0, k1 = (np.array(w, dtype=np.uint64) for w in (c0, c1, c2, c3, k0, k1))
    m0, m1 = np.uint64(PHILOX_M0), np.uint64(PHILOX_M1)
    w0, w1 = np.uint64(PHILOX_W0), np.uint64(PHILOX_W1)
    shift = np.uint64(32)
    for _ in range(10):
        p0 = m0 * c0
        p1 = m1 * c2
        hi0, lo0 = p0 >> shift, p0 & _MASK32
        hi1, lo1 = p1 >> shift, p1 & _MASK32
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + w0) & _MASK32
        k1 = (k1 + w1) & _MASK32
    return tuple(w.astype(np.uint32) for w in (c0, c1, c2, c3))


def bits_to_uniform(r) -> np.ndarray:
    """(r >> 9) * 2^-23 + 2^-24 as float32: exact (it is (2k + 1) * 2^-24 with 2k + 1 < 2^24)."""
    k = np.asarray(r).astype(np.uint64) >> np.uint64(9)
    return (k.astype(np.float64) * 2.0 ** -23 + 2.0 ** -24).astype(np.float32)


def _split64(value):
    """(lo, hi) 32-bit words of a 64-bit value (Python int or integer array), two's complement."""
    if isinstance(value, (int, np.integer)):
        v = int(value) & _MASK64
        return v & 0xFFFFFFFF, v >> 32
    arr = np.asarray(value)
    u = arr.astype(np.int64).view(np.uint64) if arr.dtype.kind == "i" else arr.astype(np.uint64)
    return u & _MASK32, u >> np.uint64(32)


def noise_uniform(seed, offset, v, p) -> np.ndarray:
    """Uniform(0, 1) float32 for vocab index `v` at position `p` (all four broadcast).

    Counter (v, p, offset & 0xffffffff, offset >> 32), key (seed & 0xffffffff, seed >> 32),
    first output word through `bits_to_uniform`. Same values as philox.h's `noise_uniform`.
    """
    s_lo, s_hi = _split64(seed)
    o_lo, o_hi = _split64(offset)
    r0, _, _, _ = philox4x32_10(v, p, o_lo, o_hi, s_lo, s_hi)
    return bits_to_uniform(r0)


def rank_uniform(seed, offset, p) -> np.ndarray:
    """The `random` remasking key of position `p`: `noise_uniform(seed, offset, RANK_STREAM, p)`."""
    return noise_uniform(seed, offset, RANK_STREAM, p)
