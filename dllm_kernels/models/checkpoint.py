"""Strict checkpoint reading shared by the model classes (docs/models.md).

A loader that silently drops a tensor or ignores a config flag gives wrong logits without a word,
so every loader here refuses instead: config flags it does not implement set to anything but
their default, keys it does not know, unknown architectures, missing mask / eos ids, and tensors
that are missing, stray or of the wrong shape. Every error names the field or tensor.
"""
from __future__ import annotations

import json
import os
import re

import torch
from typing import Dict, Iterable, Optional, Tuple

__all__ = ["MISSING", "check_architecture", "check_config_keys", "read_config", "read_tensors", "require_id"]

MISSING = object()  # "the key is absent" in flag tables

# Keys of a Hugging Face config.json that never enter the computation (bookkeeping, training or
# generation settings); `dllm_task` is written by dllm_kernels.training.
METADATA_KEYS = frozenset({
    "_name_or_path", "architectures", "auto_map", "model_type", "torch_dtype", "dtype",
    "transformers_version", "use_cache", "bos_token_id", "pad_token_id", "initializer_range",
    "attention_dropout", "tokenizer_class", "return_dict", "output_hidden_states", "output_attentions",
    "torchscript", "is_encoder_decoder", "is_decoder", "id2label", "label2id", "task_specific_params",
    "max_length", "min_length", "do_sample", "num_beams", "temperature", "top_k", "top_p",
    "repetition_penalty", "dllm_task",
})


def read_config(path: str, who: str) -> dict:
    """config.json of checkpoint directory `path` as a dict."""
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"{who}: no config.json in {path}")
    with open(cfg_path) as f:
        cfg = json.load(f)
    if not isinstance(cfg, dict):
        raise ValueError(f"{who}: config.json must hold an object, got {type(cfg).__name__}")
    return cfg


def _same(got, want) -> bool:
    got = getattr(got, "value", got)
    if isinstance(want, str) and isinstance(got, str):
        return got.lower() == want.lower()
    if isinstance(want, bool) or want is None:
        return got is want or (want is None and got is False) or (want is False and got is None)
    return got == want


def check_config_keys(cfg: dict, *, who: str, honoured: Iterable[str], ignored: Iterable[str] = (),
                      unimplemented: Optional[Dict[str, object]] = None) -> None:
    """Refuse `cfg` unless every key is honoured, ignored (does not change inference) or metadata,
    and every unimplemented flag holds its default (`unimplemented[key]`; the key may be absent)."""
    unimplemented = unimplemented or {}
    for key, default in unimplemented.items():
        if key in cfg and not _same(cfg[key], default):
            raise ValueError(f"{who}: config field {key}={cfg[key]!r} is not implemented (only {default!r} is); "
                             "loading it would give wrong logits")
    known = set(honoured) | set(ignored) | set(unimplemented) | METADATA_KEYS
    unknown = sorted(k for k in cfg if k not in known)
    if unknown:
        raise ValueError(f"{who}: unknown config field(s) {unknown}: not implemented, refusing to guess "
                         "(docs/models.md lists the fields each class honours)")


def check_architecture(cfg: dict, allowed: Iterable[str], who: str, *, required: bool = True) -> Optional[str]:
    """The single entry of `architectures`, which must be one of `allowed`."""
    allowed = list(allowed)
    arch = cfg.get("architectures", MISSING)
    if arch is MISSING or arch is None:
        if required:
            raise ValueError(f"{who}: config.json has no architectures field (expected one of {allowed})")
        return None
    if not (isinstance(arch, list) and len(arch) == 1 and arch[0] in allowed):
        raise ValueError(f"{who}: unknown architectures {arch!r}: expected one of {allowed}")
    return arch[0]


def require_id(cfg: dict, key: str, who: str, override: Optional[int] = None) -> int:
    """A token id from the config (or the caller's override); a missing one is an error, never a guess."""
    value = cfg.get(key) if override is None else override
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{who}: config.json has no usable {key} (got {value!r}); pass {key}= explicitly")
    return value


def _shard_files(path: str, who: str):
    index = [f for f in os.listdir(path) if f.endswith(".safetensors.index.json")]
    if len(index) > 1:
        raise ValueError(f"{who}: several safetensors index files in {path}: {sorted(index)}")
    if index:
        with open(os.path.join(path, index[0])) as f:
            weight_map = json.load(f).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{who}: {index[0]} has no weight_map")
        files = sorted(set(weight_map.values()))
        for fname in files:
            if not os.path.isfile(os.path.join(path, fname)):
                raise FileNotFoundError(f"{who}: shard {fname} listed in {index[0]} is missing from {path}")
        return files, weight_map
    # Hugging Face names: model.safetensors or model-0000i-of-0000n.safetensors; other safetensors
    # files (e.g. a decoding filter saved beside the model) are not the model's.
    files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    named = [f for f in files if f == "model.safetensors" or re.fullmatch(r"model-\d+-of-\d+\.safetensors", f)]
    files = named or files
    if not files:
        raise FileNotFoundError(f"{who}: no *.safetensors file in {path}")
    return files, None


def read_tensors(path: str, expected: Dict[str, Tuple[int, ...]], who: str, *, dtype=None,
                 device="cpu", slices: Optional[Dict[str, Tuple[int, int, int]]] = None) -> dict:
    """Every tensor of the safetensors shards in `path` (the index's shards when there is an index,
    else model.safetensors / model-*-of-*.safetensors, else every *.safetensors file),
    which must be exactly the names of `expected` with exactly its shapes; cast to `dtype`.
    `slices`: name -> (dim, start, stop): only that slice of the tensor is read (a tensor-parallel
    rank's part; dim 0 or 1); its full shape is checked all the same."""
    from safetensors import safe_open

    if not os.path.isdir(path):
        raise FileNotFoundError(f"{who}: {path} is not a checkpoint directory")
    files, weight_map = _shard_files(path, who)
    out = {}
    for fname in files:
        with safe_open(os.path.join(path, fname), framework="pt", device="cpu") as f:
            for name in f.keys():
                if name not in expected:
                    raise ValueError(f"{who}: unexpected tensor {name} in {fname}: the model does not use it, "
                                     "so it would be silently dropped (a config flag this class does not "
                                     "implement?)")
                if name in out:
                    raise ValueError(f"{who}: tensor {name} appears in two shards")
                if weight_map is not None and weight_map.get(name) != fname:
                    raise ValueError(f"{who}: tensor {name} is in {fname} but the index says {weight_map.get(name)}")
                part = f.get_slice(name)
                shape = tuple(part.get_shape())
                if shape != tuple(expected[name]):
                    raise ValueError(f"{who}: tensor {name} has shape {shape}, the config says "
                                     f"{tuple(expected[name])}")
                cut = (slices or {}).get(name)
                if cut is None:
                    t = f.get_tensor(name)
                else:
                    dim, start, stop = cut
                    t = part[start:stop] if dim == 0 else part[:, start:stop]
                out[name] = t.to(device=device, dtype=dtype or t.dtype)
    missing = sorted(set(expected) - set(out))
    if missing:
        raise ValueError(f"{who}: {len(missing)} tensor(s) missing from {path}, e.g. {missing[:3]}")
    return out


LOADABLE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_load_dtype(requested, who: str) -> None:
    """A `dtype=` asked of a loader must be one the model computes in (block_attention's)."""
    if requested is not None and requested not in LOADABLE_DTYPES:
        raise ValueError(f"{who}.from_pretrained: dtype must be float32, float16 or bfloat16, got {requested}")


def check_stored_dtype(state_dict: dict, who: str) -> None:
    """Weights loaded as stored (no `dtype=`) must be in a dtype the model computes in."""
    stored = next(iter(state_dict.values())).dtype
    if stored not in LOADABLE_DTYPES:
        raise ValueError(f"{who}.from_pretrained: the checkpoint is stored as {stored}; the model computes "
                         "in float32, float16 or bfloat16: pass dtype=torch.float32 (or another) to cast it")


def random_tensors(shapes: Dict[str, Tuple[int, ...]], is_norm, *, seed: int, dtype, device, std: float) -> dict:
    """Random weights for test and demo models, in the order of `shapes`: matrices (and biases)
    normal(0, std), the tensors `is_norm(name, shape)` marks 1 + normal(0, 0.1)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    sd = {}
    for name, shape in shapes.items():
        if is_norm(name, shape):
            t = 1.0 + 0.1 * torch.randn(shape, generator=gen, device=device)
        else:
            t = std * torch.randn(shape, generator=gen, device=device)
        sd[name] = t.to(dtype)
    return sd
