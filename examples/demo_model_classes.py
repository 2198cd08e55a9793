"""Part three of `make demo`: one prompt decoded by each model class of `dllm_kernels.models`.

* LLaDA: the Shakespeare model trained in this repository (models/shakespeare, trained weights),
  with no cache, prefix cache and dual cache.
* Dream, and the block-diffusion family (SDAR, Fast-dLLM v2): no trained checkpoint of these can
  be downloaded here, so each is a tiny checkpoint with RANDOM weights, written as Hugging Face
  lays it out (config.json + safetensors, Qwen2 / Qwen3 tensor names) and loaded back through the
  strict loader. Their tokens are meaningless; what the demo shows is the decode running through
  each cache, the forwards it took, and whether the cached decode gave the no-cache decode's
  tokens (always, for the exact block cache).

    python examples/demo_model_classes.py
"""
import json
import os
import sys
import tempfile

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import dllm_kernels as dk  # noqa: E402
from dllm_kernels.models import BlockDiffusion, Dream, LLaDA, QwenConfig, random_qwen_state_dict  # noqa: E402
from dllm_kernels.training.tokenizer import CharTokenizer  # noqa: E402

V = 512
TINY = dict(d_model=128, n_layers=2, n_heads=4, n_kv_heads=2, mlp_hidden_size=256, vocab_size=V,
            rope_theta=1e6, rms_norm_eps=1e-6, mask_token_id=V - 1, eos_token_id=V - 2)
RANDOM = {
    "Dream": (Dream, QwenConfig(**TINY, qkv_bias=True, architecture="DreamModel"), {}),
    "SDAR": (BlockDiffusion, QwenConfig(**TINY, qkv_bias=False, qk_norm=True, head_dim=32,
                                        architecture="SDARForCausalLM", block_size=4), {"block_size": 4}),
    "Fast-dLLM v2": (BlockDiffusion, QwenConfig(**TINY, qkv_bias=True, architecture="Fast_dLLM_QwenForCausalLM",
                                                block_size=8), {"bd_size": 8}),
}


def write_checkpoint(path, config, extra):
    """A Hugging Face-style checkpoint directory of random weights."""
    from safetensors.torch import save_file

    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({**config.to_hf(), **extra}, f)
    save_file(random_qwen_state_dict(config, seed=0, std=0.3), os.path.join(path, "model.safetensors"))


def show(label, out, base=None, text=None):
    same = "" if base is None else f"  same tokens as no cache: {torch.equal(out.tokens, base.tokens)}"
    body = text if text is not None else " ".join(str(t) for t in out.tokens[0].tolist()[:16]) + " ..."
    print(f"  {label:<7} {out.nfe[0]:>3} forwards{same}\n          {body}")


def main():
    torch.set_num_threads(2)
    print("\n# Part 3: one prompt through each model class (dllm_kernels.models)\n")
    path = os.path.join(ROOT, "models", "shakespeare")
    if os.path.exists(os.path.join(path, "model.safetensors")):
        model, tok = LLaDA.from_pretrained(path, dtype=torch.float32), CharTokenizer.load(path)
        prompt = tok.encode("ROMEO:\nWhat light through yonder window")
        # Sampled (T = 0.9, seed 1): greedy decoding of this small character model repeats words.
        policy = dk.Policy(rule="threshold", threshold=0.9, block_length=16, temperature=0.9)
        print("## LLaDA, models/shakespeare (trained weights), threshold 0.9, T = 0.9, 48 positions, blocks of 16")
        base = None
        for cache in ("none", "prefix", "dual"):
            out = dk.generate(model, [prompt], gen_length=48, policy=policy, cache=cache, seed=1)
            show(cache, out, base, repr(tok.decode(out.tokens[0])))
            base = base or out
    with tempfile.TemporaryDirectory() as tmp:
        for name, (cls, config, extra) in RANDOM.items():
            write_checkpoint(os.path.join(tmp, name), config, extra)
            model = cls.from_pretrained(os.path.join(tmp, name), dtype=torch.float32)
            prompt = torch.arange(3, 14)
            block = getattr(model, "block_size", None) or 8
            policy = dk.Policy(rule="threshold", threshold=0.5, block_length=block, shift=model.shift,
                               suppress_ids=(config.mask_token_id,))
            caches = ("none", "block") if cls is BlockDiffusion else ("none", "prefix", "dual")
            print(f"\n## {name} ({config.architecture}, RANDOM weights: tokens are meaningless), "
                  f"{'shifted' if model.shift else 'unshifted'} logits, 24 positions, blocks of {block}")
            base = None
            for cache in caches:
                out = dk.generate(model, [prompt], gen_length=24, policy=policy, cache=cache)
                show(cache, out, base)
                base = base or out


if __name__ == "__main__":
    main()
