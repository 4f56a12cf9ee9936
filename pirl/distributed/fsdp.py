"""Sharded PPO update: PyTorch FSDP2 (``fully_shard``) over the learner ranks' process group.

Every rank holds a sharded replica of the policy: each parameter is split along its first
dimension, one slice per rank, and so are its gradients and AdamW state. FSDP all-gathers a
unit's weights for its forward and backward and reduce-scatters its gradients during backward.

Units: every *leaf* module with at least ``min_unit_params`` parameters is its own unit; the
rest (small leaves, parameters held directly by containers such as positional embeddings) is
the root unit, gathered for the whole ``evaluate``. Leaves rather than blocks because FSDP only
sees ``forward`` calls, and VLA-mini and π0 drive their layers through other methods
(``keys_values``, ``qkv``, ``finish``), which would meet sharded weights.

The update loop is DistributedPPOUpdater's (same shares, same weight-0 filler passes, which
matter here: every forward is a collective); gradients are summed over ranks (divide factor 1)
and ``clip_grad_norm_`` on the sharded gradients clips by the global norm. Checkpoints see full
tensors only: :meth:`FSDPPPOUpdater.full_state_dict` and :meth:`FSDPPPOUpdater.optimizer_state_dict`
gather them to rank 0, and the optimiser state uses the single-process ``optimizer.state_dict()``
layout, so a checkpoint resumes under any learner strategy.

The device mesh is on the policy's device type: CPU over gloo (tested), or CUDA over nccl, one GPU
per rank (written for, but not run on a GPU yet; gloo cannot all-gather CUDA tensors, so the
learner group refuses fsdp on CUDA over gloo).
"""

from __future__ import annotations

import warnings
from copy import deepcopy
from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard, register_fsdp_forward_method
from torch.distributed.tensor import DTensor

from pirl.algorithms.buffer import RolloutBatch
from pirl.algorithms.config import OptimizerConfig, PPOConfig
from pirl.distributed.learner import DistributedPPOUpdater

MIN_UNIT_PARAMS = 1 << 16
"""Default size from which a leaf module is its own FSDP unit (a 256 x 256 linear layer is one)."""

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def shard_policy(policy: nn.Module, world: int, *, min_unit_params: int = MIN_UNIT_PARAMS,
                 copy: bool = True) -> nn.Module:
    """``policy`` (or, with ``copy``, a copy of it) sharded over a 1-D mesh of ``world`` ranks (the default
    process group) on the policy's device type: CPU (gloo) or CUDA (nccl; not run on a GPU yet)."""
    for name, p in policy.named_parameters():
        if p.dtype != torch.float32:
            raise NotImplementedError(f"runner.learner_strategy='fsdp' shards float32 weights only; {name} is {p.dtype} "
                                      "(mixed precision is not built)")
    replica = deepcopy(policy) if copy else policy
    # FSDP allocates its gather and reduce buffers on the mesh's device type: it must be the weights'
    mesh = init_device_mesh(next(policy.parameters()).device.type, (world,))
    for module in list(replica.modules())[1:]:
        if not any(True for _ in module.children()) and \
                sum(p.numel() for p in module.parameters(recurse=False)) >= min_unit_params:
            fully_shard(module, mesh=mesh)
    fully_shard(replica, mesh=mesh)
    register_fsdp_forward_method(replica, "evaluate")  # the update calls evaluate, not forward
    for module in replica.modules():
        if isinstance(module, FSDPModule):
            # a plain sum (gloo has no pre-scaled sum): each rank's loss is already weighted by its share
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)
    return replica


def local_numel(module: nn.Module) -> int:
    """Parameter elements this rank stores (its shards)."""
    return sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in module.parameters())


class FSDPPPOUpdater(DistributedPPOUpdater):
    """DistributedPPOUpdater over a sharded replica of ``policy`` (``policy`` itself is not touched)."""

    sharded = True

    def __init__(self, policy: nn.Module, cfg: PPOConfig, optimizer: OptimizerConfig | None = None, *,
                 seed: int = 0, min_unit_params: int = MIN_UNIT_PARAMS, copy: bool = True) -> None:
        if optimizer is not None and not isinstance(optimizer, OptimizerConfig):
            raise TypeError("FSDPPPOUpdater builds its optimiser over the sharded weights: pass an OptimizerConfig, "
                            f"not {type(optimizer).__name__}")
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        if world < 2:
            raise RuntimeError("FSDPPPOUpdater needs an initialised process group of >= 2 ranks "
                               "(call init_process_group() first)")
        sharded = shard_policy(policy, world, min_unit_params=min_unit_params, copy=copy)
        super().__init__(sharded, cfg, optimizer, seed=seed)

    def update(self, batch: RolloutBatch) -> dict[str, float]:
        with warnings.catch_warnings():
            # evaluate() returns views (value.squeeze): harmless, the loss never writes into them in place
            warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
            return super().update(batch)

    def _reduce_grads(self) -> None:
        pass  # reduce-scattered (summed) by FSDP during backward

    # -- full state, gathered / scattered (collectives: every rank calls them together) ---------------
    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The policy's full state dict on rank 0 (CPU tensors); {} on the other ranks."""
        return get_model_state_dict(self.policy, options=FULL)

    def optimizer_state_dict(self) -> dict[str, Any]:
        """The full optimiser state on rank 0 in ``torch.optim.Optimizer.state_dict()`` layout; {} elsewhere."""
        state = get_optimizer_state_dict(self.policy, self.optimizer, options=FULL)
        if not state:
            return {}
        index = {name: i for i, name in enumerate(n for g in state["param_groups"] for n in g["params"])}
        return {"state": {index[n]: s for n, s in state["state"].items()},
                "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in state["param_groups"]]}

    def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        set_model_state_dict(self.policy, state, options=StateDictOptions(full_state_dict=True))

    def load_optimizer(self, state: dict[str, Any]) -> None:
        names = {id(p): n for n, p in self.policy.named_parameters()}
        groups = [[names[id(p)] for p in g["params"]] for g in self.optimizer.param_groups]
        sizes = [len(g["params"]) for g in state["param_groups"]]
        if sizes != [len(g) for g in groups]:
            raise ValueError(f"optimizer state with parameter groups of {sizes} parameters for an optimiser "
                             f"with {[len(g) for g in groups]}")
        order = [n for g in groups for n in g]
        by_name = {"state": {order[i]: s for i, s in state["state"].items()},
                   "param_groups": [{**g, "params": [order[i] for i in g["params"]]} for g in state["param_groups"]]}
        # not strict: a parameter that never had a gradient has no state, as in a single-process optimiser
        set_optimizer_state_dict(self.policy, self.optimizer, by_name,
                                 options=StateDictOptions(full_state_dict=True, strict=False))
        for g in self.optimizer.param_groups:  # ... and keeps none (torch initialises every state first)
            for p in g["params"]:
                if names[id(p)] not in by_name["state"]:
                    self.optimizer.state.pop(p, None)
