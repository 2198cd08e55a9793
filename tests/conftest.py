"""Test set-up: Triton kernels run under the interpreter when no GPU is present."""
import os

import pytest
import torch

# Must happen before any module imports triton (the interpreter is chosen at import time).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (skipped without one)")
    config.addinivalue_line("markers", "slow: longer tests (still part of the default run)")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed_per_test(request):
    """Every test draws fresh random inputs, but from a seed derived from its own id, so a failure
    reproduces by rerunning that one test, independent of order. DLLM_TEST_SEED=<int> mixes in a
    different seed to explore other draws."""
    import random
    import zlib

    import numpy as np

    seed = zlib.crc32(request.node.nodeid.encode()) ^ int(os.environ.get("DLLM_TEST_SEED", "0"))
    torch.manual_seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)
    random.seed(seed)
