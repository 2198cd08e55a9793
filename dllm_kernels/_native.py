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


def has_native_kernel(op: str, key: str) -> bool:
    """Whether dllm::<op> already has a kernel for dispatch key `key` ("CPU", "CUDA"): one the
    native libraries registered, or one registered before (the op overload's public query)."""
    return getattr(torch.ops.dllm, op).default.has_kernel_for_dispatch_key(key)


def register_triton_fallbacks() -> bool:
    """On a CUDA machine: serve select, row_stats and speculative_verify on CUDA tensors with their
    Triton kernels (none has a native CUDA kernel), and fused_unmask too where the native CUDA
    kernels were not built (block_attention registers its own Triton path). select's and
    speculative_verify's registrations are decided here (their launcher modules do not import this
    one); row_stats' and fused_unmask's are still their launchers' register functions. Returns
    whether fused_unmask's Triton path was registered."""
    if not torch.cuda.is_available():
        return False
    from .select_triton import select_triton
    from .triton_row_stats import register_row_stats_cuda_kernel
    from .triton_speculative_verify import speculative_verify_triton

    for op, kernel in (("select", select_triton), ("speculative_verify", speculative_verify_triton)):
        if not has_native_kernel(op, "CUDA"):
            torch.library.register_kernel(f"dllm::{op}", "cuda", kernel)
    register_row_stats_cuda_kernel()
    if HAS_CUDA_KERNELS:
        return False
    from .triton_unmask import register_triton_cuda_kernel

    return register_triton_cuda_kernel()


TRITON_FALLBACK = register_triton_fallbacks()
