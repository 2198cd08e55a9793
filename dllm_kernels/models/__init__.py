"""Model classes for `dllm_kernels.generate` on block_attention (docs/models.md): LLaDA, Dream, and the
block-diffusion family (SDAR, Fast-dLLM v2); `load_model` picks the class of a checkpoint directory."""
from .auto import load_model, model_class
from .block_diffusion import BlockDiffusion, block_diffusion_config
from .dream import Dream, dream_config
from .llada import KVCache, LLaDA, LLaDAConfig, llada_tensor_names, load_llada_state_dict, random_state_dict
from .qwen import QwenConfig, qwen_tensor_names, random_qwen_state_dict

__all__ = ["BlockDiffusion", "Dream", "KVCache", "LLaDA", "LLaDAConfig", "QwenConfig", "block_diffusion_config",
           "dream_config", "llada_tensor_names", "load_llada_state_dict", "load_model", "model_class",
           "qwen_tensor_names", "random_qwen_state_dict", "random_state_dict"]
