"""FSDP2 (``train.parallel: fsdp``): parameters, gradients and optimizer state sharded across ranks.

``ShardedModel`` keeps two views of one model. The *sharded* copy trains: ``fully_shard`` on every
block (each item of the model's top-level ``nn.ModuleList`` s) and on the root, with
``MixedPrecisionPolicy(bf16 params, fp32 reductions)`` on CUDA. The trainer's own *plain* model is
refreshed from it (a full state dict gathered onto every rank) before an evaluation, a checkpoint or
the causality audit, so those paths run unchanged: evaluation windows stay split across ranks with no
per-forward collectives, the audit's gradient probes never touch sharded hooks, and a checkpoint is
written from the plain model and a full optimizer state in exactly the single-process format. A run
directory trained with FSDP therefore looks like one trained with DDP, and resumes the same way.

Cost of that choice: each rank holds one full fp32 copy of the weights (no gradients, no optimizer
state) beside its shards, and builds the whole model once before sharding. The saving over DDP is the
gradients and the optimizer state (12 of DDP's 16 bytes per parameter with AdamW), divided by the
number of ranks.

Muon under FSDP (``ShardedMuon``): Newton–Schulz needs each whole momentum matrix, which FSDP splits
row-wise across ranks, so each one is all-gathered, every rank runs the (batched) iteration on the full
matrices, and keeps the rows of its own shard. The update is single-process Muon's (up to float
rounding); the cost is one all-gather of the hidden matrices per step and the Newton–Schulz FLOPs repeated
on every rank (as under DDP), while momentum buffers stay sharded.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, cast

import torch
from torch import nn

from lumi.errors import LumiError
from lumi.models.base import LumiModel
from lumi.train.distributed import DistInfo
from lumi.train.optim import Muon, OptimizerSet


def require_processes(parallel: str, info: DistInfo) -> None:
    """One-line LumiError for ``train.parallel=fsdp`` in a single process (nothing to shard across)."""
    if parallel == "fsdp" and not info.enabled:
        raise LumiError(
            "train.parallel=fsdp needs several processes: start it with torchrun --nproc_per_node N "
            "(N >= 2), or use train.parallel=ddp (the default) for one process"
        )


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The blocks to shard one by one: items of every ``nn.ModuleList`` not nested in another one
    (a Llama's ``blocks``; the experts inside a block stay with their block)."""
    units: list[nn.Module] = []

    def walk(module: nn.Module) -> None:
        for child in module.children():
            if isinstance(child, nn.ModuleList):
                units.extend(m for m in child if any(p.requires_grad for p in m.parameters()))
            else:
                walk(child)

    walk(model)
    return units


class ShardedModel:
    """A sharded training copy of ``plain`` and the plumbing between the two (see the module docstring)."""

    def __init__(self, plain: LumiModel, info: DistInfo, mixed_precision: torch.dtype | None) -> None:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        self.info = info
        self.module: LumiModel = copy.deepcopy(plain)
        policy = (
            MixedPrecisionPolicy(param_dtype=mixed_precision, reduce_dtype=torch.float32)
            if mixed_precision is not None
            else MixedPrecisionPolicy()
        )
        try:
            for unit in shard_units(self.module):
                fully_shard(unit, mp_policy=policy)
            fully_shard(self.module, mp_policy=policy)
            # A parameter one rank did not use this step (an expert no token was routed to) must still take
            # part in the reduce-scatter, as a zero gradient: otherwise the ranks' collectives differ in size.
            self.module.set_reduce_scatter_unused_params(True)  # type: ignore[operator]  # added by fully_shard
        except (ValueError, RuntimeError, AssertionError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise LumiError(
                f"train.parallel=fsdp cannot shard {type(plain).__name__}: {first}; use train.parallel=ddp"
            ) from None

    # -- training ------------------------------------------------------------------------------------
    def set_gradient_sync(self, sync: bool) -> None:
        """Off for all but the last accumulation micro-batch: gradients accumulate unsharded, then one
        reduce-scatter (the FSDP2 counterpart of DDP's ``no_sync``)."""
        self.module.set_requires_gradient_sync(sync)  # type: ignore[operator]  # added by fully_shard

    def adopt_optimizer(
        self, plain_state: dict[str, Any], build: Callable[[nn.Module], OptimizerSet]
    ) -> OptimizerSet:
        """An optimizer over the sharded parameters, holding ``plain_state`` (the plain optimizer's
        state_dict: empty for a fresh run, the checkpoint's for a resumed one)."""
        optimizer = build(self.module)
        if "muon" in optimizer.optimizers:
            plain_muon = cast(Muon, optimizer.optimizers["muon"])
            optimizer.optimizers["muon"] = ShardedMuon(plain_muon.param_groups, batched=plain_muon.batched)
        if any(part.get("state") for part in plain_state.values()):
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            for name, opt in optimizer.optimizers.items():
                set_optimizer_state_dict(
                    self.module,
                    opt,
                    _by_name(plain_state[name], self._names(opt)),
                    options=StateDictOptions(full_state_dict=True),
                )
        return optimizer

    # -- full state for evaluation, checkpoints and the audit -------------------------------------
    def copy_weights_to(self, plain: nn.Module) -> None:
        """Every rank: gather the full weights and load them into ``plain`` (a collective)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(self.module, options=StateDictOptions(full_state_dict=True))
        plain.load_state_dict(full)

    def full_optimizer_state(self, optimizer: OptimizerSet) -> dict[str, Any]:
        """The optimizer state in the plain ``OptimizerSet.state_dict()`` format, on rank 0 (CPU);
        empty on the other ranks. A collective: every rank calls it."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        out: dict[str, Any] = {}
        for name, opt in optimizer.optimizers.items():
            full = get_optimizer_state_dict(
                self.module, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
            )
            if self.info.is_main:
                out[name] = _by_index(full)
        return out

    def _names(self, opt: torch.optim.Optimizer) -> list[str]:
        """Parameter names in the order ``opt`` numbers them (group by group)."""
        name_of = {id(p): n for n, p in self.module.named_parameters()}
        return [name_of[id(p)] for group in opt.param_groups for p in group["params"]]


class ShardedMuon(Muon):
    """Muon over FSDP2-sharded matrices: each momentum matrix is gathered whole for the Newton–Schulz step
    (every rank computes the same update) and each rank applies the rows of its own shard."""

    def _orthogonalized(self, moms: list[torch.Tensor], steps: int) -> list[torch.Tensor]:
        from torch.distributed.tensor import DTensor, distribute_tensor

        if not moms or not isinstance(moms[0], DTensor):
            return super()._orthogonalized(moms, steps)
        sharded = cast("list[DTensor]", moms)
        updates = super()._orthogonalized([m.full_tensor() for m in sharded], steps)
        # Every rank holds the same full update: slicing out its own rows needs no communication.
        return [
            distribute_tensor(u.reshape(m.shape), m.device_mesh, m.placements, src_data_rank=None)
            for u, m in zip(updates, sharded, strict=True)
        ]


def _by_name(state: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """torch's index-keyed optimizer state_dict -> the name-keyed form torch.distributed.checkpoint loads."""
    groups = []
    for group in state["param_groups"]:
        groups.append({**group, "params": [names[i] for i in group["params"]]})
    return {"state": {names[int(i)]: v for i, v in state["state"].items()}, "param_groups": groups}


def _by_index(state: dict[str, Any]) -> dict[str, Any]:
    """The name-keyed full optimizer state -> torch's index-keyed ``Optimizer.state_dict()`` form (indices
    numbered over the groups in order, as torch numbers them), so a checkpoint's optimizer.pt is the same
    whether FSDP wrote it or not."""
    index: dict[str, int] = {}
    groups = []
    for group in state["param_groups"]:
        ids = []
        for name in group["params"]:
            index.setdefault(name, len(index))
            ids.append(index[name])
        groups.append({**group, "params": ids})
    return {"state": {index[n]: v for n, v in state["state"].items()}, "param_groups": groups}
