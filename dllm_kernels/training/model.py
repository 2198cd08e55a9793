"""A trainable LLaDA-architecture model and its LLaDA-format checkpoint writer.

`TinyLLaDA` runs the decoding models' own blocks (`models.span_model.transformer_block`: RMSNorm in
float32, RoPE "rotate half", SwiGLU, no biases) with attention by SDPA, so autograd trains it; its
parameters are one per checkpoint tensor under the public names, and `save_llada_checkpoint` writes
config.json + a safetensors file that `dllm_kernels.models.LLaDA.from_pretrained` loads for decoding.
A key-padding length per sequence lets batches of different lengths train together (the decoder's
layout: each sequence from position 0).
"""
from __future__ import annotations

import json
import os
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ..models.llada import LLaDAConfig, llada_tensor_names
from ..models.span_model import LayerWeights, inverse_frequencies, rms_norm, rope_tables, transformer_block

P = "model.transformer."


class RMSNorm(torch.nn.Module):
    def __init__(self, d: int, eps: float):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        return rms_norm(x, self.weight, self.eps)


class Block(torch.nn.Module):
    """One block's parameters, named as the checkpoint's tensors."""

    def __init__(self, c: LLaDAConfig):
        super().__init__()
        kv = c.n_kv_heads * c.head_dim
        lin = lambda i, o: torch.nn.Linear(i, o, bias=False)  # noqa: E731
        self.attn_norm, self.ff_norm = RMSNorm(c.d_model, c.rms_norm_eps), RMSNorm(c.d_model, c.rms_norm_eps)
        self.q_proj, self.k_proj, self.v_proj = lin(c.d_model, c.d_model), lin(c.d_model, kv), lin(c.d_model, kv)
        self.attn_out = lin(c.d_model, c.d_model)
        self.ff_proj, self.up_proj = lin(c.d_model, c.mlp_hidden_size), lin(c.d_model, c.mlp_hidden_size)
        self.ff_out = lin(c.mlp_hidden_size, c.d_model)
        self.c = c

    def weights(self) -> LayerWeights:
        return LayerWeights(self.attn_norm.weight, (self.q_proj.weight, self.k_proj.weight, self.v_proj.weight),
                            self.attn_out.weight, self.ff_norm.weight, (self.ff_proj.weight, self.up_proj.weight),
                            self.ff_out.weight)


def _sdpa(mask, n_heads: int):
    """Attention of q, k, v [B, L, H, D] over the keys `mask` [B, 1, 1, L] allows (None: all)."""
    def attend(q, k, v):
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if k.shape[1] != n_heads:
            k = k.repeat_interleave(n_heads // k.shape[1], dim=1)
            v = v.repeat_interleave(n_heads // v.shape[1], dim=1)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2)
    return attend


class TinyLLaDA(torch.nn.Module):
    """LLaDA architecture, trainable. `forward(x, lengths)` -> logits [B, L, embedding_size]."""

    def __init__(self, config: LLaDAConfig):
        super().__init__()
        self.config = c = config
        self.wte = torch.nn.Embedding(c.embedding_size, c.d_model)
        self.blocks = torch.nn.ModuleList(Block(c) for _ in range(c.n_layers))
        self.ln_f = RMSNorm(c.d_model, c.rms_norm_eps)
        self.ff_out = None if c.weight_tying else torch.nn.Linear(c.d_model, c.embedding_size, bias=False)
        self.register_buffer("inv_freq", inverse_frequencies(c.head_dim, c.rope_theta), persistent=False)
        self.reset_parameters()

    def reset_parameters(self, std: float = 0.02):
        for name, p in self.named_parameters():
            if p.dim() == 1:
                torch.nn.init.ones_(p)
            else:
                # GPT-2 style: residual output projections scaled down with depth
                scale = (2 * self.config.n_layers) ** -0.5 if name.endswith(("attn_out.weight", "ff_out.weight")) \
                    and "blocks" in name else 1.0
                torch.nn.init.normal_(p, std=std * scale)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, x: torch.Tensor, lengths: Optional[Sequence[int]] = None) -> torch.Tensor:
        c = self.config
        B, L = x.shape
        cos, sin = rope_tables(self.inv_freq, L)
        cos, sin = cos[None, :, None, :], sin[None, :, None, :]
        mask = None
        if lengths is not None:
            lens = torch.as_tensor(lengths, device=x.device)
            mask = (torch.arange(L, device=x.device)[None, :] < lens[:, None])[:, None, None, :]
        attend = _sdpa(mask, c.n_heads)
        h = self.wte(x)
        for blk in self.blocks:
            h = transformer_block(h, blk.weights(), c, cos, sin, attend)
        out = self.ln_f(h)
        return F.linear(out, self.wte.weight if self.ff_out is None else self.ff_out.weight)

    def llada_state_dict(self, dtype=torch.float16) -> dict:
        """The weights under LLaDA-format names (docs/llada_checkpoint.md), cast to `dtype`."""
        sd = {}
        for name, t in self.state_dict().items():
            if name == "wte.weight":
                key = P + "wte.weight"
            elif name == "ff_out.weight":
                key = P + "ff_out.weight"
            else:
                key = P + name
            sd[key] = t.detach().to(dtype).contiguous()
        expected = llada_tensor_names(self.config)
        if set(sd) != set(expected):
            raise RuntimeError(f"llada_state_dict: names differ from the format: {sorted(set(sd) ^ set(expected))[:4]}")
        return sd

    def load_llada_state_dict(self, sd: dict) -> None:
        mine = {}
        for key, t in sd.items():
            mine[key[len(P):]] = t.float()
        self.load_state_dict(mine)


def save_llada_checkpoint(model: TinyLLaDA, path: str, *, dtype=torch.float16, extra_config: Optional[dict] = None):
    """config.json + model.safetensors (LLaDA names, `dtype`) in directory `path`."""
    from safetensors.torch import save_file

    os.makedirs(path, exist_ok=True)
    cfg = model.config.to_dict()
    cfg["architectures"] = ["LLaDAModelLM"]
    cfg["torch_dtype"] = str(dtype).replace("torch.", "")
    if extra_config:
        cfg.update(extra_config)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")
    save_file(model.llada_state_dict(dtype), os.path.join(path, "model.safetensors"))


def load_trainable(path: str) -> TinyLLaDA:
    """A TinyLLaDA (float32) from a LLaDA-format checkpoint directory."""
    from ..models.llada import load_llada_state_dict

    cfg = LLaDAConfig.from_json(os.path.join(path, "config.json"))
    m = TinyLLaDA(cfg)
    m.load_llada_state_dict(load_llada_state_dict(path, cfg, dtype=torch.float32))
    return m
