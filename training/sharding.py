"""FSDP2 (``torch.distributed.fsdp.fully_shard``) for the trainers, with checkpoints that stay full.

``--shard ddp`` (default) replicates every trained model and averages gradients (``distributed.wrap_ddp``).
``--shard fsdp2`` shards parameters, gradients and optimizer states over the ranks instead: every transformer
block is its own FSDP2 unit (all-gathered just before its forward/backward, freed after), the rest (patch
embedding, head, ...) is the root unit. Gradients are reduce-scattered as averages, so N ranks x B samples
still update like one process with N*B samples (tests/unit/test_distill_fsdp.py checks it on gloo ranks).

Checkpoints are the same files as under DDP or one process: :class:`FSDPStateIO` gathers full (unsharded)
model and optimizer state dicts onto rank 0 for writing (``torch.distributed.checkpoint.state_dict`` with
``full_state_dict``) and turns the optimizer's parameter names back into the plain integer indices of
``optimizer.state_dict()``; loading goes the other way on every rank (each reads the files itself). So a run
can be resumed under another ``--shard`` or world size, and the exported weights are the DDP path's format.

A world of one shards nothing (like ``wrap_ddp``), and then the plain :class:`StateIO` is used.
"""
from __future__ import annotations

import copy

import torch

from . import distributed as D

SHARD_MODES = ("ddp", "fsdp2")


def _fsdp():
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError as e:  # torch < 2.6 has it only as torch.distributed._composable.fsdp
        raise RuntimeError(f"--shard fsdp2 needs torch.distributed.fsdp.fully_shard (torch >= 2.6); this is torch "
                           f"{torch.__version__}: use --shard ddp") from e
    return fully_shard


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def shard_blocks(module: torch.nn.Module, info: D.DistInfo) -> torch.nn.Module:
    """FSDP2 in place: one unit per entry of ``module.blocks``, then the root. Returns ``module`` (whose class
    FSDP2 swapped; its parameters are now DTensor shards). Unchanged for a world of one."""
    if info.world_size == 1:
        return module
    fully_shard = _fsdp()
    blocks = getattr(module, "blocks", None)
    if not isinstance(blocks, torch.nn.ModuleList) or not len(blocks):
        raise ValueError(f"--shard fsdp2 shards per transformer block, but {type(module).__name__} has no "
                         f"`blocks` ModuleList; use --shard ddp")
    for block in blocks:
        fully_shard(block)
    fully_shard(module)
    return module


def is_sharded(module: torch.nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in module.parameters())


class StateIO:
    """Checkpoint state of unsharded (or DDP-replicated) modules; what :class:`~training.runner.Runner` uses.
    ``model_state`` / ``optimizer_state`` are called on every rank; only rank 0's result is written."""

    def __init__(self, info: D.DistInfo):
        self.info = info

    def model_state(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        if not self.info.is_main:
            return {}
        return {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}

    def load_model(self, model: torch.nn.Module, sd: dict[str, torch.Tensor]) -> None:
        model.load_state_dict(sd, strict=True)

    def optimizer_state(self, opt: torch.optim.Optimizer) -> dict:
        return opt.state_dict() if self.info.is_main else {}

    def load_optimizer(self, opt: torch.optim.Optimizer, sd: dict) -> None:
        opt.load_state_dict(sd)


class FSDPStateIO(StateIO):
    """Full state dicts of FSDP2-sharded modules, in :class:`StateIO`'s format. ``owners`` pairs each
    optimizer with the module whose parameters it steps (names of the optimizer state come from it)."""

    def __init__(self, info: D.DistInfo, owners: list[tuple[torch.optim.Optimizer, torch.nn.Module]]):
        super().__init__(info)
        self.owners = list(owners)

    def _owner(self, opt: torch.optim.Optimizer) -> torch.nn.Module:
        for o, m in self.owners:
            if o is opt:
                return m
        raise KeyError("FSDPStateIO: an optimizer without an owning module (pass it in `owners`)")

    @staticmethod
    def _names(opt: torch.optim.Optimizer, module: torch.nn.Module) -> list[str]:
        """Parameter names in the optimizer's order: index i of ``opt.state_dict()`` is names[i]."""
        by_id = {id(p): n for n, p in module.named_parameters()}
        try:
            return [by_id[id(p)] for g in opt.param_groups for p in g["params"]]
        except KeyError:
            raise ValueError("FSDPStateIO: the optimizer steps parameters its owner module does not hold") from None

    def model_state(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        sd = get_model_state_dict(model, options=_options(cpu_offload=True))  # a collective; rank 0 gets it all
        return {k: v.detach().contiguous() for k, v in sd.items()} if self.info.is_main else {}

    def load_model(self, model: torch.nn.Module, sd: dict[str, torch.Tensor]) -> None:
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        set_model_state_dict(model, sd, options=_options(strict=True))

    def optimizer_state(self, opt: torch.optim.Optimizer) -> dict:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        module = self._owner(opt)
        full = get_optimizer_state_dict(module, opt, options=_options(cpu_offload=True))
        if not self.info.is_main:
            return {}
        names = self._names(opt, module)
        index = {n: i for i, n in enumerate(names)}
        groups, start = [], 0
        for g_full, g in zip(full["param_groups"], opt.param_groups):
            n = len(g["params"])
            groups.append({**{k: v for k, v in g_full.items() if k != "params"}, "params": list(range(start, start + n))})
            start += n
        return {"state": {index[n]: st for n, st in full["state"].items()}, "param_groups": groups}

    def load_optimizer(self, opt: torch.optim.Optimizer, sd: dict) -> None:
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        module = self._owner(opt)
        names = self._names(opt, module)
        full = {"state": {names[int(i)]: st for i, st in sd["state"].items()},
                "param_groups": [{**g, "params": [names[int(i)] for i in g["params"]]} for g in sd["param_groups"]]}
        set_optimizer_state_dict(module, opt, full, options=_options())


def gathered_copy(module: torch.nn.Module, template: torch.nn.Module, info: D.DistInfo) -> torch.nn.Module | None:
    """An unsharded copy of a sharded ``module`` on rank 0 (``template``: an unsharded module of the same
    architecture, e.g. the replicated teacher; it is deep-copied, not changed). Every rank must call this
    (it gathers); the other ranks get ``None``."""
    sd = FSDPStateIO(info, []).model_state(module)
    if not info.is_main:
        return None
    plain = copy.deepcopy(template)
    plain.load_state_dict(sd, strict=True)
    return plain
