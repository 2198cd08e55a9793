"""Loads the native libraries that register the dllm ops with the dispatcher, and registers the
Triton kernels for CUDA where an op has no native CUDA kernel (register_triton_kernels)."""
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


def register_triton_kernels() -> dict:
    """Registers each op's Triton launcher as its CUDA kernel where the op has none (select,
    row_stats, lm_head_row_stats and speculative_verify have no native CUDA kernel; fused_unmask
    has one when the CUDA library was built; block_attention registers its own Triton path). Decided here only, so
    no launcher module imports this one. Returns {op: whether its Triton kernel was registered}."""
    from .triton_select import triton_select
    from .triton_lm_head_row_stats import lm_head_row_stats_triton
    from .triton_row_stats import row_stats_triton
    from .triton_speculative_verify import speculative_verify_triton
    from .triton_fused_unmask import fused_unmask_triton

    kernels = {"select": triton_select, "row_stats": row_stats_triton, "lm_head_row_stats": lm_head_row_stats_triton,
               "speculative_verify": speculative_verify_triton, "fused_unmask": fused_unmask_triton}
    registered = {}
    for op, kernel in kernels.items():
        registered[op] = not has_native_kernel(op, "CUDA")
        if registered[op]:
            torch.library.register_kernel(f"dllm::{op}", "cuda", kernel)
    return registered


def register_triton_fallbacks() -> bool:
    """On a CUDA machine, the Triton kernels of the ops without a native CUDA one
    (register_triton_kernels). Returns whether fused_unmask's Triton path was registered."""
    if not torch.cuda.is_available():
        return False
    return register_triton_kernels()["fused_unmask"]


TRITON_FALLBACK = register_triton_fallbacks()
