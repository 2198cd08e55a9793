"""Running a test body on W CPU processes (gloo over a file:// store, spawned here), each run
bounded in time: a rank that hangs fails the test instead of hanging it."""
import datetime
import os
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _entry(rank, fn, world, init_file, group_timeout_s, debug_detail, end_barrier, args):
    torch.set_num_threads(1)
    if debug_detail:  # torch.distributed checks every collective's shapes across ranks first
        os.environ["TORCH_DISTRIBUTED_DEBUG"] = "DETAIL"
        dist.set_debug_level_from_env()  # read at import otherwise
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=group_timeout_s))
    try:
        fn(rank, world, *args)
        if end_barrier:  # no rank tears its group down while a peer may still be inside a collective
            dist.barrier()
    finally:
        dist.destroy_process_group()
    # Skip interpreter finalization: gloo's worker threads can abort the process (SIGABRT,
    # "terminate called without an active exception") while Python is being torn down, after the
    # body has passed. A failing body raised above and never gets here.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_ranks(fn, world: int, *args, tmp_path, timeout_s: float = 240.0, group_timeout_s: float = 60.0,
              debug_detail: bool = False, end_barrier: bool = True):
    """fn(rank, world, *args) on `world` spawned processes (module-level fn: it is pickled). A
    rank's exception fails the test with its traceback; ranks still running after `timeout_s`
    (process start included: importing torch on a loaded machine is slow) are killed and fail it.
    `end_barrier=False` for a body that leaves its group broken (a peer that never joins)."""
    init_file = os.path.join(str(tmp_path), f"init_{world}_{time.monotonic_ns()}")
    ctx = mp.start_processes(_entry, args=(fn, world, init_file, group_timeout_s, debug_detail, end_barrier, args), nprocs=world,
                             join=False, start_method="spawn")
    deadline = time.monotonic() + timeout_s
    while not ctx.join(timeout=max(0.5, deadline - time.monotonic())):
        if time.monotonic() >= deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            raise AssertionError(f"{world} ranks did not finish within {timeout_s} s (a hang)")
