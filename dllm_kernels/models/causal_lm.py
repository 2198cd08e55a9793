"""A tiny decoder-only (causal) transformer with a KV cache: the draft and target models of
speculative decoding (dllm_kernels.speculative).

`CausalLM(config)` is an ordinary trainable module: `forward(tokens)` gives next-token logits of every
position with causal attention. For decoding, `new_cache(batch, max_len)` allocates the KV cache and
`step(tokens, positions, cache)` runs new tokens only: token `tokens[b, i]` sits at sequence position
`positions[b, i]`, its keys and values are written into slot `positions[b, i]` of sequence b's cache,
and it attends to slots `0..positions[b, i]`. Rolling a sequence back is therefore free: the caller
just feeds its next token at an earlier position (slots after it are overwritten before anything
reads them). Architecture: learned position embeddings, pre-RMSNorm, multi-head attention, SwiGLU
MLP, no biases, untied output projection.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import List

import torch
import torch.nn.functional as F


@dataclass
class CausalLMConfig:
    vocab_size: int
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    mlp_hidden: int = 352
    max_len: int = 512
    eps: float = 1e-5

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


class KVCache:
    """Per-layer key and value slots [B, H, max_len, D] of one model for a batch."""

    def __init__(self, config: CausalLMConfig, batch: int, max_len: int, device=None, dtype=torch.float32):
        if max_len > config.max_len:
            raise ValueError(f"KVCache: max_len {max_len} exceeds the model's {config.max_len} positions")
        shape = (batch, config.n_heads, max_len, config.head_dim)
        self.k: List[torch.Tensor] = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layers)]
        self.v: List[torch.Tensor] = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layers)]
        self.batch, self.max_len = batch, max_len


class _Block(torch.nn.Module):
    def __init__(self, c: CausalLMConfig):
        super().__init__()
        lin = lambda i, o: torch.nn.Linear(i, o, bias=False)  # noqa: E731
        self.norm1 = torch.nn.RMSNorm(c.d_model, eps=c.eps)
        self.norm2 = torch.nn.RMSNorm(c.d_model, eps=c.eps)
        self.qkv = lin(c.d_model, 3 * c.d_model)
        self.proj = lin(c.d_model, c.d_model)
        self.gate, self.up, self.down = lin(c.d_model, c.mlp_hidden), lin(c.d_model, c.mlp_hidden), \
            lin(c.mlp_hidden, c.d_model)

    def mlp(self, h):
        n = self.norm2(h)
        return self.down(F.silu(self.gate(n)) * self.up(n))


class CausalLM(torch.nn.Module):
    def __init__(self, config: CausalLMConfig):
        super().__init__()
        self.config = c = config
        self.wte = torch.nn.Embedding(c.vocab_size, c.d_model)
        self.wpe = torch.nn.Embedding(c.max_len, c.d_model)
        self.blocks = torch.nn.ModuleList(_Block(c) for _ in range(c.n_layers))
        self.norm = torch.nn.RMSNorm(c.d_model, eps=c.eps)
        self.head = torch.nn.Linear(c.d_model, c.vocab_size, bias=False)
        for name, p in self.named_parameters():
            if p.dim() > 1:
                scale = (2 * c.n_layers) ** -0.5 if name.endswith(("proj.weight", "down.weight")) else 1.0
                torch.nn.init.normal_(p, std=0.02 * scale)

    def _heads(self, t, B, n):
        c = self.config
        return t.view(B, n, c.n_heads, c.head_dim).transpose(1, 2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits [B, L, V] of the next token after every position (training; no cache)."""
        B, L = tokens.shape
        h = self.wte(tokens) + self.wpe(torch.arange(L, device=tokens.device))[None]
        for blk in self.blocks:
            q, k, v = blk.qkv(blk.norm1(h)).split(self.config.d_model, dim=-1)
            o = F.scaled_dot_product_attention(self._heads(q, B, L), self._heads(k, B, L), self._heads(v, B, L),
                                               is_causal=True)
            h = h + blk.proj(o.transpose(1, 2).reshape(B, L, -1))
            h = h + blk.mlp(h)
        return self.head(self.norm(h))

    def new_cache(self, batch: int, max_len: int, device=None) -> KVCache:
        return KVCache(self.config, batch, max_len, device=device or self.head.weight.device,
                       dtype=self.head.weight.dtype)

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Logits [B, n, V] for new tokens [B, n] at `positions` [B, n] (int64), through `cache`."""
        B, n = tokens.shape
        reach = int(positions.max()) + 1  # slots any query may read
        if reach > cache.max_len:
            raise ValueError(f"CausalLM.step: position {reach - 1} is past the cache's {cache.max_len} slots")
        h = self.wte(tokens) + self.wpe(positions)
        rows = torch.arange(B, device=tokens.device)[:, None].expand(B, n)
        visible = torch.arange(reach, device=tokens.device)[None, None, :] <= positions[:, :, None]  # [B, n, S]
        for layer, blk in enumerate(self.blocks):
            q, k, v = blk.qkv(blk.norm1(h)).split(self.config.d_model, dim=-1)
            kc, vc = cache.k[layer], cache.v[layer]
            kc[rows, :, positions] = k.view(B, n, self.config.n_heads, -1)
            vc[rows, :, positions] = v.view(B, n, self.config.n_heads, -1)
            o = F.scaled_dot_product_attention(self._heads(q, B, n), kc[:, :, :reach], vc[:, :, :reach],
                                               attn_mask=visible[:, None])
            h = h + blk.proj(o.transpose(1, 2).reshape(B, n, -1))
            h = h + blk.mlp(h)
        return self.head(self.norm(h))

    def save(self, path: str, dtype=torch.float16, extra: dict | None = None) -> None:
        from safetensors.torch import save_file

        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "config.json"), "w") as f:
            json.dump({**asdict(self.config), **(extra or {})}, f, indent=2, sort_keys=True)
            f.write("\n")
        save_file({k: t.detach().to(dtype).contiguous() for k, t in self.state_dict().items()},
                  os.path.join(path, "model.safetensors"))

    @classmethod
    def load(cls, path: str, dtype=torch.float32) -> "CausalLM":
        from safetensors.torch import load_file

        with open(os.path.join(path, "config.json")) as f:
            raw = json.load(f)
        fields = CausalLMConfig.__dataclass_fields__
        model = cls(CausalLMConfig(**{k: v for k, v in raw.items() if k in fields}))
        model.load_state_dict({k: t.to(dtype) for k, t in load_file(os.path.join(path, "model.safetensors")).items()})
        return model.to(dtype).eval()
