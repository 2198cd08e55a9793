"""Qwen2 / Qwen3 blocks as Hugging Face checkpoints name them: the config fields, tensor names and
weight layout that Dream and the block-diffusion models (SDAR, Fast-dLLM v2) share (docs/models.md).

Qwen2 blocks (Dream, Fast-dLLM v2): RMSNorm, SwiGLU, RoPE, biases on the q/k/v projections, GQA.
Qwen3 blocks (SDAR): no q/k/v biases, an RMSNorm over each head of q and k before RoPE, and a
head dim that may differ from hidden_size / num_attention_heads.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .checkpoint import (check_config_keys, check_load_dtype, check_stored_dtype, random_tensors, read_config,
                         read_tensors, require_id)
from .span_model import SpanModel
from .tensor_parallel import TensorParallel

__all__ = ["QwenConfig", "QwenSpanModel", "ids_from", "qwen_tensor_names", "qwen_layers", "qwen_tp_slices",
           "random_qwen_state_dict"]

# config.json name -> QwenConfig field
HF_FIELDS = {"hidden_size": "d_model", "num_hidden_layers": "n_layers", "num_attention_heads": "n_heads",
             "num_key_value_heads": "n_kv_heads", "head_dim": "head_dim", "intermediate_size": "mlp_hidden_size",
             "vocab_size": "vocab_size", "rope_theta": "rope_theta", "rms_norm_eps": "rms_norm_eps",
             "tie_word_embeddings": "tie_word_embeddings", "max_position_embeddings": "max_position_embeddings"}
REQUIRED = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size",
            "rope_theta", "rms_norm_eps")
# Flags that change the computation and that these classes do not implement: default or absent.
UNIMPLEMENTED = {"hidden_act": "silu", "rope_scaling": None, "use_sliding_window": False,
                 "attention_bias": False, "mlp_bias": False, "use_mrope": False}
# Only read when a flag above is set (sliding windows), or not part of inference.
IGNORED = ("sliding_window", "max_window_layers", "rope_parameters")


@dataclass(frozen=True)
class QwenConfig:
    """The fields of a Qwen2 / Qwen3-block checkpoint the computation depends on."""

    d_model: int
    n_layers: int
    n_heads: int
    mlp_hidden_size: int
    vocab_size: int
    rope_theta: float
    rms_norm_eps: float
    mask_token_id: int
    eos_token_id: int
    n_kv_heads: Optional[int] = None
    head_dim: Optional[int] = None
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 32768
    qkv_bias: bool = True       # Qwen2 blocks
    qk_norm: bool = False       # Qwen3 blocks
    pad_token_id: Optional[int] = None
    architecture: str = ""
    block_size: Optional[int] = None  # block-diffusion models only

    def __post_init__(self):
        if self.n_kv_heads is None:
            object.__setattr__(self, "n_kv_heads", self.n_heads)
        if self.head_dim is None:
            if self.d_model % self.n_heads:
                raise ValueError(f"QwenConfig: hidden_size {self.d_model} is not a multiple of "
                                 f"num_attention_heads {self.n_heads} (and no head_dim given)")
            object.__setattr__(self, "head_dim", self.d_model // self.n_heads)
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"QwenConfig: num_attention_heads {self.n_heads} is not a multiple of "
                             f"num_key_value_heads {self.n_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"QwenConfig: head_dim {self.head_dim} must be even (RoPE)")
        if self.block_size is not None and self.block_size < 1:
            raise ValueError(f"QwenConfig: block size must be >= 1, got {self.block_size}")

    @classmethod
    def from_hf(cls, cfg: dict, *, who: str, extra_honoured=(), unimplemented=None, **fixed) -> "QwenConfig":
        """Strict parse of a Hugging Face config dict; `fixed` sets architecture-given fields."""
        check_config_keys(cfg, who=who, honoured=list(HF_FIELDS) + ["mask_token_id", "eos_token_id",
                                                                     "layer_types", *extra_honoured],
                          ignored=IGNORED, unimplemented={**UNIMPLEMENTED, **(unimplemented or {})})
        for key in REQUIRED:
            if cfg.get(key) is None:
                raise ValueError(f"{who}: config.json has no {key}")
        layer_types = cfg.get("layer_types")
        if layer_types is not None and any(t != "full_attention" for t in layer_types):
            raise ValueError(f"{who}: config field layer_types={sorted(set(layer_types))} is not implemented "
                             "(only full_attention layers are)")
        kw = {ours: cfg[hf] for hf, ours in HF_FIELDS.items() if cfg.get(hf) is not None}
        pad = cfg.get("pad_token_id")
        return cls(**kw, pad_token_id=pad if isinstance(pad, int) else None, **fixed)

    @property
    def q_width(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_width(self) -> int:
        return self.n_kv_heads * self.head_dim

    def to_hf(self) -> dict:
        """The config.json fields (HF names) of this config, for writing checkpoints."""
        d = {hf: getattr(self, ours) for hf, ours in HF_FIELDS.items()}
        d.update(mask_token_id=self.mask_token_id, eos_token_id=self.eos_token_id, hidden_act="silu",
                 architectures=[self.architecture] if self.architecture else None)
        if self.pad_token_id is not None:
            d["pad_token_id"] = self.pad_token_id
        return {k: v for k, v in d.items() if v is not None}


def ids_from(cfg: dict, who: str, mask_token_id=None, eos_token_id=None) -> dict:
    """mask / eos ids from the config (or the caller), never defaulted."""
    return dict(mask_token_id=require_id(cfg, "mask_token_id", who, mask_token_id),
                eos_token_id=require_id(cfg, "eos_token_id", who, eos_token_id))


def qwen_tensor_names(c: QwenConfig) -> dict:
    """name -> shape of every tensor of a Hugging Face Qwen2 / Qwen3 checkpoint."""
    d, hd = c.d_model, c.head_dim
    names = {"model.embed_tokens.weight": (c.vocab_size, d), "model.norm.weight": (d,)}
    for i in range(c.n_layers):
        b = f"model.layers.{i}."
        names.update({
            b + "input_layernorm.weight": (d,), b + "post_attention_layernorm.weight": (d,),
            b + "self_attn.q_proj.weight": (c.q_width, d), b + "self_attn.k_proj.weight": (c.kv_width, d),
            b + "self_attn.v_proj.weight": (c.kv_width, d), b + "self_attn.o_proj.weight": (d, c.q_width),
            b + "mlp.gate_proj.weight": (c.mlp_hidden_size, d), b + "mlp.up_proj.weight": (c.mlp_hidden_size, d),
            b + "mlp.down_proj.weight": (d, c.mlp_hidden_size)})
        if c.qkv_bias:
            names.update({b + "self_attn.q_proj.bias": (c.q_width,), b + "self_attn.k_proj.bias": (c.kv_width,),
                          b + "self_attn.v_proj.bias": (c.kv_width,)})
        if c.qk_norm:
            names.update({b + "self_attn.q_norm.weight": (hd,), b + "self_attn.k_norm.weight": (hd,)})
    if not c.tie_word_embeddings:
        names["lm_head.weight"] = (c.vocab_size, d)
    return names


def qwen_tp_slices(c: QwenConfig, tp: TensorParallel) -> dict:
    """name -> (dim, start, stop): the slice of each tensor rank `tp.rank` holds. The q/k/v biases
    go with their heads; norms (the q/k norms too: one weight per head_dim, shared by all heads)
    are whole; tied embeddings: the LM head's shard is the embedding's."""
    dims = dict(n_heads=c.n_heads, n_kv_heads=c.n_kv_heads, head_dim=c.head_dim, hidden=c.mlp_hidden_size,
                vocab=c.vocab_size)
    names = {"wte": "model.embed_tokens.weight"}
    if not c.tie_word_embeddings:
        names["lm_head"] = "lm_head.weight"
    out = tp.slices(**dims, names=names)
    for i in range(c.n_layers):
        a, m = f"model.layers.{i}.self_attn.", f"model.layers.{i}.mlp."
        layer = dict(q=a + "q_proj", k=a + "k_proj", v=a + "v_proj", o=a + "o_proj", gate=m + "gate_proj",
                     up=m + "up_proj", down=m + "down_proj")
        out.update(tp.slices(**dims, names={role: n + ".weight" for role, n in layer.items()}))
        if c.qkv_bias:
            out.update(tp.slices(**dims, names={role: layer[role] + ".bias" for role in ("q", "k", "v")}))
    return out


def qwen_layers(c: QwenConfig, sd: dict, get) -> list:
    """Per-layer weights in SpanModel's fused layout; `get(name)` casts a state-dict tensor."""
    layers = []
    for i in range(c.n_layers):
        b = f"model.layers.{i}."
        a = b + "self_attn."
        layer = dict(
            attn_norm=get(b + "input_layernorm.weight"), ff_norm=get(b + "post_attention_layernorm.weight"),
            w_qkv=torch.cat([get(a + "q_proj.weight"), get(a + "k_proj.weight"), get(a + "v_proj.weight")]),
            w_o=get(a + "o_proj.weight"),
            w_gate_up=torch.cat([get(b + "mlp.gate_proj.weight"), get(b + "mlp.up_proj.weight")]),
            w_down=get(b + "mlp.down_proj.weight"))
        if c.qkv_bias:
            layer["b_qkv"] = torch.cat([get(a + "q_proj.bias"), get(a + "k_proj.bias"), get(a + "v_proj.bias")])
        if c.qk_norm:
            layer["q_norm"], layer["k_norm"] = get(a + "q_norm.weight"), get(a + "k_norm.weight")
        layers.append(layer)
    return layers


def random_qwen_state_dict(c: QwenConfig, *, seed: int = 0, dtype=torch.float32, device="cpu",
                           std: float = 0.02) -> dict:
    """Random weights under the HF names: matrices and biases normal(0, std), norms 1 + normal(0, 0.1)."""
    return random_tensors(qwen_tensor_names(c), lambda name, shape: name.endswith("norm.weight"), seed=seed,
                          dtype=dtype, device=device, std=std)

class QwenSpanModel(SpanModel):
    """A SpanModel with Qwen2 / Qwen3 weights under Hugging Face names (subclasses: Dream,
    BlockDiffusion). Weights are stored fused (q|k|v with their biases, gate|up)."""

    def __init__(self, config: QwenConfig, state_dict: dict, *, dtype=None, device=None,
                 tp: Optional[TensorParallel] = None):
        """`state_dict`: the checkpoint's tensors, or with `tp` this rank's slices of them."""
        super().__init__()
        self.config = c = config
        self._init_tp(tp, c.vocab_size)
        first = state_dict["model.embed_tokens.weight"]
        dtype = dtype or first.dtype
        device = torch.device(device) if device is not None else first.device

        def get(name):
            return state_dict[name].to(device=device, dtype=dtype)

        self.wte = torch.nn.Parameter(get("model.embed_tokens.weight"), requires_grad=False)
        self.ln_f = torch.nn.Parameter(get("model.norm.weight"), requires_grad=False)
        self.lm_head = self.wte if c.tie_word_embeddings else \
            torch.nn.Parameter(get("lm_head.weight"), requires_grad=False)
        self._init_layers(qwen_layers(c, state_dict, get), theta=c.rope_theta, device=device)

    @classmethod
    def config_from_dict(cls, cfg: dict, **overrides) -> QwenConfig:  # pragma: no cover - per class
        raise NotImplementedError

    @classmethod
    def from_pretrained(cls, path: str, *, dtype=None, device="cpu", tp_group=None, **overrides):
        """Loads `path`/config.json and its safetensors (one file, shards, or shards with an
        index), strictly: see docs/models.md; in the stored dtype unless `dtype` is given.
        `overrides` (e.g. mask_token_id=) fill ids the config lacks. `tp_group`: a
        torch.distributed ProcessGroup (or torch.distributed.group.WORLD) to run tensor-parallel
        over: this rank reads only its slices (docs/vocab_parallel.md); the attention heads and the
        KV heads must divide by the group's size."""
        who = cls.__name__
        check_load_dtype(dtype, who)
        config = cls.config_from_dict(read_config(path, who), **overrides)
        tp = TensorParallel(tp_group, who=f"{who}.from_pretrained") if tp_group is not None else None
        slices = qwen_tp_slices(config, tp) if tp is not None else None
        sd = read_tensors(path, qwen_tensor_names(config), who, dtype=dtype, device=device, slices=slices)
        check_stored_dtype(sd, who)
        return cls(config, sd, dtype=dtype, device=device, tp=tp)

    @classmethod
    def random(cls, config: QwenConfig, *, seed: int = 0, dtype=torch.float32, device="cpu", std: float = 0.02):
        """Random weights (normal(0, std) matrices and biases, norms near 1), generated on `device`."""
        return cls(config, random_qwen_state_dict(config, seed=seed, dtype=dtype, device=device, std=std),
                   dtype=dtype, device=device)
