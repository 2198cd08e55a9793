"""Loads the native libraries that register the dllm ops with the dispatcher."""
import warnings

from . import _C  # noqa: F401  (registers the op schemas and the CPU kernels)

try:  # CUDA kernels: built only where nvcc was found; loading needs the CUDA runtime.
    from . import _C_cuda  # noqa: F401

    HAS_CUDA_KERNELS = True
except ImportError as exc:  # pragma: no cover - depends on the build machine
    HAS_CUDA_KERNELS = False
    CUDA_KERNELS_ERROR = str(exc)
