"""A minimal in-memory SFT loop for any policy with ``sft_loss`` (flow, regression, tokenized).

For small demonstration sets held as tensors (tests, few-shot benchmarks); dataset-backed
training with checkpoints is the SFT trainer's job.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from pirl.policies.base import Normalizer, Policy


def sft_fit(
    policy: Policy,
    states: Tensor,
    actions: Tensor,
    *,
    tasks: Optional[Tensor] = None,
    steps: int = 400,
    lr: float = 2e-3,
    batch_size: int = 256,
    seed: int = 0,
    set_stats: bool = True,
) -> list[float]:
    """Fits ``policy`` to states [N, S] and action chunks [N, H, D] (env units) with Adam; returns the losses.

    ``set_stats`` first loads the ``state_norm`` / ``action_norm`` statistics from the data
    (states per dimension, actions per dimension over all chunk steps) where the policy has
    those normalisers. The value head is not trained.
    """
    states, actions = torch.as_tensor(states).float(), torch.as_tensor(actions).float()
    if len(states) != len(actions) or (tasks is not None and len(tasks) != len(states)):
        raise ValueError(f"{len(states)} states, {len(actions)} chunks and {None if tasks is None else len(tasks)} tasks")
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps}, {batch_size}")
    if set_stats:
        if isinstance(getattr(policy, "state_norm", None), Normalizer):
            policy.state_norm.set_stats(states.mean(0), states.std(0))
        if isinstance(getattr(policy, "action_norm", None), Normalizer):
            flat = actions.reshape(-1, actions.shape[-1])
            policy.action_norm.set_stats(flat.mean(0), flat.std(0))
    value_ids = {id(p) for p in policy.value_head.parameters()} if policy.value_head is not None else set()
    opt = torch.optim.Adam([p for p in policy.parameters() if id(p) not in value_ids], lr=lr)
    g = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, len(states), (min(batch_size, len(states)),), generator=g)
        obs = {"state": states[idx]} if tasks is None else {"state": states[idx], "task": tasks[idx]}
        loss = policy.sft_loss(obs, actions[idx], generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses
