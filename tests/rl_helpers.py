"""Shared setup for RL tests: point-mass demos, a flow-matching pre-trained MLP policy, a training loop."""

from __future__ import annotations

import numpy as np
import torch

from pirl.algorithms import AlgorithmConfig, PPOUpdater, build_batch
from pirl.envs.base import Context
from pirl.envs.point_mass import PointMassConfig, PointMassEnv, expert_actions
from pirl.policies.mlp import make_mlp_policy
from pirl.train.rollout import RolloutCollector

ENV_CFG = PointMassConfig(num_tasks=1, chunk=4, max_chunk_steps=8)
HORIZON = 4
DEMO = dict(gain=0.25, angle=0.6, noise=0.3)


def demo_dataset(num_episodes: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(states [B, 4], action chunks [B, H, 2]) from a slow, biased, noisy scripted expert."""
    env = PointMassEnv(num_episodes, ENV_CFG)
    rng = np.random.default_rng(seed)
    obs = env.reset([Context(0, 10_000 + seed * num_episodes + i) for i in range(num_episodes)])
    states, chunks = [], []
    running = np.ones(num_episodes, bool)
    for _ in range(ENV_CFG.max_chunk_steps):
        a = expert_actions(obs["state"], HORIZON, rng=rng, **DEMO)
        states.append(obs["state"][running])
        chunks.append(a[running])
        res = env.step(a)
        running &= ~(res.terminated | res.truncated)
        obs = res.obs
    return np.concatenate(states), np.concatenate(chunks)


def pretrained_policy(hidden: int = 64, depth: int = 2, sft_steps: int = 400, seed: int = 0):
    """An MLP flow policy fitted to the demos by flow matching."""
    torch.manual_seed(seed)
    states, chunks = demo_dataset(seed=seed)
    policy = make_mlp_policy(4, 2, action_horizon=HORIZON, hidden=hidden, depth=depth)
    s, a = torch.from_numpy(states), torch.from_numpy(chunks)
    policy.state_norm.set_stats(s.mean(0), s.std(0))
    policy.action_norm.set_stats(a.reshape(-1, 2).mean(0), a.reshape(-1, 2).std(0))
    opt = torch.optim.Adam(policy.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(sft_steps):
        idx = torch.randint(0, len(s), (256,), generator=g)
        loss = policy.flow_matching_loss({"state": s[idx]}, a[idx], generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return policy


def train(policy, collector: RolloutCollector, algo: AlgorithmConfig, iterations: int, log=None):
    updater = PPOUpdater(policy, algo.ppo, algo.optim)
    history = []
    for it in range(iterations):
        rollout = collector.collect()
        if not rollout.buffers:
            history.append(rollout.metrics)
            continue
        batch = build_batch(rollout.buffers, algo.advantage)
        metrics = {**rollout.metrics, **updater.update(batch)}
        history.append(metrics)
        if log:
            log(it, metrics)
    return history


EVAL_SEEDS = range(200)
"""Held-out seeds every convergence test evaluates on."""


def lift(policy, collector: RolloutCollector, algo: AlgorithmConfig, iterations: int) -> tuple[float, float, float]:
    """(success before, success after, RL seconds) of ``iterations`` of RL on held-out EVAL_SEEDS."""
    import time

    before = collector.evaluate(EVAL_SEEDS)["eval/success_rate"]
    start = time.perf_counter()
    train(policy, collector, algo, iterations)
    elapsed = time.perf_counter() - start
    return before, collector.evaluate(EVAL_SEEDS)["eval/success_rate"], elapsed
