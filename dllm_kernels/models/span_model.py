"""The forward every model class shares: transformer blocks on `block_attention` over query spans.

`SpanModel` runs one forward over a *span* of query positions per sequence (`forward_span`):

* every sequence `b` of the batch has its own query span `[q_start[b], q_start[b] + q_len[b])`
  (`q_len[b] == 0`: the sequence is idle) and its own valid length `kv_len[b]`;
* the span's keys/values (keys after RoPE) are written into the cache slots of their positions and
  each query attends over the cache as the class's attention mode says: `[0, kv_len[b])`
  (bidirectional models: block_attention's dual mode) or the block-causal limit of its block
  (block-diffusion models: mode block_causal, blocks counted from position 0, so spans start at
  block boundaries); with `q_start = 0, q_len = kv_len` that is the plain full forward;
* logits are computed only for the rows asked for (`row_start[b] + r`, `r < n_rows`), never for the
  whole sequence. A shifted block-diffusion model may ask for the row just before its span (the
  last position of the previous block, whose hidden state the cache carries: block-causal
  attention never lets it see the current block, so it does not change while the block decodes).

Linear layers run on the *packed* query rows (no padding rows are computed); only attention sees
the padded `[B, Qmax]` layout. `forward_dense` is the fixed-shape variant for the CUDA-graph path.

A subclass sets the weights (attribute names below) and the class attributes `shift`,
`attn_mode`, `block_size`; its config has `n_layers`, `n_heads`, `n_kv_heads`, `head_dim`,
`rms_norm_eps`, `mask_token_id`, `eos_token_id`.

`transformer_block` is the one statement of a block (LLaDA, Qwen2, Qwen3), with the attention passed
in: decoding runs it with block_attention over the KV cache, training (dllm_kernels.training.model)
with SDPA and autograd.

Tensor parallel (`tp`, a models.tensor_parallel.TensorParallel): the weights are this rank's slices
(its heads, its hidden units, its vocabulary shard from `vocab_start`), the row-parallel products
are summed across ranks, and the logits are this rank's vocabulary shard; `unmask_op` is then the
vocabulary-parallel fused_unmask `generate` runs on every rank.
"""
from __future__ import annotations

from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from ..block_attention import block_attention

__all__ = ["KVCache", "LayerWeights", "SpanModel", "rms_norm", "rope", "rope_tables", "transformer_block"]


class KVCache:
    """Per-layer key / value caches [B, Lmax, Hkv, D], one slot per position, keys after RoPE;
    `carry` [B, d_model]: the hidden state a shifted block-diffusion model keeps (else None)."""

    def __init__(self, n_layers: int, batch: int, length: int, n_kv_heads: int, head_dim: int,
                 dtype, device, carry_width: int = 0):
        shape = (batch, length, n_kv_heads, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.carry = torch.zeros(batch, carry_width, dtype=dtype, device=device) if carry_width else None

    def layer(self, i: int):
        return self.k[i], self.v[i]

    def nbytes(self) -> int:
        extra = [self.carry] if self.carry is not None else []
        return sum(t.numel() * t.element_size() for t in self.k + self.v + extra)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm in float32, cast back, then times the weight (OLMo's and Qwen's order)."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def rope(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """t [..., H, D] rotated by cos/sin broadcastable to it ([..., 1, D], float32), "rotate half" layout."""
    tf = t.float()
    half = tf.shape[-1] // 2
    rot = torch.cat((-tf[..., half:], tf[..., :half]), dim=-1)
    return (tf * cos + rot * sin).to(t.dtype)


def inverse_frequencies(head_dim: int, theta: float) -> torch.Tensor:
    """RoPE's inverse frequencies theta^(-2j / head_dim), j < head_dim / 2 (float32)."""
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))


def rope_tables(inv_freq: torch.Tensor, length: int):
    """(cos, sin) [length, head_dim] (float32) of positions 0 .. length - 1, angles repeated for
    both halves ("rotate half")."""
    ang = torch.arange(length, dtype=torch.float32, device=inv_freq.device)[:, None] * inv_freq[None, :]
    emb = torch.cat((ang, ang), dim=-1)
    return emb.cos(), emb.sin()


Matrices = Union[torch.Tensor, Tuple[torch.Tensor, ...]]


class LayerWeights(NamedTuple):
    """One block's weights. `qkv` (q|k|v) and `gate_up` (gate|up) are one fused matrix (the
    decoding models: one GEMM) or a tuple of the checkpoint's separate matrices (the trainable
    model, whose parameters and gradients stay one per checkpoint tensor)."""

    attn_norm: torch.Tensor
    qkv: Matrices
    w_o: torch.Tensor
    ff_norm: torch.Tensor
    gate_up: Matrices
    w_down: torch.Tensor
    b_qkv: Optional[torch.Tensor] = None   # Qwen2: q/k/v biases (fused q|k|v only)
    q_norm: Optional[torch.Tensor] = None  # Qwen3: RMSNorm weight over each head of q and k
    k_norm: Optional[torch.Tensor] = None


def _project(x: torch.Tensor, w: Matrices, sizes: List[int], bias: Optional[torch.Tensor] = None):
    """x times the stacked matrices `w`, as one output per entry of `sizes`."""
    if isinstance(w, torch.Tensor):
        return F.linear(x, w, bias).split(sizes, dim=-1)
    if bias is not None:
        raise ValueError("LayerWeights: biases go with a fused q|k|v matrix")
    return tuple(F.linear(x, m) for m in w)


def transformer_block(h: torch.Tensor, w: LayerWeights, config, cos: torch.Tensor, sin: torch.Tensor,
                      attend: Callable, heads: Optional[tuple] = None,
                      reduce: Optional[Callable] = None) -> torch.Tensor:
    """One pre-norm block on hidden rows h [..., d]: RMSNorm, q/k/v projection (Qwen3: per-head q/k
    norm), RoPE by cos/sin (broadcast against [..., H, D]), `attend(q, k, v)` -> [..., Hq, D], output
    projection and residual; RMSNorm, SwiGLU and residual. Tensor parallel: `heads` = (q, kv) heads
    this rank holds, and `reduce` sums the row-parallel products (attention out, MLP down) across ranks."""
    c = config
    hq, hkv = heads if heads is not None else (c.n_heads, c.n_kv_heads)
    hd, eps = c.head_dim, c.rms_norm_eps
    reduce = reduce or (lambda t: t)
    n1 = rms_norm(h, w.attn_norm, eps)
    q, k, v = _project(n1, w.qkv, [hq * hd, hkv * hd, hkv * hd], w.b_qkv)
    q, k, v = q.unflatten(-1, (hq, hd)), k.unflatten(-1, (hkv, hd)), v.unflatten(-1, (hkv, hd))
    if w.q_norm is not None:  # Qwen3: RMSNorm over each head, before RoPE
        q, k = rms_norm(q, w.q_norm, eps), rms_norm(k, w.k_norm, eps)
    q, k = rope(q, cos, sin), rope(k, cos, sin)
    h = h + reduce(F.linear(attend(q, k, v).flatten(-2), w.w_o))
    n2 = rms_norm(h, w.ff_norm, eps)
    hidden = w.w_down.shape[1]
    gate, up = _project(n2, w.gate_up, [hidden, hidden])
    return h + reduce(F.linear(F.silu(gate) * up, w.w_down))


def _frozen(t: torch.Tensor) -> torch.nn.Parameter:
    return torch.nn.Parameter(t, requires_grad=False)


class SpanModel(torch.nn.Module):
    """Weights: `wte` [V, d], `ln_f` [d], `lm_head` [V, d]; per layer `attn_norm`, `ff_norm`,
    `w_qkv` (q|k|v fused), `b_qkv` (or None), `q_norm` / `k_norm` ([head_dim], or None), `w_o`,
    `w_gate_up` (gate|up fused), `w_down`. Calling it on tokens [B, L] gives every position's logits."""

    shift = False          # True: the logits row at position p predicts position p + 1
    attn_mode = "dual"     # "dual": bidirectional; "block_causal": block diffusion (needs block_size)
    block_size = None
    tp = None              # TensorParallel, or None: one process holds every weight
    vocab_start = 0        # first id of this rank's vocabulary shard (wte and lm_head rows)

    def _init_layers(self, layers, *, theta: float, device) -> None:
        """`layers`: one dict per block with the per-layer tensors (already on device, in dtype)."""
        self.attn_norm, self.ff_norm = torch.nn.ParameterList(), torch.nn.ParameterList()
        self.w_qkv, self.w_o = torch.nn.ParameterList(), torch.nn.ParameterList()
        self.w_gate_up, self.w_down = torch.nn.ParameterList(), torch.nn.ParameterList()
        has_bias = layers[0].get("b_qkv") is not None
        has_qk_norm = layers[0].get("q_norm") is not None
        self.b_qkv = torch.nn.ParameterList() if has_bias else None
        self.q_norm = torch.nn.ParameterList() if has_qk_norm else None
        self.k_norm = torch.nn.ParameterList() if has_qk_norm else None
        for layer in layers:
            for name in ("attn_norm", "ff_norm", "w_qkv", "w_o", "w_gate_up", "w_down"):
                getattr(self, name).append(_frozen(layer[name]))
            if has_bias:
                self.b_qkv.append(_frozen(layer["b_qkv"]))
            if has_qk_norm:
                self.q_norm.append(_frozen(layer["q_norm"]))
                self.k_norm.append(_frozen(layer["k_norm"]))
        hd = self.config.head_dim
        # Heads this rank holds (all of them without tensor parallelism): from the weights' shapes.
        self.local_heads = layers[0]["w_o"].shape[1] // hd
        self.local_kv_heads = (layers[0]["w_qkv"].shape[0] - self.local_heads * hd) // (2 * hd)
        self._inv_freq = inverse_frequencies(self.config.head_dim, theta).to(device)
        self._rope_cache = None

    # ---- helpers -----------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.wte.device

    @property
    def dtype(self) -> torch.dtype:
        return self.wte.dtype

    @property
    def vocab_size(self) -> int:
        """Width of the logits this model returns (this rank's shard under tensor parallelism)."""
        return self.lm_head.shape[0]

    @property
    def full_vocab_size(self) -> int:
        return self._full_vocab if self.tp is not None else self.vocab_size

    def _init_tp(self, tp, full_vocab: int) -> None:
        """Run tensor-parallel over `tp` (a TensorParallel; None: one process): the embedding and LM
        head are this rank's shard of the `full_vocab` ids."""
        if tp is not None:
            self.tp, self._full_vocab = tp, full_vocab
            self.vocab_start = tp.shard(full_vocab)[0]

    @property
    def unmask_op(self):
        """The fused_unmask `generate` calls on this model's logits: the vocabulary-parallel one
        (with this rank's shard) under tensor parallelism, else None (the plain op)."""
        return self._vocab_parallel("vocab_parallel_fused_unmask")

    @property
    def unmask_from_hidden_op(self):
        """What `generate(fused_lm_head=True)` calls with the final hidden states and this rank's LM
        head rows: the vocabulary-parallel one under tensor parallelism, else None (the plain one)."""
        return self._vocab_parallel("vocab_parallel_fused_unmask_from_hidden")

    def _vocab_parallel(self, name: str):
        """dllm_kernels.vocab_parallel.<name> bound to this rank's group and shard, or None."""
        if self.tp is None:
            return None
        import functools

        from .. import vocab_parallel

        return functools.partial(getattr(vocab_parallel, name), group=self.tp.group, vocab_start=self.vocab_start,
                                 vocab_size=self.full_vocab_size)

    def _reduce(self, t: torch.Tensor) -> torch.Tensor:
        return t if self.tp is None else self.tp.all_reduce(t)

    def _embed(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.tp is None:
            return F.embedding(tokens, self.wte)
        return self.tp.embed(tokens, self.wte, self.vocab_start)

    @property
    def _uses_carry(self) -> bool:
        return self.shift and self.attn_mode == "block_causal"

    def new_cache(self, batch: int, length: int) -> KVCache:
        c = self.config
        return KVCache(c.n_layers, batch, length, self.local_kv_heads, c.head_dim, self.dtype, self.device,
                       carry_width=self.wte.shape[1] if self._uses_carry else 0)

    def _cos_sin(self, length: int):
        if self._rope_cache is None or self._rope_cache[0].shape[0] < length:
            self._rope_cache = rope_tables(self._inv_freq, max(length, 256))
        return self._rope_cache

    def _final_hidden(self, h_rows: torch.Tensor) -> torch.Tensor:
        """The LM head's input: the final norm of the last layer's rows."""
        return rms_norm(h_rows, self.ln_f, self.config.rms_norm_eps)

    def _logits(self, h_rows: torch.Tensor) -> torch.Tensor:
        return F.linear(self._final_hidden(h_rows), self.lm_head)

    def layer(self, i: int) -> LayerWeights:
        """Block i's weights (fused q|k|v and gate|up)."""
        opt = lambda lst: lst[i] if lst is not None else None  # noqa: E731
        return LayerWeights(self.attn_norm[i], self.w_qkv[i], self.w_o[i], self.ff_norm[i], self.w_gate_up[i],
                            self.w_down[i], b_qkv=opt(self.b_qkv), q_norm=opt(self.q_norm), k_norm=opt(self.k_norm))

    def _layers(self, h, pos, to_padded, from_padded, cache, scratch, q_start, q_len, kv_len, B, q_max):
        """The transformer blocks on packed rows h [N, d] at positions pos [N], attention by
        block_attention over the cache (or the scratch K/V of a cache-less forward)."""
        cos_t, sin_t = self._rope_cache
        cos, sin = cos_t[pos][:, None, :], sin_t[pos][:, None, :]
        for i in range(self.config.n_layers):
            kc, vc = cache.layer(i) if cache is not None else scratch

            def attend(q, k, v, kc=kc, vc=vc):
                o = block_attention(to_padded(q, B, q_max), to_padded(k, B, q_max), to_padded(v, B, q_max),
                                    kc, vc, q_start, q_len, kv_len, mode=self.attn_mode, block_size=self.block_size)
                return from_padded(o)

            h = transformer_block(h, self.layer(i), self.config, cos, sin, attend,
                                  heads=(self.local_heads, self.local_kv_heads), reduce=self._reduce)
        return h

    # ---- forwards ----------------------------------------------------------------------------------

    @torch.no_grad()
    def forward(self, x: torch.Tensor, lengths: Optional[Sequence[int]] = None) -> torch.Tensor:
        """Logits [B, L, V] of every position; sequence b is `x[b, :lengths[b]]` (default: all L)."""
        B, L = x.shape
        lengths = [L] * B if lengths is None else list(lengths)
        return self.forward_span(x, q_start=[0] * B, q_len=lengths, kv_len=lengths,
                                 row_start=[0] * B, n_rows=L)

    @torch.no_grad()
    def forward_span(self, x: torch.Tensor, *, q_start: List[int], q_len: List[int], kv_len: List[int],
                     row_start: List[int], n_rows: int, cache=None, hidden: bool = False) -> torch.Tensor:
        """Logits [B, n_rows, V] of positions `row_start[b] + r` after a forward of each sequence's span;
        with `hidden=True` the LM head's input [B, n_rows, d] instead (logits = it @ `lm_head`.T),
        for a decoder that fuses the head with its statistics pass (dllm_kernels.from_hidden).

        Host lists (the decoder knows the spans). With `cache=None` every active span must be the
        whole sequence (`q_start = 0`, `q_len = kv_len`): a scratch K/V buffer serves all layers.
        Rows outside a sequence's span hold arbitrary values (the decoder never reads them), except
        the row just before the span of a shifted block-diffusion model (the cache's carry).
        """
        B, L = x.shape
        dev = x.device
        q_max = max(max(q_len), 1)
        active = [b for b in range(B) if q_len[b] > 0]
        for b in range(B):
            if not (0 <= q_start[b] and q_start[b] + q_len[b] <= kv_len[b] <= L):
                raise ValueError(f"forward_span: sequence {b}: need 0 <= q_start + q_len <= kv_len <= L, "
                                 f"got {q_start[b]}, {q_len[b]}, {kv_len[b]}, L={L}")
            if cache is None and q_len[b] and (q_start[b] != 0 or q_len[b] != kv_len[b]):
                raise ValueError("forward_span: without a cache each span must be the whole sequence")
            if self.block_size and q_len[b] and q_start[b] % self.block_size:
                raise ValueError(f"forward_span: sequence {b}: a block-causal span must start at a block "
                                 f"boundary (block size {self.block_size}), got q_start={q_start[b]}")
        dense = len(active) == B and all(n == q_max for n in q_len)
        # Packed rows: (b, q_start[b] + i) for i < q_len[b]; slot b * q_max + i in the padded layout.
        bi = torch.cat([torch.full((q_len[b],), b, dtype=torch.int64) for b in active]) if active else \
            torch.zeros(0, dtype=torch.int64)
        ii = torch.cat([torch.arange(q_len[b], dtype=torch.int64) for b in active]) if active else bi
        pos_cpu = bi.new_tensor([q_start[b] for b in range(B)])[bi] + ii
        pos = pos_cpu.to(dev, non_blocking=True)
        flat = (bi * L + pos_cpu).to(dev, non_blocking=True)
        slot = (bi * q_max + ii).to(dev, non_blocking=True)
        # Row r of sequence b -> packed index of position row_start[b] + r (clamped into its span).
        packed_of = torch.zeros(B, max(L, 1), dtype=torch.int64)
        acc = 0
        n_packed = int(bi.numel())
        carry = cache is not None and self._uses_carry
        for b in active:
            packed_of[b, :] = acc + torch.clamp(torch.arange(L) - q_start[b], 0, q_len[b] - 1)
            if carry and q_start[b] > 0:
                packed_of[b, q_start[b] - 1] = n_packed + b  # the carried row (appended after the packed rows)
            acc += q_len[b]
        rpos = torch.clamp(torch.tensor(row_start)[:, None] + torch.arange(n_rows)[None, :], 0, L - 1)
        row_idx = packed_of.gather(1, rpos).reshape(-1).to(dev, non_blocking=True)

        c = self.config
        if dense:
            to_padded = lambda t, B_, Q_: t.view(B_, Q_, *t.shape[1:])  # noqa: E731
            from_padded = lambda o: o.reshape(-1, *o.shape[2:])  # noqa: E731
        else:
            def to_padded(t, B_, Q_):
                buf = t.new_zeros(B_ * Q_, *t.shape[1:])
                buf.index_copy_(0, slot, t)
                return buf.view(B_, Q_, *t.shape[1:])

            def from_padded(o):
                return o.reshape(-1, *o.shape[2:]).index_select(0, slot)
        scratch = None
        if cache is None:
            shape = (B, L, self.local_kv_heads, c.head_dim)
            scratch = (torch.empty(shape, dtype=self.dtype, device=dev), torch.empty(shape, dtype=self.dtype, device=dev))
        idx = lambda v: torch.tensor(v, dtype=torch.int64).to(dev, non_blocking=True)  # noqa: E731
        self._cos_sin(L)
        h = self._embed(x.reshape(-1).index_select(0, flat))
        h = self._layers(h, pos, to_padded, from_padded, cache, scratch, idx(q_start), idx(q_len),
                         idx(kv_len), B, q_max)
        if not active:
            width = self.ln_f.shape[0] if hidden else self.vocab_size
            return torch.zeros(B, n_rows, width, dtype=self.dtype, device=dev)
        h_rows = torch.cat([h, cache.carry]) if carry else h
        head = self._final_hidden if hidden else self._logits
        logits = head(h_rows.index_select(0, row_idx)).view(B, n_rows, -1)
        if carry:  # keep the hidden state of each sequence's first row when the span holds it
            keep = [b for b in active if q_start[b] <= row_start[b] < q_start[b] + q_len[b]]
            if keep:
                src = torch.tensor([int(packed_of[b, row_start[b]]) for b in keep]).to(dev)
                cache.carry.index_copy_(0, idx(keep), h.index_select(0, src))
        return logits

    @torch.no_grad()
    def forward_dense(self, x: torch.Tensor, q_start: torch.Tensor, q_len: torch.Tensor,
                      kv_len: torch.Tensor, q_max: int, cache: KVCache) -> torch.Tensor:
        """Fixed-shape forward for CUDA graphs: device tensors [B] for the spans, `q_max` rows per
        sequence (positions q_start[b] + i clamped into [0, L); rows i >= q_len[b] are computed but
        neither written to the cache nor attended to). Returns logits [B, q_max, V] for the rows
        `q_start[b] + i`. No host read."""
        B, L = x.shape
        i = torch.arange(q_max, device=x.device)
        pos = torch.clamp(q_start[:, None] + i[None, :], max=L - 1).reshape(-1)
        tokens = x.gather(1, pos.view(B, q_max)).reshape(-1)
        h = self._embed(tokens)
        to_padded = lambda t, B_, Q_: t.view(B_, Q_, *t.shape[1:])  # noqa: E731
        from_padded = lambda o: o.reshape(-1, *o.shape[2:])  # noqa: E731
        self._cos_sin(L)
        h = self._layers(h, pos, to_padded, from_padded, cache, None, q_start, q_len, kv_len, B, q_max)
        return self._logits(h).view(B, q_max, -1)
