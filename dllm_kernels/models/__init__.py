"""Model adapters for `dllm_kernels.generate`: the LLaDA architecture on block_attention."""
from .llada import KVCache, LLaDA, LLaDAConfig, llada_tensor_names, load_llada_state_dict, random_state_dict

__all__ = ["KVCache", "LLaDA", "LLaDAConfig", "llada_tensor_names", "load_llada_state_dict",
           "random_state_dict"]
