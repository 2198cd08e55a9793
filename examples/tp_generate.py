"""Tensor-parallel decoding of a LLaDA, Dream, SDAR or Fast-dLLM v2 checkpoint over torch.distributed
(docs/vocab_parallel.md); the class comes from config.json's `architectures`.

Every rank loads only its slices (heads, hidden units, vocabulary shard) and runs the same
`generate`; the unmasking step exchanges per-row statistics, never the logits, so all ranks
commit the same tokens. Rank 0 prints them.

    torchrun --nproc-per-node 2 examples/tp_generate.py --model models/shakespeare     # CPU, gloo
    torchrun --nproc-per-node 8 examples/tp_generate.py --model /path/to/LLaDA-8B       # GPUs, NCCL
    torchrun --nproc-per-node 4 examples/tp_generate.py --model /path/to/Dream-v0-Instruct-7B --prompt-ids 1,2,3
"""
import argparse
import datetime
import os
import sys

import torch
import torch.distributed as dist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import dllm_kernels as dk  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="a LLaDA / Dream / SDAR / Fast-dLLM v2 checkpoint directory "
                    "(config.json + safetensors)")
    ap.add_argument("--prompt", default="ROMEO:\n", help="text (needs the character tokenizer.json of "
                    "dllm_kernels.training's checkpoints)")
    ap.add_argument("--prompt-ids", default=None, help="comma-separated token ids instead of --prompt")
    ap.add_argument("--gen-length", type=int, default=64)
    ap.add_argument("--block-length", type=int, default=16, help="not for block-diffusion models (their own)")
    ap.add_argument("--cache", default=None, choices=("none", "prefix", "dual", "block"),
                    help="default: dual (LLaDA, Dream), block (SDAR, Fast-dLLM v2)")
    ap.add_argument("--threshold", type=float, default=None, help="threshold rule (default: top-k, one per step)")
    ap.add_argument("--timeout-s", type=float, default=60.0, help="group timeout: a dead peer raises after it")
    args = ap.parse_args()

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=args.timeout_s))
    rank = dist.get_rank()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    model = dk.models.load_model(args.model, tp_group=dist.group.WORLD, device=device,
                                 dtype=None if cuda else torch.float32)
    block_model = model.attn_mode == "block_causal"
    tok = None
    if isinstance(model, dk.models.LLaDA) and os.path.exists(os.path.join(args.model, "tokenizer.json")):
        from dllm_kernels.training.tokenizer import CharTokenizer

        tok = CharTokenizer.load(args.model)
    if args.prompt_ids is not None:
        prompt = [int(i) for i in args.prompt_ids.split(",")]
    elif tok is not None:
        prompt = tok.encode(args.prompt)
    else:
        raise SystemExit("tp_generate: no character tokenizer.json (dllm_kernels.training's) beside this "
                         "checkpoint; pass --prompt-ids")
    # A block-diffusion model decodes blocks of its own size; a shifted model needs Policy(shift=True).
    common = dict(block_length=model.block_size if block_model else args.block_length, shift=model.shift)
    policy = (dk.Policy(rule="threshold", threshold=args.threshold, **common)
              if args.threshold is not None else dk.Policy(**common))
    cache = args.cache or ("block" if block_model else "dual")
    out = dk.generate(model, [prompt], gen_length=args.gen_length, policy=policy, cache=cache)
    if rank == 0:
        world = dist.get_world_size()
        print(f"# {type(model).__name__} on {world} ranks, vocabulary shards of {model.full_vocab_size} ids, "
              f"{out.nfe[0]} forwards, {out.wall_time_s:.2f} s")
        print(tok.decode(out.tokens[0]) if tok is not None else out.tokens[0].tolist())
    dist.barrier()  # no rank tears the group down while another still uses it
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
