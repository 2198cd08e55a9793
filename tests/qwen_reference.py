"""Helpers for the Dream and block-diffusion tests: tiny random Hugging Face-style checkpoints
(config.json + safetensors, Qwen2 / Qwen3 tensor names) and a float64 statement of the equations.

The float64 forward is written here from the architecture's equations, independent of the model
code: explicit softmax, one head at a time, the attention mask spelled out position by position.
"""
import json
import math

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

QWEN2 = dict(qkv_bias=True, qk_norm=False)
QWEN3 = dict(qkv_bias=False, qk_norm=True)


def write_qwen_checkpoint(path, architecture, *, d=64, layers=2, heads=4, kv_heads=2, head_dim=None, mlp=96,
                          vocab=300, tied=False, qkv_bias=True, qk_norm=False, theta=10000.0, seed=0,
                          layout="shards", extra=None, std=0.3):
    """Writes config.json and the weights (`layout`: "single" file, two "shards", or shards with an
    "index"); returns (config dict, state dict)."""
    g = torch.Generator().manual_seed(seed)
    hd = head_dim or d // heads
    cfg = {"architectures": [architecture], "hidden_size": d, "num_hidden_layers": layers,
           "num_attention_heads": heads, "num_key_value_heads": kv_heads, "intermediate_size": mlp,
           "vocab_size": vocab, "rope_theta": theta, "rms_norm_eps": 1e-6, "tie_word_embeddings": tied,
           "max_position_embeddings": 512, "hidden_act": "silu", "rope_scaling": None,
           "use_sliding_window": False, "mask_token_id": vocab - 1, "eos_token_id": vocab - 2,
           "pad_token_id": vocab - 2, "torch_dtype": "float32", "model_type": "test"}
    if head_dim:
        cfg["head_dim"] = head_dim
    cfg.update(extra or {})
    r = lambda *s: std * torch.randn(*s, generator=g)  # noqa: E731
    norm = lambda n: 1 + 0.1 * torch.randn(n, generator=g)  # noqa: E731
    sd = {"model.embed_tokens.weight": r(vocab, d), "model.norm.weight": norm(d)}
    for i in range(layers):
        b, a = f"model.layers.{i}.", f"model.layers.{i}.self_attn."
        sd.update({b + "input_layernorm.weight": norm(d), b + "post_attention_layernorm.weight": norm(d),
                   a + "q_proj.weight": r(heads * hd, d), a + "k_proj.weight": r(kv_heads * hd, d),
                   a + "v_proj.weight": r(kv_heads * hd, d), a + "o_proj.weight": r(d, heads * hd),
                   b + "mlp.gate_proj.weight": r(mlp, d), b + "mlp.up_proj.weight": r(mlp, d),
                   b + "mlp.down_proj.weight": r(d, mlp)})
        if qkv_bias:
            sd.update({a + "q_proj.bias": r(heads * hd), a + "k_proj.bias": r(kv_heads * hd),
                       a + "v_proj.bias": r(kv_heads * hd)})
        if qk_norm:
            sd.update({a + "q_norm.weight": norm(hd), a + "k_norm.weight": norm(hd)})
    if not tied:
        sd["lm_head.weight"] = r(vocab, d)
    save(path, cfg, sd, layout)
    return cfg, sd


def save(path, cfg, sd, layout="shards"):
    (path / "config.json").write_text(json.dumps(cfg))
    for f in path.glob("*.safetensors*"):
        f.unlink()
    if layout == "single":
        save_file(sd, str(path / "model.safetensors"))
        return
    names = sorted(sd)
    half = {n: sd[n] for n in names[: len(names) // 2]}, {n: sd[n] for n in names[len(names) // 2:]}
    files = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    for part, fname in zip(half, files):
        save_file(part, str(path / fname))
    if layout == "index":
        weight_map = {n: files[0] if n in half[0] else files[1] for n in names}
        (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def logits_f64(cfg, sd, x, *, qkv_bias, qk_norm, block_size=None, dtype=torch.float64):
    """Logits [B, L, V] in float64 (or `dtype`, for plain-PyTorch error levels) of the Qwen2 / Qwen3
    equations without a causal mask
    (`block_size=None`: every position sees every position) or block-causal (position i sees j
    iff j // block_size <= i // block_size)."""
    d, H, Hkv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or d // H
    eps = cfg["rms_norm_eps"]
    w = {k: v.to(dtype) for k, v in sd.items()}

    def norm(t, wt):
        return wt * t / torch.sqrt((t * t).mean(-1, keepdim=True) + eps)

    out = []
    for seq in x:
        n = seq.numel()
        j = torch.arange(hd // 2, dtype=torch.float64)
        ang = torch.arange(n, dtype=torch.float64)[:, None] * cfg["rope_theta"] ** (-2 * j / hd)[None]
        cos, sin = (torch.cat([f(ang)] * 2, -1)[:, None].to(dtype) for f in (torch.cos, torch.sin))

        def rope(t):
            a, b = t[..., :hd // 2], t[..., hd // 2:]
            return t * cos + torch.cat([-b, a], -1) * sin

        pos = torch.arange(n)
        allowed = torch.ones(n, n, dtype=torch.bool) if block_size is None else \
            (pos[None, :] // block_size) <= (pos[:, None] // block_size)
        h = w["model.embed_tokens.weight"][seq]
        for i in range(cfg["num_hidden_layers"]):
            b, a = f"model.layers.{i}.", f"model.layers.{i}.self_attn."

            def proj(name, t):
                y = t @ w[a + name + ".weight"].T
                return y + w[a + name + ".bias"] if qkv_bias else y

            n1 = norm(h, w[b + "input_layernorm.weight"])
            q, k = proj("q_proj", n1).view(n, H, hd), proj("k_proj", n1).view(n, Hkv, hd)
            v = proj("v_proj", n1).view(n, Hkv, hd)
            if qk_norm:
                q, k = norm(q, w[a + "q_norm.weight"]), norm(k, w[a + "k_norm.weight"])
            q, k = rope(q), rope(k)
            o = torch.empty(n, H, hd, dtype=dtype)
            for head in range(H):
                kh = head // (H // Hkv)
                s = (q[:, head] @ k[:, kh].T / math.sqrt(hd)).masked_fill(~allowed, float("-inf"))
                o[:, head] = torch.softmax(s, -1) @ v[:, kh]
            h = h + o.reshape(n, H * hd) @ w[a + "o_proj.weight"].T
            n2 = norm(h, w[b + "post_attention_layernorm.weight"])
            h = h + (F.silu(n2 @ w[b + "mlp.gate_proj.weight"].T) * (n2 @ w[b + "mlp.up_proj.weight"].T)) \
                @ w[b + "mlp.down_proj.weight"].T
        head_w = w["model.embed_tokens.weight"] if cfg["tie_word_embeddings"] else w["lm_head.weight"]
        out.append(norm(h, w["model.norm.weight"]) @ head_w.T)
    return torch.stack(out)


def plain_loop(model, prompts, gen_length, policy, *, mask_id, eos_id, gen_start=None, seed=0):
    """The decode written as the obvious loop: full logits of every position each step, one
    fused_unmask call (the same backend generate uses, so near-ties fall the same way); sequences
    decoded one at a time. Returns [B, gen]."""
    import dllm_kernels as dk

    out = []
    for b, p in enumerate(prompts):
        P = len(p)
        x = torch.full((1, P + gen_length), mask_id, dtype=torch.int64)
        x[0, :P] = p
        start = P if gen_start is None else gen_start[b]
        state = dk.DecodeState.new(1, P + gen_length, gen_start=start, seed=seed)
        steps = 0
        while not state.all_done() and steps < 4 * gen_length:
            dk.fused_unmask(model(x).float(), x, state, policy, mask_id=mask_id, eos_id=eos_id)
            steps += 1
        out.append(x[0, P:])
    return torch.stack(out)
