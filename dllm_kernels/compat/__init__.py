"""Exact drop-ins for the public decoders' selection helpers, on `dllm_kernels.select`.

Each function keeps the public helper's name, signature and decisions (at temperature 0, token
for token, ties included), so adopting it is a one-line import swap; docs/compat.md lists what
each matches and where `dllm_kernels.Policy` deliberately differs.
"""
from .dream import dream_diffusion_generate, sample_tokens
from .fast_dllm import get_transfer_index, get_transfer_index_dynamic
from .llada import get_num_transfer_tokens, llada_transfer
from .sglang import low_confidence_step

__all__ = ["dream_diffusion_generate", "sample_tokens", "get_num_transfer_tokens", "get_transfer_index",
           "get_transfer_index_dynamic", "llada_transfer", "low_confidence_step"]
