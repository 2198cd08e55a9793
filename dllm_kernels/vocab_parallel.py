"""Vocabulary-parallel unmasking over torch.distributed: each rank holds a shard of the LM head's
vocabulary and so a slice [B, R, V_local] of every logits row (docs/vocab_parallel.md).

One step: `row_stats` of the local slice (global ids, noise keyed by the global id) -> ONE
`all_gather_into_tensor` of the [B, R, C] partials with a metadata tail -> the same merge and
policy stage (`select` / `fused_unmask` with `row_stats=`) on every rank, so `x` and the state
end identical everywhere. O(B·R) bytes per step, never O(V); device ops only, no host sync on
CUDA (the metadata check is then `torch._assert_async`).

The metadata tail checks, in the same collective, that the ranks agree on B, R, the whole
vocabulary, the policy and every input the stage reads (a checksum of x, the state, the
parameters, ids ...), and that their shards tile [0, vocab_size) in rank order; a rank that
differs gets an error naming the disagreement instead of a silent divergence. A dead peer
surfaces as the collective's error after the group's timeout (init_process_group(timeout=...)).
"""
from __future__ import annotations

import hashlib
from typing import Optional, Sequence

import torch
import torch.distributed as dist

from .policy import CONF_KINDS, Policy
from .lm_head_row_stats import lm_head_row_stats
from .row_stats import row_positions, row_stats, row_temperatures
from .select import SelectResult, _bounds, _ids, _per_sequence_ids, select
from .state import DONE, END_POS, GEN_START, OFFSET, SEED, DecodeState
from .fused_unmask import UnmaskResult, fused_unmask

__all__ = ["vocab_parallel_select", "vocab_parallel_fused_unmask", "vocab_parallel_fused_unmask_from_hidden",
           "vocab_shard", "exchange_row_stats"]

# Metadata tail of every rank's message (float64, each value exact): a tag, the shapes, the shard,
# a 52-bit hash of the host-side policy and a 64-bit checksum (two 32-bit halves) of the inputs.
META = ("tag", "batch", "rows", "vocab_start", "vocab_local", "vocab_size", "policy_hash",
        "checksum_lo", "checksum_hi")
_TAG = 20241.0
# torch >= 2.10 names all_gather_into_tensor all_gather_single (the old name warns).
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_MIX = 0x9E3779B97F4A7C15 - 2 ** 64  # odd 64-bit constant (as int64)


def vocab_shard(vocab_size: int, world: int, rank: int):
    """(vocab_start, vocab_local) of `rank`'s contiguous shard: [0, vocab_size) in `world` shards
    as even as possible, the first `vocab_size % world` one id wider."""
    if not (1 <= world <= vocab_size and 0 <= rank < world):
        raise ValueError(f"vocab_shard: need 1 <= world <= vocab_size and 0 <= rank < world, got vocab_size "
                         f"{vocab_size}, world {world}, rank {rank}")
    base, extra = divmod(vocab_size, world)
    return rank * base + min(rank, extra), base + (1 if rank < extra else 0)


def _policy_hash(*items) -> float:
    digest = hashlib.sha1(repr(items).encode()).hexdigest()
    return float(int(digest[:13], 16))  # 52 bits: exact in float64


def _checksum(tensors: Sequence[Optional[torch.Tensor]], device) -> torch.Tensor:
    """[2] float64: a 64-bit mix of the bits of every tensor (None counts as absent), on the device."""
    h = torch.zeros((), dtype=torch.int64, device=device)
    for i, t in enumerate(tensors):
        if t is None:
            h = h * _MIX + (i + 1)
            continue
        t = t.detach().reshape(-1)
        bits = t.to(torch.float64).view(torch.int64) if t.is_floating_point() else t.to(torch.int64)
        w = torch.arange(1, bits.numel() + 1, dtype=torch.int64, device=device) * _MIX
        h = (h * _MIX + (bits.to(device) * w).sum() + bits.numel()) ^ (i + 1)  # int64 arithmetic wraps
    return torch.stack([(h & 0xFFFFFFFF), (h >> 32) & 0xFFFFFFFF]).to(torch.float64)


def _describe(meta: torch.Tensor) -> str:
    rows = []
    for rank, m in enumerate(meta.tolist()):
        d = dict(zip(META, m))
        rows.append(f"rank {rank}: B={int(d['batch'])} R={int(d['rows'])} vocab [{int(d['vocab_start'])}, "
                    f"{int(d['vocab_start'] + d['vocab_local'])}) of {int(d['vocab_size'])}, policy "
                    f"{int(d['policy_hash']):013x}, inputs {int(d['checksum_hi']):08x}{int(d['checksum_lo']):08x}")
    return "; ".join(rows)


def _check_meta(meta: torch.Tensor, op: str) -> None:
    """meta [W, len(META)]: every rank's tail. Raises (CPU) or asserts on the device (CUDA)."""
    col = {name: meta[:, i] for i, name in enumerate(META)}
    same = (meta[1:, [1, 2, 5, 6, 7, 8]] == meta[:1, [1, 2, 5, 6, 7, 8]]).all()
    end = col["vocab_start"] + col["vocab_local"]
    tiled = (col["vocab_start"][0] == 0) & (end[-1] == col["vocab_size"][0]) & (col["vocab_local"] >= 1).all()
    tiled = tiled & (col["vocab_start"][1:] == end[:-1]).all() & (col["tag"] == _TAG).all()
    if meta.device.type != "cpu":  # no host read: a device-side assert
        torch._assert_async(same & tiled, f"{op}: ranks disagree on shapes, policy or inputs, or their "
                                          "vocabulary shards do not tile [0, vocab_size) in rank order")
        return
    if not bool((col["tag"] == _TAG).all()):
        raise RuntimeError(f"{op}: a rank sent a message of another layout (a different dllm_kernels version "
                           f"or call?): {meta.tolist()}")
    if not bool(same):
        raise RuntimeError(f"{op}: ranks disagree on the batch, the rows, the vocabulary size, the policy or "
                           f"the inputs (x, state, parameters, ids must be identical on every rank): "
                           f"{_describe(meta)}")
    if not bool(tiled):
        raise RuntimeError(f"{op}: the ranks' vocabulary shards must tile [0, vocab_size) in rank order "
                           f"(a shard of the wrong width, or vocab_start out of order): {_describe(meta)}")


def _gather(send: torch.Tensor, group, world: int, op: str, B: int, R: int) -> torch.Tensor:
    """[W, n]: every rank's `send` [n] in rank order."""
    recv = send.new_empty(world * send.numel())  # the concatenation form (gloo takes no other)
    try:
        _all_gather(recv, send, group=group)
    except RuntimeError as e:
        raise RuntimeError(f"{op}: the all_gather of row statistics failed: a peer died or did not join within "
                           "the group's timeout (init_process_group(timeout=...)), or ranks sent different "
                           f"B x R ({B} x {R} here): {e}") from e
    return recv.view(world, -1)


def exchange_row_stats(local: torch.Tensor, *, group, vocab_start: int, vocab_local: int, vocab_size: int,
                       policy_hash: float, checksum: torch.Tensor, op: str = "vocab_parallel",
                       size_check: Optional[bool] = None) -> torch.Tensor:
    """[W, B, R, C]: every rank's partials in rank order, from one all_gather of the local [B, R, C]
    partials with the metadata tail, checked (see the module docstring). `size_check`: gather the
    shapes first (one more small collective and a host read), so that ranks of different B x R
    raise instead of sending payloads of different sizes, which gloo answers by aborting the
    process; default: on for CPU tensors (gloo), off on the device (one collective per step)."""
    B, R, C = local.shape
    world = dist.get_world_size(group)
    if size_check if size_check is not None else local.device.type == "cpu":
        shapes = _gather(torch.tensor([B, R, C], dtype=torch.float64, device=local.device), group, world, op, B, R)
        if not bool((shapes == shapes[:1]).all()):
            raise RuntimeError(f"{op}: ranks disagree on the shape of the row statistics (B, R, columns): " +
                               "; ".join(f"rank {r}: {[int(v) for v in row]}" for r, row in enumerate(shapes.tolist())))
    head = torch.tensor([_TAG, B, R, vocab_start, vocab_local, vocab_size, policy_hash], dtype=torch.float64)
    recv = _gather(torch.cat([local.reshape(-1), head.to(local.device), checksum.to(local.device)]), group, world,
                   op, B, R)
    _check_meta(recv[:, B * R * C:], op)
    return recv[:, :B * R * C].reshape(world, B, R, C).contiguous()


def _check_shard(op: str, logits: torch.Tensor, vocab_start: int, vocab_size: int) -> None:
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3:
        raise ValueError(f"{op}: logits must be this rank's shard [B, R, V_local]")
    _check_shard_range(op, logits.shape[-1], vocab_start, vocab_size)


def _check_shard_range(op: str, width: int, vocab_start: int, vocab_size: int) -> None:
    if not (isinstance(vocab_start, int) and isinstance(vocab_size, int)):
        raise TypeError(f"{op}: vocab_start and vocab_size must be ints")
    if not (0 <= vocab_start and vocab_start + width <= vocab_size):
        raise ValueError(f"{op}: the shard [{vocab_start}, {vocab_start + width}) must lie in "
                         f"[0, vocab_size = {vocab_size})")


def _global_ids(op: str, name: str, ids: Optional[torch.Tensor], vocab_size: int) -> None:
    if ids is not None and ids.device.type == "cpu" and ids.numel() and not bool(
            ((ids >= 0) & (ids < vocab_size)).all()):
        raise ValueError(f"{op}: {name} are global ids in [0, {vocab_size}), got {ids.tolist()}")


def vocab_parallel_select(logits: torch.Tensor, x: torch.Tensor, candidates: Optional[torch.Tensor] = None, *,
                          group, vocab_start: int, vocab_size: int, rule: str = "threshold",
                          conf: str = "prob", temperature=0.0, seed=None, offset=None,
                          generator: Optional[torch.Generator] = None, gumbel_u: Optional[torch.Tensor] = None,
                          suppress_ids=None, zero_conf_ids=None, shift: bool = False,
                          row_start: Optional[torch.Tensor] = None, bounds=None, size_check: Optional[bool] = None,
                          **select_kwargs) -> SelectResult:
    """`select` (docs/select.md) where `logits` [B, R, V_local] is this rank's shard of the
    vocabulary, ids [vocab_start, vocab_start + V_local) of `vocab_size`; call it on every rank
    of `group` with the same arguments otherwise. Returns what one process would (tokens exact,
    conf to float rounding) on every rank. `suppress_ids` / `zero_conf_ids` are global ids;
    `gumbel_u` is this rank's slice of the uniforms. Seeds drawn from `generator` (when sampling
    without `seed`) must agree across ranks: the check sees them. `size_check`: exchange_row_stats'."""
    op = "vocab_parallel_select"
    _check_shard(op, logits, vocab_start, vocab_size)
    if conf not in CONF_KINDS:
        raise ValueError(f"{op}: conf must be one of {sorted(CONF_KINDS)}, got {conf!r}")
    B, R, V_local = logits.shape
    device, L = logits.device, x.shape[-1]
    seed_t = _per_sequence_ids("seed", seed, B, device)
    offset_t = _per_sequence_ids("offset", offset, B, device)
    random = select_kwargs.get("random_remasking", False) or not (
        isinstance(temperature, (int, float)) and temperature == 0)
    if random and seed_t is None and gumbel_u is None and select_kwargs.get("rank_u") is None:
        gen_device = generator.device if generator is not None else torch.device("cpu")
        seed_t = torch.randint(-2 ** 63, 2 ** 63 - 1, (B,), generator=generator, dtype=torch.int64,
                               device=gen_device).to(device)
    sup, zero = _ids("suppress_ids", suppress_ids, device), _ids("zero_conf_ids", zero_conf_ids, device)
    _global_ids(op, "suppress_ids", sup, vocab_size)
    _global_ids(op, "zero_conf_ids", zero, vocab_size)
    temp = row_temperatures(temperature, B, device)
    # Rows no rule reads (outside the bounds, not a candidate) get position -1: not read.
    pos = row_positions(B, R, row_start=row_start, shift=shift, device=device)
    read = (pos >= 0) & (pos < L)
    cand = torch.ones(B, L, dtype=torch.bool, device=device) if candidates is None else candidates.to(device)
    read &= cand.gather(1, pos.clamp(0, L - 1))
    bnd = _bounds(bounds, B, device)
    if bnd is not None:
        read &= (pos >= bnd[:, :1]) & (pos < bnd[:, 1:])
    positions = torch.where(read, pos, torch.full_like(pos, -1))
    local = row_stats(logits, positions, seed=seed_t, offset=offset_t, temperature=temp, gumbel_u=gumbel_u,
                      suppress_ids=sup, conf=conf, vocab_start=vocab_start)
    params = {k: v for k, v in select_kwargs.items() if not isinstance(v, torch.Tensor) and k != "learned_filter"}
    tensors = [v for k, v in sorted(select_kwargs.items()) if isinstance(v, torch.Tensor)]
    lf = select_kwargs.get("learned_filter")
    if lf is not None:
        tensors += list(lf.tensors(device))
    policy_hash = _policy_hash(op, rule, conf, bool(shift), sorted(params.items()), lf is not None,
                               sorted(k for k, v in select_kwargs.items() if isinstance(v, torch.Tensor)),
                               None if isinstance(temperature, torch.Tensor) else float(temperature))
    checksum = _checksum([x, candidates, bnd, row_start, seed_t, offset_t, temp, sup, zero] + tensors, device)
    stats = exchange_row_stats(local, group=group, vocab_start=vocab_start, vocab_local=V_local,
                               vocab_size=vocab_size, policy_hash=policy_hash, checksum=checksum, op=op,
                               size_check=size_check)
    return select(None, x, candidates, rule=rule, conf=conf, temperature=temperature, seed=seed_t, offset=offset_t,
                  suppress_ids=sup, zero_conf_ids=zero, shift=shift, row_start=row_start, bounds=bnd,
                  row_stats=stats, vocab_size=vocab_size, **select_kwargs)


def _policy_key(policy: Policy, numbers) -> float:
    import dataclasses

    fields = [(f.name, getattr(policy, f.name)) for f in dataclasses.fields(policy) if f.name != "learned_filter"]
    return _policy_hash("vocab_parallel_fused_unmask", fields, policy.learned_filter is not None, numbers)


def vocab_parallel_fused_unmask(logits: torch.Tensor, x: torch.Tensor, state: DecodeState, policy: Policy, *,
                                group, vocab_start: int, vocab_size: int, mask_id: int, eos_id: int,
                                row_start: Optional[torch.Tensor] = None, gumbel_u: Optional[torch.Tensor] = None,
                                rank_u: Optional[torch.Tensor] = None, params=None, backend: str = "auto",
                                size_check: Optional[bool] = None) -> UnmaskResult:
    """`fused_unmask` (docs/fused_unmask.md) where `logits` [B, R, V_local] is this rank's shard of
    the vocabulary; every rank of `group` calls it with the same x, state and policy and ends with
    the same x and state as one process would. `policy`'s id lists are global ids; `gumbel_u` is
    this rank's slice; `params` (per-request overrides) goes to fused_unmask as given;
    `size_check`: exchange_row_stats'."""
    op = "vocab_parallel_fused_unmask"
    _check_shard(op, logits, vocab_start, vocab_size)

    def partials(positions, seed, offset, temperature, suppress_ids, conf):
        return row_stats(logits, positions, seed=seed, offset=offset, temperature=temperature, gumbel_u=gumbel_u,
                         suppress_ids=suppress_ids, conf=conf, vocab_start=vocab_start)

    return _fused_unmask_over_shards(op, partials, tuple(logits.shape), logits.device, x, state, policy, group=group,
                                     vocab_start=vocab_start, vocab_size=vocab_size, mask_id=mask_id, eos_id=eos_id,
                                     row_start=row_start, rank_u=rank_u, params=params, backend=backend,
                                     size_check=size_check)


def vocab_parallel_fused_unmask_from_hidden(hidden: torch.Tensor, lm_head: torch.Tensor, x: torch.Tensor,
                                            state: DecodeState, policy: Policy, *, group, vocab_start: int,
                                            vocab_size: int, mask_id: int, eos_id: int,
                                            row_start: Optional[torch.Tensor] = None,
                                            rank_u: Optional[torch.Tensor] = None, params=None,
                                            bias: Optional[torch.Tensor] = None, backend: str = "auto",
                                            size_check: Optional[bool] = None) -> UnmaskResult:
    """vocab_parallel_fused_unmask on the logits shard hidden [B, R, d] @ lm_head.T (+ bias), where
    `lm_head` [V_local, d] is this rank's rows of the LM head (global ids from `vocab_start`): each
    rank fuses its shard of the head with the statistics pass (lm_head_row_stats), so no rank forms
    even its shard of the logits; the exchange and the policy stage are vocab_parallel_fused_unmask's."""
    op = "vocab_parallel_fused_unmask_from_hidden"
    if not isinstance(hidden, torch.Tensor) or hidden.dim() != 3:
        raise ValueError(f"{op}: hidden must be a 3-D tensor [B, R, d]")
    if not isinstance(lm_head, torch.Tensor) or lm_head.dim() != 2:
        raise ValueError(f"{op}: lm_head must be this rank's shard [V_local, d] of the LM head")
    shape = (hidden.shape[0], hidden.shape[1], lm_head.shape[0])
    _check_shard_range(op, shape[2], vocab_start, vocab_size)

    def partials(positions, seed, offset, temperature, suppress_ids, conf):
        return lm_head_row_stats(hidden, lm_head, positions, bias=bias, seed=seed, offset=offset,
                                 temperature=temperature, suppress_ids=suppress_ids, conf=conf,
                                 vocab_start=vocab_start)

    return _fused_unmask_over_shards(op, partials, shape, hidden.device, x, state, policy, group=group,
                                     vocab_start=vocab_start, vocab_size=vocab_size, mask_id=mask_id, eos_id=eos_id,
                                     row_start=row_start, rank_u=rank_u, params=params, backend=backend,
                                     size_check=size_check)


def _fused_unmask_over_shards(op, partials, shape, device, x, state, policy, *, group, vocab_start, vocab_size,
                              mask_id, eos_id, row_start, rank_u, params, backend, size_check) -> UnmaskResult:
    """The rows to read, this rank's partials (`partials(positions, seed, offset, temperature,
    suppress_ids, conf)` -> [B, R, C]), the checked exchange, and fused_unmask on the merged partials."""
    if not isinstance(policy, Policy):
        raise TypeError(f"{op}: policy must be a dllm_kernels.Policy, got {type(policy).__name__}")
    if not isinstance(state, DecodeState):
        raise TypeError(f"{op}: state must be a dllm_kernels.DecodeState, got {type(state).__name__}")
    for name in ("suppress_ids", "zero_conf_ids", "delimiter_ids"):
        bad = [i for i in getattr(policy, name) if not 0 <= i < vocab_size]
        if bad:
            raise ValueError(f"{op}: policy.{name} are global ids in [0, {vocab_size}), got {bad}")
    B, R, V_local = shape
    L = x.shape[-1]
    st = state.state
    # A superset of the rows the op reads (docs/fused_unmask.md step 2): masked positions of the
    # generation region of a sequence not done. Every other row gets position -1: not read.
    pos = row_positions(B, R, row_start=row_start, shift=policy.shift, device=device)
    read = (pos >= 0) & (pos < L) & (x.gather(1, pos.clamp(0, L - 1)) == mask_id)
    read &= (pos >= st[:, GEN_START:GEN_START + 1]) & (pos < st[:, END_POS:END_POS + 1]) & (st[:, DONE:DONE + 1] == 0)
    positions = torch.where(read, pos, torch.full_like(pos, -1))
    t = (params or {}).get("temperature", policy.temperature)  # a per-request override draws its own noise
    temp = row_temperatures(t, B, device)
    local = partials(positions, st[:, SEED].contiguous(), st[:, OFFSET].contiguous(), temp,
                     list(policy.suppress_ids), policy.conf)
    lf = list(policy.learned_filter.tensors(device)) if policy.learned_filter is not None else []
    overrides = dict(params or {})
    numbers = sorted((k, v) for k, v in overrides.items() if not isinstance(v, torch.Tensor))
    tensors = [v for _, v in sorted((k, v) for k, v in overrides.items() if isinstance(v, torch.Tensor))]
    checksum = _checksum([x, st, state.conf, row_start, rank_u, torch.tensor([mask_id, eos_id])] + lf + tensors,
                         device)
    stats = exchange_row_stats(local, group=group, vocab_start=vocab_start, vocab_local=V_local,
                               vocab_size=vocab_size, policy_hash=_policy_key(policy, numbers), checksum=checksum,
                               op=op, size_check=size_check)
    extra = {} if params is None else dict(params=params)
    rows_only = torch.empty((B, R, 0), dtype=torch.float32, device=device)  # with row_stats, B and R only
    return fused_unmask(rows_only, x, state, policy, mask_id=mask_id, eos_id=eos_id, row_start=row_start,
                        rank_u=rank_u, backend=backend, row_stats=stats, vocab_size=vocab_size, **extra)
