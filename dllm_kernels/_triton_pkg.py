"""Import of the repo's triton_kernels/ as `dllm_kernels.triton_kernels`.

setup.py installs that folder under this name; in a source checkout that is not installed it is
mapped here the same way, never as a top-level `triton_kernels` (which would shadow OpenAI's
package of that name).
"""
import importlib
import importlib.util
import sys
from pathlib import Path

PACKAGE = "dllm_kernels.triton_kernels"


def triton_kernels_module(submodule: str):
    """`dllm_kernels.triton_kernels.<submodule>`, importing the package on first use."""
    if PACKAGE not in sys.modules:
        try:
            importlib.import_module(PACKAGE)
        except ModuleNotFoundError:
            root = Path(__file__).resolve().parent.parent / "triton_kernels"
            spec = importlib.util.spec_from_file_location(PACKAGE, root / "__init__.py",
                                                          submodule_search_locations=[str(root)])
            if spec is None or not (root / f"{submodule}.py").exists():
                raise
            module = importlib.util.module_from_spec(spec)
            sys.modules[PACKAGE] = module
            spec.loader.exec_module(module)
    return importlib.import_module(f"{PACKAGE}.{submodule}")
