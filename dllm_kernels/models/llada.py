"""The LLaDA architecture on `block_attention`, with prefix / dual KV cache (docs/llada_checkpoint.md).

`LLaDA` holds the weights of a LLaDA-format checkpoint (RMSNorm, RoPE, SwiGLU, bidirectional
attention, MHA or GQA, no biases) and runs one forward over a *span* of query positions per
sequence (`forward_span`):

* every sequence `b` of the batch has its own query span `[q_start[b], q_start[b] + q_len[b])`
  (`q_len[b] == 0`: the sequence is idle) and its own valid length `kv_len[b]`;
* the span's keys/values (keys after RoPE) are written into the cache slots of their positions and
  each query attends over the cache `[0, kv_len[b])` (block_attention's dual mode); with
  `q_start = 0, q_len = kv_len` that is the plain full forward (no cache, or a cache refresh);
* logits are computed only for the rows asked for (`row_start[b] + r`, `r < n_rows`), never for the
  whole sequence.

Linear layers run on the *packed* query rows (no padding rows are computed); only attention sees
the padded `[B, Qmax]` layout. `forward_dense` is the fixed-shape variant for the CUDA-graph path:
spans are device tensors, every sequence gets `Qmax` rows, no host read.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F

from ..attention import block_attention

__all__ = ["LLaDAConfig", "LLaDA", "KVCache", "load_llada_state_dict", "llada_tensor_names", "random_state_dict"]

_SUPPORTED = {"block_type": "llama", "activation_type": "silu", "layer_norm_type": "rms"}


@dataclass(frozen=True)
class LLaDAConfig:
    """The config.json fields of a LLaDA checkpoint that the computation depends on."""

    d_model: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: Optional[int] = None
    mlp_hidden_size: int = 12288
    vocab_size: int = 126464
    embedding_size: Optional[int] = None
    rope_theta: float = 500000.0
    rms_norm_eps: float = 1e-5
    weight_tying: bool = False
    max_sequence_length: int = 4096
    mask_token_id: int = 126336
    eos_token_id: int = 126081

    def __post_init__(self):
        if self.n_kv_heads is None:
            object.__setattr__(self, "n_kv_heads", self.n_heads)
        if self.embedding_size is None:
            object.__setattr__(self, "embedding_size", self.vocab_size)
        if self.d_model % self.n_heads:
            raise ValueError(f"LLaDAConfig: d_model {self.d_model} is not a multiple of n_heads {self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"LLaDAConfig: n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"LLaDAConfig: head dim {self.head_dim} must be even (RoPE)")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @classmethod
    def from_dict(cls, cfg: dict) -> "LLaDAConfig":
        for key, want in _SUPPORTED.items():
            got = cfg.get(key, want)
            got = getattr(got, "value", got)
            if str(got).lower() != want:
                raise ValueError(f"LLaDAConfig: {key} must be {want!r}, got {got!r}")
        if not cfg.get("rope", True):
            raise ValueError("LLaDAConfig: only rope=true checkpoints are supported")
        if cfg.get("include_bias", False):
            raise ValueError("LLaDAConfig: include_bias=true is not supported (LLaDA has no biases)")
        names = cls.__dataclass_fields__.keys()
        kw = {k: cfg[k] for k in names if k in cfg and cfg[k] is not None}
        if "mlp_hidden_size" not in kw and "mlp_ratio" in cfg:
            kw["mlp_hidden_size"] = int(cfg["mlp_ratio"]) * int(cfg["d_model"])
        return cls(**kw)

    @classmethod
    def from_json(cls, path: str) -> "LLaDAConfig":
        with open(path) as f:
            return cls.from_dict(json.load(f))

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(_SUPPORTED, rope=True, include_bias=False)
        return d


def llada_tensor_names(config: LLaDAConfig) -> dict:
    """name -> shape of every tensor of a checkpoint (docs/llada_checkpoint.md, "Tensor names")."""
    c, p = config, "model.transformer."
    kv = c.n_kv_heads * c.head_dim
    names = {p + "wte.weight": (c.embedding_size, c.d_model), p + "ln_f.weight": (c.d_model,)}
    for i in range(c.n_layers):
        b = f"{p}blocks.{i}."
        names.update({
            b + "attn_norm.weight": (c.d_model,), b + "ff_norm.weight": (c.d_model,),
            b + "q_proj.weight": (c.d_model, c.d_model), b + "k_proj.weight": (kv, c.d_model),
            b + "v_proj.weight": (kv, c.d_model), b + "attn_out.weight": (c.d_model, c.d_model),
            b + "ff_proj.weight": (c.mlp_hidden_size, c.d_model), b + "up_proj.weight": (c.mlp_hidden_size, c.d_model),
            b + "ff_out.weight": (c.d_model, c.mlp_hidden_size)})
    if not c.weight_tying:
        names[p + "ff_out.weight"] = (c.embedding_size, c.d_model)
    return names


def load_llada_state_dict(path: str, config: LLaDAConfig, *, dtype=None, device="cpu") -> dict:
    """Every tensor of the checkpoint directory `path` (all *.safetensors files), checked against
    the names and shapes of docs/llada_checkpoint.md; cast to `dtype` (default: as stored) on `device`."""
    from safetensors import safe_open

    files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    if not files:
        raise FileNotFoundError(f"load_llada_state_dict: no *.safetensors file in {path}")
    expected = llada_tensor_names(config)
    out = {}
    for fname in files:
        with safe_open(os.path.join(path, fname), framework="pt", device="cpu") as f:
            for name in f.keys():
                if name not in expected:
                    continue  # e.g. rotary buffers some exporters add
                t = f.get_tensor(name)
                if tuple(t.shape) != expected[name]:
                    raise ValueError(f"load_llada_state_dict: {name} has shape {tuple(t.shape)}, "
                                     f"config says {expected[name]}")
                out[name] = t.to(device=device, dtype=dtype or t.dtype)
    missing = sorted(set(expected) - set(out))
    if missing:
        raise ValueError(f"load_llada_state_dict: {len(missing)} tensors missing from {path}, "
                         f"e.g. {missing[:3]}")
    return out


def random_state_dict(config: LLaDAConfig, *, seed: int = 0, dtype=torch.float32, device="cpu",
                      std: float = 0.02) -> dict:
    """A random LLaDA-format state dict: matrices normal(0, std), norm weights 1 + normal(0, 0.1)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    sd = {}
    for name, shape in llada_tensor_names(config).items():
        if len(shape) == 1:
            t = 1.0 + 0.1 * torch.randn(shape, generator=gen, device=device)
        else:
            t = std * torch.randn(shape, generator=gen, device=device)
        sd[name] = t.to(dtype)
    return sd


class KVCache:
    """Per-layer key / value caches [B, Lmax, Hkv, D], one slot per position, keys after RoPE."""

    def __init__(self, n_layers: int, batch: int, length: int, n_kv_heads: int, head_dim: int,
                 dtype, device):
        shape = (batch, length, n_kv_heads, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]

    def layer(self, i: int):
        return self.k[i], self.v[i]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def _rope(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """t [N, H, D] rotated by cos/sin [N, 1, D] (float32), "rotate half" layout."""
    tf = t.float()
    half = tf.shape[-1] // 2
    rot = torch.cat((-tf[..., half:], tf[..., :half]), dim=-1)
    return (tf * cos + rot * sin).to(t.dtype)


class LLaDA(torch.nn.Module):
    """LLaDA on dllm_kernels' block attention. Weights are stored fused (q|k|v, ff_proj|up_proj).

    Calling the model on a token tensor `x` [B, L] returns the logits of every position (the
    "callable" interface, no cache); `forward_span` is what `dllm_kernels.generate` uses.
    """

    shift = False  # LLaDA predicts position p from row p

    def __init__(self, config: LLaDAConfig, state_dict: dict, *, dtype=None, device=None):
        super().__init__()
        self.config = c = config
        p = "model.transformer."
        first = state_dict[p + "wte.weight"]
        dtype = dtype or first.dtype
        device = torch.device(device) if device is not None else first.device

        def get(name):
            return state_dict[p + name].to(device=device, dtype=dtype)

        self.wte = torch.nn.Parameter(get("wte.weight"), requires_grad=False)
        self.ln_f = torch.nn.Parameter(get("ln_f.weight"), requires_grad=False)
        self.lm_head = self.wte if c.weight_tying else torch.nn.Parameter(get("ff_out.weight"), requires_grad=False)
        self.attn_norm, self.ff_norm = torch.nn.ParameterList(), torch.nn.ParameterList()
        self.w_qkv, self.w_o = torch.nn.ParameterList(), torch.nn.ParameterList()
        self.w_gate_up, self.w_down = torch.nn.ParameterList(), torch.nn.ParameterList()
        for i in range(c.n_layers):
            b = f"blocks.{i}."
            par = lambda t: torch.nn.Parameter(t, requires_grad=False)  # noqa: E731
            self.attn_norm.append(par(get(b + "attn_norm.weight")))
            self.ff_norm.append(par(get(b + "ff_norm.weight")))
            self.w_qkv.append(par(torch.cat([get(b + "q_proj.weight"), get(b + "k_proj.weight"),
                                              get(b + "v_proj.weight")])))
            self.w_o.append(par(get(b + "attn_out.weight")))
            self.w_gate_up.append(par(torch.cat([get(b + "ff_proj.weight"), get(b + "up_proj.weight")])))
            self.w_down.append(par(get(b + "ff_out.weight")))
        inv_freq = 1.0 / (c.rope_theta ** (torch.arange(0, c.head_dim, 2, dtype=torch.float32) / c.head_dim))
        self._inv_freq = inv_freq.to(device)
        self._rope_cache = None

    # ---- construction ------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path: str, *, dtype=None, device="cpu") -> "LLaDA":
        """Loads `path`/config.json and the safetensors shards of a LLaDA checkpoint directory, in
        the stored dtype unless `dtype` is given (float32, float16 or bfloat16: what
        block_attention computes in; a float64 checkpoint needs e.g. dtype=torch.float32)."""
        supported = (torch.float32, torch.float16, torch.bfloat16)
        if dtype is not None and dtype not in supported:
            raise ValueError(f"LLaDA.from_pretrained: dtype must be float32, float16 or bfloat16, got {dtype}")
        config = LLaDAConfig.from_json(os.path.join(path, "config.json"))
        state_dict = load_llada_state_dict(path, config, dtype=dtype, device=device)
        stored = state_dict["model.transformer.wte.weight"].dtype
        if stored not in supported:
            raise ValueError(f"LLaDA.from_pretrained: the checkpoint is stored as {stored}; the model computes "
                             "in float32, float16 or bfloat16: pass dtype=torch.float32 (or another) to cast it")
        return cls(config, state_dict, dtype=dtype, device=device)

    @classmethod
    def random(cls, config: LLaDAConfig, *, seed: int = 0, dtype=torch.float32, device="cpu",
               std: float = 0.02) -> "LLaDA":
        """Random weights (normal(0, std) matrices, norms near 1), generated on `device`."""
        sd = random_state_dict(config, seed=seed, dtype=dtype, device=device, std=std)
        return cls(config, sd, dtype=dtype, device=device)

    # ---- helpers -----------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.wte.device

    @property
    def dtype(self) -> torch.dtype:
        return self.wte.dtype

    @property
    def vocab_size(self) -> int:
        return self.config.embedding_size

    def new_cache(self, batch: int, length: int) -> KVCache:
        c = self.config
        return KVCache(c.n_layers, batch, length, c.n_kv_heads, c.head_dim, self.dtype, self.device)

    def _cos_sin(self, length: int):
        if self._rope_cache is None or self._rope_cache[0].shape[0] < length:
            n = max(length, 256)
            ang = torch.arange(n, dtype=torch.float32, device=self.device)[:, None] * self._inv_freq[None, :]
            emb = torch.cat((ang, ang), dim=-1)
            self._rope_cache = (emb.cos(), emb.sin())
        return self._rope_cache

    def _logits(self, h_rows: torch.Tensor) -> torch.Tensor:
        return F.linear(_rms_norm(h_rows, self.ln_f, self.config.rms_norm_eps), self.lm_head)

    def _layers(self, h, pos, to_padded, from_padded, cache, scratch, q_start, q_len, kv_len, B, q_max):
        """The transformer blocks on packed rows h [N, d] at positions pos [N]."""
        c = self.config
        hq, hkv, hd = c.n_heads, c.n_kv_heads, c.head_dim
        cos_t, sin_t = self._rope_cache
        cos, sin = cos_t[pos][:, None, :], sin_t[pos][:, None, :]
        for i in range(c.n_layers):
            n1 = _rms_norm(h, self.attn_norm[i], c.rms_norm_eps)
            qkv = F.linear(n1, self.w_qkv[i])
            q = _rope(qkv[:, :hq * hd].view(-1, hq, hd), cos, sin)
            k = _rope(qkv[:, hq * hd:(hq + hkv) * hd].view(-1, hkv, hd), cos, sin)
            v = qkv[:, (hq + hkv) * hd:].view(-1, hkv, hd)
            kc, vc = cache.layer(i) if cache is not None else scratch
            o = block_attention(to_padded(q, B, q_max), to_padded(k, B, q_max), to_padded(v, B, q_max),
                                kc, vc, q_start, q_len, kv_len, mode="dual")
            h = h + F.linear(from_padded(o).reshape(-1, hq * hd), self.w_o[i])
            n2 = _rms_norm(h, self.ff_norm[i], c.rms_norm_eps)
            gate, up = F.linear(n2, self.w_gate_up[i]).chunk(2, dim=-1)
            h = h + F.linear(F.silu(gate) * up, self.w_down[i])
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
                     row_start: List[int], n_rows: int, cache: Optional[KVCache] = None) -> torch.Tensor:
        """Logits [B, n_rows, V] of positions `row_start[b] + r` after a forward of each sequence's span.

        Host lists (the decoder knows the spans). With `cache=None` every active span must be the
        whole sequence (`q_start = 0`, `q_len = kv_len`): a scratch K/V buffer serves all layers.
        Rows outside a sequence's span hold arbitrary values (the decoder never reads them).
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
        offsets = [0] * B
        acc = 0
        for b in active:
            offsets[b] = acc
            packed_of[b, :] = acc + torch.clamp(torch.arange(L) - q_start[b], 0, q_len[b] - 1)
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
            shape = (B, L, c.n_kv_heads, c.head_dim)
            scratch = (torch.empty(shape, dtype=self.dtype, device=dev), torch.empty(shape, dtype=self.dtype, device=dev))
        idx = lambda v: torch.tensor(v, dtype=torch.int64).to(dev, non_blocking=True)  # noqa: E731
        self._cos_sin(L)
        h = F.embedding(x.reshape(-1).index_select(0, flat), self.wte)
        h = self._layers(h, pos, to_padded, from_padded, cache, scratch, idx(q_start), idx(q_len),
                         idx(kv_len), B, q_max)
        if not active:
            return torch.zeros(B, n_rows, self.vocab_size, dtype=self.dtype, device=dev)
        return self._logits(h.index_select(0, row_idx)).view(B, n_rows, -1)

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
        h = F.embedding(tokens, self.wte)
        to_padded = lambda t, B_, Q_: t.view(B_, Q_, *t.shape[1:])  # noqa: E731
        from_padded = lambda o: o.reshape(-1, *o.shape[2:])  # noqa: E731
        self._cos_sin(L)
        h = self._layers(h, pos, to_padded, from_padded, cache, None, q_start, q_len, kv_len, B, q_max)
        return self._logits(h).view(B, q_max, -1)
