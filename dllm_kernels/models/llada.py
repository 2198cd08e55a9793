"""The LLaDA architecture: config, strict checkpoint loading, model (docs/models.md).

`LLaDA` holds the weights of a LLaDA-format checkpoint (RMSNorm, RoPE, SwiGLU, bidirectional
attention, MHA or GQA, no biases); its forward over query spans, with prefix / dual KV cache, is
`SpanModel`'s (span_model.py). The loader refuses what it does not implement: the public LLaDA
model code has flags (q/k/v biases, logit scaling, an embedding norm, q/k norms, ...) that change
the logits, and a loader that ignored them would load such a checkpoint and compute wrong logits.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import torch

from .checkpoint import (check_architecture, check_config_keys, check_load_dtype, check_stored_dtype, random_tensors,
                         read_config, read_tensors, require_id)
from .span_model import KVCache, SpanModel
from .tensor_parallel import TensorParallel

__all__ = ["LLaDAConfig", "LLaDA", "KVCache", "load_llada_state_dict", "llada_tensor_names", "llada_tp_slices",
           "random_state_dict"]

WHO = "LLaDA"
ARCHITECTURES = ("LLaDAModelLM",)
_SUPPORTED = {"block_type": "llama", "activation_type": "silu", "layer_norm_type": "rms"}
# Flags of the public LLaDA (OLMo-derived) config that change the computation and that this class
# does not implement: each must hold the default given here (or be absent).
UNIMPLEMENTED = {
    **_SUPPORTED, "rope": True, "include_bias": False, "include_qkv_bias": False, "scale_logits": False,
    "input_emb_norm": False, "attention_layer_norm": False, "alibi": False, "clip_qkv": None,
    "multi_query_attention": None, "bias_for_layer_norm": None, "layer_norm_with_affine": True,
    "block_group_size": 1, "rope_full_precision": True,
}
# Fields that do not change inference (dropouts, initialisation, kernels) or only matter with a
# flag above set.
IGNORED = ("alibi_bias_max", "attention_layer_norm_with_affine", "flash_attention", "attention_dropout",
           "residual_dropout", "embedding_dropout", "init_device", "init_fn", "init_std", "init_cutoff_factor",
           "precision", "mlp_ratio")


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
        """Strict: refuses unimplemented flags, unknown fields and architectures, and a config
        without mask / eos id (docs/models.md lists what is honoured)."""
        names = cls.__dataclass_fields__.keys()
        check_config_keys(cfg, who="LLaDAConfig", honoured=names, ignored=IGNORED, unimplemented=UNIMPLEMENTED)
        # The repository's own training script writes no architectures field: absent is allowed.
        check_architecture(cfg, ARCHITECTURES, "LLaDAConfig", required=False)
        kw = {k: cfg[k] for k in names if k in cfg and cfg[k] is not None}
        for key in ("mask_token_id", "eos_token_id"):
            kw[key] = require_id(cfg, key, "LLaDAConfig")
        if "mlp_hidden_size" not in kw and "mlp_ratio" in cfg:
            kw["mlp_hidden_size"] = int(cfg["mlp_ratio"]) * int(cfg["d_model"])
        return cls(**kw)

    @classmethod
    def from_json(cls, path: str) -> "LLaDAConfig":
        return cls.from_dict(_read_json(path))

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(_SUPPORTED, rope=True, include_bias=False)
        return d


def _read_json(path: str) -> dict:
    import json

    with open(path) as f:
        return json.load(f)


def llada_tensor_names(config: LLaDAConfig) -> dict:
    """name -> shape of every tensor of a checkpoint (docs/models.md, "LLaDA")."""
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


def llada_tp_slices(config: LLaDAConfig, tp: TensorParallel) -> dict:
    """name -> (dim, start, stop): the slice of each tensor rank `tp.rank` holds (heads, hidden
    units and vocabulary shard; norms are whole)."""
    c, p = config, "model.transformer."
    names = {"wte": p + "wte.weight"}
    if not c.weight_tying:
        names["lm_head"] = p + "ff_out.weight"
    out = {}
    for i in range(c.n_layers):
        b = f"{p}blocks.{i}."
        layer = dict(q="q_proj", k="k_proj", v="v_proj", o="attn_out", gate="ff_proj", up="up_proj", down="ff_out")
        out.update(tp.slices(n_heads=c.n_heads, n_kv_heads=c.n_kv_heads, head_dim=c.head_dim, hidden=c.mlp_hidden_size,
                             vocab=c.embedding_size, names={role: b + n + ".weight" for role, n in layer.items()}))
    out.update(tp.slices(n_heads=c.n_heads, n_kv_heads=c.n_kv_heads, head_dim=c.head_dim, hidden=c.mlp_hidden_size,
                         vocab=c.embedding_size, names=names))
    return out


def load_llada_state_dict(path: str, config: LLaDAConfig, *, dtype=None, device="cpu",
                          tp: Optional[TensorParallel] = None) -> dict:
    """Every tensor of the checkpoint directory `path` (its safetensors shards), which must be
    exactly the names and shapes `llada_tensor_names` gives (a stray tensor is an error: dropping it
    would hide an unimplemented feature); cast to `dtype` (default: as stored) on `device`. With
    `tp`, only this rank's slices are read (llada_tp_slices)."""
    slices = llada_tp_slices(config, tp) if tp is not None else None
    return read_tensors(path, llada_tensor_names(config), "load_llada_state_dict", dtype=dtype, device=device,
                        slices=slices)


def random_state_dict(config: LLaDAConfig, *, seed: int = 0, dtype=torch.float32, device="cpu",
                      std: float = 0.02) -> dict:
    """A random LLaDA-format state dict: matrices normal(0, std), norm weights 1 + normal(0, 0.1)."""
    return random_tensors(llada_tensor_names(config), lambda name, shape: len(shape) == 1, seed=seed, dtype=dtype,
                          device=device, std=std)

class LLaDA(SpanModel):
    """LLaDA on dllm_kernels' block attention. Weights are stored fused (q|k|v, ff_proj|up_proj).

    Calling the model on a token tensor `x` [B, L] returns the logits of every position (the
    "callable" interface, no cache); `forward_span` is what `dllm_kernels.generate` uses.
    """

    shift = False  # LLaDA predicts position p from row p

    def __init__(self, config: LLaDAConfig, state_dict: dict, *, dtype=None, device=None,
                 tp: Optional[TensorParallel] = None):
        """`state_dict`: the checkpoint's tensors, or with `tp` this rank's slices of them."""
        super().__init__()
        self.config = c = config
        self._init_tp(tp, c.embedding_size)
        p = "model.transformer."
        first = state_dict[p + "wte.weight"]
        dtype = dtype or first.dtype
        device = torch.device(device) if device is not None else first.device

        def get(name):
            return state_dict[p + name].to(device=device, dtype=dtype)

        self.wte = torch.nn.Parameter(get("wte.weight"), requires_grad=False)
        self.ln_f = torch.nn.Parameter(get("ln_f.weight"), requires_grad=False)
        self.lm_head = self.wte if c.weight_tying else torch.nn.Parameter(get("ff_out.weight"), requires_grad=False)
        layers = []
        for i in range(c.n_layers):
            b = f"blocks.{i}."
            layers.append(dict(
                attn_norm=get(b + "attn_norm.weight"), ff_norm=get(b + "ff_norm.weight"),
                w_qkv=torch.cat([get(b + "q_proj.weight"), get(b + "k_proj.weight"), get(b + "v_proj.weight")]),
                w_o=get(b + "attn_out.weight"),
                w_gate_up=torch.cat([get(b + "ff_proj.weight"), get(b + "up_proj.weight")]),
                w_down=get(b + "ff_out.weight")))
        self._init_layers(layers, theta=c.rope_theta, device=device)

    @classmethod
    def from_pretrained(cls, path: str, *, dtype=None, device="cpu", tp_group=None) -> "LLaDA":
        """Loads `path`/config.json and the safetensors shards of a LLaDA checkpoint directory, in
        the stored dtype unless `dtype` is given (float32, float16 or bfloat16: what
        block_attention computes in; a float64 checkpoint needs e.g. dtype=torch.float32).
        `tp_group`: a torch.distributed ProcessGroup (or torch.distributed.group.WORLD) to run
        tensor-parallel over: this rank reads only its slices (docs/vocab_parallel.md); the heads
        and KV heads must divide by the group's size."""
        check_load_dtype(dtype, WHO)
        config = LLaDAConfig.from_dict(read_config(path, WHO))
        tp = TensorParallel(tp_group, who=f"{WHO}.from_pretrained") if tp_group is not None else None
        state_dict = load_llada_state_dict(path, config, dtype=dtype, device=device, tp=tp)
        check_stored_dtype(state_dict, WHO)
        return cls(config, state_dict, dtype=dtype, device=device, tp=tp)

    @classmethod
    def random(cls, config: LLaDAConfig, *, seed: int = 0, dtype=torch.float32, device="cpu",
               std: float = 0.02) -> "LLaDA":
        """Random weights (normal(0, std) matrices, norms near 1), generated on `device`."""
        sd = random_state_dict(config, seed=seed, dtype=dtype, device=device, std=std)
        return cls(config, sd, dtype=dtype, device=device)
