"""Every loader refuses what it does not implement, naming the field or tensor: unimplemented config
flags set to a non-default value, unknown fields and architectures, a config without mask / eos id,
stray, missing and misshapen tensors, a broken shard index."""
import json

import pytest
import torch
from safetensors.torch import save_file

from dllm_kernels.models import BlockDiffusion, Dream, LLaDA
from qwen_reference import QWEN2, QWEN3, save, write_qwen_checkpoint
from test_llada_model import P, write_checkpoint


def rewrite_config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    for k, v in changes.items():
        if v is KeyError:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (path / "config.json").write_text(json.dumps(cfg))


# The public LLaDA model code's flags that change the logits (measured there by 6 to 16 when set).
LLADA_FLAGS = [("include_qkv_bias", True), ("scale_logits", True), ("input_emb_norm", True),
               ("attention_layer_norm", True), ("alibi", True), ("clip_qkv", 8.0), ("rope_full_precision", False),
               ("layer_norm_with_affine", False), ("block_group_size", 2), ("multi_query_attention", True),
               ("bias_for_layer_norm", True), ("include_bias", True), ("rope", False), ("activation_type", "gelu")]


@pytest.mark.parametrize("field,value", LLADA_FLAGS, ids=[f for f, _ in LLADA_FLAGS])
def test_llada_unimplemented_flag(tmp_path, field, value):
    write_checkpoint(tmp_path)
    LLaDA.from_pretrained(str(tmp_path), dtype=torch.float32)  # loads as written
    rewrite_config(tmp_path, **{field: value})
    with pytest.raises(ValueError, match=field):
        LLaDA.from_pretrained(str(tmp_path), dtype=torch.float32)


def test_llada_defaults_written_out_load(tmp_path):
    """A config that spells out every flag at its default (as the public checkpoints do) loads."""
    write_checkpoint(tmp_path)
    rewrite_config(tmp_path, include_qkv_bias=False, scale_logits=False, input_emb_norm=False,
                   attention_layer_norm=False, alibi=False, clip_qkv=None, rope_full_precision=True,
                   layer_norm_with_affine=True, block_group_size=1, multi_query_attention=None,
                   attention_dropout=0.0, flash_attention=False, init_std=0.02, pad_token_id=1, use_cache=False)
    LLaDA.from_pretrained(str(tmp_path), dtype=torch.float32)


@pytest.mark.parametrize("tensor", ["blocks.0.q_proj.bias", "blocks.1.q_norm.weight", "emb_norm.weight"])
def test_llada_stray_tensor(tmp_path, tensor):
    """The tensors those flags add (q_proj.bias, q_norm, an embedding norm) are refused, not dropped."""
    write_checkpoint(tmp_path)
    save_file({P + tensor: torch.ones(4)}, str(tmp_path / "model-00003-of-00003.safetensors"))
    with pytest.raises(ValueError, match=tensor.replace(".", r"\.")):
        LLaDA.from_pretrained(str(tmp_path), dtype=torch.float32)


@pytest.mark.parametrize("change,match", [
    (dict(architectures=["LlamaForCausalLM"]), "architectures"),
    (dict(some_new_flag=True), "some_new_flag"),
    (dict(mask_token_id=KeyError), "mask_token_id"),
    (dict(eos_token_id=KeyError), "eos_token_id"),
    (dict(eos_token_id=None), "eos_token_id"),
    (dict(n_layers=3), "missing"),
    (dict(mlp_hidden_size=64), r"blocks\.0\.\w+\.weight has shape"),
], ids=["architecture", "unknown-field", "no-mask-id", "no-eos-id", "null-eos-id", "missing-tensor", "shape"])
def test_llada_config_errors(tmp_path, change, match):
    write_checkpoint(tmp_path)
    rewrite_config(tmp_path, **change)
    with pytest.raises(ValueError, match=match):
        LLaDA.from_pretrained(str(tmp_path), dtype=torch.float32)


QWEN_FLAGS = [("hidden_act", "gelu"), ("rope_scaling", {"type": "yarn", "factor": 4.0}),
              ("use_sliding_window", True), ("attention_bias", True), ("mlp_bias", True),
              ("layer_types", ["full_attention", "sliding_attention"]), ("quantization_config", {"bits": 4})]
CLASSES = {"Dream": (Dream, "DreamModel", QWEN2), "SDAR": (BlockDiffusion, "SDARForCausalLM", QWEN3),
           "FastDLLMv2": (BlockDiffusion, "Fast_dLLM_QwenForCausalLM", QWEN2)}


@pytest.mark.parametrize("cls_name", sorted(CLASSES))
@pytest.mark.parametrize("field,value", QWEN_FLAGS, ids=[f for f, _ in QWEN_FLAGS])
def test_qwen_unimplemented_flag(tmp_path, cls_name, field, value):
    cls, arch, blocks = CLASSES[cls_name]
    write_qwen_checkpoint(tmp_path, arch, layers=1, **blocks)
    rewrite_config(tmp_path, **{field: value})
    with pytest.raises(ValueError, match=field):
        cls.from_pretrained(str(tmp_path), dtype=torch.float32)


@pytest.mark.parametrize("cls_name", sorted(CLASSES))
def test_qwen_checkpoint_errors(tmp_path, cls_name):
    cls, arch, blocks = CLASSES[cls_name]
    cfg, sd = write_qwen_checkpoint(tmp_path, arch, layers=1, layout="index", **blocks)
    cls.from_pretrained(str(tmp_path), dtype=torch.float32)
    other = "SDARForCausalLM" if arch == "DreamModel" else "DreamModel"
    cases = [
        (dict(architectures=[other]), "architectures"),
        (dict(architectures=KeyError), "architectures"),
        (dict(mask_token_id=KeyError), "mask_token_id"),
        (dict(eos_token_id=KeyError), "eos_token_id"),
        (dict(rope_theta=KeyError), "rope_theta"),
        (dict(intermediate_size=64), r"mlp\.\w+\.weight has shape"),
        (dict(num_hidden_layers=2), "missing"),
        (dict(tie_word_embeddings=True), r"lm_head\.weight"),
    ]
    for change, match in cases:
        save(tmp_path, cfg, sd, "index")
        rewrite_config(tmp_path, **change)
        with pytest.raises(ValueError, match=match):
            cls.from_pretrained(str(tmp_path), dtype=torch.float32)
    # Qwen2 blocks must not carry q/k norms; Qwen3 blocks must not carry biases (and must have norms).
    a = "model.layers.0.self_attn."
    stray = {a + "q_norm.weight": torch.ones(16)} if blocks["qkv_bias"] else {a + "q_proj.bias": torch.ones(64)}
    save(tmp_path, cfg, {**sd, **stray}, "single")
    with pytest.raises(ValueError, match=next(iter(stray)).replace(".", r"\.")):
        cls.from_pretrained(str(tmp_path), dtype=torch.float32)
    gone = a + ("q_proj.bias" if blocks["qkv_bias"] else "k_norm.weight")
    save(tmp_path, cfg, {k: v for k, v in sd.items() if k != gone}, "single")
    with pytest.raises(ValueError, match="missing"):
        cls.from_pretrained(str(tmp_path), dtype=torch.float32)
    # An index pointing at a shard that is not there.
    save(tmp_path, cfg, sd, "index")
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model-00002-of-00002"):
        cls.from_pretrained(str(tmp_path), dtype=torch.float32)


def test_ids_can_be_given_when_the_config_lacks_them(tmp_path):
    write_qwen_checkpoint(tmp_path, "SDARForCausalLM", layers=1, **QWEN3)
    rewrite_config(tmp_path, mask_token_id=KeyError)
    model = BlockDiffusion.from_pretrained(str(tmp_path), dtype=torch.float32, mask_token_id=7)
    assert model.config.mask_token_id == 7


def test_block_size_from_the_config(tmp_path):
    write_qwen_checkpoint(tmp_path, "SDARForCausalLM", layers=1, **QWEN3)
    assert BlockDiffusion.from_pretrained(str(tmp_path)).block_size == 4  # SDAR's default
    rewrite_config(tmp_path, block_size=8)
    assert BlockDiffusion.from_pretrained(str(tmp_path)).block_size == 8
    rewrite_config(tmp_path, block_size=0)
    with pytest.raises(ValueError, match="block_size"):
        BlockDiffusion.from_pretrained(str(tmp_path))
    write_qwen_checkpoint(tmp_path, "Fast_dLLM_QwenForCausalLM", layers=1, extra={"bd_size": 16}, **QWEN2)
    model = BlockDiffusion.from_pretrained(str(tmp_path))
    assert model.block_size == 16 and model.shift
