"""Triton kernels of dllm-kernels (installed as dllm_kernels.triton_kernels)."""
