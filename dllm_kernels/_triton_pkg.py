"""Import of the repo's triton_kernels/ as `dllm_kernels.triton_kernels`.

setup.py installs that folder under this name; in a source checkout it is mapped here the same
way, never as a top-level `triton_kernels` (which would shadow OpenAI's package of that name).
"""
import importlib
import importlib.util
import sys
from pathlib import Path

PACKAGE = "dllm_kernels.triton_kernels"


def triton_kernels_module(submodule: str):
    """`dllm_kernels.triton_kernels.<submodule>`, importing the package on first use. A source checkout
    (a triton_kernels/ folder beside this package) maps its own folder, even where another checkout is
    installed in editable mode, so the kernels always match the Python code that launches them."""
    if PACKAGE not in sys.modules:
        root = Path(__file__).resolve().parent.parent / "triton_kernels"
        if (root / "__init__.py").exists():
            spec = importlib.util.spec_from_file_location(PACKAGE, root / "__init__.py",
                                                          submodule_search_locations=[str(root)])
            module = importlib.util.module_from_spec(spec)
            sys.modules[PACKAGE] = module
            spec.loader.exec_module(module)
        else:
            importlib.import_module(PACKAGE)
    return importlib.import_module(f"{PACKAGE}.{submodule}")
