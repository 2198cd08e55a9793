"""Fake (meta) implementations: shapes and dtypes of each op's outputs, for torch.compile,
FakeTensor tracing and torch.library.opcheck."""
import torch


@torch.library.register_fake("dllm::fused_unmask")
def _fused_unmask_fake(logits, x, conf, state, *args, **kwargs):
    B, L = x.shape
    return (x.new_empty((B, L)), x.new_empty((B, L), dtype=torch.bool),
            x.new_empty((B, 3), dtype=torch.float32))
