"""State-based MLP flow policy: small enough to train by SFT and RL on a CPU."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from pirl.policies.base import FlowPolicy, Normalizer, Obs


def sincos_embedding(t: Tensor, dim: int, max_period: float = 100.0) -> Tensor:
    """[B, dim] sinusoidal embedding of times t [B] in [0, 1]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float().view(-1, 1) * freqs.view(1, -1) * 2 * math.pi
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


@dataclass(frozen=True)
class MLPPolicyConfig:
    """Shape and width of :class:`MLPFlowPolicy`."""

    state_dim: int
    """Size of the observation's ``state`` vector."""
    action_dim: int
    """D, action dimensions."""
    action_horizon: int = 4
    """H, actions per chunk."""
    num_tasks: int = 0
    """> 0 adds a learned task embedding read from the observation's ``task`` index."""
    hidden: int = 256
    """Width of every hidden layer."""
    depth: int = 3
    """Hidden layers of the velocity network."""
    time_dim: int = 32
    """Size of the sinusoidal time embedding."""
    state_clip: Optional[float] = None
    """Normalised state values are clipped to +-state_clip; None (checkpoints from before it existed) leaves them
    unbounded. RL rollouts leave the demonstrations' range (see SFTConfig.state_clip)."""


class MLPFlowPolicy(FlowPolicy):
    """obs["state"] [B, S] (+ obs["task"] [B]) -> velocity over chunks [B, H, D]."""

    def __init__(self, cfg: MLPPolicyConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.action_horizon, self.action_dim = cfg.action_horizon, cfg.action_dim
        self.state_norm = Normalizer(cfg.state_dim, clip=cfg.state_clip)
        self.action_norm = Normalizer(cfg.action_dim)
        h = cfg.hidden
        self.task_embed = nn.Embedding(cfg.num_tasks, h) if cfg.num_tasks > 0 else None
        self.obs_encoder = nn.Sequential(nn.Linear(cfg.state_dim, h), nn.SiLU(), nn.Linear(h, h), nn.SiLU())
        layers: list[nn.Module] = [nn.Linear(h + cfg.time_dim + cfg.action_horizon * cfg.action_dim, h), nn.SiLU()]
        for _ in range(cfg.depth - 1):
            layers += [nn.Linear(h, h), nn.SiLU()]
        self.trunk = nn.Sequential(*layers)
        self.out = nn.Linear(h, cfg.action_horizon * cfg.action_dim)
        self.feature_dim = h

    def encode(self, obs: Obs) -> Tensor:
        if "state" not in obs:
            raise ValueError(f"MLPFlowPolicy needs obs['state']; got keys {sorted(obs)}")
        state = obs["state"].float()
        if state.dim() != 2 or state.shape[1] != self.cfg.state_dim:
            raise ValueError(f"obs['state'] has shape {tuple(state.shape)}; expected [B, {self.cfg.state_dim}]")
        z = self.obs_encoder(self.state_norm(state))
        if self.task_embed is not None:
            if "task" not in obs:
                raise ValueError("a multi-task MLPFlowPolicy needs obs['task'] (task index per sample)")
            z = z + self.task_embed(obs["task"].long())
        return z

    def velocity(self, ctx: Tensor, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        B = x.shape[0]
        h = torch.cat([ctx, sincos_embedding(t, self.cfg.time_dim), x.reshape(B, -1).float()], dim=-1)
        features = self.trunk(h)
        return self.out(features).view(B, self.action_horizon, self.action_dim), features

    def value_features(self, ctx: Tensor) -> Tensor:
        return ctx


def make_mlp_policy(
    state_dim: int,
    action_dim: int,
    *,
    action_horizon: int = 4,
    num_tasks: int = 0,
    hidden: int = 256,
    depth: int = 3,
    value_head: bool = True,
    noise_head: bool = True,
    std_range: tuple[float, float] = (0.08, 0.16),
    state_clip: Optional[float] = None,
) -> MLPFlowPolicy:
    """An MLP flow policy with (optionally) its critic and Flow-Noise head attached."""
    policy = MLPFlowPolicy(MLPPolicyConfig(state_dim, action_dim, action_horizon, num_tasks, hidden, depth,
                                           state_clip=state_clip))
    if value_head:
        policy.attach_value_head(policy.feature_dim)
    if noise_head:
        policy.attach_noise_head(policy.feature_dim, *std_range)
    return policy
