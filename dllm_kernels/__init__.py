"""dllm-kernels: fused kernels for diffusion-LLM decoding."""
from . import _native  # noqa: F401
