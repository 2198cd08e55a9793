"""The model class of a checkpoint directory, chosen by its config.json's `architectures`."""
from __future__ import annotations

from .block_diffusion import FAMILIES, BlockDiffusion
from .checkpoint import read_config
from .dream import ARCHITECTURES as DREAM_ARCHITECTURES, Dream
from .llada import ARCHITECTURES as LLADA_ARCHITECTURES, LLaDA

__all__ = ["CLASSES", "load_model", "model_class"]

# architecture -> class; a config without `architectures` is LLaDA's (its training script writes none)
CLASSES = {**{a: LLaDA for a in LLADA_ARCHITECTURES}, **{a: Dream for a in DREAM_ARCHITECTURES},
           **{a: BlockDiffusion for a in FAMILIES}}


def model_class(path: str) -> type:
    """LLaDA, Dream or BlockDiffusion, from `path`/config.json."""
    arch = read_config(path, "model_class").get("architectures")
    if arch is None:
        return LLaDA
    if not (isinstance(arch, list) and len(arch) == 1 and arch[0] in CLASSES):
        raise ValueError(f"model_class: config.json in {path} has architectures {arch!r}: expected one of "
                         f"{sorted(CLASSES)}")
    return CLASSES[arch[0]]


def load_model(path: str, **kwargs):
    """`model_class(path).from_pretrained(path, **kwargs)` (dtype=, device=, tp_group=, ...)."""
    return model_class(path).from_pretrained(path, **kwargs)
