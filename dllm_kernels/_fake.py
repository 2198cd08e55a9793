"""Fake (meta) implementations: shapes and dtypes of each op's outputs, for torch.compile,
FakeTensor tracing and torch.library.opcheck. They check what can be checked without data
(devices and shapes), so a traced program fails at trace time like the eager op would."""
import torch

def _tensor_names(op) -> tuple:
    """Names of the op's tensor arguments, in schema order (the schema is written once, in C++)."""
    return tuple(a.name for a in op.default._schema.arguments if "Tensor" in str(a.type))


@torch.library.register_fake("dllm::fused_unmask")
def _fused_unmask_fake(logits, x, conf, state, mask_id, eos_id, *args, **kwargs):
    names = _tensor_names(torch.ops.dllm.fused_unmask)
    optional = dict(zip(names[4:], args), **{k: v for k, v in kwargs.items() if k in names})
    for name, t in dict(zip(names, (logits, x, conf, state)), **optional).items():
        if isinstance(t, torch.Tensor) and t.device != logits.device:
            raise RuntimeError(f"fused_unmask: {name} is on {t.device} but logits is on {logits.device}")
    if logits.dim() != 3 or x.dim() != 2 or x.shape[0] != logits.shape[0]:
        raise RuntimeError(f"fused_unmask: x must be [B, L] with B = {logits.shape[0] if logits.dim() else '?'}, "
                           f"got {tuple(x.shape)}")
    if tuple(conf.shape) != tuple(x.shape):
        raise RuntimeError(f"fused_unmask: conf must have shape {tuple(x.shape)}, got {tuple(conf.shape)}")
    B, L = x.shape
    params = optional.get("params")
    if params is not None and (params.dim() != 2 or params.shape[0] != B or params.dtype != torch.float64):
        raise RuntimeError(f"fused_unmask: params must be [B, P] float64 with B = {B}, got "
                           f"{tuple(params.shape)} {params.dtype}")
    if logits.shape[1] > L:
        raise RuntimeError(f"fused_unmask: logits has R = {logits.shape[1]} rows, more than the L = {L} "
                           "positions of x (need R <= L)")
    return (x.new_empty((B, L)), x.new_empty((B, L), dtype=torch.bool),
            x.new_empty((B, 3), dtype=torch.float32))


_SELECT_TENSORS = ("logits", "x", "candidates", "params", "bounds", "row_start", "seed", "offset", "gumbel_u",
                   "rank_u", "prev_conf", "suppress_ids", "zero_conf_ids", "filter_w1", "filter_b1", "filter_w2",
                   "filter_b2")


@torch.library.register_fake("dllm::select")
def _select_fake(logits, x, *args, **kwargs):
    tensors = (logits, x) + args[:len(_SELECT_TENSORS) - 2]
    for name, t in zip(_SELECT_TENSORS, tensors):
        if isinstance(t, torch.Tensor) and t.device != logits.device:
            raise RuntimeError(f"select: {name} is on {t.device} but logits is on {logits.device}")
    if logits.dim() != 3 or x.dim() != 2 or x.shape[0] != logits.shape[0]:
        raise RuntimeError(f"select: x must be [B, L] with B = {logits.shape[0] if logits.dim() else '?'}, "
                           f"got {tuple(x.shape)}")
    B, L = x.shape
    return (x.new_empty((B, L)), x.new_empty((B, L), dtype=torch.float32),
            x.new_empty((B, L), dtype=torch.bool))


# Columns of a partial row statistic, as the native library defines them (include/dllm/row_partial.h).
ROW_PARTIAL_COLS = len(torch.ops.dllm.row_stats_layout()[0])


@torch.library.register_fake("dllm::row_stats")
def _row_stats_fake(logits, positions, seed=None, offset=None, temperature=None, gumbel_u=None, suppress_ids=None,
                    conf_kind=0, vocab_start=0):
    for name, t in (("positions", positions), ("seed", seed), ("offset", offset), ("temperature", temperature),
                    ("gumbel_u", gumbel_u), ("suppress_ids", suppress_ids)):
        if t is not None and t.device != logits.device:
            raise RuntimeError(f"row_stats: {name} is on {t.device} but logits is on {logits.device}")
    if logits.dim() != 3 or tuple(positions.shape) != tuple(logits.shape[:2]):
        raise RuntimeError(f"row_stats: positions must have shape {list(logits.shape[:2])}, got {list(positions.shape)}")
    B, R, _ = logits.shape
    return logits.new_empty((B, R, ROW_PARTIAL_COLS), dtype=torch.float64)


_VERIFY_TENSORS = ("target_logits", "draft_tokens", "draft_probs", "draft_lens", "seed", "offset")


@torch.library.register_fake("dllm::speculative_verify")
def _speculative_verify_fake(target_logits, draft_tokens, draft_probs, draft_lens, seed, offset, temperature=0.0,
                             draft_is_logits=False):
    tensors = (target_logits, draft_tokens, draft_probs, draft_lens, seed, offset)
    for name, t in zip(_VERIFY_TENSORS[1:], tensors[1:]):
        if t.device != target_logits.device:
            raise RuntimeError(f"speculative_verify: {name} is on {t.device} but target_logits is on "
                               f"{target_logits.device}")
    if target_logits.dim() != 3 or target_logits.shape[1] < 1:
        raise RuntimeError("speculative_verify: target_logits must be 3-D [B, K+1, V] with K+1 >= 1")
    B, K1, V = target_logits.shape
    for name, t, shape in (("draft_tokens", draft_tokens, (B, K1 - 1)), ("draft_probs", draft_probs, (B, K1 - 1, V)),
                           ("draft_lens", draft_lens, (B,)), ("seed", seed, (B,)), ("offset", offset, (B,))):
        if tuple(t.shape) != shape:
            raise RuntimeError(f"speculative_verify: {name} must have shape {list(shape)}, got {list(t.shape)}")
    return draft_tokens.new_empty((B,)), draft_tokens.new_empty((B, K1))


@torch.library.register_fake("dllm::lm_head_row_stats")
def _lm_head_row_stats_fake(hidden, weight, bias, positions, seed=None, offset=None, temperature=None,
                            suppress_ids=None, conf_kind=0, vocab_start=0):
    for name, t in (("weight", weight), ("bias", bias), ("positions", positions), ("seed", seed), ("offset", offset),
                    ("temperature", temperature), ("suppress_ids", suppress_ids)):
        if t is not None and t.device != hidden.device:
            raise RuntimeError(f"lm_head_row_stats: {name} is on {t.device} but hidden is on {hidden.device}")
    if hidden.dim() != 3 or weight.dim() != 2 or weight.shape[1] != hidden.shape[2]:
        raise RuntimeError(f"lm_head_row_stats: weight must be [V, d = {hidden.shape[-1]}], got {list(weight.shape)}")
    if tuple(positions.shape) != tuple(hidden.shape[:2]):
        raise RuntimeError(f"lm_head_row_stats: positions must have shape {list(hidden.shape[:2])}, "
                           f"got {list(positions.shape)}")
    B, R, _ = hidden.shape
    return hidden.new_empty((B, R, ROW_PARTIAL_COLS), dtype=torch.float64)
