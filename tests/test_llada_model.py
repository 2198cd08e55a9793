"""dllm_kernels.models.LLaDA: checkpoint loading (docs/llada_checkpoint.md) and logits against independent
implementations of the same equations (a float64 one written here, and the eager cat + SDPA model)."""
import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from dllm_kernels.eager_decoder import EagerLLaDA
from dllm_kernels.models import LLaDA

P = "model.transformer."


def write_checkpoint(path, *, d=64, layers=2, heads=4, kv_heads=2, mlp=96, vocab=300, tied=False, seed=0):
    """A tiny random LLaDA checkpoint: config.json + two safetensors shards, names as the format lists."""
    g = torch.Generator().manual_seed(seed)
    hd = d // heads
    cfg = {"d_model": d, "n_layers": layers, "n_heads": heads, "n_kv_heads": kv_heads,
           "mlp_hidden_size": mlp, "vocab_size": vocab, "embedding_size": vocab, "rope_theta": 10000.0,
           "rms_norm_eps": 1e-5, "weight_tying": tied, "max_sequence_length": 512,
           "mask_token_id": vocab - 1, "eos_token_id": vocab - 2, "block_type": "llama",
           "activation_type": "silu", "layer_norm_type": "rms", "rope": True, "include_bias": False,
           "architectures": ["LLaDAModelLM"]}
    (path / "config.json").write_text(json.dumps(cfg))
    r = lambda *s: 0.3 * torch.randn(*s, generator=g)  # noqa: E731
    shard1 = {P + "wte.weight": r(vocab, d)}
    shard2 = {P + "ln_f.weight": 1 + 0.1 * torch.randn(d, generator=g)}
    for i in range(layers):
        b = f"{P}blocks.{i}."
        dest = shard1 if i == 0 else shard2
        dest.update({b + "attn_norm.weight": 1 + 0.1 * torch.randn(d, generator=g),
                     b + "ff_norm.weight": 1 + 0.1 * torch.randn(d, generator=g),
                     b + "q_proj.weight": r(d, d), b + "k_proj.weight": r(kv_heads * hd, d),
                     b + "v_proj.weight": r(kv_heads * hd, d), b + "attn_out.weight": r(d, d),
                     b + "ff_proj.weight": r(mlp, d), b + "up_proj.weight": r(mlp, d),
                     b + "ff_out.weight": r(d, mlp)})
    if not tied:
        shard2[P + "ff_out.weight"] = r(vocab, d)
    save_file(shard1, str(path / "model-00001-of-00002.safetensors"))
    save_file(shard2, str(path / "model-00002-of-00002.safetensors"))
    return cfg, {**shard1, **shard2}


def logits_f64(cfg, sd, x):
    """docs/llada_checkpoint.md "The computation", in float64, one sequence at a time, explicit softmax."""
    d, H, Hkv = cfg["d_model"], cfg["n_heads"], cfg["n_kv_heads"]
    hd = d // H
    w = {k: v.double() for k, v in sd.items()}
    out = []
    for seq in x:
        n = seq.numel()
        h = w[P + "wte.weight"][seq]

        def norm(t, wt):
            return wt * t / torch.sqrt((t * t).mean(-1, keepdim=True) + cfg["rms_norm_eps"])

        j = torch.arange(hd // 2, dtype=torch.float64)
        inv = cfg["rope_theta"] ** (-2 * j / hd)
        ang = torch.arange(n, dtype=torch.float64)[:, None] * inv[None]
        cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)

        def rope(t):  # [n, heads, hd]
            a, b = t[..., :hd // 2], t[..., hd // 2:]
            return t * cos[:, None] + torch.cat([-b, a], -1) * sin[:, None]

        for i in range(cfg["n_layers"]):
            b = f"{P}blocks.{i}."
            n1 = norm(h, w[b + "attn_norm.weight"])
            q = rope((n1 @ w[b + "q_proj.weight"].T).view(n, H, hd))
            k = rope((n1 @ w[b + "k_proj.weight"].T).view(n, Hkv, hd))
            v = (n1 @ w[b + "v_proj.weight"].T).view(n, Hkv, hd)
            o = torch.empty(n, H, hd, dtype=torch.float64)
            for head in range(H):
                kh = head // (H // Hkv)
                s = q[:, head] @ k[:, kh].T / math.sqrt(hd)
                o[:, head] = torch.softmax(s, -1) @ v[:, kh]
            h = h + o.reshape(n, d) @ w[b + "attn_out.weight"].T
            n2 = norm(h, w[b + "ff_norm.weight"])
            f = F.silu(n2 @ w[b + "ff_proj.weight"].T) * (n2 @ w[b + "up_proj.weight"].T)
            h = h + f @ w[b + "ff_out.weight"].T
        head_w = w[P + "wte.weight"] if cfg["weight_tying"] else w[P + "ff_out.weight"]
        out.append(norm(h, w[P + "ln_f.weight"]) @ head_w.T)
    return torch.stack(out)


@pytest.mark.parametrize("kv_heads,tied", [(4, False), (2, False), (1, True)])
def test_loaded_logits_match_float64_equations(tmp_path, kv_heads, tied):
    cfg, sd = write_checkpoint(tmp_path, kv_heads=kv_heads, tied=tied)
    model = LLaDA.from_pretrained(str(tmp_path), dtype=torch.float32)
    assert model.config.n_kv_heads == kv_heads and model.config.weight_tying == tied
    x = torch.randint(0, 298, (2, 23), generator=torch.Generator().manual_seed(1))
    ref = logits_f64(cfg, sd, x)
    got = model(x)
    assert got.shape == (2, 23, 300) and got.dtype == torch.float32
    err = (got.double() - ref).abs().max().item()
    assert err < 2e-4 * ref.abs().max().item(), err
    # The eager cat + SDPA model (the reference decoder's) agrees too.
    eager = EagerLLaDA(model.config, {k: v.float() for k, v in sd.items()})
    assert (eager(x).double() - ref).abs().max().item() < 2e-4 * ref.abs().max().item()
    # A wrong weight must show: perturb one layer's q_proj and the logits move.
    sd2 = dict(sd)
    sd2[P + "blocks.1.q_proj.weight"] = sd[P + "blocks.1.q_proj.weight"] * 1.5
    assert (logits_f64(cfg, sd2, x) - ref).abs().max().item() > 100 * err


def test_bf16_load_and_ragged_lengths(tmp_path):
    cfg, sd = write_checkpoint(tmp_path)
    model = LLaDA.from_pretrained(str(tmp_path), dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    x = torch.randint(0, 298, (2, 17), generator=torch.Generator().manual_seed(2))
    ref = logits_f64(cfg, sd, x[:1, :11])[0]
    got = model(x, lengths=[11, 17])[0, :11].double()  # sequence 0 is x[0, :11] alone
    # flash-attention's rule: our bf16 error is at most ~2x plain PyTorch's bf16 error.
    eager = EagerLLaDA(model.config, {k: v.bfloat16() for k, v in sd.items()})
    eager_err = (eager(x[:1, :11])[0].double() - ref).abs().max().item()
    err = (got - ref).abs().max().item()
    assert err <= 2 * eager_err + 1e-3, (err, eager_err)


@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_cached_spans_equal_full_forward(tmp_path, mode):
    """A cache filled by a full forward, then a block span recomputed: the block's logits equal the
    full forward's (keys stored after RoPE, positions never shift); ragged spans in one batch."""
    write_checkpoint(tmp_path, kv_heads=2)
    model = LLaDA.from_pretrained(str(tmp_path), dtype=torch.float32)
    x = torch.randint(0, 298, (3, 30), generator=torch.Generator().manual_seed(3))
    lens = [30, 24, 27]
    full = model(x, lengths=lens)
    cache = model.new_cache(3, 30)
    model.forward_span(x, q_start=[0] * 3, q_len=lens, kv_len=lens, row_start=[0] * 3, n_rows=1, cache=cache)
    starts, ends = [8, 4, 20], [16, 9, 27]
    q_len = [lens[b] - starts[b] if mode == "prefix" else ends[b] - starts[b] for b in range(3)]
    rows = model.forward_span(x, q_start=starts, q_len=q_len, kv_len=lens, row_start=starts,
                              n_rows=max(e - s for s, e in zip(starts, ends)), cache=cache)
    for b in range(3):
        n = ends[b] - starts[b]
        torch.testing.assert_close(rows[b, :n], full[b, starts[b]:ends[b]], atol=2e-5, rtol=1e-4)
    # An idle sequence (q_len 0) in the batch does not disturb the others.
    rows2 = model.forward_span(x, q_start=[8, 0, 20], q_len=[q_len[0], 0, q_len[2]], kv_len=[30, 0, 27],
                               row_start=starts, n_rows=8, cache=cache)
    torch.testing.assert_close(rows2[0, :8], full[0, 8:16], atol=2e-5, rtol=1e-4)


def test_dense_forward_matches_span_forward(tmp_path):
    write_checkpoint(tmp_path)
    model = LLaDA.from_pretrained(str(tmp_path), dtype=torch.float32)
    x = torch.randint(0, 298, (2, 26), generator=torch.Generator().manual_seed(4))
    lens = [26, 21]
    cache = model.new_cache(2, 26)
    model.forward_span(x, q_start=[0, 0], q_len=lens, kv_len=lens, row_start=[0, 0], n_rows=1, cache=cache)
    full = model(x, lengths=lens)
    dense = model.forward_dense(x, torch.tensor([10, 16]), torch.tensor([8, 5]), torch.tensor(lens), 8, cache)
    torch.testing.assert_close(dense[0], full[0, 10:18], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(dense[1, :5], full[1, 16:21], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_hidden_rows_through_the_head_are_the_logits(tmp_path, tied):
    """forward_span(hidden=True) gives the LM head's input: through `lm_head` (the embedding when
    tied) it is the logits, and select_from_hidden on it picks select's tokens on them."""
    import dllm_kernels as dk

    write_checkpoint(tmp_path, tied=tied)
    model = LLaDA.from_pretrained(str(tmp_path), dtype=torch.float32)
    x = torch.randint(0, 298, (2, 20), generator=torch.Generator().manual_seed(5))
    span = dict(q_start=[0, 0], q_len=[20, 17], kv_len=[20, 17], row_start=[4, 2], n_rows=9)
    logits = model.forward_span(x, **span)
    hidden = model.forward_span(x, hidden=True, **span)
    assert hidden.shape == (2, 9, 64) and (model.lm_head is model.wte) == tied
    torch.testing.assert_close(hidden @ model.lm_head.T, logits, atol=1e-5, rtol=1e-5)
    rs = torch.tensor(span["row_start"])
    got = dk.select_from_hidden(hidden, model.lm_head, x.clone(), rule="topk", k=3, row_start=rs)
    want = dk.select(logits, x.clone(), rule="topk", k=3, row_start=rs)
    assert torch.equal(got.x0, want.x0) and torch.equal(got.transfer, want.transfer)


def test_checkpoint_errors(tmp_path):
    cfg, sd = write_checkpoint(tmp_path)
    bad = dict(cfg, block_type="sequential")
    (tmp_path / "config.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="block_type"):
        LLaDA.from_pretrained(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps(dict(cfg, n_layers=3)))
    with pytest.raises(ValueError, match="missing"):
        LLaDA.from_pretrained(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps(dict(cfg, mlp_hidden_size=64)))
    with pytest.raises(ValueError, match="shape"):
        LLaDA.from_pretrained(str(tmp_path))
    with pytest.raises(FileNotFoundError):
        LLaDA.from_pretrained(str(tmp_path / "nowhere"))


def test_stored_dtype_is_kept_and_float64_rejected(tmp_path):
    """No dtype: the model computes in the checkpoint's dtype (here float32) and matches the
    float64 equations as the explicit float32 load does; float64 is refused at load, by name."""
    cfg, sd = write_checkpoint(tmp_path, d=32, layers=1, heads=2, kv_heads=1, mlp=48, vocab=40)
    model = LLaDA.from_pretrained(str(tmp_path))
    assert model.dtype == torch.float32
    x = torch.randint(0, 40, (1, 9))
    torch.testing.assert_close(model(x).double(), logits_f64(cfg, sd, x), atol=1e-4, rtol=1e-4)
    assert LLaDA.from_pretrained(str(tmp_path), dtype=torch.bfloat16).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="dtype must be float32, float16 or bfloat16, got torch.float64"):
        LLaDA.from_pretrained(str(tmp_path), dtype=torch.float64)
    for f in tmp_path.glob("*.safetensors"):  # the same checkpoint stored as float64
        from safetensors.torch import load_file
        save_file({k: v.double() for k, v in load_file(str(f)).items()}, str(f))
    with pytest.raises(ValueError, match="stored as torch.float64.*pass dtype=torch.float32"):
        LLaDA.from_pretrained(str(tmp_path))
    assert LLaDA.from_pretrained(str(tmp_path), dtype=torch.float32).dtype == torch.float32
