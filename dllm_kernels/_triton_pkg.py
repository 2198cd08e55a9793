"""Import of the repo's triton_kernels/ as `dllm_kernels.triton_kernels`.

setup.py's `package_dir` installs that folder under this name (wheel and editable install). It
cannot serve a source checkout used in place (tests run from a clone or worktree): there is no
`dllm_kernels/triton_kernels/` directory, and an editable install of another checkout would map the
name to that checkout's kernels. So a checkout maps its own folder here, never as a top-level
`triton_kernels` (which would shadow OpenAI's package of that name). Moving the folder to
`dllm_kernels/triton_kernels/` would make this module and the `package_dir` entry unnecessary.
"""
import importlib
import importlib.util
import sys
from pathlib import Path

PACKAGE = "dllm_kernels.triton_kernels"


def triton_kernels_module(submodule: str):
    """`dllm_kernels.triton_kernels.<submodule>`, importing the package on first use: from this
    source checkout when it is one (an editable install elsewhere must not supply other kernels),
    else the installed package."""
    if PACKAGE not in sys.modules:
        root = Path(__file__).resolve().parent.parent
        source = root / "triton_kernels"
        if (root / "setup.py").exists() and (source / "__init__.py").exists():
            spec = importlib.util.spec_from_file_location(PACKAGE, source / "__init__.py",
                                                          submodule_search_locations=[str(source)])
            module = importlib.util.module_from_spec(spec)
            sys.modules[PACKAGE] = module
            spec.loader.exec_module(module)
        else:
            importlib.import_module(PACKAGE)
    return importlib.import_module(f"{PACKAGE}.{submodule}")
