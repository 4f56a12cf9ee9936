"""Evaluation of a flow policy in a ChunkVectorEnv on fixed contexts (the deterministic ODE by default)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch

from pirl.envs.base import ChunkVectorEnv, Context
from pirl.flow import SamplerConfig
from pirl.policies.base import FlowPolicy


@dataclass
class EvalResult:
    """Per-episode outcomes of :func:`evaluate_policy`, in context order."""

    contexts: list[Context]
    success: np.ndarray
    """[E] bool."""
    episode_length: np.ndarray
    """[E] actions executed."""
    task_names: Sequence[str] = field(default_factory=list)

    @property
    def success_rate(self) -> float:
        return float(self.success.mean()) if len(self.success) else 0.0

    def per_task(self) -> dict[str, float]:
        """Success rate per task name."""
        out: dict[str, list[bool]] = {}
        for c, s in zip(self.contexts, self.success):
            out.setdefault(self.task_names[c.task], []).append(bool(s))
        return {k: float(np.mean(v)) for k, v in out.items()}


@torch.no_grad()
def evaluate_policy(
    policy: FlowPolicy,
    env: ChunkVectorEnv,
    contexts: Sequence[Context],
    sampler: Optional[SamplerConfig] = None,
    *,
    seed: int = 0,
) -> EvalResult:
    """Runs one episode per context (batches of ``env.num_envs``; a short last batch repeats its
    final context and discards the extra episodes)."""
    sampler = sampler or SamplerConfig(method="ode", steps=4)
    gen = torch.Generator(device=policy.device()).manual_seed(seed)
    was_training = policy.training
    policy.eval()
    success, length = [], []
    N = env.num_envs
    try:
        for start in range(0, len(contexts), N):
            batch = list(contexts[start : start + N])
            n = len(batch)
            batch += [batch[-1]] * (N - n)
            obs = env.reset(batch)
            done = np.zeros(N, dtype=bool)
            solved = np.zeros(N, dtype=bool)
            ep_len = np.zeros(N, dtype=np.int64)
            for _ in range(env.max_chunk_steps):
                out = policy.act(policy.prepare(obs), sampler, generator=gen)
                res = env.step(out.actions.cpu().numpy())
                solved |= res.success
                live = ~done
                ep_len[live] = res.info["episode_length"][live]
                done |= res.terminated | res.truncated
                obs = res.obs
                if done.all():
                    break
            success.extend(solved[:n].tolist())
            length.extend(ep_len[:n].tolist())
    finally:
        policy.train(was_training)
    return EvalResult(list(contexts), np.array(success, dtype=bool), np.array(length), list(env.task_names))
