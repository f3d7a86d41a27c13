"""torch.distributed helpers for the trainers (``torchrun`` or a plain single process).

Launch: ``torchrun --nproc_per_node=N iasa_cli.py training.teacher_train ...`` sets RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR/PORT; :func:`init_distributed` reads them (NCCL on CUDA, gloo on CPU). Without
them it is a world of one and nothing is initialised.

Data parallelism in the trainers: every rank draws the same *global* batch from one shared seeded
generator and keeps its own slice (:func:`rank_slice`), and DDP averages gradients, so N ranks x B
samples update the weights like one process with N*B samples (a unit test checks this).
"""
from __future__ import annotations

import datetime
import logging
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialised: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(pref: str = "auto", local_rank: int = 0) -> torch.device:
    if pref == "auto":
        pref = "cuda" if torch.cuda.is_available() else "cpu"
    if pref == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda asked for, but CUDA is not available; use --device cpu")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    if pref != "cpu":
        raise ValueError(f"--device must be auto, cuda or cpu, got {pref!r}")
    return torch.device("cpu")


def init_distributed(device: str = "auto", timeout_s: float = 600.0) -> DistInfo:
    """Read torchrun's environment, pick the device, init the process group when world size > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local)
    info = DistInfo(rank=rank, world_size=world, local_rank=local, device=dev)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs = {"device_id": dev} if dev.type == "cuda" else {}
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
        info.initialised = True
    setup_logging(info)
    return info


def setup_logging(info: DistInfo, level: int = logging.INFO) -> None:
    """Rank 0 logs INFO to stderr; other ranks only warnings (tagged with their rank)."""
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s" if info.is_main else \
        f"%(asctime)s %(levelname)s [rank {info.rank}] %(name)s: %(message)s"
    root = logging.getLogger()
    if not root.handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter(fmt, "%H:%M:%S"))
        root.addHandler(h)
    root.setLevel(level if info.is_main else logging.WARNING)


def cleanup(info: DistInfo) -> None:
    """Tear the process group down together: a rank that destroys its gloo group while another is still
    working (rank 0 exporting weights) can abort at exit ("terminate called without an active exception")."""
    if info.initialised and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def exit_after_torchrun() -> None:
    """End a finished torchrun worker without running C++ destructors: even after :func:`cleanup`, a gloo rank
    can abort at interpreter exit ("terminate called without an active exception", seen once on a loaded
    2-core CI machine after every file was written), which fails the whole launch. Only under torchrun."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def barrier(info: DistInfo) -> None:
    if info.world_size > 1:
        dist.barrier()


def all_reduce_mean(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean over ranks (in place on a copy); identity for a world of one."""
    if info.world_size == 1:
        return t
    t = t.clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t / info.world_size


def broadcast_flag(flag: bool, info: DistInfo) -> bool:
    """Rank 0's decision for everyone (e.g. 'time is up'): one tiny collective, a host sync."""
    if info.world_size == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=info.device)
    dist.broadcast(t, src=0)
    return bool(t.item() > 0.5)


def broadcast_int(value: int, info: DistInfo) -> int:
    """Rank 0's integer for everyone."""
    if info.world_size == 1:
        return int(value)
    t = torch.tensor([int(value)], dtype=torch.int64, device=info.device)
    dist.broadcast(t, src=0)
    return int(t.item())


def rank_slice(global_batch: int, info: DistInfo) -> slice:
    if global_batch % info.world_size:
        raise ValueError(f"global batch {global_batch} must be divisible by the world size {info.world_size}")
    per = global_batch // info.world_size
    return slice(info.rank * per, (info.rank + 1) * per)


def wrap_ddp(module: torch.nn.Module, info: DistInfo) -> torch.nn.Module:
    if info.world_size == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [info.device.index] if info.device.type == "cuda" else None
    return DDP(module, device_ids=ids, broadcast_buffers=False)


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    return module.module if hasattr(module, "module") and isinstance(module, torch.nn.parallel.DistributedDataParallel) else module


@torch.no_grad()
def params_in_sync(module: torch.nn.Module, info: DistInfo) -> bool:
    """True when every rank holds bit-identical parameters (compares rank 0's copy)."""
    if info.world_size == 1:
        return True
    flat = torch.cat([p.detach().float().flatten() for p in unwrap(module).parameters()])
    ref = flat.clone()
    dist.broadcast(ref, src=0)
    same = torch.tensor([1.0 if torch.equal(flat, ref) else 0.0], device=flat.device)
    dist.all_reduce(same, op=dist.ReduceOp.MIN)
    return bool(same.item() > 0.5)
