"""Loads the native libraries that register the dllm ops with the dispatcher, and registers the
Triton kernels for CUDA: select's always, fused_unmask's where no native CUDA kernel was built."""
import torch  # noqa: F401  (loads libc10/libtorch, which the native libraries link against)

from . import _C  # noqa: F401  (registers the op schemas and the CPU kernels)

try:  # CUDA kernels: built only where nvcc was found; loading needs the CUDA runtime.
    from . import _C_cuda  # noqa: F401

    HAS_CUDA_KERNELS = True
    CUDA_KERNELS_ERROR = None
except ImportError as exc:  # depends on the build machine
    HAS_CUDA_KERNELS = False
    CUDA_KERNELS_ERROR = str(exc)


def register_triton_fallbacks() -> bool:
    """On a CUDA machine: serve select, row_stats, lm_head_row_stats and speculative_verify on CUDA tensors with their Triton
    kernels (neither has a native CUDA kernel), and fused_unmask too where the native CUDA kernels
    were not built (block_attention registers its own Triton path). Returns whether
    fused_unmask's Triton path was registered."""
    if not torch.cuda.is_available():
        return False
    from .select_triton import register_select_cuda_kernel
    from .triton_lm_head_row_stats import register_lm_head_row_stats_cuda_kernel
    from .triton_row_stats import register_row_stats_cuda_kernel
    from .triton_speculative_verify import register_triton_cuda_kernel as register_verify

    register_select_cuda_kernel()
    register_row_stats_cuda_kernel()
    register_lm_head_row_stats_cuda_kernel()
    register_verify()
    if HAS_CUDA_KERNELS:
        return False
    from .triton_unmask import register_triton_cuda_kernel

    return register_triton_cuda_kernel()


TRITON_FALLBACK = register_triton_fallbacks()
